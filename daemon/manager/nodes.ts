// Node records in the store: the internal shape, and how the API presents them.
import type { ManagerStatus, SwarmNode } from '../api/types.ts';
import type { StoreObject } from './store/store.ts';

/**
 * What the store keeps of a node: the API's shape, less what is computed on the fly (managerStatus), with
 * the per-node heartbeat period optional (absent in records written before it existed).
 */
export interface NodeRecord extends StoreObject, Omit<SwarmNode, 'managerStatus' | 'heartbeatPeriodMs'> {
  /** Overrides the swarm's heartbeat period for this node (WAN edge links); absent or null = default. */
  heartbeatPeriodMs?: number | null;
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
    ...structuredClone(record),
    heartbeatPeriodMs: record.heartbeatPeriodMs ?? null,
    managerStatus,
  };
}
