// How far a service is from what it asks for: the REPLICAS column of `service ls`, and the progress that
// `service create` and `service scale` show while the swarm converges (as `docker service create` does, in
// one line per change rather than redrawn bars, so it reads the same in a terminal and in a CI log).
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import type { ApiClient } from '../../daemon/api/client.ts';
import { type Service, type Task, TERMINAL_STATES } from '../../daemon/api/services.ts';
import type { Output } from '../command.ts';

export interface Progress {
  /** Tasks running and wanted running. */
  running: number;
  /** Replicated: replicas; global: tasks wanted; jobs: completions wanted. */
  desired: number;
  /** Jobs only: tasks that completed. */
  completed: number;
  /** Wanted tasks the scheduler could not place yet, with the first reason given. */
  pending: number;
  pendingReason: string | undefined;
  /** The latest failure among the tasks considered (program missing, non-zero exit...). */
  lastError: string | undefined;
  converged: boolean;
}

const isJob = (service: Service) => service.spec.mode.kind.endsWith('-job');

/** `ignore`: tasks left over from before the change being watched, whose failures are old news. */
export function progressOf(service: Service, tasks: readonly Task[], ignore: ReadonlySet<string> = new Set()) {
  const wanted = tasks.filter((task) => task.desiredState !== 'shutdown');
  const live = wanted.filter((task) => !TERMINAL_STATES.has(task.status.state));
  const running = live.filter((task) => task.status.state === 'running').length;
  const completed = tasks.filter((task) => task.status.state === 'complete').length;
  const pendingTasks = live.filter((task) => task.status.state === 'new' || task.status.state === 'pending');
  const failed = tasks
    .filter((task) => !ignore.has(task.id) && (task.status.state === 'failed' || task.status.state === 'rejected'))
    .sort((a, b) => b.status.since.localeCompare(a.status.since))[0];
  const mode = service.spec.mode;
  let desired: number;
  let converged: boolean;
  switch (mode.kind) {
    case 'replicated':
      desired = mode.replicas;
      converged = running === desired && live.length === desired;
      break;
    case 'global':
      // Known only once the orchestrator made one task per eligible node.
      desired = live.length;
      converged = desired > 0 && running === desired;
      break;
    case 'replicated-job':
      desired = mode.totalCompletions;
      converged = completed >= desired;
      break;
    case 'global-job':
      desired = wanted.length;
      converged = desired > 0 && live.length === 0 && completed >= desired;
      break;
  }
  return {
    running,
    desired,
    completed,
    pending: pendingTasks.length,
    pendingReason: pendingTasks.find((task) => task.status.pendingReason)?.status.pendingReason,
    lastError: failed ? failed.status.error || failed.status.message || `task ${failed.status.state}` : undefined,
    converged,
  } satisfies Progress;
}

/** The REPLICAS column: "2/3", "3/3 (max 1 per node)", "1/2 (4/10 completed)", as docker prints them. */
export function replicasColumn(service: Service, tasks: readonly Task[]): string {
  const progress = progressOf(service, tasks);
  const mode = service.spec.mode;
  const maxPerNode = service.spec.task.placement.maxReplicasPerNode;
  const perNode = maxPerNode > 0 ? ` (max ${maxPerNode} per node)` : '';
  switch (mode.kind) {
    case 'replicated':
      return `${progress.running}/${mode.replicas}${perNode}`;
    case 'global':
      return `${progress.running}/${progress.desired}`;
    case 'replicated-job':
      return `${progress.running}/${mode.maxConcurrent} (${progress.completed}/${mode.totalCompletions} completed)`;
    case 'global-job':
      return `${progress.running}/${progress.desired - progress.completed} (${progress.completed}/${progress.desired} completed)`;
  }
}

function describe(name: string, service: Service, progress: Progress): string {
  const counts = isJob(service)
    ? `${progress.completed}/${progress.desired} completed, ${progress.running} running`
    : `${progress.running}/${progress.desired} running`;
  const pending =
    progress.pending > 0
      ? `, ${progress.pending} pending${progress.pendingReason ? `: ${progress.pendingReason}` : ''}`
      : '';
  const error = progress.lastError && !progress.converged ? ` (last failure: ${progress.lastError})` : '';
  return `${name}: ${counts}${pending}${error}`;
}

export interface WaitOptions {
  /** How often to look (docker: 500 ms). */
  intervalMs?: number;
  /** Give up once nothing changed for this long. */
  idleTimeoutMs?: number;
  /** Give up sooner when tasks wait for a node with a reason and nothing changes for this long. */
  stuckPendingMs?: number;
  /** Tasks that existed before the change; their failures are not reported. */
  ignoreTaskIds?: ReadonlySet<string>;
  /** Where the progress lines go. */
  out: Output;
}

export type WaitResult = { converged: true } | { converged: false; reason: string };

