// `swarm join-token`: show (or rotate) the token a new node joins with, and the command to run there.

import { roleSchema } from '../../daemon/api/schemas.ts';
import type { SwarmInfo } from '../../daemon/api/types.ts';
import { booleanFlag, type Command, UsageError } from '../command.ts';
import { writeJson } from '../output.ts';

export const joinTokenCommand: Command = {
  name: 'join-token',
  summary: 'Manage join tokens',
  usage: '[OPTIONS] (worker|manager)',
  flags: {
    quiet: { type: 'boolean', short: 'q', description: 'Only display the token' },
    rotate: { type: 'boolean', description: 'Rotate the join token (the old one stops working)' },
  },
  args: { min: 1, max: 1 },
  async run({ io, format, client }, flags, [roleArg]) {
    const parsed = roleSchema.safeParse(roleArg);
    if (!parsed.success) throw new UsageError(`unknown role "${roleArg}": must be worker or manager`);
    const role = parsed.data;
    const tokens = booleanFlag(flags, 'rotate') ? await client.rotateJoinToken(role) : await client.joinTokens();
    const token = tokens[role];
    if (booleanFlag(flags, 'quiet')) {
      io.stdout.write(`${token}\n`);
      return 0;
    }
    const command = `swarmd join --token ${token} ${joinAddress((await client.info()).listenAddrs)}`;
    if (format === 'json') {
      writeJson(io.stdout, { role, token, command });
      return 0;
    }
    if (booleanFlag(flags, 'rotate')) io.stdout.write(`Successfully rotated ${role} join token.\n\n`);
    io.stdout.write(`To add a ${role} to this swarm, run the following command:\n\n    ${command}\n`);
    return 0;
  },
};

const UNROUTABLE =
  /^(\/ip4\/(127\.|0\.0\.0\.0\/)|\/ip6\/(::1?|0:0:0:0:0:0:0:[01])\/|127\.|0\.0\.0\.0:|\[::1?\]:|localhost[:/])/;

/** The address other machines should dial: the first listen address that is neither loopback nor a wildcard. */
export function joinAddress(listenAddrs: SwarmInfo['listenAddrs']): string {
  return listenAddrs.find((addr) => !UNROUTABLE.test(addr)) ?? listenAddrs[0] ?? '<MANAGER-ADDRESS>';
}
