// Counters the forwarder keeps per published service and per task, and the snapshot it hands to metrics.ts.
// Plain objects with number fields: incremented once per connection, never per chunk (bytes are read from the
// sockets' own counts when a snapshot is taken or a connection ends).
import type { TunnelPathCounts } from './data-path.ts';
import type { TaskId } from './endpoints.ts';
import type { ServeRemoteResult } from './remote.ts';

export interface TrafficCounters {
  /** Connections (UDP: flows) accepted (service) or forwarded to the task (task). */
  connectionsTotal: number;
  connectionsActive: number;
  /** Bytes from clients toward the backends. */
  bytesIn: number;
  /** Bytes from the backends back to clients. */
  bytesOut: number;
  /**
   * Service: client connections that reached no backend (no endpoint left, or every attempt failed).
   * Task: connects to the task that failed (refused, timed out, or refused by the task's node).
   */
  errors: number;
}

export interface ServiceCounters extends TrafficCounters {
  /** Connect attempts after a first one failed. */
  retries: number;
}

export interface TaskCounters extends TrafficCounters {
  /** Times outlier detection took the task out of rotation. */
  ejections: number;
}

export interface TaskStats extends TaskCounters {
  taskId: TaskId;
}

export interface ServiceStats extends ServiceCounters {
  serviceId: string;
  serviceName: string;
  /** The published port this ingress listens on. */
  port: number;
  tasks: TaskStats[];
}

export function newServiceCounters(): ServiceCounters {
  return { connectionsTotal: 0, connectionsActive: 0, bytesIn: 0, bytesOut: 0, errors: 0, retries: 0 };
}

export function newTaskCounters(): TaskCounters {
  return { connectionsTotal: 0, connectionsActive: 0, bytesIn: 0, bytesOut: 0, errors: 0, ejections: 0 };
}

/**
 * The counters of one ingress (one published port, TCP or UDP): for its service and per task, and the snapshot
 * renderMetrics takes. A task's entry is dropped once the table no longer names it and nothing of it is open.
 */
export class IngressCounters {
  readonly service: ServiceCounters = newServiceCounters();
  private readonly tasks = new Map<TaskId, TaskCounters>();
  private serviceId = '';
  private serviceName = '';

  /** The service the port serves now: snapshots name it even after it left the table. */
  noteService(service: { serviceId: string; serviceName: string }): void {
    this.serviceId = service.serviceId;
    this.serviceName = service.serviceName;
  }

  /** The task's counters, created on first use. */
  task(taskId: TaskId): TaskCounters {
    let counters = this.tasks.get(taskId);
    if (counters === undefined) {
      counters = newTaskCounters();
      this.tasks.set(taskId, counters);
    }
    return counters;
  }

  /** Open connections (UDP: flows) to the task through this ingress: what least-connections and p2c read. */
  active(taskId: TaskId): number {
    return this.tasks.get(taskId)?.connectionsActive ?? 0;
  }

  snapshot(
    port: number,
    current: { serviceId: string; serviceName: string; endpoints: readonly { taskId: TaskId }[] } | undefined,
  ): ServiceStats {
    if (current !== undefined) this.noteService(current);
    const named = new Set(current?.endpoints.map((e) => e.taskId));
    const tasks: TaskStats[] = [];
    for (const [taskId, counters] of this.tasks) {
      tasks.push({ taskId, ...counters });
      if (counters.connectionsActive === 0 && !named.has(taskId)) this.tasks.delete(taskId);
    }
    return { serviceId: this.serviceId, serviceName: this.serviceName, port, ...this.service, tasks };
  }
}

/** The far end of the mesh hop on this node: what became of the connections other nodes forwarded here. */
export type MeshHopCounters = Record<ServeRemoteResult, number>;

export function newMeshHopCounters(): MeshHopCounters {
  return { served: 0, 'bad-header': 0, 'unknown-task': 0, 'connect-failed': 0, draining: 0, closed: 0 };
}

/** Tunnels (daemon/lb/tunnel.ts) open now, to other nodes (out) and from them (in), by path (data-path.ts). */
export interface TunnelCounts {
  in: TunnelPathCounts;
  out: TunnelPathCounts;
}
