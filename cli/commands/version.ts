// `swarm version`: this client's version, and the daemon's when one answers (as `docker version` does).
import { SWARMD_VERSION } from '../../daemon/api/version.ts';
import type { Command } from '../command.ts';
import { renderFields, writeJson } from '../output.ts';

export const versionCommand: Command = {
  name: 'version',
  summary: 'Show the version of the client and of the daemon',
  usage: '',
  args: { min: 0, max: 0 },
  async run({ io, format, client }) {
    // The daemon's version is in its node description, which managers serve; a worker's daemon answers info only.
    const info = await client.info().catch(() => null);
    const nodes = info ? await client.listNodes().catch(() => null) : null;
    const daemon = info
      ? (nodes?.find((node) => node.id === info.nodeId)?.description.swarmdVersion ?? 'unknown (ask a manager)')
      : null;
    if (format === 'json') writeJson(io.stdout, { client: SWARMD_VERSION, daemon });
    else
      io.stdout.write(
        renderFields([
          ['Client', SWARMD_VERSION],
          ['Daemon', daemon ?? '(not reachable)'],
        ]),
      );
    return 0;
  },
};
