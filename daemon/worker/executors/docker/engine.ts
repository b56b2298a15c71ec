// Calls to the Docker engine, and what their failures mean for the agent.
//
// dockerode rejects with three kinds of errors: the engine answered with an HTTP error (statusCode set, the engine's
// message in json.message), the connection failed or broke (a Node errno code: ECONNREFUSED, ENOENT for a missing
// socket, ECONNRESET or "socket hang up" when dockerd stops mid-request), or we aborted the request ourselves
// (AbortError). Every call goes through call() below, which turns all of them into a DockerError: an ExecutorError
// whose message says what we were doing and which engine, and whether trying again could help.
import type Docker from 'dockerode';
import { ExecutorError } from '../types.ts';

/**
 * An ExecutorError from the engine. `status` is the HTTP status when the engine answered, to branch on (404...);
 * `timedOut` is set when we gave up waiting for its answer.
 */
export class DockerError extends ExecutorError {
  readonly status: number | undefined;
  readonly timedOut: boolean;
  constructor(message: string, retryable: boolean, status?: number, timedOut = false) {
    super(message, retryable);
    this.name = 'DockerError';
    this.status = status;
    this.timedOut = timedOut;
  }
}

/** The engine and the limits every call to it runs under. */
export interface Engine {
  docker: Docker;
  /** Where the engine is, for messages: unix:///run/docker.sock, http://host:2375. */
  address: string;
  /** Limit for a short call (inspect, kill, remove...): a hung engine must not hang the agent. */
  requestTimeoutMs: number;
}

export function engineAddress(docker: Docker): string {
  const modem = docker.modem as { socketPath?: unknown; host?: unknown; port?: unknown; protocol?: unknown };
  if (typeof modem.socketPath === 'string') return `unix://${modem.socketPath}`;
  if (typeof modem.host === 'string') {
    const port = modem.port === undefined ? '' : `:${String(modem.port)}`;
    return `${typeof modem.protocol === 'string' ? modem.protocol : 'http'}://${modem.host}${port}`;
  }
  return 'the default Docker socket';
}

/** Errno codes meaning "nobody answers there": no socket, nothing listening, no route. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOENT', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']);
/** Errno codes meaning "the connection broke": dockerd stopped or restarted in the middle of the call. */
const BROKEN_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

interface DockerodeError {
  statusCode?: unknown;
  json?: unknown;
  code?: unknown;
  message?: unknown;
  name?: unknown;
}

/** The engine's own message ("No such container: abc"), without dockerode's "(HTTP code 404) ... -" prefix. */
export function engineMessage(error: unknown): string {
  const e = (error ?? {}) as DockerodeError;
  const json = e.json as { message?: unknown } | null | undefined;
  if (json && typeof json === 'object' && typeof json.message === 'string') return json.message;
  if (Buffer.isBuffer(e.json) && e.json.length > 0) return e.json.toString('utf8').trim();
  const message = typeof e.message === 'string' ? e.message : String(error);
  return message.replace(/^\(HTTP code \d+\) [^-]*- /, '').trim();
}

/**
 * Turns whatever a dockerode call rejected with into a DockerError. `what` says what we were doing ("starting
 * container abc"); `timedOutAfterMs` is set when we aborted the call because it took too long.
 */
export function toDockerError(error: unknown, what: string, engine: string, timedOutAfterMs?: number): DockerError {
  if (error instanceof DockerError) return error;
  if (timedOutAfterMs !== undefined) {
    return new DockerError(
      `${what}: no answer from the Docker engine at ${engine} within ${timedOutAfterMs} ms`,
      true,
      undefined,
      true,
    );
  }
  const e = (error ?? {}) as DockerodeError;
  if (typeof e.statusCode === 'number') {
    // The engine answered. 4xx: this request can't succeed as it is (bad spec, no such container, conflict);
    // 5xx: the engine failed, which may pass.
    return new DockerError(`${what}: ${engineMessage(error)}`, e.statusCode >= 500, e.statusCode);
  }
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(error);
  if (code === 'EACCES') {
    return new DockerError(`${what}: permission denied on the Docker socket ${engine} (${message})`, false);
  }
  if (code && UNREACHABLE_CODES.has(code)) {
    return new DockerError(`${what}: cannot reach the Docker engine at ${engine} (${code}); is dockerd running?`, true);
  }
  if ((code && BROKEN_CODES.has(code)) || /socket hang up|aborted|premature close/i.test(message)) {
    return new DockerError(
      `${what}: lost the connection to the Docker engine at ${engine} (${code ?? message}); ` +
        'it may have stopped or restarted',
      true,
    );
  }
  return new DockerError(`${what}: ${message}`, true);
}

/**
 * Runs one engine call with a time limit (timeoutMs 0: none, for calls that wait on the task such as wait()).
 * The callback gets the AbortSignal to hand to dockerode, which aborts the HTTP request when the limit passes. A few
 * dockerode calls take no signal (image inspect, info, version): the call still fails at the limit, and their
 * request is left to finish or fail on its own (its outcome is then ignored). The limit also covers a dockerode
 * quirk: a non-streamed answer whose connection breaks after the headers never settles (see waitForExit()).
 */
export async function call<T>(
  engine: Engine,
  what: string,
  request: (signal: AbortSignal) => Promise<T>,
  timeoutMs: number = engine.requestTimeoutMs,
): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const limit =
    timeoutMs > 0
      ? new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            controller.abort();
            reject(new Error('timed out'));
          }, timeoutMs);
        })
      : undefined;
  try {
    const answer = request(controller.signal);
    return await (limit ? Promise.race([answer, limit]) : answer);
  } catch (error) {
    throw toDockerError(error, what, engine.address, controller.signal.aborted ? timeoutMs : undefined);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether a call failed because the engine answered `status` (e.g. 404: no such container). */
export function hasStatus(error: unknown, ...statuses: number[]): boolean {
  return error instanceof DockerError && error.status !== undefined && statuses.includes(error.status);
}

export interface WaitAnswer {
  StatusCode: number;
  Error?: { Message?: string } | null;
}

/**
 * POST /containers/{id}/wait: resolves when the container is not running. dockerd sends the response headers at
 * once and the body when the container exits, and dockerode's container.wait() only listens for the end of that
 * body: if the connection breaks in between (dockerd stopped or killed), its promise never settles. So we ask for
 * the response as a stream and read it ourselves, where a broken connection is an error.
 */
export async function waitForExit(docker: Docker, containerId: string, signal: AbortSignal): Promise<WaitAnswer> {
  const body = await new Promise<AsyncIterable<Buffer>>((resolve, reject) => {
    docker.modem.dial(
      {
        path: `/containers/${encodeURIComponent(containerId)}/wait?`,
        method: 'POST',
        isStream: true,
        abortSignal: signal,
        options: {},
        statusCodes: { 200: true, 400: 'bad parameter', 404: 'no such container', 500: 'server error' },
      },
      (error, stream) => (error ? reject(error) : resolve(stream as unknown as AsyncIterable<Buffer>)),
    );
  });
  let text = '';
  for await (const chunk of body) text += chunk.toString('utf8');
  try {
    const answer = JSON.parse(text) as WaitAnswer;
    if (typeof answer.StatusCode === 'number') return answer;
  } catch {
    // Reported below.
  }
  throw new Error(`unexpected answer to wait: ${JSON.stringify(text.slice(0, 200))}`);
}
