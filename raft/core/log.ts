// The in-memory Raft log of one member: a snapshot boundary followed by entries, with the marks that say
// what is persisted, committed and applied. Persistence itself is the driver's job; this only tracks which
// suffix still has to be handed out for it.
import type { Entry, Snapshot } from '../types.ts';

export class RaftLog {
  /** Index and term of the last entry covered by the latest snapshot (0/0 when none). */
  snapshotIndex = 0;
  snapshotTerm = 0;
  /** entries[i].index === snapshotIndex + 1 + i */
  private entries: Entry[] = [];
  /** Entries with index >= unstableFrom have not been handed out for persistence yet. */
  private unstableFrom = 1;
  /** Highest index known to be persisted locally (entries before unstableFrom that the driver confirmed). */
  persisted = 0;
  committed = 0;
  /** Highest index handed out for applying. */
  applied = 0;
  /** A snapshot received from a leader that the driver still has to persist and restore. */
  pendingSnapshot: Snapshot | null = null;

  /** Restores the log from what storage returned at start. */
  restore(snapshotIndex: number, snapshotTerm: number, entries: Entry[], commit: number): void {
    this.snapshotIndex = snapshotIndex;
    this.snapshotTerm = snapshotTerm;
    this.entries = entries.slice();
    this.persisted = this.lastIndex();
    this.unstableFrom = this.lastIndex() + 1;
    this.committed = Math.max(Math.min(commit, this.lastIndex()), snapshotIndex);
    this.applied = snapshotIndex;
  }

  firstIndex(): number {
    return this.snapshotIndex + 1;
  }

  lastIndex(): number {
    return this.snapshotIndex + this.entries.length;
  }

  lastTerm(): number {
    return this.term(this.lastIndex()) ?? 0;
  }

  /** Term of the entry at index, or undefined when it is compacted away or beyond the end. */
  term(index: number): number | undefined {
    if (index === this.snapshotIndex) return this.snapshotTerm;
    if (index < this.snapshotIndex || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapshotIndex - 1]?.term;
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Entries in [lo, hi), at most maxBytes of data (but always at least one entry when any exists). */
  slice(lo: number, hi: number, maxBytes = Number.POSITIVE_INFINITY): Entry[] {
    if (lo <= this.snapshotIndex) throw new Error(`entry ${lo} is compacted (snapshot at ${this.snapshotIndex})`);
    const end = Math.min(hi, this.lastIndex() + 1);
    const out: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < end; index++) {
      const entry = this.entries[index - this.snapshotIndex - 1]!;
      bytes += entry.data.byteLength + 24;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(entry);
    }
    return out;
  }

  /** Candidate's log is at least as up to date as ours (Raft §5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /** Appends entries after the last one (leader path). */
  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    if (first !== this.lastIndex() + 1)
      throw new Error(`append at ${first} would leave a gap after ${this.lastIndex()}`);
    this.entries.push(...entries);
  }

  /**
   * Follower path: entries following prevIndex, already known to match at prevIndex. Skips entries we
   * already have, truncates at the first conflicting term. Returns the last index of the new entries.
   */
  appendMatching(prevIndex: number, entries: Entry[]): number {
    const lastNew = prevIndex + entries.length;
    let start = 0;
    for (; start < entries.length; start++) {
      const entry = entries[start]!;
      if (entry.index <= this.snapshotIndex) continue;
      const ourTerm = this.term(entry.index);
      if (ourTerm === undefined) break;
      if (ourTerm !== entry.term) {
        if (entry.index <= this.committed) {
          throw new Error(`conflict at committed index ${entry.index} (committed ${this.committed})`);
        }
        this.truncateFrom(entry.index);
        break;
      }
    }
    const rest = entries.slice(start);
    if (rest.length > 0) this.append(rest);
    return lastNew;
  }

  private truncateFrom(index: number): void {
    this.entries.length = index - this.snapshotIndex - 1;
    this.unstableFrom = Math.min(this.unstableFrom, index);
    this.persisted = Math.min(this.persisted, index - 1);
  }

  /**
   * Finds the last index <= index whose term is <= term: where a leader's and follower's logs may agree.
   * Lets a rejected append skip a whole term of conflicting entries at once.
   */
  findConflictByTerm(index: number, term: number): number {
    let candidate = Math.min(index, this.lastIndex());
    while (candidate > this.snapshotIndex) {
      const ourTerm = this.term(candidate);
      if (ourTerm === undefined || ourTerm <= term) break;
      candidate--;
    }
    return candidate;
  }

  commitTo(index: number): boolean {
    const target = Math.min(index, this.lastIndex());
    if (target <= this.committed) return false;
    this.committed = target;
    return true;
  }

  hasUnstable(): boolean {
    return this.unstableFrom <= this.lastIndex();
  }

  unstableEntries(): Entry[] {
    if (this.unstableFrom > this.lastIndex()) return [];
    return this.entries.slice(this.unstableFrom - this.snapshotIndex - 1);
  }

  /** The driver handed out everything up to lastIndex for persistence. */
  markHandedOut(lastIndex: number): void {
    this.unstableFrom = Math.max(this.unstableFrom, lastIndex + 1);
  }

  /** The driver confirmed entries up to index (of the given term) are on disk. */
  stableTo(index: number, term: number): void {
    // A later truncation may have replaced the entry meanwhile; then it is not the one that was persisted.
    if (this.term(index) === term) this.persisted = Math.max(this.persisted, index);
  }

  /**
   * Committed entries ready to apply. They need not be persisted here yet: committed means a majority has
   * them durably, so a crash of this member cannot lose them (it gets them back from the leader).
   */
  nextToApply(maxBytes: number): Entry[] {
    const hi = Math.min(this.committed, this.lastIndex());
    if (hi <= this.applied) return [];
    return this.slice(this.applied + 1, hi + 1, maxBytes);
  }

  appliedTo(index: number): void {
    if (index > this.applied) this.applied = index;
  }

  /** Drops entries up to and including index (they are covered by a snapshot the driver took). */
  compact(index: number): void {
    if (index <= this.snapshotIndex) return;
    if (index > this.applied) throw new Error(`cannot compact to ${index}: only applied up to ${this.applied}`);
    const term = this.term(index);
    if (term === undefined) throw new Error(`cannot compact to ${index}: no such entry`);
    this.entries = this.entries.slice(index - this.snapshotIndex);
    this.snapshotIndex = index;
    this.snapshotTerm = term;
  }

  /** Follower installs a leader's snapshot. Keeps the suffix only when the log agrees with the snapshot. */
  installSnapshot(snapshot: Snapshot): void {
    const { index, term } = snapshot.meta;
    if (this.matchTerm(index, term)) {
      this.entries = this.entries.slice(index - this.snapshotIndex);
    } else {
      this.entries = [];
    }
    this.snapshotIndex = index;
    this.snapshotTerm = term;
    this.committed = Math.max(this.committed, index);
    this.applied = Math.max(this.applied, index);
    this.persisted = Math.max(this.persisted, index);
    this.unstableFrom = Math.max(this.unstableFrom, index + 1);
    if (this.entries.length === 0) this.unstableFrom = index + 1;
    this.pendingSnapshot = snapshot;
  }
}
