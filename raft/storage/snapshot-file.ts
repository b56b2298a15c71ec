// Snapshot files in DIR/snap/: TERM-INDEX.snap (16-digit zero-padded decimal each). Layout: one SnapshotMeta
// record (index, term, membership, data length and data CRC-32), then the data, raw, so a large snapshot is
// neither copied into a msgpack buffer nor checksummed in one blocking call.
//
// Written atomically: TERM-INDEX.snap.tmp is written and fsynced, renamed into place, and the directory
// fsynced. A crash leaves either no snapshot or a complete one, plus at worst a .tmp file load() deletes.
// A snapshot found corrupt by a load that could fall back to an older one is renamed to .snap.broken and
// kept for inspection.

import { open, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Snapshot } from '../types.ts';
import { DecodeError, decodeSnapshotMeta, encodeSnapshotMeta, RecordType } from './codec.ts';
import type { SyncCounters } from './fs-util.ts';
import { crc32Paced, fsyncDir, Pacer, readFully, writeFully } from './fs-util.ts';
import { encodeRecord, RecordReader } from './record.ts';
import { StorageCorruptionError } from './types.ts';

export interface SnapshotFile {
  term: number;
  index: number;
  path: string;
}

export interface SnapshotListing {
  /** Newest (highest index) first. */
  snapshots: SnapshotFile[];
  /** Leftovers of interrupted writes. */
  temps: string[];
  /** Files an earlier load found corrupt. */
  broken: string[];
}

const pad = (n: number): string => String(n).padStart(16, '0');

export const snapshotName = (term: number, index: number): string => `${pad(term)}-${pad(index)}.snap`;

const SNAPSHOT_NAME = /^(\d{16})-(\d{16})\.snap(\.tmp|\.broken)?$/;

export async function listSnapshots(snapDir: string): Promise<SnapshotListing> {
  const listing: SnapshotListing = { snapshots: [], temps: [], broken: [] };
  for (const dirent of await readdir(snapDir, { withFileTypes: true })) {
    const path = join(snapDir, dirent.name);
    const m = dirent.isFile() ? SNAPSHOT_NAME.exec(dirent.name) : null;
    const term = Number(m?.[1]);
    const index = Number(m?.[2]);
    if (!m || !Number.isSafeInteger(term) || !Number.isSafeInteger(index)) {
      throw new StorageCorruptionError(
        path,
        0,
        'unexpected entry in the snapshot directory (only TERM-INDEX.snap files)',
      );
    }
    if (m[3] === '.tmp') listing.temps.push(path);
    else if (m[3] === '.broken') listing.broken.push(path);
    else listing.snapshots.push({ term, index, path });
  }
  listing.snapshots.sort((a, b) => b.index - a.index || b.term - a.term);
  return listing;
}

/** Atomically writes the snapshot into snapDir; resolves once file and name are durable. */
export async function writeSnapshotFile(snapDir: string, snapshot: Snapshot, counters: SyncCounters): Promise<string> {
  const { meta, data } = snapshot;
  const path = join(snapDir, snapshotName(meta.term, meta.index));
  const temp = `${path}.tmp`;
  const header = encodeRecord(
    RecordType.SnapshotMeta,
    encodeSnapshotMeta({
      index: meta.index,
      term: meta.term,
      voters: meta.conf.voters,
      learners: meta.conf.learners,
      dataBytes: data.length,
      dataCrc: await crc32Paced(data, new Pacer()),
    }),
  );
  const handle = await open(temp, 'w');
  try {
    await writeFully(handle, header, 0);
    await writeFully(handle, data, header.length);
    await handle.sync();
    counters.fileSyncs++;
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  await rename(temp, path);
  await fsyncDir(snapDir, counters);
  return path;
}

export type SnapshotRead = { ok: true; snapshot: Snapshot } | { ok: false; offset: number; reason: string };

/** Reads and fully verifies one snapshot file. Damage is reported, not thrown: load() decides what it means. */
export async function readSnapshotFile(file: SnapshotFile): Promise<SnapshotRead> {
  const handle = await open(file.path, 'r');
  try {
    const { size } = await handle.stat();
    const reader = new RecordReader(handle, size, 64 * 1024);
    const first = await reader.next();
    if (first.kind === 'eof') return { ok: false, offset: 0, reason: 'empty file' };
    if (first.kind === 'damaged') return { ok: false, offset: first.offset, reason: first.reason };
    if (first.type !== RecordType.SnapshotMeta) {
      return { ok: false, offset: 0, reason: `not a snapshot file (record type ${first.type})` };
    }
    let meta: ReturnType<typeof decodeSnapshotMeta>;
    try {
      meta = decodeSnapshotMeta(first.payload);
    } catch (err) {
      if (err instanceof DecodeError) return { ok: false, offset: 0, reason: err.message };
      throw err;
    }
    if (meta.index !== file.index || meta.term !== file.term) {
      return { ok: false, offset: 0, reason: `holds term ${meta.term} index ${meta.index}, not what its name says` };
    }
    if (size !== first.end + meta.dataBytes) {
      return { ok: false, offset: first.end, reason: `${size - first.end} data bytes, expected ${meta.dataBytes}` };
    }
    const data = new Uint8Array(meta.dataBytes);
    await readFully(handle, data, 0, data.length, first.end);
    if ((await crc32Paced(data, new Pacer())) !== meta.dataCrc) {
      return { ok: false, offset: first.end, reason: 'snapshot data checksum mismatch' };
    }
    const conf = { voters: meta.voters, learners: meta.learners };
    return { ok: true, snapshot: { meta: { index: meta.index, term: meta.term, conf }, data } };
  } finally {
    await handle.close();
  }
}

/** Renames a corrupt snapshot out of the way (kept for inspection), durably. */
export async function markBroken(path: string, snapDir: string, counters: SyncCounters): Promise<string> {
  const target = `${path}.broken`;
  await rename(path, target);
  await fsyncDir(snapDir, counters);
  return target;
}

/** Deletes files of snapDir, then makes the deletions durable with one directory fsync. */
export async function removeSnapshotFiles(paths: string[], snapDir: string, counters: SyncCounters): Promise<void> {
  if (paths.length === 0) return;
  for (const path of paths) await unlink(path);
  await fsyncDir(snapDir, counters);
}
