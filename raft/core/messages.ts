// Messages exchanged by Raft members. The core produces and consumes these; the driver moves them over a
// transport. `term` is the sender's term, except for local/forwarded requests (Prop, ReadIndex,
// TransferLeader) which carry term 0 and are not subject to term checks.
import type { Entry, NodeId, SnapshotMeta } from '../types.ts';

interface Envelope {
  from: NodeId;
  to: NodeId;
  term: number;
}

export interface VoteRequest extends Envelope {
  type: 'PreVote' | 'Vote';
  lastLogIndex: number;
  lastLogTerm: number;
  /** Set when the election follows a leadership transfer: voters must not ignore it because of a lease. */
  transfer: boolean;
}

export interface VoteResponse extends Envelope {
  type: 'PreVoteResp' | 'VoteResp';
  reject: boolean;
}

export interface AppendRequest extends Envelope {
  type: 'App';
  prevIndex: number;
  prevTerm: number;
  entries: Entry[];
  commit: number;
}

export interface AppendResponse extends Envelope {
  type: 'AppResp';
  /** Accepted: highest index now known to match. Rejected: the prevIndex that did not match. */
  index: number;
  reject: boolean;
  /** On reject: a guess at the last index where logs may agree, and its term, to skip back quickly. */
  rejectHint: number;
  hintTerm: number;
}

export interface HeartbeatRequest extends Envelope {
  type: 'Heartbeat';
  commit: number;
  /** ReadIndex round this heartbeat confirms leadership for, if any. */
  readId: string | null;
  /** Leader's tick count when sent, echoed back: an ack renews the leader's lease from that moment. */
  tick: number;
}

export interface HeartbeatResponse extends Envelope {
  type: 'HeartbeatResp';
  readId: string | null;
  tick: number;
}

/** One chunk of a snapshot; the follower acknowledges each with SnapAck. */
export interface SnapshotChunk extends Envelope {
  type: 'Snap';
  meta: SnapshotMeta;
  offset: number;
  totalBytes: number;
  chunk: Uint8Array;
}

export interface SnapshotAck extends Envelope {
  type: 'SnapAck';
  snapshotIndex: number;
  /** Bytes received so far; the leader continues from here. */
  received: number;
}

export interface ProposalForward extends Envelope {
  type: 'Prop';
  entries: Entry[];
}

export interface ReadIndexRequest extends Envelope {
  type: 'ReadIndex';
  readId: string;
}

export interface ReadIndexResponse extends Envelope {
  type: 'ReadIndexResp';
  readId: string;
  index: number;
}

export interface TimeoutNow extends Envelope {
  type: 'TimeoutNow';
}

export interface TransferLeaderRequest extends Envelope {
  type: 'TransferLeader';
  transferee: NodeId;
}

export type Message =
  | VoteRequest
  | VoteResponse
  | AppendRequest
  | AppendResponse
  | HeartbeatRequest
  | HeartbeatResponse
  | SnapshotChunk
  | SnapshotAck
  | ProposalForward
  | ReadIndexRequest
  | ReadIndexResponse
  | TimeoutNow
  | TransferLeaderRequest;

export type MessageType = Message['type'];

export const MESSAGE_TYPES: readonly MessageType[] = [
  'PreVote',
  'Vote',
  'PreVoteResp',
  'VoteResp',
  'App',
  'AppResp',
  'Heartbeat',
  'HeartbeatResp',
  'Snap',
  'SnapAck',
  'Prop',
  'ReadIndex',
  'ReadIndexResp',
  'TimeoutNow',
  'TransferLeader',
];
