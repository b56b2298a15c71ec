// A container's logs as LogLines: both streams, in order, each line with the engine's timestamp.
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import type { LogLine } from '../types.ts';
import { call, type Engine, toDockerError } from './engine.ts';
import { FrameDecoder, LogLineSplitter } from './streams.ts';

export interface LogOptions {
  follow: boolean;
  tail?: number;
  /** Ends the iteration (quietly) when aborted, as does leaving a for-await loop early. */
  signal?: AbortSignal;
}

export async function* containerLogs(
  engine: Engine,
  container: Docker.Container,
  options: LogOptions,
): AsyncGenerator<LogLine, void, undefined> {
  const { signal } = options;
  if (signal?.aborted) return;
  const what = `reading the logs of container ${container.id}`;
  const query = {
    stdout: true,
    stderr: true,
    timestamps: true,
    ...(options.tail !== undefined ? { tail: Math.max(0, Math.floor(options.tail)) } : {}),
  };
  let chunks: AsyncIterable<Buffer> | Iterable<Buffer>;
  let stream: Readable | undefined;
  try {
    if (options.follow) {
      // No time limit: a follower waits for as long as the task runs. The caller's signal aborts the request.
      stream = (await call(
        engine,
        what,
        () => container.logs({ ...query, follow: true, ...(signal ? { abortSignal: signal } : {}) }),
        0,
      )) as unknown as Readable;
      chunks = stream;
    } else {
      // Without follow, dockerode reads the whole (tail-limited) body and hands back one Buffer.
      const body = await call(engine, what, (abortSignal) =>
        container.logs({ ...query, follow: false, abortSignal: anySignal(abortSignal, signal) }),
      );
      chunks = [Buffer.isBuffer(body) ? body : Buffer.from(String(body))];
    }
  } catch (error) {
    if (signal?.aborted) return;
    throw error;
  }

  const frames = new FrameDecoder();
  const lines = new LogLineSplitter();
  try {
    for await (const chunk of chunks) {
      for (const frame of frames.push(chunk)) yield* lines.push(frame);
    }
  } catch (error) {
    // Aborted by the caller: the request was torn down on purpose; end quietly.
    if (signal?.aborted) return;
    throw toDockerError(error, what, engine.address);
  } finally {
    // Leaving the loop early (break, or the caller's return()) must close the HTTP stream.
    stream?.destroy();
  }
  for (const frame of frames.end()) yield* lines.push(frame);
  yield* lines.end();
}

function anySignal(own: AbortSignal, caller: AbortSignal | undefined): AbortSignal {
  return caller ? AbortSignal.any([own, caller]) : own;
}
