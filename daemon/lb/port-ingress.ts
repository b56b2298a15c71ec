// What the two kinds of ingress for one published port (forwarder.ts for TCP, udp-ingress.ts for UDP) share: the
// choice of task (picker.ts), the drains and counters it reads, and how an ingress set drives them.
import { DrainTracker } from './drain-tracker.ts';
import type { Endpoint, ServiceEndpoints, TaskId } from './endpoints.ts';
import type { DialNative } from './native-hop.ts';
import { OutlierDetector } from './outliers.ts';
import { TaskPicker, type TaskPickerOptions } from './picker.ts';
import type { DialRemote } from './remote.ts';
import { IngressCounters, type ServiceStats } from './stats.ts';

export interface PortIngressOptions extends TaskPickerOptions {
  /** This node's ID: endpoints with this nodeId are reached directly. */
  nodeId: string;
  /** The published port; 0 picks a free one (tests). */
  port: number;
  /** Listening address; left out, every address (IPv6 and IPv4 where the host has both). */
  host?: string;
  /** How to reach tasks on other nodes; without it, remote endpoints count as failed. */
  dialRemote?: DialRemote;
  /** Native hops to other nodes (native-hop.ts), tried before dialRemote where the TCP ingress relays natively. */
  dialNative?: DialNative;
  /** Shared by the ingresses of a node, or one each; default a new one with default settings. */
  outliers?: OutlierDetector;
  /** Tasks tried per client connection (UDP: flow) before it is given up. Default 3. */
  maxAttempts?: number;
  /** Per attempt: the TCP connect, or the mesh stream's open plus the remote node's answer. Default 5 s. */
  connectTimeoutMs?: number;
  /** SO_REUSEPORT, so that several acceptors (processes, worker threads) can share the port. */
  reusePort?: boolean;
  log?: (msg: string) => void;
}

/** A client connection (TCP) or flow (UDP) as far as choosing its task goes. */
export interface Attempts {
  /** Tasks tried for it so far. */
  tried: Set<TaskId>;
  attempts: number;
}

export abstract class PortIngress {
  protected readonly nodeId: string;
  protected readonly maxAttempts: number;
  protected readonly connectTimeoutMs: number;
  protected readonly outliers: OutlierDetector;
  protected readonly log: (msg: string) => void;
  /** Connections (or flows) per task, and the tasks drain() was called for (excluded whatever the table says). */
  protected readonly drains = new DrainTracker();
  protected readonly counters = new IngressCounters();
  protected readonly picker: TaskPicker;
  /** The bound port; 0 until listening. */
  protected listeningPort = 0;

  /** "8080" or "53/udp", for log lines. */
  private readonly protocolSuffix: string;

  constructor(options: PortIngressOptions, protocol: 'tcp' | 'udp') {
    this.nodeId = options.nodeId;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 3);
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    this.protocolSuffix = protocol === 'udp' ? '/udp' : '';
    this.outliers = options.outliers ?? new OutlierDetector();
    this.log = options.log ?? (() => {});
    this.picker = new TaskPicker(options, {
      outliers: this.outliers,
      drains: this.drains,
      counters: this.counters,
      log: this.log,
    });
  }

  /** Starts listening on the published port. */
  abstract listen(): Promise<unknown>;

  /** Counters now: renderMetrics sums them per service and task. */
  abstract stats(): ServiceStats;

  /** Stops listening and ends whatever is open. */
  abstract close(): Promise<void>;

  /**
   * The next task for a client, counted: its service and endpoint, or undefined when there is none left to try (no
   * service, every task tried or excluded, or maxAttempts reached), which counts as the client's failure.
   */
  protected nextAttempt(client: Attempts): { service: ServiceEndpoints; endpoint: Endpoint } | undefined {
    const service = client.attempts < this.maxAttempts ? this.picker.current(this.portName()) : undefined;
    const endpoint = service === undefined ? undefined : this.picker.choose(service, client.tried);
    if (service === undefined || endpoint === undefined) {
      this.counters.service.errors++;
      return undefined;
    }
    this.counters.noteService(service);
    if (client.attempts > 0) this.counters.service.retries++;
    client.attempts++;
    client.tried.add(endpoint.taskId);
    return { service, endpoint };
  }

  /** The endpoint table for the port as of now (undefined when the service is gone). */
  protected currentService(): ServiceEndpoints | undefined {
    return this.picker.current(this.portName());
  }

  protected portName(): string {
    return `${this.listeningPort}${this.protocolSuffix}`;
  }

  get port(): number {
    return this.listeningPort;
  }

  /**
   * Stops new connections (or flows) to the task and resolves once its open ones have ended, or after graceMs, when
   * those left are cut. The task stays excluded until undrain().
   */
  drain(taskId: TaskId, graceMs: number): Promise<void> {
    return this.drains.drain(taskId, graceMs);
  }

  undrain(taskId: TaskId): void {
    this.drains.undrain(taskId);
  }
}
