// Which of a task's limits are applied how: cgroup v2 where the controller is available, the memory watchdog
// for memory otherwise, and for pids and CPU nothing but a warning. RLIMIT_NPROC is no substitute for a pids
// limit: it counts every process of the user (all tasks running as nobody, or the whole account of a
// non-root swarmd), not the task's. RLIMIT_CPU caps CPU seconds and then kills: not a rate limit.
import { join } from 'node:path';
import { type CgroupSupport, createTaskCgroup, type Limits, neededControllers, removeCgroup } from './cgroups.ts';

export interface TaskLimits {
  /** The task's cgroup, into which its program is moved. */
  path?: string;
  /** A memory limit left to the watchdog. */
  watchdogMemoryBytes?: number;
}

export async function applyLimits(
  taskId: string,
  limits: Limits,
  support: CgroupSupport,
  warn: (message: string) => void,
): Promise<TaskLimits> {
  const needed = neededControllers(limits);
  let path: string | undefined;
  let applied = new Set<string>();
  let reason = support.ok ? '' : support.reason;
  if (support.ok) {
    try {
      ({ path, applied } = await createTaskCgroup(support.tasksParent, taskId, limits, support.controllers));
      const missing = needed.filter((c) => !applied.has(c));
      if (missing.length > 0) reason = `controllers not available: ${missing.join(', ')}`;
    } catch (error) {
      reason = `cannot create the task's cgroup: ${(error as Error).message}`;
      await removeCgroup(join(support.tasksParent, taskId)).catch(() => {});
    }
  }
  const result: TaskLimits = path !== undefined ? { path } : {};
  const { memoryBytes, pids, nanoCpus } = limits;
  if (memoryBytes !== undefined && !applied.has('memory')) {
    result.watchdogMemoryBytes = memoryBytes;
    warn(
      `task ${taskId}: memory limit ${memoryBytes} enforced by swarmd sampling resident memory, not by the ` +
        `kernel (no cgroup v2 memory controller: ${reason}); it may overshoot briefly and holds only while swarmd runs`,
    );
  }
  if (pids !== undefined && !applied.has('pids')) {
    warn(`task ${taskId}: pids limit ${pids} not applied (${reason}); RLIMIT_NPROC counts per user, not task`);
  }
  if (nanoCpus !== undefined && !applied.has('cpu')) {
    warn(`task ${taskId}: CPU limit ${nanoCpus / 1e9} CPUs not applied (${reason})`);
  }
  return result;
}
