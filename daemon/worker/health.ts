// Health checks of a running task, run by the worker on the task's node. One monitor per task: it probes every
// interval, each probe bounded by the timeout, and reports starting -> healthy, and unhealthy after `retries`
// failures in a row. During the start period failures do not count, but a success makes the task healthy
// (Docker's rules, daemon/health.go).
import { request } from 'node:http';
import { connect } from 'node:net';
import type { HealthCheck, HealthState } from '../api/services.ts';

export interface ProbeResult {
  ok: boolean;
  /** What the probe saw, for the task's status when it turns unhealthy. */
  output: string;
}

export type Probe = () => Promise<ProbeResult>;

export interface ProbeTarget {
  /** Runs a command inside the task (the executor's exec), killed after timeoutMs. */
  exec: (command: string[], timeoutMs: number) => Promise<{ exitCode: number; output: string }>;
  /** The host the task listens on, as seen from this node. */
  host: string;
  /** The task's host port, for checks that name no port. */
  hostPort?: number;
}

/** The probe a health check describes, against one task. */
export function probeFor(check: HealthCheck, target: ProbeTarget): Probe {
  if (check.kind === 'cmd') {
    return async () => {
      const result = await target.exec(check.command, check.timeoutMs);
      return { ok: result.exitCode === 0, output: `exit ${result.exitCode}: ${lastLine(result.output)}` };
    };
  }
  const port = check.port || target.hostPort;
  if (!port) {
    return async () => ({ ok: false, output: `no port to probe: the check names none and the task has no host port` });
  }
  return check.kind === 'http'
    ? () => httpProbe(target.host, port, check.path, check.timeoutMs)
    : () => tcpProbe(target.host, port, check.timeoutMs);
}

function lastLine(output: string): string {
  const lines = output.trim().split('\n');
  return (lines.at(-1) ?? '').slice(0, 300);
}

function httpProbe(host: string, port: number, path: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const req = request({ host, port, path, method: 'GET', timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      const code = res.statusCode ?? 0;
      resolve({ ok: code >= 200 && code < 400, output: `GET ${path}: HTTP ${code}` });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs}ms`)));
    req.on('error', (error) => resolve({ ok: false, output: `GET ${path} on port ${port}: ${error.message}` }));
    req.end();
  });
}

function tcpProbe(host: string, port: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => socket.destroy(new Error(`no connection within ${timeoutMs}ms`)), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: true, output: `connected to port ${port}` });
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      resolve({ ok: false, output: `connecting to port ${port}: ${error.message}` });
    });
  });
}

export interface HealthMonitorOptions {
  check: HealthCheck;
  probe: Probe;
  /** Called on every change of state, with the output of the probe that caused it. */
  onChange: (state: HealthState, output: string) => void;
  now?: () => number;
}

/** Probes one task until stopped. Starts in `starting`; the first probe runs after one interval, as Docker's. */
export class HealthMonitor {
  private readonly opts: HealthMonitorOptions;
  private readonly startedAt: number;
  private state: HealthState = 'starting';
  private failures = 0;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(opts: HealthMonitorOptions) {
    this.opts = opts;
    this.startedAt = this.now();
  }

  start(): void {
    this.schedule(this.opts.check.intervalMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  get current(): HealthState {
    return this.state;
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.probeOnce(), delayMs);
    this.timer.unref();
  }

  /** One probe and what it changes; exported for tests through `probeNow`. */
  async probeNow(): Promise<HealthState> {
    const result = await this.opts.probe().catch((error: Error) => ({ ok: false, output: error.message }));
    if (this.stopped) return this.state;
    if (result.ok) {
      this.failures = 0;
      this.set('healthy', result.output);
    } else if (this.now() - this.startedAt >= this.opts.check.startPeriodMs || this.state === 'healthy') {
      this.failures++;
      if (this.failures >= Math.max(1, this.opts.check.retries)) this.set('unhealthy', result.output);
    }
    return this.state;
  }

  private async probeOnce(): Promise<void> {
    await this.probeNow();
    // An unhealthy task is stopped by the worker; nothing more to probe.
    if (this.state !== 'unhealthy') this.schedule(this.opts.check.intervalMs);
  }

  private set(state: HealthState, output: string): void {
    if (state === this.state) return;
    this.state = state;
    this.opts.onChange(state, output);
  }
}
