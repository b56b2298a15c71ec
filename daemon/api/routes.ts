// The control API's routes: which handler answers which method and path, and how the request is turned into
// its arguments. Versioned under /v1 so a later, incompatible API can live beside this one.
import { badRequest, notImplemented } from './errors.ts';
import type { ControlHandlers } from './handlers.ts';
import { joinTokenRotateSchema, leaveSchema, nodeUpdateSchema, parseBody } from './schemas.ts';
import { serviceSpecSchema, serviceUpdateSchema } from './service-schema.ts';

export type HttpMethod = 'GET' | 'POST' | 'DELETE';

export interface RouteRequest {
  /** Path parameters, already URL-decoded (`:id` → params.id). */
  params: Record<string, string>;
  query: URLSearchParams;
  /** The parsed JSON body, or undefined when the request had none. */
  body: unknown;
  /** Aborted when the client disconnects (ends a streamed answer). */
  signal: AbortSignal;
}

/**
 * A route answers with this to stream: each item is sent as one line of JSON (application/x-ndjson) as it
 * comes, for as long as the client stays.
 */
export class StreamedAnswer {
  readonly items: AsyncIterable<unknown>;
  constructor(items: AsyncIterable<unknown>) {
    this.items = items;
  }
}

/** A route answers with this to send plain text of its own content type (Prometheus metrics). */
export class TextAnswer {
  readonly text: string;
  readonly contentType: string;
  constructor(text: string, contentType: string) {
    this.text = text;
    this.contentType = contentType;
  }
}

export interface Route {
  method: HttpMethod;
  /** Segments separated by `/`; a segment starting with `:` is a parameter. */
  path: string;
  /** Resolves to the response body; undefined means 204 No Content. */
  run(handlers: ControlHandlers, request: RouteRequest): Promise<unknown>;
}

export const routes: readonly Route[] = [
  { method: 'GET', path: '/v1/info', run: (h) => h.info() },
  { method: 'GET', path: '/v1/nodes', run: (h) => h.listNodes() },
  { method: 'GET', path: '/v1/nodes/:id', run: (h, r) => h.getNode(param(r, 'id')) },
  {
    method: 'POST',
    path: '/v1/nodes/:id/update',
    run: (h, r) => h.updateNode(param(r, 'id'), parseBody(nodeUpdateSchema, r.body)),
  },
  { method: 'POST', path: '/v1/nodes/:id/promote', run: (h, r) => h.promoteNode(param(r, 'id')) },
  { method: 'POST', path: '/v1/nodes/:id/demote', run: (h, r) => h.demoteNode(param(r, 'id')) },
  {
    method: 'DELETE',
    path: '/v1/nodes/:id',
    run: (h, r) => h.removeNode(param(r, 'id'), { force: booleanQuery(r.query, 'force') }),
  },
  { method: 'GET', path: '/v1/join-tokens', run: (h) => h.joinTokens() },
  {
    method: 'POST',
    path: '/v1/join-tokens/rotate',
    run: (h, r) => h.rotateJoinToken(parseBody(joinTokenRotateSchema, r.body)),
  },
  { method: 'POST', path: '/v1/swarm/leave', run: (h, r) => h.leave(parseBody(leaveSchema, r.body)) },
  {
    method: 'POST',
    path: '/v1/services',
    run: (h, r) => optional(h, 'createService')(parseBody(serviceSpecSchema, r.body)),
  },
  { method: 'GET', path: '/v1/services', run: (h) => optional(h, 'listServices')() },
  { method: 'GET', path: '/v1/services/:ref', run: (h, r) => optional(h, 'getService')(param(r, 'ref')) },
  {
    method: 'POST',
    path: '/v1/services/:ref/update',
    run: (h, r) => optional(h, 'updateService')(param(r, 'ref'), parseBody(serviceUpdateSchema, r.body)),
  },
  {
    method: 'POST',
    path: '/v1/services/:ref/rollback',
    run: (h, r) => optional(h, 'rollbackService')(param(r, 'ref')),
  },
  {
    method: 'POST',
    path: '/v1/services/:ref/promote',
    run: (h, r) => optional(h, 'promoteService')(param(r, 'ref')),
  },
  { method: 'DELETE', path: '/v1/services/:ref', run: (h, r) => optional(h, 'removeService')(param(r, 'ref')) },
  {
    method: 'GET',
    path: '/v1/services/:ref/logs',
    run: async (h, r) => {
      const logs = optional(h, 'serviceLogs');
      const tail = r.query.get('tail');
      if (tail !== null && !/^\d+$/.test(tail)) throw badRequest('tail: must be a whole number of lines', 'tail');
      const options = { follow: booleanQuery(r.query, 'follow'), signal: r.signal };
      return new StreamedAnswer(logs(param(r, 'ref'), tail === null ? options : { ...options, tail: Number(tail) }));
    },
  },
  {
    method: 'GET',
    path: '/v1/metrics',
    run: async (h) => {
      const metrics = await optional(h, 'metrics')();
      return new TextAnswer(metrics.text, metrics.contentType);
    },
  },
  {
    method: 'GET',
    path: '/v1/tasks',
    run: (h, r) => {
      const filter: { service?: string; node?: string } = {};
      for (const key of ['service', 'node'] as const) {
        const value = r.query.get(key);
        if (value) filter[key] = value;
      }
      return optional(h, 'listTasks')(filter);
    },
  },
];

type OptionalHandler = {
  [K in keyof ControlHandlers]-?: undefined extends ControlHandlers[K] ? K : never;
}[keyof ControlHandlers];

/** The handler's method, or a 501 for a daemon that does not implement it yet. */
function optional<K extends OptionalHandler>(handlers: ControlHandlers, name: K): NonNullable<ControlHandlers[K]> {
  const method = handlers[name];
  if (typeof method !== 'function') {
    const what: Partial<Record<OptionalHandler, string>> = {
      serviceLogs: 'service logs',
      listTasks: 'tasks',
      metrics: 'metrics',
    };
    throw notImplemented(what[name] ?? 'services');
  }
  return method.bind(handlers) as NonNullable<ControlHandlers[K]>;
}

export type RouteMatch =
  | { kind: 'found'; route: Route; params: Record<string, string> }
  | { kind: 'wrong-method'; allowed: HttpMethod[] }
  | { kind: 'not-found' };

/** `segments` are the URL-decoded path segments of the request. */
export function matchRoute(method: string, segments: readonly string[]): RouteMatch {
  const allowed: HttpMethod[] = [];
  for (const route of routes) {
    const params = matchPath(route.path, segments);
    if (!params) continue;
    if (route.method === method) return { kind: 'found', route, params };
    allowed.push(route.method);
  }
  return allowed.length > 0 ? { kind: 'wrong-method', allowed } : { kind: 'not-found' };
}

function matchPath(pattern: string, segments: readonly string[]): Record<string, string> | undefined {
  const parts = pattern.split('/').filter(Boolean);
  if (parts.length !== segments.length) return undefined;
  const params: Record<string, string> = {};
  for (const [index, part] of parts.entries()) {
    const segment = segments[index]!;
    if (part.startsWith(':')) params[part.slice(1)] = segment;
    else if (part !== segment) return undefined;
  }
  return params;
}

function param(request: RouteRequest, name: string): string {
  return request.params[name] ?? '';
}

function booleanQuery(query: URLSearchParams, name: string): boolean {
  const value = query.get(name);
  if (value === null || value === 'false') return false;
  if (value === 'true') return true;
  throw badRequest(`${name}: must be true or false`, name);
}
