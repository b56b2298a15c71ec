// A manager: a Raft member holding the cluster store, the swarm CA, and (on the leader) the control
// loops. Every manager answers joins, heartbeats and reads; writes go through the leader.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { ProposalDroppedError } from '../../raft/core/raft.ts';
import { RaftNode } from '../../raft/driver/raft-node.ts';
import { FileStorage } from '../../raft/storage/file-storage.ts';
import type { HealthState, Service, Task, TaskStatus } from '../api/services.ts';
import { TASK_STATES, TERMINAL_STATES } from '../api/services.ts';
import type { NodeRole } from '../api/types.ts';
import { parseAddress } from '../lb/endpoints.ts';
import type { TableService } from '../lb/table.ts';
import type { FramedStream } from '../mesh/framed-stream.ts';
import type { MembershipGate } from '../mesh/gate.ts';
import type { MeshHost } from '../mesh/host.ts';
import type { HeartbeatRequest, HeartbeatResponse } from '../mesh/messages.ts';
import {
  authorizeJoin,
  ClusterCa,
  type ClusterCaObject,
  issueCertificate,
  type MembershipClaims,
  needsRenewal,
} from '../mesh/pki.ts';
import { PROTOCOLS } from '../mesh/protocols.ts';
import { MeshRaftTransport } from '../mesh/raft-transport.ts';
import type { KnownManager } from '../node-state.ts';
import { buildEndpointTable, EndpointTableCache } from './endpoint-table.ts';
import { downAfterMs, type NodeRecord } from './nodes.ts';
import { reconcile } from './orchestrator.ts';
import { scheduleInChunks, toSchedulerNode } from './scheduling.ts';
import {
  ClusterStore,
  encodeTransaction,
  put,
  type StoreEvent,
  type StoreOp,
  type TransactionResult,
} from './store/store.ts';
import { planRollouts } from './updater.ts';

const HEALTH_STATES: readonly HealthState[] = ['starting', 'healthy', 'unhealthy'];
/** How often the leader tells managers left out by --force-new-cluster that they were, while they stay away. */
const TELL_LEFT_OUT_MS = 5000;

export interface ClusterSettings {
  heartbeatPeriodMs: number;
  /** A node that has not sent a heartbeat for this long is marked down. */
  nodeDownAfterMs: number;
  certTtlMs: number;
}

export const DEFAULT_SETTINGS: ClusterSettings = {
  heartbeatPeriodMs: 1000,
  nodeDownAfterMs: 4000,
  certTtlMs: 90 * 24 * 3600 * 1000,
};

export interface ClusterRecord {
  id: string;
  createdAt: string;
  ca: ClusterCaObject;
  joinSecrets: { worker: string; manager: string };
  settings: ClusterSettings;
  denylist: { nodeIds: string[]; peerIds: string[] };
  /**
   * How many times this swarm was recovered with --force-new-cluster (absent: never), and the managers the last
   * recovery left out (node IDs). One of those that comes back with its old Raft data still believes in the old
   * membership, where it and the others left out may be a majority: the leader tells it (tellLeftOut) until it
   * reports as the worker it now is.
   */
  forcedEpoch?: number;
  leftOut?: string[];
}

export class ConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}

export interface ManagerOptions {
  dataDir: string;
  nodeId: string;
  host: MeshHost;
  gate: MembershipGate;
  /** Only for the first manager of a new swarm. */
  bootstrap?: boolean;
  /**
   * Disaster recovery (swarmd run --force-new-cluster): this manager becomes the only Raft voter, keeping the
   * cluster state it has, and once leader makes the other managers workers.
   */
  forceNewCluster?: boolean;
  /** PeerId of a manager the store does not know yet (a new manager before it has caught up). */
  peerHint: (nodeId: string) => string | undefined;
  /** Tells a manager left out by --force-new-cluster that it was (the leader calls this until it reports). */
  tellLeftOut?: (nodeId: string, forcedEpoch: number) => void;
  /** Sees every store change, from the first entry replayed at start on. */
  watch?: (events: StoreEvent[]) => void;
  tickMs?: number;
  log: (level: 'info' | 'warn' | 'error', message: string) => void;
}

