// One swarmd node: the mesh host and membership gate, the agent that heartbeats to the leader, the
// manager components when this node is a manager, and the control API on a unix socket.
import { chmod, rm, stat } from 'node:fs/promises';
import { arch, cpus, hostname, platform, totalmem } from 'node:os';
import { join } from 'node:path';
import { ApiError, notManager } from './api/errors.ts';
import type { ControlHandlers, ServiceLogLine, ServiceLogOptions } from './api/handlers.ts';
import { startApiServer } from './api/server.ts';
import type { Task } from './api/services.ts';
import type { HostPortInUse, NodeDescription, NodeRole, SwarmInfo } from './api/types.ts';
import { SWARMD_VERSION } from './api/version.ts';
import { EventLoopDelay } from './event-loop-delay.ts';
import { DataPathServer, directFirst, noTunnels, type TunnelPathCounts } from './lb/data-path.ts';
import { meshTicketFetcher, serveDataPathTickets } from './lb/data-path-tickets.ts';
import { IngressSet, type PublishedPorts } from './lb/ingress-set.ts';
import { defaultLbThreads, IngressThreads, MAX_LB_THREADS } from './lb/ingress-threads.ts';
import { METRICS_CONTENT_TYPE, renderMetrics } from './lb/metrics.ts';
import { nativeHopDialer } from './lb/native-hop.ts';
import { chooseRelayMode, nativeRelay, type ParkedConnection, type RelayMode } from './lb/native-relay.ts';
import { serveNativeHop, serveRemote } from './lb/remote.ts';
import { newMeshHopCounters } from './lb/stats.ts';
import { validateTable } from './lb/table.ts';
import { type OpenTunnel, TunnelDialer, TunnelServer } from './lb/tunnel.ts';
import { collectServiceLogs, serveLogs } from './logs.ts';
// Manager code (Raft, storage, the store) is loaded only on managers: workers are often small devices.
import type { ManagerControl } from './manager/control.ts';
import type { ClusterRecord, ClusterSettings, Manager } from './manager/manager.ts';
import type { NodeRecord } from './manager/nodes.ts';
import type { StoreEvent } from './manager/store/store.ts';
import { MembershipGate } from './mesh/gate.ts';
import { createMeshHost, type MeshHost } from './mesh/host.ts';
import type { HeartbeatResponse } from './mesh/messages.ts';
import { loadOrCreateNodeKey } from './mesh/node-key.ts';
import {
  CertificateVerifier,
  caFingerprint,
  checkManagerBeforeJoin,
  createClusterCa,
  generateJoinSecret,
  issueCertificate,
  parseJoinToken,
  verifyCertificate,
} from './mesh/pki.ts';
import { PROTOCOLS } from './mesh/protocols.ts';
import { type KnownManager, loadNodeState, type NodeState, nodeStatePath, saveNodeState } from './node-state.ts';
import { Agent } from './worker/agent.ts';
import { ProcessExecutor } from './worker/executors/process.ts';
import type { Executor, Runtime } from './worker/executors/types.ts';
import { ListeningPorts } from './worker/listening-ports.ts';
import { TaskRunner } from './worker/task-runner.ts';

export { SWARMD_VERSION } from './api/version.ts';

export interface HostPort {
  host: string;
  port: number;
}

export interface SwarmdOptions {
  dataDir: string;
  listen?: HostPort;
  advertise?: HostPort | null;
  meshEncryption?: 'noise' | 'tls';
  /** Raft tick (tests use shorter ones). */
  raftTickMs?: number;
  /** Named resources this node declares (--node-resource), advertised with the discovered GPUs. */
  nodeResources?: { kind: string; ids: string[] }[];
  /** The apptainer/singularity binary (--apptainer); default: whichever is on PATH. */
  apptainerBinary?: string;
  /** Where published ports listen (--ingress-host); default all interfaces. Tests use 127.0.0.1. */
  ingressHost?: string;
  /**
   * `run` only (--force-new-cluster): a manager whose swarm lost its Raft quorum for good starts again as the only
   * manager, with the cluster state it has; the other managers become workers.
   */
  forceNewCluster?: boolean;
  /** Threads that serve published ports (--lb-threads); 0: the main thread. Default defaultLbThreads(). */
  lbThreads?: number;
  /** How forwarded connections to local tasks move their bytes (--lb-relay); default auto (native where built). */
  lbRelay?: RelayMode | 'auto';
  /**
   * The load balancer's data path (--data-path-port): tunnels to this node over direct TLS connections on this port
   * (0: any free one), keyed over the mesh; 'off': every tunnel through the mesh. Default 0.
   */
  dataPathPort?: number | 'off';
  log?: (level: 'info' | 'warn' | 'error', message: string) => void;
}

export class SwarmdError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SwarmdError';
  }
}

const DEFAULT_LISTEN: HostPort = { host: '0.0.0.0', port: 2377 };
/**
 * Load balancer tunnels per mesh connection, each way: one per pair of nodes and ingress thread (a tunnel carries
 * every connection the thread forwards to that node, see daemon/lb/tunnel.ts), or one from the main thread; twice
 * that covers tunnels reopened while the old ones are still closing.
 */
const LB_TUNNELS = 2 * (MAX_LB_THREADS + 1);

