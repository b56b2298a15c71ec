import { spawn } from 'node:child_process';
import {
  appendFileSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { encodeEntries, encodeSegmentHeader, RecordType } from '../../raft/storage/codec.ts';
import type { StorageLogger } from '../../raft/storage/file-storage.ts';
import { FileStorage } from '../../raft/storage/file-storage.ts';
import { encodeRecord } from '../../raft/storage/record.ts';
import { snapshotName, writeSnapshotFile } from '../../raft/storage/snapshot-file.ts';
import { TermRuns } from '../../raft/storage/term-runs.ts';
import type { PersistedState } from '../../raft/storage/types.ts';
import { StorageCorruptionError } from '../../raft/storage/types.ts';
import { parseSegmentName, segmentName } from '../../raft/storage/wal.ts';
import type { Entry, HardState, Snapshot } from '../../raft/types.ts';
import { EntryType } from '../../raft/types.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const entry = (index: number, term = 1, text = `entry ${index}`): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: encoder.encode(text),
});
const range = (from: number, to: number, term = 1): Entry[] =>
  Array.from({ length: to - from + 1 }, (_, i) => entry(from + i, term));
/** Entries in a form whose diffs read well. */
const view = (entries: Entry[]) => entries.map((e) => ({ index: e.index, term: e.term, text: decoder.decode(e.data) }));

const snapshot = (index: number, term: number, text = `state at ${index}`): Snapshot => ({
  meta: { index, term, conf: { voters: ['n1', 'n2', 'n3'], learners: ['n4'] } },
  data: encoder.encode(text),
});

interface CapturingLogger extends StorageLogger {
  warnings: string[];
}
const capturingLogger = (): CapturingLogger => {
  const warnings: string[] = [];
  return { warnings, info: () => {}, warn: (message, fields) => warnings.push(`${message} ${JSON.stringify(fields)}`) };
};

