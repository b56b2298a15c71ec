// exec for the process runtime (how `cmd` health checks run): the command runs with the task's environment,
// working dir and user, in its own process group so that a timeout kills whatever it started as well. It is
// not placed in the task's cgroup: there is no way to put a process there before it runs.
import { spawn } from 'node:child_process';
import { signalNumber } from '../signals.ts';
import { type ExecResult, ExecutorError } from '../types.ts';

const OUTPUT_MAX = 64 * 1024;
/** After the command exits, how long a background child of it may hold the output pipes open. */
const LINGER_MS = 200;

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // The group is gone already.
  }
}

/**
 * Runs the command, with stdout and stderr together in `output` (capped at 64 KiB). A command that cannot be
 * started gets 127 (not found) or 126, as from a shell; one that times out gets -1, as no exit code exists.
 */
export function runCommand(
  program: string,
  args: string[],
  options: { cwd: string; env: Record<string, string>; uid?: number; gid?: number; timeoutMs: number },
): Promise<ExecResult> {
  return new Promise<ExecResult>((resolve, reject) => {
    let output = '';
    let timedOut = false;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (result: ExecResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(program, args, {
        cwd: options.cwd,
        env: options.env,
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
        ...(options.uid !== undefined ? { uid: options.uid, gid: options.gid ?? options.uid } : {}),
      });
    } catch (error) {
      reject(new ExecutorError(`exec ${program}: ${(error as Error).message}`, false));
      return;
    }
    const collect = (chunk: Buffer): void => {
      if (output.length < OUTPUT_MAX) output += chunk.toString('utf8').slice(0, OUTPUT_MAX - output.length);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, options.timeoutMs);
    child.once('error', (error: NodeJS.ErrnoException) => {
      finish({ exitCode: error.code === 'ENOENT' ? 127 : 126, output: `exec ${program}: ${error.message}` });
    });
    // 'close' waits for the pipes, which a background child may hold: give it a moment after 'exit'.
    child.once('exit', () => setTimeout(() => killGroup(child.pid), LINGER_MS).unref());
    child.once('close', (code, signal) => {
      if (timedOut) {
        finish({ exitCode: -1, output: `${output}\nexec timed out after ${options.timeoutMs} ms` });
      } else {
        finish({ exitCode: code ?? 128 + (signal ? signalNumber(signal) : 0), output });
      }
    });
  });
}
