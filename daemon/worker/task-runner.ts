// Runs the tasks the managers assign to this node, with the executor of each task's runtime, and keeps
// their status for the next heartbeat. Handles are persisted in the data dir so that after a swarmd
// restart running tasks are re-attached instead of started twice.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { HealthCheck, Task, TaskState, TaskStatus } from '../api/services.ts';
import { TASK_STATES, TERMINAL_STATES } from '../api/services.ts';
import {
  type Executor,
  ExecutorError,
  type ExitStatus,
  type LogLine,
  type Runtime,
  type TaskHandle,
  type TaskRunSpec,
} from './executors/types.ts';
import { HealthMonitor, probeFor } from './health.ts';
import { allocateHostPort } from './host-port.ts';

export interface TaskRunnerOptions {
  nodeId: string;
  executors: Map<Runtime, Executor>;
  /** File holding the handles of started tasks. */
  stateFile: string;
  /** Called when a status changed, so the agent reports it without waiting for the next period. */
  onStatusChange: () => void;
  /** Runs before a task is told to stop: the load balancer drains it (no new connections, open ones finish). */
  beforeStop?: (task: Task) => Promise<void>;
  log: (level: 'info' | 'warn', message: string) => void;
}

interface Local {
  task: Task;
  status: TaskStatus;
  handle: TaskHandle | null;
  /** A lifecycle step is in progress (prepare/start/stop): don't start another. */
  busy: boolean;
  waiting: boolean;
  health: HealthMonitor | null;
  /** Set when the health check failed: the task was stopped for it and has failed, whatever its exit code. */
  unhealthy?: string;
}

const order = (state: TaskState) => TASK_STATES.indexOf(state);
/** What the managers must have seen of a status: its state, health, and where it listens (for the load balancer). */
const reportKey = (status: TaskStatus) => `${status.state}/${status.health ?? ''}/${status.address ?? ''}`;

export class TaskRunner {
  private readonly opts: TaskRunnerOptions;
  private readonly tasks = new Map<string, Local>();
  /** Last state the managers acknowledged per task. */
  private readonly reported = new Map<string, string>();

  constructor(opts: TaskRunnerOptions) {
    this.opts = opts;
  }

  /** Re-attaches to tasks a previous swarmd started (from the persisted handles). */
  async recover(tasks: Task[]): Promise<void> {
    let saved: Record<string, TaskHandle> = {};
    try {
      saved = JSON.parse(await readFile(this.opts.stateFile, 'utf8')) as Record<string, TaskHandle>;
    } catch {
      return;
    }
    for (const task of tasks) {
      const handle = saved[task.id];
      const executor = handle ? this.opts.executors.get(handle.runtime) : undefined;
      if (!handle || !executor) continue;
      const inspection = await executor.inspect(handle).catch(() => null);
      if (!inspection) continue;
      const local: Local = { task, status: task.status, handle, busy: false, waiting: false, health: null };
      this.tasks.set(task.id, local);
      if (inspection.running) {
        this.opts.log('info', `re-attached to task ${task.id} (${task.serviceName}.${task.slot})`);
        this.setStatus(local, 'running', 're-attached after restart');
        this.noteAddress(local, inspection.address);
        this.watch(local, executor);
        this.checkHealth(local, executor, inspection.address);
      } else if (inspection.exitStatus) {
        this.finish(local, inspection.exitStatus);
      }
    }
  }

  /** Statuses the managers have not acknowledged yet. */
  pendingStatuses(): { taskId: string; status: TaskStatus }[] {
    const out: { taskId: string; status: TaskStatus }[] = [];
    for (const [taskId, local] of this.tasks) {
      if (this.reported.get(taskId) !== reportKey(local.status)) out.push({ taskId, status: local.status });
    }
    return out;
  }

  /** The managers' view of this node's tasks: what it shows is what they have (a lost report is resent). */
  acknowledge(statuses: { taskId: string; status: TaskStatus }[]): void {
    for (const { taskId, status } of statuses) this.reported.set(taskId, reportKey(status));
  }

  /** Brings what runs here in line with the managers' view of this node's tasks. */
  sync(assigned: Task[]): void {
    const seen = new Set<string>();
    for (const task of assigned) {
      seen.add(task.id);
      let local = this.tasks.get(task.id);
      if (!local) {
        if (TERMINAL_STATES.has(task.status.state)) continue; // ended before this swarmd knew it
        local = { task, status: task.status, handle: null, busy: false, waiting: false, health: null };
        this.tasks.set(task.id, local);
      }
      local.task = task;
      this.step(local);
    }
    // Tasks the managers deleted are forgotten once ended here.
    for (const [id, local] of this.tasks) {
      if (!seen.has(id) && TERMINAL_STATES.has(local.status.state) && !local.busy) {
        this.tasks.delete(id);
        this.reported.delete(id);
        void this.remove(local);
      }
    }
  }

