// Prometheus text exposition (format 0.0.4) of the load balancer's counters.
//
// Hand-written rather than prom-client: the format is a few lines of text, our counters already exist as plain
// numbers in the forwarder (prom-client would keep a second copy in its own registry, a process-global one by
// default, and need series removed by hand as tasks come and go), and the daemon's footprint is measured against
// dockerd's (test/bench/footprint.ts), so a dependency and its registry for ~60 lines of output is not worth it.
import type { MeshHopCounters, ServiceStats, TaskCounters, TunnelCounts } from './stats.ts';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

interface MetricDef<T> {
  name: string;
  type: 'counter' | 'gauge';
  help: string;
  value: (c: T) => number;
}

interface ServiceRow {
  service: string;
  values: Omit<ServiceStats, 'serviceId' | 'serviceName' | 'port' | 'tasks'>;
}

interface TaskRow {
  service: string;
  task: string;
  values: TaskCounters;
}

const SERVICE_METRICS: MetricDef<ServiceRow['values']>[] = [
  {
    name: 'swarmd_lb_service_connections_total',
    type: 'counter',
    help: 'Client connections (UDP: flows) accepted on the published ports of the service.',
    value: (c) => c.connectionsTotal,
  },
  {
    name: 'swarmd_lb_service_connections_active',
    type: 'gauge',
    help: 'Client connections (UDP: flows) open now (connecting or forwarding).',
    value: (c) => c.connectionsActive,
  },
  {
    name: 'swarmd_lb_service_in_bytes_total',
    type: 'counter',
    help: 'Bytes received from clients.',
    value: (c) => c.bytesIn,
  },
  {
    name: 'swarmd_lb_service_out_bytes_total',
    type: 'counter',
    help: 'Bytes sent to clients.',
    value: (c) => c.bytesOut,
  },
  {
    name: 'swarmd_lb_service_failed_connections_total',
    type: 'counter',
    help: 'Client connections (UDP: flows, or datagrams beyond the flow limit) that reached no task.',
    value: (c) => c.errors,
  },
  {
    name: 'swarmd_lb_service_retries_total',
    type: 'counter',
    help: 'Connect attempts made on another task after one failed.',
    value: (c) => c.retries,
  },
];

const TASK_METRICS: MetricDef<TaskCounters>[] = [
  {
    name: 'swarmd_lb_connections_total',
    type: 'counter',
    help: 'Client connections (UDP: flows) forwarded to the task.',
    value: (c) => c.connectionsTotal,
  },
  {
    name: 'swarmd_lb_connections_active',
    type: 'gauge',
    help: 'Connections (UDP: flows) to the task open now.',
    value: (c) => c.connectionsActive,
  },
  {
    name: 'swarmd_lb_in_bytes_total',
    type: 'counter',
    help: 'Bytes from clients forwarded to the task.',
    value: (c) => c.bytesIn,
  },
  {
    name: 'swarmd_lb_out_bytes_total',
    type: 'counter',
    help: 'Bytes from the task forwarded to clients.',
    value: (c) => c.bytesOut,
  },
  {
    name: 'swarmd_lb_connect_errors_total',
    type: 'counter',
    help: 'Connects to the task that failed.',
    value: (c) => c.errors,
  },
  {
    name: 'swarmd_lb_ejections_total',
    type: 'counter',
    help: 'Times outlier detection took the task out of rotation.',
    value: (c) => c.ejections,
  },
];

/** What this node did as the far end of the mesh hop, and its tunnels. */
export interface MeshHopStats {
  streams: MeshHopCounters;
  tunnels: TunnelCounts;
  /** Of the served streams, those that came as native hops (native-hop.ts) rather than through a tunnel. */
  nativeHopsServed?: number;
}

/**
 * The exposition text for the stats of every ingress on this node. A service published on several ports gets one
 * series per metric: its ingresses' counters are summed (series must be unique per label set).
 */
export function renderMetrics(stats: readonly ServiceStats[], meshHop?: MeshHopStats): string {
  const services = new Map<string, ServiceRow>();
  const tasks = new Map<string, TaskRow>();
  for (const s of stats) {
    const service = services.get(s.serviceName);
    if (service === undefined) {
      const { serviceId: _id, serviceName: _name, port: _port, tasks: _tasks, ...values } = s;
      services.set(s.serviceName, { service: s.serviceName, values });
    } else {
      addInto(service.values, s);
    }
    for (const t of s.tasks) {
      const key = `${s.serviceName}\u0000${t.taskId}`;
      const row = tasks.get(key);
      if (row === undefined) {
        const { taskId: _taskId, ...values } = t;
        tasks.set(key, { service: s.serviceName, task: t.taskId, values });
      } else {
        addInto(row.values, t);
      }
    }
  }
  const serviceRows = [...services.values()].sort((a, b) => compare(a.service, b.service));
  const taskRows = [...tasks.values()].sort((a, b) => compare(a.service, b.service) || compare(a.task, b.task));
  const lines: string[] = [];
  for (const def of SERVICE_METRICS) {
    header(lines, def);
    for (const row of serviceRows)
      lines.push(`${def.name}{service="${escapeLabel(row.service)}"} ${def.value(row.values)}`);
  }
  for (const def of TASK_METRICS) {
    header(lines, def);
    for (const row of taskRows) {
      lines.push(
        `${def.name}{service="${escapeLabel(row.service)}",task="${escapeLabel(row.task)}"} ${def.value(row.values)}`,
      );
    }
  }
  if (meshHop !== undefined) renderMeshHop(lines, meshHop);
  return `${lines.join('\n')}\n`;
}

function renderMeshHop(lines: string[], meshHop: MeshHopStats): void {
  const streams = 'swarmd_lb_mesh_streams_total';
  header(lines, {
    name: streams,
    type: 'counter',
    help: 'Connections other nodes forwarded to tasks of this node, by outcome (served, draining, unknown-task, ...).',
  });
  for (const [result, count] of Object.entries(meshHop.streams)) lines.push(`${streams}{result="${result}"} ${count}`);
  const native = 'swarmd_lb_native_hops_served_total';
  header(lines, {
    name: native,
    type: 'counter',
    help: 'Of the served connections other nodes forwarded here, those that came as native hops (one TLS connection each, relayed natively).',
  });
  lines.push(`${native} ${meshHop.nativeHopsServed ?? 0}`);
  const tunnels = 'swarmd_lb_tunnels';
  header(lines, {
    name: tunnels,
    type: 'gauge',
    help: 'Load balancer tunnels open now, to other nodes (out) and from them (in): over the data path (direct) or the mesh; native: native hops, one per forwarded connection; mux: the TLS connections that carry native hops as streams.',
  });
  for (const direction of ['in', 'out'] as const)
    for (const path of ['direct', 'mesh', 'native', 'mux'] as const)
      lines.push(`${tunnels}{direction="${direction}",path="${path}"} ${meshHop.tunnels[direction][path]}`);
}

function header(lines: string[], def: { name: string; type: string; help: string }): void {
  lines.push(`# HELP ${def.name} ${def.help}`);
  lines.push(`# TYPE ${def.name} ${def.type}`);
}

/** Sums the numeric fields of `from` that `into` has. */
function addInto<T extends object>(into: T, from: T): void {
  const target = into as Record<string, unknown>;
  const source = from as Record<string, unknown>;
  for (const key of Object.keys(target)) {
    const value = source[key];
    if (typeof value === 'number' && typeof target[key] === 'number') target[key] = (target[key] as number) + value;
  }
}

/** Label values escape backslash, double quote and newline; nothing else. */
export function escapeLabel(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
