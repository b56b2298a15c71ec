// Control operations of a manager, behind the API handlers. Reads are served by any manager after a
// linearizable read barrier; writes run on the leader, and a follower forwards them to it over the mesh.
import { ApiError, noLeader, versionConflict } from '../api/errors.ts';
import { resolveNodeRef } from '../api/node-ref.ts';
import type { JoinTokenRotate, NodeUpdate } from '../api/schemas.ts';
import { resolveServiceRef } from '../api/service-ref.ts';
import { portLabel, type Service, type ServiceSpec, type Task } from '../api/services.ts';
import { hostPortProtocol, type JoinTokens, type ManagerStatus, type SwarmNode } from '../api/types.ts';
import type { FramedStream } from '../mesh/framed-stream.ts';
import type { MembershipGate } from '../mesh/gate.ts';
import type { MeshHost } from '../mesh/host.ts';
import { caFingerprint, formatJoinToken, generateJoinSecret } from '../mesh/pki.ts';
import { PROTOCOLS } from '../mesh/protocols.ts';
import { type ClusterRecord, ConflictError, type Manager } from './manager.ts';
import { type NodeRecord, toSwarmNode } from './nodes.ts';
import { newTaskId } from './orchestrator.ts';
import { put } from './store/store.ts';
import { awaitsPromotion, promoted, rolledBack, withNewSpec } from './updater.ts';

/** Writes the leader performs; followers send these over PROTOCOLS.control. */
type LeaderOp =
  | { op: 'createService'; spec: ServiceSpec }
  | { op: 'updateService'; ref: string; version: number; spec: ServiceSpec }
  | { op: 'removeService'; ref: string }
  | { op: 'rollbackService'; ref: string }
  | { op: 'promoteService'; ref: string }
  | { op: 'updateNode'; ref: string; update: NodeUpdate }
  | { op: 'setRole'; ref: string; role: 'manager' | 'worker' }
  | { op: 'removeNode'; ref: string; force: boolean }
  | { op: 'rotateJoinToken'; role: 'worker' | 'manager' };

type LeaderAnswer = { ok: true; result: unknown } | { ok: false; status: number; message: string; field?: string };

export class ManagerControl {
  private readonly manager: Manager;
  private readonly host: MeshHost;
  private readonly gate: MembershipGate;

  constructor(manager: Manager, host: MeshHost, gate: MembershipGate) {
    this.manager = manager;
    this.host = host;
    this.gate = gate;
  }

  async start(): Promise<void> {
    await this.host.handle(PROTOCOLS.control, (stream) => this.answerForwarded(stream), { maxFrameBytes: 1024 * 1024 });
  }

  // ------------------------------------------------------------ reads

  async listNodes(): Promise<SwarmNode[]> {
    await this.manager.barrier();
    return this.manager.store.list<NodeRecord>('nodes').map((n) => this.present(n));
  }

  async getNode(ref: string): Promise<SwarmNode> {
    await this.manager.barrier();
    return this.present(resolveNodeRef(this.manager.store.list<NodeRecord>('nodes'), ref));
  }

  async joinTokens(): Promise<JoinTokens> {
    await this.manager.barrier();
    return tokensOf(this.requireCluster());
  }

  async listServices(): Promise<Service[]> {
    await this.manager.barrier();
    return this.manager.store.list<Service>('services');
  }

  async getService(ref: string): Promise<Service> {
    await this.manager.barrier();
    return resolveServiceRef(this.manager.store.list<Service>('services'), ref);
  }

  async listTasks(filter: { service?: string; node?: string }): Promise<Task[]> {
    await this.manager.barrier();
    let tasks = this.manager.store.list<Task>('tasks');
    if (filter.service) {
      const service = resolveServiceRef(this.manager.store.list<Service>('services'), filter.service);
      tasks = tasks.filter((t) => t.serviceId === service.id);
    }
    if (filter.node) {
      const node = resolveNodeRef(this.manager.store.list<NodeRecord>('nodes'), filter.node);
      tasks = tasks.filter((t) => t.nodeId === node.id);
    }
    return tasks.sort(
      (a, b) => a.serviceName.localeCompare(b.serviceName) || a.slot - b.slot || b.createdAt.localeCompare(a.createdAt),
    );
  }

  // ------------------------------------------------------------ writes

  async createService(spec: ServiceSpec): Promise<Service> {
    return (await this.onLeader({ op: 'createService', spec })) as Service;
  }

  async updateService(ref: string, version: number, spec: ServiceSpec): Promise<Service> {
    return (await this.onLeader({ op: 'updateService', ref, version, spec })) as Service;
  }

