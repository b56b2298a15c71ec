// `swarm node ...`: list, inspect and change the nodes of the swarm. Runs against a manager.
import { checkBody, formatPath, nodeUpdateSchema } from '../../daemon/api/schemas.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import {
  booleanFlag,
  type Command,
  type CommandGroup,
  type FlagValues,
  forEachRef,
  listFlag,
  stringFlag,
  UsageError,
} from '../command.ts';
import { capitalize, formatBytes, renderFields, renderTable, shortId, writeJson } from '../output.ts';

const ls: Command = {
  name: 'ls',
  aliases: ['list'],
  summary: 'List nodes in the swarm',
  usage: '[OPTIONS]',
  flags: { quiet: { type: 'boolean', short: 'q', description: 'Only display IDs' } },
  args: { min: 0, max: 0 },
  async run({ io, format, client }, flags) {
    const [nodes, info] = await Promise.all([client.listNodes(), client.info()]);
    const sorted = [...nodes].sort(
      (a, b) => a.description.hostname.localeCompare(b.description.hostname) || a.id.localeCompare(b.id),
    );
    if (booleanFlag(flags, 'quiet')) io.stdout.write(sorted.map((node) => `${node.id}\n`).join(''));
    else if (format === 'json') writeJson(io.stdout, sorted);
    else io.stdout.write(renderNodeTable(sorted, info.nodeId));
    return 0;
  },
};

export function renderNodeTable(nodes: readonly SwarmNode[], selfId: string): string {
  return renderTable(
    ['ID', 'HOSTNAME', 'STATUS', 'AVAILABILITY', 'MANAGER STATUS', 'ENGINE VERSION'],
    nodes.map((node) => [
      node.id === selfId ? `${shortId(node.id)} *` : shortId(node.id),
      node.description.hostname,
      capitalize(node.status.state),
      capitalize(node.availability),
      managerStatus(node),
      node.description.swarmdVersion,
    ]),
  );
}

/** Blank for workers; Leader, or the leader's view of how reachable this manager is. */
function managerStatus(node: SwarmNode): string {
  if (!node.managerStatus) return '';
  if (node.managerStatus.leader) return 'Leader';
  return capitalize(node.managerStatus.reachability);
}

const inspect: Command = {
  name: 'inspect',
  summary: 'Display detailed information on one or more nodes (JSON unless --pretty)',
  usage: '[OPTIONS] NODE [NODE...]',
  flags: { pretty: { type: 'boolean', description: 'Print the information in a human friendly format' } },
  args: { min: 1 },
  async run(context, flags, refs) {
    const found: SwarmNode[] = [];
    const failed = await forEachRef(context, refs, async (ref) => {
      found.push(await context.client.getNode(ref));
    });
    if (booleanFlag(flags, 'pretty')) context.io.stdout.write(found.map(renderNodeDetails).join('\n'));
    else writeJson(context.io.stdout, found);
    return failed ? 1 : 0;
  },
};

export function renderNodeDetails(node: SwarmNode): string {
  const labels = Object.entries(node.labels).map(([key, value]) => `- ${key}=${value}`);
  const { resources, platform } = node.description;
  return renderFields([
    ['ID', node.id],
    ['Hostname', node.description.hostname],
    ['Peer ID', node.peerId],
    ['Joined at', node.createdAt],
    ['Role', node.role],
    ['Availability', capitalize(node.availability)],
    ['Status', `${capitalize(node.status.state)}${node.status.message ? ` (${node.status.message})` : ''}`],
    ['Manager Status', node.managerStatus ? managerStatus(node) : '(worker)'],
    ['Addresses', node.addresses],
    ['Labels', labels.length > 0 ? labels : '(none)'],
    ['Platform', `${platform.os}/${platform.arch}`],
    ['CPUs', String(resources.nanoCpus / 1e9)],
    ['Memory', formatBytes(resources.memoryBytes)],
    ['Swarmd Version', node.description.swarmdVersion],
  ]);
}

const update: Command = {
  name: 'update',
  summary: 'Update a node',
  usage: '[OPTIONS] NODE',
  flags: {
    availability: { type: 'string', valueName: 'active|pause|drain', description: 'Availability of the node' },
    'label-add': { type: 'string', multiple: true, valueName: 'key=value', description: 'Add or update a node label' },
    'label-rm': { type: 'string', multiple: true, valueName: 'key', description: 'Remove a node label' },
    role: { type: 'string', valueName: 'manager|worker', description: 'Role of the node' },
    'heartbeat-period': {
      type: 'string',
      valueName: 'seconds|default',
      description: 'How often this node reports (longer for WAN edge links; it is marked down after 4 periods)',
    },
  },
  args: { min: 1, max: 1 },
  async run({ io, client }, flags, [ref]) {
    // Checked in full before the first request, with the server's own schema: a typo sends nothing.
    const changes = updateFromFlags(flags);
    const node = await client.getNode(ref!);
    await client.updateNode(node.id, { ...changes, version: node.version });
    io.stdout.write(`${ref}\n`);
    return 0;
  },
};