export class Manager {
  readonly store: ClusterStore;
  readonly raft: RaftNode;
  private readonly opts: ManagerOptions;
  private leaderLoop: NodeJS.Timeout | null = null;
  /** Leader only: when each node was last heard from. */
  private readonly lastSeen = new Map<string, number>();
  private wasLeader = false;
  private stopped = false;
  /** Set by forceNewCluster until the other managers are workers in the store. */
  private demoteFormerManagers: boolean;

  private constructor(opts: ManagerOptions, store: ClusterStore, raft: RaftNode) {
    this.opts = opts;
    this.store = store;
    this.raft = raft;
    this.demoteFormerManagers = opts.forceNewCluster ?? false;
  }

  static async start(opts: ManagerOptions): Promise<Manager> {
    const store = new ClusterStore();
    let self: Manager | undefined;
    // Any change to services, tasks or nodes may call for new tasks or placements: react at once. Registered
    // before opts.watch, so that what it reads (the endpoint table) already reflects the change.
    store.watch((events) => {
      if (!events.some((e) => e.table !== 'cluster')) return;
      self?.orchestrateSoon();
      self?.endpoints.invalidate();
    });
    if (opts.watch) store.watch(opts.watch);
    let raftNode: RaftNode | undefined;
    const transport = new MeshRaftTransport({
      host: opts.host,
      gate: opts.gate,
      peerOf: (nodeId) => store.get<NodeRecord>('nodes', nodeId)?.peerId ?? opts.peerHint(nodeId),
      accepts: (nodeId) => acceptsRaftFrom(store, raftNode, nodeId),
      log: opts.log,
    });
    await transport.start();
    const raft = await RaftNode.start({
      id: opts.nodeId,
      storage: new FileStorage({ dir: join(opts.dataDir, 'raft') }),
      transport,
      stateMachine: store,
      tickMs: opts.tickMs ?? 50,
      snapshotEvery: 5000,
      ...(opts.bootstrap ? { bootstrap: { voters: [opts.nodeId], learners: [] } } : {}),
      ...(opts.forceNewCluster ? { forceNewCluster: true } : {}),
      raft: { electionTicks: 10, heartbeatTicks: 2 },
      log: opts.log,
    });
    raftNode = raft;
    const manager = new Manager(opts, store, raft);
    self = manager;
    manager.leaderLoop = setInterval(() => manager.leaderTick(), 250);
    await manager.serveProtocols();
    return manager;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.leaderLoop) clearInterval(this.leaderLoop);
    await this.raft.stop();
  }

  isLeader(): boolean {
    return this.raft.isLeader();
  }

  leaderNodeId(): string | null {
    return this.raft.status().leader;
  }

  cluster(): (ClusterRecord & { version: number }) | null {
    return this.store.getCluster<ClusterRecord>();
  }

  /** Proposes a transaction; throws ConflictError when a precondition failed. */
  async transact(ops: StoreOp[]): Promise<number> {
    const result = (await this.raft.propose(
      encodeTransaction({ ops, at: new Date().toISOString() }),
    )) as TransactionResult;
    if (!result.ok) throw new ConflictError(result.error);
    return result.index;
  }

  /** Linearizable read barrier: after it, the local store reflects every completed write. */
  async barrier(): Promise<void> {
    await this.raft.read();
  }

  knownManagers(): KnownManager[] {
    return this.store
      .list<NodeRecord>('nodes')
      .filter((n) => n.role === 'manager')
      .map((n) => ({ nodeId: n.id, peerId: n.peerId, addrs: n.addresses }));
  }

  isDenied(nodeId: string, peerId: string): boolean {
    const deny = this.cluster()?.denylist;
    return deny !== undefined && (deny.nodeIds.includes(nodeId) || deny.peerIds.includes(peerId));
  }

  private caCache: { privateKey: string; ca: ClusterCa } | null = null;

  /** Signs a membership certificate with the swarm CA. */
  issueCert(nodeId: string, peerId: string, role: NodeRole): string {
    const cluster = this.cluster();
    if (!cluster) throw new Error('the swarm is not initialized yet');
    if (this.caCache?.privateKey !== cluster.ca.privateKey) {
      this.caCache = { privateKey: cluster.ca.privateKey, ca: ClusterCa.fromObject(cluster.ca) };
    }
    return issueCertificate(
      this.caCache.ca,
      { clusterId: cluster.id, nodeId, peerId, role },
      { ttlMs: cluster.settings.certTtlMs },
    );
  }

  /** Records a heartbeat; on the leader, a node coming back is marked ready. */
  noteHeartbeat(nodeId: string): void {
    this.lastSeen.set(nodeId, Date.now());
  }

  // ------------------------------------------------------------ protocols

  private async serveProtocols(): Promise<void> {
    await this.opts.host.handle(PROTOCOLS.join, (stream, remotePeer) => this.answerJoin(stream, remotePeer), {
      open: true,
      maxFrameBytes: 64 * 1024,
    });
    await this.opts.host.handle(
      PROTOCOLS.dispatcher,
      (stream, remotePeer) => this.answerHeartbeat(stream, remotePeer),
      {
        maxFrameBytes: 64 * 1024,
      },
    );
  }

  private async answerHeartbeat(stream: FramedStream, remotePeer: string): Promise<void> {
    const request = (await stream.read(AbortSignal.timeout(10_000))) as Partial<HeartbeatRequest> | undefined;
    const claims = this.opts.gate.claimsOf(remotePeer);
    if (!request || !claims || request.nodeId !== claims.nodeId) {
      stream.abort(new Error('heartbeat does not match the sender'));
      return;
    }
    await stream.send(await this.heartbeatAnswer(request, claims));
    await stream.close();
  }

  private async heartbeatAnswer(
    request: Partial<HeartbeatRequest>,
    claims: MembershipClaims,
  ): Promise<HeartbeatResponse> {
    const managers = this.knownManagers();
    const leader = this.leaderNodeId();
    if (!this.isLeader()) return { ok: false, redirect: leader, managers, error: 'not the leader' };
    const cluster = this.cluster();
    const node = this.store.get<NodeRecord>('nodes', claims.nodeId);
    if (!cluster || !node) return { ok: false, redirect: null, managers, error: 'this node is not part of the swarm' };
    this.noteHeartbeat(node.id);
    this.noteNodeFacts(node, request);
    await this.applyTaskStatuses(node.id, request.taskStatuses ?? []);
    const renew = claims.role !== node.role || needsRenewal(claims, Date.now());
    return {
      ok: true,
      leaderNodeId: this.opts.nodeId,
      role: node.role,
      managers,
      denylist: cluster.denylist,
      heartbeatPeriodMs: node.heartbeatPeriodMs ?? cluster.settings.heartbeatPeriodMs,
      ...(renew ? { cert: this.issueCert(node.id, node.peerId, node.role) } : {}),
      tasks: this.store.list<Task>('tasks').filter((t) => t.nodeId === node.id),
      ...this.endpointsFor(request.endpointsVersion),
    };
  }

  /** The endpoint table, unless the node already has this version (most heartbeats: the table rarely changes). */
  private endpointsFor(nodeHas: unknown): { endpoints?: TableService[]; endpointsVersion?: string } {
    const { table, version } = this.endpoints.current();
    return nodeHas === version ? {} : { endpoints: table, endpointsVersion: version };
  }

  /** Rebuilt once per store change, not once per heartbeat: it reads every service and task. */
  private readonly endpoints = new EndpointTableCache(() =>
    buildEndpointTable(
      this.store.list<Service>('services'),
      this.store.list<Task>('tasks'),
      (nodeId) => this.store.get<NodeRecord>('nodes', nodeId)?.peerId,
    ),
  );

  /** What every node's load balancer balances over (services with published ports only). */
  endpointTable(): TableService[] {
    return this.endpoints.current().table;
  }

  /** Changes only when the endpoint table's content does. */
  endpointTableVersion(): string {
    return this.endpoints.current().version;
  }

  /**
   * Where a node is reachable and what it has, as its heartbeat says. A node learns some of what it has after
   * joining (its GPUs, a runtime that came up): it says so on every heartbeat, and a change is written once.
   */
  noteNodeFacts(node: NodeRecord, report: { addresses?: unknown; description?: unknown }): void {
    const addresses = Array.isArray(report.addresses)
      ? report.addresses.filter((a) => typeof a === 'string').slice(0, 16)
      : [];
    const description = report.description === undefined ? node.description : sanitizeDescription(report.description);
    const moved = addresses.length > 0 && addresses.join(' ') !== node.addresses.join(' ');
    if (!moved && isDeepStrictEqual(description, node.description)) return;
    const at = new Date().toISOString();
    const changed = { ...node, addresses: moved ? addresses : node.addresses, description, updatedAt: at };
    void this.transact([put('nodes', changed, node.version)]).catch(() => {});
  }

  /** Status reports from a node, for its own tasks only, and only moving forward; one transaction. */
  async applyTaskStatuses(nodeId: string, reports: { taskId: string; status: TaskStatus }[]): Promise<void> {
    const ops: StoreOp[] = [];
    for (const report of reports.slice(0, 1000)) {
      const task = this.store.get<Task>('tasks', String(report?.taskId));
      const state = report?.status?.state;
      if (!task || task.nodeId !== nodeId || !TASK_STATES.includes(state)) continue;
      const health = HEALTH_STATES.includes(report.status.health as HealthState)
        ? (report.status.health as HealthState)
        : undefined;
      const forward = TASK_STATES.indexOf(state) > TASK_STATES.indexOf(task.status.state);
      // Where a running task listens: what the load balancer forwards to, so it is checked like any input.
      const address = state === 'running' ? validTaskAddress(report.status.address) : undefined;
      // Health changes within a state (running: starting -> healthy -> unhealthy) count too, as does the address.
      const sameState = state === task.status.state;
      if (!forward && (!sameState || (health === task.status.health && address === task.status.address))) continue;
      const since = String(report.status.since ?? new Date().toISOString()).slice(0, 40);
      const startedAt = task.status.startedAt ?? (state === 'running' ? since : undefined);
      const status: TaskStatus = {
        ...(health ? { health } : {}),
        ...(address ? { address } : {}),
        ...(startedAt ? { startedAt } : {}),
        state,
        since,
        message: String(report.status.message ?? '').slice(0, 500),
        ...(typeof report.status.error === 'string' ? { error: report.status.error.slice(0, 2000) } : {}),
        ...(typeof report.status.exitCode === 'number' ? { exitCode: report.status.exitCode } : {}),
      };
      ops.push(put('tasks', { ...task, status, updatedAt: new Date().toISOString() }, task.version));
    }
    if (ops.length > 0) await this.transact(ops).catch(() => {}); // a conflict: the node reports again
  }

  private async answerJoin(stream: FramedStream, remotePeer: string): Promise<void> {
    const cluster = this.cluster();
    if (!cluster) {
      await stream.send({ error: 'this manager has no cluster state yet; try again' });
      return stream.close();
    }
    const self = this.store.get<NodeRecord>('nodes', this.opts.nodeId);
    await stream.send({
      clusterId: cluster.id,
      caPublicKey: cluster.ca.publicKey,
      managerCert: this.issueCert(this.opts.nodeId, self?.peerId ?? this.opts.host.peerId, 'manager'),
    });
    const request = (await stream.read(AbortSignal.timeout(10_000))) as Record<string, unknown> | undefined;
    if (!request || typeof request !== 'object') return stream.close();
    try {
      const answer = await this.admit(request, remotePeer);
      await stream.send(answer);
    } catch (error) {
      await stream.send({ error: (error as Error).message });
    }
    await stream.close();
  }

  /** Checks a join request and, if the token is right, adds the node to the store. */
  private async admit(request: Record<string, unknown>, peerId: string) {
    const cluster = this.cluster()!;
    const role = authorizeJoin({ presentedSecret: String(request.secret ?? ''), tokens: cluster.joinSecrets });
    if (cluster.denylist.peerIds.includes(peerId)) {
      throw new Error('this node was removed from the swarm; start it with a fresh data dir to join again');
    }
    const description = sanitizeDescription(request.description);
    const addresses = Array.isArray(request.addresses)
      ? request.addresses.filter((a): a is string => typeof a === 'string').slice(0, 16)
      : [];
    const existing = this.store.list<NodeRecord>('nodes').find((n) => n.peerId === peerId);
    const nodeId = existing?.id ?? newNodeId();
    const now = new Date().toISOString();
    const record: NodeRecord = {
      id: nodeId,
      version: 0,
      peerId,
      role,
      availability: 'active',
      labels: existing?.labels ?? {},
      description,
      addresses,
      status: { state: 'ready', message: '', since: now },
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
    };
    await this.transact([{ kind: 'put', table: 'nodes', object: record }]);
    this.noteHeartbeat(nodeId);
    return {
      nodeId,
      role,
      cert: this.issueCert(nodeId, peerId, role),
      managers: this.knownManagers(),
      settings: cluster.settings,
    };
  }

  // ------------------------------------------------------------ leader loops

  private leaderTick(): void {
    if (this.stopped) return;
    const leader = this.isLeader();
    if (leader && !this.wasLeader) {
      // A new leader gives every node a full grace period before calling it down.
      const now = Date.now();
      for (const node of this.store.list<NodeRecord>('nodes')) this.lastSeen.set(node.id, now);
      this.opts.log('info', `this manager (${this.opts.nodeId}) is now the leader`);
    }
    this.wasLeader = leader;
    if (!leader) return;
    this.noteHeartbeat(this.opts.nodeId);
    if (this.demoteFormerManagers) void this.demoteOtherManagers().catch((error) => this.leaderError(error));
    this.tellLeftOutManagers(Date.now());
    this.orchestrateSoon();
    void this.markNodeStates().catch((error) => this.leaderError(error));
    void this.reconcileRaftMembers().catch((error) => this.leaderError(error));
  }

  /**
   * After a forced new cluster: the other managers are no longer Raft members, so they become workers, or the
   * membership reconciliation would add them back, old state and all. One that comes back learns its new role
   * from its next heartbeat answer, which stops its manager and wipes its Raft data; it can then be promoted anew.
   */
  private async demoteOtherManagers(): Promise<void> {
    const at = new Date().toISOString();
    const others = this.store
      .list<NodeRecord>('nodes')
      .filter((n) => n.role === 'manager' && n.id !== this.opts.nodeId);
    const ops: StoreOp[] = others.map((n) => put('nodes', { ...n, role: 'worker', updatedAt: at }, n.version));
    const cluster = this.cluster();
    if (cluster !== null) {
      const { version, ...record } = cluster;
      const forcedEpoch = (cluster.forcedEpoch ?? 0) + 1;
      ops.push({
        kind: 'setCluster',
        cluster: { ...record, forcedEpoch, leftOut: others.map((n) => n.id) },
        expectVersion: version,
      });
    }
    if (ops.length > 0) {
      await this.transact(ops);
      this.opts.log('warn', `force-new-cluster: made ${others.length} former manager(s) workers`);
    }
    this.demoteFormerManagers = false;
  }

  private lastToldLeftOut = 0;

  /** Every TELL_LEFT_OUT_MS: each manager the last forced recovery left out that is not back as a worker. */
  private tellLeftOutManagers(now: number): void {
    const cluster = this.cluster();
    if (!cluster?.forcedEpoch || !cluster.leftOut?.length || !this.opts.tellLeftOut) return;
    if (now - this.lastToldLeftOut < TELL_LEFT_OUT_MS) return;
    this.lastToldLeftOut = now;
    for (const nodeId of cluster.leftOut) {
      const node = this.store.get<NodeRecord>('nodes', nodeId);
      if (node && node.status.state !== 'ready') this.opts.tellLeftOut(nodeId, cluster.forcedEpoch);
    }
  }

  private leaderError(error: unknown): void {
    if (error instanceof ProposalDroppedError || error instanceof ConflictError) return; // retried next tick
    this.opts.log('warn', `leader loop: ${(error as Error).message}`);
  }

  private orchestrating = false;
  private orchestrateAgain = false;

  /** Runs an orchestration and scheduling pass soon (coalescing bursts of store changes into one). */
  orchestrateSoon(): void {
    if (!this.isLeader() || this.stopped) return;
    if (this.orchestrating) {
      this.orchestrateAgain = true;
      return;
    }
    this.orchestrating = true;
    setImmediate(() => {
      void this.orchestrate()
        .catch((error) => this.leaderError(error))
        .finally(() => {
          this.orchestrating = false;
          if (this.orchestrateAgain) {
            this.orchestrateAgain = false;
            this.orchestrateSoon();
          }
        });
    });
  }

  private async orchestrate(): Promise<void> {
    const services = this.store.list<Service>('services');
    const nodes = this.store.list<NodeRecord>('nodes');
    const ops = reconcile({ services, tasks: this.store.list<Task>('tasks'), nodes, now: Date.now() });
    if (ops.length > 0) await this.transact(ops);
    const rollouts = planRollouts({
      services: this.store.list<Service>('services'),
      tasks: this.store.list<Task>('tasks'),
      now: Date.now(),
    });
    if (rollouts.length > 0) await this.transact(rollouts);
    await this.schedule(nodes);
  }

  /** Places pending tasks; a stop-first replacement waits until the task it replaces has ended. */
  private async schedule(nodes: NodeRecord[]): Promise<void> {
    const tasks = this.store.list<Task>('tasks');
    const ended = (id: string) => {
      const task = this.store.get<Task>('tasks', id);
      return !task || TERMINAL_STATES.has(task.status.state);
    };
    const pending = tasks.filter(
      (t) => t.status.state === 'pending' && t.desiredState !== 'shutdown' && (!t.startAfter || ended(t.startAfter)),
    );
    if (pending.length === 0) return;
    // A task told to stop holds its resources (GPUs above all) until it has really ended.
    const placed = tasks.filter((t) => t.nodeId !== null && !TERMINAL_STATES.has(t.status.state));
    const result = await scheduleInChunks({ nodes: nodes.map((n) => toSchedulerNode(n)), placed, pending });
    const at = new Date().toISOString();
    const byId = new Map(pending.map((t) => [t.id, t]));
    const placeOps: StoreOp[] = [];
    for (const p of result.placements) {
      const task = byId.get(p.taskId)!;
      placeOps.push(
        put(
          'tasks',
          {
            ...task,
            nodeId: p.nodeId,
            devices: p.devices,
            status: { state: 'assigned', since: at, message: '' },
            updatedAt: at,
          },
          task.version,
        ),
      );
    }
    for (const u of result.unplaced) {
      const task = byId.get(u.taskId)!;
      if (task.status.pendingReason === u.reason) continue;
      placeOps.push(
        put('tasks', { ...task, status: { ...task.status, pendingReason: u.reason }, updatedAt: at }, task.version),
      );
    }
    if (placeOps.length > 0) await this.transact(placeOps);
  }

  private markingStates = false;

  /** Marks nodes down after missed heartbeats and ready again when they are back. */
  private async markNodeStates(): Promise<void> {
    if (this.markingStates) return;
    this.markingStates = true;
    try {
      const cluster = this.cluster();
      if (!cluster) return;
      const now = Date.now();
      const ops: StoreOp[] = [];
      for (const node of this.store.list<NodeRecord>('nodes')) {
        const seen = this.lastSeen.get(node.id) ?? 0;
        const alive = now - seen < downAfterMs(node, cluster.settings);
        const want = alive ? 'ready' : 'down';
        if (node.status.state === want) continue;
        const message = alive ? '' : `heartbeat missed for ${Math.round((now - seen) / 1000)} s`;
        const at = new Date(now).toISOString();
        ops.push(put('nodes', { ...node, status: { state: want, message, since: at }, updatedAt: at }, node.version));
      }
      if (ops.length > 0) await this.transact(ops);
    } finally {
      this.markingStates = false;
    }
  }

  private reconciling = false;

  /**
   * Keeps Raft membership in line with the store: managers join as learners and are promoted once they
   * have caught up; nodes that are no longer managers leave. One change at a time, as Raft requires.
   */
  private async reconcileRaftMembers(): Promise<void> {
    if (this.reconciling) return;
    this.reconciling = true;
    try {
      const status = this.raft.status();
      const managers = new Set(
        this.store
          .list<NodeRecord>('nodes')
          .filter((n) => n.role === 'manager')
          .map((n) => n.id),
      );
      const inConf = new Set([...status.conf.voters, ...status.conf.learners]);
      for (const id of managers) {
        if (!inConf.has(id)) {
          this.opts.log('info', `adding manager ${id} to raft as a learner`);
          await this.raft.changeMembership({ type: 'addLearner', node: id });
          return;
        }
      }
      for (const id of status.conf.learners) {
        const progress = status.progress[id];
        if (managers.has(id) && progress && progress.match >= status.commit) {
          this.opts.log('info', `manager ${id} caught up; promoting it to a raft voter`);
          await this.raft.changeMembership({ type: 'addVoter', node: id });
          return;
        }
      }
      for (const id of inConf) {
        if (managers.has(id)) continue;
        if (id === this.opts.nodeId) {
          // Demoting the leader: hand leadership over first, the next leader finishes the job.
          const target = status.conf.voters.find((v) => v !== id && status.progress[v]?.recentActive);
          if (target) this.raft.transferLeadership(target);
          return;
        }
        this.opts.log('info', `removing ${id} from raft`);
        await this.raft.changeMembership({ type: 'remove', node: id });
        return;
      }
    } finally {
      this.reconciling = false;
    }
  }
}