  /** A task's log lines from its executor; empty when this node never ran it. */
  async *logs(
    taskId: string,
    options: { follow: boolean; tail?: number; signal: AbortSignal },
  ): AsyncIterable<LogLine> {
    const local = this.tasks.get(taskId);
    const executor = local ? this.opts.executors.get(local.task.template.runtime) : undefined;
    if (!local?.handle || !executor) return;
    yield* executor.logs(local.handle, {
      follow: options.follow && !TERMINAL_STATES.has(local.status.state),
      ...(options.tail === undefined ? {} : { tail: options.tail }),
      signal: options.signal,
    });
  }

  private step(local: Local): void {
    if (local.busy) return;
    const { task } = local;
    const ended = TERMINAL_STATES.has(local.status.state);
    if (task.desiredState === 'shutdown') {
      if (!ended) void this.stop(local);
      return;
    }
    if (!ended && order(local.status.state) <= order('assigned')) void this.run(local);
  }

  private async run(local: Local): Promise<void> {
    const executor = this.opts.executors.get(local.task.template.runtime);
    if (!executor) {
      this.setStatus(local, 'rejected', '', `runtime ${local.task.template.runtime} is not available on this node`);
      return;
    }
    local.busy = true;
    const spec = this.runSpec(local.task);
    try {
      this.setStatus(local, 'accepted');
      // A task behind published ports listens on a host port of its own ($PORT): the executor passes it and
      // inspect() reports 127.0.0.1:PORT, the address the load balancer forwards to.
      if (local.task.publishes) spec.hostPort = await allocateHostPort();
      this.setStatus(local, 'preparing');
      await executor.prepare(spec);
      this.setStatus(local, 'starting');
      local.handle = await executor.start(spec);
      await this.saveHandles();
      this.setStatus(local, 'running');
      this.watch(local, executor);
      const inspection =
        local.task.template.healthcheck || local.task.publishes
          ? await executor.inspect(local.handle).catch(() => null)
          : null;
      this.noteAddress(local, inspection?.address);
      this.checkHealth(local, executor, inspection?.address);
    } catch (error) {
      const message = (error as Error).message;
      const rejected = error instanceof ExecutorError && !error.retryable;
      this.setStatus(local, rejected ? 'rejected' : 'failed', '', message);
    } finally {
      local.busy = false;
    }
    // Told to stop while starting: do it now.
    if (local.task.desiredState === 'shutdown' && !TERMINAL_STATES.has(local.status.state)) void this.stop(local);
  }

  private watch(local: Local, executor: Executor): void {
    if (local.waiting || !local.handle) return;
    local.waiting = true;
    executor.wait(local.handle).then(
      (exit) => this.finish(local, exit),
      (error: Error) => this.setStatus(local, 'failed', '', `lost track of the task: ${error.message}`),
    );
  }

  /** The address a running task listens on, reported to the managers with its status (for the endpoint table). */
  private noteAddress(local: Local, address: string | undefined): void {
    if (!address || !local.task.publishes || local.status.state !== 'running') return;
    local.status = { ...local.status, address };
    this.opts.onStatusChange();
  }

  /** host:port of this node's running tasks, for the load balancer's mesh hop (serveRemote) and drains. */
  localAddress(taskId: string): string | undefined {
    const local = this.tasks.get(taskId);
    return local?.status.state === 'running' ? local.status.address : undefined;
  }

  /** Starts the task's health checks, if it has any; an unhealthy task is stopped and fails. */
  private checkHealth(local: Local, executor: Executor, address: string | undefined): void {
    const check = local.task.template.healthcheck;
    if (!check || local.health || !local.handle || TERMINAL_STATES.has(local.status.state)) return;
    const handle = local.handle;
    const exec = (command: string[], timeoutMs: number) => executor.exec(handle, command, timeoutMs);
    const host = address ? address.slice(0, address.lastIndexOf(':')) : undefined;
    const hostPort = address ? Number(address.slice(address.lastIndexOf(':') + 1)) : undefined;
    // A container without a network of its own can only be probed from inside.
    const probe =
      host === undefined && check.kind !== 'cmd' && local.task.template.runtime === 'docker'
        ? probeFor({ ...check, kind: 'cmd', command: insideProbe(check) }, { exec, host: '127.0.0.1' })
        : probeFor(check, { exec, host: host ?? '127.0.0.1', ...(hostPort ? { hostPort } : {}) });
    local.health = new HealthMonitor({
      check,
      probe,
      onChange: (health, output) => {
        if (TERMINAL_STATES.has(local.status.state)) return;
        local.status = { ...local.status, health };
        this.opts.onStatusChange();
        if (health === 'unhealthy') {
          local.unhealthy = `task unhealthy: ${output}`;
          this.opts.log(
            'warn',
            `task ${local.task.id} (${local.task.serviceName}.${local.task.slot}): ${local.unhealthy}`,
          );
          void this.stop(local);
        }
      },
    });
    local.status = { ...local.status, health: 'starting' };
    this.opts.onStatusChange();
    local.health.start();
  }

