// The pure Raft state machine of one member, in the style of etcd-io/raft's RawNode.
//
// It performs no I/O and reads no clock or global randomness: the driver calls tick() on a timer,
// step() for every message that arrives, and propose()/readIndex()/... for local requests. Whenever
// hasReady() is true the driver takes ready(), persists its entries and hard state, sends its messages,
// applies its committed entries, and calls advance(ready). The same code therefore runs under the real
// driver and under the deterministic simulator.
//
// Contract for a Ready (see README of raft/ for the full picture):
//   1. `messages` may be sent at once, in parallel with persisting (the leader writes its own log while
//      followers write theirs, Raft thesis §10.2.1).
//   2. `entries`, `hardState` and `snapshot` must be durable before `messagesAfterPersist` are sent and
//      before advance(ready) is called.
//   3. `snapshot` (if any) is restored into the state machine before `committedEntries` are applied.
//   4. step() may be called between ready() and advance(), but ready() may not be called again before
//      advance() for the previous one.

import type { PersistedState } from '../storage/types.ts';
import type { ConfState, Entry, HardState, NodeId, Snapshot } from '../types.ts';
import { EntryType } from '../types.ts';
import { applyConfChange, type ConfChange, cloneConf, decodeConfChange, encodeConfChange } from './conf-change.ts';
import { RaftLog } from './log.ts';
import type {
  AppendRequest,
  AppendResponse,
  HeartbeatRequest,
  HeartbeatResponse,
  Message,
  SnapshotAck,
  SnapshotChunk,
  VoteRequest,
} from './messages.ts';
import { Progress } from './progress.ts';
import { committedIndex, majority, voteOutcome } from './quorum.ts';

export type Role = 'follower' | 'precandidate' | 'candidate' | 'leader';

export interface RaftConfig {
  id: NodeId;
  /** Ticks without hearing from a leader before a follower campaigns (randomized in [n, 2n)). */
  electionTicks: number;
  /** Ticks between leader heartbeats; must be well below electionTicks. */
  heartbeatTicks: number;
  /** Uniform random number in [0, 1). Seeded by the caller so runs can be replayed. */
  random: () => number;
  /** Pre-vote (thesis §9.6): a partitioned member rejoining cannot force an election with a stale log. */
  preVote: boolean;
  /** A leader that has not heard from a quorum for an election timeout steps down. */
  checkQuorum: boolean;
  /** 'safe' confirms leadership with a heartbeat round per read; 'lease' trusts the check-quorum lease. */
  readOnly: 'safe' | 'lease';
  /** Upper bound on entry bytes in one append message (always at least one entry). */
  maxSizePerMsg: number;
  /** Appends in flight per follower before the leader waits for acknowledgements. */
  maxInflightMsgs: number;
  maxInflightBytes: number;
  /** Proposals are refused while this many bytes are appended but not committed. */
  maxUncommittedBytes: number;
  /** Upper bound on committed entry bytes handed out in one Ready. */
  maxApplyBytes: number;
  /** Size of each snapshot chunk sent to a lagging follower. */
  snapshotChunkBytes: number;
  /** Test-only: plants known bugs so tests can show the simulator catches them. Never set in production. */
  testingFaults?: { grantVoteWithoutLogCheck?: boolean; commitWithoutQuorum?: boolean };
}

export const defaultRaftConfig = (id: NodeId, random: () => number): RaftConfig => ({
  id,
  electionTicks: 10,
  heartbeatTicks: 1,
  random,
  preVote: true,
  checkQuorum: true,
  readOnly: 'safe',
  maxSizePerMsg: 1024 * 1024,
  maxInflightMsgs: 256,
  maxInflightBytes: 32 * 1024 * 1024,
  maxUncommittedBytes: 64 * 1024 * 1024,
  maxApplyBytes: 16 * 1024 * 1024,
  snapshotChunkBytes: 1024 * 1024,
});

export interface ReadState {
  /** The read may be served once the state machine has applied this index. */
  index: number;
  readId: string;
}

export interface Ready {
  role: Role;
  leader: NodeId | null;
  term: number;
  /** Present when it changed since the last Ready. */
  hardState: HardState | null;
  /**
   * Whether this Ready must be durable before its messagesAfterPersist go out: new entries, a snapshot,
   * or a new term or vote. A hard state whose commit index alone moved may be written lazily (the commit
   * index is recovered from the leader after a crash), which keeps an fsync off every commit's path.
   */
  mustSync: boolean;
  /** To persist (may overwrite a suffix of what is stored). */
  entries: Entry[];
  /** Received from the leader: persist, then restore into the state machine. */
  snapshot: Snapshot | null;
  /** Committed and persisted: apply in order. */
  committedEntries: Entry[];
  /** Safe to send before this Ready is persisted. */
  messages: Message[];
  /** Send only once this Ready is persisted. */
  messagesAfterPersist: Message[];
  readStates: ReadState[];
}

export interface PeerStatus {
  match: number;
  next: number;
  state: string;
  learner: boolean;
  recentActive: boolean;
}

export interface RaftStatus {
  id: NodeId;
  role: Role;
  term: number;
  leader: NodeId | null;
  commit: number;
  applied: number;
  /** Highest index written to this member's storage. */
  persisted: number;
  lastIndex: number;
  snapshotIndex: number;
  conf: ConfState;
  leadTransferee: NodeId | null;
  /** Replication progress per member, on the leader only. */
  progress: Record<NodeId, PeerStatus>;
}

export class ProposalDroppedError extends Error {
  constructor(reason: string) {
    super(`proposal dropped: ${reason}`);
    this.name = 'ProposalDroppedError';
  }
}

interface PendingRead {
  readId: string;
  index: number;
  /** Who asked: this member, or a follower that forwarded the request. */
  from: NodeId;
  acks: Set<NodeId>;
}

