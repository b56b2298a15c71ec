// A synchronous in-memory cluster of Raft cores for unit tests (in the style of etcd's `network`
// harness): messages are delivered until nothing is left to say, persistence is immediate, and links can
// be cut. Deterministic: randomness is a seeded PRNG.
import type { Message, MessageType } from '../../raft/core/messages.ts';
import { defaultRaftConfig, Raft, type RaftConfig, type Ready } from '../../raft/core/raft.ts';
import { createPrng } from '../../raft/sim/prng.ts';
import type { PersistedState } from '../../raft/storage/types.ts';
import { type Entry, EntryType, emptyHardState, type NodeId, type Snapshot } from '../../raft/types.ts';

export interface HarnessMember {
  raft: Raft;
  applied: Entry[];
  disk: PersistedState;
  readStates: { index: number; readId: string }[];
  lastSnapshot: Snapshot | null;
}

export class Harness {
  readonly members = new Map<NodeId, HarnessMember>();
  private readonly cuts = new Set<string>();
  private readonly dropTypes = new Set<MessageType>();
  /** Every message delivered, for assertions on what was said. */
  readonly delivered: Message[] = [];
  private readonly random = createPrng(42);

  constructor(ids: NodeId[], overrides: Partial<RaftConfig> = {}, learners: NodeId[] = []) {
    for (const id of [...ids, ...learners]) this.add(id, overrides, { voters: ids, learners });
    this.stabilize(); // persist and apply the bootstrap membership
  }

  add(
    id: NodeId,
    overrides: Partial<RaftConfig> = {},
    bootstrap?: { voters: NodeId[]; learners: NodeId[] },
  ): HarnessMember {
    const disk: PersistedState = { hardState: emptyHardState(), snapshot: null, entries: [] };
    const config = { ...defaultRaftConfig(id, () => this.random.next()), ...overrides, id };
    const member: HarnessMember = {
      raft: new Raft(config, null, bootstrap),
      applied: [],
      disk,
      readStates: [],
      lastSnapshot: null,
    };
    this.members.set(id, member);
    return member;
  }

  /**
   * Restarts a member from what it persisted (a crash loses nothing that was persisted); forceNewCluster as
   * `swarmd run --force-new-cluster` does.
   */
  restart(id: NodeId, overrides: Partial<RaftConfig> = {}, forceNewCluster = false): HarnessMember {
    const old = this.get(id);
    const config = { ...defaultRaftConfig(id, () => this.random.next()), ...overrides, id };
    const persisted = {
      hardState: { ...old.disk.hardState },
      snapshot: old.disk.snapshot,
      entries: old.disk.entries.slice(),
    };
    const raft = new Raft(config, persisted, undefined, forceNewCluster);
    const member: HarnessMember = {
      raft,
      applied: [],
      disk: old.disk,
      readStates: [],
      lastSnapshot: old.disk.snapshot,
    };
    this.members.set(id, member);
    return member;
  }

  get(id: NodeId): HarnessMember {
    const m = this.members.get(id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  cut(a: NodeId, b: NodeId): void {
    this.cuts.add(`${a}>${b}`);
    this.cuts.add(`${b}>${a}`);
  }

  isolate(id: NodeId): void {
    for (const other of this.members.keys()) if (other !== id) this.cut(id, other);
  }

  heal(): void {
    this.cuts.clear();
    this.dropTypes.clear();
  }

  drop(type: MessageType): void {
    this.dropTypes.add(type);
  }

  /** Processes Readies and delivers messages until the cluster is quiet. */
  stabilize(maxRounds = 10_000): void {
    for (let round = 0; round < maxRounds; round++) {
      const outbox: Message[] = [];
      for (const member of this.members.values()) {
        while (member.raft.hasReady()) outbox.push(...this.process(member));
      }
      if (outbox.length === 0) return;
      for (const m of outbox) this.deliver(m);
    }
    throw new Error('cluster did not stabilize');
  }

  tick(id: NodeId, times = 1): void {
    for (let i = 0; i < times; i++) this.get(id).raft.tick();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) {
      for (const m of this.members.values()) m.raft.tick();
      this.stabilize();
    }
  }

  /** Runs ticks until some member is leader; returns it. */
  elect(id: NodeId): HarnessMember {
    const member = this.get(id);
    this.stabilize();
    member.raft.campaign();
    this.stabilize();
    return member;
  }

  leader(): NodeId | null {
    for (const [id, m] of this.members) if (m.raft.status().role === 'leader') return id;
    return null;
  }

  appliedData(id: NodeId): string[] {
    return this.get(id)
      .applied.filter((e) => e.type === EntryType.Normal)
      .map((e) => new TextDecoder().decode(e.data));
  }

  private process(member: HarnessMember): Message[] {
    const rd: Ready = member.raft.ready();
    const disk = member.disk;
    if (rd.snapshot) {
      const { index, term } = rd.snapshot.meta;
      const at = disk.entries.find((e) => e.index === index);
      disk.entries = at?.term === term ? disk.entries.filter((e) => e.index > index) : [];
      disk.snapshot = rd.snapshot;
      member.lastSnapshot = rd.snapshot;
    }
    const first = rd.entries[0];
    if (first) disk.entries = disk.entries.filter((e) => e.index < first.index).concat(rd.entries);
    if (rd.hardState) disk.hardState = { ...rd.hardState };
    member.applied.push(...rd.committedEntries);
    member.readStates.push(...rd.readStates);
    member.raft.advance(rd);
    return [...rd.messages, ...rd.messagesAfterPersist];
  }

  private deliver(m: Message): void {
    if (this.cuts.has(`${m.from}>${m.to}`) || this.dropTypes.has(m.type)) return;
    const target = this.members.get(m.to);
    if (!target) return;
    this.delivered.push(m);
    target.raft.step(m);
  }
}

export const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