/** Schema field → the flag that sets it, so a validation message names what the user typed. */
const UPDATE_FLAGS: Record<string, string> = {
  availability: '--availability',
  labelAdd: '--label-add',
  labelRm: '--label-rm',
  role: '--role',
  heartbeatPeriodSeconds: '--heartbeat-period',
};

function updateFromFlags(flags: FlagValues) {
  const labelAdd: Record<string, string> = {};
  for (const pair of listFlag(flags, 'label-add')) {
    // `key=value`, or a bare `key` for an empty value, as docker accepts.
    const equals = pair.indexOf('=');
    const key = equals === -1 ? pair : pair.slice(0, equals);
    if (key === '') throw new UsageError(`invalid --label-add "${pair}": expected key=value`);
    labelAdd[key] = equals === -1 ? '' : pair.slice(equals + 1);
  }
  const labelRm = listFlag(flags, 'label-rm');
  const candidate = {
    version: 0, // the real one is read from the node just before sending
    ...(stringFlag(flags, 'availability') !== undefined ? { availability: stringFlag(flags, 'availability') } : {}),
    ...(Object.keys(labelAdd).length > 0 ? { labelAdd } : {}),
    ...(labelRm.length > 0 ? { labelRm } : {}),
    ...(stringFlag(flags, 'role') !== undefined ? { role: stringFlag(flags, 'role') } : {}),
    ...heartbeatFromFlag(stringFlag(flags, 'heartbeat-period')),
  };
  const checked = checkBody(nodeUpdateSchema, candidate);
  if (checked.ok) {
    const { version: _placeholder, ...changes } = checked.value;
    return changes;
  }
  const { path, message } = checked.problem;
  const [field, key] = path;
  const flag = UPDATE_FLAGS[String(field)] ?? formatPath(path);
  const given =
    field === 'labelRm' && typeof key === 'number'
      ? labelRm[key]
      : field === 'labelAdd'
        ? String(key)
        : (candidate as Record<string, unknown>)[String(field)];
  throw new UsageError(`invalid ${flag} "${String(given)}": ${message}`);
}

/** `--heartbeat-period 30` (seconds) or `--heartbeat-period default`; anything else goes to the schema as is. */
function heartbeatFromFlag(value: string | undefined): { heartbeatPeriodSeconds?: unknown } {
  if (value === undefined) return {};
  if (value === 'default') return { heartbeatPeriodSeconds: null };
  const seconds = Number(value);
  return { heartbeatPeriodSeconds: value.trim() !== '' && Number.isFinite(seconds) ? seconds : value };
}

function membershipCommand(name: 'promote' | 'demote', summary: string): Command {
  return {
    name,
    summary,
    usage: 'NODE [NODE...]',
    args: { min: 1 },
    async run(context, _flags, refs) {
      const failed = await forEachRef(context, refs, async (ref) => {
        if (name === 'promote') {
          await context.client.promoteNode(ref);
          context.io.stdout.write(`Node ${ref} promoted to a manager in the swarm.\n`);
        } else {
          await context.client.demoteNode(ref);
          context.io.stdout.write(`Manager ${ref} demoted in the swarm.\n`);
        }
      });
      return failed ? 1 : 0;
    },
  };
}

const rm: Command = {
  name: 'rm',
  aliases: ['remove'],
  summary: 'Remove one or more nodes from the swarm',
  usage: '[OPTIONS] NODE [NODE...]',
  flags: { force: { type: 'boolean', short: 'f', description: 'Force-remove a node from the swarm' } },
  args: { min: 1 },
  async run(context, flags, refs) {
    const force = booleanFlag(flags, 'force');
    const failed = await forEachRef(context, refs, async (ref) => {
      await context.client.removeNode(ref, { force });
      context.io.stdout.write(`${ref}\n`);
    });
    return failed ? 1 : 0;
  },
};

export const nodeGroup: CommandGroup = {
  name: 'node',
  summary: 'Manage swarm nodes',
  commands: [
    ls,
    inspect,
    update,
    membershipCommand('promote', 'Promote one or more nodes to manager in the swarm'),
    membershipCommand('demote', 'Demote one or more nodes from manager in the swarm'),
    rm,
  ],
};
