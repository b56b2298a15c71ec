// Client of the control API, for the CLI (and tests): one typed method per route. Every failure, from the
// server or from the socket, becomes an ApiClientError whose message can be shown to a person as is.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { ServiceLogLine } from './handlers.ts';
import type { JoinTokenRotate, NodeUpdate } from './schemas.ts';
import type { ServiceSpecInput } from './service-schema.ts';
import type { Service, ServiceSpec, Task } from './services.ts';
import type { ApiErrorBody, JoinTokens, SwarmInfo, SwarmNode } from './types.ts';

export class ApiClientError extends Error {
  /** HTTP status when the server answered; undefined when it could not be reached. */
  readonly status: number | undefined;
  readonly field: string | undefined;

  constructor(message: string, status?: number, field?: string) {
    super(message);
    this.name = 'ApiClientError';
    this.status = status;
    this.field = field;
  }
}

export interface ApiClientOptions {
  /** Give up on a request after this long. Default 60 s: demote and leave wait for Raft, but not forever. */
  timeoutMs?: number;
}

export class ApiClient {
  readonly socketPath: string;
  readonly #timeoutMs: number;

  constructor(socketPath: string, options: ApiClientOptions = {}) {
    this.socketPath = socketPath;
    this.#timeoutMs = options.timeoutMs ?? 60_000;
  }

  info(): Promise<SwarmInfo> {
    return this.request('GET', '/v1/info');
  }

  listNodes(): Promise<SwarmNode[]> {
    return this.request('GET', '/v1/nodes');
  }

  getNode(ref: string): Promise<SwarmNode> {
    return this.request('GET', `/v1/nodes/${encodeURIComponent(ref)}`);
  }

  updateNode(ref: string, update: NodeUpdate): Promise<SwarmNode> {
    return this.request('POST', `/v1/nodes/${encodeURIComponent(ref)}/update`, update);
  }

  promoteNode(ref: string): Promise<SwarmNode> {
    return this.request('POST', `/v1/nodes/${encodeURIComponent(ref)}/promote`);
  }

  demoteNode(ref: string): Promise<SwarmNode> {
    return this.request('POST', `/v1/nodes/${encodeURIComponent(ref)}/demote`);
  }

  async removeNode(ref: string, options: { force: boolean } = { force: false }): Promise<void> {
    await this.request('DELETE', `/v1/nodes/${encodeURIComponent(ref)}?force=${options.force}`);
  }

  joinTokens(): Promise<JoinTokens> {
    return this.request('GET', '/v1/join-tokens');
  }

  rotateJoinToken(role: JoinTokenRotate['role']): Promise<JoinTokens> {
    return this.request('POST', '/v1/join-tokens/rotate', { role } satisfies JoinTokenRotate);
  }

  async leave(force: boolean): Promise<void> {
    await this.request('POST', '/v1/swarm/leave', { force });
  }

  createService(spec: ServiceSpecInput): Promise<Service> {
    return this.request('POST', '/v1/services', spec);
  }

  listServices(): Promise<Service[]> {
    return this.request('GET', '/v1/services');
  }

  getService(ref: string): Promise<Service> {
    return this.request('GET', `/v1/services/${encodeURIComponent(ref)}`);
  }

  /** Replaces the spec; refused (409) if the service changed since `version` was read. */
  updateService(ref: string, update: { version: number; spec: ServiceSpec | ServiceSpecInput }): Promise<Service> {
    return this.request('POST', `/v1/services/${encodeURIComponent(ref)}/update`, update);
  }

  /** Back to the previous spec, with the rollback config. */
  rollbackService(ref: string): Promise<Service> {
    return this.request('POST', `/v1/services/${encodeURIComponent(ref)}/rollback`);
  }

  /** Lets an update waiting on its canaries go on. */
  promoteService(ref: string): Promise<Service> {
    return this.request('POST', `/v1/services/${encodeURIComponent(ref)}/promote`);
  }

  async removeService(ref: string): Promise<void> {
    await this.request('DELETE', `/v1/services/${encodeURIComponent(ref)}`);
  }

  /** Tasks of one service and/or one node (refs as the user typed them), or all tasks. */
  listTasks(filter: { service?: string; node?: string } = {}): Promise<Task[]> {
    const query = new URLSearchParams();
    if (filter.service) query.set('service', filter.service);
    if (filter.node) query.set('node', filter.node);
    const text = query.toString();
    return this.request('GET', text ? `/v1/tasks?${text}` : '/v1/tasks');
  }

