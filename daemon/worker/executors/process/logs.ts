// Task logs. The program appends to stdout.log/stderr.log itself (files opened O_APPEND by swarmd and handed
// over as fds 1 and 2), so it never blocks on swarmd, loses nothing when swarmd is down, and its last
// output survives its exit. swarmd keeps the timestamps alongside: whenever it sees a file grow (inotify,
// plus a slow poll) it appends "<new size> <mtime ms>" to <stream>.times, so each line's time is when it
// was written, to within the ~50 ms it takes swarmd to look (for output written while swarmd was down: the
// file's last write time, an upper bound).
//
// Rotation is copytruncate: once a file reaches the cap, its last `cap` bytes (from a line start) go to
// <stream>.log.1, replacing the previous one, and the live file is truncated; the program's O_APPEND fd
// then writes from offset 0. Bytes written between swarmd's final read and the truncate (microseconds)
// are lost, as with logrotate's copytruncate. The cap holds only while swarmd runs: output written while
// it is down accumulates until it returns, when the file is rotated down to the cap at once.
import {
  appendFileSync,
  closeSync,
  type FSWatcher,
  fstatSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  watch,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import type { LogLine } from '../types.ts';

export type Stream = 'stdout' | 'stderr';

/** Lines longer than this are split, so a program that never writes a newline cannot exhaust memory. */
const MAX_LINE = 16 * 1024;

interface IndexEntry {
  /** Bytes before this offset, and after the previous entry's, were first seen at `time`. */
  end: number;
  time: number;
}

function parseIndex(text: string): IndexEntry[] {
  const entries: IndexEntry[] = [];
  for (const line of text.split('\n')) {
    const [end, time] = line.split(' ').map(Number);
    if (end !== undefined && time !== undefined && Number.isFinite(end) && Number.isFinite(time)) {
      entries.push({ end, time });
    }
  }
  return entries;
}

function readIndex(path: string): IndexEntry[] {
  try {
    return parseIndex(readFileSync(path, 'utf8'));
  } catch {
    return [];
  }
}

function readRange(path: string, start: number, end: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(Math.max(0, end - start));
    let filled = 0;
    while (filled < buf.length) {
      const n = readSync(fd, buf, filled, buf.length - filled, start + filled);
      if (n === 0) break;
      filled += n;
    }
    return buf.subarray(0, filled);
  } finally {
    closeSync(fd);
  }
}

function fileSize(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch {
    return undefined;
  }
}

interface TimedLine {
  line: string;
  time: number;
}

/** Splits bytes into lines; a line's time is that of the chunk holding its first byte. */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingLength = 0;
  private pendingTime = 0;

  feed(chunk: Buffer, time: number, out: TimedLine[]): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.pendingLength === 0) this.pendingTime = time;
      const newline = chunk.indexOf(10, pos);
      const room = MAX_LINE - this.pendingLength;
      const end = newline === -1 ? chunk.length : newline;
      if (end - pos > room) {
        this.pending.push(chunk.subarray(pos, pos + room));
        this.pendingLength += room;
        pos += room;
        this.flush(out);
        continue;
      }
      this.pending.push(chunk.subarray(pos, end));
      this.pendingLength += end - pos;
      if (newline === -1) return;
      pos = newline + 1;
      this.flush(out, true);
    }
  }

  /** Emits what is pending as a line (the last line of a program that ended without a newline). */
  flush(out: TimedLine[], emptyToo = false): void {
    if (this.pendingLength === 0 && !emptyToo) return;
    out.push({ line: Buffer.concat(this.pending).toString('utf8'), time: this.pendingTime });
    this.pending = [];
    this.pendingLength = 0;
  }
}

interface Subscriber {
  /** The next byte of the live file this subscriber has not seen. */
  offset: number;
  splitter: LineSplitter;
  push(lines: TimedLine[]): void;
}

/** One stream's files and index. All file work is synchronous so a read and a subscription never race. */
class StreamLog {
  readonly stream: Stream;
  private readonly log: string;
  private readonly times: string;
  private readonly maxBytes: number;
  /** How far the live file has been indexed. */
  private indexedTo: number;
  readonly subscribers = new Set<Subscriber>();

  constructor(dir: string, stream: Stream, maxBytes: number) {
    this.stream = stream;
    this.log = join(dir, `${stream}.log`);
    this.times = join(dir, `${stream}.times`);
    this.maxBytes = maxBytes;
    this.indexedTo = readIndex(this.times).at(-1)?.end ?? 0;
  }

