// Kernel-enforced limits through cgroup v2, used only where swarmd can create child cgroups: as root, or in a
// subtree delegated to it (systemd `Delegate=yes`). Nothing is assumed: detection tries, and reports why not.
//
// Layout: <parent>/swarmd-tasks/<taskId>/, where <parent> is swarmd's own cgroup (or the `cgroupParent`
// option). cgroup v2 forbids enabling controllers for the children of a cgroup that holds processes (the
// "no internal processes" rule), so when swarmd's own cgroup holds swarmd, swarmd first moves itself into a
// leaf, <parent>/swarmd-daemon, as systemd's delegation docs prescribe. Only the program goes into the task's
// cgroup (moved there before it execs), not its supervisor: the pids limit counts the task's processes
// exactly, and the OOM killer cannot pick the supervisor, which must live to record the exit status.
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export type Controller = 'memory' | 'pids' | 'cpu';

export type CgroupSupport =
  | { ok: true; tasksParent: string; controllers: Set<Controller> }
  | { ok: false; reason: string };

const WANTED: Controller[] = ['memory', 'pids', 'cpu'];

function errorCode(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? String(error);
}

/** The directory of this process's cgroup in the mounted v2 hierarchy, or why there is none. */
async function ownCgroupDir(): Promise<string | { reason: string }> {
  const cgroupLine = (await readFile('/proc/self/cgroup', 'utf8')).split('\n').find((l) => l.startsWith('0::'));
  if (cgroupLine === undefined) return { reason: 'no cgroup v2 hierarchy (cgroup v1 only)' };
  const ownPath = cgroupLine.slice(3);
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const [left, right] = line.split(' - ');
    if (right?.split(' ')[0] !== 'cgroup2' || left === undefined) continue;
    const fields = left.split(' ');
    const root = fields[3] ?? '/';
    const mountPoint = fields[4] ?? '';
    if (root === '/') return join(mountPoint, ownPath);
    if (ownPath === root || ownPath.startsWith(`${root}/`)) return join(mountPoint, ownPath.slice(root.length));
  }
  return { reason: 'cgroup v2 is not mounted where this process can see its own cgroup' };
}

async function readControllers(dir: string): Promise<Set<string>> {
  return new Set((await readFile(join(dir, 'cgroup.controllers'), 'utf8')).trim().split(/\s+/));
}

/** Enables each controller it can for the children of `dir` (one at a time: one refused spoils a batch). */
async function enableControllers(dir: string, controllers: Controller[]): Promise<Controller[]> {
  const enabled: Controller[] = [];
  let lastError: unknown;
  for (const controller of controllers) {
    try {
      await writeFile(join(dir, 'cgroup.subtree_control'), `+${controller}`);
      enabled.push(controller);
    } catch (error) {
      lastError = error;
    }
  }
  if (enabled.length === 0) throw lastError;
  return enabled;
}

const DAEMON_LEAF = 'swarmd-daemon';

/**
 * Finds or prepares the cgroup under which task cgroups are created. `explicitParent` is an existing cgroup
 * v2 directory an operator prepared for swarmd (controllers available, writable). Under systemd, the unit
 * wants `Delegate=yes` and `DelegateSubgroup=swarmd-daemon` (systemd 254+), so that a restarted swarmd is
 * started in the leaf again rather than in the unit's cgroup, which cannot take processes once its children
 * have controllers.
 */
