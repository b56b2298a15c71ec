// Client of the control API, for the CLI (and tests): one typed method per route. Every failure, from the
// server or from the socket, becomes an ApiClientError whose message can be shown to a person as is.
import { request as httpRequest } from 'node:http';
import type { JoinTokenRotate, NodeUpdate } from './schemas.ts';
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

  /** Any route; `body`, when given, is sent as JSON. Resolves to the parsed answer (undefined for 204). */
  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
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
          res.on('end', () => {
            try {
              resolve(decodeResponse<T>(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')));
            } catch (error) {
              reject(error);
            }
          });
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
