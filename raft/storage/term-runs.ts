// The term of every stored entry, without keeping the entries. saveSnapshot needs "the term of the stored
// entry at index i"; storing one run per term change keeps that tiny however long the log grows, since terms
// change only on elections.

export class TermRuns {
  /** runs[k] covers indexes starts[k] .. starts[k+1]-1 (the last run ends at lastIndex), all with terms[k]. */
  private starts: number[] = [];
  private terms: number[] = [];
  private firstIndex: number;
  private lastIndex: number;

  /** An empty log whose next entry will have index `next`. */
  constructor(next: number) {
    this.firstIndex = next;
    this.lastIndex = next - 1;
  }

  /** Index of the next entry to append (last index + 1). */
  get next(): number {
    return this.lastIndex + 1;
  }

  get first(): number {
    return this.firstIndex;
  }

  get isEmpty(): boolean {
    return this.lastIndex < this.firstIndex;
  }

  termAt(index: number): number | undefined {
    if (index < this.firstIndex || index > this.lastIndex) return undefined;
    // Binary search for the last run starting at or before index.
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= index) lo = mid;
      else hi = mid - 1;
    }
    return this.terms[lo];
  }

  /** Appends contiguous entries, first replacing any stored entry at or after the first one's index. */
  append(entries: readonly { index: number; term: number }[]): void {
    const head = entries[0];
    if (!head) return;
    this.truncateFrom(head.index);
    for (const e of entries) {
      if (this.terms.at(-1) !== e.term) {
        this.starts.push(e.index);
        this.terms.push(e.term);
      }
      this.lastIndex = e.index;
    }
  }

  /** Drops every entry; the next one will have index `next`. */
  reset(next: number): void {
    this.starts = [];
    this.terms = [];
    this.firstIndex = next;
    this.lastIndex = next - 1;
  }

  /** Drops entries up to and including `index` (covered by a snapshot), keeping the ones after it. */
  dropThrough(index: number): void {
    if (index >= this.lastIndex) {
      this.reset(index + 1);
      return;
    }
    if (index < this.firstIndex) return;
    this.firstIndex = index + 1;
    while (this.starts.length > 1 && this.starts[1]! <= this.firstIndex) {
      this.starts.shift();
      this.terms.shift();
    }
    if (this.starts.length > 0) this.starts[0] = this.firstIndex;
  }

  private truncateFrom(index: number): void {
    if (index <= this.firstIndex) {
      this.reset(index);
      return;
    }
    while (this.starts.length > 0 && this.starts.at(-1)! >= index) {
      this.starts.pop();
      this.terms.pop();
    }
    this.lastIndex = Math.min(this.lastIndex, index - 1);
  }
}
