// `swarm service create` flags → a ServiceSpec, checked in full with the API's own schema before anything is
// sent. Every problem is reported as `invalid --flag "what you typed": why`, so the user sees which of many
// flags to fix (exit 2, nothing sent).
import { randomBytes } from 'node:crypto';
import { checkBody, formatPath } from '../../daemon/api/schemas.ts';
import {
  parseConstraint,
  parseSpreadDescriptor,
  RUNTIMES,
  SERVICE_MODES,
  serviceSpecSchema,
} from '../../daemon/api/service-schema.ts';
import type { HealthCheck, ServiceSpec, TaskTemplate } from '../../daemon/api/services.ts';
import { InvalidValueError, parseBytes, parseCpus, parseDuration } from '../../daemon/api/units.ts';
import { booleanFlag, type FlagSpec, type FlagValues, listFlag, stringFlag, UsageError } from '../command.ts';
import { parsePublish } from './publish-flag.ts';

type Mount = TaskTemplate['mounts'][number];

/** The embedded default: it runs anywhere, with no container engine (demo, edge devices). */
export const DEFAULT_RUNTIME = 'process';

const string = (valueName: string, description: string): FlagSpec => ({ type: 'string', valueName, description });
const list = (valueName: string, description: string): FlagSpec => ({
  type: 'string',
  multiple: true,
  valueName,
  description,
});

export const CREATE_FLAGS: Record<string, FlagSpec> = {
  name: string('string', 'Service name (default: derived from the image or program)'),
  mode: string('replicated|global|replicated-job|global-job', 'How tasks are made (default: replicated)'),
  replicas: string('uint', 'Number of tasks (replicated: default 1; replicated-job: completions)'),
  'max-concurrent': string('uint', 'Number of job tasks to run at once (default: --replicas)'),
  'total-completions': string('uint', 'Number of job tasks to complete (default: --replicas)'),
  runtime: string('docker|singularity|process', `Runtime that runs the tasks (default: ${DEFAULT_RUNTIME})`),
  env: { ...list('KEY=VALUE', 'Set an environment variable'), short: 'e' },
  workdir: { ...string('dir', 'Working directory inside the task (absolute)'), short: 'w' },
  user: { ...string('user[:group]', 'User the task runs as'), short: 'u' },
  label: { ...list('key=value', 'Service label'), short: 'l' },
  'container-label': list('key=value', 'Task (container) label'),
  constraint: list('expr', 'Placement constraint, e.g. node.labels.zone==edge'),
  'placement-pref': list('spread=attr', 'Placement preference, e.g. spread=node.labels.rack'),
  'replicas-max-per-node': string('uint', 'Maximum number of tasks per node (default 0 = unlimited)'),
  'reserve-cpu': string('decimal', 'Reserve CPUs'),
  'reserve-memory': string('bytes', 'Reserve memory, e.g. 512m'),
  'limit-cpu': string('decimal', 'Limit CPUs'),
  'limit-memory': string('bytes', 'Limit memory, e.g. 1g'),
  'limit-pids': string('uint', 'Limit the number of processes (default 0 = unlimited)'),
  gpus: string('uint', 'Number of GPUs to reserve for each task'),
  'restart-condition': string('none|on-failure|any', 'Restart when condition is met (default: any)'),
  'restart-delay': string('duration', 'Delay between restart attempts (default 5s)'),
  'restart-max-attempts': string('uint', 'Maximum number of restarts before giving up (default 0 = unlimited)'),
  'restart-window': string('duration', 'Window used to evaluate the restart policy (default 0 = unbounded)'),
  'stop-signal': string('signal', 'Signal to stop the task (default: SIGTERM)'),
  'stop-grace-period': string('duration', 'Time to wait before force killing a task (default 10s)'),
  mount: list('mount', 'Mount, e.g. type=bind,source=/srv,target=/data,readonly (or type=volume|tmpfs)'),
  publish: {
    ...list(
      'port',
      'Publish a port: 8080:80[/tcp], 53:53/udp, or published=8080,target=80,protocol=tcp,mode=host,proxy-protocol=v2',
    ),
    short: 'p',
  },
  'lb-algorithm': string('round-robin|least-connections|p2c', 'Load balancing over the tasks (default: round-robin)'),
  ...healthFlags(),
  ...rolloutFlags('update'),
  'update-canary': string('uint', 'Start this many new tasks beside the old ones, then wait for "service promote"'),
  'update-auto-promote': {
    type: 'boolean',
    description: 'Promote the canaries once they stay healthy through the monitor window',
  },
  ...rolloutFlags('rollback'),
  detach: {
    type: 'boolean',
    short: 'd',
    description: 'Exit immediately instead of waiting for the service to converge',
  },
};

