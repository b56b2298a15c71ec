// Request bodies of the control API, as zod schemas. The server parses every body with these, and the CLI
// validates its flags with the same schemas before sending anything, so both reject the same input with the
// same words.
import { z } from 'zod';
import { ApiError } from './errors.ts';

export const LABEL_KEY_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,127}$/;
export const LABEL_VALUE_MAX = 256;

export const labelKeySchema = z
  .string()
  .regex(
    LABEL_KEY_PATTERN,
    'invalid label key: must start with a letter or digit, contain only letters, digits and . _ / -, and be at most 128 characters',
  );

export const availabilitySchema = z.enum(['active', 'pause', 'drain']);
export const roleSchema = z.enum(['manager', 'worker']);

export const nodeUpdateSchema = z
  .strictObject({
    /** The node's version as the client read it; the update is refused if the node changed since. */
    version: z.number().int().min(0),
    availability: availabilitySchema.optional(),
    labelAdd: z.record(labelKeySchema, z.string().max(LABEL_VALUE_MAX)).optional(),
    labelRm: z.array(labelKeySchema).optional(),
    role: roleSchema.optional(),
    /** Heartbeat period for this node (slow or flaky WAN links), in seconds; null = the swarm's default. */
    heartbeatPeriodSeconds: z.number().positive().max(3600).nullable().optional(),
  })
  .superRefine((update, ctx) => {
    // Adding and removing the same key in one update has no obvious meaning; refuse rather than guess an order.
    update.labelRm?.forEach((key, index) => {
      if (update.labelAdd && Object.hasOwn(update.labelAdd, key)) {
        ctx.addIssue({ code: 'custom', path: ['labelRm', index], message: `label ${key} is both added and removed` });
      }
    });
  });
export type NodeUpdate = z.output<typeof nodeUpdateSchema>;

export const joinTokenRotateSchema = z.strictObject({ role: roleSchema });
export type JoinTokenRotate = z.output<typeof joinTokenRotateSchema>;

export const leaveSchema = z.strictObject({ force: z.boolean() });
export type LeaveRequest = z.output<typeof leaveSchema>;

/** One problem found in a request: where (path into the body) and what, in words meant for a person. */
export interface BodyProblem {
  path: PropertyKey[];
  message: string;
}

export type CheckResult<T> = { ok: true; value: T } | { ok: false; problem: BodyProblem };

/** Validates without throwing; the CLI uses this to name its own flags in the message. */
export function checkBody<S extends z.ZodType>(schema: S, body: unknown): CheckResult<z.output<S>> {
  const result = schema.safeParse(body, { error: describeIssue });
  if (result.success) return { ok: true, value: result.data };
  const issue = result.error.issues[0]!;
  // An unknown field is reported on the object holding it; point at the field itself instead.
  const path = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0]!] : [...issue.path];
  return { ok: false, problem: { path, message: issue.message } };
}

/** Validates a request body; throws ApiError(400) whose message starts with the field path. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  const result = checkBody(schema, body);
  if (result.ok) return result.value;
  const { path, message } = result.problem;
  if (path.length === 0) throw new ApiError(400, `request body: ${message}`);
  const field = formatPath(path);
  throw new ApiError(400, `${field}: ${message}`, field);
}

/** `labelAdd.foo`, `labelRm[0]`, `labelAdd["com.example"]`: readable, and unambiguous for keys with dots. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (typeof segment === 'string' && /^[A-Za-z_$][\w$]*$/.test(segment)) out += out ? `.${segment}` : segment;
    else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out;
}

// zod's default messages ("Invalid input: expected number, received undefined") read like a parser's; these
// read like a person's. Messages a schema sets itself (the label key one) take precedence over this map.
type RawIssue = Parameters<z.core.$ZodErrorMap>[0];

function describeIssue(issue: RawIssue): string | undefined {
  switch (issue.code) {
    case 'invalid_type':
      if (issue.input === undefined) return 'is required';
      return `must be ${article(issue.expected)}, not ${describeValue(issue.input)}`;
    case 'too_big':
      return `must ${bound('at most', issue.origin, issue.maximum)}`;
    case 'too_small':
      return `must ${bound('at least', issue.origin, issue.minimum)}`;
    case 'invalid_value':
      return `must be one of: ${issue.values.map(String).join(', ')}`;
    case 'invalid_key':
      return issue.issues[0]?.message ?? 'invalid key';
    case 'unrecognized_keys':
      return 'unknown field';
    case 'invalid_format':
      return `has an invalid format (expected ${issue.format})`;
    default:
      return undefined;
  }
}

function article(expected: string): string {
  const names: Record<string, string> = {
    int: 'an integer',
    number: 'a number',
    string: 'a string',
    boolean: 'a boolean',
    object: 'an object',
    record: 'an object',
    array: 'an array',
  };
  return names[expected] ?? expected;
}

function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'number' && !Number.isInteger(value)) return `${value}`;
  return article(typeof value);
}

function bound(relation: string, origin: string, limit: number | bigint): string {
  if (origin === 'string') return `be ${relation} ${limit} characters`;
  if (origin === 'array' || origin === 'set') return `have ${relation} ${limit} items`;
  return `be ${relation} ${limit}`;
}
