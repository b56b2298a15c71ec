// Docker's multiplexed output (logs and exec of a container without a TTY) and the log lines in it.
//
// docker-modem's demuxStream() splits the stream into two writables, stdout and stderr. We need one ordered
// sequence with each piece tagged with its stream, read with backpressure (a follower that reads slowly must
// not make us buffer a chatty task's output), so we decode the frames ourselves; the format is the same
// (https://docs.docker.com/engine/api/v1.41/#operation/ContainerAttach).
import type { LogLine } from '../types.ts';

export type StreamName = 'stdout' | 'stderr';

export interface Frame {
  stream: StreamName;
  payload: Buffer;
}

const HEADER = 8;

/**
 * Frames from the raw bytes: an 8-byte header (stream type 0 stdin, 1 stdout, 2 stderr; three zero bytes; the
 * payload's length, big-endian) then the payload. Bytes that are not a valid header mean the stream is not
 * multiplexed (a TTY container): from then on everything is passed through as stdout, as demuxStream does.
 */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);
  private raw = false;

  push(chunk: Buffer): Frame[] {
    if (this.raw) return chunk.length > 0 ? [{ stream: 'stdout', payload: chunk }] : [];
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    while (this.pending.length >= HEADER) {
      const type = this.pending[0];
      if ((type !== 0 && type !== 1 && type !== 2) || this.pending[1] || this.pending[2] || this.pending[3]) {
        this.raw = true;
        frames.push({ stream: 'stdout', payload: this.pending });
        this.pending = Buffer.alloc(0);
        break;
      }
      const end = HEADER + this.pending.readUInt32BE(4);
      if (this.pending.length < end) break;
      frames.push({ stream: type === 2 ? 'stderr' : 'stdout', payload: this.pending.subarray(HEADER, end) });
      this.pending = this.pending.subarray(end);
    }
    return frames;
  }

  /** At the end of the stream: a truncated last frame, if any, as it is. */
  end(): Frame[] {
    const rest = this.pending.length > HEADER ? this.pending.subarray(HEADER) : Buffer.alloc(0);
    const stream: StreamName = this.pending[0] === 2 ? 'stderr' : 'stdout';
    this.pending = Buffer.alloc(0);
    return rest.length > 0 ? [{ stream, payload: rest }] : [];
  }
}

const NEWLINE = 0x0a;
const TIMESTAMP = /^\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)$/;

interface HeldLine {
  time: string;
  bytes: Buffer[];
}

/**
 * Log lines from the frames of `logs?timestamps=1`. Each frame is one log message, "<RFC3339Nano time> <text>".
 * A message without a final newline is part of a longer line (the engine cuts lines at 16 KiB) or the last,
 * unterminated output of the task: it is held until the rest of its line arrives, per stream, and takes the time
 * of its first part. Text is decoded only once a line is whole, so a UTF-8 character cut in two survives.
 */
export class LogLineSplitter {
  private readonly partial: Record<StreamName, HeldLine | undefined> = { stdout: undefined, stderr: undefined };

  push(frame: Frame): LogLine[] {
    let text = frame.payload;
    let time: string | undefined;
    const space = text.indexOf(0x20);
    if (space > 0 && space <= 40) {
      const candidate = text.subarray(0, space).toString('latin1');
      if (TIMESTAMP.test(candidate)) {
        time = candidate;
        text = text.subarray(space + 1);
      }
    }
    time ??= new Date().toISOString();
    const lines: LogLine[] = [];
    let start = 0;
    for (let newline = text.indexOf(NEWLINE); newline !== -1; newline = text.indexOf(NEWLINE, start)) {
      lines.push(this.complete(frame.stream, time, text.subarray(start, newline)));
      start = newline + 1;
    }
    if (start < text.length) {
      const held = this.partial[frame.stream] ?? { time, bytes: [] };
      held.bytes.push(text.subarray(start));
      this.partial[frame.stream] = held;
    }
    return lines;
  }

  /** At the end of the stream: whatever was held, as lines of their own. */
  end(): LogLine[] {
    const lines: LogLine[] = [];
    for (const stream of ['stdout', 'stderr'] as const) {
      const held = this.partial[stream];
      if (held) lines.push(this.complete(stream, held.time, Buffer.alloc(0)));
    }
    return lines;
  }

  private complete(stream: StreamName, time: string, tail: Buffer): LogLine {
    const held = this.partial[stream];
    this.partial[stream] = undefined;
    const bytes = held ? Buffer.concat([...held.bytes, tail]) : tail;
    return { stream, time: held?.time ?? time, line: bytes.toString('utf8') };
  }
}