const opened: FileStorage[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

const dirs: string[] = [];
const tempDir = (): string => {
  const dir = mkdtempSync(join(tmpdir(), `raft-storage-${dirs.length}-`));
  dirs.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

async function openStorage(
  dir: string,
  options: { segmentBytes?: number; logger?: StorageLogger } = {},
): Promise<{ storage: FileStorage; state: PersistedState; logger: CapturingLogger }> {
  const logger = capturingLogger();
  const storage = new FileStorage({ dir, logger: options.logger ?? logger, segmentBytes: options.segmentBytes });
  opened.push(storage);
  const state = await storage.load();
  return { storage, state, logger };
}

async function reopen(dir: string, options: { segmentBytes?: number } = {}) {
  return openStorage(dir, options);
}

const walDir = (dir: string) => join(dir, 'wal');
const walFiles = (dir: string): string[] => readdirSync(walDir(dir)).sort();
const onlySegment = (dir: string): string => {
  const files = walFiles(dir);
  expect(files).toHaveLength(1);
  return join(walDir(dir), files[0]!);
};

/** Every file under dir with its bytes, to show that a failed load changed nothing. */
function fingerprint(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const sub of ['wal', 'snap']) {
    for (const name of readdirSync(join(dir, sub))) {
      out[`${sub}/${name}`] = readFileSync(join(dir, sub, name)).toString('base64');
    }
  }
  return out;
}

function flipByte(path: string, offset: number): void {
  const bytes = readFileSync(path);
  bytes[offset] = bytes[offset]! ^ 0x5a;
  writeFileSync(path, bytes);
}

describe('FileStorage', () => {
  it('starts empty in a fresh directory', async () => {
    const { state } = await openStorage(join(tempDir(), 'nested', 'member'));
    expect(state).toEqual({ hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, entries: [] });
  });

  it('round-trips hard state, entries and a snapshot across close and reopen', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    const hs: HardState = { term: 3, vote: 'n2', commit: 4 };
    await storage.save({ hardState: hs, entries: range(1, 6, 3) });
    await storage.saveSnapshot(snapshot(4, 3));
    await storage.save({ hardState: { term: 3, vote: 'n2', commit: 7 }, entries: range(7, 8, 3) });
    await storage.close();

    const { state } = await reopen(dir);
    expect(state.hardState).toEqual({ term: 3, vote: 'n2', commit: 7 });
    expect(state.snapshot?.meta).toEqual(snapshot(4, 3).meta);
    expect(decoder.decode(state.snapshot!.data)).toBe('state at 4');
    expect(view(state.entries)).toEqual(view(range(5, 8, 3)));
    expect(state.entries.every((e) => e.data instanceof Uint8Array)).toBe(true);
  });

  it('replaces an overwritten uncommitted suffix, without rewriting old data', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: range(1, 10, 1) });
    const path = onlySegment(dir);
    const before = readFileSync(path);
    await storage.save({ entries: range(8, 9, 2) });
    // Append-only: the old bytes are still there, the overwrite is a new record after them.
    expect(readFileSync(path).subarray(0, before.length).equals(before)).toBe(true);
    await storage.close();

    const first = await reopen(dir);
    expect(view(first.state.entries)).toEqual(view([...range(1, 7, 1), ...range(8, 9, 2)]));
    await first.storage.save({ entries: [entry(5, 3)] });
    await first.storage.close();

    const second = await reopen(dir);
    expect(view(second.state.entries)).toEqual(view([...range(1, 4, 1), entry(5, 3)]));
  });

  it('rejects saves that would leave a gap or rewrite what a snapshot covers', async () => {
    const { storage } = await openStorage(tempDir());
    await storage.save({ entries: range(1, 3) });
    await expect(storage.save({ entries: [entry(5)] })).rejects.toThrow(/gap after index 3/);
    await expect(storage.save({ entries: [entry(4), entry(6)] })).rejects.toThrow(/not contiguous/);
    await storage.saveSnapshot(snapshot(2, 1));
    await expect(storage.save({ entries: [entry(2)] })).rejects.toThrow(/covered by the snapshot/);
    await expect(storage.saveSnapshot(snapshot(2, 1))).rejects.toThrow(/not past/);
    // Bad arguments do not poison the storage.
    await storage.save({ entries: [entry(4)] });
  });

  it('rolls over to new segments and deletes the segments a snapshot covers', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 300 });
    for (let i = 1; i <= 100; i++)
      await storage.save({ hardState: { term: 1, vote: null, commit: i }, entries: [entry(i)] });
    const segments = walFiles(dir);
    expect(segments.length).toBeGreaterThan(10);
    expect(storage.stats().segments).toBe(segments.length);
    await storage.close();

    const reopened = await reopen(dir, { segmentBytes: 300 });
    expect(view(reopened.state.entries)).toEqual(view(range(1, 100)));
    await reopened.storage.saveSnapshot(snapshot(60, 1));

    const left = walFiles(dir).map((name) => parseSegmentName(name)!);
    expect(left.length).toBeLessThan(segments.length);
    // The oldest segment left holds index 61 (it starts at or before it); the one after it starts past it.
    expect(left[0]!.firstIndex).toBeLessThanOrEqual(61);
    expect(left[1]!.firstIndex).toBeGreaterThan(61);
    await reopened.storage.close();

    const { state } = await reopen(dir, { segmentBytes: 300 });
    expect(state.snapshot?.meta.index).toBe(60);
    expect(state.hardState.commit).toBe(100);
    expect(view(state.entries)).toEqual(view(range(61, 100)));
  });

  it('keeps the entries after a snapshot that agrees with the log', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: [...range(1, 5, 1), ...range(6, 10, 2)] });
    await storage.saveSnapshot(snapshot(8, 2));
    await storage.save({ entries: [entry(11, 2)] });
    await storage.close();
    const { state } = await reopen(dir);
    expect(state.snapshot?.meta.index).toBe(8);
    expect(view(state.entries)).toEqual(view(range(9, 11, 2)));
  });

  it('drops the whole log for a snapshot that conflicts with it, and keeps what comes after', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: range(1, 10, 1) });
    await storage.saveSnapshot(snapshot(8, 3)); // the stored entry 8 has term 1
    await storage.save({ entries: range(9, 12, 3) });
    await storage.close();

    const first = await reopen(dir);
    expect(first.state.snapshot?.meta).toMatchObject({ index: 8, term: 3 });
    expect(view(first.state.entries)).toEqual(view(range(9, 12, 3)));

    // A snapshot past the end of the log drops it too.
    await first.storage.saveSnapshot(snapshot(20, 4));
    await first.storage.save({ entries: [entry(21, 4)] });
    await first.storage.close();
    const second = await reopen(dir);
    expect(second.state.snapshot?.meta.index).toBe(20);
    expect(view(second.state.entries)).toEqual(view([entry(21, 4)]));
  });

  it('applies the snapshot rule at load when a crash fell between the snapshot file and its WAL mark', async () => {
    const dir = tempDir();
    // segmentBytes so small that every write starts a new segment, the fix-up's included.
    const { storage } = await openStorage(dir, { segmentBytes: 100 });
    await storage.save({ entries: range(1, 10, 1) });
    await storage.close();
    // As if saveSnapshot died right after the atomic rename: the file is there, the WAL knows nothing of it.
    await writeSnapshotFile(join(dir, 'snap'), snapshot(8, 3), { fileSyncs: 0, dirSyncs: 0 });

    const first = await reopen(dir, { segmentBytes: 100 });
    expect(first.state.entries).toEqual([]);
    expect(first.logger.warnings.join('\n')).toMatch(/conflicted with the newest snapshot/);
    await first.storage.save({ entries: range(9, 10, 3) });
    await first.storage.close();

    // The entries saved after the fix-up must not be read back behind the stale term-1 log.
    const second = await reopen(dir, { segmentBytes: 100 });
    expect(view(second.state.entries)).toEqual(view(range(9, 10, 3)));
  });

  it('keeps only the two newest snapshots', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: range(1, 10) });
    for (const i of [2, 4, 6, 8]) await storage.saveSnapshot(snapshot(i, 1));
    expect(readdirSync(join(dir, 'snap')).sort()).toEqual([snapshotName(1, 6), snapshotName(1, 8)]);
  });

  it('writes a hard state saved with sync: false without an fsync, and reads it back', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ hardState: { term: 1, vote: 'n1', commit: 0 }, entries: [entry(1), entry(2)] });
    const before = storage.stats();
    await storage.save({ hardState: { term: 1, vote: 'n1', commit: 2 }, entries: [], sync: false });
    expect(storage.stats().fileSyncs - before.fileSyncs).toBe(0);
    expect(storage.stats().saves - before.saves).toBe(1);
    // In one group with a call that must be synced, the group is synced.
    await Promise.all([
      storage.save({ hardState: { term: 1, vote: 'n1', commit: 2 }, entries: [entry(3)] }),
      storage.save({ hardState: { term: 1, vote: 'n1', commit: 3 }, entries: [], sync: false }),
    ]);
    expect(storage.stats().fileSyncs - before.fileSyncs).toBe(1);
    await storage.close();
    const { state } = await reopen(dir);
    expect(state.hardState.commit).toBe(3);
  });

  it('coalesces concurrent saves into few fsyncs and resolves them in call order', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: [entry(1)] });
    const before = storage.stats();
    const order: number[] = [];
    const pending: Promise<void>[] = [];
    for (let i = 2; i <= 201; i++) {
      pending.push(
        storage
          .save({ hardState: { term: 1, vote: 'n1', commit: i - 1 }, entries: [entry(i)] })
          .then(() => void order.push(i)),
      );
    }
    await Promise.all(pending);
    const after = storage.stats();
    expect(order).toEqual(range(2, 201).map((e) => e.index));
    expect(after.saves - before.saves).toBe(200);
    expect(after.fileSyncs - before.fileSyncs).toBeLessThanOrEqual(5);
    expect(after.groupCommits - before.groupCommits).toBeLessThanOrEqual(5);
    await storage.close();

    const { state } = await reopen(dir);
    expect(state.entries.map((e) => e.index)).toEqual(range(1, 201).map((e) => e.index));
    expect(state.hardState.commit).toBe(200);
  });

  it('refuses to be used before load() or after close()', async () => {
    const storage = new FileStorage({ dir: tempDir() });
    await expect(storage.save({ entries: [entry(1)] })).rejects.toThrow(/load\(\) must complete/);
    await storage.load();
    await expect(storage.load()).rejects.toThrow(/load\(\) called/);
    await storage.close();
    await expect(storage.save({ entries: [entry(1)] })).rejects.toThrow(/closed/);
  });
});

