// Where the control socket lives, for the daemon that creates it and the CLI that looks for it.
import { homedir } from 'node:os';
import { join } from 'node:path';

export const CONTROL_SOCKET_NAME = 'swarmd.sock';

/** `$SWARMD_DATA_DIR`, else `~/.swarmd`: a per-user default, since swarmd runs unprivileged on HPC nodes. */
export function defaultDataDir(env: Record<string, string | undefined>): string {
  return env.SWARMD_DATA_DIR || join(env.HOME || homedir(), '.swarmd');
}

export function controlSocketPath(dataDir: string): string {
  return join(dataDir, CONTROL_SOCKET_NAME);
}
