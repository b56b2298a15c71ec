// The one schema of a service spec: the API parses every create and update body with it, and `swarm service
// create` validates its flags with it before sending anything. Parsing fills in Docker Swarm's defaults
// (swarmkit api/defaults/service.go): replicated with 1 replica, restart on any exit after 5 s with no limit,
// SIGTERM then 10 s before SIGKILL. The runtime has no default here: the caller (the CLI) chooses it.
//
// Sizes and durations may be given as numbers (bytes, milliseconds) or as docker-style strings ("512m",
// "1m30s"): the output is always numbers, exactly a ServiceSpec.
import { z } from 'zod';
import { LABEL_VALUE_MAX, labelKeySchema } from './schemas.ts';
import { portLabel, type RolloutConfig, type ServiceSpec, type UpdateConfig } from './services.ts';
import { InvalidValueError, parseBytes, parseDuration } from './units.ts';

export const SERVICE_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
export const RUNTIMES = ['docker', 'singularity', 'process'] as const;
export const SERVICE_MODES = ['replicated', 'global', 'replicated-job', 'global-job'] as const;
/** swarmkit's minimums (controlapi/service.go): below these a limit is a typo, not a choice. */
export const MIN_NANO_CPUS = 1e6;
export const MIN_MEMORY_BYTES = 4 * 1024 * 1024;

// ---------------------------------------------------------------- constraints

export interface Constraint {
  /** Lower-cased, except the label name of `node.labels.<key>`, which is kept as written. */
  attribute: string;
  op: '==' | '!=';
  value: string;
}

export const NODE_ATTRIBUTES = ['node.id', 'node.hostname', 'node.role', 'node.platform.os', 'node.platform.arch'];
const LABEL_PREFIX = 'node.labels.';
const ATTRIBUTE_HELP = `${NODE_ATTRIBUTES.join(', ')} or node.labels.<key>`;

/**
 * Normalizes a node attribute as constraints and spread preferences name it: keys are case-insensitive except
 * the label name (as in swarmkit's manager/constraint). Throws a plain reason when it names nothing.
 */
function nodeAttribute(key: string): string {
  const trimmed = key.trim();
  if (trimmed.slice(0, LABEL_PREFIX.length).toLowerCase() === LABEL_PREFIX) {
    const label = trimmed.slice(LABEL_PREFIX.length);
    if (label === '') throw new Error(`missing label name after "${LABEL_PREFIX}"`);
    if (/[\s=!]/.test(label)) throw new Error(`invalid label name "${label}"`);
    return `${LABEL_PREFIX}${label}`;
  }
  const lower = trimmed.toLowerCase();
  if (NODE_ATTRIBUTES.includes(lower)) return lower;
  throw new Error(`unknown attribute "${trimmed}"; expected ${ATTRIBUTE_HELP}`);
}

/**
 * "node.labels.zone==edge" → { attribute: 'node.labels.zone', op: '==', value: 'edge' }. The first `==` or `!=`
 * splits key from value; spaces around either are ignored. Throws InvalidValueError saying what is wrong.
 */
export function parseConstraint(text: string): Constraint {
  const fail = (reason: string): never => {
    throw new InvalidValueError('constraint', text, reason);
  };
  const eq = text.indexOf('==');
  const ne = text.indexOf('!=');
  const at = eq < 0 ? ne : ne < 0 ? eq : Math.min(eq, ne);
  if (at < 0) return fail(`expected KEY==VALUE or KEY!=VALUE, with KEY one of ${ATTRIBUTE_HELP}`);
  let attribute = '';
  try {
    attribute = nodeAttribute(text.slice(0, at));
  } catch (error) {
    return fail((error as Error).message);
  }
  const value = text.slice(at + 2).trim();
  if (value === '') return fail('missing value after the operator');
  if (/[=!]=/.test(value)) return fail('only one == or != per constraint; give several constraints instead');
  return { attribute, op: at === eq ? '==' : '!=', value };
}

/** A spread preference's descriptor ("node.labels.rack"), normalized like a constraint's key. */
export function parseSpreadDescriptor(text: string): string {
  try {
    return nodeAttribute(text);
  } catch (error) {
    throw new InvalidValueError('spread descriptor', text, (error as Error).message);
  }
}