function healthFlags(): Record<string, FlagSpec> {
  return {
    'health-cmd': string('command', 'Health check: a shell command run inside the task; exit 0 = healthy'),
    'health-http': string('path', "Health check: GET this path on the task's port; 2xx/3xx = healthy"),
    'health-tcp': string('port', "Health check: connect to this port of the task (0 = the task's PORT)"),
    'health-port': string('port', "Port the --health-http check uses (default: the task's PORT)"),
    'health-interval': string('duration', 'Time between health checks (default 30s)'),
    'health-timeout': string('duration', 'Maximum time for one check (default 30s)'),
    'health-retries': string('uint', 'Consecutive failures that make a task unhealthy (default 3)'),
    'health-start-period': string('duration', 'Failures in this time after start do not count (default 0s)'),
    'no-healthcheck': { type: 'boolean', description: 'Disable the health check' },
  };
}

function rolloutFlags(kind: 'update' | 'rollback'): Record<string, FlagSpec> {
  const actions = kind === 'update' ? 'pause|continue|rollback' : 'pause|continue';
  const what = kind === 'update' ? 'updated' : 'rolled back';
  return {
    [`${kind}-parallelism`]: string('uint', `Tasks ${what} at once (0 = all at once; default 1)`),
    [`${kind}-delay`]: string('duration', `Delay between tasks ${what} (default 0s)`),
    [`${kind}-failure-action`]: string(actions, `Action on ${kind} failure (default: pause)`),
    [`${kind}-monitor`]: string('duration', `Time to watch each ${what} task for failure (default 5s)`),
    [`${kind}-max-failure-ratio`]: string('ratio', `Failure rate to tolerate during the ${kind}, 0 to 1 (default 0)`),
    [`${kind}-order`]: string('stop-first|start-first', `Order of ${kind} operations (default: stop-first)`),
  };
}

/** Where in the spec each flag lands: a schema problem at that path is reported against the flag. */
const FIELD_FLAGS: readonly [path: string, flag: string][] = [
  ['name', 'name'],
  ['labels', 'label'],
  ['mode.kind', 'mode'],
  ['mode.replicas', 'replicas'],
  ['mode.maxConcurrent', 'max-concurrent'],
  ['mode.totalCompletions', 'total-completions'],
  ['task.runtime', 'runtime'],
  ['task.env', 'env'],
  ['task.workdir', 'workdir'],
  ['task.user', 'user'],
  ['task.labels', 'container-label'],
  ['task.mounts', 'mount'],
  ['task.resources.reservations.nanoCpus', 'reserve-cpu'],
  ['task.resources.reservations.memoryBytes', 'reserve-memory'],
  ['task.resources.reservations.gpus', 'gpus'],
  ['task.resources.limits.nanoCpus', 'limit-cpu'],
  ['task.resources.limits.memoryBytes', 'limit-memory'],
  ['task.resources.limits.pids', 'limit-pids'],
  ['task.restart.condition', 'restart-condition'],
  ['task.restart.delayMs', 'restart-delay'],
  ['task.restart.maxAttempts', 'restart-max-attempts'],
  ['task.restart.windowMs', 'restart-window'],
  ['task.placement.constraints', 'constraint'],
  ['task.placement.spread', 'placement-pref'],
  ['task.placement.maxReplicasPerNode', 'replicas-max-per-node'],
  ['task.stopSignal', 'stop-signal'],
  ['task.stopGracePeriodMs', 'stop-grace-period'],
  ['task.healthcheck.command', 'health-cmd'],
  ['task.healthcheck.path', 'health-http'],
  ['task.healthcheck.port', 'health-port'],
  ['task.healthcheck.intervalMs', 'health-interval'],
  ['task.healthcheck.timeoutMs', 'health-timeout'],
  ['task.healthcheck.retries', 'health-retries'],
  ['task.healthcheck.startPeriodMs', 'health-start-period'],
  ['update.canary', 'update-canary'],
  ['endpoint.ports', 'publish'],
  ['endpoint.algorithm', 'lb-algorithm'],
  ...(['update', 'rollback'] as const).flatMap((kind): [string, string][] => [
    [`${kind}.parallelism`, `${kind}-parallelism`],
    [`${kind}.delayMs`, `${kind}-delay`],
    [`${kind}.failureAction`, `${kind}-failure-action`],
    [`${kind}.monitorMs`, `${kind}-monitor`],
    [`${kind}.maxFailureRatio`, `${kind}-max-failure-ratio`],
    [`${kind}.order`, `${kind}-order`],
  ]),
];