export function newNodeId(): string {
  // 25 lowercase base36 characters, like Docker's node IDs.
  const bytes = randomBytes(16);
  let n = BigInt(`0x${bytes.toString('hex')}`);
  let id = '';
  while (id.length < 25) {
    id += (n % 36n).toString(36);
    n /= 36n;
  }
  return id;
}

function sanitizeDescription(raw: unknown): NodeRecord['description'] {
  const d = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
  const platform = (typeof d.platform === 'object' && d.platform !== null ? d.platform : {}) as Record<string, unknown>;
  const resources = (typeof d.resources === 'object' && d.resources !== null ? d.resources : {}) as Record<
    string,
    unknown
  >;
  const str = (v: unknown, max = 128) => (typeof v === 'string' ? v.slice(0, max) : '');
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0);
  const gpus = (Array.isArray(resources.gpus) ? resources.gpus : [])
    .slice(0, 64)
    .filter((g): g is Record<string, unknown> => typeof g === 'object' && g !== null && str(g.id, 256) !== '')
    .map((g) => ({
      id: str(g.id, 256),
      ...(str(g.model) ? { model: str(g.model) } : {}),
      ...(num(g.memoryBytes) > 0 ? { memoryBytes: num(g.memoryBytes) } : {}),
    }));
  const generic = (Array.isArray(resources.generic) ? resources.generic : [])
    .slice(0, 32)
    .filter((r): r is Record<string, unknown> => typeof r === 'object' && r !== null && str(r.kind, 64) !== '')
    .map((r) => ({
      kind: str(r.kind, 64),
      ids: (Array.isArray(r.ids) ? r.ids : [])
        .slice(0, 4096)
        .map((id) => str(id, 256))
        .filter(Boolean),
    }));
  const hostPorts = (Array.isArray(d.hostPorts) ? d.hostPorts : [])
    .slice(0, 1024)
    .filter(
      (p): p is Record<string, unknown> =>
        typeof p === 'object' && p !== null && Number.isInteger(p.port) && num(p.port) > 0 && num(p.port) <= 65535,
    )
    .map((p) => ({
      port: num(p.port),
      ...(p.protocol === 'udp' ? { protocol: 'udp' as const } : {}),
      ...(str(p.process, 64) ? { process: str(p.process, 64) } : {}),
    }));
  return {
    hostname: str(d.hostname) || 'unknown',
    platform: { os: str(platform.os, 32), arch: str(platform.arch, 32) },
    resources: {
      nanoCpus: num(resources.nanoCpus),
      memoryBytes: num(resources.memoryBytes),
      ...(gpus.length > 0 ? { gpus } : {}),
      ...(generic.length > 0 ? { generic } : {}),
    },
    ...(hostPorts.length > 0 ? { hostPorts } : {}),
    swarmdVersion: str(d.swarmdVersion, 32),
  };
}

/** host:port (or [v6]:port) of at most 64 characters; anything else is dropped. */
function validTaskAddress(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > 64) return undefined;
  if (!/^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$/.test(value)) return undefined;
  try {
    parseAddress(value);
    return value;
  } catch {
    return undefined;
  }
}

/**
 * Whether Raft messages from a manager are taken: not from one the last --force-new-cluster left out, unless it
 * has been made a manager again or is a Raft member again. Such a manager, back with its old data, may lead the
 * old membership with a higher term, and its messages would unseat this cluster's leader for good. Only those are
 * refused, not every node the store calls a worker: a member that lags behind may not know yet that a new leader
 * was promoted, and must still take its messages to catch up.
 */
function acceptsRaftFrom(store: ClusterStore, raft: RaftNode | undefined, nodeId: string): boolean {
  const leftOut = store.getCluster<ClusterRecord>()?.leftOut;
  if (leftOut === undefined || !leftOut.includes(nodeId)) return true;
  return store.get<NodeRecord>('nodes', nodeId)?.role === 'manager' || raft === undefined || raft.isMember(nodeId);
}
