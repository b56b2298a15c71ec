// A node's published ports: one Ingress per port, started and stopped as the endpoint table changes.
//   ingress mode: every node listens, and balances over every endpoint (local ones directly, others over the mesh).
//   host mode: only a node running a task of the service listens, and only to its own tasks.
// The Ingress asks for its port's view on each connection, so a new table applies to the next connection; nothing
// here reads the store.
import type { Duplex } from 'node:stream';
import { sharedCursor } from './balancer.ts';
import { DrainTracker } from './drain-tracker.ts';
import type { Endpoint, ServiceEndpoints, TaskId } from './endpoints.ts';
import { Ingress } from './forwarder.ts';
import type { DialNative, DialNativePeer } from './native-hop.ts';
import type { RelayMode } from './native-relay.ts';
import { OutlierDetector } from './outliers.ts';
import type { PortIngress } from './port-ingress.ts';
import type { ServiceStats } from './stats.ts';
import { forgetGone, portLabel, type TablePort, type TableService } from './table.ts';
import { UdpIngress } from './udp-ingress.ts';

export interface IngressSetOptions {
  nodeId: string;
  /** Listening address of every published port (tests: 127.0.0.1); left out, all interfaces. */
  host?: string;
  /** Opens the mesh hop to a remote endpoint's node (its PeerId), sending `header` first. */
  dialPeer: (peerId: string, header: Buffer, signal: AbortSignal) => Promise<Duplex>;
  log: (level: 'info' | 'warn', message: string) => void;
  /** A port that failed to listen (taken by the host) is tried again after this long. Default 10 s. */
  retryMs?: number;
  /** SO_REUSEPORT on every port: for several sets sharing the ports, one per ingress thread (ingress-threads.ts). */
  reusePort?: boolean;
  /** Round-robin cursors shared by those sets, one Int32 slot per port number (see balancer.ts sharedCursor). */
  roundRobinSlots?: Int32Array;
  /** Whether to log ports starting, stopping and failing to listen; of several sets sharing the ports, one does. */
  announcePorts?: boolean;
  /** Called when listening() may have changed. */
  onListeningChange?: () => void;
  /** How TCP connections to local tasks move their bytes (forwarder.ts); default native where built. */
  relay?: RelayMode;
  /** Native hops to other nodes' data paths (native-hop.ts), tried before dialPeer's tunnel. */
  dialNative?: DialNativePeer;
}

/** What the daemon needs of its published ports, served in its own thread (IngressSet) or others (IngressThreads). */
export interface PublishedPorts {
  /** Applies a new endpoint table. */
  update(table: readonly TableService[]): void;
  /** See IngressSet.drain. */
  drain(taskId: TaskId, graceMs: number): Promise<void>;
  /** Counters per published port (and per thread, with threads): renderMetrics sums them per service and task. */
  stats(): ServiceStats[] | Promise<ServiceStats[]>;
  /** The published ports listened on now, as "8080/tcp", "53/udp". */
  listening(): string[];
  close(): Promise<void>;
  /** Streams other nodes' ingresses opened to this node's tasks (pass to serveRemote): drained with the rest. */
  readonly meshStreams: DrainTracker;
}

interface Port {
  ingress: PortIngress;
  /** Resolves once listening (or failed); close() waits for it. */
  ready: Promise<boolean>;
}

export class IngressSet implements PublishedPorts {
  private readonly opts: IngressSetOptions;
  /** Keyed by "8080/tcp", "53/udp" (portLabel): a number is one port per protocol. */
  private readonly ports = new Map<string, Port>();
  private readonly views = new Map<string, ServiceEndpoints>();
  private readonly peers = new Map<string, string>();
  private readonly failedAt = new Map<string, number>();
  /** One detector for the node: a task that fails on one port is as unreachable on the others. */
  private readonly outliers = new OutlierDetector();
  /** Tasks drain() was called for; forgotten by the ingresses once the table no longer names them. */
  private readonly drained = new Set<TaskId>();
  /** Streams other nodes' ingresses opened to this node's tasks (pass to serveRemote): drained with the rest. */
  readonly meshStreams = new DrainTracker();
  private closed = false;

  constructor(opts: IngressSetOptions) {
    this.opts = opts;
  }

