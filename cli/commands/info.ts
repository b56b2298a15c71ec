// `swarm info`: what this node knows about itself and the swarm.
import type { SwarmInfo } from '../../daemon/api/types.ts';
import type { Command } from '../command.ts';
import { renderFields, writeJson } from '../output.ts';

export const infoCommand: Command = {
  name: 'info',
  summary: 'Display information about this node and its swarm',
  usage: '',
  args: { min: 0, max: 0 },
  async run({ io, format, client }) {
    const info = await client.info();
    if (format === 'json') writeJson(io.stdout, info);
    else io.stdout.write(renderInfo(info));
    return 0;
  },
};

export function renderInfo(info: SwarmInfo): string {
  return renderFields([
    ['Node ID', info.nodeId],
    ['Cluster ID', info.clusterId],
    ['Role', info.role],
    ['Is Leader', String(info.isLeader)],
    ['Leader', info.leaderNodeId ?? '(none)'],
    ['Managers', String(info.managers)],
    ['Nodes', String(info.nodes)],
    ['CA Fingerprint', info.caFingerprint],
    ['Data Dir', info.dataDir],
    ['Listen Addresses', info.listenAddrs],
    ['Mesh Encryption', info.meshEncryption],
    [
      'Raft',
      info.raft
        ? `term ${info.raft.term}, commit ${info.raft.commit}, applied ${info.raft.applied}`
        : '(not a manager)',
    ],
  ]);
}