describe('FileStorage recovery', () => {
  /**
   * Ten entries, one save (one record) each, in a single segment. Returns the segment's size after each save:
   * sizes[i] is where the record of entry i+1 starts.
   */
  async function tenEntries(dir: string): Promise<{ path: string; sizes: number[] }> {
    const { storage } = await openStorage(dir);
    const sizes: number[] = [];
    for (let i = 1; i <= 10; i++) {
      await storage.save({ entries: [entry(i, 1, `entry ${i} ${'x'.repeat(40)}`)] });
      sizes.push(statSync(onlySegment(dir)).size);
    }
    await storage.close();
    return { path: onlySegment(dir), sizes };
  }

  it('cuts a torn tail of any length, including one that ends inside a record header', async () => {
    const base = tempDir();
    const { path, sizes } = await tenEntries(base);
    const lastRecord = sizes[9]! - sizes[8]!;
    // 1..: inside the payload; lastRecord-9: only the header left; lastRecord-4 and -1: inside the header.
    for (const chop of [1, 7, lastRecord - 9, lastRecord - 4, lastRecord - 1]) {
      const dir = tempDir();
      cpSync(base, dir, { recursive: true });
      const segment = path.replace(base, dir);
      truncateSync(segment, sizes[9]! - chop);

      const { storage, state, logger } = await reopen(dir);
      expect(state.entries.map((e) => e.index)).toEqual(range(1, 9).map((e) => e.index));
      expect(statSync(segment).size).toBe(sizes[8]);
      expect(logger.warnings.join('\n')).toMatch(/truncated a torn WAL tail/);
      await storage.save({ entries: [entry(10, 2)] });
      await storage.close();
      const again = await reopen(dir);
      expect(view(again.state.entries).at(-1)).toEqual({ index: 10, term: 2, text: 'entry 10' });
      expect(again.logger.warnings).toEqual([]);
    }
  });

  it('cuts a last record whose payload fails its checksum (a torn write)', async () => {
    const dir = tempDir();
    const { path, sizes } = await tenEntries(dir);
    flipByte(path, sizes[8]! + 12);
    const { state, logger } = await reopen(dir);
    expect(state.entries.map((e) => e.index)).toEqual(range(1, 9).map((e) => e.index));
    expect(statSync(path).size).toBe(sizes[8]);
    expect(logger.warnings.join('\n')).toMatch(/checksum mismatch/);
  });

  it('cuts a tail of zeros (blocks allocated but never written)', async () => {
    const dir = tempDir();
    const { path, sizes } = await tenEntries(dir);
    appendFileSync(path, Buffer.alloc(4096));
    const { state } = await reopen(dir);
    expect(state.entries).toHaveLength(10);
    expect(statSync(path).size).toBe(sizes[9]);
  });

  it('refuses a damaged record before the tail, naming file and offset, and changes nothing on disk', async () => {
    const dir = tempDir();
    const { path, sizes } = await tenEntries(dir);
    const recordOf5 = sizes[3]!;
    flipByte(path, recordOf5 + 12);
    const before = fingerprint(dir);

    const error = await reopen(dir).then(
      () => null,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(StorageCorruptionError);
    const corruption = error as StorageCorruptionError;
    expect(corruption.file).toBe(path);
    expect(corruption.offset).toBe(recordOf5);
    expect(corruption.message).toContain(path);
    expect(corruption.message).toContain(`at byte ${recordOf5}`);
    expect(fingerprint(dir)).toEqual(before);
  });

  it('refuses a short record in a segment that is not the last', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 200 });
    for (let i = 1; i <= 20; i++) await storage.save({ entries: [entry(i)] });
    await storage.close();
    const first = join(walDir(dir), walFiles(dir)[0]!);
    const size = statSync(first).size;
    truncateSync(first, size - 3);
    const before = fingerprint(dir);
    await expect(reopen(dir, { segmentBytes: 200 })).rejects.toThrow(StorageCorruptionError);
    await expect(reopen(dir, { segmentBytes: 200 })).rejects.toThrow(first);
    expect(fingerprint(dir)).toEqual(before);
  });

  it('refuses a gap in indexes between segments', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 200 });
    for (let i = 1; i <= 30; i++) await storage.save({ entries: [entry(i)] });
    await storage.close();
    // Replace the last segment by a well-formed one that starts 5 entries too late.
    const files = walFiles(dir);
    const last = parseSegmentName(files.at(-1)!)!;
    rmSync(join(walDir(dir), files.at(-1)!));
    const firstIndex = last.firstIndex + 5;
    const forged = join(walDir(dir), segmentName(last.seq, firstIndex));
    const hardState = { term: 1, vote: null, commit: 0 };
    writeFileSync(
      forged,
      Buffer.concat([
        encodeRecord(RecordType.SegmentHeader, encodeSegmentHeader({ seq: last.seq, firstIndex, hardState })),
        encodeRecord(RecordType.Entries, encodeEntries([entry(firstIndex)])),
      ]),
    );
    const before = fingerprint(dir);
    await expect(reopen(dir)).rejects.toThrow(
      `${forged} at byte 0: segment starts at index ${firstIndex} but the log before it ends at index ${last.firstIndex - 1}`,
    );
    expect(fingerprint(dir)).toEqual(before);
  });

  it('refuses a hole in the sequence of segments', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 200 });
    for (let i = 1; i <= 30; i++) await storage.save({ entries: [entry(i)] });
    await storage.close();
    const files = walFiles(dir);
    rmSync(join(walDir(dir), files[2]!));
    await expect(reopen(dir)).rejects.toThrow(`${join(walDir(dir), files[3]!)} at byte 0: segment sequence gap`);
  });

  it('ignores and removes the leftover of an interrupted snapshot write', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: range(1, 5) });
    await storage.saveSnapshot(snapshot(3, 1));
    await storage.close();
    const leftover = join(dir, 'snap', `${snapshotName(1, 5)}.tmp`);
    writeFileSync(leftover, 'half a snapsh');

    const { state, logger } = await reopen(dir);
    expect(state.snapshot?.meta.index).toBe(3);
    expect(readdirSync(join(dir, 'snap'))).toEqual([snapshotName(1, 3)]);
    expect(logger.warnings.join('\n')).toMatch(/interrupted snapshot write/);
  });

  it('falls back to the older snapshot when the newest is corrupt and the WAL still holds the entries', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir); // one big segment: never deleted
    await storage.save({ entries: range(1, 20) });
    await storage.saveSnapshot(snapshot(10, 1));
    await storage.saveSnapshot(snapshot(15, 1));
    await storage.close();
    const newest = join(dir, 'snap', snapshotName(1, 15));
    flipByte(newest, statSync(newest).size - 2);

    const { state, logger } = await reopen(dir);
    expect(state.snapshot?.meta.index).toBe(10);
    expect(state.entries.map((e) => e.index)).toEqual(range(11, 20).map((e) => e.index));
    expect(logger.warnings.join('\n')).toMatch(/snapshot is corrupt/);
    expect(readdirSync(join(dir, 'snap')).sort()).toEqual([snapshotName(1, 10), `${snapshotName(1, 15)}.broken`]);
  });

  it('refuses a corrupt newest snapshot when the WAL no longer holds the entries after the older one', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 150 });
    for (let i = 1; i <= 20; i++) await storage.save({ entries: [entry(i)] });
    await storage.saveSnapshot(snapshot(10, 1));
    await storage.saveSnapshot(snapshot(15, 1));
    await storage.close();
    const newest = join(dir, 'snap', snapshotName(1, 15));
    flipByte(newest, statSync(newest).size - 2);
    const before = fingerprint(dir);

    const error = await reopen(dir).then(
      () => null,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(StorageCorruptionError);
    expect((error as StorageCorruptionError).file).toBe(newest);
    expect((error as Error).message).toMatch(/cannot fall back/);
    expect(fingerprint(dir)).toEqual(before);
  });

  it('gives clear errors naming the file for stray, empty and garbage files', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir, { segmentBytes: 200 });
    for (let i = 1; i <= 20; i++) await storage.save({ entries: [entry(i)] });
    await storage.close();

    const stray = join(walDir(dir), 'notes.txt');
    writeFileSync(stray, 'hello');
    await expect(reopen(dir)).rejects.toThrow(`${stray} at byte 0: unexpected entry in the WAL directory`);
    rmSync(stray);

    const strayDir = join(dir, 'snap', 'old');
    mkdirSync(strayDir);
    await expect(reopen(dir)).rejects.toThrow(`${strayDir} at byte 0: unexpected entry in the snapshot directory`);
    rmSync(strayDir, { recursive: true });

    const second = join(walDir(dir), walFiles(dir)[1]!);
    const saved = readFileSync(second);
    writeFileSync(second, '');
    await expect(reopen(dir)).rejects.toThrow(`${second} at byte 0: empty segment file`);
    writeFileSync(second, Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from('garbage garbage')]));
    await expect(reopen(dir)).rejects.toThrow(`${second} at byte 0: implausible record length`);
    writeFileSync(second, saved);

    const bogus = join(dir, 'snap', snapshotName(1, 50));
    writeFileSync(bogus, 'not a snapshot at all');
    const error = await reopen(dir).then(
      () => null,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(StorageCorruptionError);
    expect((error as Error).message).toContain(bogus);
    rmSync(bogus);

    const { state } = await reopen(dir);
    expect(state.entries).toHaveLength(20);
  });

  it('removes an empty last segment left by a crash while creating it', async () => {
    const dir = tempDir();
    const { storage } = await openStorage(dir);
    await storage.save({ entries: range(1, 3) });
    await storage.close();
    const empty = join(walDir(dir), segmentName(1, 4));
    writeFileSync(empty, '');
    const { state, logger, storage: again } = await reopen(dir);
    expect(state.entries).toHaveLength(3);
    expect(walFiles(dir)).toHaveLength(1);
    expect(logger.warnings.join('\n')).toMatch(/removed a torn WAL segment/);
    await again.save({ entries: [entry(4)] });
  });

  it('never loses an acknowledged entry when the writer is SIGKILLed at a random moment', async () => {
    const dir = tempDir();
    const moduleUrl = pathToFileURL(resolve(import.meta.dirname, '../../raft/storage/file-storage.ts')).href;
    const child = join(dir, 'writer.mjs');
    writeFileSync(
      child,
      `
import { FileStorage } from ${JSON.stringify(moduleUrl)};
const storage = new FileStorage({ dir: process.argv[2], segmentBytes: 4096, logger: { info() {}, warn() {} } });
const state = await storage.load();
let next = (state.entries.at(-1)?.index ?? state.snapshot?.meta.index ?? 0) + 1;
const data = (i) => new TextEncoder().encode('entry ' + i + ' ' + 'x'.repeat(i % 64));
let inFlight = 0;
for (;;) {
  while (inFlight < 16) {
    const i = next++;
    inFlight++;
    storage.save({ hardState: { term: 1, vote: 'n1', commit: i }, entries: [{ index: i, term: 1, type: 0, data: data(i) }] })
      .then(() => { inFlight--; process.stdout.write('ack ' + i + '\\n'); });
    if (i % 250 === 0) {
      storage.saveSnapshot({ meta: { index: i, term: 1, conf: { voters: ['n1'], learners: [] } }, data: data(i) })
        .then(() => process.stdout.write('snap ' + i + '\\n'));
    }
  }
  await new Promise((r) => setImmediate(r));
}
`,
    );

    let acked = 0;
    let snapped = 0;
    // More rounds for a soak: RAFT_STORAGE_CRASH_ROUNDS=100 (and a longer test timeout).
    const rounds = Number(process.env.RAFT_STORAGE_CRASH_ROUNDS ?? 5);
    for (let round = 0; round < rounds; round++) {
      const proc = spawn(process.execPath, [child, join(dir, 'member')], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (chunk) => {
        stdout += chunk;
      });
      proc.stderr.on('data', (chunk) => {
        stderr += chunk;
      });
      const exited = new Promise<NodeJS.Signals | null>((done) => proc.on('exit', (_code, signal) => done(signal)));
      // Kill at a random moment once it is writing.
      while (!stdout.includes('ack') && proc.exitCode === null) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, Math.random() * 300));
      proc.kill('SIGKILL');
      expect(await exited, stderr).toBe('SIGKILL');

      for (const line of stdout.split('\n')) {
        const [what, index] = line.split(' ');
        if (what === 'ack') acked = Math.max(acked, Number(index));
        if (what === 'snap') snapped = Math.max(snapped, Number(index));
      }
      const { storage, state } = await reopen(join(dir, 'member'), { segmentBytes: 4096 });
      const snapIndex = state.snapshot?.meta.index ?? 0;
      expect(snapIndex).toBeGreaterThanOrEqual(snapped);
      const last = state.entries.at(-1)?.index ?? snapIndex;
      expect(last).toBeGreaterThanOrEqual(acked);
      // Contiguous right after the snapshot, each with the data that was written for it.
      state.entries.forEach((e, k) => {
        expect(e.index).toBe(snapIndex + 1 + k);
        expect(decoder.decode(e.data)).toBe(`entry ${e.index} ${'x'.repeat(e.index % 64)}`);
      });
      expect(state.hardState.commit).toBeLessThanOrEqual(last);
      await storage.close();
    }
    expect(acked).toBeGreaterThan(0);
  }, 60_000);
});