/** A snapshot arriving in chunks from the leader. */
interface IncomingSnapshot {
  index: number;
  term: number;
  totalBytes: number;
  chunks: Uint8Array[];
  received: number;
}

/** Message types a follower sends only after the state they acknowledge is durable. */
const AFTER_PERSIST = new Set<Message['type']>(['AppResp', 'VoteResp', 'PreVoteResp']);

export class Raft {
  readonly id: NodeId;
  private readonly cfg: RaftConfig;
  readonly log = new RaftLog();

  private term = 0;
  private vote: NodeId | null = null;
  private role: Role = 'follower';
  private leader: NodeId | null = null;
  private conf: ConfState = { voters: [], learners: [] };

  /** Ticks since start; only the leader's lease arithmetic uses it. */
  private ticks = 0;
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;

  private votes = new Map<NodeId, boolean>();
  /** Term whose self-vote counts once the hard state recording it is persisted. */
  private selfVoteTerm = 0;

  private progress = new Map<NodeId, Progress>();
  private leadTransferee: NodeId | null = null;
  /** Index of the latest conf change appended; none may be proposed until it is applied. */
  private pendingConfIndex = 0;
  private uncommittedBytes = 0;
  /** Leader has appended entries that followers should hear about at the next Ready. */
  private broadcastPending = false;

  private pendingReads: PendingRead[] = [];
  /** Reads that arrived before this leader committed an entry of its term. */
  private readsAwaitingCommit: { readId: string; from: NodeId }[] = [];
  private readStates: ReadState[] = [];

  /** Latest snapshot we have: sent to followers whose next entry is compacted away. */
  private latestSnapshot: Snapshot | null = null;
  /** Snapshot being streamed to each follower in snapshot state. */
  private outgoingSnapshots = new Map<NodeId, Snapshot>();
  private incomingSnapshot: IncomingSnapshot | null = null;

  private messages: Message[] = [];
  private messagesAfterPersist: Message[] = [];
  private lastHardState: HardState;

  /**
   * `forceNewCluster`: start as the only voter of the cluster, whatever the persisted membership says (see
   * forceSingleMember). For a member whose peers are gone for good; never for a normal start.
   */
  constructor(config: RaftConfig, persisted: PersistedState | null, bootstrap?: ConfState, forceNewCluster = false) {
    validateConfig(config);
    this.cfg = config;
    this.id = config.id;
    if (persisted?.snapshot) {
      const { snapshot } = persisted;
      this.conf = cloneConf(snapshot.meta.conf);
      this.latestSnapshot = snapshot.meta.index > 0 ? snapshot : null;
      this.log.restore(snapshot.meta.index, snapshot.meta.term, persisted.entries, persisted.hardState.commit);
    } else if (persisted && persisted.entries.length > 0) {
      this.log.restore(0, 0, persisted.entries, persisted.hardState.commit);
    }
    if (persisted) {
      this.term = persisted.hardState.term;
      this.vote = persisted.hardState.vote;
    }
    const hasState = persisted !== null && (persisted.snapshot !== null || persisted.entries.length > 0);
    if (!hasState && bootstrap) this.bootstrapLog(bootstrap);
    this.lastHardState = persisted ? { ...persisted.hardState } : { term: 0, vote: null, commit: 0 };
    if (forceNewCluster) this.forceSingleMember();
    this.becomeFollower(this.term, null);
  }

  /**
   * First start of a founding member: the initial membership becomes committed conf-change entries at
   * term 1, identical on every founding member. Being in the log (not only in local config), it reaches
   * members that join later through ordinary replication.
   */
  private bootstrapLog(conf: ConfState): void {
    const changes: ConfChange[] = [
      ...[...conf.voters].sort().map((node): ConfChange => ({ type: 'addVoter', node })),
      ...[...conf.learners].sort().map((node): ConfChange => ({ type: 'addLearner', node })),
    ];
    this.log.append(
      changes.map((change, i) => ({
        index: i + 1,
        term: 1,
        type: EntryType.ConfChange,
        data: encodeConfChange(change),
      })),
    );
    this.log.commitTo(changes.length);
    this.term = 1;
  }

  /**
   * Disaster recovery once a majority of the voters is lost for good (swarmd's --force-new-cluster): every entry
   * in this member's log counts as committed, then membership changes that leave it the only voter are appended at
   * a new term and committed at once. Being ordinary log entries, they reach members added later.
   *
   * Unlike etcd, which drops the entries past the commit index on disk, we keep them: the driver writes the commit
   * index lazily (with the next entries), so the newest writes clients were told succeeded are exactly the ones
   * past it. An entry that was never committed comes back instead, the lesser harm. The members removed must not
   * come back with their old state: it still names the old membership.
   */
  private forceSingleMember(): void {
    this.log.commitTo(this.log.lastIndex());
    let conf = cloneConf(this.conf);
    for (const entry of this.log.slice(this.log.snapshotIndex + 1, this.log.lastIndex() + 1)) {
      if (entry.type === EntryType.ConfChange) conf = applyConfChange(conf, decodeConfChange(entry.data));
    }
    const changes: ConfChange[] = [
      ...(conf.voters.includes(this.id) ? [] : [{ type: 'addVoter', node: this.id } as const]),
      ...[...conf.voters, ...conf.learners]
        .filter((node) => node !== this.id)
        .sort()
        .map((node): ConfChange => ({ type: 'remove', node })),
    ];
    // A new term, so that nothing the old members still hold can pass for this history's.
    const term = Math.max(this.term, this.log.lastTerm()) + 1;
    const first = this.log.lastIndex() + 1;
    this.log.append(
      changes.map((change, i) => ({
        index: first + i,
        term,
        type: EntryType.ConfChange,
        data: encodeConfChange(change),
      })),
    );
    this.log.commitTo(this.log.lastIndex());
    this.term = term;
    this.vote = null;
  }

  // ---------------------------------------------------------------- inputs

