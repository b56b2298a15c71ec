// Runs the `swarm` CLI in process against a daemon socket, capturing what it prints.
import { main } from '../../cli/swarm.ts';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runSwarm(
  socketPath: string,
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    env: { SWARM_HOST: socketPath, ...env },
  });
  return { code, stdout, stderr };
}
