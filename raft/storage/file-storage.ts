// FileStorage: RaftStorage on local files.
//
//   DIR/wal/SEQ-FIRSTINDEX.wal   write-ahead log segments (wal.ts)
//   DIR/snap/TERM-INDEX.snap     the newest two snapshots (snapshot-file.ts)
//
// Every write goes through one queue, run one step at a time, which keeps the on-disk order equal to the call
// order. Consecutive save() calls that pile up while the previous step is in flight (its fsync, mostly) are
// written with one write and one fdatasync (group commit) and then resolved together, in call order.
//
// After any I/O failure the storage refuses further writes: once an fsync has failed, what reached the disk is
// unknown, so the only safe continuation is to restart and load() again.

import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Entry, HardState, Snapshot } from '../types.ts';
import { EntryType } from '../types.ts';
import { encodeEntries, encodeHardState, encodeSnapshotMark, RecordType } from './codec.ts';
import type { SyncCounters } from './fs-util.ts';
import { fsyncDir, Pacer } from './fs-util.ts';
import { encodeRecord } from './record.ts';
import type { Fit } from './recovery.ts';
import { fitLogToSnapshot } from './recovery.ts';
import type { SnapshotFile, SnapshotListing } from './snapshot-file.ts';
import {
  listSnapshots,
  markBroken,
  readSnapshotFile,
  removeSnapshotFiles,
  writeSnapshotFile,
} from './snapshot-file.ts';
import { TermRuns } from './term-runs.ts';
import type { PersistedState, PersistUpdate, RaftStorage } from './types.ts';
import { StorageCorruptionError } from './types.ts';
import { applyWalRepair, scanWal, WalWriter } from './wal.ts';

export interface StorageLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export interface FileStorageOptions {
  dir: string;
  /** A new WAL segment is started once the current one has grown past this. Default 64 MiB. */
  segmentBytes?: number;
  /** Repairs (torn tails cut, leftovers removed) are logged here. Default: warnings to the console. */
  logger?: StorageLogger;
}

export interface StorageStats {
  /** save() calls resolved. */
  saves: number;
  /** WAL writes that carried them: one per group commit. */
  groupCommits: number;
  /** fsync/fdatasync calls on WAL segments and snapshot files. */
  fileSyncs: number;
  /** fsync calls on directories (file created, renamed or removed). */
  dirSyncs: number;
  /** WAL segment files on disk. */
  segments: number;
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
/** A group commit stops taking more save() calls past this many bytes, bounding the write and its encoding. */
const GROUP_BYTES = 4 * 1024 * 1024;
/** Entry batches are split into records of about this much data, far below the record size limit. */
const RECORD_DATA_BYTES = 1024 * 1024;
/** Snapshots kept on disk: the newest, and one to fall back to should it be damaged. */
const SNAPSHOTS_KEPT = 2;

const consoleLogger: StorageLogger = {
  info: () => {},
  warn: (message, fields) => console.warn(`raft storage: ${message}`, fields ?? ''),
};

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}
type Op = ({ kind: 'save'; update: PersistUpdate } & Waiter) | ({ kind: 'snapshot'; snapshot: Snapshot } & Waiter);

/** What the writer knows once load() has succeeded. */
interface Live {
  wal: WalWriter;
  hardState: HardState;
  /** Terms of stored entries, and where the log ends. */
  terms: TermRuns;
  /** Index of the stored snapshot, 0 for none. */
  snapshotIndex: number;
}

export class FileStorage implements RaftStorage {
  private readonly dir: string;
  private readonly walDir: string;
  private readonly snapDir: string;
  private readonly segmentBytes: number;
  private readonly logger: StorageLogger;
  private readonly counters: SyncCounters = { fileSyncs: 0, dirSyncs: 0 };
  private saves = 0;
  private groupCommits = 0;

  private phase: 'new' | 'loading' | 'open' | 'closed' = 'new';
  private live: Live | null = null;
  private readonly queue: Op[] = [];
  private draining: Promise<void> | null = null;
  /** Set by the first I/O failure of a write; every later write is refused with it. */
  private failure: Error | null = null;

