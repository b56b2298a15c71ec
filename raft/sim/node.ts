// One simulated member: the real Raft core, a model of its disk, and a key-value state machine.
// It follows the driver's Ready contract exactly, with disk writes that take simulated time and that a
// crash can lose (or leave half done).
import type { KvInput } from '../check/kv-model.ts';
import type { RaftConfig, Ready } from '../core/raft.ts';
import { Raft } from '../core/raft.ts';
import type { PersistedState } from '../storage/types.ts';
import type { ConfState, Entry, HardState, NodeId, Snapshot } from '../types.ts';
import { EntryType, emptyHardState } from '../types.ts';
import type { EventQueue } from './event-queue.ts';
import type { SimNetwork } from './network.ts';
import type { Prng } from './prng.ts';
import type { SafetyMonitor } from './safety.ts';

export interface KvCommand {
  client: number;
  op: number;
  input: KvInput;
}

/** What a member has on stable storage. */
interface Disk {
  hardState: HardState;
  snapshot: Snapshot | null;
  entries: Entry[];
}

/** The world a member lives in. */
export interface SimHost {
  queue: EventQueue;
  random: Prng;
  network: SimNetwork;
  monitor: SafetyMonitor;
  diskDelay(): number;
  compactEvery: number;
  commandApplied(node: SimNode, command: KvCommand): void;
  readReady(node: SimNode, readId: string): void;
  trace(line: string): void;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeCommand(command: KvCommand): Uint8Array {
  return encoder.encode(JSON.stringify(command));
}

export class SimNode {
  readonly id: NodeId;
  raft: Raft | null = null;
  kv = new Map<string, string>();
  /**
   * Client sessions (Raft thesis §6.3): the highest op applied per client. A command can reach the log twice
   * (a forwarded proposal duplicated in the network, a client retry), and must take effect once.
   */
  sessions = new Map<number, number>();
  /** Index of the last entry applied to kv. */
  smApplied = 0;
  /** Bumped on every crash: events scheduled for an earlier life are ignored. */
  incarnation = 0;
  retired = false;
  private disk: Disk = { hardState: emptyHardState(), snapshot: null, entries: [] };
  private busy = false;
  private inflight: Ready | null = null;
  private pendingReads: { readId: string; index: number }[] = [];
  private lastRole = 'follower';
  private readonly host: SimHost;
  private readonly config: RaftConfig;
  private readonly bootstrap: ConfState | undefined;

  constructor(id: NodeId, host: SimHost, config: RaftConfig, bootstrap?: ConfState) {
    this.id = id;
    this.host = host;
    this.config = config;
    this.bootstrap = bootstrap;
  }

  get alive(): boolean {
    return this.raft !== null;
  }

  start(): void {
    const persisted: PersistedState = {
      hardState: { ...this.disk.hardState },
      snapshot: this.disk.snapshot,
      entries: this.disk.entries.slice(),
    };
    this.raft = new Raft(this.config, persisted, this.bootstrap);
    this.restoreState(this.disk.snapshot?.data);
    this.smApplied = this.disk.snapshot?.meta.index ?? 0;
    this.busy = false;
    this.inflight = null;
    this.pendingReads = [];
    this.lastRole = 'follower';
    this.pump();
  }

  crash(): void {
    if (this.inflight && this.host.random.chance(0.5)) {
      // The crash interrupted the write: part of it reached the disk, but nothing was acknowledged.
      const rd = this.inflight;
      const kept = this.host.random.int(0, rd.entries.length);
      const torn: Ready = {
        ...rd,
        entries: rd.entries.slice(0, kept),
        hardState: this.host.random.chance(0.5) ? rd.hardState : null,
      };
      this.writeToDisk(torn);
    }
    this.incarnation++;
    this.raft = null;
    this.busy = false;
    this.inflight = null;
    this.pendingReads = [];
  }

  tick(): void {
    this.raft?.tick();
    this.pump();
  }

