import type { Entry, HardState, Snapshot } from '../types.ts';

/** Everything durable about one member, as read back at start. */
export interface PersistedState {
  hardState: HardState;
  /** Latest snapshot, or null when none was ever taken or received. */
  snapshot: Snapshot | null;
  /** Contiguous entries, each with index > snapshot.meta.index (or starting at 1 without a snapshot). */
  entries: Entry[];
}

export interface PersistUpdate {
  hardState?: HardState;
  /**
   * Whether the promise waits for an fsync (default true). False only for a hard state that moved nothing but the
   * commit index: Raft's safety does not rest on it, but a member that restarts with an old one applies only the
   * configuration of that commit until a leader tells it more, and without a leader it may never learn it (see
   * RaftNode.persist). Written, not synced; a later synced write makes it durable with it.
   */
  sync?: boolean;
  /**
   * Contiguous entries. Any stored entry with index >= entries[0].index is replaced (a new leader may
   * overwrite an uncommitted suffix).
   */
  entries: Entry[];
}

/**
 * Durable storage for one Raft member. Every promise resolves only once the data is fsynced.
 *
 * Errors are instances of StorageCorruptionError when stored bytes are bad (naming the file and offset),
 * and plain Errors for I/O failures.
 */
export interface RaftStorage {
  /**
   * Reads what is on disk. A torn last record (the write a crash interrupted) is truncated away; damage
   * anywhere before the tail throws StorageCorruptionError instead of dropping entries silently.
   */
  load(): Promise<PersistedState>;
  /**
   * Appends entries and/or records a new hard state. Calls made while an fsync is in flight are written
   * together and covered by one fsync (group commit); promises resolve in call order.
   */
  save(update: PersistUpdate): Promise<void>;
  /**
   * Atomically stores a snapshot, then drops the entries it covers. Entries after it are kept only if the
   * stored entry at snapshot.meta.index has snapshot.meta.term (the log agrees with the snapshot); otherwise
   * the whole log is dropped, as Raft requires when a snapshot replaces a conflicting log.
   */
  saveSnapshot(snapshot: Snapshot): Promise<void>;
  close(): Promise<void>;
}

export class StorageCorruptionError extends Error {
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, what: string) {
    super(`raft storage corrupt: ${file} at byte ${offset}: ${what}`);
    this.name = 'StorageCorruptionError';
    this.file = file;
    this.offset = offset;
  }
}