  observe(): void {
    let stats: { size: number; mtimeMs: number };
    try {
      stats = statSync(this.log);
    } catch {
      return;
    }
    if (stats.size < this.indexedTo) {
      // Truncated by someone else: start over rather than index past the end.
      writeFileSync(this.times, '');
      this.indexedTo = 0;
      for (const sub of this.subscribers) sub.offset = 0;
    }
    if (stats.size > this.indexedTo) {
      const time = Math.round(stats.mtimeMs);
      appendFileSync(this.times, `${stats.size} ${time}\n`, { mode: 0o640 });
      this.deliver(stats.size, time);
      this.indexedTo = stats.size;
    }
    if (this.indexedTo >= this.maxBytes || (fileSize(this.times) ?? 0) >= this.maxBytes) this.rotate();
  }

  private deliver(end: number, time: number, data?: { buf: Buffer; base: number }): void {
    if (this.subscribers.size === 0) return;
    const base = data?.base ?? Math.min(...[...this.subscribers].map((s) => s.offset));
    const buf = data?.buf ?? readRange(this.log, base, end);
    for (const sub of this.subscribers) {
      const out: TimedLine[] = [];
      if (sub.offset < base + buf.length) sub.splitter.feed(buf.subarray(Math.max(0, sub.offset - base)), time, out);
      sub.offset = base + buf.length;
      if (out.length > 0) sub.push(out);
    }
  }

  private rotate(): void {
    const fd = openSync(this.log, 'r+');
    let kept: Buffer;
    let start: number;
    let end: number;
    try {
      start = Math.max(0, fstatSync(fd).size - this.maxBytes);
      const chunks: Buffer[] = [];
      let pos = start;
      for (;;) {
        const buf = Buffer.alloc(1024 * 1024);
        const n = readSync(fd, buf, 0, buf.length, pos);
        if (n === 0) break;
        chunks.push(buf.subarray(0, n));
        pos += n;
      }
      // Truncate right after reading to the end: anything written in between is lost (copytruncate).
      ftruncateSync(fd, 0);
      kept = Buffer.concat(chunks);
      end = pos;
    } finally {
      closeSync(fd);
    }
    const entries = readIndex(this.times);
    if (end > this.indexedTo) {
      const time = Date.now();
      entries.push({ end, time });
      const base = Math.max(this.indexedTo, start);
      this.deliver(end, time, { buf: kept.subarray(base - start), base });
    }
    // Keep whole lines: drop the head of a line cut by the cap.
    let cut = start;
    if (start > 0) {
      const newline = kept.indexOf(10);
      if (newline !== -1) cut = start + newline + 1;
    }
    writeFileSync(`${this.log}.1.tmp`, kept.subarray(cut - start));
    renameSync(`${this.log}.1.tmp`, `${this.log}.1`);
    const shifted = entries.filter((e) => e.end > cut).map((e) => `${e.end - cut} ${e.time}\n`);
    writeFileSync(`${this.times}.1.tmp`, shifted.join(''));
    renameSync(`${this.times}.1.tmp`, `${this.times}.1`);
    writeFileSync(this.times, '');
    this.indexedTo = 0;
    for (const sub of this.subscribers) sub.offset = 0;
  }

  /** Lines of the rotated and live files up to what has been indexed; the splitter holds a trailing partial. */
  history(splitter: LineSplitter): TimedLine[] {
    const out: TimedLine[] = [];
    const feedFile = (log: string, times: string, limit: number | undefined): void => {
      const size = fileSize(log);
      if (size === undefined) return;
      const end = Math.min(size, limit ?? size);
      const data = readRange(log, 0, end);
      let prev = 0;
      for (const entry of readIndex(times)) {
        if (prev >= end) break;
        const upto = Math.min(entry.end, end);
        if (upto > prev) splitter.feed(data.subarray(prev, upto), entry.time, out);
        prev = Math.max(prev, upto);
      }
      if (prev < end) splitter.feed(data.subarray(prev, end), Date.now(), out);
    };
    feedFile(`${this.log}.1`, `${this.times}.1`, undefined);
    feedFile(this.log, this.times, this.indexedTo);
    return out;
  }

  /** Where a subscriber that has read history() starts in the live file. */
  get position(): number {
    return this.indexedTo;
  }
}

function toLogLine(stream: Stream, line: TimedLine): LogLine {
  return { stream, time: new Date(line.time).toISOString(), line: line.line };
}

/** Merges two time-ordered lists by time, stable (stdout first on a tie). */
function merge(a: LogLine[], b: LogLine[]): LogLine[] {
  const out: LogLine[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const x = a[i];
    const y = b[j];
    if (y === undefined || (x !== undefined && x.time <= y.time)) {
      out.push(x!);
      i++;
    } else {
      out.push(y);
      j++;
    }
  }
  return out;
}

