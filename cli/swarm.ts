// `swarm`: the command-line client of a swarmd daemon's control API.
//   node cli/swarm.ts [--host PATH] [--format table|json] COMMAND ...
// Exit status: 0 success, 1 the request failed (the message says why), 2 the command was mistyped.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ApiClientError } from '../daemon/api/client.ts';
import { type CommandGroup, type Io, UsageError } from './command.ts';
import { completionCommand } from './commands/completion.ts';
import { infoCommand } from './commands/info.ts';
import { joinTokenCommand } from './commands/join-token.ts';
import { nodeGroup } from './commands/node.ts';
import { serviceGroup } from './commands/service.ts';
import { versionCommand } from './commands/version.ts';
import { dispatch } from './dispatch.ts';

export const swarmCommands: CommandGroup = {
  name: 'swarm',
  summary: 'Manage a swarmd swarm: its nodes, join tokens and services',
  commands: [
    infoCommand,
    nodeGroup,
    serviceGroup,
    joinTokenCommand,
    versionCommand,
    completionCommand(() => swarmCommands),
  ],
};

export async function main(argv: readonly string[], io: Io): Promise<number> {
  try {
    return await dispatch(swarmCommands, argv, io);
  } catch (error) {
    io.stderr.write(`swarm: ${error instanceof Error ? error.message : String(error)}\n`);
    if (error instanceof UsageError) return 2;
    // Anything else is a bug in the CLI; SWARM_DEBUG=1 shows where, for the bug report.
    if (!(error instanceof ApiClientError) && io.env.SWARM_DEBUG && error instanceof Error) {
      io.stderr.write(`${error.stack}\n`);
    }
    return 1;
  }
}

function isScript(): boolean {
  const invoked = process.argv[1];
  if (!invoked) return false;
  try {
    return realpathSync(invoked) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isScript()) {
  // `swarm node ls | head` closes the pipe early; that is not an error worth a stack trace.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
  process.exitCode = await main(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
  });
}