/**
 * What this node has. Accelerators and declared resources come once discovery ran (startExecutors); the ports
 * the host's programs listen on once the first scan ran.
 */
function describeThisHost(
  extra: Pick<NodeDescription['resources'], 'gpus' | 'generic'> = {},
  hostPorts: HostPortInUse[] = [],
): NodeDescription {
  return {
    hostname: hostname(),
    platform: { os: platform(), arch: arch() },
    resources: {
      nanoCpus: cpus().length * 1e9,
      memoryBytes: totalmem(),
      ...(extra.gpus?.length ? { gpus: extra.gpus } : {}),
      ...(extra.generic?.length ? { generic: extra.generic } : {}),
    },
    ...(hostPorts.length > 0 ? { hostPorts } : {}),
    swarmdVersion: SWARMD_VERSION,
  };
}

function toMultiaddr(target: HostPort): string {
  const family = /^\d+\.\d+\.\d+\.\d+$/.test(target.host) ? 'ip4' : target.host.includes(':') ? 'ip6' : 'dns';
  return `/${family}/${target.host}/tcp/${target.port}`;
}

/** What a nudge carries: nothing (heartbeat now), or a notice from a forced recovery's leader (onNudge). */
interface NudgeFrame {
  forcedEpoch: number;
  from: string;
}

export class Swarmd {
  private state: NodeState;
  private readonly opts: SwarmdOptions;
  private readonly log: NonNullable<SwarmdOptions['log']>;
  private host!: MeshHost;
  private gate!: MembershipGate;
  private agent!: Agent;
  private runner!: TaskRunner;
  private ingresses!: PublishedPorts;
  /** The TCP ports other programs on this host listen on, for the node description. */
  private listeningPorts: ListeningPorts | undefined;
  private tunnels: TunnelDialer | undefined;
  private tunnelServer: TunnelServer | undefined;
  /** Tunnels this node opened to others, by path: counted where they are dialled (main thread or threads). */
  private outTunnels: () => TunnelPathCounts = noTunnels;
  /** Native hops other nodes opened to tasks of this node, relaying now. */
  private nativeHopsIn = 0;
  private nativeHopsServed = 0;
  private dataPath: DataPathServer | undefined;
  private readonly meshHopCounters = newMeshHopCounters();
  private readonly eventLoopDelay = new EventLoopDelay();
  private executors = new Map<Runtime, Executor>();
  private accelerators: Pick<NodeDescription['resources'], 'gpus' | 'generic'> = {};
  private manager: Manager | null = null;
  private control: ManagerControl | null = null;
  private api: { close(): Promise<void> } | null = null;
  private denylist = { nodeIds: new Set<string>(), peerIds: new Set<string>() };
  private readonly verifier: CertificateVerifier;
  private stopping: Promise<void> | null = null;
  /** Resolves when the node stops (leave, or a signal). */
  readonly stopped: Promise<void>;
  private resolveStopped!: () => void;

  private constructor(opts: SwarmdOptions, state: NodeState) {
    this.opts = opts;
    this.state = state;
    this.log = opts.log ?? ((level, message) => process.stderr.write(`${level}: ${message}\n`));
    this.verifier = new CertificateVerifier(state.caPublicKey);
    this.stopped = new Promise((resolve) => {
      this.resolveStopped = resolve;
    });
  }

  get nodeId(): string {
    return this.state.nodeId;
  }

  get socketPath(): string {
    return join(this.opts.dataDir, 'swarmd.sock');
  }

  /** The TCP port the mesh listens on: the one asked for, or the one the kernel chose for port 0. */
  get meshPort(): number | undefined {
    for (const addr of this.host.multiaddrs()) {
      const port = /\/tcp\/(\d+)/.exec(addr)?.[1];
      if (port !== undefined) return Number(port);
    }
    return undefined;
  }

  // ------------------------------------------------------------ the three ways to start

  /** `swarmd init`: a new swarm with this node as its first manager. */
  static async init(opts: SwarmdOptions, settings: Partial<ClusterSettings> = {}): Promise<Swarmd> {
    await assertFreshDataDir(opts.dataDir);
    const { DEFAULT_SETTINGS, newNodeId } = await import('./manager/manager.ts');
    const key = await loadOrCreateNodeKey(opts.dataDir);
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id');
    const peerId = peerIdFromPrivateKey(key).toString();
    const ca = createClusterCa();
    const clusterId = newNodeId();
    const nodeId = newNodeId();
    const cluster: ClusterRecord = {
      id: clusterId,
      createdAt: new Date().toISOString(),
      ca: ca.toObject(),
      joinSecrets: { worker: generateJoinSecret(), manager: generateJoinSecret() },
      settings: { ...DEFAULT_SETTINGS, ...settings },
      denylist: { nodeIds: [], peerIds: [] },
    };
    const cert = issueCertificate(
      ca,
      { clusterId, nodeId, peerId, role: 'manager' },
      { ttlMs: cluster.settings.certTtlMs },
    );
    const state: NodeState = {
      v: 1,
      nodeId,
      clusterId,
      role: 'manager',
      caPublicKey: cluster.ca.publicKey,
      cert,
      listen: opts.listen ?? DEFAULT_LISTEN,
      advertise: opts.advertise ?? null,
      meshEncryption: opts.meshEncryption ?? 'noise',
      managers: [],
    };
    const daemon = new Swarmd(opts, state);
    await daemon.startMesh();
    state.managers = [{ nodeId, peerId, addrs: daemon.host.multiaddrs() }];
    await daemon.startManager(true);
    const manager = daemon.manager!;
    await manager.raft.waitForLeader(15_000);
    const now = new Date().toISOString();
    const self: NodeRecord = {
      id: nodeId,
      version: 0,
      peerId,
      role: 'manager',
      availability: 'active',
      labels: {},
      description: describeThisHost(),
      addresses: daemon.host.multiaddrs(),
      status: { state: 'ready', message: '', since: now },
      createdAt: now,
      updatedAt: now,
    };
    await manager.transact([
      { kind: 'setCluster', cluster: { ...cluster }, expectVersion: 'absent' },
      { kind: 'put', table: 'nodes', object: self, expectVersion: 'absent' },
    ]);
    await saveNodeState(opts.dataDir, state);
    await daemon.startNodeServices();
    return daemon;
  }

