// The control API: HTTP/1.1 and JSON on a unix socket under the data dir. Access control is the socket's
// file mode (0660: the daemon's user and group), as with dockerd; there is no other authentication.
import { chmod, lstat, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { ApiError } from './errors.ts';
import type { ControlHandlers } from './handlers.ts';
import { matchRoute, StreamedAnswer, TextAnswer } from './routes.ts';

export const MAX_BODY_BYTES = 1024 * 1024;
export const SOCKET_MODE = 0o660;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export interface ApiLogger {
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface ApiServerOptions {
  socketPath: string;
  handlers: ControlHandlers;
  /** Where handler failures (500s) are reported. Default: the console. */
  log?: ApiLogger;
}

export interface ApiServer {
  /** Stops accepting, drops open connections and removes the socket file. */
  close(): Promise<void>;
}

const consoleLogger: ApiLogger = {
  error: (message, fields) => console.error(`swarmd api: ${message}`, fields ?? ''),
};

export async function startApiServer(options: ApiServerOptions): Promise<ApiServer> {
  const { socketPath, handlers } = options;
  const log = options.log ?? consoleLogger;
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    throw new Error(
      `control socket path ${socketPath} is too long (${Buffer.byteLength(socketPath)} bytes; unix sockets allow ${MAX_SOCKET_PATH_BYTES}); use a shorter data dir`,
    );
  }
  await claimSocketPath(socketPath);

  const server = createServer((req, res) => {
    handleRequest(req, res, handlers, log).catch((error: unknown) => {
      // Only reached if writing the error response itself failed; the connection is all we can still drop.
      log.error('failed to answer a request', { error: String(error) });
      res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        new Error(
          error.code === 'EADDRINUSE'
            ? `control socket ${socketPath} is already in use by another process`
            : `cannot listen on control socket ${socketPath}: ${error.message}`,
        ),
      );
    };
    server.once('error', onError);
    server.listen(socketPath, () => {
      server.off('error', onError);
      resolve();
    });
  });
  // listen() creates the file with the umask's mode; the window before chmod is closed by the data dir's own
  // mode (0700), which is why the socket lives there.
  try {
    await chmod(socketPath, SOCKET_MODE);
  } catch (error) {
    server.close();
    throw error;
  }
  // Remember which file is ours, so close() never removes the socket of a daemon that replaced this one.
  const { ino } = await lstat(socketPath);

  return {
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      try {
        if ((await lstat(socketPath)).ino === ino) await unlink(socketPath);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    },
  };
}

/**
 * Makes `socketPath` free to listen on. A socket file left by a daemon that died is removed; one that a live
 * process answers on, or a file that is not a socket, is left alone and startup fails.
 */
async function claimSocketPath(socketPath: string): Promise<void> {
  let stats: Awaited<ReturnType<typeof lstat>>;
  try {
    stats = await lstat(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!stats.isSocket()) {
    throw new Error(`control socket path ${socketPath} exists and is not a socket; refusing to replace it`);
  }
  if (await socketAnswers(socketPath)) {
    throw new Error(`another swarmd is already serving on control socket ${socketPath}`);
  }
  await unlink(socketPath);
}

function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: socketPath });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      // Refused means nobody listens: a stale file. Anything else (EACCES, ...) means we cannot tell.
      if (error.code === 'ECONNREFUSED') resolve(false);
      else reject(new Error(`cannot check control socket ${socketPath}: ${error.message}`));
    });
  });
}

async function handleRequest(
  req: IncomingMessage,
  res: ServerResponse,
  handlers: ControlHandlers,
  log: ApiLogger,
): Promise<void> {
  const method = req.method ?? 'GET';
  const url = new URL(req.url ?? '/', 'http://swarmd');
  // Tells a handler streaming an answer (followed logs) that nobody listens any more.
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  try {
    const segments = decodeSegments(url.pathname);
    const match = matchRoute(method, segments);
    if (match.kind === 'not-found') throw new ApiError(404, `no such endpoint: ${method} ${url.pathname}`);
    if (match.kind === 'wrong-method') {
      res.setHeader('Allow', match.allowed.join(', '));
      throw new ApiError(405, `method ${method} not allowed on ${url.pathname} (allowed: ${match.allowed.join(', ')})`);
    }
    const body = await readJsonBody(req);
    const request = { params: match.params, query: url.searchParams, body, signal: gone.signal };
    const result = await match.route.run(handlers, request);
    if (result instanceof StreamedAnswer) {
      await sendStream(res, result, gone.signal);
      return;
    }
    if (result === undefined) {
      res.writeHead(204).end();
      return;
    }
    if (result instanceof TextAnswer) {
      res.writeHead(200, { 'Content-Type': result.contentType, 'Content-Length': Buffer.byteLength(result.text) });
      res.end(result.text);
      return;
    }
    sendJson(res, 200, result);
  } catch (error) {
    if (error instanceof ApiError) {
      // After a 413 the rest of the body is unread: close rather than parse it as the next request.
      if (error.status === 413) res.setHeader('Connection', 'close');
      sendJson(res, error.status, error.toBody());
      return;
    }
    // A bug or an unexpected failure in a handler: the client gets the message, the log gets the stack.
    const message = error instanceof Error ? error.message : String(error);
    log.error(`${method} ${url.pathname} failed`, { error: error instanceof Error ? error.stack : message });
    sendJson(res, 500, { error: `internal error: ${message}` });
  }
}

function decodeSegments(pathname: string): string[] {
  // A trailing slash is tolerated; empty segments elsewhere (//) match no route.
  const raw = pathname.replace(/\/+$/, '').split('/').slice(1);
  try {
    return raw.map((segment) => decodeURIComponent(segment));
  } catch {
    throw new ApiError(400, `malformed URL path: ${pathname}`);
  }
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const raw = await readBody(req);
  if (raw.length === 0) return undefined;
  const contentType = req.headers['content-type'];
  if (contentType !== undefined && !/^application\/json\b/i.test(contentType)) {
    throw new ApiError(415, `request body must be application/json, not ${contentType}`);
  }
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (error) {
    throw new ApiError(400, `malformed JSON in request body: ${(error as Error).message}`);
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  const tooLarge = () => new ApiError(413, `request body is larger than ${MAX_BODY_BYTES} bytes`);
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) {
    // Answer at once; the unread body is discarded as it arrives, and the connection closed after the answer.
    req.resume();
    return Promise.reject(tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      if (size > MAX_BODY_BYTES) return; // already refused: discard the rest
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        chunks.length = 0;
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * One JSON object per line, each written as it comes. A failure before the first item is an ordinary error
 * answer; after it the status is already sent, so the error becomes a last line `{"error": ...}`.
 */
async function sendStream(res: ServerResponse, answer: StreamedAnswer, signal: AbortSignal): Promise<void> {
  const iterator = answer.items[Symbol.asyncIterator]();
  let next = await iterator.next();
  res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' });
  try {
    while (!next.done && !signal.aborted) {
      res.write(`${JSON.stringify(next.value)}\n`);
      next = await iterator.next();
    }
  } catch (error) {
    if (!signal.aborted)
      res.write(`${JSON.stringify({ error: error instanceof Error ? error.message : String(error) })}\n`);
  } finally {
    if (signal.aborted) await iterator.return?.();
  }
  res.end();
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
