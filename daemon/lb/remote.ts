// The mesh hop of an ingress connection: the node that accepted the client opens a stream to the node running the
// chosen task and sends a small header; that node connects to the task and answers with one status byte, then the
// stream carries the connection's bytes unchanged.
//
//   ingress -> task node:  u16 big-endian length, then msgpack {v: 1, t: taskId, c?: [srcAddr, srcPort, dstAddr, dstPort], u?: 1}
//   task node -> ingress:  one status byte (REMOTE_STATUS), then the backend's bytes
//
// With `u: 1` the stream carries one UDP flow instead: datagrams each way, framed (udp-relay.ts), and the task's
// node sends them to the task's UDP port.
//
// The status byte is what lets the ingress retry another task when this one cannot be reached: until it arrives no
// byte of the client's has been sent anywhere. `c` is present when the service wants PROXY protocol: the task's node
// writes the header, from the client address the ingress saw.
//
// The header comes from another swarm member, but is validated as if hostile anyway (size, types, values): a bad one
// gets a status byte and the stream closed, never an exception.
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Packr } from 'msgpackr';
import type { DrainTracker } from './drain-tracker.ts';
import { type Endpoint, parseAddress, type TaskId } from './endpoints.ts';
import type { ParkedConnection, RelayedConnection } from './native-relay.ts';
import { encodeProxyV2, type ProxyAddresses } from './proxy-protocol.ts';
import { connectDirect, connectUnread, LINGER_MS, pump } from './pump.ts';
import { closeQuietly, connectUdpTask, relayFlow } from './udp-relay.ts';

export const REMOTE_HEADER_MAX_BYTES = 1024;
const TASK_ID_MAX_CHARS = 128;
const VERSION = 1;

export const REMOTE_STATUS = {
  ok: 0,
  badHeader: 1,
  unknownTask: 2,
  connectFailed: 3,
  /** The task is about to stop: not a failure of the task, just a reason to pick another. */
  draining: 4,
} as const;
export type RemoteStatus = (typeof REMOTE_STATUS)[keyof typeof REMOTE_STATUS];

// Preallocated: written on every connection and never mutated.
const STATUS_BYTES = Object.values(REMOTE_STATUS).map((s) => Buffer.from([s]));

export interface RemoteHeader {
  taskId: TaskId;
  /** A UDP flow: the stream carries framed datagrams (udp-relay.ts). */
  udp?: boolean;
  /** The client connection as the ingress saw it; present when the backend wants a PROXY v2 header. */
  client?: ProxyAddresses;
}

export class RemoteHeaderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RemoteHeaderError';
  }
}

// Plain maps and arrays only, as the rest of the mesh's msgpack.
const packr = new Packr({ useRecords: false, moreTypes: false });

/** The bytes to send first on a mesh stream: length prefix included. */
export function encodeRemoteHeader(header: RemoteHeader): Buffer {
  const value: Record<string, unknown> = { v: VERSION, t: header.taskId };
  if (header.udp) value.u = 1;
  if (header.client !== undefined) {
    const c = header.client;
    value.c = [c.sourceAddress, c.sourcePort, c.destinationAddress, c.destinationPort];
  }
  const payload = packr.pack(value);
  if (payload.length > REMOTE_HEADER_MAX_BYTES) throw new RemoteHeaderError('remote header too large');
  const out = Buffer.allocUnsafe(2 + payload.length);
  out.writeUInt16BE(payload.length, 0);
  payload.copy(out, 2);
  return out;
}