  /** `swarmd join`: checks the swarm's CA against the token, presents the token, gets a certificate. */
  static async join(opts: SwarmdOptions & { token: string; remote: HostPort }): Promise<Swarmd> {
    const token = parseJoinToken(opts.token);
    await assertFreshDataDir(opts.dataDir);
    const key = await loadOrCreateNodeKey(opts.dataDir);
    const listen = opts.listen ?? DEFAULT_LISTEN;
    const encryption = opts.meshEncryption ?? 'noise';
    // A host only for the join: the real one is started with the swarm's DHT once we are a member.
    const joinHost = await createMeshHost({ privateKey: key, listen: { host: listen.host, port: 0 }, encryption });
    let answer: { nodeId: string; role: NodeRole; cert: string; managers: KnownManager[] };
    let caPublicKey: string;
    let clusterId: string;
    try {
      const where = `${opts.remote.host}:${opts.remote.port}`;
      const { stream, remotePeer } = await joinHost
        .openStream(toMultiaddr(opts.remote), PROTOCOLS.join, { signal: AbortSignal.timeout(15_000) })
        .catch((error: Error) => {
          const hint = /negotiate|handshake|encrypt/i.test(error.message)
            ? ` (this node uses --mesh-encryption ${encryption}; the swarm may use the other one)`
            : '';
          throw new SwarmdError(`cannot reach a manager at ${where}: ${error.message}${hint}`);
        });
      const hello = (await stream.read(AbortSignal.timeout(15_000))) as Record<string, unknown> | undefined;
      if (!hello || typeof hello.error === 'string') {
        throw new SwarmdError(
          `the manager at ${opts.remote.host}:${opts.remote.port} refused: ${String(hello?.error ?? 'no answer')}`,
        );
      }
      caPublicKey = String(hello.caPublicKey);
      clusterId = String(hello.clusterId);
      // Before the secret leaves this machine: is this the swarm the token names?
      checkManagerBeforeJoin({
        token: opts.token,
        caPublicKey,
        managerCert: String(hello.managerCert),
        managerPeerId: remotePeer,
        clusterId,
      });
      await stream.send({ secret: token.secret, description: describeThisHost(), addresses: [] });
      const reply = (await stream.read(AbortSignal.timeout(30_000))) as Record<string, unknown> | undefined;
      await stream.close().catch(() => {});
      if (!reply || typeof reply.error === 'string')
        throw new SwarmdError(`join refused: ${String(reply?.error ?? 'no answer')}`);
      answer = reply as unknown as typeof answer;
      verifyCertificate(caPublicKey, answer.cert, { clusterId, expectedPeerId: joinHost.peerId });
    } finally {
      await joinHost.stop();
    }
    const state: NodeState = {
      v: 1,
      nodeId: answer.nodeId,
      clusterId,
      role: answer.role,
      caPublicKey,
      cert: answer.cert,
      listen,
      advertise: opts.advertise ?? null,
      meshEncryption: encryption,
      managers: answer.managers,
    };
    await saveNodeState(opts.dataDir, state);
    return Swarmd.run(opts);
  }

  /** `swarmd run`: starts a node again from its data dir. */
  static async run(opts: SwarmdOptions): Promise<Swarmd> {
    const state = await loadNodeState(opts.dataDir);
    if (!state) {
      throw new SwarmdError(
        `${nodeStatePath(opts.dataDir)} not found: this data dir is not part of a swarm (use swarmd init or swarmd join)`,
      );
    }
    if (opts.listen) state.listen = opts.listen;
    if (opts.advertise) state.advertise = opts.advertise;
    if (opts.forceNewCluster && state.role !== 'manager') {
      throw new SwarmdError(
        '--force-new-cluster: this node is a worker; run it on a manager, which holds the cluster state',
      );
    }
    const daemon = new Swarmd(opts, state);
    await daemon.startMesh();
    if (state.role === 'manager') await daemon.startManager(false, opts.forceNewCluster ?? false);
    await daemon.startNodeServices();
    return daemon;
  }

  // ------------------------------------------------------------ components