  serviceLogs(
    ref: string,
    options: { follow: boolean; tail?: number; signal?: AbortSignal },
  ): AsyncIterable<ServiceLogLine> {
    const query = new URLSearchParams({ follow: String(options.follow) });
    if (options.tail !== undefined) query.set('tail', String(options.tail));
    return this.stream(`/v1/services/${encodeURIComponent(ref)}/logs?${query}`, options.signal);
  }

  /**
   * A streamed GET (one JSON value per line). The timeout covers only the wait for the answer to start: a
   * followed stream may then stay quiet for as long as it likes. Stops when `signal` aborts.
   */
  async *stream<T>(path: string, signal?: AbortSignal): AsyncGenerator<T> {
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socketPath, method: 'GET', path, agent: false, signal }, resolve);
      req.setTimeout(this.#timeoutMs, () => {
        req.destroy(new ApiClientError(`swarmd at ${this.socketPath} did not answer within ${this.#timeoutMs} ms`));
      });
      req.on('response', () => req.setTimeout(0));
      req.on('error', (error) => reject(error instanceof ApiClientError ? error : this.#connectionError(error)));
      req.end();
    });
    if (res.statusCode !== 200) {
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      decodeResponse(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'));
      throw new ApiClientError(`unexpected answer from swarmd (HTTP ${res.statusCode})`, res.statusCode);
    }
    let pending = '';
    try {
      for await (const chunk of res) {
        pending += (chunk as Buffer).toString('utf8');
        const lines = pending.split('\n');
        pending = lines.pop()!;
        for (const line of lines) if (line.trim() !== '') yield decodeStreamLine<T>(line);
      }
    } catch (error) {
      if (signal?.aborted) return;
      throw error instanceof ApiClientError ? error : this.#connectionError(error as NodeJS.ErrnoException);
    }
    if (pending.trim() !== '') yield decodeStreamLine<T>(pending);
  }

  /** The node's Prometheus metrics, as the exposition text. */
  async metrics(): Promise<string> {
    const { status, text } = await this.#send('GET', '/v1/metrics', undefined);
    if (status === 200) return text;
    decodeResponse(status, text);
    throw new ApiClientError(`unexpected answer from swarmd (HTTP ${status})`, status);
  }

  /** Any route; `body`, when given, is sent as JSON. Resolves to the parsed answer (undefined for 204). */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const { status, text } = await this.#send(method, path, body === undefined ? undefined : JSON.stringify(body));
    return decodeResponse<T>(status, text);
  }

  #send(method: string, path: string, payload: string | undefined): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          socketPath: this.socketPath,
          method,
          path,
          // A CLI makes a few requests and exits: no keep-alive sockets to hold the process open.
          agent: false,
          headers: payload === undefined ? {} : { 'Content-Type': 'application/json' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', (error) => reject(this.#connectionError(error)));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        },
      );
      req.setTimeout(this.#timeoutMs, () => {
        req.destroy(new ApiClientError(`swarmd at ${this.socketPath} did not answer within ${this.#timeoutMs} ms`));
      });
      req.on('error', (error) => reject(error instanceof ApiClientError ? error : this.#connectionError(error)));
      req.end(payload);
    });
  }

  #connectionError(error: NodeJS.ErrnoException): ApiClientError {
    switch (error.code) {
      case 'ENOENT':
      case 'ECONNREFUSED':
        return new ApiClientError(
          `cannot reach swarmd at ${this.socketPath}: is it running? (set --host or SWARM_HOST)`,
        );
      case 'EACCES':
        return new ApiClientError(
          `permission denied on ${this.socketPath}: run as the daemon's user or a member of the socket's group`,
        );
      default:
        return new ApiClientError(`lost the connection to swarmd at ${this.socketPath}: ${error.message}`);
    }
  }
}

/** One line of a streamed answer; a line `{"error": ...}` is the server reporting a failure mid-stream. */
function decodeStreamLine<T>(line: string): T {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new ApiClientError(`unexpected line from swarmd (not JSON): ${line.slice(0, 200)}`);
  }
  const error = (value as Partial<ApiErrorBody> | null)?.error;
  if (typeof error === 'string') throw new ApiClientError(error, 200);
  return value as T;
}

function decodeResponse<T>(status: number, text: string): T {
  if (status === 204) return undefined as T;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiClientError(`unexpected answer from swarmd (HTTP ${status}, not JSON): ${text.slice(0, 200)}`, status);
  }
  if (status >= 200 && status < 300) return body as T;
  const error = body as Partial<ApiErrorBody> | null;
  const message = typeof error?.error === 'string' ? error.error : `request failed with HTTP ${status}`;
  throw new ApiClientError(message, status, typeof error?.field === 'string' ? error.field : undefined);
}
