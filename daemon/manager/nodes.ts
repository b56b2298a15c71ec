// Node records in the store: the internal shape, and how the API presents them.
import type { ManagerStatus, NodeAvailability, NodeDescription, NodeRole, NodeState, SwarmNode } from '../api/types.ts';
import type { StoreObject } from './store/store.ts';

export interface NodeRecord extends StoreObject {
  peerId: string;
  role: NodeRole;
  availability: NodeAvailability;
  labels: Record<string, string>;
  description: NodeDescription;
  addresses: string[];
  status: { state: NodeState; message: string; since: string };
  /** Overrides the swarm's heartbeat period for this node (WAN edge links); absent or null = default. */
  heartbeatPeriodMs?: number | null;
  createdAt: string;
  updatedAt: string;
}

/** How long a node may stay silent before the leader marks it down. */
export function downAfterMs(node: NodeRecord, swarm: { heartbeatPeriodMs: number; nodeDownAfterMs: number }): number {
  const period = node.heartbeatPeriodMs ?? swarm.heartbeatPeriodMs;
  // The swarm's ratio of down-after to period, applied to this node's own period.
  return Math.max(swarm.nodeDownAfterMs, Math.round((period * swarm.nodeDownAfterMs) / swarm.heartbeatPeriodMs));
}

/** The API view; managerStatus is computed from Raft on the manager answering. */
export function toSwarmNode(record: NodeRecord, managerStatus: ManagerStatus | null): SwarmNode {
  return {
    id: record.id,
    peerId: record.peerId,
    role: record.role,
    availability: record.availability,
    labels: { ...record.labels },
    description: record.description,
    addresses: [...record.addresses],
    status: { ...record.status },
    heartbeatPeriodMs: record.heartbeatPeriodMs ?? null,
    managerStatus,
    version: record.version,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}