type HealthCheckInput = Partial<Record<keyof HealthCheck, unknown>>;

/**
 * The health check the flags describe, over `base` (the current one, for update). A kind flag starts a new
 * check (timings kept from `base`); --no-healthcheck removes it.
 */
export function healthFromFlags(reader: FlagReader, base: HealthCheck | null): HealthCheckInput | null {
  const { flags } = reader;
  if (booleanFlag(flags, 'no-healthcheck')) {
    const other = Object.keys(healthFlags()).find((flag) => flag !== 'no-healthcheck' && flags[flag] !== undefined);
    if (other) throw new UsageError(`--no-healthcheck conflicts with --${other}`);
    return null;
  }
  const kinds = (['health-cmd', 'health-http', 'health-tcp'] as const).filter((flag) => flags[flag] !== undefined);
  if (kinds.length > 1) throw new UsageError(`--${kinds[0]} conflicts with --${kinds[1]}: give one health check`);
  let check: HealthCheckInput | null = base ? { ...base } : null;
  const cmd = stringFlag(flags, 'health-cmd');
  const http = stringFlag(flags, 'health-http');
  if (cmd !== undefined) check = { ...check, kind: 'cmd', command: ['/bin/sh', '-c', cmd], path: '/', port: 0 };
  if (http !== undefined) check = { ...check, kind: 'http', command: [], path: http, port: 0 };
  if (flags['health-tcp'] !== undefined) {
    check = { ...check, kind: 'tcp', command: [], path: '/', port: reader.integer('health-tcp') };
  }
  const timings = {
    port: reader.integer('health-port'),
    intervalMs: reader.unit('health-interval', parseDuration),
    timeoutMs: reader.unit('health-timeout', parseDuration),
    retries: reader.integer('health-retries'),
    startPeriodMs: reader.unit('health-start-period', parseDuration),
  };
  const given = Object.entries(timings).filter(([, value]) => value !== undefined);
  if (given.length === 0) return check;
  if (!check)
    throw new UsageError('--health-* settings need a check: give --health-cmd, --health-http or --health-tcp');
  if (timings.port !== undefined && check.kind !== 'http')
    throw new UsageError('--health-port goes with --health-http');
  return { ...check, ...Object.fromEntries(given) };
}

/** The update or rollback config the flags describe, over `base` (the current one, for update). */
export function rolloutFromFlags(reader: FlagReader, kind: 'update' | 'rollback', base: Record<string, unknown> = {}) {
  const config: Record<string, unknown> = {
    ...base,
    parallelism: reader.integer(`${kind}-parallelism`),
    delayMs: reader.unit(`${kind}-delay`, parseDuration),
    failureAction: stringFlag(reader.flags, `${kind}-failure-action`),
    monitorMs: reader.unit(`${kind}-monitor`, parseDuration),
    maxFailureRatio: reader.decimal(`${kind}-max-failure-ratio`),
    order: stringFlag(reader.flags, `${kind}-order`),
  };
  if (kind === 'update') {
    config.canary = reader.integer('update-canary');
    if (reader.flags['update-auto-promote'] !== undefined)
      config.autoPromote = booleanFlag(reader.flags, 'update-auto-promote');
  }
  // Unset flags keep the base value (or get the schema's default).
  for (const key of Object.keys(config)) if (config[key] === undefined) config[key] = base[key];
  return Object.fromEntries(Object.entries(config).filter(([, value]) => value !== undefined));
}

