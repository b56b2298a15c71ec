// RaftNode: the pure core plus everything that does I/O — a timer for ticks, a transport, durable storage,
// and a state machine. It is what swarmd's managers run.
//
// One Ready is processed at a time: while its fsync is in flight, new proposals accumulate in the core and
// all go into the next Ready, so one fsync covers every entry that arrived meanwhile (group commit).
import { randomUUID } from 'node:crypto';
import { Packr } from 'msgpackr';
import type { ConfChange } from '../core/conf-change.ts';
import type { Message } from '../core/messages.ts';
import {
  defaultRaftConfig,
  ProposalDroppedError,
  Raft,
  type RaftConfig,
  type RaftStatus,
  type Ready,
} from '../core/raft.ts';
import type { RaftStorage } from '../storage/types.ts';
import { type ConfState, type Entry, EntryType, type NodeId } from '../types.ts';
import type { RaftTransport } from './transport.ts';

/** The application's replicated state. apply() runs in log order on every member. */
export interface StateMachine {
  /** Applies one committed command; the result is returned to the proposer on the member that proposed it. */
  apply(command: Uint8Array, index: number): unknown;
  /** The whole state, for log compaction and for members that fall behind. */
  snapshot(): Uint8Array | Promise<Uint8Array>;
  restore(data: Uint8Array): void | Promise<void>;
}

export interface RaftNodeOptions {
  id: NodeId;
  storage: RaftStorage;
  transport: RaftTransport;
  stateMachine: StateMachine;
  /** Founding members pass the initial membership; joiners pass nothing and wait for the leader. */
  bootstrap?: ConfState;
  /** Start as the only voter, whatever the persisted membership says (Raft's forceSingleMember). */
  forceNewCluster?: boolean;
  /** Milliseconds per tick (default 50: 500-1000 ms election timeout with the default 10 ticks). */
  tickMs?: number;
  /** Take a snapshot and compact the log after this many applied entries (default 10,000). */
  snapshotEvery?: number;
  /** How long propose() and read() wait before failing with an unknown outcome (default 10 s). */
  requestTimeoutMs?: number;
  raft?: Partial<Omit<RaftConfig, 'id'>>;
  log?: (level: 'info' | 'warn' | 'error', message: string) => void;
}

