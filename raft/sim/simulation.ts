// One seeded simulation run: a Raft cluster serving a key-value store to concurrent clients while faults
// are injected, then a healing phase. Checks election safety, log matching and state machine safety as it
// goes, liveness after healing, convergence of all members, and linearizability of the client history.
//
// Everything random comes from the seed, and time is simulated, so a seed replays exactly.
import type { KvInput, KvOperation, KvOutput } from '../check/kv-model.ts';
import { describeKvOperation, kvModel } from '../check/kv-model.ts';
import { checkOperations } from '../check/linearizability.ts';
import type { Message } from '../core/messages.ts';
import { defaultRaftConfig, ProposalDroppedError, type RaftConfig } from '../core/raft.ts';
import type { NodeId } from '../types.ts';
import { EventQueue } from './event-queue.ts';
import { type NetworkConditions, reliableNetwork, SimNetwork } from './network.ts';
import { encodeCommand, type KvCommand, type SimHost, SimNode } from './node.ts';
import { createPrng, type Prng } from './prng.ts';
import { SafetyMonitor, SafetyViolation } from './safety.ts';

export interface SimOptions {
  seed: number;
  nodes: 3 | 5;
  /** Ticks of fault injection, then ticks of healed operation. */
  chaosTicks?: number;
  healTicks?: number;
  clients?: number;
  keys?: number;
  /** Test-only bugs planted in the core, to show the checks catch them. */
  faults?: RaftConfig['testingFaults'];
  /** Keep this many trace lines for a failure report. */
  traceLines?: number;
}

export interface SimResult {
  seed: number;
  nodes: number;
  ok: boolean;
  /** Name of the violated property, when !ok. */
  property?: string;
  detail?: string;
  trace: string[];
  /** Client operations in the checked history (completed plus unknown-outcome writes). */
  operations: number;
  completedOperations: number;
  appliedEntries: number;
  linearizabilityTimedOut: boolean;
  settings: string;
}

/** Simulated time units per tick. Network and disk delays are in the same units. */
const TICK = 10;
/** After healing, a write must complete within this many ticks. */
const LIVENESS_TICKS = 300;
const OP_TIMEOUT = 60 * TICK;

interface PendingOp {
  client: number;
  node: SimNode;
  incarnation: number;
  input: KvInput;
  call: number;
  opId: number;
  readId: string | null;
}

class Simulation implements SimHost {
  readonly queue = new EventQueue();
  readonly random: Prng;
  readonly network: SimNetwork;
  readonly monitor = new SafetyMonitor();
  compactEvery: number;

  private readonly opts: Required<Omit<SimOptions, 'faults'>> & Pick<SimOptions, 'faults'>;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly raftConfig: (id: NodeId) => RaftConfig;
  private readonly chaos: NetworkConditions;
  private readonly maxDiskDelay: number;
  private readonly traceBuffer: string[] = [];
  private readonly settings: string;
  private nextNodeNumber: number;

  private readonly history: KvOperation[] = [];
  private readonly pending = new Map<number, PendingOp>();
  private readonly readIds = new Map<string, number>();
  private nextOpId = 1;
  private logicalClock = 0;
  private completed = 0;
  private clientsStopped = false;

  private healedAt = Number.POSITIVE_INFINITY;
  private firstWriteAfterHeal = Number.POSITIVE_INFINITY;