describe('FileStorage against a model', () => {
  /** Small seeded PRNG (mulberry32), so a failing sequence can be replayed from its seed. */
  const prng = (seed: number) => () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };

  /** What storage must return: the Raft-level meaning of every operation, with no files involved. */
  class Model {
    hardState: HardState = { term: 0, vote: null, commit: 0 };
    snapshot: { index: number; term: number } | null = null;
    entries: Entry[] = [];
    get next(): number {
      return (this.entries.at(-1)?.index ?? this.snapshot?.index ?? 0) + 1;
    }
    termAt(index: number): number | undefined {
      return this.entries.find((e) => e.index === index)?.term;
    }
    save(batch: Entry[]): void {
      this.entries = [...this.entries.filter((e) => e.index < batch[0]!.index), ...batch];
    }
    saveSnapshot(index: number, term: number): void {
      const keep = this.termAt(index) === term;
      this.entries = keep ? this.entries.filter((e) => e.index > index) : [];
      this.snapshot = { index, term };
    }
    clone(): Model {
      return Object.assign(new Model(), { hardState: this.hardState, snapshot: this.snapshot, entries: this.entries });
    }
  }

  const walBytes = (dir: string) => walFiles(dir).map((name) => statSync(join(walDir(dir), name)).size);

  it('agrees with the model over random sequences of saves, overwrites, snapshots, crashes and reopens', async () => {
    const seeds = Number(process.env.RAFT_STORAGE_MODEL_SEEDS ?? 12);
    for (let seed = 1; seed <= seeds; seed++) {
      const random = prng(seed);
      const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)]!;
      const dir = tempDir();
      const model = new Model();
      let segmentBytes = pick([64, 200, 1000, 1 << 20]);
      let { storage } = await openStorage(dir, { segmentBytes });
      let term = 1;
      const check = async (step: string) => {
        await storage.close();
        segmentBytes = pick([64, 200, 1000, 1 << 20]);
        const reopened = await openStorage(dir, { segmentBytes });
        storage = reopened.storage;
        const { state } = reopened;
        const where = `seed ${seed}, after ${step}`;
        expect(state.hardState, where).toEqual(model.hardState);
        expect(state.snapshot && { index: state.snapshot.meta.index, term: state.snapshot.meta.term }, where).toEqual(
          model.snapshot,
        );
        expect(view(state.entries), where).toEqual(view(model.entries));
      };

      for (let op = 0; op < 40; op++) {
        const roll = random();
        if (roll < 0.45) {
          // Append, or overwrite a suffix (a new leader) with a higher term.
          const lowest = (model.snapshot?.index ?? 0) + 1;
          const overwrite = random() < 0.3 && model.next > lowest;
          if (overwrite) term++;
          const from = overwrite ? lowest + Math.floor(random() * (model.next - lowest)) : model.next;
          const batch = Array.from({ length: 1 + Math.floor(random() * 5) }, (_, k) =>
            entry(from + k, term, `t${term} i${from + k} ${'y'.repeat(Math.floor(random() * 40))}`),
          );
          const hardState = random() < 0.5 ? { term, vote: pick(['n1', 'n2', null]), commit: from - 1 } : undefined;
          await storage.save({ entries: batch, hardState });
          model.save(batch);
          if (hardState) model.hardState = hardState;
        } else if (roll < 0.6) {
          // A snapshot that agrees with the log, conflicts with it, or lies beyond it.
          const lowest = (model.snapshot?.index ?? 0) + 1;
          const index = lowest + Math.floor(random() * (model.next - lowest + 3));
          const snapTerm = random() < 0.7 ? (model.termAt(index) ?? term) : term + 1;
          term = Math.max(term, snapTerm);
          await storage.saveSnapshot(snapshot(index, snapTerm));
          model.saveSnapshot(index, snapTerm);
        } else if (roll < 0.7) {
          // Crash between the snapshot file and its WAL mark.
          const lowest = (model.snapshot?.index ?? 0) + 1;
          const index = lowest + Math.floor(random() * (model.next - lowest + 2));
          const snapTerm = random() < 0.5 ? (model.termAt(index) ?? term) : term + 1;
          term = Math.max(term, snapTerm);
          await storage.close();
          await writeSnapshotFile(join(dir, 'snap'), snapshot(index, snapTerm), { fileSyncs: 0, dirSyncs: 0 });
          model.saveSnapshot(index, snapTerm);
          await check(`op ${op}: snapshot ${index}/${snapTerm} without its mark`);
        } else if (roll < 0.8) {
          // A save torn by a crash: its bytes are cut short at a random point, so it never happened.
          const before = walBytes(dir);
          const saved = model.clone();
          await storage.save({ entries: [entry(model.next, term)] });
          await storage.close();
          const after = walBytes(dir);
          const appended = after.length > before.length ? after.at(-1)! : after.at(-1)! - (before.at(-1) ?? 0);
          const last = join(walDir(dir), walFiles(dir).at(-1)!);
          truncateSync(last, statSync(last).size - 1 - Math.floor(random() * (appended - 1)));
          Object.assign(model, saved);
          await check(`op ${op}: torn save`);
        } else {
          await check(`op ${op}: reopen`);
        }
      }
      await check('the end');
    }
  }, 120_000);
});

describe('TermRuns', () => {
  it('tracks terms through appends, overwrites and snapshots', () => {
    const runs = new TermRuns(1);
    runs.append([...range(1, 5, 1), ...range(6, 9, 2)]);
    expect([0, 1, 5, 6, 9, 10].map((i) => runs.termAt(i))).toEqual([undefined, 1, 1, 2, 2, undefined]);
    runs.append(range(7, 8, 3));
    expect(runs.next).toBe(9);
    expect([6, 7, 8, 9].map((i) => runs.termAt(i))).toEqual([2, 3, 3, undefined]);
    runs.dropThrough(6);
    expect([6, 7].map((i) => runs.termAt(i))).toEqual([undefined, 3]);
    runs.dropThrough(20);
    expect(runs.next).toBe(21);
    expect(runs.isEmpty).toBe(true);
  });
});