/** Decodes and validates a header payload (without its length prefix). */
export function decodeRemoteHeader(payload: Uint8Array): RemoteHeader {
  let value: unknown;
  try {
    value = packr.unpack(payload);
  } catch (err) {
    throw new RemoteHeaderError(`remote header is not msgpack: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Map) {
    throw new RemoteHeaderError('remote header is not a map');
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (key !== 'v' && key !== 't' && key !== 'c' && key !== 'u') {
      throw new RemoteHeaderError(`unknown field ${JSON.stringify(key)}`);
    }
  }
  if (record.v !== VERSION) throw new RemoteHeaderError(`unsupported version ${String(record.v)}`);
  const taskId = record.t;
  if (typeof taskId !== 'string' || taskId.length === 0 || taskId.length > TASK_ID_MAX_CHARS) {
    throw new RemoteHeaderError('bad task ID');
  }
  if (record.u !== undefined && record.u !== 1) throw new RemoteHeaderError('bad udp flag');
  const udp = record.u === 1 ? { udp: true } : {};
  if (record.c === undefined) return { taskId, ...udp };
  if (record.u !== undefined) throw new RemoteHeaderError('a UDP flow has no PROXY protocol client address');
  const c = record.c;
  if (!Array.isArray(c) || c.length !== 4) throw new RemoteHeaderError('bad client address');
  const [sourceAddress, sourcePort, destinationAddress, destinationPort] = c as unknown[];
  if (!isAddress(sourceAddress) || !isAddress(destinationAddress) || !isPort(sourcePort) || !isPort(destinationPort)) {
    throw new RemoteHeaderError('bad client address');
  }
  return { taskId, client: { sourceAddress, sourcePort, destinationAddress, destinationPort } };
}

function isAddress(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 64 && isIP(value) !== 0;
}

function isPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 65535;
}

export interface ServeRemoteOptions {
  /** For the header to arrive and for the connect to the task. Default 10 s. */
  timeoutMs?: number;
  /** Told why a stream was refused or failed (the design wants hostile input logged). */
  log?: (msg: string) => void;
  /**
   * This node's served streams per task: a task being drained is refused (the ingress picks another, no byte lost),
   * and its drain waits for the streams already served. Other nodes may still choose the task until the endpoint
   * table tells them it drains, which is what makes this side's check necessary.
   */
  drains?: DrainTracker;
  /** serveNativeHop: a hop it served (resolved 'served') has ended. */
  onEnd?: () => void;
}

/** The task's side of a served stream, TCP or UDP alike: connected, not yet moving bytes. */
interface TaskBackend {
  destroy(): void;
  /** Moves bytes both ways until either side is done, then calls `done` once. */
  forward(done: () => void): void;
}

export type ServeRemoteResult = 'served' | 'bad-header' | 'unknown-task' | 'connect-failed' | 'draining' | 'closed';

/**
 * Serves one mesh stream on the task's node: reads the header, connects to the task's local address (from
 * resolveAddress; undefined = not a task of this node), answers the status, then moves bytes until both sides are
 * done. Resolves with what happened; never rejects, and never lets an error escape.
 */
export function serveRemote(
  stream: Duplex,
  resolveAddress: (taskId: TaskId) => string | undefined,
  options: ServeRemoteOptions = {},
): Promise<ServeRemoteResult> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const log = options.log ?? (() => {});
  return new Promise((resolve) => {
    let buffered: Buffer | undefined;
    let settled = false;
    const refuse = (status: RemoteStatus, result: ServeRemoteResult, why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // A draining task is refused by design during every rolling update: not worth a line each time.
      if (status !== REMOTE_STATUS.draining) log(`lb: refused mesh-forwarded connection: ${why}`);
      // The status byte tells the ingress to try elsewhere; the stream is then done.
      stream.end(STATUS_BYTES[status]);
      stream.once('finish', () => stream.destroy());
      resolve(result);
    };
    const onError = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      log(`lb: mesh-forwarded stream failed: ${err.message}`);
      stream.destroy();
      resolve('closed');
    };
    // Stays attached for the stream's whole life: an error after the handover must not go unhandled either.
    stream.on('error', (err) => onError(err));
    stream.once('close', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve('closed');
    });
    const timer = setTimeout(() => refuse(REMOTE_STATUS.badHeader, 'bad-header', 'no header in time'), timeoutMs);
    timer.unref();

    const onData = (chunk: Buffer) => {
      buffered = buffered === undefined ? chunk : Buffer.concat([buffered, chunk]);
      if (buffered.length < 2) return;
      const length = buffered.readUInt16BE(0);
      if (length === 0 || length > REMOTE_HEADER_MAX_BYTES) {
        stream.off('data', onData);
        refuse(REMOTE_STATUS.badHeader, 'bad-header', `header length ${length}`);
        return;
      }
      if (buffered.length < 2 + length) return;
      // Paused before the listener goes: bytes after the header (sent early) must wait for the backend.
      stream.pause();
      stream.off('data', onData);
      const admitted = admit(buffered.subarray(2, 2 + length), resolveAddress, options);
      if ('refuse' in admitted) {
        refuse(admitted.refuse, admitted.result, admitted.why);
        return;
      }
      const { header, address } = admitted;
      const early = buffered.length > 2 + length ? buffered.subarray(2 + length) : undefined;
      buffered = undefined;
      const drains = options.drains;
      const refuseDraining = () => refuse(REMOTE_STATUS.draining, 'draining', `task ${header.taskId} is draining`);
      const onBackend = (err: Error | undefined, backend: TaskBackend | undefined) => {
        if (settled) {
          backend?.destroy();
          return;
        }
        if (err !== undefined || backend === undefined) {
          refuse(REMOTE_STATUS.connectFailed, 'connect-failed', `task ${header.taskId}: ${err?.message}`);
          return;
        }
        // The drain began while connecting and may already have resolved: nothing was sent yet, so refuse.
        if (drains?.isDraining(header.taskId)) {
          backend.destroy();
          refuseDraining();
          return;
        }
        settled = true;
        clearTimeout(timer);
        const release = drains?.opened(header.taskId, () => {
          stream.destroy();
          backend.destroy();
          release?.();
        });
        stream.write(STATUS_BYTES[REMOTE_STATUS.ok]);
        backend.forward(() => release?.());
        resolve('served');
      };
      if (header.udp) {
        connectUdpTask(address, (err, socket) =>
          onBackend(
            err,
            socket && {
              destroy: () => closeQuietly(socket),
              forward: (done) => relayFlow(stream, socket, early, done),
            },
          ),
        );
        return;
      }
      connectTask(address, timeoutMs, 'js', (err, socket) =>
        onBackend(
          err,
          socket && {
            destroy: () => socket.destroy(),
            forward: (done) => {
              if (header.client !== undefined) socket.write(encodeProxyV2(header.client));
              if (early !== undefined) socket.write(early);
              pump(stream, socket, done);
            },
          },
        ),
      );
    };
    stream.on('data', onData);
  });
}

/** What the task's node does with a header: refuse it (the status, and why), or connect to the task's address. */
type Admission =
  | { refuse: RemoteStatus; result: ServeRemoteResult; why: string }
  | { header: RemoteHeader; address: string };

function admit(
  payload: Uint8Array,
  resolveAddress: (taskId: TaskId) => string | undefined,
  options: ServeRemoteOptions,
): Admission {
  let header: RemoteHeader;
  try {
    header = decodeRemoteHeader(payload);
  } catch (err) {
    return { refuse: REMOTE_STATUS.badHeader, result: 'bad-header', why: (err as Error).message };
  }
  let address: string | undefined;
  try {
    address = resolveAddress(header.taskId);
  } catch (err) {
    options.log?.(`lb: resolving task ${header.taskId} failed: ${(err as Error).message}`);
  }
  if (address === undefined)
    return { refuse: REMOTE_STATUS.unknownTask, result: 'unknown-task', why: `no local task ${header.taskId}` };
  if (options.drains?.isDraining(header.taskId))
    return { refuse: REMOTE_STATUS.draining, result: 'draining', why: `task ${header.taskId} is draining` };
  return { header, address };
}

/**
 * Serves a native hop (native-hop.ts) on the task's node: the relay has set it up and read its header; this
 * connects to the task and joins the two, the status byte first, or drops it with the refusal's status. The same
 * decisions as serveRemote, for the same results; a UDP flow never comes this way (it takes the tunnel).
 */
export function serveNativeHop(
  parked: ParkedConnection,
  payload: Buffer,
  resolveAddress: (taskId: TaskId) => string | undefined,
  options: ServeRemoteOptions = {},
): Promise<ServeRemoteResult> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const log = options.log ?? (() => {});
  const drains = options.drains;
  return new Promise((resolve) => {
    const refuse = (status: RemoteStatus, result: ServeRemoteResult, why: string) => {
      if (status !== REMOTE_STATUS.draining) log(`lb: refused natively forwarded connection: ${why}`);
      parked.drop(status);
      resolve(result);
    };
    const admitted = admit(payload, resolveAddress, options);
    if ('refuse' in admitted) {
      refuse(admitted.refuse, admitted.result, admitted.why);
      return;
    }
    const { header, address } = admitted;
    if (header.udp) {
      refuse(REMOTE_STATUS.badHeader, 'bad-header', 'a UDP flow takes the tunnel, not a native hop');
      return;
    }
    connectTask(address, timeoutMs, 'relay', (err, socket) => {
      if (err !== undefined || socket === undefined) {
        refuse(REMOTE_STATUS.connectFailed, 'connect-failed', `task ${header.taskId}: ${err?.message}`);
        return;
      }
      const join = () => {
        // The drain began while connecting (or the PROXY header was being written): nothing was sent yet.
        if (drains?.isDraining(header.taskId)) {
          socket.destroy();
          refuse(REMOTE_STATUS.draining, 'draining', `task ${header.taskId} is draining`);
          return;
        }
        let relayed: RelayedConnection | undefined;
        const release = drains?.opened(header.taskId, () => relayed?.cut());
        relayed = parked.join(socket, REMOTE_STATUS.ok, LINGER_MS, () => {
          release?.();
          options.onEnd?.();
        });
        if (relayed === undefined) {
          release?.();
          socket.destroy();
          refuse(REMOTE_STATUS.connectFailed, 'connect-failed', `task ${header.taskId}: its socket closed`);
          return;
        }
        resolve('served');
      };
      // Written before the hand-over, which takes a socket with nothing queued.
      if (header.client !== undefined) socket.write(encodeProxyV2(header.client), () => join());
      else join();
    });
  });
}

/**
 * Connects to host:port with TCP_NODELAY, half-open allowed, and a connect timeout. Calls back once, with the
 * connected socket or the error (the socket is then destroyed). `readBy`: who will move the socket's bytes, pump()
 * in this thread ('js') or the native relay ('relay', which then finds everything the task sent still unread).
 */
export function connectTask(
  address: string,
  timeoutMs: number,
  readBy: 'js' | 'relay',
  callback: (err: Error | undefined, socket: Socket | undefined) => void,
): Socket | undefined {
  let target: { host: string; port: number };
  try {
    target = parseAddress(address);
  } catch (err) {
    callback(err as Error, undefined);
    return undefined;
  }
  const options = { host: target.host, port: target.port, allowHalfOpen: true, noDelay: true };
  const socket = readBy === 'relay' ? connectUnread(options) : connectDirect(options);
  let done = false;
  const timer = setTimeout(() => fail(new Error(`connect to ${address} timed out`)), timeoutMs);
  const fail = (err: Error) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.destroy();
    callback(err, undefined);
  };
  // The error listener stays: the caller's own is added in the same tick, and one with nothing to do is harmless.
  socket.on('error', fail);
  // Destroyed by the caller while connecting (its client left): no callback then, and no timer left behind.
  socket.once('close', () => clearTimeout(timer));
  socket.once('connect', () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    callback(undefined, socket);
  });
  return socket;
}

/**
 * Opens a byte stream to the endpoint's node for one client (a mesh stream or data-path tunnel stream in the
 * daemon), sending `header` (from encodeRemoteHeader) first. Resolves once the stream is open; openTaskStream then
 * waits for the status byte. Should reject or destroy the stream when `signal` fires.
 */
export type DialRemote = (endpoint: Endpoint, header: Buffer, signal: AbortSignal) => Promise<Duplex>;

/** The task's node answered that it is draining the task (see REMOTE_STATUS.draining). */
export class TaskDrainingError extends Error {
  constructor(endpoint: Endpoint) {
    super(`node ${endpoint.nodeId} is draining task ${endpoint.taskId}`);
    this.name = 'TaskDrainingError';
  }
}

/**
 * The ingress's side of the mesh hop: dials the task's node, sends the header and waits for its status byte.
 * Calls back once: with the stream (paused, status byte consumed) and any backend bytes that came right behind the
 * status, or with the error: a refusal (TaskDrainingError when that node drains the task), a timeout after
 * timeoutMs, or the abort's reason when `abort` fires first (the client left). The stream is destroyed on error.
 */
export function openTaskStream(
  dialRemote: DialRemote,
  endpoint: Endpoint,
  header: Buffer,
  timeoutMs: number,
  abort: AbortController,
  onResult: (err: Error | undefined, stream: Duplex | undefined, early?: Buffer) => void,
): void {
  let settled = false;
  let stream: Duplex | undefined;
  const settle = (err: Error | undefined, early?: Buffer) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    if (stream !== undefined) {
      stream.off('data', onStatus);
      stream.off('end', onEarlyEnd);
      stream.off('close', onEarlyEnd);
    }
    if (err !== undefined) {
      abort.abort(err);
      stream?.destroy();
      onResult(err, undefined);
    } else {
      onResult(undefined, stream, early);
    }
  };
  const timer = setTimeout(() => settle(new Error(`mesh connect to task ${endpoint.taskId} timed out`)), timeoutMs);
  // The client left: stop waiting at once rather than at the timeout.
  abort.signal.addEventListener('abort', () => settle(new Error('client connection closed')), { once: true });
  const onStatus = (chunk: Buffer) => {
    // Paused before the listener goes: the backend's first bytes may be right behind the status byte.
    stream!.pause();
    const status = chunk[0];
    if (status === REMOTE_STATUS.draining) {
      settle(new TaskDrainingError(endpoint));
      return;
    }
    if (status !== REMOTE_STATUS.ok) {
      settle(new Error(`node ${endpoint.nodeId} refused task ${endpoint.taskId} (status ${status})`));
      return;
    }
    settle(undefined, chunk.length > 1 ? chunk.subarray(1) : undefined);
  };
  const onEarlyEnd = () => settle(new Error(`mesh stream to task ${endpoint.taskId} closed before its status`));
  let dialing: Promise<Duplex>;
  try {
    dialing = dialRemote(endpoint, header, abort.signal);
  } catch (err) {
    dialing = Promise.reject(err);
  }
  dialing.then(
    (opened) => {
      if (settled) {
        opened.destroy();
        return;
      }
      stream = opened;
      // Kept for the stream's whole life; whoever forwards on it adds the handler that acts after the status.
      opened.on('error', (err) => settle(err));
      opened.on('data', onStatus);
      opened.once('end', onEarlyEnd);
      opened.once('close', onEarlyEnd);
    },
    (err: unknown) => settle(err instanceof Error ? err : new Error(String(err))),
  );
}
