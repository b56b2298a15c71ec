// Invariants checked continuously while a simulation runs. Each check is incremental so it costs little
// per event; a violation throws at once, with the simulated time, so the trace ends where it went wrong.
import type { Entry, NodeId } from '../types.ts';

export class SafetyViolation extends Error {
  readonly property: string;
  constructor(property: string, detail: string) {
    super(`${property}: ${detail}`);
    this.name = 'SafetyViolation';
    this.property = property;
  }
}

function fingerprint(entry: Entry): string {
  // Entries are small in the simulator; the full bytes are an exact fingerprint.
  return `${entry.type}:${Buffer.from(entry.data).toString('base64')}`;
}

export class SafetyMonitor {
  /** Election safety: at most one leader per term. */
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** Log matching: entries with the same index and term are the same entry. */
  private readonly entryAt = new Map<string, string>();
  /** State machine safety: every member applies the same entry at each index. */
  private readonly appliedAt = new Map<number, { term: number; print: string; by: NodeId }>();
  appliedEntries = 0;

  observeLeader(term: number, id: NodeId): void {
    const existing = this.leaderOfTerm.get(term);
    if (existing === undefined) this.leaderOfTerm.set(term, id);
    else if (existing !== id) {
      throw new SafetyViolation('election safety', `term ${term} has two leaders: ${existing} and ${id}`);
    }
  }

  observePersisted(id: NodeId, entries: readonly Entry[]): void {
    for (const entry of entries) {
      const key = `${entry.index}/${entry.term}`;
      const print = fingerprint(entry);
      const existing = this.entryAt.get(key);
      if (existing === undefined) this.entryAt.set(key, print);
      else if (existing !== print) {
        throw new SafetyViolation(
          'log matching',
          `${id} stored a different entry at index ${entry.index} term ${entry.term}`,
        );
      }
    }
  }

  observeApplied(id: NodeId, entry: Entry): void {
    this.appliedEntries++;
    const print = fingerprint(entry);
    const existing = this.appliedAt.get(entry.index);
    if (existing === undefined) {
      this.appliedAt.set(entry.index, { term: entry.term, print, by: id });
    } else if (existing.term !== entry.term || existing.print !== print) {
      throw new SafetyViolation(
        'state machine safety',
        `${id} applied index ${entry.index} term ${entry.term}, but ${existing.by} applied term ${existing.term} there` +
          (existing.term === entry.term ? ' with different data' : ''),
      );
    }
  }

  highestAppliedIndex(): number {
    let max = 0;
    for (const index of this.appliedAt.keys()) max = Math.max(max, index);
    return max;
  }
}
