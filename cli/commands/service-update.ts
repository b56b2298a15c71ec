// `swarm service update|rollback|promote`: change a service and follow the rolling update it starts.
// Update flags apply over the current spec: scalar flags replace a value, list flags come as docker's
// --X-add / --X-rm pairs, and the result is checked with the API's own schema before anything is sent.
import { checkBody } from '../../daemon/api/schemas.ts';
import { parseConstraint, serviceSpecSchema } from '../../daemon/api/service-schema.ts';
import { type PortProtocol, portLabel, type Service, type ServiceSpec } from '../../daemon/api/services.ts';
import { parseBytes, parseCpus, parseDuration } from '../../daemon/api/units.ts';
import {
  booleanFlag,
  type Command,
  type Context,
  type FlagSpec,
  type FlagValues,
  listFlag,
  stringFlag,
  UsageError,
} from '../command.ts';
import { parsePublish } from './publish-flag.ts';
import {
  CREATE_FLAGS,
  FlagReader,
  healthFromFlags,
  parseMount,
  rolloutFromFlags,
  usageErrorFor,
} from './service-flags.ts';
import { waitForRollout } from './service-progress.ts';

/** Create flags that set one value, and mean the same on update. */
const SCALAR_FLAGS = [
  'replicas',
  'workdir',
  'user',
  'replicas-max-per-node',
  'reserve-cpu',
  'reserve-memory',
  'limit-cpu',
  'limit-memory',
  'limit-pids',
  'gpus',
  'restart-condition',
  'restart-delay',
  'restart-max-attempts',
  'restart-window',
  'stop-signal',
  'stop-grace-period',
];

const addRm = (what: string, valueName: string, removeName = valueName): Record<string, FlagSpec> => ({
  [`${what}-add`]: { type: 'string', multiple: true, valueName, description: `Add or update a ${what}` },
  [`${what}-rm`]: { type: 'string', multiple: true, valueName: removeName, description: `Remove a ${what}` },
});

export const UPDATE_FLAGS: Record<string, FlagSpec> = {
  image: { type: 'string', valueName: 'image', description: 'Service image tag (docker, singularity)' },
  args: { type: 'string', valueName: 'command', description: 'Service command args (split on spaces)' },
  force: { type: 'boolean', description: 'Redeploy every task even if nothing changed' },
  rollback: { type: 'boolean', description: 'Roll back to the previous spec (same as "service rollback")' },
  ...Object.fromEntries(
    Object.entries(CREATE_FLAGS).filter(
      ([name]) =>
        SCALAR_FLAGS.includes(name) ||
        name.startsWith('health-') ||
        name === 'no-healthcheck' ||
        name.startsWith('update-') ||
        name.startsWith('rollback-') ||
        name === 'lb-algorithm' ||
        name === 'detach',
    ),
  ),
  ...addRm('env', 'KEY=VALUE', 'KEY'),
  ...addRm('label', 'key=value', 'key'),
  ...addRm('container-label', 'key=value', 'key'),
  ...addRm('constraint', 'expr'),
  ...addRm('placement-pref', 'spread=attr'),
  ...addRm('mount', 'mount', 'target'),
  ...addRm('publish', 'port', 'published[/protocol]'),
};