  async rollbackService(ref: string): Promise<Service> {
    return (await this.onLeader({ op: 'rollbackService', ref })) as Service;
  }

  async promoteService(ref: string): Promise<Service> {
    return (await this.onLeader({ op: 'promoteService', ref })) as Service;
  }

  async removeService(ref: string): Promise<void> {
    await this.onLeader({ op: 'removeService', ref });
  }

  async updateNode(ref: string, update: NodeUpdate): Promise<SwarmNode> {
    return (await this.onLeader({ op: 'updateNode', ref, update })) as SwarmNode;
  }

  async setRole(ref: string, role: 'manager' | 'worker'): Promise<SwarmNode> {
    return (await this.onLeader({ op: 'setRole', ref, role })) as SwarmNode;
  }

  async removeNode(ref: string, force: boolean): Promise<void> {
    await this.onLeader({ op: 'removeNode', ref, force });
  }

  async rotateJoinToken(request: JoinTokenRotate): Promise<JoinTokens> {
    return (await this.onLeader({ op: 'rotateJoinToken', role: request.role })) as JoinTokens;
  }

  // ------------------------------------------------------------ leader execution

  private async onLeader(op: LeaderOp): Promise<unknown> {
    if (this.manager.isLeader()) return this.execute(op);
    const leaderId = this.manager.leaderNodeId();
    const leader = leaderId ? this.manager.store.get<NodeRecord>('nodes', leaderId) : undefined;
    if (!leader) throw noLeader();
    await this.gate.ensureHello(leader.peerId);
    const signal = AbortSignal.timeout(15_000);
    const { stream } = await this.host.openStream(leader.peerId, PROTOCOLS.control, { signal });
    try {
      await stream.send(op);
      const answer = (await stream.read(signal)) as LeaderAnswer | undefined;
      await stream.close();
      if (!answer) throw new ApiError(502, 'the leader closed the connection without answering');
      if (!answer.ok) throw new ApiError(answer.status, answer.message, answer.field);
      return answer.result;
    } catch (error) {
      stream.abort(error as Error);
      throw error;
    }
  }

  private async answerForwarded(stream: FramedStream): Promise<void> {
    const op = (await stream.read(AbortSignal.timeout(10_000))) as LeaderOp | undefined;
    let answer: LeaderAnswer;
    try {
      if (!op || typeof op !== 'object' || typeof op.op !== 'string')
        throw new ApiError(400, 'malformed forwarded request');
      if (!this.manager.isLeader()) throw noLeader();
      answer = { ok: true, result: await this.execute(op) };
    } catch (error) {
      answer = toAnswer(error);
    }
    await stream.send(answer);
    await stream.close();
  }

  private async execute(op: LeaderOp): Promise<unknown> {
    try {
      switch (op.op) {
        case 'createService':
          return await this.executeCreateService(op.spec);
        case 'updateService':
          return await this.executeUpdateService(op.ref, op.version, op.spec);
        case 'rollbackService':
          return await this.executeRollbackService(op.ref);
        case 'promoteService':
          return await this.executePromoteService(op.ref);
        case 'removeService': {
          const service = resolveServiceRef(this.manager.store.list<Service>('services'), op.ref);
          await this.manager.transact([
            { kind: 'delete', table: 'services', id: service.id, expectVersion: service.version },
          ]);
          return null;
        }
        case 'updateNode':
          return await this.executeUpdate(op.ref, op.update);
        case 'setRole':
          return await this.executeSetRole(op.ref, op.role);
        case 'removeNode':
          return await this.executeRemove(op.ref, op.force);
        case 'rotateJoinToken':
          return await this.executeRotate(op.role);
        default:
          throw new ApiError(400, `unknown operation ${String((op as { op: unknown }).op)}`);
      }
    } catch (error) {
      if (error instanceof ConflictError) throw new ApiError(409, error.message);
      throw error;
    }
  }

  private async executeCreateService(spec: ServiceSpec): Promise<Service> {
    const services = this.manager.store.list<Service>('services');
    if (services.some((s) => s.spec.name === spec.name))
      throw new ApiError(409, `a service named ${spec.name} already exists`);
    refusePortConflicts(services, this.manager.store.list<NodeRecord>('nodes'), spec, null);
    const at = new Date().toISOString();
    const service: Service = {
      id: newTaskId(),
      spec,
      specVersion: 1,
      previousSpec: null,
      updateStatus: null,
      version: 0,
      createdAt: at,
      updatedAt: at,
    };
    await this.manager.transact([put('services', service, 'absent')]);
    return this.manager.store.get<Service>('services', service.id)!;
  }