  /** Applies a new table. */
  update(table: readonly TableService[]): void {
    if (this.closed) return;
    /** By portLabel: the port as the table gives it, and its view. */
    const wanted = new Map<string, { port: TablePort; view: ServiceEndpoints }>();
    this.peers.clear();
    for (const service of table) {
      for (const e of service.endpoints) this.peers.set(e.nodeId, e.peerId);
      for (const port of service.ports) {
        const local = port.mode === 'host';
        const endpoints: Endpoint[] = service.endpoints
          .filter((e) => !local || e.nodeId === this.opts.nodeId)
          .map(({ taskId, nodeId, address }) => ({ taskId, nodeId, address }));
        // host mode: a node with no task of its own does not listen at all.
        if (local && endpoints.length === 0) continue;
        wanted.set(portLabel(port), {
          port,
          view: {
            serviceId: service.serviceId,
            serviceName: service.serviceName,
            algorithm: service.algorithm,
            proxyProtocol: port.proxyProtocol,
            endpoints,
            draining: new Set(service.draining),
          },
        });
      }
    }
    this.views.clear();
    for (const [label, { view }] of wanted) this.views.set(label, view);
    this.forgetDrained(table);
    for (const [port, entry] of this.ports) {
      if (!wanted.has(port)) this.stop(port, entry);
    }
    const now = Date.now();
    for (const [label, { port }] of wanted) {
      if (this.ports.has(label)) continue;
      const failed = this.failedAt.get(label);
      if (failed !== undefined && now - failed < (this.opts.retryMs ?? 10_000)) continue;
      this.start(label, port);
    }
  }

  /**
   * A task of this node is about to stop: every ingress stops sending it new connections, streams from other nodes
   * for it are refused, and this resolves once its open connections (both kinds) are done, or after graceMs (when
   * the rest are cut).
   */
  async drain(taskId: TaskId, graceMs: number): Promise<void> {
    this.drained.add(taskId);
    await Promise.all([
      this.meshStreams.drain(taskId, graceMs),
      ...[...this.ports.values()].map((p) => p.ingress.drain(taskId, graceMs)),
    ]);
  }

  /** A drained task the table no longer lists is gone for good: the ingresses need not remember it. */
  private forgetDrained(table: readonly TableService[]): void {
    for (const taskId of forgetGone(this.drained, table)) {
      this.meshStreams.undrain(taskId);
      for (const { ingress } of this.ports.values()) ingress.undrain(taskId);
    }
  }

  stats(): ServiceStats[] {
    return [...this.ports.values()].map((p) => p.ingress.stats()).filter((s) => s.port !== 0);
  }

  listening(): string[] {
    return [...this.ports.entries()].filter(([, p]) => p.ingress.port !== 0).map(([label]) => label);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.ports.values()];
    this.ports.clear();
    await Promise.all(all.map((p) => p.ready.then(() => p.ingress.close())));
  }

  /** dialNative by node ID. */
  private dialNative(dial: DialNativePeer): DialNative {
    return (endpoint, header, signal) => {
      const peerId = this.peers.get(endpoint.nodeId);
      if (peerId === undefined) return Promise.reject(new Error(`no PeerId known for node ${endpoint.nodeId}`));
      return dial(peerId, header, signal);
    };
  }

  private start(label: string, { published, protocol }: TablePort): void {
    const options = {
      nodeId: this.opts.nodeId,
      port: published,
      ...(this.opts.host === undefined ? {} : { host: this.opts.host }),
      services: () => this.views.get(label),
      dialRemote: (endpoint: Endpoint, header: Buffer, signal: AbortSignal) => {
        const peerId = this.peers.get(endpoint.nodeId);
        if (peerId === undefined) return Promise.reject(new Error(`no PeerId known for node ${endpoint.nodeId}`));
        return this.opts.dialPeer(peerId, header, signal);
      },
      ...(this.opts.dialNative === undefined ? {} : { dialNative: this.dialNative(this.opts.dialNative) }),
      outliers: this.outliers,
      ...(this.opts.relay === undefined ? {} : { relay: this.opts.relay }),
      ...(this.opts.reusePort ? { reusePort: true } : {}),
      // One slot per port number: 53/tcp and 53/udp share a rotation, which only costs evenness between the two.
      ...(this.opts.roundRobinSlots ? { roundRobinCursor: sharedCursor(this.opts.roundRobinSlots, published) } : {}),
      log: (message: string) => this.opts.log('warn', message),
    };
    const ingress: PortIngress = protocol === 'udp' ? new UdpIngress(options) : new Ingress(options);
    const announce = this.opts.announcePorts ?? true;
    const ready = ingress.listen().then(
      () => {
        this.failedAt.delete(label);
        if (announce)
          this.opts.log('info', `lb: listening on published port ${label} (${this.views.get(label)?.serviceName})`);
        this.opts.onListeningChange?.();
        return true;
      },
      (err: Error) => {
        // Taken by something else on this host: the service cannot be reached here; said once per retry.
        this.failedAt.set(label, Date.now());
        if (this.ports.get(label)?.ingress === ingress) this.ports.delete(label);
        if (announce) this.opts.log('warn', `lb: cannot listen on published port ${label}: ${err.message}`);
        return false;
      },
    );
    this.ports.set(label, { ingress, ready });
  }

  private stop(label: string, entry: Port): void {
    this.ports.delete(label);
    void entry.ready.then((ok) => (ok ? entry.ingress.close() : undefined));
    this.opts.onListeningChange?.();
    if (this.opts.announcePorts ?? true) this.opts.log('info', `lb: stopped listening on published port ${label}`);
  }
}