/** The current spec with the flags applied, checked in full; throws a UsageError naming the flag. */
export function updatedSpec(current: ServiceSpec, flags: FlagValues): ServiceSpec {
  const reader = new FlagReader(flags);
  const task = current.task;
  const replicas = reader.integer('replicas');
  if (replicas !== undefined && current.mode.kind !== 'replicated') {
    throw new UsageError(`--replicas can only be used with a replicated service, not ${current.mode.kind}`);
  }
  const image = stringFlag(flags, 'image');
  if (image !== undefined && task.runtime === 'process') {
    throw new UsageError('--image: the process runtime runs no image; give the program with --args');
  }
  const argsText = stringFlag(flags, 'args');
  const args = argsText === undefined ? task.args : argsText.split(/\s+/).filter(Boolean);
  const keep = <T>(value: T | undefined, base: T): T => (value === undefined ? base : value);
  const { reservations, limits } = task.resources;
  const candidate = {
    ...current,
    labels: applyPairs(current.labels, flags, 'label'),
    mode: replicas === undefined ? current.mode : { kind: 'replicated', replicas },
    task: {
      ...task,
      image: keep(image, task.image),
      args,
      env: applyPairs(task.env, flags, 'env'),
      workdir: keep(stringFlag(flags, 'workdir'), task.workdir),
      user: keep(stringFlag(flags, 'user'), task.user),
      labels: applyPairs(task.labels, flags, 'container-label'),
      mounts: [
        ...task.mounts.filter((m) => !listFlag(flags, 'mount-rm').includes(m.target)),
        ...listFlag(flags, 'mount-add').map((text) => reader.checked('mount-add', text, parseMount)),
      ],
      resources: {
        reservations: {
          nanoCpus: keep(reader.unit('reserve-cpu', parseCpus), reservations.nanoCpus),
          memoryBytes: keep(reader.unit('reserve-memory', parseBytes), reservations.memoryBytes),
          gpus: keep(reader.integer('gpus'), reservations.gpus),
        },
        limits: {
          nanoCpus: keep(reader.unit('limit-cpu', parseCpus), limits.nanoCpus),
          memoryBytes: keep(reader.unit('limit-memory', parseBytes), limits.memoryBytes),
          pids: keep(reader.integer('limit-pids'), limits.pids),
        },
      },
      restart: {
        condition: keep(stringFlag(flags, 'restart-condition'), task.restart.condition),
        delayMs: keep(reader.unit('restart-delay', parseDuration), task.restart.delayMs),
        maxAttempts: keep(reader.integer('restart-max-attempts'), task.restart.maxAttempts),
        windowMs: keep(reader.unit('restart-window', parseDuration), task.restart.windowMs),
      },
      placement: {
        constraints: applyList(task.placement.constraints, flags, 'constraint', (text) => {
          reader.checked('constraint-add', text, parseConstraint);
          return text;
        }),
        spread: applyList(task.placement.spread, flags, 'placement-pref', (text) => {
          const equals = text.indexOf('=');
          if (text.slice(0, equals) !== 'spread') {
            throw new UsageError(`invalid --placement-pref-add "${text}": expected spread=<node attribute>`);
          }
          return text.slice(equals + 1);
        }),
        maxReplicasPerNode: keep(reader.integer('replicas-max-per-node'), task.placement.maxReplicasPerNode),
      },
      stopSignal: keep(stringFlag(flags, 'stop-signal'), task.stopSignal),
      stopGracePeriodMs: keep(reader.unit('stop-grace-period', parseDuration), task.stopGracePeriodMs),
      healthcheck: healthFromFlags(reader, task.healthcheck),
      forceUpdate: task.forceUpdate + (booleanFlag(flags, 'force') ? 1 : 0),
    },
    update: rolloutFromFlags(reader, 'update', { ...current.update }),
    rollback: rolloutFromFlags(reader, 'rollback', { ...current.rollback }),
    endpoint: updatedEndpoint(current, flags, reader),
  };
  const checked = checkBody(serviceSpecSchema, candidate);
  if (checked.ok) return checked.value;
  // Problems in the ports are the --publish-add flag's (the spec's own were valid before).
  const problemFlags = { ...flags, publish: [...publishedOf(current), ...listFlag(flags, 'publish-add')] };
  throw usageErrorFor(checked.problem.path, checked.problem.message, problemFlags, []);
}

/** Ports of the spec as `--publish` would have been typed (for error messages about the whole list). */
function publishedOf(current: ServiceSpec): string[] {
  return (current.endpoint?.ports ?? []).map((p) => `${p.published}:${p.target}/${p.protocol}`);
}

/**
 * --publish-rm PUBLISHED[/PROTOCOL] removes a port (without a protocol, both tcp and udp on that number);
 * --publish-add adds one, or replaces the one with the same published port and protocol.
 */
