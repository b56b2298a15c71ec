// What the task's program is and what it sees: the program path, checked before anything is created, and an
// environment built only from the spec (never swarmd's own environment, which may hold its secrets).
import { constants, type Stats } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ExecutorError, type TaskRunSpec } from '../types.ts';
import type { TaskUser } from './users.ts';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The GPUs allocated to the task, for CUDA and NVIDIA's tools. A plain process cannot be kept from the other
 * devices (it sees the host's /dev), so this only tells well-behaved programs which GPUs are theirs. A task
 * with none gets an empty list (as the singularity runtime does), so a CUDA program in it does not land on a
 * GPU the scheduler gave to another task.
 */
export function gpuEnv(spec: TaskRunSpec): Record<string, string> {
  const ids = spec.devices.filter((device) => device.kind === 'gpu').flatMap((device) => device.ids);
  if (ids.length === 0) return { CUDA_VISIBLE_DEVICES: '', NVIDIA_VISIBLE_DEVICES: 'void' };
  return { CUDA_VISIBLE_DEVICES: ids.join(','), NVIDIA_VISIBLE_DEVICES: ids.join(',') };
}

/**
 * spec.env, PORT when the task has a host port, the allocated GPUs (overriding the spec's own variables), and
 * PATH/HOME only where the spec sets none.
 */
export function taskEnv(spec: TaskRunSpec, cwd: string): Record<string, string> {
  const env: Record<string, string> = { ...spec.env, ...gpuEnv(spec) };
  if (spec.hostPort !== undefined) env.PORT = String(spec.hostPort);
  env.PATH ??= DEFAULT_PATH;
  // The working dir is the one directory the task is sure to own; tools that write ~/.cache work there.
  env.HOME ??= cwd;
  return env;
}

/** Whether `user` may execute a file with these stats (supplementary groups are dropped at spawn). */
function executableBy(stats: Stats, user: TaskUser): boolean {
  const mode = stats.mode;
  if (user.uid === 0) return (mode & 0o111) !== 0;
  if (stats.uid === user.uid) return (mode & constants.S_IXUSR) !== 0;
  if (stats.gid === user.gid) return (mode & constants.S_IXGRP) !== 0;
  return (mode & constants.S_IXOTH) !== 0;
}

/**
 * The first directory on the way to `path` (itself included) that `user` may not search. A task whose working
 * dir sits under one still runs in it (the spawn enters it before switching user) but cannot reach it by its
 * absolute path ($HOME, `cd "$PWD"`).
 */
export async function unsearchableDir(path: string, user: TaskUser): Promise<string | undefined> {
  const dirs: string[] = [];
  for (let dir = resolve(path); ; dir = dirname(dir)) {
    dirs.unshift(dir);
    if (dir === dirname(dir)) break;
  }
  for (const dir of dirs) {
    const stats = await fileStats(dir);
    if (stats !== undefined && !executableBy(stats, user)) return dir;
  }
  return undefined;
}

async function fileStats(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch {
    return undefined;
  }
}

/**
 * The absolute path of the program: command[0] as a path (relative to the working dir) when it has a slash,
 * else searched in the task's PATH, as execvp would. Not found or not executable is the spec's fault, so the
 * error is not retryable.
 */
export async function resolveProgram(command: string[], path: string, cwd: string, user: TaskUser): Promise<string> {
  const name = command[0];
  if (name === undefined || name === '') {
    throw new ExecutorError('the process runtime needs a command (the program to run)', false);
  }
  const candidates = name.includes('/')
    ? [isAbsolute(name) ? name : resolve(cwd, name)]
    : path
        .split(':')
        .filter((dir) => dir !== '')
        .map((dir) => join(resolve(cwd, dir), name));
  let notExecutable: string | undefined;
  for (const candidate of candidates) {
    const stats = await fileStats(candidate);
    if (stats === undefined || stats.isDirectory()) continue;
    if (stats.isFile() && executableBy(stats, user)) {
      // `env` (which starts the program) would read NAME=VALUE as a variable, not as the program.
      if (candidate.includes('=')) throw new ExecutorError(`program path may not contain "=": ${candidate}`, false);
      return candidate;
    }
    notExecutable ??= candidate;
  }
  if (notExecutable !== undefined) {
    throw new ExecutorError(`program not executable by uid ${user.uid}: ${notExecutable}`, false);
  }
  const where = name.includes('/') ? candidates[0] : `${name} (searched PATH=${path})`;
  throw new ExecutorError(`program not found: ${where}`, false);
}
