// Prometheus text of the load balancer's counters: names, types, labels, escaping, and summing across ports.
import { describe, expect, it } from 'vitest';
import { escapeLabel, renderMetrics } from '../../daemon/lb/metrics.ts';
import type { ServiceStats } from '../../daemon/lb/stats.ts';
import { newMeshHopCounters } from '../../daemon/lb/stats.ts';

function stats(overrides: Partial<ServiceStats> = {}): ServiceStats {
  return {
    serviceId: 'svc1',
    serviceName: 'web',
    port: 8080,
    connectionsTotal: 10,
    connectionsActive: 2,
    bytesIn: 1000,
    bytesOut: 5000,
    errors: 1,
    retries: 3,
    tasks: [
      {
        taskId: 't1',
        connectionsTotal: 6,
        connectionsActive: 1,
        bytesIn: 600,
        bytesOut: 3000,
        errors: 0,
        ejections: 0,
      },
      {
        taskId: 't2',
        connectionsTotal: 3,
        connectionsActive: 1,
        bytesIn: 400,
        bytesOut: 2000,
        errors: 4,
        ejections: 1,
      },
    ],
    ...overrides,
  };
}

/** Parses sample lines into name{labels} -> value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe('renderMetrics', () => {
  it('renders service and task series with HELP and TYPE', () => {
    const text = renderMetrics([stats()]);
    const s = samples(text);
    expect(s.get('swarmd_lb_service_connections_total{service="web"}')).toBe(10);
    expect(s.get('swarmd_lb_service_connections_active{service="web"}')).toBe(2);
    expect(s.get('swarmd_lb_service_in_bytes_total{service="web"}')).toBe(1000);
    expect(s.get('swarmd_lb_service_out_bytes_total{service="web"}')).toBe(5000);
    expect(s.get('swarmd_lb_service_failed_connections_total{service="web"}')).toBe(1);
    expect(s.get('swarmd_lb_service_retries_total{service="web"}')).toBe(3);
    expect(s.get('swarmd_lb_connections_total{service="web",task="t1"}')).toBe(6);
    expect(s.get('swarmd_lb_connections_active{service="web",task="t2"}')).toBe(1);
    expect(s.get('swarmd_lb_in_bytes_total{service="web",task="t2"}')).toBe(400);
    expect(s.get('swarmd_lb_out_bytes_total{service="web",task="t1"}')).toBe(3000);
    expect(s.get('swarmd_lb_connect_errors_total{service="web",task="t2"}')).toBe(4);
    expect(s.get('swarmd_lb_ejections_total{service="web",task="t2"}')).toBe(1);
    expect(text).toContain('# TYPE swarmd_lb_connections_total counter\n');
    expect(text).toContain('# TYPE swarmd_lb_connections_active gauge\n');
    expect(text).toContain('# HELP swarmd_lb_connections_total ');
    expect(text.endsWith('\n')).toBe(true);
  });

  it('follows the exposition format line by line', () => {
    const sample = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? -?\d+(\.\d+)?$/;
    for (const line of renderMetrics([stats({ serviceName: 'we"b\\\n' })])
      .trimEnd()
      .split('\n')) {
      if (line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
      expect(line).toMatch(sample);
    }
  });

  it('sums a service published on several ports into one series', () => {
    const s = samples(renderMetrics([stats(), stats({ port: 9090 })]));
    expect(s.get('swarmd_lb_service_connections_total{service="web"}')).toBe(20);
    expect(s.get('swarmd_lb_connections_total{service="web",task="t1"}')).toBe(12);
  });

  it('keeps services apart and sorted', () => {
    const text = renderMetrics([stats({ serviceName: 'web' }), stats({ serviceName: 'api', tasks: [] })]);
    const names = [...text.matchAll(/swarmd_lb_service_connections_total\{service="(\w+)"\}/g)].map((m) => m[1]);
    expect(names).toEqual(['api', 'web']);
  });

  it('renders the mesh hop outcomes and tunnels when given, in the exposition format', () => {
    const streams = { ...newMeshHopCounters(), served: 7, draining: 2 };
    const text = renderMetrics([stats()], {
      streams,
      tunnels: { in: { direct: 1, mesh: 0, native: 4, mux: 6 }, out: { direct: 2, mesh: 3, native: 5, mux: 7 } },
      nativeHopsServed: 6,
    });
    const s = samples(text);
    expect(s.get('swarmd_lb_mesh_streams_total{result="served"}')).toBe(7);
    expect(s.get('swarmd_lb_mesh_streams_total{result="draining"}')).toBe(2);
    expect(s.get('swarmd_lb_mesh_streams_total{result="unknown-task"}')).toBe(0);
    expect(s.get('swarmd_lb_tunnels{direction="in",path="direct"}')).toBe(1);
    expect(s.get('swarmd_lb_tunnels{direction="in",path="mesh"}')).toBe(0);
    expect(s.get('swarmd_lb_tunnels{direction="out",path="direct"}')).toBe(2);
    expect(s.get('swarmd_lb_tunnels{direction="out",path="mesh"}')).toBe(3);
    expect(s.get('swarmd_lb_tunnels{direction="in",path="native"}')).toBe(4);
    expect(s.get('swarmd_lb_tunnels{direction="out",path="native"}')).toBe(5);
    expect(s.get('swarmd_lb_tunnels{direction="in",path="mux"}')).toBe(6);
    expect(s.get('swarmd_lb_tunnels{direction="out",path="mux"}')).toBe(7);
    expect(s.get('swarmd_lb_native_hops_served_total')).toBe(6);
    expect(text).toContain('# TYPE swarmd_lb_tunnels gauge\n');
    expect(renderMetrics([stats()])).not.toContain('swarmd_lb_tunnels');
  });

  it('renders only HELP and TYPE when there is nothing to count', () => {
    const text = renderMetrics([]);
    expect(samples(text).size).toBe(0);
    expect(text).toContain('# TYPE swarmd_lb_service_connections_total counter');
  });

  it('escapes label values', () => {
    expect(escapeLabel('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
  });
});
