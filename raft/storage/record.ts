// Record framing shared by WAL segments and snapshot files:
//
//   [u32 LE payload length][u32 LE crc32 of type+payload][u8 type][payload]
//
// The reader does not decide what a bad record means; it reports *how* it is bad and whether the damage is
// consistent with an interrupted final write (a "torn tail"). Only the WAL knows whether a record is the last
// one of the last segment, where a torn write is expected after a crash and may be cut away.

import type { FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { readFully } from './fs-util.ts';

export const RECORD_HEADER_BYTES = 9;

/**
 * Largest payload a writer may produce. The length field is not covered by the checksum, so the reader uses
 * this bound to tell a garbled length (corruption) from a record that merely runs past the end of the file
 * (a torn write). Writers split entry batches far below it.
 */
export const MAX_PAYLOAD_BYTES = 256 * 1024 * 1024;

/** Frames one payload as a record, ready to be written. */
export function encodeRecord(type: number, payload: Uint8Array): Buffer {
  if (payload.length > MAX_PAYLOAD_BYTES) {
    throw new Error(`record payload of ${payload.length} bytes exceeds the ${MAX_PAYLOAD_BYTES}-byte limit`);
  }
  const record = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length);
  record.writeUInt32LE(payload.length, 0);
  record[8] = type;
  record.set(payload, RECORD_HEADER_BYTES);
  record.writeUInt32LE(crc32(record.subarray(8)), 4);
  return record;
}

export type ReadResult =
  | {
      kind: 'record';
      type: number;
      /** A view into the reader's buffer: valid until the next call to next(); decode or copy it first. */
      payload: Buffer;
      /** Byte offsets of the record (header included) in the file. */
      offset: number;
      end: number;
    }
  | { kind: 'eof' }
  | {
      kind: 'damaged';
      offset: number;
      reason: string;
      /**
       * True when the damage reaches the end of the file and looks like a write a crash interrupted: a short
       * header, a payload cut by EOF, a checksum failure with nothing after it, or nothing but zeros from here
       * on (blocks allocated but never written). Only acceptable for the last record of the last segment.
       */
      tornTail: boolean;
    };

const ZEROS = Buffer.alloc(1 << 20);

/**
 * Sequential record reader over an open file of known size, reading in chunks so that a large segment is never
 * loaded in one go.
 */
export class RecordReader {
  private readonly handle: FileHandle;
  private readonly size: number;
  private readonly chunkBytes: number;
  private buffer: Buffer = Buffer.alloc(0);
  /** File offset of buffer[0]. */
  private bufferStart = 0;
  /** File offset of the next record. */
  private position = 0;

  constructor(handle: FileHandle, size: number, chunkBytes = 1 << 20) {
    this.handle = handle;
    this.size = size;
    this.chunkBytes = chunkBytes;
  }

  /** Offset just past the last good record: where a torn tail gets cut. */
  get offset(): number {
    return this.position;
  }

  async next(): Promise<ReadResult> {
    const offset = this.position;
    const remaining = this.size - offset;
    if (remaining === 0) return { kind: 'eof' };
    if (remaining < RECORD_HEADER_BYTES) {
      return { kind: 'damaged', offset, reason: `record header cut short (${remaining} bytes left)`, tornTail: true };
    }
    const header = await this.bytes(offset, RECORD_HEADER_BYTES);
    const length = header.readUInt32LE(0);
    const storedCrc = header.readUInt32LE(4);
    if (length > MAX_PAYLOAD_BYTES) {
      return {
        kind: 'damaged',
        offset,
        reason: `implausible record length ${length}`,
        tornTail: await this.zerosFrom(offset),
      };
    }
    if (RECORD_HEADER_BYTES + length > remaining) {
      return {
        kind: 'damaged',
        offset,
        reason: `record of ${length} bytes runs past end of file (${remaining - RECORD_HEADER_BYTES} bytes left)`,
        tornTail: true,
      };
    }
    const record = await this.bytes(offset, RECORD_HEADER_BYTES + length);
    const end = offset + RECORD_HEADER_BYTES + length;
    if (crc32(record.subarray(8)) !== storedCrc) {
      return {
        kind: 'damaged',
        offset,
        reason: 'record checksum mismatch',
        tornTail: end === this.size || (await this.zerosFrom(offset)),
      };
    }
    this.position = end;
    return { kind: 'record', type: record[8]!, payload: record.subarray(RECORD_HEADER_BYTES), offset, end };
  }

  /** Returns bytes [offset, offset+length) of the file, refilling the chunk buffer when needed. */
  private async bytes(offset: number, length: number): Promise<Buffer> {
    const bufferEnd = this.bufferStart + this.buffer.length;
    if (offset < this.bufferStart || offset + length > bufferEnd) {
      // Fresh buffer each refill (never reused) so a caller still holding an older view is never clobbered.
      const want = Math.min(Math.max(length, this.chunkBytes), this.size - offset);
      const buffer = Buffer.allocUnsafe(want);
      const got = await readFully(this.handle, buffer, 0, want, offset);
      if (got < length) throw new Error(`file shrank while being read (wanted ${length} bytes at ${offset})`);
      this.buffer = buffer.subarray(0, got);
      this.bufferStart = offset;
    }
    const start = offset - this.bufferStart;
    return this.buffer.subarray(start, start + length);
  }

  /** Whether every byte from offset to the end of the file is zero. */
  private async zerosFrom(offset: number): Promise<boolean> {
    const chunk = Buffer.allocUnsafe(ZEROS.length);
    for (let at = offset; at < this.size; at += chunk.length) {
      const want = Math.min(chunk.length, this.size - at);
      const got = await readFully(this.handle, chunk, 0, want, at);
      if (!chunk.subarray(0, got).equals(ZEROS.subarray(0, got))) return false;
      if (got < want) break;
    }
    return true;
  }
}