  private async startMesh(): Promise<void> {
    const key = await loadOrCreateNodeKey(this.opts.dataDir);
    const managerAddrs = this.state.managers.flatMap((m) =>
      m.addrs.map((a) => (a.includes('/p2p/') ? a : `${a}/p2p/${m.peerId}`)),
    );
    this.host = await createMeshHost({
      privateKey: key,
      listen: this.state.listen,
      ...(this.state.advertise ? { advertise: this.state.advertise } : {}),
      encryption: this.state.meshEncryption,
      dht: {
        protocolPrefix: `/swarmd/${this.state.clusterId.slice(0, 12)}`,
        server: this.state.role === 'manager',
        bootstrap: managerAddrs,
      },
      authorize: (peer, protocol) => this.gate.authorize(peer, protocol),
      log: (level, message) => this.log(level === 'debug' ? 'info' : level, message),
    });
    this.gate = new MembershipGate({
      host: this.host,
      verifier: this.verifier,
      clusterId: this.state.clusterId,
      ownCert: () => this.state.cert,
      isDenied: (nodeId, peerId) =>
        this.manager
          ? this.manager.isDenied(nodeId, peerId)
          : this.denylist.nodeIds.has(nodeId) || this.denylist.peerIds.has(peerId),
      currentRole: (nodeId) => this.manager?.store.get<NodeRecord>('nodes', nodeId)?.role,
      log: (level, message) => this.log(level, message),
    });
    await this.gate.start();
    for (const m of this.state.managers) await this.host.addPeerAddresses(m.peerId, m.addrs);
  }

  private async startManager(bootstrap: boolean, forceNewCluster = false): Promise<void> {
    const { Manager } = await import('./manager/manager.ts');
    const { ManagerControl } = await import('./manager/control.ts');
    if (forceNewCluster) this.log('warn', 'force-new-cluster: starting as the only manager of the swarm');
    this.manager = await Manager.start({
      dataDir: this.opts.dataDir,
      nodeId: this.state.nodeId,
      host: this.host,
      gate: this.gate,
      bootstrap,
      forceNewCluster,
      ...(this.opts.raftTickMs ? { tickMs: this.opts.raftTickMs } : {}),
      peerHint: (nodeId) => this.state.managers.find((m) => m.nodeId === nodeId)?.peerId,
      tellLeftOut: (nodeId, forcedEpoch) => this.tellLeftOut(nodeId, forcedEpoch),
      watch: (events) => this.onStoreEvents(events),
      log: this.log,
    });
    this.control = new ManagerControl(this.manager, this.host, this.gate);
    await this.control.start();
  }

  /** Keeps the address book and the list of managers in line with the node table; drops removed nodes. */
  private onStoreEvents(events: StoreEvent[]): void {
    let managersChanged = false;
    let endpointsChanged = false;
    for (const event of events) {
      // A task assigned to (or stopped on) a node: it acts now rather than at its next heartbeat.
      if (event.table === 'tasks') {
        const task = (event.object ?? event.previous) as Task | null;
        const nodeId = task?.nodeId;
        if (nodeId === this.state.nodeId) this.agent?.beatSoon();
        else if (nodeId && this.manager?.isLeader()) this.nudgeSoon(nodeId);
        if (task?.publishes) endpointsChanged = true;
      }
      if (event.table === 'services') endpointsChanged = true;
      if (event.table !== 'nodes') continue;
      const node = (event.object ?? event.previous) as NodeRecord | null;
      if (!node) continue;
      if (event.object) void this.host.addPeerAddresses(node.peerId, node.addresses).catch(() => {});
      if (event.kind === 'delete') {
        this.gate.forget(node.peerId);
        void this.host.hangUp(node.peerId).catch(() => {});
      }
      if (node.role === 'manager' || (event.previous as NodeRecord | null)?.role === 'manager') managersChanged = true;
    }
    if (managersChanged && this.manager) {
      this.state.managers = this.manager.knownManagers();
      this.saveStateSoon();
    }
    // The endpoint table reaches every node soon after a change, not at its next heartbeat. Most task events
    // leave it as it was (a status that does not make a task ready or draining): no nudges then.
    if (endpointsChanged && this.manager?.isLeader() && this.manager.endpointTableVersion() !== this.nudgedVersion) {
      this.nudgedVersion = this.manager.endpointTableVersion();
      this.agent?.beatSoon();
      for (const node of this.manager.store.list<NodeRecord>('nodes')) {
        if (node.id !== this.state.nodeId) this.nudgeSoon(node.id);
      }
    }
  }

  private readonly nudges = new Set<string>();
  /** The endpoint table version the nodes were last nudged for. */
  private nudgedVersion = '';

  /** Tells a node (once per turn of the event loop) to heartbeat now: its tasks changed. Best effort. */
  private nudgeSoon(nodeId: string): void {
    if (this.nudges.has(nodeId)) return;
    this.nudges.add(nodeId);
    setImmediate(() => {
      this.nudges.delete(nodeId);
      this.sendNudge(nodeId, {}); // best effort: the node's next heartbeat brings the change anyway
    });
  }

