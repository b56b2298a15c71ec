// Message framing over a libp2p v3 Stream: each frame is a 4-byte big-endian length and a msgpack payload.
//
// A v3 stream is an EventTarget. Data arrives as 'message' events whether or not anyone reads, and a stream with no
// 'message' listener resets itself once 4 MiB are buffered, so the listener is attached in the constructor and
// decoded frames wait in a small queue until read() takes them. When that queue is long the stream is paused (yamux
// then stops granting window to the sender), and resumed once the reader catches up: memory per stream stays bounded
// by the queue plus one flow-control window.
//
// Hostile input (an oversized length, bytes that are not msgpack, a frame cut off by the end of the stream) aborts
// this stream only and surfaces as a FrameError from read(); nothing here throws into an event listener, and no
// promise is left to reject unobserved.

import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';
import { Packr } from 'msgpackr';
import { encodeFrame, FrameDecoder, FrameTooLargeError } from '../../raft/driver/framing.ts';

export const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;

/** Pause the stream when this many decoded frames wait to be read... */
const QUEUE_HIGH_FRAMES = 64;
/**
 * ...or when their encoded sizes add up to this; resume when both are back under half. One message event can add a
 * whole flow-control window at once, so a queue holds at most about this plus one window.
 */
const QUEUE_HIGH_BYTES = 1024 * 1024;

/**
 * While paused, the remote may still send what is left of its flow-control window. Yamux windows grow to 16 MiB, more
 * than the stream's default 4 MiB read-buffer limit, which would reset a paused stream; allow one full window.
 */
const PAUSED_READ_BUFFER_BYTES = 16 * 1024 * 1024 + 64 * 1024;

/** How long close() waits for queued bytes to reach the transport before aborting instead. */
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;

// As the Raft codec: plain maps and arrays, no msgpackr record extension, no extra types. copyBuffers: a decoded
// binary field would otherwise be a view into the network chunk it arrived in, and keeping a small one (a Raft entry
// held in memory) would keep that whole chunk alive.
const packr = new Packr({ useRecords: false, moreTypes: false, copyBuffers: true });

/** A frame that could not be accepted: too large, not msgpack, or cut short. The stream it came on is aborted. */
export class FrameError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FrameError';
  }
}

export interface FramedStream {
  /** Sends one value as a frame; resolves once the stream can take more (backpressure). `undefined` is refused. */
  send(value: unknown, signal?: AbortSignal): Promise<void>;
  /**
   * Next decoded frame; resolves undefined at the end of the stream. Throws FrameError on an oversized or undecodable
   * frame (the stream is aborted), the stream's error if it was reset, or the signal's reason if it fires first.
   */
  read(signal?: AbortSignal): Promise<unknown | undefined>;
  /** Iterates over frames until the end of the stream. */
  [Symbol.asyncIterator](): AsyncIterator<unknown>;
  /** Graceful half-close of our sending side (the remote sees the end of the stream); aborts if that fails. */
  close(): Promise<void>;
  /** Closes both directions at once, discarding anything buffered; the remote sees a reset. */
  abort(reason: Error): void;
}

export interface FramedStreamOptions {
  maxFrameBytes?: number;
  closeTimeoutMs?: number;
  /** Told about each frame that got the stream aborted (the design wants hostile frames logged). */
  onFrameError?: (err: FrameError) => void;
}

interface Waiter {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

interface QueuedFrame {
  value: unknown;
  bytes: number;
}

/** Wraps a stream at once (before any await) so that no incoming byte finds it without a listener. */
export function framedStream(stream: Stream, options: FramedStreamOptions = {}): FramedStream {
  return new Libp2pFramedStream(stream, options);
}

class Libp2pFramedStream implements FramedStream {
  private readonly stream: Stream;
  private readonly maxFrameBytes: number;
  private readonly closeTimeoutMs: number;
  private readonly onFrameError: ((err: FrameError) => void) | undefined;
  private readonly decoder: FrameDecoder;
  /** Bytes given to the decoder and not yet returned as frames: non-zero at the end means a truncated frame. */
  private undecodedBytes = 0;
  private readonly queue: QueuedFrame[] = [];
  private queuedBytes = 0;
  private paused = false;
  /** Inside stream.resume(): see maybeResume(). */
  private resuming = false;
  private readonly waiters: Waiter[] = [];
  /** The remote finished sending cleanly; read() returns undefined once the queue is empty. */
  private ended = false;
  /** The stream failed (or was aborted); read() throws this once the queue is empty. */
  private failure: Error | undefined;

  constructor(stream: Stream, options: FramedStreamOptions) {
    this.stream = stream;
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.closeTimeoutMs = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.onFrameError = options.onFrameError;
    this.decoder = new FrameDecoder(this.maxFrameBytes);
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, PAUSED_READ_BUFFER_BYTES);
    stream.addEventListener('message', (evt) => this.onMessage(evt));
    // 'end' is the v3 signal that no more data will be delivered (emitted after the buffered data, so it comes after
    // the last 'message'). It also fires on resets, just before 'close' carries the error: onEnd tells them apart.
    stream.addEventListener('end', () => this.onEnd());
    stream.addEventListener('close', (evt) => this.onClose(evt));
    // The stream may already be over by the time it is wrapped (a fast remote, a slow authorize()).
    if (stream.status !== 'open') this.onClose(undefined);
    else if (stream.readableEnded) this.onEnd();
  }

