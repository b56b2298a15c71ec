// Memory limits where no cgroup memory controller is available: swarmd samples the resident memory of each
// limited task's session and kills the session when the sum exceeds the limit, as Slurm's OverMemoryKill and
// HTCondor's non-cgroup mode do. Chosen over rlimits because none of them bounds memory actually used:
// RLIMIT_AS (ulimit -v) counts reserved address space, so Go, the JVM, V8 or CUDA programs fail far below
// the limit; RLIMIT_DATA counts untouched thread stacks and arenas; RLIMIT_RSS is ignored by Linux.
// Weaker than the kernel's: it acts every interval (a fast allocator can overshoot in between), only while
// swarmd runs, and misses processes that leave the task's session. The executor warns whenever it is used.
import { writeFileSync } from 'node:fs';
import { isRunning, residentBytes, sessionMembers } from './procfs.ts';

export interface WatchedTask {
  /** The program's PID, which is its session ID. */
  pid: number;
  pidStart: number;
  limitBytes: number;
  /** Written before killing, so the exit status can say the task was killed for memory. */
  oomFile: string;
}

export class MemoryWatchdog {
  private readonly tasks = new Map<string, WatchedTask>();
  private timer: NodeJS.Timeout | undefined;
  private readonly intervalMs: number;
  private readonly warn: (message: string) => void;

  constructor(intervalMs: number, warn: (message: string) => void) {
    this.intervalMs = intervalMs;
    this.warn = warn;
  }

  watch(taskId: string, task: WatchedTask): void {
    this.tasks.set(taskId, task);
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.sample(), this.intervalMs);
      this.timer.unref();
    }
  }

  unwatch(taskId: string): void {
    this.tasks.delete(taskId);
    if (this.tasks.size === 0) this.close();
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One pass over /proc for all watched tasks. */
  sample(): void {
    for (const [taskId, task] of this.tasks) {
      if (!isRunning(task.pid, task.pidStart)) this.tasks.delete(taskId);
    }
    if (this.tasks.size === 0) {
      this.close();
      return;
    }
    const members = sessionMembers(new Set([...this.tasks.values()].map((t) => t.pid)));
    for (const [taskId, task] of this.tasks) {
      const pids = members.get(task.pid) ?? [];
      const used = pids.reduce((sum, pid) => sum + residentBytes(pid), 0);
      if (used <= task.limitBytes) continue;
      try {
        writeFileSync(task.oomFile, `${new Date().toISOString()} resident ${used} > limit ${task.limitBytes}\n`);
      } catch {
        // The kill matters more than the record of it.
      }
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      this.warn(`task ${taskId}: killed, resident memory ${used} bytes exceeds its limit of ${task.limitBytes}`);
      this.tasks.delete(taskId);
    }
  }
}