  constructor(opts: SimOptions) {
    this.opts = {
      chaosTicks: 1500,
      healTicks: 500,
      clients: opts.nodes + 1,
      keys: 3,
      traceLines: 40,
      ...opts,
    };
    this.random = createPrng(opts.seed);
    const settingsRandom = this.random.fork();
    this.network = new SimNetwork(this.queue, this.random.fork(), (m) => this.deliver(m));

    // Each seed also draws the knobs, so flow control, chunking, compaction and read modes all get covered.
    const readOnly = settingsRandom.chance(0.3) ? 'lease' : 'safe';
    const maxSizePerMsg = settingsRandom.pick([64, 256, 4096]);
    const maxInflightMsgs = settingsRandom.pick([1, 4, 64]);
    const snapshotChunkBytes = settingsRandom.pick([16, 128, 4096]);
    this.compactEvery = settingsRandom.int(5, 60);
    this.maxDiskDelay = settingsRandom.int(1, 8);
    this.chaos = {
      dropRate: settingsRandom.next() * 0.15,
      duplicateRate: settingsRandom.next() * 0.05,
      minDelay: 1,
      maxDelay: settingsRandom.int(2, 12),
      slowRate: settingsRandom.next() * 0.02,
    };
    this.settings =
      `read=${readOnly} msg=${maxSizePerMsg}B inflight=${maxInflightMsgs} chunk=${snapshotChunkBytes}B ` +
      `compact=${this.compactEvery} disk<=${this.maxDiskDelay} drop=${this.chaos.dropRate.toFixed(3)} ` +
      `dup=${this.chaos.duplicateRate.toFixed(3)} delay<=${this.chaos.maxDelay}`;

    const nodeRandom = this.random.fork();
    this.raftConfig = (id) => ({
      ...defaultRaftConfig(id, () => nodeRandom.next()),
      readOnly,
      maxSizePerMsg,
      maxInflightMsgs,
      maxInflightBytes: maxSizePerMsg * maxInflightMsgs,
      snapshotChunkBytes,
      maxUncommittedBytes: 1024 * 1024,
      maxApplyBytes: 4096,
      ...(opts.faults ? { testingFaults: opts.faults } : {}),
    });

    const founders = Array.from({ length: opts.nodes }, (_, i) => `n${i + 1}`);
    this.nextNodeNumber = opts.nodes + 1;
    for (const id of founders) this.addNode(id, { voters: founders, learners: [] });
  }

  // ------------------------------------------------------------ SimHost

  diskDelay(): number {
    return this.random.int(1, this.maxDiskDelay);
  }

  trace(line: string): void {
    this.traceBuffer.push(`t=${this.queue.now} ${line}`);
    if (this.traceBuffer.length > this.opts.traceLines) this.traceBuffer.shift();
  }

  commandApplied(node: SimNode, command: KvCommand): void {
    const op = this.pending.get(command.op);
    if (!op || op.node !== node || op.incarnation !== node.incarnation) return;
    this.finish(op, {});
  }

  readReady(node: SimNode, readId: string): void {
    const opId = this.readIds.get(readId);
    const op = opId === undefined ? undefined : this.pending.get(opId);
    if (!op || op.node !== node || op.incarnation !== node.incarnation || op.input.op !== 'get') return;
    this.finish(op, { value: node.kv.get(op.input.key) ?? '' });
  }

  // ------------------------------------------------------------ the run

  run(): SimResult {
    const chaosEnd = this.opts.chaosTicks * TICK;
    const healEnd = chaosEnd + this.opts.healTicks * TICK;
    try {
      for (let c = 0; c < this.opts.clients; c++) this.queue.after(this.random.int(1, 5 * TICK), () => this.issue(c));
      this.scheduleFault(chaosEnd);
      this.queue.at(chaosEnd, () => this.heal());
      this.queue.at(healEnd, () => {
        this.clientsStopped = true;
      });
      this.queue.runUntil(healEnd + 100 * TICK);
      if (this.firstWriteAfterHeal - this.healedAt > LIVENESS_TICKS * TICK) {
        throw new SafetyViolation(
          'liveness',
          `no write completed within ${LIVENESS_TICKS} ticks after the faults healed (healed at t=${this.healedAt})\n${this.describeMembers()}`,
        );
      }
      this.checkConvergence();
      for (const op of this.pending.values()) this.recordUnknown(op);
      this.pending.clear();
      const check = checkOperations(kvModel, this.history, { timeoutMs: 20_000 });
      if (!check.ok) {
        throw new SafetyViolation('linearizability', check.explanation ?? 'history is not linearizable');
      }
      return this.result(true, check.timedOut);
    } catch (error) {
      if (!(error instanceof SafetyViolation)) {
        // A crash inside the core is a finding too, reported with the seed like any other.
        const detail = error instanceof Error ? `${error.message}\n${error.stack ?? ''}` : String(error);
        return { ...this.result(false, false), property: 'no exceptions', detail };
      }
      return { ...this.result(false, false), property: error.property, detail: error.message };
    }
  }