  private async executeUpdateService(ref: string, version: number, spec: ServiceSpec): Promise<Service> {
    const service = resolveServiceRef(this.manager.store.list<Service>('services'), ref);
    if (version !== service.version) throw versionConflict('service', service.id, version, service.version);
    if (spec.name !== service.spec.name) throw new ApiError(400, 'a service cannot be renamed', 'name');
    refusePortConflicts(
      this.manager.store.list<Service>('services'),
      this.manager.store.list<NodeRecord>('nodes'),
      spec,
      service,
    );
    const changed = withNewSpec(service, spec, new Date().toISOString());
    await this.manager.transact([put('services', changed, service.version)]);
    return this.manager.store.get<Service>('services', service.id)!;
  }

  private async executeRollbackService(ref: string): Promise<Service> {
    const service = resolveServiceRef(this.manager.store.list<Service>('services'), ref);
    if (!service.previousSpec) {
      throw new ApiError(400, `service ${service.spec.name} has no previous spec to roll back to`);
    }
    const at = new Date().toISOString();
    const changed = rolledBack(service, at, 'rollback requested');
    await this.manager.transact([put('services', changed, service.version)]);
    return this.manager.store.get<Service>('services', service.id)!;
  }

  private async executePromoteService(ref: string): Promise<Service> {
    const service = resolveServiceRef(this.manager.store.list<Service>('services'), ref);
    if (!awaitsPromotion(service)) {
      throw new ApiError(400, `service ${service.spec.name} has no canaries awaiting promotion`);
    }
    await this.manager.transact([put('services', promoted(service, new Date().toISOString()), service.version)]);
    return this.manager.store.get<Service>('services', service.id)!;
  }

  private async executeUpdate(ref: string, update: NodeUpdate): Promise<SwarmNode> {
    const node = resolveNodeRef(this.manager.store.list<NodeRecord>('nodes'), ref);
    if (update.version !== node.version) throw versionConflict('node', node.id, update.version, node.version);
    if (update.role && update.role !== node.role) this.checkRoleChange(node, update.role);
    const labels = { ...node.labels, ...(update.labelAdd ?? {}) };
    for (const key of update.labelRm ?? []) delete labels[key];
    const changed: NodeRecord = {
      ...node,
      labels,
      availability: update.availability ?? node.availability,
      role: update.role ?? node.role,
      heartbeatPeriodMs:
        update.heartbeatPeriodSeconds === undefined
          ? (node.heartbeatPeriodMs ?? null)
          : update.heartbeatPeriodSeconds === null
            ? null
            : Math.round(update.heartbeatPeriodSeconds * 1000),
      updatedAt: new Date().toISOString(),
    };
    await this.manager.transact([{ kind: 'put', table: 'nodes', object: changed, expectVersion: node.version }]);
    return this.present(this.manager.store.get<NodeRecord>('nodes', node.id)!);
  }

  private async executeSetRole(ref: string, role: 'manager' | 'worker'): Promise<SwarmNode> {
    const node = resolveNodeRef(this.manager.store.list<NodeRecord>('nodes'), ref);
    if (node.role === role) return this.present(node);
    this.checkRoleChange(node, role);
    const changed: NodeRecord = { ...node, role, updatedAt: new Date().toISOString() };
    await this.manager.transact([{ kind: 'put', table: 'nodes', object: changed, expectVersion: node.version }]);
    return this.present(this.manager.store.get<NodeRecord>('nodes', node.id)!);
  }

  /** Refuses a demotion that would leave no manager, or too few reachable ones for a quorum. */
  private checkRoleChange(node: NodeRecord, role: 'manager' | 'worker'): void {
    if (role === 'manager') {
      if (node.status.state !== 'ready')
        throw new ApiError(409, `node ${node.id} is ${node.status.state}; it must be up to become a manager`);
      return;
    }
    const managers = this.manager.store.list<NodeRecord>('nodes').filter((n) => n.role === 'manager');
    if (managers.length <= 1)
      throw new ApiError(409, `node ${node.id} is the last manager of the swarm; promote another node first`);
    const remaining = managers.filter((n) => n.id !== node.id);
    const reachable = remaining.filter((n) => n.status.state === 'ready').length;
    if (reachable < Math.floor(remaining.length / 2) + 1) {
      throw new ApiError(
        409,
        `demoting ${node.id} would leave ${reachable} of ${remaining.length} managers reachable, below a quorum`,
      );
    }
  }