// ---------------------------------------------------------------- field schemas

const count = (what: string) => z.number().int(`must be a whole number of ${what}`).min(0, 'must not be negative');

/** Refines with a parser that throws InvalidValueError: its message becomes the issue's. */
function parsedWith<T>(parse: (text: string) => T) {
  return (text: string, ctx: z.RefinementCtx): T => {
    try {
      return parse(text);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message, input: text });
      return z.NEVER;
    }
  };
}

const numberOrString = (hint: string) =>
  z.custom<number | string>((value) => typeof value === 'number' || typeof value === 'string', {
    error: `must be a number or a string such as ${hint}`,
  });

/** Bytes as a number, or a docker size ("512m"); 0 = no limit or reservation. */
const memorySchema = numberOrString('"512m"').transform((value, ctx) => {
  const bytes = typeof value === 'string' ? parsedWith(parseBytes)(value, ctx) : value;
  if (bytes === z.NEVER) return z.NEVER;
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    ctx.addIssue({ code: 'custom', message: 'must be a whole, non-negative number of bytes', input: value });
    return z.NEVER;
  }
  if (bytes !== 0 && bytes < MIN_MEMORY_BYTES) {
    ctx.addIssue({ code: 'custom', message: 'must be at least 4MiB (or 0 for none)', input: value });
    return z.NEVER;
  }
  return bytes;
});

/** Milliseconds as a number, or a Go duration ("1m30s"). */
const durationSchema = numberOrString('"10s"').transform((value, ctx) => {
  const ms = typeof value === 'string' ? parsedWith(parseDuration)(value, ctx) : value;
  if (ms === z.NEVER) return z.NEVER;
  if (!Number.isSafeInteger(ms) || ms < 0) {
    ctx.addIssue({ code: 'custom', message: 'must be a whole, non-negative number of milliseconds', input: value });
    return z.NEVER;
  }
  return ms;
});

const nanoCpusSchema = count('nanoCPUs').refine((n) => n === 0 || n >= MIN_NANO_CPUS, {
  error: 'must be at least 0.001 CPU (1000000 nanoCPUs), or 0 for none',
});

const labelsSchema = z.record(labelKeySchema, z.string().max(LABEL_VALUE_MAX));

// Docker passes any key without "=" through; shells and most programs only see these, so anything else is a typo.
const ENV_KEY_PATTERN = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
const envSchema = z.record(
  z
    .string()
    .regex(
      ENV_KEY_PATTERN,
      'invalid environment variable name: use letters, digits and _ . - (not starting with a digit)',
    ),
  z.string().refine((value) => !value.includes('\0'), 'must not contain a NUL character'),
);

const absolutePath = z
  .string()
  .min(1, 'is required')
  .refine((path) => path.startsWith('/'), 'must be an absolute path');

// Docker's volume name rule (volume/names.go).
const VOLUME_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

const mountSchema = z
  .strictObject({
    type: z.enum(['bind', 'volume', 'tmpfs']),
    source: z.string().optional(),
    target: absolutePath,
    readOnly: z.boolean().default(false),
  })
  .superRefine((mount, ctx) => {
    const problem = (message: string) => ctx.addIssue({ code: 'custom', path: ['source'], message });
    if (mount.type === 'bind') {
      if (!mount.source) problem('is required for a bind mount');
      else if (!mount.source.startsWith('/')) problem('must be an absolute path for a bind mount');
    } else if (mount.type === 'tmpfs') {
      if (mount.source !== undefined) problem('a tmpfs mount has no source');
    } else if (mount.source !== undefined && !VOLUME_NAME_PATTERN.test(mount.source)) {
      problem('invalid volume name: use letters, digits and _ . - (at least 2 characters)');
    }
  });

// Linux numbering: tasks run on Linux, wherever the CLI runs. Aliases (IOT, POLL) map to the usual name.
// biome-ignore format: a table
const SIGNALS = [
  'HUP', 'INT', 'QUIT', 'ILL', 'TRAP', 'ABRT', 'BUS', 'FPE', 'KILL', 'USR1', 'SEGV', 'USR2', 'PIPE', 'ALRM', 'TERM',
  'STKFLT', 'CHLD', 'CONT', 'STOP', 'TSTP', 'TTIN', 'TTOU', 'URG', 'XCPU', 'XFSZ', 'VTALRM', 'PROF', 'WINCH', 'IO',
  'PWR', 'SYS',
];
const SIGNAL_ALIASES: Record<string, string> = { IOT: 'ABRT', POLL: 'IO', CLD: 'CHLD' };