  private result(ok: boolean, linearizabilityTimedOut: boolean): SimResult {
    return {
      seed: this.opts.seed,
      nodes: this.opts.nodes,
      ok,
      trace: this.traceBuffer.slice(),
      operations: this.history.length,
      completedOperations: this.completed,
      appliedEntries: this.monitor.appliedEntries,
      linearizabilityTimedOut,
      settings: this.settings,
    };
  }

  private addNode(id: NodeId, bootstrap?: { voters: NodeId[]; learners: NodeId[] }): SimNode {
    const node = new SimNode(id, this, this.raftConfig(id), bootstrap);
    this.nodes.set(id, node);
    node.start();
    const phase = this.random.int(0, TICK - 1);
    this.queue.after(phase, () => this.tickLoop(node));
    return node;
  }

  private tickLoop(node: SimNode): void {
    if (node.retired) return;
    node.tick();
    this.queue.after(TICK, () => this.tickLoop(node));
  }

  private deliver(m: Message): void {
    const node = this.nodes.get(m.to);
    if (!node?.raft) return;
    node.raft.step(m);
    node.pump();
  }

  // ------------------------------------------------------------ clients

  private issue(client: number): void {
    if (this.clientsStopped) return;
    const node = this.chooseNode();
    if (!node?.raft) {
      this.queue.after(TICK, () => this.issue(client));
      return;
    }
    const opId = this.nextOpId++;
    const key = `k${this.random.int(1, this.opts.keys)}`;
    const roll = this.random.next();
    const input: KvInput =
      roll < 0.3
        ? { op: 'get', key }
        : roll < 0.65
          ? { op: 'put', key, value: `${client}.${opId}` }
          : { op: 'append', key, value: `<${client}.${opId}>` };
    const op: PendingOp = {
      client,
      node,
      incarnation: node.incarnation,
      input,
      call: ++this.logicalClock,
      opId,
      readId: input.op === 'get' ? `r${opId}` : null,
    };
    try {
      if (op.readId !== null) {
        this.readIds.set(op.readId, opId);
        node.raft.readIndex(op.readId);
      } else {
        node.raft.propose(encodeCommand({ client, op: opId, input }));
      }
    } catch (error) {
      if (!(error instanceof ProposalDroppedError)) throw error;
      // Refused on the spot: it never happened, so it is not part of the history.
      this.queue.after(this.random.int(1, 3) * TICK, () => this.issue(client));
      return;
    }
    this.pending.set(opId, op);
    node.pump();
    this.queue.after(OP_TIMEOUT, () => {
      if (this.pending.get(opId) !== op) return;
      this.pending.delete(opId);
      this.recordUnknown(op);
      this.issue(client);
    });
  }

  /** Clients mostly talk to the leader (as real ones learn to), sometimes to any member. */
  private chooseNode(): SimNode | undefined {
    const alive = [...this.nodes.values()].filter((n) => n.alive && !n.retired);
    if (alive.length === 0) return undefined;
    const leader = alive.find((n) => n.raft?.status().role === 'leader');
    if (leader && this.random.chance(0.6)) return leader;
    return this.random.pick(alive);
  }

  private finish(op: PendingOp, output: KvOutput): void {
    this.pending.delete(op.opId);
    this.history.push({ clientId: op.client, input: op.input, call: op.call, output, return: ++this.logicalClock });
    this.completed++;
    if (op.input.op !== 'get' && this.queue.now >= this.healedAt) {
      this.firstWriteAfterHeal = Math.min(this.firstWriteAfterHeal, this.queue.now);
    }
    this.queue.after(this.random.int(0, 5), () => this.issue(op.client));
  }