  constructor(options: FileStorageOptions) {
    if (!options.dir) throw new Error('FileStorage needs a dir');
    const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 1) {
      throw new Error(`segmentBytes must be a positive integer, not ${segmentBytes}`);
    }
    this.dir = options.dir;
    this.walDir = join(options.dir, 'wal');
    this.snapDir = join(options.dir, 'snap');
    this.segmentBytes = segmentBytes;
    this.logger = options.logger ?? consoleLogger;
  }

  stats(): StorageStats {
    return {
      saves: this.saves,
      groupCommits: this.groupCommits,
      fileSyncs: this.counters.fileSyncs,
      dirSyncs: this.counters.dirSyncs,
      segments: this.live?.wal.segmentCount ?? 0,
    };
  }

  // ---------------------------------------------------------------------------------------------- load

  async load(): Promise<PersistedState> {
    if (this.phase !== 'new') throw new Error(`load() called on a storage that is ${this.phase}`);
    this.phase = 'loading';
    try {
      const state = await this.recover();
      if ((this.phase as string) === 'closed') {
        await this.live?.wal.close();
        throw new Error('storage was closed during load()');
      }
      this.phase = 'open';
      return state;
    } catch (err) {
      // Nothing was changed on disk (repairs come last); let the caller retry after fixing the files.
      this.phase = 'new';
      throw err;
    }
  }

  private async recover(): Promise<PersistedState> {
    await this.ensureDir(this.walDir);
    await this.ensureDir(this.snapDir);
    const pacer = new Pacer();

    // 1. Read everything, changing nothing: a load that fails must leave the files as they were.
    const listing = await listSnapshots(this.snapDir);
    const scan = await scanWal(this.walDir, pacer);
    const { replay } = scan;
    const firstSegment = scan.segments[0]?.path ?? this.walDir;
    const { snapshot, fit, broken } = await this.pickSnapshot(listing, replay.entries, replay.next, firstSegment);

    // 2. Repairs, each logged.
    if (scan.repair) {
      await applyWalRepair(scan.repair, this.walDir, this.counters);
      const r = scan.repair;
      this.logger.warn(r.kind === 'delete' ? 'removed a torn WAL segment' : 'truncated a torn WAL tail', {
        file: r.path,
        reason: r.reason,
        bytesBefore: r.size,
        bytesAfter: r.kind === 'delete' ? 0 : r.offset,
      });
    }
    if (listing.temps.length > 0) {
      await removeSnapshotFiles(listing.temps, this.snapDir, this.counters);
      this.logger.warn('removed leftovers of an interrupted snapshot write', { files: listing.temps });
    }
    for (const b of broken) {
      const moved = await markBroken(b.path, this.snapDir, this.counters);
      this.logger.warn('snapshot is corrupt; fell back to an older one', {
        file: moved,
        offset: b.offset,
        reason: b.reason,
      });
    }

    const snapIndex = snapshot?.meta.index ?? 0;
    const terms = new TermRuns(snapIndex + 1);
    terms.append(fit.entries);
    const wal = new WalWriter({
      walDir: this.walDir,
      segmentBytes: this.segmentBytes,
      counters: this.counters,
      segments: scan.segments,
    });
    this.live = { wal, hardState: replay.hardState, terms, snapshotIndex: snapIndex };

    if (fit.needsResetMark && snapshot) {
      // The snapshot file made it to disk but its mark did not (crash in between), and the log disagrees with
      // it: record the drop now, exactly as saveSnapshot would have.
      // The WAL itself still ends where replay left it (not where the fitted log does): a segment started
      // for the mark must say so in its header.
      await this.writeMark(snapshot, false, replay.next!);
      this.logger.warn('log conflicted with the newest snapshot; dropped it', { snapshotIndex: snapIndex });
    }
    return { hardState: { ...replay.hardState }, snapshot, entries: fit.entries };
  }

  /**
   * The newest valid snapshot, fitted to the log. A damaged newest snapshot may be replaced by an older one
   * (or by none) only if the WAL still holds every entry from there up to the damaged one's index: otherwise
   * state the damaged snapshot recorded would be lost, and load refuses.
   */
  private async pickSnapshot(
    listing: SnapshotListing,
    entries: Entry[],
    next: number | null,
    firstSegment: string,
  ): Promise<{ snapshot: Snapshot | null; fit: Extract<Fit, { ok: true }>; broken: BrokenSnapshot[] }> {
    const broken: BrokenSnapshot[] = [];
    for (const candidate of [...listing.snapshots, null]) {
      let snapshot: Snapshot | null = null;
      if (candidate) {
        const read = await readSnapshotFile(candidate);
        if (!read.ok) {
          broken.push({ ...candidate, offset: read.offset, reason: read.reason });
          continue;
        }
        snapshot = read.snapshot;
      }
      const point = snapshot ? snapshot.meta : { index: 0, term: 0 };
      const fit = fitLogToSnapshot(entries, next, point);
      const damaged = broken[0];
      if (!damaged) {
        if (!fit.ok) throw new StorageCorruptionError(firstSegment, 0, fit.reason);
        return { snapshot, fit, broken };
      }
      // Falling back: the log must continue this snapshot and reach every damaged snapshot's index.
      const needed = Math.max(...broken.map((b) => b.index));
      const reaches = fit.ok ? (fit.entries.at(-1)?.index ?? point.index) : 0;
      if (fit.ok && !fit.droppedAll && reaches >= needed) return { snapshot, fit, broken };
      const why = fit.ok ? `the log reaches only index ${reaches}` : fit.reason;
      throw new StorageCorruptionError(
        damaged.path,
        damaged.offset,
        `${damaged.reason}; cannot fall back to ${candidate ? `the snapshot at index ${point.index}` : 'no snapshot'}, ` +
          `since the WAL does not hold every entry up to index ${needed} after it (${why})`,
      );
    }
    throw new Error('unreachable');
  }

  private async ensureDir(path: string): Promise<void> {
    const created = await mkdir(path, { recursive: true });
    // mkdir -p returns the first directory it created: fsync the parent of each new one.
    if (created !== undefined) {
      for (let d = path; ; d = dirname(d)) {
        await fsyncDir(dirname(d), this.counters);
        if (d === created || dirname(d) === d) break;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------- writes

  save(update: PersistUpdate): Promise<void> {
    const problem = checkUpdate(update);
    if (problem) return Promise.reject(new Error(`save(): ${problem}`));
    return this.enqueue((w) => ({ kind: 'save', update, ...w }));
  }

  saveSnapshot(snapshot: Snapshot): Promise<void> {
    const problem = checkSnapshot(snapshot);
    if (problem) return Promise.reject(new Error(`saveSnapshot(): ${problem}`));
    return this.enqueue((w) => ({ kind: 'snapshot', snapshot, ...w }));
  }

  async close(): Promise<void> {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    await this.draining;
    await this.live?.wal.close();
  }

  private enqueue(make: (w: Waiter) => Op): Promise<void> {
    if (this.phase !== 'open') {
      const why = this.phase === 'closed' ? 'storage is closed' : 'load() must complete first';
      return Promise.reject(new Error(why));
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push(make({ resolve, reject }));
      // Start on a microtask, so that a burst of calls made in one go lands in one group commit.
      this.draining ??= Promise.resolve().then(() => this.drain());
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (this.failure) {
        this.queue.shift();
        head.reject(new Error(`raft storage refuses writes after an I/O failure: ${this.failure.message}`));
      } else if (head.kind === 'snapshot') {
        this.queue.shift();
        await this.runSnapshot(head);
      } else {
        await this.runGroup();
      }
    }
    this.draining = null;
  }

  /** Takes the consecutive save() calls at the head of the queue and commits them with one write and sync. */
  private async runGroup(): Promise<void> {
    const live = this.live!;
    const before = { hardState: live.hardState, next: live.terms.next };
    const group: { op: Waiter; error: Error | null }[] = [];
    const records: Buffer[] = [];
    let bytes = 0;
    // One call that must be synced makes the whole group synced.
    let sync = false;
    const pacer = new Pacer();
    while (bytes < GROUP_BYTES && this.queue[0]?.kind === 'save') {
      const op = this.queue.shift() as Extract<Op, { kind: 'save' }>;
      if (op.update.sync !== false) sync = true;
      let error: Error | null = null;
      try {
        // Checked against the log as it will be once the earlier calls of this group are written.
        for (const record of this.recordsFor(op.update)) {
          records.push(record);
          bytes += record.length;
        }
      } catch (err) {
        error = err as Error;
      }
      group.push({ op, error });
      await pacer.maybeYield();
    }
    try {
      if (records.length > 0) {
        await live.wal.append(records, before, false, sync);
        this.groupCommits++;
      }
    } catch (err) {
      this.fail(err as Error);
      for (const { op } of group) op.reject(err as Error);
      return;
    }
    for (const { op, error } of group) {
      if (error) op.reject(error);
      else {
        this.saves++;
        op.resolve();
      }
    }
  }

  /**
   * Encodes one update, then applies it to the in-memory view of the log (which a failed write leaves ahead of
   * the disk: see fail()). Throws, changing nothing, when the update does not fit the log.
   */
  private recordsFor(update: PersistUpdate): Buffer[] {
    const live = this.live!;
    const { entries } = update;
    const first = entries[0]?.index;
    if (first !== undefined && first <= live.snapshotIndex) {
      throw new Error(`save(): entry ${first} is already covered by the snapshot at index ${live.snapshotIndex}`);
    }
    if (first !== undefined && first > live.terms.next) {
      throw new Error(`save(): entry ${first} would leave a gap after index ${live.terms.next - 1}`);
    }
    const records: Buffer[] = [];
    for (let start = 0; start < entries.length; ) {
      let end = start;
      let dataBytes = 0;
      while (end < entries.length && (end === start || dataBytes < RECORD_DATA_BYTES)) {
        dataBytes += entries[end]!.data.length;
        end++;
      }
      records.push(encodeRecord(RecordType.Entries, encodeEntries(entries.slice(start, end))));
      start = end;
    }
    let hardState: HardState | null = null;
    if (update.hardState) {
      // Written after the entries, since its commit index may refer to them.
      hardState = { term: update.hardState.term, vote: update.hardState.vote, commit: update.hardState.commit };
      records.push(encodeRecord(RecordType.HardState, encodeHardState(hardState)));
    }
    live.terms.append(entries);
    if (hardState) live.hardState = hardState;
    return records;
  }

  private async runSnapshot(op: Extract<Op, { kind: 'snapshot' }>): Promise<void> {
    const live = this.live!;
    const { meta } = op.snapshot;
    if (meta.index <= live.snapshotIndex) {
      op.reject(
        new Error(`saveSnapshot(): index ${meta.index} is not past the stored snapshot's ${live.snapshotIndex}`),
      );
      return;
    }
    try {
      // saveSnapshot's rule, decided on the log as it is now, before anything changes.
      const keep = live.terms.termAt(meta.index) === meta.term;
      await writeSnapshotFile(this.snapDir, op.snapshot, this.counters);
      await this.writeMark(op.snapshot, keep);
      const deleted = await live.wal.deleteCoveredBy(meta.index);
      if (deleted.length > 0) this.logger.info('deleted WAL segments covered by a snapshot', { files: deleted });
      const listing = await listSnapshots(this.snapDir);
      await removeSnapshotFiles(
        listing.snapshots.slice(SNAPSHOTS_KEPT).map((s: SnapshotFile) => s.path),
        this.snapDir,
        this.counters,
      );
    } catch (err) {
      this.fail(err as Error);
      op.reject(err as Error);
      return;
    }
    op.resolve();
  }

  /**
   * Records in the WAL that the snapshot is stored, and updates the in-memory log to match. When the log is
   * dropped, a new segment is started right after the mark: it begins at the snapshot, so every older segment
   * becomes deletable at once. `walNext` is where the WAL's log ends before the mark (what replay will see).
   */
  private async writeMark(snapshot: Snapshot, keep: boolean, walNext = this.live!.terms.next): Promise<void> {
    const live = this.live!;
    const { index, term } = snapshot.meta;
    const mark = encodeRecord(RecordType.SnapshotMark, encodeSnapshotMark({ index, term, keep }));
    await live.wal.append([mark], { hardState: live.hardState, next: walNext });
    live.snapshotIndex = index;
    if (keep) live.terms.dropThrough(index);
    else {
      live.terms.reset(index + 1);
      await live.wal.append([], { hardState: live.hardState, next: index + 1 }, true);
    }
  }

  private fail(err: Error): void {
    // The in-memory log may now be ahead of the disk; nothing more may be written until a fresh load().
    this.failure ??= err;
    this.logger.warn('write failed; storage refuses further writes until restarted', { error: err.message });
  }
}

interface BrokenSnapshot extends SnapshotFile {
  offset: number;
  reason: string;
}

// ---------------------------------------------------------------------------------------------- argument checks

const isIndex = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const entryTypes = new Set<unknown>(Object.values(EntryType));

function checkHardState(hs: HardState): string | null {
  if (!isIndex(hs.term) || !isIndex(hs.commit)) return 'hardState term and commit must be non-negative integers';
  if (hs.vote !== null && typeof hs.vote !== 'string') return 'hardState vote must be a string or null';
  return null;
}

function checkUpdate(update: PersistUpdate): string | null {
  if (update.hardState) {
    const problem = checkHardState(update.hardState);
    if (problem) return problem;
  }
  if (!Array.isArray(update.entries)) return 'entries must be an array';
  let expected = update.entries[0]?.index;
  for (const e of update.entries) {
    if (!isIndex(e.index) || e.index < 1) return `bad entry index ${String(e.index)}`;
    if (e.index !== expected) return `entries are not contiguous (${e.index} where ${expected} was expected)`;
    if (!isIndex(e.term)) return `entry ${e.index} has a bad term`;
    if (!entryTypes.has(e.type)) return `entry ${e.index} has unknown type ${String(e.type)}`;
    if (!(e.data instanceof Uint8Array)) return `entry ${e.index} data is not a Uint8Array`;
    expected = e.index + 1;
  }
  return null;
}

function checkSnapshot(snapshot: Snapshot): string | null {
  const { meta, data } = snapshot;
  if (!isIndex(meta.index) || meta.index < 1 || !isIndex(meta.term)) return 'bad snapshot index or term';
  const names = [...meta.conf.voters, ...meta.conf.learners];
  if (names.some((n) => typeof n !== 'string')) return 'membership must list node IDs';
  if (!(data instanceof Uint8Array)) return 'snapshot data is not a Uint8Array';
  return null;
}
