// RaftStorage in memory: for tests and for members that need no durability (never for swarmd managers).
import type { Entry, HardState, Snapshot } from '../types.ts';
import { emptyHardState } from '../types.ts';
import type { PersistedState, PersistUpdate, RaftStorage } from './types.ts';

export class MemoryStorage implements RaftStorage {
  private hardState: HardState = emptyHardState();
  private snapshot: Snapshot | null = null;
  private entries: Entry[] = [];

  async load(): Promise<PersistedState> {
    return { hardState: { ...this.hardState }, snapshot: this.snapshot, entries: this.entries.slice() };
  }

  async save(update: PersistUpdate): Promise<void> {
    const first = update.entries[0];
    if (first) this.entries = this.entries.filter((e) => e.index < first.index).concat(update.entries);
    if (update.hardState) this.hardState = { ...update.hardState };
  }

  async saveSnapshot(snapshot: Snapshot): Promise<void> {
    const { index, term } = snapshot.meta;
    const atIndex = this.entries.find((e) => e.index === index);
    this.entries = atIndex?.term === term ? this.entries.filter((e) => e.index > index) : [];
    this.snapshot = snapshot;
  }

  async close(): Promise<void> {}
}