  /** Takes the next Ready, if the previous one is done, and starts its disk write. */
  pump(): void {
    const raft = this.raft;
    if (!raft) return;
    if (this.busy) {
      // Like the real driver: while a Ready is being written, what may go out at once does.
      for (const m of raft.takeMessages()) this.host.network.send(m);
      return;
    }
    if (!raft.hasReady()) return;
    const rd = raft.ready();
    if (rd.role === 'leader') this.host.monitor.observeLeader(rd.term, this.id);
    if (rd.role !== this.lastRole) {
      this.host.trace(`${this.id} ${rd.role} term ${rd.term}`);
      this.lastRole = rd.role;
    }
    for (const m of rd.messages) this.host.network.send(m);
    // Like the real driver: committed entries (persisted by earlier Readies) are applied while this
    // Ready's write is in flight, unless a snapshot has to be installed first.
    if (!rd.snapshot) for (const entry of rd.committedEntries) this.apply(entry);
    this.busy = true;
    this.inflight = rd;
    const incarnation = this.incarnation;
    this.host.queue.after(this.host.diskDelay(), () => {
      if (incarnation === this.incarnation) this.complete(raft, rd);
    });
  }

  private complete(raft: Raft, rd: Ready): void {
    this.writeToDisk(rd);
    this.host.monitor.observePersisted(this.id, rd.entries);
    for (const m of rd.messagesAfterPersist) this.host.network.send(m);
    if (rd.snapshot) {
      this.restoreState(rd.snapshot.data);
      this.smApplied = rd.snapshot.meta.index;
      for (const entry of rd.committedEntries) this.apply(entry);
    }
    for (const read of rd.readStates) this.pendingReads.push(read);
    raft.advance(rd);
    this.busy = false;
    this.inflight = null;
    this.serveReads();
    this.maybeCompact(raft);
    this.pump();
  }

  private apply(entry: Entry): void {
    this.host.monitor.observeApplied(this.id, entry);
    this.smApplied = entry.index;
    if (entry.type !== EntryType.Normal) return;
    const command = JSON.parse(decoder.decode(entry.data)) as KvCommand;
    if ((this.sessions.get(command.client) ?? 0) >= command.op) return;
    this.sessions.set(command.client, command.op);
    const { input } = command;
    if (input.op === 'put') this.kv.set(input.key, input.value);
    if (input.op === 'append') this.kv.set(input.key, (this.kv.get(input.key) ?? '') + input.value);
    this.host.commandApplied(this, command);
  }

  private serveReads(): void {
    const ready = this.pendingReads.filter((r) => r.index <= this.smApplied);
    this.pendingReads = this.pendingReads.filter((r) => r.index > this.smApplied);
    for (const read of ready) this.host.readReady(this, read.readId);
  }

  private maybeCompact(raft: Raft): void {
    const status = raft.status();
    if (this.smApplied !== status.applied || status.persisted < this.smApplied) return;
    if (this.smApplied - status.snapshotIndex < this.host.compactEvery) return;
    const snapshot = raft.compact(
      this.smApplied,
      encoder.encode(JSON.stringify({ kv: [...this.kv], sessions: [...this.sessions] })),
    );
    this.disk.snapshot = snapshot;
    this.disk.entries = this.disk.entries.filter((e) => e.index > snapshot.meta.index);
  }

  private restoreState(data: Uint8Array | undefined): void {
    const state = data
      ? (JSON.parse(decoder.decode(data)) as { kv: [string, string][]; sessions: [number, number][] })
      : { kv: [], sessions: [] };
    this.kv = new Map(state.kv);
    this.sessions = new Map(state.sessions);
  }

  private writeToDisk(rd: Ready): void {
    const disk = this.disk;
    if (rd.snapshot) {
      const { index, term } = rd.snapshot.meta;
      const atIndex = disk.entries.find((e) => e.index === index);
      disk.entries = atIndex?.term === term ? disk.entries.filter((e) => e.index > index) : [];
      disk.snapshot = rd.snapshot;
    }
    const first = rd.entries[0];
    if (first) disk.entries = disk.entries.filter((e) => e.index < first.index).concat(rd.entries);
    // Like the real driver: a Ready that only moved the commit index is not written.
    if (rd.hardState && rd.mustSync) disk.hardState = { ...rd.hardState };
  }
}