  tick(): void {
    this.ticks++;
    if (this.role === 'leader') this.tickLeader();
    else this.tickElection();
  }

  /** Starts an election now (used by tests and by a member that knows the leader is gone). */
  campaign(): void {
    this.hup(false);
  }

  propose(data: Uint8Array): void {
    this.proposeEntry(EntryType.Normal, data);
  }

  proposeConfChange(change: ConfChange): void {
    if (this.role !== 'leader') {
      throw new ProposalDroppedError(`not the leader (leader is ${this.leader ?? 'unknown'})`);
    }
    if (!this.committedEntryInCurrentTerm()) {
      throw new ProposalDroppedError('leader has not committed an entry in its term yet');
    }
    if (this.pendingConfIndex > this.log.applied) {
      throw new ProposalDroppedError(`membership change at index ${this.pendingConfIndex} is still pending`);
    }
    if (change.type === 'remove' && change.node === this.id && this.conf.voters.length === 1) {
      throw new ProposalDroppedError('cannot remove the only voter');
    }
    this.proposeEntry(EntryType.ConfChange, encodeConfChange(change));
    this.pendingConfIndex = this.log.lastIndex();
  }

  /** Asks for a linearizable read point; the answer comes back in a Ready's readStates with this readId. */
  readIndex(readId: string): void {
    if (this.role === 'leader') {
      this.leaderReadIndex(readId, this.id);
    } else if (this.leader !== null) {
      this.send({ type: 'ReadIndex', from: this.id, to: this.leader, term: 0, readId });
    } else {
      throw new ProposalDroppedError('no leader known for read');
    }
  }

  transferLeadership(transferee: NodeId): void {
    if (this.role !== 'leader') {
      if (this.leader === null) throw new ProposalDroppedError('no leader known for transfer');
      this.send({ type: 'TransferLeader', from: this.id, to: this.leader, term: 0, transferee });
      return;
    }
    this.startTransfer(transferee);
  }

  /** The transport could not reach a follower: stop optimistic pipelining to it. */
  reportUnreachable(peer: NodeId): void {
    const pr = this.progress.get(peer);
    if (pr?.state === 'replicate') pr.becomeProbe();
  }

  /**
   * The driver saved a snapshot of the state machine at `index` (the applied index): drop the log before it
   * and keep the snapshot to send to followers that fall behind.
   */
  compact(index: number, data: Uint8Array): Snapshot {
    if (index !== this.log.applied) {
      throw new Error(`snapshot index ${index} must equal the applied index ${this.log.applied}`);
    }
    if (index > this.log.persisted) {
      // Entries may be applied before they are written here; a snapshot must not get ahead of the log on disk.
      throw new Error(`snapshot index ${index} is beyond the persisted log (${this.log.persisted})`);
    }
    const term = this.log.term(index);
    if (term === undefined) throw new Error(`no entry at snapshot index ${index}`);
    const snapshot: Snapshot = { meta: { index, term, conf: cloneConf(this.conf) }, data };
    this.log.compact(index);
    this.latestSnapshot = snapshot;
    return snapshot;
  }

  step(m: Message): void {
    if (m.to !== this.id) return;
    if (m.term === 0) {
      this.stepLocal(m);
      return;
    }
    if (m.term > this.term) {
      if (!this.acceptHigherTerm(m)) return;
    } else if (m.term < this.term) {
      this.stepLowerTerm(m);
      return;
    }
    switch (m.type) {
      case 'PreVote':
      case 'Vote':
        this.handleVoteRequest(m);
        return;
      default:
        break;
    }
    switch (this.role) {
      case 'leader':
        this.stepLeader(m);
        return;
      case 'candidate':
      case 'precandidate':
        this.stepCandidate(m);
        return;
      case 'follower':
        this.stepFollower(m);
        return;
    }
  }

  // ---------------------------------------------------------------- outputs

  hasReady(): boolean {
    return (
      this.broadcastPending ||
      this.messages.length > 0 ||
      this.messagesAfterPersist.length > 0 ||
      this.readStates.length > 0 ||
      this.log.pendingSnapshot !== null ||
      this.log.hasUnstable() ||
      !sameHardState(this.hardState(), this.lastHardState) ||
      Math.min(this.log.committed, this.log.lastIndex()) > this.log.applied
    );
  }

  ready(): Ready {
    if (this.broadcastPending) {
      this.broadcastPending = false;
      if (this.role === 'leader') this.broadcastAppend();
    }
    const hardState = this.hardState();
    const snapshot = this.log.pendingSnapshot;
    this.log.pendingSnapshot = null;
    const entries = this.log.unstableEntries();
    if (entries.length > 0) this.log.markHandedOut(entries.at(-1)!.index);
    const committedEntries = this.log.nextToApply(this.cfg.maxApplyBytes);
    if (committedEntries.length > 0) {
      this.log.appliedTo(committedEntries.at(-1)!.index);
      for (const entry of committedEntries) {
        if (entry.type === EntryType.ConfChange) this.applyConf(decodeConfChange(entry.data));
      }
    }
    const changed = !sameHardState(hardState, this.lastHardState);
    const mustSync =
      entries.length > 0 ||
      snapshot !== null ||
      hardState.term !== this.lastHardState.term ||
      hardState.vote !== this.lastHardState.vote;
    this.lastHardState = hardState;
    const rd: Ready = {
      role: this.role,
      leader: this.leader,
      term: this.term,
      hardState: changed ? hardState : null,
      mustSync,
      entries,
      snapshot,
      committedEntries,
      messages: this.messages,
      messagesAfterPersist: this.messagesAfterPersist,
      readStates: this.readStates,
    };
    this.messages = [];
    this.messagesAfterPersist = [];
    this.readStates = [];
    return rd;
  }

