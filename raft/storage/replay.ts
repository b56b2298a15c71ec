// Rebuilding the log from WAL records, in order. Pure: no I/O. Each method returns null when the record fits,
// or says what is wrong; the WAL scanner turns that into a StorageCorruptionError naming file and offset.
//
// Record semantics:
// - segment header: the first surviving segment sets the starting point (older segments may have been deleted
//   once a snapshot covered them); every later segment must start exactly where the log before it ends.
// - entries: "truncate from entries[0].index, then append". An overwrite of an uncommitted suffix is thus an
//   ordinary append and old segments are never rewritten. The batch may not start past the log's end (a gap).
// - hard state: the latest one wins.
// - snapshot mark with keep=false: the log disagreed with the snapshot, so everything before is dropped and
//   the log restarts after the snapshot. keep=true changes nothing here: load() trims entries covered by the
//   snapshot it picks, and keeping them until then lets it fall back to an older snapshot.

import type { Entry, HardState } from '../types.ts';
import { emptyHardState } from '../types.ts';
import type { SegmentHeader, SnapshotMark } from './codec.ts';

export class LogReplay {
  hardState: HardState = emptyHardState();
  /** The log as rebuilt so far: contiguous. */
  entries: Entry[] = [];
  /** Index the next entry would have; null until the first segment header. */
  next: number | null = null;
  /** Latest snapshot mark seen, for diagnostics. */
  lastMark: SnapshotMark | null = null;

  segmentStart(header: SegmentHeader): string | null {
    if (this.next === null) {
      this.next = header.firstIndex;
      this.hardState = header.hardState;
      return null;
    }
    if (header.firstIndex !== this.next) {
      return `segment starts at index ${header.firstIndex} but the log before it ends at index ${this.next - 1}`;
    }
    return null;
  }

  append(batch: Entry[]): string | null {
    const first = batch[0]!.index;
    if (this.next === null) return 'entries before any segment header';
    if (first > this.next) return `entries start at index ${first} but the log ends at index ${this.next - 1}`;
    const head = this.entries[0]?.index ?? this.next;
    if (first <= head) this.entries = [];
    else this.entries.length = first - head;
    for (const e of batch) this.entries.push(e);
    this.next = first + batch.length;
    return null;
  }

  setHardState(hs: HardState): void {
    this.hardState = hs;
  }

  mark(mark: SnapshotMark): string | null {
    if (this.next === null) return 'snapshot mark before any segment header';
    this.lastMark = mark;
    if (!mark.keep) {
      this.entries = [];
      this.next = mark.index + 1;
    }
    return null;
  }
}