/** "SIGTERM", "term" or "15" → "SIGTERM". */
const signalSchema = z.string().transform((text, ctx) => {
  const upper = text.trim().toUpperCase();
  const bare = upper.startsWith('SIG') ? upper.slice(3) : upper;
  const name = /^\d+$/.test(upper) ? SIGNALS[Number(upper) - 1] : (SIGNAL_ALIASES[bare] ?? bare);
  if (name && SIGNALS.includes(name)) return `SIG${name}`;
  ctx.addIssue({ code: 'custom', message: `unknown signal "${text}"`, input: text });
  return z.NEVER;
});

const userSchema = z
  .string()
  .regex(/^[a-zA-Z0-9_][a-zA-Z0-9_.-]*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]*)?$/, 'expected USER, UID, USER:GROUP or UID:GID');

const constraintSchema = z.string().superRefine((text, ctx) => {
  try {
    parseConstraint(text);
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: (error as Error).message, input: text });
  }
});

const spreadSchema = z.string().transform(parsedWith(parseSpreadDescriptor));

// ---------------------------------------------------------------- the spec

const modeSchema = z
  .discriminatedUnion(
    'kind',
    [
      z.strictObject({ kind: z.literal('replicated'), replicas: count('replicas').default(1) }),
      z.strictObject({ kind: z.literal('global') }),
      z
        .strictObject({
          kind: z.literal('replicated-job'),
          maxConcurrent: z.number().int('must be a whole number').min(1, 'must be at least 1').default(1),
          totalCompletions: z.number().int('must be a whole number').min(1, 'must be at least 1').optional(),
        })
        // swarmkit's default: as many completions as may run at once.
        .transform((mode) => ({ ...mode, totalCompletions: mode.totalCompletions ?? mode.maxConcurrent })),
      z.strictObject({ kind: z.literal('global-job') }),
    ],
    { error: `unknown mode: must be one of ${SERVICE_MODES.join(', ')}` },
  )
  .prefault({ kind: 'replicated' });

const resourcesSchema = z
  .strictObject({
    reservations: z
      .strictObject({
        nanoCpus: nanoCpusSchema.default(0),
        memoryBytes: memorySchema.default(0),
        gpus: count('GPUs').default(0),
      })
      .prefault({}),
    limits: z
      .strictObject({
        nanoCpus: nanoCpusSchema.default(0),
        memoryBytes: memorySchema.default(0),
        pids: count('processes').default(0),
      })
      .prefault({}),
  })
  .prefault({})
  .superRefine(({ reservations, limits }, ctx) => {
    // The engine refuses such a container at start; say so at create instead.
    if (limits.memoryBytes > 0 && reservations.memoryBytes > limits.memoryBytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['reservations', 'memoryBytes'],
        message: 'must not exceed the memory limit',
      });
    }
    if (limits.nanoCpus > 0 && reservations.nanoCpus > limits.nanoCpus) {
      ctx.addIssue({ code: 'custom', path: ['reservations', 'nanoCpus'], message: 'must not exceed the CPU limit' });
    }
  });

const restartSchema = z
  .strictObject({
    condition: z.enum(['none', 'on-failure', 'any']).default('any'),
    delayMs: durationSchema.default(5_000),
    maxAttempts: count('attempts').default(0),
    windowMs: durationSchema.default(0),
  })
  .prefault({});

const placementSchema = z
  .strictObject({
    constraints: z.array(constraintSchema).default([]),
    spread: z.array(spreadSchema).default([]),
    maxReplicasPerNode: count('replicas').default(0),
  })
  .prefault({});

const HEALTH_KINDS = ['cmd', 'http', 'tcp'] as const;

