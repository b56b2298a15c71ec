// The segmented write-ahead log in DIR/wal/: files SEQ-FIRSTINDEX.wal (both 16-digit zero-padded decimal, so
// names sort in order), each starting with a segment header record followed by entries, hard state and
// snapshot mark records (see replay.ts for what each means).
//
// Writing only ever appends: a new segment is started once the current one has grown past segmentBytes, and an
// overwrite of the log's suffix is just another entries record. Old segments are only ever deleted whole, once
// a snapshot covers them.
//
// Reading distinguishes two kinds of damage. A torn tail, the last record of the last segment cut short or
// failing its checksum with nothing after it, is what a crash during a write leaves behind; that write was
// never acknowledged (save() resolves only after the fsync) so it is cut away. Anything else is corruption of
// data that may have been acknowledged, and is refused with the file and offset.

import type { FileHandle } from 'node:fs/promises';
import { open, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { HardState } from '../types.ts';
import {
  DecodeError,
  decodeEntries,
  decodeHardState,
  decodeSegmentHeader,
  decodeSnapshotMark,
  encodeSegmentHeader,
  RecordType,
} from './codec.ts';
import type { Pacer, SyncCounters } from './fs-util.ts';
import { fsyncDir, writeFully } from './fs-util.ts';
import type { ReadResult } from './record.ts';
import { encodeRecord, RecordReader } from './record.ts';
import { LogReplay } from './replay.ts';
import { StorageCorruptionError } from './types.ts';

export interface SegmentInfo {
  seq: number;
  firstIndex: number;
  path: string;
  /** Size in bytes as scanned (after any torn-tail repair); only meaningful for the last segment. */
  bytes: number;
}

const pad = (n: number): string => String(n).padStart(16, '0');

export const segmentName = (seq: number, firstIndex: number): string => `${pad(seq)}-${pad(firstIndex)}.wal`;

const SEGMENT_NAME = /^(\d{16})-(\d{16})\.wal$/;

export function parseSegmentName(name: string): { seq: number; firstIndex: number } | null {
  const m = SEGMENT_NAME.exec(name);
  if (!m) return null;
  const seq = Number(m[1]);
  const firstIndex = Number(m[2]);
  if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(firstIndex)) return null;
  return { seq, firstIndex };
}

/** How load() must fix the WAL's torn tail, applied only once the whole load has succeeded. */
export interface WalRepair {
  /** truncate: cut the last segment at `offset`; delete: it holds not even a whole header, remove it. */
  kind: 'truncate' | 'delete';
  path: string;
  /** Size before the repair. */
  size: number;
  offset: number;
  reason: string;
}

export interface WalScan {
  replay: LogReplay;
  /** Segments in order, as they will be once `repair` is applied. */
  segments: SegmentInfo[];
  repair: WalRepair | null;
}

/**
 * Reads and replays every segment, without changing anything on disk: the caller applies `repair` only once
 * the rest of the load (snapshots included) has succeeded, so a failed load leaves the files as they were.
 */
export async function scanWal(walDir: string, pacer: Pacer): Promise<WalScan> {
  const segments: SegmentInfo[] = [];
  for (const dirent of await readdir(walDir, { withFileTypes: true })) {
    const path = join(walDir, dirent.name);
    const parsed = dirent.isFile() ? parseSegmentName(dirent.name) : null;
    if (!parsed) {
      throw new StorageCorruptionError(
        path,
        0,
        'unexpected entry in the WAL directory (only SEQ-FIRSTINDEX.wal files)',
      );
    }
    segments.push({ ...parsed, path, bytes: 0 });
  }
  segments.sort((a, b) => a.seq - b.seq);
  for (let i = 1; i < segments.length; i++) {
    const prev = segments[i - 1]!;
    const seg = segments[i]!;
    if (seg.seq !== prev.seq + 1) {
      throw new StorageCorruptionError(
        seg.path,
        0,
        `segment sequence gap: expected seq ${prev.seq + 1} after ${prev.path}`,
      );
    }
  }

  const replay = new LogReplay();
  let repair: WalRepair | null = null;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const isLast = i === segments.length - 1;
    const handle = await open(seg.path, 'r');
    try {
      const { size } = await handle.stat();
      const reader = new RecordReader(handle, size);
      let records = 0;
      for (;;) {
        const result = await reader.next();
        if (result.kind === 'eof') break;
        if (result.kind === 'damaged') {
          if (result.tornTail && isLast) {
            repair = {
              kind: reader.offset === 0 ? 'delete' : 'truncate',
              path: seg.path,
              size,
              offset: reader.offset,
              reason: `${result.reason} at byte ${result.offset}`,
            };
            break;
          }
          const why = result.tornTail ? ' (only the last segment may end in a torn write)' : '';
          throw new StorageCorruptionError(seg.path, result.offset, result.reason + why);
        }
        applyRecord(replay, seg, result, records === 0);
        records++;
        await pacer.maybeYield();
      }
      if (records === 0 && !repair) {
        // A segment is created and its header written in the same write, so an empty one is a crash during
        // creation: harmless at the end of the WAL, corruption anywhere else.
        if (!isLast) throw new StorageCorruptionError(seg.path, 0, 'empty segment file (no header)');
        repair = { kind: 'delete', path: seg.path, size, offset: 0, reason: 'empty segment file' };
      }
      seg.bytes = repair?.path === seg.path ? repair.offset : size;
    } finally {
      await handle.close();
    }
  }
  if (repair?.kind === 'delete') segments.pop();
  return { replay, segments, repair };
}