export async function detectCgroups(explicitParent?: string): Promise<CgroupSupport> {
  try {
    let parent: string;
    if (explicitParent !== undefined) {
      parent = explicitParent;
    } else {
      const own = await ownCgroupDir();
      if (typeof own !== 'string') return { ok: false, reason: own.reason };
      // Already in the leaf (moved there by an earlier swarmd, or started there by systemd).
      parent = basename(own) === DAEMON_LEAF ? dirname(own) : own;
    }
    const available = await readControllers(parent);
    const wanted = WANTED.filter((c) => available.has(c));
    if (wanted.length === 0) {
      return { ok: false, reason: `no memory/pids/cpu controller delegated to ${parent} (has: ${[...available]})` };
    }
    let enabled: Controller[];
    try {
      enabled = await enableControllers(parent, wanted);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EBUSY' || explicitParent !== undefined) throw error;
      // Our own cgroup holds processes (us): move into a leaf so its children may get controllers.
      const leaf = join(parent, DAEMON_LEAF);
      await mkdir(leaf, { recursive: true });
      await writeFile(join(leaf, 'cgroup.procs'), String(process.pid));
      enabled = await enableControllers(parent, wanted);
    }
    const tasksParent = join(parent, 'swarmd-tasks');
    await mkdir(tasksParent, { recursive: true });
    enabled = await enableControllers(tasksParent, enabled);
    return { ok: true, tasksParent, controllers: new Set(enabled) };
  } catch (error) {
    return { ok: false, reason: `cannot set up cgroups: ${(error as Error).message}` };
  }
}

export interface Limits {
  nanoCpus?: number;
  memoryBytes?: number;
  pids?: number;
}

/** The controllers a task's limits need. */
export function neededControllers(limits: Limits): Controller[] {
  const needed: Controller[] = [];
  if (limits.memoryBytes !== undefined) needed.push('memory');
  if (limits.pids !== undefined) needed.push('pids');
  if (limits.nanoCpus !== undefined) needed.push('cpu');
  return needed;
}

const CPU_PERIOD_US = 100_000;

/** Creates the task's cgroup and writes the limits it can; returns the limits applied. */
export async function createTaskCgroup(
  tasksParent: string,
  taskId: string,
  limits: Limits,
  controllers: Set<Controller>,
): Promise<{ path: string; applied: Set<Controller> }> {
  const path = join(tasksParent, taskId);
  await mkdir(path);
  const applied = new Set<Controller>();
  const write = async (controller: Controller, file: string, value: string): Promise<void> => {
    if (!controllers.has(controller)) return;
    await writeFile(join(path, file), value);
    applied.add(controller);
  };
  if (limits.memoryBytes !== undefined) {
    await write('memory', 'memory.max', String(limits.memoryBytes));
    // Without this the limit only bounds RAM and the task would spill to swap instead of being OOM-killed.
    await writeFile(join(path, 'memory.swap.max'), '0').catch(() => {});
  }
  if (limits.pids !== undefined) await write('pids', 'pids.max', String(limits.pids));
  if (limits.nanoCpus !== undefined) {
    const quota = Math.max(1000, Math.round((limits.nanoCpus / 1e9) * CPU_PERIOD_US));
    await write('cpu', 'cpu.max', `${quota} ${CPU_PERIOD_US}`);
  }
  return { path, applied };
}

export async function moveIntoCgroup(path: string, pid: number): Promise<void> {
  await writeFile(join(path, 'cgroup.procs'), String(pid));
}

/** Whether the kernel's OOM killer killed a process of this cgroup (memory.events oom_kill). */
export async function cgroupOomKilled(path: string): Promise<boolean> {
  try {
    const events = await readFile(join(path, 'memory.events'), 'utf8');
    return Number(/^oom_kill (\d+)$/m.exec(events)?.[1] ?? 0) > 0;
  } catch {
    return false;
  }
}

/** PIDs still in the cgroup (a program's children that left its session, for instance). */
export async function cgroupPids(path: string): Promise<number[]> {
  try {
    const text = (await readFile(join(path, 'cgroup.procs'), 'utf8')).trim();
    return text === '' ? [] : text.split('\n').map(Number);
  } catch {
    return [];
  }
}

/** Removes the (empty) cgroup; a cgroup directory goes with rmdir, its files cannot be unlinked. */
export async function removeCgroup(path: string): Promise<void> {
  try {
    await rmdir(path);
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw error;
  }
}