const healthcheckSchema = z
  .strictObject({
    kind: z.enum(HEALTH_KINDS, {
      error: (issue) =>
        issue.input === undefined
          ? 'is required'
          : `unknown health check ${JSON.stringify(issue.input)}: must be one of ${HEALTH_KINDS.join(', ')}`,
    }),
    command: z.array(z.string()).default([]),
    path: z.string().startsWith('/', 'must start with /').default('/'),
    port: z.number().int('must be a whole number').min(0).max(65535, 'must be a port number (0-65535)').default(0),
    intervalMs: durationSchema.default(30_000),
    timeoutMs: durationSchema.default(30_000),
    retries: count('retries').default(3),
    startPeriodMs: durationSchema.default(0),
  })
  .superRefine((check, ctx) => {
    if (check.kind === 'cmd' && (check.command.length === 0 || check.command[0] === '')) {
      ctx.addIssue({ code: 'custom', path: ['command'], message: 'is required for a cmd health check' });
    }
    // Docker's minimum (1 ms) would let a check spin; a probe more often than every 100 ms is a typo.
    for (const key of ['intervalMs', 'timeoutMs'] as const) {
      if (check[key] < 100) ctx.addIssue({ code: 'custom', path: [key], message: 'must be at least 100ms' });
    }
  });

const taskSchema = z
  .strictObject({
    runtime: z.enum(RUNTIMES, {
      error: (issue) =>
        issue.input === undefined
          ? 'is required'
          : `unknown runtime ${JSON.stringify(issue.input)}: must be one of ${RUNTIMES.join(', ')}`,
    }),
    image: z.string().regex(/^\S*$/, 'must not contain spaces').default(''),
    command: z.array(z.string()).default([]),
    args: z.array(z.string()).default([]),
    env: envSchema.default({}),
    workdir: absolutePath.nullable().default(null),
    user: userSchema.nullable().default(null),
    labels: labelsSchema.default({}),
    mounts: z.array(mountSchema).default([]),
    resources: resourcesSchema,
    restart: restartSchema,
    placement: placementSchema,
    stopSignal: signalSchema.default('SIGTERM'),
    stopGracePeriodMs: durationSchema.default(10_000),
    healthcheck: healthcheckSchema.nullable().default(null),
    forceUpdate: count('updates').default(0),
  })
  .superRefine((task, ctx) => {
    if (task.runtime === 'process') {
      if (task.image !== '') {
        ctx.addIssue({
          code: 'custom',
          path: ['image'],
          message: 'the process runtime runs no image; give the program as the command',
        });
      }
      if (task.command.length === 0 || task.command[0] === '') {
        ctx.addIssue({
          code: 'custom',
          path: ['command'],
          message: 'is required for the process runtime (the program to run)',
        });
      }
    } else if (task.image === '') {
      ctx.addIssue({ code: 'custom', path: ['image'], message: `is required for the ${task.runtime} runtime` });
    }
    const targets = new Set<string>();
    task.mounts.forEach((mount, index) => {
      if (targets.has(mount.target)) {
        ctx.addIssue({
          code: 'custom',
          path: ['mounts', index, 'target'],
          message: `duplicate mount point ${mount.target}`,
        });
      }
      targets.add(mount.target);
    });
  });

// ---------------------------------------------------------------- rollouts

const ORDERS = ['stop-first', 'start-first'] as const;

function rolloutFields(actions: readonly ['pause', 'continue', ...('rollback' | 'pause' | 'continue')[]]) {
  return {
    parallelism: count('tasks').default(1),
    delayMs: durationSchema.default(0),
    failureAction: z
      .enum(actions as unknown as ['pause', 'continue', 'rollback'], {
        error: (issue) => `unknown failure action ${JSON.stringify(issue.input)}: must be one of ${actions.join(', ')}`,
      })
      .default('pause'),
    monitorMs: durationSchema.default(5_000),
    maxFailureRatio: z
      .number({ error: 'must be a number between 0 and 1' })
      .min(0, 'must be between 0 and 1')
      .max(1, 'must be between 0 and 1')
      .default(0),
    order: z
      .enum(ORDERS, {
        error: (issue) => `unknown order ${JSON.stringify(issue.input)}: must be one of ${ORDERS.join(', ')}`,
      })
      .default('stop-first'),
  };
}

const updateConfigSchema = z
  .strictObject({
    ...rolloutFields(['pause', 'continue', 'rollback']),
    canary: count('tasks').default(0),
    autoPromote: z.boolean().default(false),
  })
  .prefault({});