function applyRecord(
  replay: LogReplay,
  seg: SegmentInfo,
  record: Extract<ReadResult, { kind: 'record' }>,
  isFirst: boolean,
): void {
  const fail = (what: string): never => {
    throw new StorageCorruptionError(seg.path, record.offset, what);
  };
  let problem: string | null = null;
  try {
    if (isFirst !== (record.type === RecordType.SegmentHeader)) {
      fail(isFirst ? `segment does not start with a header (record type ${record.type})` : 'second segment header');
    }
    switch (record.type) {
      case RecordType.SegmentHeader: {
        const header = decodeSegmentHeader(record.payload);
        if (header.seq !== seg.seq || header.firstIndex !== seg.firstIndex) {
          fail(`header says seq ${header.seq} first index ${header.firstIndex}, which does not match the file name`);
        }
        problem = replay.segmentStart(header);
        break;
      }
      case RecordType.Entries:
        problem = replay.append(decodeEntries(record.payload));
        break;
      case RecordType.HardState:
        replay.setHardState(decodeHardState(record.payload));
        break;
      case RecordType.SnapshotMark:
        problem = replay.mark(decodeSnapshotMark(record.payload));
        break;
      default:
        fail(`unknown record type ${record.type}`);
    }
  } catch (err) {
    if (err instanceof DecodeError) fail(err.message);
    throw err;
  }
  if (problem) fail(problem);
}

/** Carries out a repair planned by scanWal, durably. */
export async function applyWalRepair(repair: WalRepair, walDir: string, counters: SyncCounters): Promise<void> {
  if (repair.kind === 'delete') {
    await unlink(repair.path);
    await fsyncDir(walDir, counters);
    return;
  }
  const handle = await open(repair.path, 'r+');
  try {
    await handle.truncate(repair.offset);
    await handle.sync();
    counters.fileSyncs++;
  } finally {
    await handle.close();
  }
}

/** What a new segment's header must record: the state of the log at the point it starts. */
export interface WalPosition {
  hardState: HardState;
  /** Index of the next entry. */
  next: number;
}

export interface WalWriterOptions {
  walDir: string;
  segmentBytes: number;
  counters: SyncCounters;
  /** Existing segments in order (from scanWal); appends go to the last one. */
  segments: SegmentInfo[];
}

/** Appends records to the WAL. Not reentrant: the caller (FileStorage's queue) runs one call at a time. */
export class WalWriter {
  private readonly walDir: string;
  private readonly segmentBytes: number;
  private readonly counters: SyncCounters;
  private readonly segments: SegmentInfo[];
  private handle: FileHandle | null = null;
  /** Size of the last segment. */
  private size: number;

  constructor(options: WalWriterOptions) {
    this.walDir = options.walDir;
    this.segmentBytes = options.segmentBytes;
    this.counters = options.counters;
    this.segments = [...options.segments];
    this.size = this.segments.at(-1)?.bytes ?? 0;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  /** Segment file paths, oldest first. */
  get segmentPaths(): string[] {
    return this.segments.map((s) => s.path);
  }

  /**
   * Writes the records with one write and one fdatasync; resolves once they are durable. Starts a new
   * segment first when there is none, the current one is full, or `roll` asks for one; `at` is the log's
   * state before these records, recorded in that segment's header.
   */
  async append(records: readonly Buffer[], at: WalPosition, roll = false, sync = true): Promise<void> {
    const parts: Buffer[] = [];
    let created = false;
    if (this.segments.length === 0 || this.size >= this.segmentBytes || roll) {
      parts.push(await this.createSegment(at));
      created = true;
    } else if (!this.handle) {
      this.handle = await open(this.segments.at(-1)!.path, 'r+');
    }
    parts.push(...records);
    if (parts.length === 0) return;
    const buffer = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    await writeFully(this.handle!, buffer, this.size);
    this.size += buffer.length;
    if (!sync && !created) return;
    await this.handle!.datasync();
    this.counters.fileSyncs++;
    // The new file's name must be durable too before anything in it counts as saved.
    if (created) await fsyncDir(this.walDir, this.counters);
  }

  /**
   * Deletes the segments a snapshot at `snapshotIndex` makes useless: every segment before the newest one
   * that starts at or before snapshotIndex + 1. Entries such older segments still contribute to the log all
   * have indexes below that segment's first index, hence are covered by the snapshot; its header carries the
   * hard state forward. Oldest first, with a directory fsync after each, so a crash midway leaves a contiguous
   * run of segments rather than a hole.
   */
  async deleteCoveredBy(snapshotIndex: number): Promise<string[]> {
    let keepFrom = -1;
    for (let k = this.segments.length - 1; k >= 0; k--) {
      if (this.segments[k]!.firstIndex <= snapshotIndex + 1) {
        keepFrom = k;
        break;
      }
    }
    const deleted: string[] = [];
    while (keepFrom > 0) {
      const doomed = this.segments[0]!;
      await unlink(doomed.path);
      await fsyncDir(this.walDir, this.counters);
      this.segments.shift();
      deleted.push(doomed.path);
      keepFrom--;
    }
    return deleted;
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = null;
    await handle?.close();
  }

  /** Opens a fresh segment after the current one; returns its header record, to be written first. */
  private async createSegment(at: WalPosition): Promise<Buffer> {
    // The current segment's data is already synced (each append ends with an fdatasync): just close it.
    await this.close();
    const seq = (this.segments.at(-1)?.seq ?? -1) + 1;
    const path = join(this.walDir, segmentName(seq, at.next));
    this.handle = await open(path, 'wx');
    this.segments.push({ seq, firstIndex: at.next, path, bytes: 0 });
    this.size = 0;
    return encodeRecord(
      RecordType.SegmentHeader,
      encodeSegmentHeader({ seq, firstIndex: at.next, hardState: at.hardState }),
    );
  }
}
