// Payload encoding (msgpack, via msgpackr) of every record type storage writes, and strict validation on the
// way back: a payload that passes its checksum but does not have the expected shape means a bug or a
// hand-edited file, and must become a clear error rather than a TypeError deep inside Raft.

import { Packr } from 'msgpackr';
import type { Entry, HardState } from '../types.ts';
import { EntryType } from '../types.ts';

/** The type byte of each record. Values are on disk: never renumber. */
export const RecordType = {
  /** First record of every WAL segment. */
  SegmentHeader: 1,
  /** Contiguous entries; replay truncates the log from the first one, then appends them. */
  Entries: 2,
  HardState: 3,
  /** A snapshot was stored at this point of the log (see SnapshotMark). */
  SnapshotMark: 4,
  /** First record of a snapshot file; the snapshot's data follows it raw. */
  SnapshotMeta: 5,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export const WAL_FORMAT = 'swarmd-raft-wal';
export const SNAPSHOT_FORMAT = 'swarmd-raft-snap';
export const FORMAT_VERSION = 1;

// Plain msgpack maps and arrays (no msgpackr record extension, which would need shared state across records);
// 64-bit integers come back as numbers. Binary values decode as views into the payload (no copy each):
// decodeEntries copies each payload once, so that a record's entries share one small buffer instead of
// pinning the reader's whole chunk, and instead of one ArrayBuffer per entry (which makes loading a long log
// pay for hundreds of thousands of backing stores in GC pauses).
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

/** A payload of the right record type that does not decode to the expected shape. */
export class DecodeError extends Error {
  constructor(what: string) {
    super(what);
    this.name = 'DecodeError';
  }
}

export interface SegmentHeader {
  seq: number;
  /** Index the first entry written to this segment would have (last index + 1 when it was created). */
  firstIndex: number;
  /** Hard state in force when the segment was created, so deleting older segments never loses it. */
  hardState: HardState;
}

/**
 * Written to the WAL once the snapshot file is durable. `keep` records saveSnapshot's decision: false means
 * the log disagreed with the snapshot and replay must drop every entry before this point.
 */
export interface SnapshotMark {
  index: number;
  term: number;
  keep: boolean;
}

export interface SnapshotFileMeta {
  index: number;
  term: number;
  voters: string[];
  learners: string[];
  dataBytes: number;
  dataCrc: number;
}

const pack = (value: unknown): Buffer => packr.pack(value);

function unpack(payload: Uint8Array): unknown {
  try {
    return packr.unpack(payload);
  } catch (err) {
    throw new DecodeError(`undecodable msgpack payload: ${(err as Error).message}`);
  }
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function count(v: unknown, what: string): number {
  if (!isCount(v)) throw new DecodeError(`${what} is not a non-negative integer: ${String(v)}`);
  return v;
}

function array(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new DecodeError(`${what} is not an array`);
  return v;
}

function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new DecodeError(`${what} is not a map`);
  return v as Record<string, unknown>;
}

function strings(v: unknown, what: string): string[] {
  const list = array(v, what);
  for (const s of list) if (typeof s !== 'string') throw new DecodeError(`${what} holds a non-string`);
  return list as string[];
}

const entryTypes = new Set<number>(Object.values(EntryType));

// --- entries: [firstIndex, [[term, type, data], ...]] (indexes are implied: the batch is contiguous)

export function encodeEntries(entries: readonly Entry[]): Buffer {
  return pack([entries[0]!.index, entries.map((e) => [e.term, e.type, e.data])]);
}

export function decodeEntries(payload: Uint8Array): Entry[] {
  const [first, list] = array(unpack(Uint8Array.prototype.slice.call(payload)), 'entries record');
  let index = count(first, 'first index');
  if (index < 1) throw new DecodeError('first index is 0');
  const out: Entry[] = [];
  for (const item of array(list, 'entries')) {
    const [term, type, data] = array(item, `entry ${index}`);
    if (typeof type !== 'number' || !entryTypes.has(type)) {
      throw new DecodeError(`entry ${index} has unknown type ${String(type)}`);
    }
    if (!(data instanceof Uint8Array)) throw new DecodeError(`entry ${index} data is not binary`);
    out.push({ index, term: count(term, `entry ${index} term`), type: type as EntryType, data });
    index++;
  }
  if (out.length === 0) throw new DecodeError('empty entries record');
  return out;
}

// --- hard state: [term, vote, commit]

const hardStateTuple = (hs: HardState): unknown[] => [hs.term, hs.vote, hs.commit];

function hardStateFrom(v: unknown): HardState {
  const [term, vote, commit] = array(v, 'hard state');
  if (vote !== null && typeof vote !== 'string') throw new DecodeError('hard state vote is neither null nor a string');
  return { term: count(term, 'hard state term'), vote, commit: count(commit, 'hard state commit') };
}

export const encodeHardState = (hs: HardState): Buffer => pack(hardStateTuple(hs));
export const decodeHardState = (payload: Uint8Array): HardState => hardStateFrom(unpack(payload));

// --- segment header: a map, so it is self-describing when someone inspects a segment by hand

export function encodeSegmentHeader(h: SegmentHeader): Buffer {
  return pack({
    format: WAL_FORMAT,
    version: FORMAT_VERSION,
    seq: h.seq,
    firstIndex: h.firstIndex,
    hardState: hardStateTuple(h.hardState),
  });
}

export function decodeSegmentHeader(payload: Uint8Array): SegmentHeader {
  const h = object(unpack(payload), 'segment header');
  if (h.format !== WAL_FORMAT) throw new DecodeError(`not a WAL segment (format ${String(h.format)})`);
  if (h.version !== FORMAT_VERSION) throw new DecodeError(`unsupported WAL format version ${String(h.version)}`);
  return {
    seq: count(h.seq, 'segment seq'),
    firstIndex: count(h.firstIndex, 'segment first index'),
    hardState: hardStateFrom(h.hardState),
  };
}

// --- snapshot mark: [index, term, keep]

export const encodeSnapshotMark = (m: SnapshotMark): Buffer => pack([m.index, m.term, m.keep]);

export function decodeSnapshotMark(payload: Uint8Array): SnapshotMark {
  const [index, term, keep] = array(unpack(payload), 'snapshot mark');
  if (typeof keep !== 'boolean') throw new DecodeError('snapshot mark keep flag is not a boolean');
  return { index: count(index, 'snapshot mark index'), term: count(term, 'snapshot mark term'), keep };
}

// --- snapshot file meta

export function encodeSnapshotMeta(m: SnapshotFileMeta): Buffer {
  return pack({ format: SNAPSHOT_FORMAT, version: FORMAT_VERSION, ...m });
}

export function decodeSnapshotMeta(payload: Uint8Array): SnapshotFileMeta {
  const m = object(unpack(payload), 'snapshot meta');
  if (m.format !== SNAPSHOT_FORMAT) throw new DecodeError(`not a snapshot file (format ${String(m.format)})`);
  if (m.version !== FORMAT_VERSION) throw new DecodeError(`unsupported snapshot format version ${String(m.version)}`);
  return {
    index: count(m.index, 'snapshot index'),
    term: count(m.term, 'snapshot term'),
    voters: strings(m.voters, 'snapshot voters'),
    learners: strings(m.learners, 'snapshot learners'),
    dataBytes: count(m.dataBytes, 'snapshot data length'),
    dataCrc: count(m.dataCrc, 'snapshot data checksum'),
  };
}