export const WAIT_DEFAULTS = { intervalMs: 500, idleTimeoutMs: 60_000, stuckPendingMs: 10_000 };

/**
 * Polls the service and its tasks until it converges, printing a line whenever the summary changes. Gives up
 * (and says why) when tasks are stuck pending with a reason, or when nothing at all changes for a while: the
 * swarm keeps trying either way; only the waiting stops.
 */
export async function waitForConvergence(
  client: ApiClient,
  serviceId: string,
  options: WaitOptions,
): Promise<WaitResult> {
  const { intervalMs, idleTimeoutMs, stuckPendingMs } = { ...WAIT_DEFAULTS, ...options };
  let lastLine = '';
  let lastStates = '';
  let changedAt = Date.now();
  for (;;) {
    const [service, tasks] = await Promise.all([
      client.getService(serviceId),
      client.listTasks({ service: serviceId }),
    ]);
    const progress = progressOf(service, tasks, options.ignoreTaskIds);
    const name = service.spec.name;
    const line = describe(name, service, progress);
    if (line !== lastLine) options.out.write(`${line}\n`);
    // Any task moving (preparing → starting, say) is progress, even when the summary reads the same.
    const states = tasks
      .map((task) => `${task.id}:${task.status.state}:${task.desiredState}`)
      .sort()
      .join(',');
    if (line !== lastLine || states !== lastStates) changedAt = Date.now();
    lastLine = line;
    lastStates = states;
    if (progress.converged) {
      options.out.write(`${name}: ${isJob(service) ? 'job complete' : 'converged'}\n`);
      return { converged: true };
    }
    const idle = Date.now() - changedAt;
    if (progress.pending > 0 && progress.pendingReason && idle >= stuckPendingMs) {
      const tasksWord = progress.pending === 1 ? '1 task' : `${progress.pending} tasks`;
      return {
        converged: false,
        reason: `${name}: ${tasksWord} stuck pending: ${progress.pendingReason} (the swarm keeps trying; see 'swarm service ps ${name}')`,
      };
    }
    if (idle >= idleTimeoutMs) {
      return {
        converged: false,
        reason: `${name}: not converged after ${Math.round(idle / 1000)}s without progress (${line.slice(name.length + 2)}); the swarm keeps trying (see 'swarm service ps ${name}')`,
      };
    }
    await sleep(intervalMs);
  }
}

const ROLLOUT_ENDS: Record<string, 'done' | 'stopped' | 'waiting'> = {
  completed: 'done',
  rollback_completed: 'done',
  paused: 'stopped',
  rollback_paused: 'stopped',
  awaiting_promotion: 'waiting',
};

/**
 * Follows a rolling update or rollback until it completes, pauses, or waits on its canaries, printing a line
 * per change ("web: updating: 4/6 tasks updated"). `startedAt` is the updateStatus.startedAt the change set,
 * so an automatic rollback that replaced it is followed too and reported as what it is.
 */
export async function waitForRollout(
  client: ApiClient,
  serviceId: string,
  options: { out: Output; intervalMs?: number; idleTimeoutMs?: number },
): Promise<WaitResult> {
  const { intervalMs, idleTimeoutMs } = { ...WAIT_DEFAULTS, ...options };
  let lastLine = '';
  let changedAt = Date.now();
  for (;;) {
    const [service, tasks] = await Promise.all([
      client.getService(serviceId),
      client.listTasks({ service: serviceId }),
    ]);
    const status = service.updateStatus;
    const name = service.spec.name;
    if (!status) return waitForConvergence(client, serviceId, options);
    const live = tasks.filter((t) => t.desiredState !== 'shutdown' && !TERMINAL_STATES.has(t.status.state));
    const updated = live.filter(
      (t) => t.status.state === 'running' && isDeepStrictEqual(t.template, service.spec.task),
    ).length;
    const total = progressOf(service, tasks).desired;
    const line = `${name}: ${status.state.replace('_', ' ')}: ${updated}/${total} tasks on the ${status.state.startsWith('rollback') ? 'previous' : 'new'} spec${status.message ? ` (${status.message})` : ''}`;
    if (line !== lastLine) {
      options.out.write(`${line}\n`);
      changedAt = Date.now();
      lastLine = line;
    }
    const end = ROLLOUT_ENDS[status.state];
    if (end === 'done') return { converged: true };
    if (end === 'waiting') return { converged: true };
    if (end === 'stopped') return { converged: false, reason: `${name}: ${status.message}` };
    if (Date.now() - changedAt >= idleTimeoutMs) {
      return {
        converged: false,
        reason: `${name}: no progress for ${Math.round((Date.now() - changedAt) / 1000)}s (${status.state}); the swarm keeps trying (see 'swarm service inspect ${name}')`,
      };
    }
    await sleep(intervalMs);
  }
}