/**
 * Builds and checks the spec. `args` are IMAGE [COMMAND] [ARG...], or PROGRAM [ARG...] for the process
 * runtime. `env` is the CLI's environment (a bare `-e KEY` copies KEY from it, as docker does).
 */
export function specFromFlags(flags: FlagValues, args: readonly string[], env: Record<string, string | undefined>) {
  const reader = new FlagReader(flags);
  const runtime = stringFlag(flags, 'runtime') ?? DEFAULT_RUNTIME;
  if (!(RUNTIMES as readonly string[]).includes(runtime)) {
    throw invalid('runtime', runtime, `unknown runtime; must be one of ${RUNTIMES.join(', ')}`);
  }
  const [first = '', ...rest] = args;
  // docker keeps the image's entrypoint and passes COMMAND ARG... as its arguments; for a plain process the
  // first word is the program itself.
  const program = runtime === 'process' ? { image: '', command: first ? [first] : [], args: rest } : undefined;
  const candidate = {
    name: stringFlag(flags, 'name') ?? defaultName(runtime === 'process' ? first : imageBase(first)),
    labels: reader.pairs('label'),
    mode: reader.mode(),
    task: {
      runtime,
      ...(program ?? { image: first, command: [], args: rest }),
      env: reader.env(env),
      workdir: stringFlag(flags, 'workdir') ?? null,
      user: stringFlag(flags, 'user') ?? null,
      labels: reader.pairs('container-label'),
      mounts: listFlag(flags, 'mount').map((text) => reader.checked('mount', text, parseMount)),
      resources: {
        reservations: {
          nanoCpus: reader.unit('reserve-cpu', parseCpus),
          memoryBytes: reader.unit('reserve-memory', parseBytes),
          gpus: reader.integer('gpus'),
        },
        limits: {
          nanoCpus: reader.unit('limit-cpu', parseCpus),
          memoryBytes: reader.unit('limit-memory', parseBytes),
          pids: reader.integer('limit-pids'),
        },
      },
      restart: {
        condition: stringFlag(flags, 'restart-condition'),
        delayMs: reader.unit('restart-delay', parseDuration),
        maxAttempts: reader.integer('restart-max-attempts'),
        windowMs: reader.unit('restart-window', parseDuration),
      },
      placement: {
        constraints: listFlag(flags, 'constraint').map((text) => {
          reader.checked('constraint', text, parseConstraint);
          return text;
        }),
        spread: listFlag(flags, 'placement-pref').map((text) => reader.checked('placement-pref', text, parseSpread)),
        maxReplicasPerNode: reader.integer('replicas-max-per-node'),
      },
      stopSignal: stringFlag(flags, 'stop-signal'),
      stopGracePeriodMs: reader.unit('stop-grace-period', parseDuration),
      healthcheck: healthFromFlags(reader, null),
    },
    update: rolloutFromFlags(reader, 'update'),
    rollback: rolloutFromFlags(reader, 'rollback'),
    endpoint: {
      ports: listFlag(flags, 'publish').map((text) => reader.checked('publish', text, parsePublish)),
      algorithm: stringFlag(flags, 'lb-algorithm'),
    },
  };
  const checked = checkBody(serviceSpecSchema, candidate);
  if (checked.ok) return checked.value satisfies ServiceSpec;
  throw usageErrorFor(checked.problem.path, checked.problem.message, flags, args);
}

/** Reads flags into the shapes the schema takes, refusing what cannot even be read as such. */
export class FlagReader {
  readonly flags: FlagValues;

  constructor(flags: FlagValues) {
    this.flags = flags;
  }

  /** A whole number as typed ("-1" included: the schema says what range is allowed). */
  integer(flag: string): number | undefined {
    const text = stringFlag(this.flags, flag);
    if (text === undefined) return undefined;
    if (!/^[-+]?\d+$/.test(text.trim())) throw invalid(flag, text, 'must be a whole number');
    return Number(text);
  }

