// Child processes for benchmarks: start, wait until they say they are ready, kill, and always clean up.
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

export interface Started {
  child: ChildProcess;
  pid: number;
}

/**
 * Spawns a process logging to logFile; resolves once `ready()` says so (polled) or rejects on exit/timeout.
 * ownSession: in a session of its own (setsid), as swarmd's process runtime starts tasks. Where the kernel groups
 * scheduling by session (autogroup, on by default in Debian's kernels), that makes it a CPU group of its own.
 */
export async function startProcess(
  command: string,
  args: string[],
  logFile: string,
  ready: () => Promise<boolean>,
  timeoutMs = 20_000,
  { ownSession = false }: { ownSession?: boolean } = {},
): Promise<Started> {
  const log = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: ownSession });
  children.add(child);
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  let exited: number | null = null;
  child.on('exit', (code) => {
    exited = code ?? -1;
    children.delete(child);
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== null) throw new Error(`${command} exited with ${exited} before it was ready; see ${logFile}`);
    if (await ready().catch(() => false)) return { child, pid: child.pid! };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${command} not ready within ${timeoutMs} ms; see ${logFile}`);
    }
    await sleep(50);
  }
}

export function killHard(started: Started): Promise<void> {
  return new Promise((resolve) => {
    if (started.child.exitCode !== null || started.child.signalCode !== null) return resolve();
    started.child.once('exit', () => resolve());
    started.child.kill('SIGKILL');
  });
}

export async function stopGracefully(started: Started, timeoutMs = 5000): Promise<void> {
  if (started.child.exitCode !== null || started.child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => started.child.once('exit', () => resolve()));
  started.child.kill('SIGTERM');
  const timer = setTimeout(() => started.child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
