// Errors the control API answers with. A handler throws an ApiError to choose the status code and message
// the client sees; anything else it throws is a bug and becomes a 500.
import type { ApiErrorBody } from './types.ts';

export class ApiError extends Error {
  readonly status: number;
  /** The request field that was wrong, when one was (a dotted path such as `labelAdd.foo`). */
  readonly field: string | undefined;

  constructor(status: number, message: string, field?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.field = field;
  }

  toBody(): ApiErrorBody {
    return this.field === undefined ? { error: this.message } : { error: this.message, field: this.field };
  }
}

export function badRequest(message: string, field?: string): ApiError {
  return new ApiError(400, message, field);
}

export function noSuchNode(ref: string): ApiError {
  return new ApiError(404, `no such node: ${ref}`);
}

export function ambiguousPrefix(ref: string, matches: number): ApiError {
  return new ApiError(409, `ambiguous prefix: ${ref} matches ${matches} nodes; give more of the ID`);
}

export function ambiguousHostname(hostname: string, matches: number): ApiError {
  return new ApiError(409, `ambiguous hostname: ${hostname} is the hostname of ${matches} nodes; use the node ID`);
}

/** Optimistic concurrency: the object changed since the client read the version it sent. */
export function versionConflict(kind: string, id: string, sent: number, current: number): ApiError {
  return new ApiError(
    409,
    `${kind} ${id} was changed by someone else (version ${sent} sent, now ${current}); read it again and retry`,
    'version',
  );
}

/** 503: the request is fine, this node just cannot serve it; the message says where to go instead. */
export function notManager(): ApiError {
  return new ApiError(503, 'this node is not a manager; run this command on a manager node');
}

export function noLeader(): ApiError {
  return new ApiError(
    503,
    'the swarm has no leader right now (an election is running, or a majority of managers is unreachable); try again',
  );
}

export function noSuchService(ref: string): ApiError {
  return new ApiError(404, `no such service: ${ref}`);
}

export function ambiguousServicePrefix(ref: string, matches: number): ApiError {
  return new ApiError(409, `ambiguous prefix: ${ref} matches ${matches} services; give more of the ID or the name`);
}

/** 501: this daemon's handlers do not serve the route (yet). */
export function notImplemented(what: string): ApiError {
  return new ApiError(501, `${what}: not supported by this swarmd yet`);
}