  /** A decimal number as typed ("1.5" included: the schema says what range is allowed). */
  decimal(flag: string): number | undefined {
    const text = stringFlag(this.flags, flag);
    if (text === undefined) return undefined;
    if (!/^[-+]?(\d+\.?\d*|\.\d+)$/.test(text.trim())) throw invalid(flag, text, 'must be a number');
    return Number(text);
  }

  unit(flag: string, parse: (text: string) => number): number | undefined {
    const text = stringFlag(this.flags, flag);
    return text === undefined ? undefined : this.checked(flag, text, parse);
  }

  checked<T>(flag: string, text: string, parse: (text: string) => T): T {
    try {
      return parse(text);
    } catch (error) {
      throw invalid(flag, text, error instanceof InvalidValueError ? error.reason : (error as Error).message);
    }
  }

  /** `key=value` pairs; a bare `key` has an empty value, as in docker's --label. */
  pairs(flag: string): Record<string, string> {
    const record: Record<string, string> = {};
    for (const text of listFlag(this.flags, flag)) {
      const equals = text.indexOf('=');
      if (equals === 0) throw invalid(flag, text, 'expected key=value');
      record[keyOf(text)] = equals === -1 ? '' : text.slice(equals + 1);
    }
    return record;
  }

  /** `KEY=VALUE`; a bare `KEY` takes its value from the environment `swarm` runs in, as docker's --env does. */
  env(env: Record<string, string | undefined>): Record<string, string> {
    const record: Record<string, string> = {};
    for (const text of listFlag(this.flags, 'env')) {
      const equals = text.indexOf('=');
      if (equals === 0) throw invalid('env', text, 'expected KEY=VALUE');
      if (equals === -1) {
        const value = env[text];
        if (value === undefined) throw invalid('env', text, `expected KEY=VALUE (${text} is not set here to copy)`);
        record[text] = value;
      } else {
        record[text.slice(0, equals)] = text.slice(equals + 1);
      }
    }
    return record;
  }

  mode() {
    const kind = stringFlag(this.flags, 'mode') ?? 'replicated';
    if (!(SERVICE_MODES as readonly string[]).includes(kind)) {
      throw invalid('mode', kind, `must be one of ${SERVICE_MODES.join(', ')}`);
    }
    const replicas = this.integer('replicas');
    const maxConcurrent = this.integer('max-concurrent');
    const totalCompletions = this.integer('total-completions');
    // As docker does: these flags mean nothing in the other modes, and ignoring them would hide a mistake.
    if (replicas !== undefined && kind !== 'replicated' && kind !== 'replicated-job') {
      throw new UsageError(`--replicas can only be used with replicated or replicated-job mode, not ${kind}`);
    }
    if ((maxConcurrent !== undefined || totalCompletions !== undefined) && kind !== 'replicated-job') {
      const flag = maxConcurrent !== undefined ? '--max-concurrent' : '--total-completions';
      throw new UsageError(`${flag} can only be used with replicated-job mode, not ${kind}`);
    }
    if (kind === 'replicated') return { kind, replicas };
    // docker: for a job, --replicas is the number of completions, and how many run at once unless told otherwise.
    if (kind === 'replicated-job') {
      return { kind, maxConcurrent: maxConcurrent ?? replicas, totalCompletions: totalCompletions ?? replicas };
    }
    return { kind };
  }
}