  /** Sends one nudge frame to a node of the store; failures are ignored (every caller has a fallback). */
  private sendNudge(nodeId: string, frame: NudgeFrame | Record<string, never>): void {
    const peerId = this.manager?.store.get<NodeRecord>('nodes', nodeId)?.peerId;
    if (!peerId) return;
    void (async () => {
      await this.gate.ensureHello(peerId);
      const { stream } = await this.host.openStream(peerId, PROTOCOLS.nudge, { signal: AbortSignal.timeout(2000) });
      await stream.send(frame);
      await stream.close();
    })().catch(() => {});
  }

  /**
   * Tells a manager that --force-new-cluster left out that it was: a nudge carrying the recovery's epoch. It then
   * asks this node for its role (onNudge). Best effort: the leader tells it again while it stays away.
   */
  private tellLeftOut(nodeId: string, forcedEpoch: number): void {
    this.sendNudge(nodeId, { forcedEpoch, from: this.state.nodeId });
  }

  /**
   * A nudge: heartbeat now. One that carries a forced epoch newer than this manager's store knows comes from the
   * leader of a swarm recovered with --force-new-cluster that left this manager out: this node's Raft membership is
   * the old one, which it and the other managers left out may still form a majority of (a split brain). So it asks
   * that leader for its role, directly, and is told it is a worker (onHeartbeat then stops its manager and drops its
   * Raft data). An epoch no newer than ours is ignored: a stale or replayed notice cannot demote a manager.
   */
  private async onNudge(frame: unknown, remotePeer: string): Promise<void> {
    const notice = frame as Partial<NudgeFrame> | undefined;
    const forcedEpoch = notice?.forcedEpoch;
    if (typeof forcedEpoch !== 'number' || !Number.isInteger(forcedEpoch) || typeof notice?.from !== 'string') {
      this.agent?.beatSoon();
      return;
    }
    const ours = this.manager?.cluster()?.forcedEpoch ?? 0;
    if (!this.manager || forcedEpoch <= ours) return;
    this.log(
      'warn',
      `the leader of a swarm recovered with --force-new-cluster (epoch ${forcedEpoch}, ours ${ours}) says this ` +
        `manager was left out; asking it for this node's role`,
    );
    await this.agent?.reportTo({ nodeId: notice.from.slice(0, 64), peerId: remotePeer, addrs: [] });
  }

  private saveTimer: NodeJS.Timeout | null = null;

