// Messages between the manager and worker halves of swarmd (which never import each other).
import type { Task, TaskStatus } from '../api/services.ts';
import type { NodeRole } from '../api/types.ts';
import type { TableService } from '../lb/table.ts';
import type { KnownManager } from '../node-state.ts';

/** A node's heartbeat to the leader, on PROTOCOLS.dispatcher. */
export interface HeartbeatRequest {
  nodeId: string;
  description: unknown;
  addresses: string[];
  certSerial: string;
  /** Task status changes since the last acknowledged heartbeat. */
  taskStatuses?: { taskId: string; status: TaskStatus }[];
  /** The version of the endpoint table this node has; the answer carries the table only when it differs. */
  endpointsVersion?: string;
}

export type HeartbeatResponse =
  | {
      ok: true;
      leaderNodeId: string;
      role: NodeRole;
      managers: KnownManager[];
      denylist: { nodeIds: string[]; peerIds: string[] };
      heartbeatPeriodMs: number;
      cert?: string;
      /** Every task the managers have for this node (what it must run, stop, or has finished). */
      tasks: Task[];
      /**
       * The load balancer's endpoint table: every service with published ports (validated by the receiver). Left
       * out when the node already has this version.
       */
      endpoints?: TableService[];
      endpointsVersion?: string;
    }
  | { ok: false; redirect: string | null; managers: KnownManager[]; error: string };
