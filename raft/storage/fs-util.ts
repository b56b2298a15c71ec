// Small file-system helpers shared by the WAL and the snapshot files: durable directory updates, full
// reads, and cooperative yielding so long CPU loops never hold the event loop for long.

import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { crc32 } from 'node:zlib';

/** fsync counts, for FileStorage.stats() and for tests that check group commit. */
export interface SyncCounters {
  /** fsync/fdatasync of WAL segments and snapshot files. */
  fileSyncs: number;
  /** fsync of a directory after a file in it was created, renamed or removed. */
  dirSyncs: number;
}

/**
 * Makes a directory's entries durable. Creating, renaming or unlinking a file changes the directory, not the
 * file, so fsyncing the file alone does not guarantee the name survives a power cut.
 */
export async function fsyncDir(path: string, counters: SyncCounters): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
    counters.dirSyncs++;
  } finally {
    await handle.close();
  }
}

/**
 * Reads `length` bytes at `position` into `buffer[offset..]`, looping over short reads. Returns how many bytes
 * were read: less than `length` only at end of file.
 */
export async function readFully(
  handle: FileHandle,
  buffer: Uint8Array,
  offset: number,
  length: number,
  position: number,
): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, offset + done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Writes all of `buffer` at `position`, looping over short writes. */
export async function writeFully(handle: FileHandle, buffer: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesWritten } = await handle.write(buffer, done, buffer.length - done, position + done);
    if (bytesWritten === 0) throw new Error(`write made no progress at byte ${position + done}`);
    done += bytesWritten;
  }
}

/**
 * Cooperative scheduling for long loops (replaying a big segment, checksumming a big snapshot): each call to
 * maybeYield() goes back to the event loop once the current slice has run for ~5 ms, so the daemon's timers
 * (Raft heartbeats among them) keep firing while storage loads.
 */
export class Pacer {
  private sliceStart = performance.now();
  private readonly sliceMs: number;

  constructor(sliceMs = 5) {
    this.sliceMs = sliceMs;
  }

  async maybeYield(): Promise<void> {
    if (performance.now() - this.sliceStart < this.sliceMs) return;
    await nextMacrotask();
    this.sliceStart = performance.now();
  }
}

const CRC_CHUNK_BYTES = 1 << 20;

/** CRC-32 of a possibly huge buffer, computed 1 MiB at a time with yields in between. */
export async function crc32Paced(data: Uint8Array, pacer: Pacer): Promise<number> {
  let crc = 0;
  for (let at = 0; at < data.length; at += CRC_CHUNK_BYTES) {
    crc = crc32(data.subarray(at, at + CRC_CHUNK_BYTES), crc);
    await pacer.maybeYield();
  }
  return crc;
}
