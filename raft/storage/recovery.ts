// Fitting the replayed log to the snapshot load() picked. Pure: no I/O.
//
// This applies saveSnapshot's rule again at load, which matters when a crash fell between the snapshot file
// becoming durable and its mark reaching the WAL: entries after the snapshot survive only if the log's entry
// at the snapshot's index has the snapshot's term. When the rule drops the log but the WAL on its own would
// not (no keep=false mark yet), load() must write that mark, or entries appended afterwards would be read
// back behind the stale ones.

import type { Entry } from '../types.ts';

export interface LogPoint {
  index: number;
  term: number;
}

export type Fit =
  | {
      ok: true;
      /** Entries after the snapshot. */
      entries: Entry[];
      /** The log disagreed with the snapshot (or ended before it) and was dropped. */
      droppedAll: boolean;
      /** The WAL must be told with a keep=false mark, since replay would not reach the same result. */
      needsResetMark: boolean;
    }
  | { ok: false; reason: string };

/**
 * `entries` and `next` are the replayed log (next null when there is no WAL at all); `snap` is the snapshot,
 * index 0 for none.
 */
export function fitLogToSnapshot(entries: Entry[], next: number | null, snap: LogPoint): Fit {
  const s = snap.index;
  if (next === null) return { ok: true, entries: [], droppedAll: false, needsResetMark: false };
  const first = entries[0]?.index ?? next;
  if (first > s + 1) {
    return {
      ok: false,
      reason:
        s === 0
          ? `the WAL starts at index ${first} and no snapshot covers the entries before it`
          : `the WAL starts at index ${first} but the snapshot covers only up to index ${s}`,
    };
  }
  const dropAll = { ok: true as const, entries: [], droppedAll: true, needsResetMark: true };
  if (entries.length === 0) {
    return { ok: true, entries: [], droppedAll: false, needsResetMark: next !== s + 1 };
  }
  if (first === s + 1) return { ok: true, entries, droppedAll: false, needsResetMark: false };
  const last = next - 1;
  if (last < s) return dropAll;
  if (entries[s - first]!.term !== snap.term) return dropAll;
  return { ok: true, entries: entries.slice(s - first + 1), droppedAll: false, needsResetMark: false };
}