  /** Writes node.json shortly after a burst of changes, once. */
  private saveStateSoon(): void {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      void saveNodeState(this.opts.dataDir, this.state).catch((error) =>
        this.log('warn', `saving node state: ${(error as Error).message}`),
      );
    }, 200);
  }

  private async stopManager(): Promise<void> {
    const manager = this.manager;
    this.manager = null;
    this.control = null;
    if (manager) await manager.stop();
    await rm(join(this.opts.dataDir, 'raft'), { recursive: true, force: true });
  }

  /** The runtimes this node offers: plain processes always, Docker when an engine answers. */
  private async startExecutors(): Promise<void> {
    const warn = (message: string) => this.log('warn', message);
    // Tasks run as an unprivileged user must reach their directories under the data dir: others may
    // traverse it (not list it; node.key and node.json stay 0600).
    await chmod(this.opts.dataDir, 0o711);
    this.executors.set('process', new ProcessExecutor({ stateDir: join(this.opts.dataDir, 'process-tasks'), warn }));
    const dockerHost = process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
    if (
      dockerHost.startsWith('unix://') &&
      (await stat(dockerHost.slice(7)).then(
        () => true,
        () => false,
      ))
    ) {
      const { default: Docker } = await import('dockerode');
      const { DockerExecutor } = await import('./worker/executors/docker.ts');
      const docker = new Docker({ socketPath: dockerHost.slice(7) });
      const executor = new DockerExecutor({ docker, nodeId: this.state.nodeId, warn });
      const available = await executor.available();
      if (available.ok) this.executors.set('docker', executor);
      else this.log('info', `docker runtime not offered: ${available.reason ?? 'engine not available'}`);
    }
    const { SingularityExecutor } = await import('./worker/executors/singularity.ts');
    const singularity = new SingularityExecutor({
      dataDir: this.opts.dataDir,
      ...(this.opts.apptainerBinary ? { binary: this.opts.apptainerBinary } : {}),
      log: (level, message) => this.log(level, message),
    });
    const apptainer = await singularity.available();
    if (apptainer.ok) this.executors.set('singularity', singularity);
    else this.log('info', `singularity runtime not offered: ${apptainer.reason ?? 'not available'}`);
    await this.discoverAccelerators();
  }

  /** GPUs found on this host and resources the operator declared: advertised with every heartbeat. */
  private async discoverAccelerators(): Promise<void> {
    const { discoverAccelerators } = await import('./worker/accelerators/discover.ts');
    const found = await discoverAccelerators();
    for (const warning of found.warnings) this.log('warn', `accelerators: ${warning}`);
    const gpus = found.gpus.map(({ id, model, memoryBytes }) => ({
      id,
      ...(model ? { model } : {}),
      ...(memoryBytes ? { memoryBytes } : {}),
    }));
    if (gpus.length > 0)
      this.log('info', `accelerators: ${gpus.map((g) => `${g.id} (${g.model ?? 'gpu'})`).join(', ')}`);
    this.accelerators = { gpus, generic: this.opts.nodeResources ?? [] };
  }

  private async startNodeServices(): Promise<void> {
    await this.startExecutors();
    this.runner = new TaskRunner({
      nodeId: this.state.nodeId,
      executors: this.executors,
      stateFile: join(this.opts.dataDir, 'tasks.json'),
      onStatusChange: () => this.agent?.beatSoon(),
      // This node's ingresses stop sending the task new connections and let open ones finish (up to its grace
      // period) before it is told to stop. Other nodes stop choosing it once the table lists it as draining.
      beforeStop: (task) =>
        task.publishes ? this.ingresses.drain(task.id, task.template.stopGracePeriodMs) : Promise.resolve(),
      log: (level, message) => this.log(level, message),
    });
    await this.startLoadBalancer();
    this.listeningPorts = new ListeningPorts({
      exclude: () => this.ingresses.listening(),
      ...(this.opts.ingressHost ? { bindHost: this.opts.ingressHost } : {}),
      onChange: () => this.agent?.beatSoon(),
    });
    // Not awaited: naming the owners walks /proc; the first heartbeat after the scan carries the ports.
    void this.listeningPorts.start();
    await serveLogs(this.host, () => this.runner);
    await this.host.handle(
      PROTOCOLS.nudge,
      async (stream, remotePeer) => {
        const frame = await stream.read(AbortSignal.timeout(2000)).catch(() => undefined);
        await this.onNudge(frame, remotePeer);
      },
      { maxFrameBytes: 1024 },
    );
    this.agent = new Agent({
      host: this.host,
      gate: this.gate,
      request: () => ({
        nodeId: this.state.nodeId,
        description: describeThisHost(this.accelerators, this.listeningPorts?.current()),
        addresses: this.host.multiaddrs(),
        certSerial: '',
        taskStatuses: this.runner.pendingStatuses(),
        ...(this.endpointsVersion === undefined ? {} : { endpointsVersion: this.endpointsVersion }),
      }),
      // Managers report to the leader too (from the live node table); workers use what they last heard.
      managers: () =>
        this.manager ? this.manager.knownManagers().filter((m) => m.nodeId !== this.state.nodeId) : this.state.managers,
      isManager: () => this.manager !== null,
      isLeader: () => this.manager?.isLeader() ?? false,
      reportLocally: () => this.reportLocally(),
      onResponse: (response) => this.onHeartbeat(response),
      onManagersLearned: (managers) => {
        if (managers.length > 0 && !this.manager) this.state.managers = managers;
      },
      log: this.log,
    });
    // A manager's own liveness is noted by its leader loop; others heartbeat. Managers that are not the
    // leader heartbeat too, so the leader knows they are alive.
    this.agent.start();
    this.api = await startApiServer({
      socketPath: this.socketPath,
      handlers: this.handlers(),
      log: { error: (message) => this.log('error', message) },
    });
  }

  /** Published ports on this node, and the mesh hop's far end for this node's tasks. */
  private async startLoadBalancer(): Promise<void> {
    const lbLog = (message: string) => this.log('warn', message);
    const openTunnel: OpenTunnel = async (peerId, signal) => {
      // The far end serves members only: it must have seen our certificate (once per connection).
      await this.gate.ensureHello(peerId);
      return this.host.openByteStream(peerId, PROTOCOLS.lb, { signal, maxOutboundStreams: LB_TUNNELS });
    };
    const where = {
      nodeId: this.state.nodeId,
      ...(this.opts.ingressHost ? { host: this.opts.ingressHost } : {}),
      log: (level: 'info' | 'warn', message: string) => this.log(level, message),
    };
    const dataPathPort = this.opts.dataPathPort ?? 0;
    const fetchTicket = dataPathPort === 'off' ? undefined : meshTicketFetcher(this.host, this.gate);
    const threads = Math.min(MAX_LB_THREADS, this.opts.lbThreads ?? defaultLbThreads());
    const relay = chooseRelayMode(this.opts.lbRelay ?? 'auto', (message) => this.log('info', message));
    if (threads > 0) {
      // Each thread keeps its own tunnels: over the data path with tickets this thread fetches for it, or through
      // the mesh, whose streams this thread opens and relays.
      const ingresses = new IngressThreads({
        ...where,
        threads,
        relay,
        openTunnel,
        ...(fetchTicket === undefined ? {} : { fetchTicket }),
      });
      this.ingresses = ingresses;
      this.outTunnels = () => ingresses.tunnelCounts();
    } else {
      const paths = directFirst(fetchTicket, openTunnel, lbLog);
      const tunnels = new TunnelDialer(paths.open, lbLog);
      this.tunnels = tunnels;
      const native = relay === 'native' && fetchTicket !== undefined ? nativeRelay() : undefined;
      const hops =
        typeof native === 'object' && native.dataPath ? nativeHopDialer(native, fetchTicket!, lbLog) : undefined;
      this.outTunnels = () => ({ ...paths.counts(), native: hops?.open() ?? 0, mux: hops?.muxes() ?? 0 });
      this.ingresses = new IngressSet({
        ...where,
        relay,
        dialPeer: (peerId, header, signal) => tunnels.dial(peerId, header, signal),
        ...(hops === undefined ? {} : { dialNative: hops.dial }),
      });
    }
    const tunnelServer = new TunnelServer(
      (stream) =>
        void serveRemote(stream, (taskId) => this.runner.localAddress(taskId), {
          log: lbLog,
          drains: this.ingresses.meshStreams,
        }).then((result) => {
          this.meshHopCounters[result]++;
        }),
      lbLog,
    );
    this.tunnelServer = tunnelServer;
    await this.host.handleBytes(PROTOCOLS.lb, (stream) => tunnelServer.serve(stream), {
      maxInboundStreams: LB_TUNNELS,
    });
    if (dataPathPort !== 'off') {
      const native = relay === 'native' ? nativeRelay() : undefined;
      const dataPath = new DataPathServer({
        host: this.state.listen.host,
        port: dataPathPort,
        onTunnel: (socket) => tunnelServer.serve(socket, 'direct'),
        ...(typeof native === 'object' && native.dataPath
          ? {
              native: {
                relay: native,
                onNativeHop: (parked: ParkedConnection, header: Buffer) =>
                  void serveNativeHop(parked, header, (taskId) => this.runner.localAddress(taskId), {
                    log: lbLog,
                    drains: this.ingresses.meshStreams,
                    onEnd: () => this.nativeHopsIn--,
                  }).then((result) => {
                    this.meshHopCounters[result]++;
                    if (result !== 'served') return;
                    this.nativeHopsIn++;
                    this.nativeHopsServed++;
                  }),
              },
            }
          : {}),
        log: lbLog,
      });
      try {
        await dataPath.listen();
      } catch (err) {
        throw new SwarmdError(
          `--data-path-port ${dataPathPort}: cannot listen on ${this.state.listen.host}: ${(err as Error).message}`,
        );
      }
      this.dataPath = dataPath;
      const hops = typeof native === 'object' && native.dataPath ? ', native hops in the relay' : '';
      this.log(
        'info',
        `lb: data path on ${this.state.listen.host}:${dataPath.port} (TLS 1.3, keys over the mesh${hops})`,
      );
    }
    await serveDataPathTickets(this.host, this.dataPath);
  }

  /** The version of the endpoint table last applied from a heartbeat answer (the leader then leaves it out). */
  private endpointsVersion: string | undefined;

  /** A new endpoint table (from the leader's heartbeat answer, or the leader's own store). */
  private applyEndpointTable(table: unknown): void {
    const { services, dropped } = validateTable(table);
    if (dropped > 0) this.log('warn', `lb: dropped ${dropped} malformed entries of the endpoint table`);
    this.ingresses.update(services);
  }

  private recovered = false;

  /** The leader's own heartbeat: its task statuses straight into the store, its tasks straight out. */
  private async reportLocally(): Promise<void> {
    const manager = this.manager;
    if (!manager) return;
    const self = manager.store.get<NodeRecord>('nodes', this.state.nodeId);
    if (self)
      manager.noteNodeFacts(self, { description: describeThisHost(this.accelerators, this.listeningPorts?.current()) });
    await manager.applyTaskStatuses(this.state.nodeId, this.runner.pendingStatuses());
    const tasks = manager.store.list<Task>('tasks').filter((t) => t.nodeId === this.state.nodeId);
    if (!this.recovered) {
      this.recovered = true;
      await this.runner.recover(tasks);
    }
    this.runner.acknowledge(tasks.map((t) => ({ taskId: t.id, status: t.status })));
    this.runner.sync(tasks);
    this.applyEndpointTable(manager.endpointTable());
    // Applied from our own store, not as a version of a leader's: the next leader we heartbeat sends its table.
    this.endpointsVersion = undefined;
  }

  private async onHeartbeat(response: Extract<HeartbeatResponse, { ok: true }>): Promise<void> {
    const tasks = Array.isArray(response.tasks) ? response.tasks : [];
    if (!this.recovered) {
      // First word from the leader since start: re-attach to tasks still running from before.
      this.recovered = true;
      await this.runner.recover(tasks);
    }
    this.runner.acknowledge(tasks.map((t) => ({ taskId: t.id, status: t.status })));
    this.runner.sync(tasks);
    // An old leader sends none: keep what we have rather than close every published port.
    if (response.endpoints !== undefined) {
      this.applyEndpointTable(response.endpoints);
      const version = response.endpointsVersion;
      this.endpointsVersion = typeof version === 'string' && version.length <= 64 ? version : undefined;
    }
    this.denylist = { nodeIds: new Set(response.denylist.nodeIds), peerIds: new Set(response.denylist.peerIds) };
    let changed = false;
    if (response.cert && response.cert !== this.state.cert) {
      this.state.cert = response.cert;
      changed = true;
    }
    if (response.role !== this.state.role) {
      this.log('info', `role changed: ${this.state.role} -> ${response.role}`);
      this.state.role = response.role;
      changed = true;
      if (response.role === 'manager' && !this.manager) await this.startManager(false);
      if (response.role === 'worker' && this.manager) await this.stopManager();
    }
    const managers = JSON.stringify(response.managers);
    if (managers !== JSON.stringify(this.state.managers)) {
      this.state.managers = response.managers;
      changed = true;
    }
    if (changed) await saveNodeState(this.opts.dataDir, this.state);
  }

  async stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.agent?.stop();
      this.listeningPorts?.stop();
      this.eventLoopDelay.stop();
      await this.ingresses?.close().catch(() => {});
      this.tunnels?.close();
      this.tunnelServer?.close();
      await this.dataPath?.close();
      (this.executors.get('process') as ProcessExecutor | undefined)?.close();
      await this.api?.close().catch(() => {});
      if (this.manager) await this.manager.stop().catch(() => {});
      await this.host?.stop().catch(() => {});
      this.resolveStopped();
    })();
    return this.stopping;
  }

  // ------------------------------------------------------------ API

  private requireControl(): ManagerControl {
    if (!this.control) throw notManager();
    return this.control;
  }

  private handlers(): ControlHandlers {
    return {
      info: async () => this.info(),
      listNodes: () => this.requireControl().listNodes(),
      getNode: (ref) => this.requireControl().getNode(ref),
      updateNode: (ref, update) => this.requireControl().updateNode(ref, update),
      promoteNode: (ref) => this.requireControl().setRole(ref, 'manager'),
      demoteNode: (ref) => this.requireControl().setRole(ref, 'worker'),
      removeNode: (ref, options) => this.requireControl().removeNode(ref, options.force),
      joinTokens: () => this.requireControl().joinTokens(),
      rotateJoinToken: (request) => this.requireControl().rotateJoinToken(request),
      leave: (request) => this.leave(request.force),
      createService: (spec) => this.requireControl().createService(spec),
      listServices: () => this.requireControl().listServices(),
      getService: (ref) => this.requireControl().getService(ref),
      updateService: (ref, update) => this.requireControl().updateService(ref, update.version, update.spec),
      removeService: (ref) => this.requireControl().removeService(ref),
      rollbackService: (ref) => this.requireControl().rollbackService(ref),
      promoteService: (ref) => this.requireControl().promoteService(ref),
      listTasks: (filter) => this.requireControl().listTasks(filter),
      serviceLogs: (ref, options) => this.serviceLogs(ref, options),
      metrics: async () => ({
        text:
          renderMetrics(await this.ingresses.stats(), {
            streams: this.meshHopCounters,
            tunnels: {
              in: {
                ...(this.tunnelServer?.counts() ?? noTunnels()),
                native: this.nativeHopsIn,
                mux: this.dataPath?.muxes ?? 0,
              },
              out: this.outTunnels(),
            },
            nativeHopsServed: this.nativeHopsServed,
          }) + this.eventLoopDelay.render(),
        contentType: METRICS_CONTENT_TYPE,
      }),
    };
  }

  private async *serviceLogs(ref: string, options: ServiceLogOptions): AsyncIterable<ServiceLogLine> {
    const control = this.requireControl();
    const tasks = await control.listTasks({ service: ref });
    const manager = this.manager!;
    yield* collectServiceLogs(
      {
        host: this.host,
        gate: this.gate,
        selfNodeId: this.state.nodeId,
        runner: this.runner,
        peerOf: (nodeId) => manager.store.get<NodeRecord>('nodes', nodeId)?.peerId,
      },
      tasks,
      options,
    );
  }

  private info(): SwarmInfo {
    const raft = this.manager?.raft.status();
    const cluster = this.manager?.cluster();
    const nodes = this.manager?.store.list<NodeRecord>('nodes');
    return {
      nodeId: this.state.nodeId,
      clusterId: this.state.clusterId,
      role: this.state.role,
      isLeader: raft?.role === 'leader',
      leaderNodeId: raft?.leader ?? null,
      managers: nodes ? nodes.filter((n) => n.role === 'manager').length : this.state.managers.length,
      nodes: nodes?.length ?? 0,
      caFingerprint: caFingerprint(this.state.caPublicKey),
      dataDir: this.opts.dataDir,
      listenAddrs: this.host.multiaddrs(),
      meshEncryption: this.state.meshEncryption,
      raft: raft ? { term: raft.term, commit: raft.commit, applied: raft.applied } : null,
      ...(cluster ? {} : {}),
    };
  }

  private async leave(force: boolean): Promise<void> {
    if (this.manager && !force) {
      throw new ApiError(
        409,
        'this node is a manager: demote it first (swarm node demote), or use --force, which can cost the swarm its quorum',
      );
    }
    // Answer first, then go: the client sees the reply.
    setTimeout(() => {
      void (async () => {
        await this.stop();
        for (const name of ['node.json', 'node.key', 'raft']) {
          await rm(join(this.opts.dataDir, name), { recursive: true, force: true });
        }
        this.log('info', 'left the swarm');
      })();
    }, 50);
  }
}

async function assertFreshDataDir(dataDir: string): Promise<void> {
  if (await loadNodeState(dataDir).catch(() => ({}) as NodeState)) {
    throw new SwarmdError(`${dataDir} already belongs to a swarm: use swarmd run to start it, or another --data-dir`);
  }
  const { stat } = await import('node:fs/promises');
  const raftDir = join(dataDir, 'raft');
  if (
    await stat(raftDir).then(
      () => true,
      () => false,
    )
  ) {
    throw new SwarmdError(
      `${raftDir} exists without node.json (an interrupted init?): remove it or use another --data-dir`,
    );
  }
}