  /** A timed-out or orphaned write may or may not have happened; a read of unknown outcome says nothing. */
  private recordUnknown(op: PendingOp): void {
    if (op.input.op === 'get') return;
    this.history.push({
      clientId: op.client,
      input: op.input,
      call: op.call,
      output: undefined,
      return: Number.POSITIVE_INFINITY,
    });
  }

  // ------------------------------------------------------------ faults

  private scheduleFault(chaosEnd: number): void {
    const at = this.queue.now + this.random.int(5, 60) * TICK;
    if (at >= chaosEnd) return;
    this.queue.at(at, () => {
      this.injectFault();
      this.scheduleFault(chaosEnd);
    });
  }

  private members(): SimNode[] {
    return [...this.nodes.values()].filter((n) => !n.retired);
  }

  private injectFault(): void {
    const ids = this.members().map((n) => n.id);
    const roll = this.random.next();
    if (roll < 0.2) {
      const shuffled = [...ids].sort(() => this.random.next() - 0.5);
      const cut = this.random.int(1, shuffled.length - 1);
      this.network.partition(shuffled.slice(0, cut), shuffled.slice(cut));
      this.trace(`partition [${shuffled.slice(0, cut).join(' ')}] | [${shuffled.slice(cut).join(' ')}]`);
    } else if (roll < 0.3) {
      const victim = this.random.pick(ids);
      this.network.partition(
        [victim],
        ids.filter((id) => id !== victim),
      );
      this.trace(`isolate ${victim}`);
    } else if (roll < 0.4) {
      const from = this.random.pick(ids);
      const to = this.random.pick(ids.filter((id) => id !== from));
      this.network.cut(from, to);
      this.trace(`one-way cut ${from} -> ${to}`);
    } else if (roll < 0.55) {
      this.network.healAll();
      this.trace('network healed');
    } else if (roll < 0.7) {
      this.crashSomeone();
    } else if (roll < 0.78) {
      this.transferLeadership();
    } else if (roll < 0.9) {
      this.changeMembership();
    } else {
      this.network.conditions = this.random.chance(0.5) ? this.chaos : reliableNetwork;
      this.trace(`network ${this.network.conditions === this.chaos ? 'lossy' : 'reliable'}`);
    }
    this.retireRemovedMembers();
  }

  private crashSomeone(): void {
    const alive = this.members().filter((n) => n.alive);
    if (alive.length === 0) return;
    const victim = this.random.pick(alive);
    this.crash(victim);
    this.queue.after(this.random.int(5, 150) * TICK, () => this.restart(victim));
  }

  private crash(node: SimNode): void {
    node.crash();
    this.trace(`crash ${node.id}`);
    // Clients connected to it lose their answer: outcome unknown.
    for (const op of [...this.pending.values()]) {
      if (op.node !== node) continue;
      this.pending.delete(op.opId);
      this.recordUnknown(op);
      this.queue.after(TICK, () => this.issue(op.client));
    }
  }

  private restart(node: SimNode): void {
    if (node.alive || node.retired) return;
    node.start();
    this.trace(`restart ${node.id}`);
  }

  private leader(): SimNode | undefined {
    return this.members().find((n) => n.raft?.status().role === 'leader');
  }

  private transferLeadership(): void {
    const leader = this.leader();
    if (!leader?.raft) return;
    const voters = leader.raft.status().conf.voters.filter((id) => id !== leader.id);
    if (voters.length === 0) return;
    const target = this.random.pick(voters);
    leader.raft.transferLeadership(target);
    leader.pump();
    this.trace(`transfer leadership ${leader.id} -> ${target}`);
  }