// A rollback that fails pauses (or goes on); rolling back a rollback would never end.
const rollbackConfigSchema = z
  .strictObject(rolloutFields(['pause', 'continue']) as ReturnType<typeof rolloutFields>)
  .refine((config) => config.failureAction !== 'rollback', {
    path: ['failureAction'],
    message: 'a rollback cannot roll back: must be pause or continue',
  })
  .prefault({});

// ---------------------------------------------------------------- published ports

export const LB_ALGORITHMS = ['round-robin', 'least-connections', 'p2c'] as const;
const portNumber = z
  .number({ error: 'must be a port number (1-65535)' })
  .int('must be a port number (1-65535)')
  .min(1, 'must be a port number (1-65535)')
  .max(65535, 'must be a port number (1-65535)');

const publishedPortSchema = z
  .strictObject({
    published: portNumber,
    target: portNumber,
    protocol: z
      .enum(['tcp', 'udp'], {
        error: (issue) => `unknown protocol ${JSON.stringify(issue.input)}: must be tcp or udp`,
      })
      .default('tcp'),
    mode: z
      .enum(['ingress', 'host'], {
        error: (issue) => `unknown publish mode ${JSON.stringify(issue.input)}: must be ingress or host`,
      })
      .default('ingress'),
    proxyProtocol: z.boolean().default(false),
  })
  // PROXY v2 can describe UDP, but only in front of each datagram's payload, which no common UDP server reads.
  .refine((port) => !(port.protocol === 'udp' && port.proxyProtocol), {
    path: ['proxyProtocol'],
    message: 'PROXY protocol is for tcp ports only',
  });

const endpointSchema = z
  .strictObject({
    ports: z.array(publishedPortSchema).max(64, 'at most 64 published ports').default([]),
    algorithm: z
      .enum(LB_ALGORITHMS, {
        error: (issue) =>
          `unknown load balancing algorithm ${JSON.stringify(issue.input)}: must be one of ${LB_ALGORITHMS.join(', ')}`,
      })
      .default('round-robin'),
  })
  .prefault({})
  .superRefine((endpoint, ctx) => {
    const seen = new Set<string>();
    endpoint.ports.forEach((port, index) => {
      const label = portLabel(port);
      if (seen.has(label)) {
        ctx.addIssue({
          code: 'custom',
          path: ['ports', index, 'published'],
          message: `port ${label} is published twice`,
        });
      }
      seen.add(label);
    });
  });

/** Swarm's defaults, as a spec without `update` or `rollback` gets them. */
export const DEFAULT_UPDATE_CONFIG: UpdateConfig = updateConfigSchema.parse(undefined);
export const DEFAULT_ROLLBACK_CONFIG: RolloutConfig = rollbackConfigSchema.parse(undefined);

export const serviceSpecSchema = z.strictObject({
  name: z
    .string({ error: (issue) => (issue.input === undefined ? 'is required' : undefined) })
    .regex(
      SERVICE_NAME_PATTERN,
      'invalid service name: must start with a letter or digit, contain only letters, digits and _ . -, and be at most 63 characters',
    ),
  labels: labelsSchema.default({}),
  mode: modeSchema,
  task: taskSchema,
  update: updateConfigSchema,
  rollback: rollbackConfigSchema,
  endpoint: endpointSchema,
});

/** Input as a client may send it: defaults omitted, sizes and durations as numbers or strings. */
export type ServiceSpecInput = z.input<typeof serviceSpecSchema>;

/**
 * An update replaces the whole spec (read, change, write back: what `scale` and later `update` do), guarded by
 * the version the client read. A whole spec rather than a patch: a patch through this schema would refill
 * every omitted field with its default and silently undo earlier changes.
 */
export const serviceUpdateSchema = z.strictObject({
  version: z.number().int().min(0),
  spec: serviceSpecSchema,
});
export type ServiceUpdate = z.output<typeof serviceUpdateSchema>;

// The schema must produce exactly the type the store and the orchestrators use; this fails to compile if the
// two drift apart.
// (Identity, not mutual assignability, which would let an extra optional field through.)
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const outputIsServiceSpec: Same<z.output<typeof serviceSpecSchema>, ServiceSpec> = true;
void outputIsServiceSpec;
