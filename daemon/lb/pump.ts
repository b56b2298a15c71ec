// Moves bytes both ways between two connected duplexes (a client socket and a backend socket or mesh stream) until
// both directions are done, then calls done once.
//
// Why not a.pipe(b) or stream.pipeline: both add per-chunk bookkeeping (pipe's ondata/needDrain state, pipeline's
// eos tracking and destroy propagation) that this path does not need; the per-chunk work here is one write() and,
// under backpressure only, one pause(). Bytes are not counted per chunk either: net.Socket already counts them
// (bytesRead/bytesWritten), and the forwarder reads those when it reports.
//
// Sockets we open ourselves (connectDirect) go one step further: they read through net's `onread` option into one
// fixed buffer per connection, so a read allocates no 64 KiB buffer and skips the Readable machinery (push, 'data',
// a nextTick per chunk). Measured on the lb bench that is a few µs of CPU per proxied request. The buffer is reused
// for the next read, which is safe only while no write still refers to it: a net.Socket that took a chunk
// synchronously keeps no reference (its writableLength is back to 0), otherwise reading pauses until the write is
// done. Other duplexes (a mesh stream) may keep what they are given, so they get a copy.
//
// Half-close is propagated (an end on one side ends writing to the other), so protocols that shut down one direction
// first keep working; both sides must allow half-open. An error on either side destroys both.
import { connect, Socket, type TcpNetConnectOpts } from 'node:net';
import type { Duplex } from 'node:stream';

/** How long a side that finished cleanly may take to flush what it was sent before it is destroyed anyway. */
export const LINGER_MS = 30_000;

/** Per direction and connection; HAProxy's default buffer size too. */
export const DIRECT_READ_BUFFER_BYTES = 16 * 1024;

interface DirectReader {
  socket: Socket;
  /** Where reads go once pump() has started; until then they are kept (copied) and reading pauses. */
  target: Duplex | undefined;
  /** Whether the target is a net.Socket, whose writes we know not to keep the buffer (see above). */
  targetIsSocket: boolean;
  early: Buffer[] | undefined;
  /** Reading paused until the target has flushed a write that points into our buffer. */
  waiting: boolean;
}

const directReaders = new WeakMap<Duplex, DirectReader>();

/** net.connect, reading through a fixed per-connection buffer; pump() forwards from it directly. */
export function connectDirect(options: TcpNetConnectOpts): Socket {
  const reader: DirectReader = {
    socket: undefined as unknown as Socket,
    target: undefined,
    targetIsSocket: false,
    early: undefined,
    waiting: false,
  };
  const onFlushed = () => {
    if (reader.waiting && reader.target!.writableLength === 0) {
      reader.waiting = false;
      reader.socket.resume();
    }
  };
  const onRead = (n: number, buf: Buffer): boolean => {
    const target = reader.target;
    const chunk = buf.subarray(0, n);
    if (target === undefined) {
      reader.early ??= [];
      reader.early.push(Buffer.from(chunk));
      return false;
    }
    if (!reader.targetIsSocket) return target.write(Buffer.from(chunk));
    target.write(chunk, onFlushed);
    if (target.writableLength === 0) return true;
    reader.waiting = true;
    return false;
  };
  const socket = connect({
    ...options,
    onread: { buffer: Buffer.allocUnsafe(DIRECT_READ_BUFFER_BYTES), callback: onRead },
  });
  reader.socket = socket;
  directReaders.set(socket, reader);
  return socket;
}

/**
 * net.connect for a socket whose descriptor the native relay will take: paused before it connects, so Node never
 * starts reading it (net starts the first read on connect only when the socket is not paused). Whatever the task
 * sends first stays in the kernel for the relay, and no read buffer is allocated for a socket JS will not read. If
 * the relay cannot take it after all, pump() resumes it like any other duplex.
 */
export function connectUnread(options: TcpNetConnectOpts): Socket {
  const socket = connect(options);
  socket.pause();
  return socket;
}

/** Whether a socket from connectDirect has read bytes that no pump() has forwarded yet (they are kept in JS). */
export function hasUnforwardedReads(socket: Duplex): boolean {
  return (directReaders.get(socket)?.early?.length ?? 0) > 0;
}

export function pump(a: Duplex, b: Duplex, done: (err: Error | undefined) => void): void {
  let finished = false;
  let closed = 0;
  const finish = (err: Error | undefined) => {
    if (finished) return;
    finished = true;
    done(err);
  };
  const onError = (err: Error) => {
    a.destroy();
    b.destroy();
    finish(err);
  };
  const onClose = (self: Duplex, other: Duplex) => () => {
    if (++closed === 2) {
      finish(undefined);
      return;
    }
    // self closed: if with an error (or destroyed before both directions ended), the other is of no use. If cleanly,
    // its other direction has ended too, and the other side only has to flush what it was given.
    if (self.errored !== null || !self.readableEnded) {
      other.destroy();
      return;
    }
    closeSoon(other);
  };
  forward(a, b);
  forward(b, a);
  a.on('error', onError);
  b.on('error', onError);
  a.on('close', onClose(a, b));
  b.on('close', onClose(b, a));
  a.resume();
  b.resume();
}

function forward(from: Duplex, to: Duplex): void {
  const reader = directReaders.get(from);
  if (reader === undefined) {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) from.pause();
    });
  } else {
    reader.target = to;
    reader.targetIsSocket = to instanceof Socket;
    for (const chunk of reader.early ?? []) to.write(chunk);
    reader.early = undefined;
  }
  to.on('drain', () => {
    if (reader !== undefined) reader.waiting = false;
    from.resume();
  });
  from.on('end', () => to.end());
}

/** Ends the writing side, then destroys it once flushed, or after LINGER_MS if the peer is not reading. */
function closeSoon(stream: Duplex): void {
  if (stream.destroyed) return;
  if (stream.writableFinished) {
    stream.destroy();
    return;
  }
  const timer = setTimeout(() => stream.destroy(), LINGER_MS);
  timer.unref();
  stream.once('finish', () => {
    clearTimeout(timer);
    stream.destroy();
  });
  stream.once('close', () => clearTimeout(timer));
  stream.end();
}
