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
  createdAt: string;
  updatedAt: string;
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
    managerStatus,
    version: record.version,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}