  /**
   * Messages that may go out now, while a Ready is still being persisted: appends of newly proposed
   * entries, heartbeats, forwarded requests. None depends on durable state (those wait in
   * messagesAfterPersist for their Ready), so followers can start writing a batch while the leader is
   * still writing the previous one.
   */
  takeMessages(): Message[] {
    if (this.broadcastPending) {
      this.broadcastPending = false;
      if (this.role === 'leader') this.broadcastAppend();
    }
    const messages = this.messages;
    this.messages = [];
    return messages;
  }

  /** The driver persisted and applied `rd`. */
  advance(rd: Ready): void {
    const last = rd.entries.at(-1);
    if (last) this.log.stableTo(last.index, last.term);
    if (rd.hardState && this.selfVoteTerm === rd.hardState.term && rd.hardState.vote === this.id) {
      // Our vote for ourselves is durable now, so it may count.
      this.selfVoteTerm = 0;
      if (this.role === 'candidate' && this.term === rd.hardState.term) this.recordVote(this.id, true);
    }
    if (this.role === 'leader' && last) {
      const self = this.progress.get(this.id);
      if (self?.maybeUpdate(this.log.persisted)) this.maybeCommit();
    }
  }

  /** Whether the node is a voter or a learner of the current configuration. */
  isMember(id: NodeId): boolean {
    return this.conf.voters.includes(id) || this.conf.learners.includes(id);
  }

  status(): RaftStatus {
    const progress: Record<NodeId, PeerStatus> = {};
    if (this.role === 'leader') {
      for (const [id, pr] of this.progress) {
        progress[id] = {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          learner: pr.isLearner,
          recentActive: pr.recentActive,
        };
      }
    }
    return {
      id: this.id,
      role: this.role,
      term: this.term,
      leader: this.leader,
      commit: this.log.committed,
      applied: this.log.applied,
      persisted: this.log.persisted,
      lastIndex: this.log.lastIndex(),
      snapshotIndex: this.log.snapshotIndex,
      conf: cloneConf(this.conf),
      leadTransferee: this.leadTransferee,
      progress,
    };
  }

  // ---------------------------------------------------------------- roles

  private becomeFollower(term: number, leader: NodeId | null): void {
    this.reset(term);
    this.role = 'follower';
    this.leader = leader;
  }

  private becomePreCandidate(): void {
    // Pre-vote does not touch term or vote: a member that cannot win changes nothing durable.
    this.role = 'precandidate';
    this.leader = null;
    this.votes = new Map();
    this.electionElapsed = 0;
    this.resetRandomizedElectionTimeout();
  }

  private becomeCandidate(): void {
    this.reset(this.term + 1);
    this.role = 'candidate';
    this.vote = this.id;
    this.selfVoteTerm = this.term;
  }

  private becomeLeader(): void {
    this.reset(this.term);
    this.role = 'leader';
    this.leader = this.id;
    for (const id of [...this.conf.voters, ...this.conf.learners]) this.addProgress(id);
    const self = this.progress.get(this.id);
    if (self) {
      self.match = this.log.persisted;
      self.becomeReplicate();
    }
    // Conf changes already in the log must be applied before this leader proposes another.
    this.pendingConfIndex = this.log.lastIndex();
    // A no-op of our term lets us commit (and learn the commit point of) everything before it.
    this.appendEntries([{ index: 0, term: 0, type: EntryType.Noop, data: new Uint8Array() }]);
  }

