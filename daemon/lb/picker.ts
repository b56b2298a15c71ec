// Which task a new connection (TCP) or flow (UDP) of one published port goes to: the balancer's choice among the
// tasks of the current endpoint table that are not draining, not ejected by outlier detection, and not tried yet
// for this client. Shared by both ingresses (forwarder.ts, udp-ingress.ts), which own the counters it reads.
import { type Balancer, createBalancer, type RoundRobinCursor } from './balancer.ts';
import type { DrainTracker } from './drain-tracker.ts';
import { type BalancingAlgorithm, type Endpoint, isDraining, type ServiceEndpoints, type TaskId } from './endpoints.ts';
import type { OutlierDetector } from './outliers.ts';
import type { IngressCounters } from './stats.ts';

/** What an ingress's options say about choosing (both ingresses take these fields). */
export interface TaskPickerOptions {
  /** The current endpoint table for the port, or undefined when the service is gone. */
  services: () => ServiceEndpoints | undefined;
  /** For p2c; injectable for deterministic tests. */
  random?: () => number;
  /** Round-robin's position, shared by the acceptors of the port (balancer.ts sharedCursor); default its own. */
  roundRobinCursor?: RoundRobinCursor;
}

export interface TaskPickerParts {
  outliers: OutlierDetector;
  /** The ingress's own drains: tasks drain() was called for are excluded whatever the table says. */
  drains: DrainTracker;
  /** The ingress's counters: least-connections and p2c read open connections (or flows) per task. */
  counters: IngressCounters;
  log: (msg: string) => void;
}

const NO_EXCLUSIONS: ReadonlySet<TaskId> = new Set();

export class TaskPicker {
  private readonly opts: TaskPickerOptions & TaskPickerParts;
  private readonly balancers = new Map<BalancingAlgorithm, Balancer>();

  constructor(options: TaskPickerOptions, parts: TaskPickerParts) {
    this.opts = { ...parts, services: options.services };
    if (options.random !== undefined) this.opts.random = options.random;
    if (options.roundRobinCursor !== undefined) this.opts.roundRobinCursor = options.roundRobinCursor;
  }

  /** The endpoint table, or undefined; a control plane that throws must cost one client, not the process. */
  current(portName: string): ServiceEndpoints | undefined {
    try {
      return this.opts.services();
    } catch (err) {
      this.opts.log(`lb: endpoint table for port ${portName} failed: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** Whether the task must get nothing new: drained here, or draining per the table. */
  isDraining(service: ServiceEndpoints, taskId: TaskId): boolean {
    return this.opts.drains.isDraining(taskId) || isDraining(service, taskId);
  }

  /** The balancer's choice among tasks not draining, not ejected and not tried yet for this client. */
  choose(service: ServiceEndpoints, tried: ReadonlySet<TaskId>): Endpoint | undefined {
    const balancer = this.balancer(service.algorithm);
    let excluded: Set<TaskId> | undefined;
    for (const endpoint of service.endpoints) {
      const id = endpoint.taskId;
      if (tried.has(id) || this.isDraining(service, id) || this.opts.outliers.isEjected(id)) {
        excluded ??= new Set();
        excluded.add(id);
      }
    }
    const picked = balancer.pick(service.endpoints, excluded ?? NO_EXCLUSIONS);
    if (picked !== undefined || excluded === undefined) return picked;
    // Every task left is ejected (the table changed since, or the percentage cap allowed it): trying one of them
    // beats refusing the client outright.
    const fallback = new Set<TaskId>(tried);
    for (const endpoint of service.endpoints) {
      if (this.isDraining(service, endpoint.taskId)) fallback.add(endpoint.taskId);
    }
    return balancer.pick(service.endpoints, fallback);
  }

  /** A task could not be reached: counted for it, and told to outlier detection, which may eject it. */
  failed(service: ServiceEndpoints, taskId: TaskId, why: string): void {
    const task = this.opts.counters.task(taskId);
    task.errors++;
    if (this.opts.outliers.recordFailure(taskId, service.endpoints)) {
      task.ejections++;
      this.opts.log(`lb: ejected task ${taskId} of ${service.serviceName} after repeated failures`);
    }
    this.opts.log(`lb: ${why}`);
  }

  private balancer(algorithm: BalancingAlgorithm): Balancer {
    let balancer = this.balancers.get(algorithm);
    if (balancer === undefined) {
      const counters = this.opts.counters;
      const options: Parameters<typeof createBalancer>[1] = { active: (taskId) => counters.active(taskId) };
      if (this.opts.random !== undefined) options.random = this.opts.random;
      if (this.opts.roundRobinCursor !== undefined) options.cursor = this.opts.roundRobinCursor;
      balancer = createBalancer(algorithm, options);
      this.balancers.set(algorithm, balancer);
    }
    return balancer;
  }
}