/** docker's CSV syntax: `type=bind,source=/a,target=/b,readonly`; type defaults to volume, as in docker. */
export function parseMount(text: string): Mount {
  const fields: Record<string, string> = {};
  for (const part of text.split(',')) {
    const equals = part.indexOf('=');
    const key = (equals === -1 ? part : part.slice(0, equals)).trim().toLowerCase();
    const value = equals === -1 ? undefined : part.slice(equals + 1);
    const name = MOUNT_KEYS[key];
    if (name === undefined) {
      throw new Error(`unknown key "${key}" (expected type, source|src, target|destination|dst, readonly|ro)`);
    }
    if (name === 'readonly') {
      const flag = value === undefined ? 'true' : value.toLowerCase();
      if (!['true', '1', 'false', '0'].includes(flag)) throw new Error(`invalid readonly value "${value}"`);
      fields.readonly = flag === 'true' || flag === '1' ? 'true' : 'false';
    } else {
      if (value === undefined || value === '') throw new Error(`${key} needs a value`);
      fields[name] = value;
    }
  }
  if (fields.target === undefined) throw new Error('target is required');
  return {
    type: (fields.type ?? 'volume') as Mount['type'],
    ...(fields.source !== undefined ? { source: fields.source } : {}),
    target: fields.target,
    readOnly: fields.readonly === 'true',
  };
}

const MOUNT_KEYS: Record<string, string> = {
  type: 'type',
  source: 'source',
  src: 'source',
  target: 'target',
  destination: 'target',
  dst: 'target',
  readonly: 'readonly',
  ro: 'readonly',
};

/** `spread=node.labels.rack`: the only kind of preference docker (and swarmkit) has. */
function parseSpread(text: string): string {
  const equals = text.indexOf('=');
  const kind = equals === -1 ? text : text.slice(0, equals);
  if (kind !== 'spread' || equals === -1)
    throw new Error('expected spread=<node attribute>, e.g. spread=node.labels.rack');
  return parseSpreadDescriptor(text.slice(equals + 1));
}

export function invalid(flag: string, text: string, reason: string): UsageError {
  return new UsageError(`invalid --${flag} "${text}": ${reason}`);
}

/** A schema problem, told in terms of the flag (or argument) that set the field. */
export function usageErrorFor(
  path: readonly PropertyKey[],
  message: string,
  flags: FlagValues,
  args: readonly string[],
): UsageError {
  const field = formatPath(path);
  if (field === 'task.image') return new UsageError(`IMAGE ${message} (see 'swarm service create --help')`);
  if (field === 'task.command') {
    const example = 'swarm service create --name web -- python3 -m http.server';
    return new UsageError(
      `the program to run ${message.replace(/ \(.*\)$/, '')}: give it after the flags, e.g. ${example}`,
    );
  }
  const entry = FIELD_FLAGS.find(
    ([prefix]) => field === prefix || field.startsWith(`${prefix}.`) || field.startsWith(`${prefix}[`),
  );
  if (!entry) return new UsageError(`${field}: ${message}`);
  const [prefix, flag] = entry;
  const next = path[prefix.split('.').length];
  const value = flags[flag];
  let given: string | undefined;
  if (Array.isArray(value)) {
    // A list flag (the n-th --mount) or a KEY=VALUE flag (the --env that set this key).
    given = typeof next === 'number' ? String(value[next]) : value.map(String).find((text) => keyOf(text) === next);
  } else if (typeof value === 'string') {
    given = value;
  }
  if (given === undefined && flag === 'name' && args.length > 0) {
    return new UsageError(`the name derived from "${args[0]}" is not a valid service name; give one with --name`);
  }
  return given === undefined ? new UsageError(`invalid --${flag}: ${message}`) : invalid(flag, given, message);
}

function keyOf(text: string): string {
  const equals = text.indexOf('=');
  return equals === -1 ? text : text.slice(0, equals);
}

/** "registry:5000/library/nginx:1.27@sha256:..." → "nginx". */
function imageBase(image: string): string {
  const withoutDigest = image.split('@')[0]!;
  const last = withoutDigest.split('/').pop() ?? '';
  return last.replace(/:[^:]*$/, '');
}

/**
 * docker names an unnamed service with a random adjective_surname; a name that says what runs reads better
 * in `service ls`: the image or program base name and a random suffix.
 */
function defaultName(base: string): string {
  const cleaned = (base.split('/').pop() ?? '')
    .replace(/[^a-zA-Z0-9_.-]/g, '-')
    .replace(/^[^a-zA-Z0-9]+/, '')
    .slice(0, 50);
  const suffix = randomBytes(3).toString('hex');
  return cleaned ? `${cleaned}-${suffix}` : `service-${suffix}`;
}
