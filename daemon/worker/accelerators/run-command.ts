// The default RunCommand: execFile with a timeout, so a hung driver (nvidia-smi can block for many seconds when
// the driver is wedged) delays startup by a bounded time instead of forever.
import { execFile } from 'node:child_process';
import type { CommandResult } from './types.ts';

const TIMEOUT_MS = 15_000;
const MAX_OUTPUT = 1024 * 1024;

export function runCommand(command: string, args: string[]): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { timeout: TIMEOUT_MS, maxBuffer: MAX_OUTPUT, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ code: 0, stdout, stderr });
          return;
        }
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'EACCES') {
          reject(error);
          return;
        }
        // Killed by the timeout (or a signal): no exit code of its own. Otherwise stdout and stderr stay the
        // program's own (nvidia-smi reports its failures on stdout), not child_process's "Command failed" summary.
        const exit = typeof code === 'number' ? code : -1;
        const reason = error.killed ? `timed out after ${TIMEOUT_MS} ms` : '';
        resolve({ code: exit, stdout, stderr: stderr || reason });
      },
    );
  });
}
