// Data types shared by every part of raft/: the pure core, storage, the driver and the simulator.
// Nothing here does I/O.

/** A member's stable identifier (swarmd uses its node ID). */
export type NodeId = string;

/** What an entry carries. Plain object instead of an enum so Node can strip the types. */
export const EntryType = {
  /** Application command, opaque to Raft. */
  Normal: 0,
  /** Membership change; data is an encoded ConfChange. */
  ConfChange: 1,
  /** Empty entry a new leader appends to commit entries of earlier terms. */
  Noop: 2,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  readonly index: number;
  readonly term: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** What a member must have on disk before it answers anyone. */
export interface HardState {
  term: number;
  vote: NodeId | null;
  commit: number;
}

/** Who votes and who only replicates. */
export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
}

export interface SnapshotMeta {
  /** Index and term of the last entry the snapshot covers. */
  index: number;
  term: number;
  /** Membership as of that entry. */
  conf: ConfState;
}

export interface Snapshot {
  meta: SnapshotMeta;
  data: Uint8Array;
}

export const emptyHardState = (): HardState => ({ term: 0, vote: null, commit: 0 });