  /** One step of a membership change, one server at a time: add as learner, promote, or remove. */
  private changeMembership(): void {
    const leader = this.leader();
    if (!leader?.raft) return;
    const status = leader.raft.status();
    const { voters, learners } = status.conf;
    const caughtUp = learners.find((id) => (status.progress[id]?.match ?? 0) >= status.commit);
    try {
      if (caughtUp) {
        leader.raft.proposeConfChange({ type: 'addVoter', node: caughtUp });
        this.trace(`propose promote ${caughtUp}`);
      } else if (voters.length > Math.max(2, this.opts.nodes - 1) && this.random.chance(0.5)) {
        const victim = this.random.pick(voters);
        leader.raft.proposeConfChange({ type: 'remove', node: victim });
        this.trace(`propose remove ${victim}`);
      } else if (voters.length + learners.length <= this.opts.nodes && learners.length === 0) {
        const id = `n${this.nextNodeNumber++}`;
        this.addNode(id);
        leader.raft.proposeConfChange({ type: 'addLearner', node: id });
        this.trace(`new node ${id}; propose add learner`);
      }
    } catch (error) {
      if (!(error instanceof ProposalDroppedError)) throw error;
    }
    leader.pump();
  }

  /** A member the current leader has removed (or never added) is shut down for good. */
  private retireRemovedMembers(): void {
    const status = this.leader()?.raft?.status();
    if (!status) return;
    const members = new Set([...status.conf.voters, ...status.conf.learners]);
    for (const node of this.members()) {
      if (members.has(node.id)) continue;
      const addedRecently = Number(node.id.slice(1)) >= this.nextNodeNumber - 1;
      if (addedRecently && node.alive) continue; // its add-learner entry may still be on its way
      node.retired = true;
      node.crash();
      this.trace(`retire ${node.id}`);
    }
  }

  private heal(): void {
    this.network.healAll();
    this.network.conditions = reliableNetwork;
    for (const node of this.members()) if (!node.alive) this.restart(node);
    this.healedAt = this.queue.now;
    this.trace('healed: network reliable, every member running');
  }

  private describeMembers(): string {
    return this.members()
      .map((n) => {
        const st = n.raft?.status();
        if (!st) return `  ${n.id}: down`;
        const progress = Object.entries(st.progress)
          .map(([id, p]) => `${id}:${p.state}/m${p.match}/n${p.next}`)
          .join(' ');
        return (
          `  ${n.id}: ${st.role} term ${st.term} leader ${st.leader} commit ${st.commit} applied ${st.applied} ` +
          `last ${st.lastIndex} snap ${st.snapshotIndex} voters [${st.conf.voters}] learners [${st.conf.learners}]` +
          `${st.leadTransferee ? ` transferring to ${st.leadTransferee}` : ''}${progress ? ` progress ${progress}` : ''}`
        );
      })
      .join('\n');
  }

  /** After the quiet period every running member has applied the same commands. */
  private checkConvergence(): void {
    const running = this.members().filter((n) => n.alive);
    const leaderStatus = this.leader()?.raft?.status();
    if (!leaderStatus) throw new SafetyViolation('liveness', 'no leader at the end of the quiet period');
    const inConf = new Set([...leaderStatus.conf.voters, ...leaderStatus.conf.learners]);
    const reference = running.find((n) => n.raft?.status().role === 'leader')!;
    for (const node of running) {
      if (!inConf.has(node.id)) continue;
      if (node.smApplied !== reference.smApplied || !sameKv(node.kv, reference.kv)) {
        throw new SafetyViolation(
          'convergence',
          `${node.id} applied up to ${node.smApplied} but leader ${reference.id} up to ${reference.smApplied}, or their data differ\n${this.describeMembers()}`,
        );
      }
    }
  }
}

function sameKv(a: Map<string, string>, b: Map<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

export function runSimulation(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

export function describeFailure(result: SimResult): string {
  return [
    `seed ${result.seed} (${result.nodes} nodes) violated ${result.property}`,
    `  ${result.detail}`,
    `  settings: ${result.settings}`,
    `  rerun: npm run sim -- --seed-start ${result.seed} --seeds 1 --nodes ${result.nodes}`,
    '  last events:',
    ...result.trace.map((line) => `    ${line}`),
  ].join('\n');
}

export { describeKvOperation };
