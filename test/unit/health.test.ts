// Health checks: the monitor's rules (retries, start period) with scripted probe results, and the http and tcp
// probes against real loopback servers.
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { HealthCheck, HealthState } from '../../daemon/api/services.ts';
import { HealthMonitor, type ProbeResult, probeFor } from '../../daemon/worker/health.ts';

const check = (overrides: Partial<HealthCheck> = {}): HealthCheck => ({
  kind: 'cmd',
  command: ['true'],
  path: '/',
  port: 0,
  intervalMs: 1000,
  timeoutMs: 1000,
  retries: 3,
  startPeriodMs: 0,
  ...overrides,
});

/** A monitor whose probes answer from a script, with a clock the test moves. */
function scripted(results: boolean[], overrides: Partial<HealthCheck> = {}) {
  let clock = 0;
  const changes: HealthState[] = [];
  const monitor = new HealthMonitor({
    check: check(overrides),
    probe: async (): Promise<ProbeResult> => ({ ok: results.shift() ?? false, output: 'probe output' }),
    onChange: (state) => changes.push(state),
    now: () => clock,
  });
  return {
    monitor,
    changes,
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

describe('health monitor', () => {
  it('turns healthy on the first success and unhealthy after `retries` failures in a row', async () => {
    const { monitor, changes } = scripted([true, false, false, true, false, false, false]);
    const seen: HealthState[] = [];
    for (let i = 0; i < 7; i++) seen.push(await monitor.probeNow());
    expect(seen).toEqual(['healthy', 'healthy', 'healthy', 'healthy', 'healthy', 'healthy', 'unhealthy']);
    expect(changes).toEqual(['healthy', 'unhealthy']);
  });

  it('does not count failures during the start period, but a success there counts', async () => {
    const slow = scripted([false, false, false, false], { startPeriodMs: 5000, retries: 1 });
    expect(await slow.monitor.probeNow()).toBe('starting');
    expect(await slow.monitor.probeNow()).toBe('starting');
    slow.advance(5000);
    expect(await slow.monitor.probeNow()).toBe('unhealthy');

    const early = scripted([true], { startPeriodMs: 5000 });
    expect(await early.monitor.probeNow()).toBe('healthy');
  });

  it('a probe that throws is a failure, with its message', async () => {
    const changes: string[] = [];
    const monitor = new HealthMonitor({
      check: check({ retries: 1 }),
      probe: () => Promise.reject(new Error('exec failed: no such container')),
      onChange: (state, output) => changes.push(`${state}: ${output}`),
    });
    expect(await monitor.probeNow()).toBe('unhealthy');
    expect(changes).toEqual(['unhealthy: exec failed: no such container']);
  });
});

describe('probes', () => {
  const servers: Server[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.close();
  });

  async function listen(server: Server): Promise<number> {
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as { port: number }).port;
  }

  const exec = async () => ({ exitCode: 0, output: '' });

  it('http passes on 2xx and 3xx, fails on 5xx and on a closed port, saying what it saw', async () => {
    const port = await listen(
      createHttpServer((req, res) => {
        res.statusCode = req.url === '/ok' ? 200 : req.url === '/moved' ? 302 : 503;
        res.end();
      }),
    );
    const probe = (path: string, p = port) =>
      probeFor(check({ kind: 'http', path, port: p }), { exec, host: '127.0.0.1' })();
    expect(await probe('/ok')).toEqual({ ok: true, output: 'GET /ok: HTTP 200' });
    expect((await probe('/moved')).ok).toBe(true);
    expect(await probe('/broken')).toEqual({ ok: false, output: 'GET /broken: HTTP 503' });
    const closed = await probe('/ok', 1);
    expect(closed.ok).toBe(false);
    expect(closed.output).toMatch(/ECONNREFUSED/);
  });

  it("tcp passes when a connection opens; port 0 means the task's host port", async () => {
    const port = await listen(createServer((socket) => socket.end()));
    const viaHostPort = probeFor(check({ kind: 'tcp', port: 0 }), { exec, host: '127.0.0.1', hostPort: port });
    expect((await viaHostPort()).ok).toBe(true);
    const noPort = probeFor(check({ kind: 'tcp', port: 0 }), { exec, host: '127.0.0.1' });
    expect(await noPort()).toEqual({ ok: false, output: expect.stringMatching(/no port to probe/) });
  });

  it('cmd passes on exit 0 only, with the last line of its output', async () => {
    const probe = probeFor(check({ kind: 'cmd', command: ['check'] }), {
      exec: async () => ({ exitCode: 2, output: 'starting\nnot ready yet\n' }),
      host: '127.0.0.1',
    });
    expect(await probe()).toEqual({ ok: false, output: 'exit 2: not ready yet' });
  });
});