  private reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = null;
    }
    this.leader = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.votes = new Map();
    this.selfVoteTerm = 0;
    this.progress = new Map();
    this.outgoingSnapshots = new Map();
    this.leadTransferee = null;
    this.pendingReads = [];
    this.readsAwaitingCommit = [];
    this.uncommittedBytes = 0;
    this.broadcastPending = false;
  }

  private resetRandomizedElectionTimeout(): void {
    const n = this.cfg.electionTicks;
    this.randomizedElectionTimeout = n + Math.floor(this.cfg.random() * n);
  }

  private promotable(): boolean {
    return this.conf.voters.includes(this.id);
  }

  // ---------------------------------------------------------------- ticks

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.term, null);
        return;
      }
      this.leadTransferee = null; // a transfer that did not finish within an election timeout is abandoned
    }
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat(this.pendingReads.at(-1)?.readId ?? null);
      this.retrySnapshots();
    }
  }

  private quorumActive(): boolean {
    let active = 0;
    for (const id of this.conf.voters) {
      const pr = this.progress.get(id);
      if (id === this.id || pr?.recentActive) active++;
      if (pr && id !== this.id) pr.recentActive = false;
    }
    for (const id of this.conf.learners) {
      const pr = this.progress.get(id);
      if (pr) pr.recentActive = false;
    }
    return active >= majority(this.conf.voters.length);
  }

  // ---------------------------------------------------------------- elections

  private hup(transfer: boolean): void {
    if (this.role === 'leader' || !this.promotable()) return;
    if (this.hasUnappliedConfChange()) return; // membership may be about to change; wait for it
    if (this.cfg.preVote && !transfer) {
      this.becomePreCandidate();
      this.requestVotes('PreVote', this.term + 1, false);
      this.recordVote(this.id, true);
    } else {
      this.becomeCandidate();
      this.requestVotes('Vote', this.term, transfer);
      // The self-vote counts in advance(), once the vote is durable. A lone voter wins right there.
    }
  }

  private hasUnappliedConfChange(): boolean {
    const hi = Math.min(this.log.committed, this.log.lastIndex());
    if (hi <= this.log.applied) return false;
    return this.log.slice(this.log.applied + 1, hi + 1).some((e) => e.type === EntryType.ConfChange);
  }

  private requestVotes(type: 'PreVote' | 'Vote', term: number, transfer: boolean): void {
    for (const id of this.conf.voters) {
      if (id === this.id) continue;
      this.send({
        type,
        from: this.id,
        to: id,
        term,
        lastLogIndex: this.log.lastIndex(),
        lastLogTerm: this.log.lastTerm(),
        transfer,
      });
    }
  }

  private recordVote(from: NodeId, granted: boolean): void {
    if (!this.votes.has(from)) this.votes.set(from, granted);
    const outcome = voteOutcome(this.conf.voters, this.votes);
    if (outcome === 'won') {
      if (this.role === 'precandidate') {
        this.becomeCandidate();
        this.requestVotes('Vote', this.term, false);
      } else if (this.role === 'candidate') {
        this.becomeLeader();
      }
    } else if (outcome === 'lost') {
      this.becomeFollower(this.term, null);
    }
  }

  private handleVoteRequest(m: VoteRequest): void {
    const canVote =
      this.vote === m.from ||
      (this.vote === null && this.leader === null) ||
      (m.type === 'PreVote' && m.term > this.term);
    const upToDate =
      this.cfg.testingFaults?.grantVoteWithoutLogCheck === true || this.log.isUpToDate(m.lastLogIndex, m.lastLogTerm);
    const respType = m.type === 'PreVote' ? 'PreVoteResp' : 'VoteResp';
    if (canVote && upToDate) {
      // A granted pre-vote answers in the future term so the pre-candidate does not discard it as stale.
      this.send({ type: respType, from: this.id, to: m.from, term: m.term, reject: false });
      if (m.type === 'Vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  /** Handles a message from a higher term. Returns false when the message is to be ignored. */
  private acceptHigherTerm(m: Message): boolean {
    if (m.type === 'PreVote' || m.type === 'Vote') {
      // Leader lease: while we hear from a live leader, a disruptive candidate is ignored (thesis §4.2.3).
      const inLease = this.cfg.checkQuorum && this.leader !== null && this.electionElapsed < this.cfg.electionTicks;
      if (inLease && !m.transfer) return false;
    }
    if (m.type === 'PreVote') return true; // a pre-vote never changes our term
    if (m.type === 'PreVoteResp' && !m.reject) return true; // a granted pre-vote carries the future term
    const fromLeader = m.type === 'App' || m.type === 'Heartbeat' || m.type === 'Snap';
    this.becomeFollower(m.term, fromLeader ? m.from : null);
    return true;
  }

  private stepLowerTerm(m: Message): void {
    if ((this.cfg.checkQuorum || this.cfg.preVote) && (m.type === 'App' || m.type === 'Heartbeat')) {
      // A stale leader partitioned away: tell it our term so it steps down. Without this, with pre-vote
      // on, it could keep the rest from ever electing (thesis §9.6).
      this.send({
        type: 'AppResp',
        from: this.id,
        to: m.from,
        term: this.term,
        index: 0,
        reject: true,
        rejectHint: 0,
        hintTerm: 0,
      });
    } else if (m.type === 'PreVote') {
      this.send({ type: 'PreVoteResp', from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  // ---------------------------------------------------------------- per role

  private stepLeader(m: Message): void {
    const pr = this.progress.get(m.from);
    switch (m.type) {
      case 'AppResp':
        if (pr) this.handleAppendResponse(m, pr);
        return;
      case 'HeartbeatResp':
        if (pr) this.handleHeartbeatResponse(m, pr);
        return;
      case 'SnapAck':
        if (pr) this.handleSnapshotAck(m, pr);
        return;
      default:
        return; // stale votes and messages from a past role
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case 'App':
      case 'Heartbeat':
      case 'Snap':
        this.becomeFollower(this.term, m.from);
        this.stepFollower(m);
        return;
      case 'PreVoteResp':
        // Grants carry the term we would campaign in; rejections carry the voter's (our) term.
        if (this.role === 'precandidate' && m.term === this.term + (m.reject ? 0 : 1))
          this.recordVote(m.from, !m.reject);
        return;
      case 'VoteResp':
        if (this.role === 'candidate') this.recordVote(m.from, !m.reject);
        return;
      case 'TimeoutNow':
        return;
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case 'App':
        this.electionElapsed = 0;
        this.leader = m.from;
        this.handleAppend(m);
        return;
      case 'Heartbeat':
        this.electionElapsed = 0;
        this.leader = m.from;
        this.handleHeartbeat(m);
        return;
      case 'Snap':
        this.electionElapsed = 0;
        this.leader = m.from;
        this.handleSnapshotChunk(m);
        return;
      case 'TimeoutNow':
        // The leader hands over to us: campaign at once, skipping pre-vote and the voters' lease.
        this.hup(true);
        return;
      case 'ReadIndexResp':
        this.readStates.push({ index: m.index, readId: m.readId });
        return;
      default:
        return;
    }
  }

  /** Requests that carry term 0: forwarded proposals, reads and transfers. */
  private stepLocal(m: Message): void {
    if (this.role !== 'leader') return; // forwarded once only; the client retries on timeout
    switch (m.type) {
      case 'Prop':
        if (!this.conf.voters.includes(m.from) && !this.conf.learners.includes(m.from)) return;
        try {
          this.proposeAsLeader(m.entries);
        } catch {
          // dropped: the follower's client times out and retries
        }
        return;
      case 'ReadIndex':
        this.leaderReadIndex(m.readId, m.from);
        return;
      case 'TransferLeader':
        this.startTransfer(m.transferee);
        return;
      default:
        return;
    }
  }

  // ---------------------------------------------------------------- proposals and replication

  private proposeEntry(type: EntryType, data: Uint8Array): void {
    const entry: Entry = { index: 0, term: 0, type, data };
    if (this.role === 'leader') {
      this.proposeAsLeader([entry]);
    } else if (this.leader !== null) {
      if (type === EntryType.ConfChange) throw new ProposalDroppedError('membership changes go to the leader');
      this.send({ type: 'Prop', from: this.id, to: this.leader, term: 0, entries: [entry] });
    } else {
      throw new ProposalDroppedError('no leader known');
    }
  }

  private proposeAsLeader(entries: Entry[]): void {
    if (this.leadTransferee !== null) {
      throw new ProposalDroppedError(`leadership is being transferred to ${this.leadTransferee}`);
    }
    if (entries.some((e) => e.type === EntryType.ConfChange)) {
      if (this.pendingConfIndex > this.log.applied) throw new ProposalDroppedError('membership change pending');
    }
    const bytes = entries.reduce((sum, e) => sum + e.data.byteLength, 0);
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.maxUncommittedBytes) {
      throw new ProposalDroppedError('too much uncommitted data; followers are behind');
    }
    this.appendEntries(entries);
  }

  private appendEntries(entries: Entry[]): void {
    let index = this.log.lastIndex();
    const stamped = entries.map((e) => ({ index: ++index, term: this.term, type: e.type, data: e.data }));
    this.log.append(stamped);
    for (const e of stamped) this.uncommittedBytes += e.data.byteLength;
    // The leader's own copy counts toward commit only once persisted: see advance().
    this.broadcastPending = true;
  }

  private broadcastAppend(): void {
    for (const id of this.progress.keys()) {
      if (id !== this.id) this.fillPipeline(id, true);
    }
  }

  /** Sends appends to a follower until its inflight window is full or it has everything (pipelining). */
  private fillPipeline(to: NodeId, sendIfEmpty: boolean): void {
    if (!this.sendAppend(to, sendIfEmpty)) return;
    const pr = this.progress.get(to);
    while (pr?.state === 'replicate' && this.sendAppend(to, false)) {
      // keep going
    }
  }

  /** Sends the follower what it is missing, or a snapshot. Returns whether a message went out. */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.progress.get(to);
    if (!pr || pr.paused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined) {
      this.sendSnapshot(to, pr);
      return true;
    }
    const entries =
      pr.next <= this.log.lastIndex() ? this.log.slice(pr.next, this.log.lastIndex() + 1, this.cfg.maxSizePerMsg) : [];
    if (entries.length === 0 && !sendIfEmpty) return false;
    const msg: AppendRequest = {
      type: 'App',
      from: this.id,
      to,
      term: this.term,
      prevIndex,
      prevTerm,
      entries,
      commit: this.log.committed,
    };
    this.send(msg);
    const last = entries.at(-1);
    if (pr.state === 'replicate') {
      if (last) {
        pr.next = last.index + 1;
        pr.inflights.add(
          last.index,
          entries.reduce((sum, e) => sum + e.data.byteLength, 0),
        );
      }
    } else if (pr.state === 'probe') {
      pr.probeSent = true;
    }
    return true;
  }

  private handleAppend(m: AppendRequest): void {
    if (m.prevIndex < this.log.committed) {
      // Everything up to our commit point is known to match; answer with it so the leader moves on.
      this.send(this.appendAck(m.from, this.log.committed));
      return;
    }
    if (this.log.matchTerm(m.prevIndex, m.prevTerm)) {
      const lastNew = this.log.appendMatching(m.prevIndex, m.entries);
      this.log.commitTo(Math.min(m.commit, lastNew));
      this.send(this.appendAck(m.from, lastNew));
      return;
    }
    const hint = this.log.findConflictByTerm(Math.min(m.prevIndex, this.log.lastIndex()), m.prevTerm);
    this.send({
      type: 'AppResp',
      from: this.id,
      to: m.from,
      term: this.term,
      index: m.prevIndex,
      reject: true,
      rejectHint: hint,
      hintTerm: this.log.term(hint) ?? 0,
    });
  }

  private appendAck(to: NodeId, index: number): AppendResponse {
    return { type: 'AppResp', from: this.id, to, term: this.term, index, reject: false, rejectHint: 0, hintTerm: 0 };
  }

  private handleAppendResponse(m: AppendResponse, pr: Progress): void {
    pr.recentActive = true;
    // A follower cannot have more than we ever sent; a claim beyond our log is a broken peer. Ignore it.
    if (m.index > this.log.lastIndex()) return;
    if (m.reject) {
      // Skip back over the follower's conflicting term in one step where we can.
      let next = m.rejectHint;
      if (m.hintTerm > 0) next = this.log.findConflictByTerm(m.rejectHint, m.hintTerm);
      if (pr.maybeDecrease(m.index, next)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from, true);
      }
      return;
    }
    const wasPaused = pr.paused();
    if (!pr.maybeUpdate(m.index)) {
      if (pr.state === 'probe') pr.probeSent = false;
      if (wasPaused && !pr.paused()) this.sendAppend(m.from, false);
      return;
    }
    if (pr.state === 'probe') {
      pr.becomeReplicate();
    } else if (pr.state === 'snapshot' && pr.match >= pr.snapshotIndex) {
      this.outgoingSnapshots.delete(m.from);
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') {
      pr.inflights.freeUpTo(m.index);
    }
    // maybeCommit tells everyone about a new commit point; otherwise keep this follower's pipeline full.
    if (!this.maybeCommit()) this.fillPipeline(m.from, false);
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.sendTimeoutNow(m.from);
    }
  }

  private handleHeartbeat(m: HeartbeatRequest): void {
    this.log.commitTo(m.commit);
    this.send({ type: 'HeartbeatResp', from: this.id, to: m.from, term: this.term, readId: m.readId, tick: m.tick });
  }

  private handleHeartbeatResponse(m: HeartbeatResponse, pr: Progress): void {
    pr.recentActive = true;
    pr.heartbeatAckedTick = Math.max(pr.heartbeatAckedTick, m.tick);
    if (pr.state === 'probe') pr.probeSent = false;
    // An append may have been lost: with the window full nothing else would ever be sent. Freeing one slot
    // lets the next append through; if there is a gap the follower rejects it and we fall back to probing.
    if (pr.state === 'replicate' && pr.inflights.full()) pr.inflights.freeFirst();
    // Still behind: send even an empty append, so a follower that lost our last append (with nothing new
    // proposed since) rejects it at the gap and we resend from where it really is.
    if (pr.match < this.log.lastIndex()) this.sendAppend(m.from, true);
    if (m.readId !== null) this.ackRead(m.readId, m.from);
  }

  private broadcastHeartbeat(readId: string | null): void {
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      // Never tell a follower to commit past what it is known to have.
      const commit = Math.min(pr.match, this.log.committed);
      this.send({ type: 'Heartbeat', from: this.id, to: id, term: this.term, commit, readId, tick: this.ticks });
    }
  }

  /** Advances the commit index to what a quorum has. Returns whether it moved. */
  private maybeCommit(): boolean {
    const quorumIndex = this.cfg.testingFaults?.commitWithoutQuorum
      ? Math.max(...[...this.progress.values()].map((p) => p.match))
      : committedIndex(this.conf.voters, (id) => this.progress.get(id)?.match ?? 0);
    // Only entries of our own term are committed by counting replicas (Raft §5.4.2).
    if (quorumIndex <= this.log.committed || this.log.term(quorumIndex) !== this.term) return false;
    const previous = this.log.committed;
    this.log.commitTo(quorumIndex);
    for (const e of this.log.slice(Math.max(previous + 1, this.log.firstIndex()), quorumIndex + 1)) {
      this.uncommittedBytes = Math.max(0, this.uncommittedBytes - e.data.byteLength);
    }
    if (previous < this.log.firstIndex() || this.log.term(previous) !== this.term) {
      // First commit of this term: reads that waited for it can go now.
      this.releaseReadsAwaitingCommit();
    }
    this.broadcastAppend();
    return true;
  }

  private committedEntryInCurrentTerm(): boolean {
    return this.log.term(this.log.committed) === this.term;
  }

  // ---------------------------------------------------------------- snapshots

  private sendSnapshot(to: NodeId, pr: Progress): void {
    const snapshot = this.latestSnapshot;
    if (!snapshot) throw new Error(`log compacted below ${pr.next} but no snapshot is held`);
    pr.becomeSnapshot(snapshot.meta.index);
    this.outgoingSnapshots.set(to, snapshot);
    this.sendSnapshotChunk(to, pr, snapshot);
  }

  private sendSnapshotChunk(to: NodeId, pr: Progress, snapshot: Snapshot): void {
    const offset = pr.snapshotAcked;
    const chunk = snapshot.data.subarray(offset, offset + this.cfg.snapshotChunkBytes);
    const msg: SnapshotChunk = {
      type: 'Snap',
      from: this.id,
      to,
      term: this.term,
      meta: snapshot.meta,
      offset,
      totalBytes: snapshot.data.byteLength,
      chunk,
    };
    this.send(msg);
  }

  private handleSnapshotAck(m: SnapshotAck, pr: Progress): void {
    pr.recentActive = true;
    const snapshot = this.outgoingSnapshots.get(m.from);
    if (pr.state !== 'snapshot' || !snapshot || m.snapshotIndex !== pr.snapshotIndex) return;
    pr.snapshotAcked = m.received;
    pr.snapshotIdleTicks = 0;
    if (m.received < snapshot.data.byteLength) this.sendSnapshotChunk(m.from, pr, snapshot);
    // When all bytes arrived, the follower installs the snapshot and answers with AppResp.
  }

  /** Resends the current chunk to followers that went quiet while receiving a snapshot (lost message). */
  private retrySnapshots(): void {
    for (const [id, snapshot] of this.outgoingSnapshots) {
      const pr = this.progress.get(id);
      if (pr?.state !== 'snapshot') {
        this.outgoingSnapshots.delete(id);
        continue;
      }
      pr.snapshotIdleTicks += this.cfg.heartbeatTicks;
      if (pr.snapshotIdleTicks >= this.cfg.electionTicks) {
        pr.snapshotIdleTicks = 0;
        this.sendSnapshotChunk(id, pr, snapshot);
      }
    }
  }

  private handleSnapshotChunk(m: SnapshotChunk): void {
    const { index, term } = m.meta;
    if (index <= this.log.committed) {
      this.incomingSnapshot = null;
      this.send(this.appendAck(m.from, this.log.committed));
      return;
    }
    let incoming = this.incomingSnapshot;
    if (m.offset === 0 && (!incoming || incoming.index !== index || incoming.term !== term)) {
      incoming = { index, term, totalBytes: m.totalBytes, chunks: [], received: 0 };
      this.incomingSnapshot = incoming;
    }
    if (!incoming || incoming.index !== index || incoming.term !== term || m.offset !== incoming.received) {
      // Out of order or a different snapshot: tell the leader where we are.
      const received = incoming && incoming.index === index && incoming.term === term ? incoming.received : 0;
      this.send({ type: 'SnapAck', from: this.id, to: m.from, term: this.term, snapshotIndex: index, received });
      return;
    }
    incoming.chunks.push(m.chunk);
    incoming.received += m.chunk.byteLength;
    if (incoming.received < incoming.totalBytes) {
      this.send({
        type: 'SnapAck',
        from: this.id,
        to: m.from,
        term: this.term,
        snapshotIndex: index,
        received: incoming.received,
      });
      return;
    }
    this.incomingSnapshot = null;
    const snapshot: Snapshot = { meta: m.meta, data: concatChunks(incoming.chunks, incoming.received) };
    this.log.installSnapshot(snapshot);
    this.conf = cloneConf(m.meta.conf);
    this.latestSnapshot = snapshot;
    this.send(this.appendAck(m.from, this.log.lastIndex()));
  }

  // ---------------------------------------------------------------- membership

  private applyConf(change: ConfChange): void {
    this.conf = applyConfChange(this.conf, change);
    if (this.role !== 'leader') return;
    if (change.type === 'remove') {
      this.progress.delete(change.node);
      this.outgoingSnapshots.delete(change.node);
      if (change.node === this.id) {
        // A leader that removed itself steps down once the change is committed.
        this.becomeFollower(this.term, null);
        return;
      }
    } else {
      const existing = this.progress.get(change.node);
      const learner = change.type === 'addLearner';
      if (!existing || existing.isLearner !== learner) this.addProgress(change.node, existing);
    }
    if (this.leadTransferee !== null && !this.conf.voters.includes(this.leadTransferee)) this.leadTransferee = null;
    // Commit may move: the quorum changed.
    this.maybeCommit();
  }

  private addProgress(id: NodeId, previous?: Progress): void {
    const learner = this.conf.learners.includes(id);
    const pr = new Progress(this.log.lastIndex() + 1, learner, this.cfg.maxInflightMsgs, this.cfg.maxInflightBytes);
    if (previous) {
      pr.match = previous.match;
      pr.next = previous.next;
    }
    this.progress.set(id, pr);
  }

  // ---------------------------------------------------------------- leadership transfer

  private startTransfer(transferee: NodeId): void {
    if (transferee === this.id || !this.conf.voters.includes(transferee)) return;
    if (this.leadTransferee === transferee) return;
    this.leadTransferee = transferee;
    this.electionElapsed = 0; // the transfer must finish within one election timeout
    const pr = this.progress.get(transferee);
    if (pr && pr.match === this.log.lastIndex()) this.sendTimeoutNow(transferee);
    else this.sendAppend(transferee, true);
  }

  private sendTimeoutNow(to: NodeId): void {
    // Voters may now elect the transferee despite their lease on us: our own lease ends here.
    for (const pr of this.progress.values()) pr.heartbeatAckedTick = Number.NEGATIVE_INFINITY;
    this.send({ type: 'TimeoutNow', from: this.id, to, term: this.term });
  }

  // ---------------------------------------------------------------- linearizable reads

  private leaderReadIndex(readId: string, from: NodeId): void {
    if (!this.committedEntryInCurrentTerm()) {
      // Our commit index may be behind the previous leader's until we commit an entry of our own term.
      this.readsAwaitingCommit.push({ readId, from });
      return;
    }
    const index = this.log.committed;
    if (this.conf.voters.length === 1 || (this.cfg.readOnly === 'lease' && this.leaseValid())) {
      this.answerRead(readId, from, index);
      return;
    }
    this.pendingReads.push({ readId, index, from, acks: new Set([this.id]) });
    this.broadcastHeartbeat(readId);
  }

  /**
   * Whether no other leader can exist right now. A follower that got our heartbeat sent at tick t ignores
   * vote requests for electionTicks of its own ticks after receiving it, so once a quorum acknowledged
   * heartbeats sent at or after t, nobody else can win before about t + electionTicks. Two ticks of margin
   * cover tick phase differences between members; clocks must not drift faster than that (lease reads
   * trade that assumption for a round trip per read; 'safe' mode makes none).
   */
  private leaseValid(): boolean {
    if (this.leadTransferee !== null) return false;
    const ackedTicks = this.conf.voters.map((id) =>
      id === this.id ? this.ticks : (this.progress.get(id)?.heartbeatAckedTick ?? Number.NEGATIVE_INFINITY),
    );
    ackedTicks.sort((a, b) => b - a);
    const quorumTick = ackedTicks[majority(this.conf.voters.length) - 1] ?? Number.NEGATIVE_INFINITY;
    return quorumTick + this.cfg.electionTicks - 2 > this.ticks;
  }

  private releaseReadsAwaitingCommit(): void {
    const waiting = this.readsAwaitingCommit;
    this.readsAwaitingCommit = [];
    for (const read of waiting) this.leaderReadIndex(read.readId, read.from);
  }

  private ackRead(readId: string, from: NodeId): void {
    const position = this.pendingReads.findIndex((r) => r.readId === readId);
    if (position < 0) return;
    const read = this.pendingReads[position]!;
    if (this.conf.voters.includes(from)) read.acks.add(from);
    const votersAcked = this.conf.voters.filter((id) => read.acks.has(id)).length;
    if (votersAcked < majority(this.conf.voters.length)) return;
    // A quorum confirmed we were leader after this read arrived; that covers every earlier read too.
    const released = this.pendingReads.splice(0, position + 1);
    for (const r of released) this.answerRead(r.readId, r.from, r.index);
  }

  private answerRead(readId: string, from: NodeId, index: number): void {
    if (from === this.id) this.readStates.push({ index, readId });
    else this.send({ type: 'ReadIndexResp', from: this.id, to: from, term: this.term, readId, index });
  }

  // ---------------------------------------------------------------- helpers

  private send(m: Message): void {
    if (AFTER_PERSIST.has(m.type)) this.messagesAfterPersist.push(m);
    else this.messages.push(m);
  }

  private hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

function concatChunks(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

function validateConfig(cfg: RaftConfig): void {
  const positive: (keyof RaftConfig)[] = [
    'electionTicks',
    'heartbeatTicks',
    'maxSizePerMsg',
    'maxInflightMsgs',
    'maxInflightBytes',
    'maxUncommittedBytes',
    'maxApplyBytes',
    'snapshotChunkBytes',
  ];
  for (const key of positive) {
    const value = cfg[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
      throw new Error(`raft config: ${key} must be a positive integer, got ${String(value)}`);
    }
  }
  if (cfg.heartbeatTicks >= cfg.electionTicks) {
    throw new Error(
      `raft config: heartbeatTicks (${cfg.heartbeatTicks}) must be below electionTicks (${cfg.electionTicks})`,
    );
  }
  if (cfg.readOnly === 'lease' && !cfg.checkQuorum) {
    throw new Error('raft config: lease reads need checkQuorum, or a deposed leader could serve stale reads');
  }
  if (cfg.id === '') throw new Error('raft config: id must not be empty');
}