  private finish(local: Local, exit: ExitStatus): void {
    local.health?.stop();
    if (TERMINAL_STATES.has(local.status.state)) return;
    if (local.unhealthy) {
      this.setStatus(local, 'failed', '', local.unhealthy, exit.exitCode);
      return;
    }
    if (local.task.desiredState === 'shutdown') {
      this.setStatus(local, 'shutdown', 'stopped', undefined, exit.exitCode);
      return;
    }
    const error =
      exit.runtimeError ??
      (exit.exitCode === 0
        ? undefined
        : `task exited with code ${exit.exitCode}${exit.signal ? ` (${exit.signal})` : ''}${exit.oomKilled ? ', out of memory' : ''}`);
    this.setStatus(local, exit.exitCode === 0 && !exit.runtimeError ? 'complete' : 'failed', '', error, exit.exitCode);
  }

  private async stop(local: Local): Promise<void> {
    const executor = this.opts.executors.get(local.task.template.runtime);
    if (!local.handle || !executor) {
      this.setStatus(local, 'shutdown', 'never started');
      return;
    }
    local.busy = true;
    local.health?.stop();
    try {
      if (this.opts.beforeStop && !local.unhealthy) await this.opts.beforeStop(local.task).catch(() => {});
      const { stopSignal, stopGracePeriodMs } = local.task.template;
      await executor.stop(local.handle, stopSignal, stopGracePeriodMs);
    } catch (error) {
      this.opts.log('warn', `stopping task ${local.task.id}: ${(error as Error).message}`);
    } finally {
      local.busy = false;
    }
    if (TERMINAL_STATES.has(local.status.state)) return;
    if (local.unhealthy) this.setStatus(local, 'failed', '', local.unhealthy);
    else this.setStatus(local, 'shutdown', 'stopped');
  }

  private async remove(local: Local): Promise<void> {
    const executor = this.opts.executors.get(local.task.template.runtime);
    if (local.handle && executor) await executor.remove(local.handle).catch(() => {});
    await this.saveHandles().catch(() => {});
  }

  private setStatus(local: Local, state: TaskState, message = '', error?: string, exitCode?: number): void {
    if (order(state) < order(local.status.state)) return; // states only move forward
    const health = state === 'running' ? local.status.health : undefined;
    const address = state === 'running' ? local.status.address : undefined;
    local.status = {
      ...(health ? { health } : {}),
      ...(address ? { address } : {}),
      state,
      since: new Date().toISOString(),
      message,
      ...(error ? { error } : {}),
      ...(exitCode === undefined ? {} : { exitCode }),
    };
    this.opts.onStatusChange();
  }

  private runSpec(task: Task): TaskRunSpec {
    const t = task.template;
    return {
      taskId: task.id,
      serviceId: task.serviceId,
      serviceName: task.serviceName,
      slot: task.slot > 0 ? String(task.slot) : this.opts.nodeId,
      nodeId: this.opts.nodeId,
      image: t.image,
      command: t.command,
      args: t.args,
      env: t.env,
      ...(t.workdir ? { workdir: t.workdir } : {}),
      ...(t.user ? { user: t.user } : {}),
      labels: t.labels,
      limits: {
        ...(t.resources.limits.nanoCpus ? { nanoCpus: t.resources.limits.nanoCpus } : {}),
        ...(t.resources.limits.memoryBytes ? { memoryBytes: t.resources.limits.memoryBytes } : {}),
        ...(t.resources.limits.pids ? { pids: t.resources.limits.pids } : {}),
      },
      mounts: t.mounts,
      stopSignal: t.stopSignal,
      stopGracePeriodMs: t.stopGracePeriodMs,
      devices: task.devices,
    };
  }

  private saving: Promise<void> = Promise.resolve();

  /** Writes the handles file; writes are serialized (tasks start concurrently, and share one temp file). */
  private saveHandles(): Promise<void> {
    const next = this.saving.then(() => this.writeHandles());
    this.saving = next.catch(() => {});
    return next;
  }

  private async writeHandles(): Promise<void> {
    const handles: Record<string, TaskHandle> = {};
    for (const [id, local] of this.tasks) if (local.handle) handles[id] = local.handle;
    await mkdir(dirname(this.opts.stateFile), { recursive: true });
    const temp = `${this.opts.stateFile}.tmp`;
    await writeFile(temp, JSON.stringify(handles));
    await rename(temp, this.opts.stateFile);
  }
}

/** An http or tcp check run inside a container that has no network the node can reach (busybox tools). */
function insideProbe(check: HealthCheck): string[] {
  const port = check.port || 80;
  return check.kind === 'http'
    ? ['wget', '-q', '-O', '/dev/null', `http://127.0.0.1:${port}${check.path}`]
    : ['nc', '-z', '127.0.0.1', String(port)];
}
