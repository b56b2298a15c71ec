// The scheduler's inputs and outputs: plain data, so the scheduler stays pure (no store, no I/O, no clock).

import { portLabel, type Task } from '../../api/services.ts';
import { hostPortProtocol, type NodeAvailability, type NodeRole, type NodeState } from '../../api/types.ts';
import type { NodeRecord } from '../nodes.ts';

export interface SchedulerGpu {
  /** The ID the runtime is given (a UUID or a CDI name), never an index. */
  id: string;
  model?: string;
  memoryBytes?: number;
}

export interface SchedulerNode {
  id: string;
  hostname: string;
  role: NodeRole;
  availability: NodeAvailability;
  state: NodeState;
  labels: Record<string, string>;
  os: string;
  arch: string;
  resources: { nanoCpus: number; memoryBytes: number; gpus: SchedulerGpu[] };
  /** Ports programs of the host hold (description.hostPorts), as "8080/tcp": a host-mode published port cannot go there. */
  portsInUse?: ReadonlySet<string>;
}

export interface SchedulingInput {
  nodes: SchedulerNode[];
  /** Tasks already on nodes (running or assigned, any service mode): they count for resources, GPUs and spread. */
  placed: Task[];
  /**
   * Tasks to place (state pending, no nodeId), grouped by service in order of first appearance. A task that
   * already names a node (a global service's task) is only checked against that node and given its devices.
   */
  pending: Task[];
}

export interface Placement {
  taskId: string;
  nodeId: string;
  /** Concrete device IDs allocated to the task; empty when it asked for none. */
  devices: { kind: 'gpu'; ids: string[] }[];
}

export interface Unplaced {
  taskId: string;
  /** e.g. "no suitable node (insufficient memory on 3 nodes; 2 nodes not available for new tasks)". */
  reason: string;
}

export interface SchedulingResult {
  placements: Placement[];
  unplaced: Unplaced[];
}

/** The scheduler's view of a stored node, with the GPUs it advertised. */
export function schedulerNode(
  record: NodeRecord,
  gpus: SchedulerGpu[] = record.description.resources.gpus ?? [],
): SchedulerNode {
  return {
    id: record.id,
    hostname: record.description.hostname,
    role: record.role,
    availability: record.availability,
    state: record.status.state,
    labels: record.labels,
    os: record.description.platform.os,
    arch: record.description.platform.arch,
    resources: {
      nanoCpus: record.description.resources.nanoCpus,
      memoryBytes: record.description.resources.memoryBytes,
      gpus,
    },
    ...(record.description.hostPorts?.length
      ? {
          portsInUse: new Set(
            record.description.hostPorts.map((p) => portLabel({ published: p.port, protocol: hostPortProtocol(p) })),
          ),
        }
      : {}),
  };
}