export class RaftTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what} timed out after ${ms} ms; it may or may not have taken effect`);
    this.name = 'RaftTimeoutError';
  }
}

export class RaftStoppedError extends Error {
  constructor() {
    super('raft node is stopped');
    this.name = 'RaftStoppedError';
  }
}

/** Command envelope: who proposed it, so the result reaches them and a duplicate applies once. */
interface Envelope {
  /** Proposer's session: a member id plus a random id per process start. */
  s: string;
  /** Sequence number within the session, increasing. */
  q: number;
  d: Uint8Array;
}

interface Pending<T> {
  resolve: (value: T) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

const packr = new Packr({ useRecords: false });

/** Driver snapshots wrap the application's with the session table, which is replicated state too. */
interface DriverSnapshot {
  sessions: [string, number][];
  app: Uint8Array;
}

export interface RaftMetrics {
  proposals: number;
  applied: number;
  readies: number;
  fsyncBatches: number;
  /** Total time spent waiting for storage writes to be durable. */
  persistMs: number;
  entriesPersisted: number;
  snapshotsTaken: number;
  snapshotsInstalled: number;
  messagesSent: number;
  messagesReceived: number;
  invalidMessages: number;
}

export class RaftNode {
  readonly id: NodeId;
  private readonly raft: Raft;
  private readonly opts: Required<Pick<RaftNodeOptions, 'tickMs' | 'snapshotEvery' | 'requestTimeoutMs'>> &
    RaftNodeOptions;
  private readonly session = `${randomUUID()}`;
  private nextSeq = 1;
  private readonly pendingProposals = new Map<number, Pending<unknown>>();
  private readonly pendingReads = new Map<string, Pending<void>>();
  /** Read points granted by the leader, waiting for the state machine to catch up. */
  private readsAwaitingApply: { readId: string; index: number }[] = [];
  /** Highest sequence applied per proposer session (Raft thesis §6.3): a duplicate takes effect once. */
  private sessions = new Map<string, number>();
  private appliedIndex: number;
  private lastSnapshotIndex: number;
  private processing = false;
  private scheduled = false;
  private stopped = false;
  private ticker: NodeJS.Timeout | null = null;
  private readonly leaderWaiters = new Set<() => void>();
  readonly metrics: RaftMetrics = {
    proposals: 0,
    applied: 0,
    readies: 0,
    fsyncBatches: 0,
    persistMs: 0,
    entriesPersisted: 0,
    snapshotsTaken: 0,
    snapshotsInstalled: 0,
    messagesSent: 0,
    messagesReceived: 0,
    invalidMessages: 0,
  };

  private constructor(opts: RaftNodeOptions, raft: Raft, appliedIndex: number) {
    this.opts = { tickMs: 50, snapshotEvery: 10_000, requestTimeoutMs: 10_000, ...opts };
    this.id = opts.id;
    this.raft = raft;
    this.appliedIndex = appliedIndex;
    this.lastSnapshotIndex = appliedIndex;
  }

  /** Loads durable state, restores the state machine from the latest snapshot, and starts ticking. */
  static async start(opts: RaftNodeOptions): Promise<RaftNode> {
    const persisted = await opts.storage.load();
    const config: RaftConfig = { ...defaultRaftConfig(opts.id, Math.random), ...opts.raft, id: opts.id };
    const raft = new Raft(config, persisted, opts.bootstrap, opts.forceNewCluster ?? false);
    const node = new RaftNode(opts, raft, persisted.snapshot?.meta.index ?? 0);
    if (persisted.snapshot) await node.restoreSnapshot(persisted.snapshot.data);
    opts.transport.listen((m) => node.receive(m));
    opts.transport.onUnreachable = (peer) => {
      raft.reportUnreachable(peer);
      node.schedule();
    };
    node.ticker = setInterval(() => {
      raft.tick();
      node.schedule();
    }, node.opts.tickMs);
    node.schedule();
    return node;
  }

  // ------------------------------------------------------------------ public API

  /** Replicates a command; resolves with the state machine's result once it is applied here. */
  async propose(command: Uint8Array): Promise<unknown> {
    const seq = this.nextSeq++;
    const data = packr.pack({ s: this.session, q: seq, d: command } satisfies Envelope);
    await this.submit(() => this.raft.propose(data));
    this.metrics.proposals++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingProposals.delete(seq);
        reject(new RaftTimeoutError('proposal', this.opts.requestTimeoutMs));
      }, this.opts.requestTimeoutMs);
      this.pendingProposals.set(seq, { resolve, reject, timer });
      this.schedule();
    });
  }

  /**
   * Linearizable read barrier: resolves once this member's state machine reflects every write that
   * completed before read() was called. Read the state machine right after it resolves.
   */
  async read(): Promise<void> {
    const readId = `${this.session}:${this.nextSeq++}`;
    await this.submit(() => this.raft.readIndex(readId));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingReads.delete(readId);
        reject(new RaftTimeoutError('read', this.opts.requestTimeoutMs));
      }, this.opts.requestTimeoutMs);
      this.pendingReads.set(readId, { resolve, reject, timer });
      this.schedule();
    });
  }

  /**
   * Hands a request to the core. Right after a start or during an election no leader is known yet; rather
   * than failing at once, wait for one (within the request timeout) and try again.
   */
  private async submit(request: () => void): Promise<void> {
    if (this.stopped) throw new RaftStoppedError();
    try {
      request();
    } catch (error) {
      if (!(error instanceof ProposalDroppedError) || this.raft.status().leader !== null) throw error;
      await this.waitForLeader(this.opts.requestTimeoutMs);
      if (this.stopped) throw new RaftStoppedError();
      request();
    }
  }

  /** Proposes a membership change on the leader; resolves once it is applied here. */
  async changeMembership(change: ConfChange): Promise<void> {
    if (this.stopped) throw new RaftStoppedError();
    this.raft.proposeConfChange(change);
    this.schedule();
    const deadline = Date.now() + this.opts.requestTimeoutMs;
    for (;;) {
      const conf = this.raft.status().conf;
      const done =
        change.type === 'remove'
          ? !conf.voters.includes(change.node) && !conf.learners.includes(change.node)
          : (change.type === 'addVoter' ? conf.voters : conf.learners).includes(change.node);
      if (done) return;
      if (Date.now() > deadline) throw new RaftTimeoutError('membership change', this.opts.requestTimeoutMs);
      await new Promise((r) => setTimeout(r, this.opts.tickMs));
    }
  }

  transferLeadership(to: NodeId): void {
    this.raft.transferLeadership(to);
    this.schedule();
  }

  /** Starts an election at once (e.g. a member that knows the leader's process is gone). */
  campaign(): void {
    this.raft.campaign();
    this.schedule();
  }

  status(): RaftStatus {
    return this.raft.status();
  }

  isLeader(): boolean {
    return this.raft.status().role === 'leader';
  }

  /** Whether the node is a voter or a learner of the current configuration. */
  isMember(id: string): boolean {
    return this.raft.isMember(id);
  }

  /** Resolves when this member sees some leader (tests and start-up). */
  async waitForLeader(timeoutMs = 10_000): Promise<NodeId> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const leader = this.raft.status().leader;
      if (leader !== null) return leader;
      await new Promise<void>((resolve) => {
        this.leaderWaiters.add(resolve);
        setTimeout(resolve, this.opts.tickMs);
      });
    }
    throw new RaftTimeoutError('waiting for a leader', timeoutMs);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    const error = new RaftStoppedError();
    for (const p of this.pendingProposals.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    for (const p of this.pendingReads.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    this.pendingProposals.clear();
    this.pendingReads.clear();
    while (this.processing) await new Promise((r) => setTimeout(r, 1));
    await this.opts.transport.close();
    await this.opts.storage.close();
  }

  // ------------------------------------------------------------------ the Ready loop

  private receive(m: Message): void {
    if (this.stopped) return;
    this.metrics.messagesReceived++;
    try {
      this.raft.step(m);
    } catch (error) {
      // A message that breaks an invariant (a broken or hostile peer) must not take the member down.
      this.metrics.invalidMessages++;
      this.opts.log?.('warn', `raft: dropped message ${m.type} from ${m.from}: ${(error as Error).message}`);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      // While a Ready is being written, what may go out at once does (see Raft.takeMessages).
      if (this.processing) this.sendAll(this.raft.takeMessages());
      void this.processReady();
    });
  }

  private async processReady(): Promise<void> {
    if (this.processing || this.stopped || !this.raft.hasReady()) return;
    this.processing = true;
    try {
      const rd = this.raft.ready();
      this.metrics.readies++;
      this.notifyLeader(rd);
      this.sendAll(rd.messages);
      if (rd.snapshot) {
        // A leader's snapshot replaces the state machine: durable first, then restored, then what follows.
        await this.persist(rd);
        await this.installSnapshot(rd.snapshot.meta.index, rd.snapshot.data);
        await this.applyEntries(rd.committedEntries);
      } else {
        // Committed entries were persisted by earlier Readies, so they are applied while this Ready's own
        // write is in flight: no request waits for an fsync of entries that are not its own.
        await Promise.all([this.persist(rd), this.applyEntries(rd.committedEntries)]);
      }
      this.sendAll(rd.messagesAfterPersist);
      for (const rs of rd.readStates) this.readsAwaitingApply.push(rs);
      this.raft.advance(rd);
      this.releaseReads();
      await this.maybeSnapshot();
    } catch (error) {
      // Storage failing under us: nothing acknowledged is lost, but this member cannot go on safely.
      this.opts.log?.('error', `raft: stopping after I/O failure: ${(error as Error).message}`);
      this.processing = false;
      await this.stop().catch(() => {});
      return;
    }
    this.processing = false;
    if (this.raft.hasReady()) this.schedule();
  }

  private async persist(rd: Ready): Promise<void> {
    if (rd.snapshot) await this.opts.storage.saveSnapshot(rd.snapshot);
    if (rd.mustSync && (rd.entries.length > 0 || rd.hardState)) {
      const started = performance.now();
      await this.opts.storage.save({ entries: rd.entries, ...(rd.hardState ? { hardState: rd.hardState } : {}) });
      this.metrics.persistMs += performance.now() - started;
      this.metrics.fsyncBatches++;
      this.metrics.entriesPersisted += rd.entries.length;
    } else if (rd.hardState) {
      // Only the commit index moved: no fsync needed (see Ready.mustSync), but it is written, as etcd does. A member
      // applies configuration changes once they are committed, and after a restart it knows only the commit index
      // it wrote: were it not written, members that come back after the whole cluster stopped could hold an older
      // membership (one where some of them are not voters yet) until a leader tells them more, and a majority of
      // the real membership might then fail to elect one. Written without fsync, it survives a killed process.
      await this.opts.storage.save({ entries: [], hardState: rd.hardState, sync: false });
    }
  }

  private sendAll(messages: Message[]): void {
    if (messages.length === 0) return;
    const byPeer = new Map<NodeId, Message[]>();
    for (const m of messages) {
      const list = byPeer.get(m.to);
      if (list) list.push(m);
      else byPeer.set(m.to, [m]);
    }
    for (const [peer, list] of byPeer) {
      this.metrics.messagesSent += list.length;
      this.opts.transport.send(peer, list);
    }
  }

  private async applyEntries(entries: Entry[]): Promise<void> {
    let sliceStart = performance.now();
    for (const entry of entries) {
      this.appliedIndex = entry.index;
      this.metrics.applied++;
      if (entry.type === EntryType.Normal) this.applyCommand(entry);
      // Keep the event loop responsive while applying a large batch.
      if (performance.now() - sliceStart > 5) {
        await new Promise((r) => setImmediate(r));
        sliceStart = performance.now();
      }
    }
  }

  private applyCommand(entry: Entry): void {
    let envelope: Envelope;
    try {
      envelope = packr.unpack(entry.data) as Envelope;
    } catch {
      this.opts.log?.('error', `raft: entry ${entry.index} is not a command envelope; skipped on every member`);
      return;
    }
    const last = this.sessions.get(envelope.s) ?? 0;
    const mine = envelope.s === this.session ? this.pendingProposals.get(envelope.q) : undefined;
    if (envelope.q <= last) {
      // Already applied (duplicate), or overtaken by a later proposal of the same session: no effect.
      if (mine) this.settle(envelope.q, mine, new ProposalDroppedError('duplicate or superseded proposal'));
      return;
    }
    this.sessions.set(envelope.s, envelope.q);
    let result: unknown;
    let failure: Error | undefined;
    try {
      result = this.opts.stateMachine.apply(envelope.d, entry.index);
    } catch (error) {
      // Deterministic application errors are part of the result, identical on every member.
      failure = error instanceof Error ? error : new Error(String(error));
    }
    if (mine) this.settle(envelope.q, mine, failure, result);
  }

  private settle(seq: number, pending: Pending<unknown>, error?: Error, result?: unknown): void {
    clearTimeout(pending.timer);
    this.pendingProposals.delete(seq);
    if (error) pending.reject(error);
    else pending.resolve(result);
  }

  private releaseReads(): void {
    if (this.readsAwaitingApply.length === 0) return;
    const waiting: { readId: string; index: number }[] = [];
    for (const rs of this.readsAwaitingApply) {
      if (rs.index > this.appliedIndex) {
        waiting.push(rs);
        continue;
      }
      const pending = this.pendingReads.get(rs.readId);
      if (!pending) continue;
      clearTimeout(pending.timer);
      this.pendingReads.delete(rs.readId);
      pending.resolve();
    }
    this.readsAwaitingApply = waiting;
  }

  private async maybeSnapshot(): Promise<void> {
    const status = this.raft.status();
    if (status.applied !== this.appliedIndex || status.persisted < this.appliedIndex) return;
    if (this.appliedIndex - this.lastSnapshotIndex < this.opts.snapshotEvery) return;
    const app = await this.opts.stateMachine.snapshot();
    // A leader's snapshot may have been installed while we awaited; then this one is stale.
    const now = this.raft.status();
    if (now.applied !== this.appliedIndex || now.persisted < this.appliedIndex) return;
    const data = packr.pack({ sessions: [...this.sessions], app } satisfies DriverSnapshot);
    const snapshot = this.raft.compact(this.appliedIndex, data);
    await this.opts.storage.saveSnapshot(snapshot);
    this.lastSnapshotIndex = snapshot.meta.index;
    this.metrics.snapshotsTaken++;
  }

  private async installSnapshot(index: number, data: Uint8Array): Promise<void> {
    await this.restoreSnapshot(data);
    this.appliedIndex = index;
    this.lastSnapshotIndex = index;
    this.metrics.snapshotsInstalled++;
  }

  private async restoreSnapshot(data: Uint8Array): Promise<void> {
    const snapshot = packr.unpack(data) as DriverSnapshot;
    this.sessions = new Map(snapshot.sessions);
    await this.opts.stateMachine.restore(snapshot.app);
  }

  private notifyLeader(rd: Ready): void {
    if (rd.leader === null || this.leaderWaiters.size === 0) return;
    for (const wake of this.leaderWaiters) wake();
    this.leaderWaiters.clear();
  }
}