function updatedEndpoint(current: ServiceSpec, flags: FlagValues, reader: FlagReader) {
  // A spec stored before published ports existed has no endpoint: the schema's defaults apply.
  const base = current.endpoint ?? { ports: [], algorithm: 'round-robin' };
  const removed = listFlag(flags, 'publish-rm').map(parsePublishRm);
  const added = listFlag(flags, 'publish-add').map((text) => reader.checked('publish-add', text, parsePublish));
  const replaced = new Set(
    added.map((p) => portLabel({ published: Number(p.published), protocol: p.protocol === 'udp' ? 'udp' : 'tcp' })),
  );
  const kept = base.ports.filter(
    (p) =>
      !replaced.has(portLabel(p)) &&
      !removed.some((r) => r.published === p.published && (r.protocol === undefined || r.protocol === p.protocol)),
  );
  return { ...base, ports: [...kept, ...added], algorithm: stringFlag(flags, 'lb-algorithm') ?? base.algorithm };
}

function parsePublishRm(text: string): { published: number; protocol?: PortProtocol } {
  // docker's PUBLISHED:TARGET form is accepted too: the target is ignored.
  const match = /^(\d+)(?::\d+)?(?:\/(tcp|udp))?$/.exec(text.toLowerCase());
  const published = Number(match?.[1]);
  if (!match || published < 1 || published > 65535) {
    throw new UsageError(`invalid --publish-rm "${text}": expected the published port, e.g. 8080 or 53/udp`);
  }
  return match[2] === undefined ? { published } : { published, protocol: match[2] as PortProtocol };
}

/** --X-rm KEY removes, --X-add KEY=VALUE sets (a bare KEY: empty value, as docker's labels). */
function applyPairs(base: Record<string, string>, flags: FlagValues, what: string): Record<string, string> {
  const out = { ...base };
  for (const key of listFlag(flags, `${what}-rm`)) delete out[key];
  for (const text of listFlag(flags, `${what}-add`)) {
    const equals = text.indexOf('=');
    if (equals === 0) throw new UsageError(`invalid --${what}-add "${text}": expected KEY=VALUE`);
    out[equals === -1 ? text : text.slice(0, equals)] = equals === -1 ? '' : text.slice(equals + 1);
  }
  return out;
}

function applyList(base: string[], flags: FlagValues, what: string, parse: (text: string) => string): string[] {
  const removed = new Set(listFlag(flags, `${what}-rm`));
  const added = listFlag(flags, `${what}-add`).map(parse);
  return [...base.filter((item) => !removed.has(item)), ...added.filter((item) => !base.includes(item))];
}

async function follow(context: Context, service: Service, flags: FlagValues): Promise<number> {
  context.io.stdout.write(`${service.spec.name}\n`);
  if (booleanFlag(flags, 'detach')) return 0;
  const result = await waitForRollout(context.client, service.id, { out: context.io.stderr });
  if (result.converged) return 0;
  context.io.stderr.write(`swarm: ${result.reason}\n`);
  return 1;
}

const detachFlag = CREATE_FLAGS.detach!;

export const update: Command = {
  name: 'update',
  summary: 'Update a service (a rolling update when the task changes)',
  usage: '[OPTIONS] SERVICE',
  flags: UPDATE_FLAGS,
  args: { min: 1, max: 1 },
  async run(context, flags, [ref]) {
    const service = await context.client.getService(ref!);
    if (booleanFlag(flags, 'rollback')) {
      const other = Object.keys(flags).find(
        (flag) => flag !== 'rollback' && flag !== 'detach' && flags[flag] !== undefined,
      );
      if (other) throw new UsageError(`--rollback conflicts with --${other}`);
      return follow(context, await context.client.rollbackService(service.id), flags);
    }
    // Checked in full before the request, with the server's own schema: a typo sends nothing.
    const spec = updatedSpec(service.spec, flags);
    const updated = await context.client.updateService(service.id, { version: service.version, spec });
    return follow(context, updated, flags);
  },
};

export const rollback: Command = {
  name: 'rollback',
  summary: 'Revert a service to its previous spec (drops canaries)',
  usage: '[OPTIONS] SERVICE',
  flags: { detach: detachFlag },
  args: { min: 1, max: 1 },
  async run(context, flags, [ref]) {
    return follow(context, await context.client.rollbackService(ref!), flags);
  },
};

export const promote: Command = {
  name: 'promote',
  summary: "Promote an update's canaries: the rollout goes on to every task",
  usage: '[OPTIONS] SERVICE',
  flags: { detach: detachFlag },
  args: { min: 1, max: 1 },
  async run(context, flags, [ref]) {
    return follow(context, await context.client.promoteService(ref!), flags);
  },
};