  private async executeRemove(ref: string, force: boolean): Promise<void> {
    const node = resolveNodeRef(this.manager.store.list<NodeRecord>('nodes'), ref);
    if (node.role === 'manager') {
      throw new ApiError(409, `node ${node.id} is a manager; demote it before removing it`);
    }
    if (node.status.state === 'ready' && !force) {
      throw new ApiError(409, `node ${node.id} is not down and can't be removed (use --force to remove it anyway)`);
    }
    const cluster = this.requireCluster();
    const denylist = {
      nodeIds: [...new Set([...cluster.denylist.nodeIds, node.id])],
      peerIds: [...new Set([...cluster.denylist.peerIds, node.peerId])],
    };
    const { version: _version, ...record } = cluster;
    await this.manager.transact([
      { kind: 'delete', table: 'nodes', id: node.id, expectVersion: node.version },
      { kind: 'setCluster', cluster: { ...record, denylist }, expectVersion: cluster.version },
    ]);
  }

  private async executeRotate(role: 'worker' | 'manager'): Promise<JoinTokens> {
    const cluster = this.requireCluster();
    const { version: _version, ...record } = cluster;
    const joinSecrets = { ...cluster.joinSecrets, [role]: generateJoinSecret() };
    await this.manager.transact([
      { kind: 'setCluster', cluster: { ...record, joinSecrets }, expectVersion: cluster.version },
    ]);
    return tokensOf(this.requireCluster());
  }

  // ------------------------------------------------------------ presentation

  private requireCluster(): ClusterRecord & { version: number } {
    const cluster = this.manager.cluster();
    if (!cluster) throw new ApiError(503, 'the swarm is still starting; try again');
    return cluster;
  }

  private present(node: NodeRecord): SwarmNode {
    return toSwarmNode(node, node.role === 'manager' ? this.managerStatus(node) : null);
  }

  private managerStatus(node: NodeRecord): ManagerStatus {
    const status = this.manager.raft.status();
    const raftRole = status.conf.voters.includes(node.id)
      ? 'voter'
      : status.conf.learners.includes(node.id)
        ? 'learner'
        : 'none';
    let reachability: ManagerStatus['reachability'] = node.status.state === 'ready' ? 'reachable' : 'unreachable';
    const progress = status.progress[node.id];
    if (progress && node.id !== status.id) reachability = progress.recentActive ? 'reachable' : 'unreachable';
    return { leader: status.leader === node.id, reachability, raftRole };
  }
}

export function tokensOf(cluster: ClusterRecord): JoinTokens {
  const fingerprint = caFingerprint(cluster.ca.publicKey);
  return {
    worker: formatJoinToken(fingerprint, cluster.joinSecrets.worker),
    manager: formatJoinToken(fingerprint, cluster.joinSecrets.manager),
  };
}

function toAnswer(error: unknown): LeaderAnswer {
  if (error instanceof ApiError) {
    return { ok: false, status: error.status, message: error.message, ...(error.field ? { field: error.field } : {}) };
  }
  return { ok: false, status: 500, message: (error as Error).message };
}

/**
 * A published port belongs to one service across the swarm (every node listens on it, in ingress mode): another
 * service publishing it is refused, naming that service. So is a port a program on the host holds (the nodes
 * report them: daemon/worker/listening-ports.ts), naming the node and the program: in ingress mode when any ready
 * node has it taken (its ingress could not listen), in host mode only when every ready node has (the scheduler
 * keeps the tasks off the others). Ports the service published already are not checked again, so an update is
 * never refused for a conflict that arose after its port was published.
 */
function refusePortConflicts(services: Service[], nodes: NodeRecord[], spec: ServiceSpec, self: Service | null): void {
  const before = new Set((self?.spec.endpoint?.ports ?? []).map(portLabel));
  const ready = nodes.filter((n) => n.status.state === 'ready');
  for (const port of spec.endpoint?.ports ?? []) {
    const label = portLabel(port);
    const owner = services.find(
      (s) => s.id !== self?.id && (s.spec.endpoint?.ports ?? []).some((p) => portLabel(p) === label),
    );
    if (owner) {
      throw new ApiError(409, `port ${label} is already published by service ${owner.spec.name}`, 'endpoint.ports');
    }
    if (before.has(label)) continue;
    const taken = ready.flatMap((node) => {
      const use = node.description.hostPorts?.find(
        (p) => p.port === port.published && hostPortProtocol(p) === port.protocol,
      );
      return use ? [{ node, use }] : [];
    });
    if (taken.length === 0 || (port.mode === 'host' && taken.length < ready.length)) continue;
    const [first] = taken;
    const others = taken.length > 1 ? ` (and on ${taken.length - 1} more node${taken.length > 2 ? 's' : ''})` : '';
    throw new ApiError(
      409,
      `port ${label} is in use on node ${first!.node.description.hostname} (${first!.node.id}) by ` +
        `${first!.use.process ?? 'a program of the host'}, not by a swarmd service${others}`,
      'endpoint.ports',
    );
  }
}