/** A task's two log streams, the watching that timestamps them, and readers. */
export class TaskLogs {
  private readonly streams: StreamLog[];
  private readonly dir: string;
  private watchers: FSWatcher[] = [];
  private pollTimer: NodeJS.Timeout | undefined;
  private observeTimer: NodeJS.Timeout | undefined;
  private readonly finishers = new Set<() => void>();
  private finished = false;

  constructor(dir: string, maxBytes: number) {
    this.dir = dir;
    this.streams = [new StreamLog(dir, 'stdout', maxBytes), new StreamLog(dir, 'stderr', maxBytes)];
  }

  /** Indexes new output now (a log read or a rotation check cannot wait for the next event). */
  observe(): void {
    for (const stream of this.streams) {
      try {
        stream.observe();
      } catch {
        // The task dir is being removed, or the disk is full: the next look will try again.
      }
    }
  }

  /** Watches a running task's files: inotify for promptness, a poll in case events are missed (NFS). */
  watch(pollMs = 1000): void {
    if (this.pollTimer !== undefined || this.finished) return;
    const schedule = (): void => {
      this.observeTimer ??= setTimeout(() => {
        this.observeTimer = undefined;
        this.observe();
      }, 50);
    };
    for (const stream of this.streams) {
      try {
        const watcher = watch(join(this.dir, `${stream.stream}.log`), { persistent: false }, schedule);
        watcher.on('error', () => {});
        this.watchers.push(watcher);
      } catch {
        // Only the poll, then.
      }
    }
    this.pollTimer = setInterval(() => this.observe(), pollMs);
    this.pollTimer.unref();
    this.observe();
  }

  /** Stops watching (swarmd shutting down or the task removed); followers end. */
  close(): void {
    for (const watcher of this.watchers) watcher.close();
    this.watchers = [];
    if (this.pollTimer !== undefined) clearInterval(this.pollTimer);
    if (this.observeTimer !== undefined) clearTimeout(this.observeTimer);
    this.pollTimer = undefined;
    this.observeTimer = undefined;
    for (const finish of this.finishers) finish();
  }

  /** The task has exited: index the last output, end followers (with their partial last lines). */
  finish(): void {
    this.observe();
    this.finished = true;
    this.close();
  }

  async *read(options: { follow: boolean; tail?: number; signal?: AbortSignal }): AsyncGenerator<LogLine> {
    this.observe();
    const follow = options.follow && !this.finished && !options.signal?.aborted;
    const splitters = this.streams.map(() => new LineSplitter());
    const histories = this.streams.map((stream, i) => {
      const splitter = splitters[i]!;
      const lines = stream.history(splitter);
      // Without follow, a last line still being written is shown as it is.
      if (!follow) splitter.flush(lines);
      return lines.map((l) => toLogLine(stream.stream, l));
    });
    let lines = merge(histories[0]!, histories[1]!);
    if (options.tail !== undefined) lines = options.tail <= 0 ? [] : lines.slice(-options.tail);
    if (!follow) {
      yield* lines;
      return;
    }

    // Subscribe in the same tick as the history read, so no output falls between the two.
    const queue: LogLine[] = [];
    let wake: (() => void) | undefined;
    let done = false;
    const end = (): void => {
      done = true;
      wake?.();
    };
    const subs = this.streams.map((stream, i) => {
      const sub: Subscriber = {
        offset: stream.position,
        splitter: splitters[i]!,
        push: (timed) => {
          for (const l of timed) queue.push(toLogLine(stream.stream, l));
          wake?.();
        },
      };
      stream.subscribers.add(sub);
      return sub;
    });
    const finisher = (): void => {
      for (const sub of subs) {
        const out: TimedLine[] = [];
        sub.splitter.flush(out);
        if (out.length > 0) sub.push(out);
      }
      end();
    };
    this.finishers.add(finisher);
    options.signal?.addEventListener('abort', end, { once: true });
    try {
      yield* lines;
      for (;;) {
        // A reader that aborted gets nothing more, even lines that arrived in the same read as the last it took.
        while (queue.length > 0 && !options.signal?.aborted) yield queue.shift()!;
        if (done || options.signal?.aborted) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      this.streams.forEach((stream, i) => {
        stream.subscribers.delete(subs[i]!);
      });
      this.finishers.delete(finisher);
      options.signal?.removeEventListener('abort', end);
    }
  }
}