  async send(value: unknown, signal?: AbortSignal): Promise<void> {
    if (value === undefined) throw new TypeError('cannot send undefined: read() uses it to mean the end of the stream');
    if (this.failure !== undefined) throw this.failure;
    const payload = packr.pack(value);
    // Refused here rather than sent: the remote would abort the whole stream on it.
    if (payload.byteLength > this.maxFrameBytes) {
      throw new FrameError(`frame of ${payload.byteLength} bytes exceeds the limit of ${this.maxFrameBytes}`);
    }
    if (!this.stream.send(encodeFrame(payload))) {
      await this.stream.onDrain(signal === undefined ? undefined : { signal });
    }
  }

  read(signal?: AbortSignal): Promise<unknown | undefined> {
    const next = this.queue.shift();
    if (next !== undefined) {
      this.queuedBytes -= next.bytes;
      this.maybeResume();
      return Promise.resolve(next.value);
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(undefined);
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      if (signal !== undefined) {
        const onAbort = () => {
          const at = this.waiters.indexOf(waiter);
          if (at >= 0) this.waiters.splice(at, 1);
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        waiter.resolve = (value) => {
          signal.removeEventListener('abort', onAbort);
          resolve(value);
        };
        waiter.reject = (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        };
      }
      this.waiters.push(waiter);
    });
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<unknown> {
    for (;;) {
      const value = await this.read();
      if (value === undefined) return;
      yield value;
    }
  }

  async close(): Promise<void> {
    if (this.stream.writeStatus !== 'writable') return;
    try {
      await this.stream.close({ signal: AbortSignal.timeout(this.closeTimeoutMs) });
    } catch (err) {
      this.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }

  abort(reason: Error): void {
    // A local abort discards what is queued: the caller has given up on this stream.
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.fail(reason);
    this.stream.abort(reason);
  }

  private onMessage(evt: StreamMessageEvent): void {
    if (this.failure !== undefined || this.ended) return;
    const data = evt.data;
    // A Uint8ArrayList iterates over its chunks; wrap each as a Buffer without copying.
    const chunks = data instanceof Uint8Array ? [data] : data;
    try {
      for (const chunk of chunks) {
        this.undecodedBytes += chunk.byteLength;
        for (const frame of this.decoder.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))) {
          this.undecodedBytes -= 4 + frame.byteLength;
          this.enqueue(decodePayload(frame), frame.byteLength);
        }
      }
    } catch (err) {
      const error =
        err instanceof FrameError
          ? err
          : err instanceof FrameTooLargeError
            ? new FrameError(err.message, { cause: err })
            : new FrameError(`bad frame: ${(err as Error).message}`, { cause: err });
      this.failAndAbort(error);
      return;
    }
    this.maybePause();
  }

  private onEnd(): void {
    // A reset or abort also emits 'end', right before 'close' with the error; leave those to onClose.
    if (this.stream.status === 'reset' || this.stream.status === 'aborted') return;
    this.finishInput();
  }

  private onClose(evt: StreamCloseEvent | undefined): void {
    if (evt?.error !== undefined) {
      this.fail(evt.error);
      return;
    }
    if (this.stream.status === 'reset' || this.stream.status === 'aborted') {
      this.fail(new Error(`stream ${this.stream.status}`));
      return;
    }
    // A clean close normally follows 'end'. If bytes still wait in a paused stream, 'end' comes after resume().
    if (this.stream.readBufferLength === 0) this.finishInput();
  }

  /** The remote will send nothing more: a partial frame left over means it was cut off. */
  private finishInput(): void {
    if (this.failure !== undefined || this.ended) return;
    if (this.undecodedBytes > 0) {
      this.failAndAbort(new FrameError(`stream ended inside a frame (${this.undecodedBytes} bytes left over)`));
      return;
    }
    this.ended = true;
    for (const waiter of this.waiters.splice(0)) waiter.resolve(undefined);
  }

  private enqueue(value: unknown, bytes: number): void {
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter.resolve(value);
      return;
    }
    this.queue.push({ value, bytes });
    this.queuedBytes += bytes;
  }

  private maybePause(): void {
    if (this.paused || this.resuming) return;
    if (this.queue.length < QUEUE_HIGH_FRAMES && this.queuedBytes < QUEUE_HIGH_BYTES) return;
    if (this.stream.readStatus !== 'readable') return;
    this.paused = true;
    this.stream.pause();
  }

  private maybeResume(): void {
    if (!this.paused || this.queue.length > QUEUE_HIGH_FRAMES / 2 || this.queuedBytes > QUEUE_HIGH_BYTES / 2) return;
    this.paused = false;
    if (this.stream.readStatus !== 'paused') return;
    // resume() dispatches the bytes buffered while paused before it tells yamux to grant window again. Pausing from
    // inside that dispatch would be undone by the window update that follows (the stream would read as paused
    // while the remote keeps sending, until the read buffer overflows and resets it), so pause after resume() returns.
    this.resuming = true;
    try {
      this.stream.resume();
    } finally {
      this.resuming = false;
    }
    this.maybePause();
  }

  /** Frames already queued are still delivered; read() throws `err` after them. */
  private fail(err: Error): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const waiter of this.waiters.splice(0)) waiter.reject(err);
  }

  private failAndAbort(err: FrameError): void {
    this.fail(err);
    this.stream.abort(err);
    try {
      this.onFrameError?.(err);
    } catch {
      // A logger that throws must not turn a bad frame into a crash.
    }
  }
}

function decodePayload(frame: Buffer): unknown {
  let value: unknown;
  try {
    value = packr.unpack(frame);
  } catch (err) {
    throw new FrameError(`frame is not valid msgpack: ${(err as Error).message}`, { cause: err });
  }
  // send() never produces it, and read() uses undefined to mean the end of the stream.
  if (value === undefined) throw new FrameError('frame decodes to undefined');
  return value;
}
