// A task's directory, <stateDir>/tasks/<taskId>/, is the whole record of the task, so a restarted swarmd
// finds everything there:
//
//   task.json      swarmd's record (mode 0600: it holds the task's environment); written by swarmd only
//   stdout.log     the program's output, appended by the program itself (so it never waits on swarmd)
//   stdout.times   "<end offset> <ms since epoch>" lines: when swarmd saw the bytes up to that offset
//   *.1            the previous, rotated file
//   oom            written by swarmd's memory watchdog when it killed the task
//   exit           the exit status, written by the supervisor through an fd (see wrapper.ts); "aborted"
//                  when swarmd went away before releasing the program, which then never ran
//   work/          the working dir, unless the spec names one
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ExecutorError } from '../types.ts';

export interface TaskRecord {
  version: 1;
  taskId: string;
  nodeId: string;
  serviceId: string;
  serviceName: string;
  dir: string;
  cwd: string;
  env: Record<string, string>;
  uid: number;
  gid: number;
  /** Whether spawns (the task, exec) change uid/gid: only when swarmd runs as root. */
  switchUser: boolean;
  hostPort?: number;
  /** The task's cgroup v2 directory, when it has one. */
  cgroup?: string;
  /** Memory limit enforced by swarmd's watchdog (no cgroup memory controller). */
  watchdogMemoryBytes?: number;
  bootId: string;
  supervisorPid: number;
  supervisorStart: number;
  /** Absent until the program has been found and released: a start that swarmd did not finish. */
  pid?: number;
  pidStart?: number;
  startedAt?: string;
}

const TASK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Task IDs name directories and cgroups: nothing that could climb out of the state dir. */
export function checkTaskId(taskId: string): void {
  if (!TASK_ID.test(taskId)) throw new ExecutorError(`invalid task ID for a directory name: "${taskId}"`, false);
}

export function tasksRoot(stateDir: string): string {
  return join(stateDir, 'tasks');
}

export function taskDir(stateDir: string, taskId: string): string {
  checkTaskId(taskId);
  return join(tasksRoot(stateDir), taskId);
}

export const statusFile = (dir: string): string => join(dir, 'exit');
export const oomFile = (dir: string): string => join(dir, 'oom');

export async function writeRecord(record: TaskRecord): Promise<void> {
  // Write then rename: a crash mid-write leaves the previous record, never a torn one.
  const tmp = join(record.dir, 'task.json.tmp');
  await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, join(record.dir, 'task.json'));
}

export async function readRecord(dir: string): Promise<TaskRecord | undefined> {
  try {
    const record = JSON.parse(await readFile(join(dir, 'task.json'), 'utf8')) as TaskRecord;
    return record.version === 1 ? record : undefined;
  } catch {
    return undefined;
  }
}

export async function listTaskDirs(stateDir: string): Promise<string[]> {
  try {
    const names = await readdir(tasksRoot(stateDir));
    return names.filter((name) => TASK_ID.test(name)).map((name) => join(tasksRoot(stateDir), name));
  } catch {
    return [];
  }
}

/** What the supervisor recorded: `$?` (absent if it did not get to write one), and whether the start aborted. */
export async function readExitFile(dir: string): Promise<{ code?: number; aborted: boolean }> {
  let lines: string[];
  try {
    lines = (await readFile(statusFile(dir), 'utf8')).split('\n').filter((line) => line !== '');
  } catch {
    return { aborted: false };
  }
  const last = lines.at(-1);
  const aborted = lines[0] === 'aborted';
  return last !== undefined && /^\d+$/.test(last) && !aborted ? { code: Number(last), aborted } : { aborted };
}
