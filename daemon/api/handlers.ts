// What the control API server asks of the daemon. The server does transport, routing and validation; an
// implementation of this interface (the manager's, or a fake in tests) does the work. Every method may throw
// an ApiError (errors.ts) to answer with a specific status; anything else it throws becomes a 500.
import type { JoinTokenRotate, LeaveRequest, NodeUpdate } from './schemas.ts';
import type { ServiceUpdate } from './service-schema.ts';
import type { Service, ServiceSpec, Task } from './services.ts';
import type { JoinTokens, SwarmInfo, SwarmNode } from './types.ts';

/** One line of a service's logs, as `GET /v1/services/:ref/logs` streams them (one JSON object per line). */
export interface ServiceLogLine {
  taskId: string;
  /** Replica slot, or 0 for a global service's task. */
  slot: number;
  nodeId: string;
  stream: 'stdout' | 'stderr';
  time: string;
  line: string;
}

export interface ServiceLogOptions {
  follow: boolean;
  /** Only the last N lines of each task; undefined = all. */
  tail?: number;
  /** Aborted when the client goes away: a followed stream must stop then. */
  signal: AbortSignal;
}

export interface ControlHandlers {
  info(): Promise<SwarmInfo>;
  listNodes(): Promise<SwarmNode[]>;
  /** `ref` is a full ID, a unique ID prefix or a hostname, as typed by the user (see resolveNodeRef). */
  getNode(ref: string): Promise<SwarmNode>;
  /** Returns the node after the update. Refuses (409) if `update.version` is not the node's current one. */
  updateNode(ref: string, update: NodeUpdate): Promise<SwarmNode>;
  promoteNode(ref: string): Promise<SwarmNode>;
  demoteNode(ref: string): Promise<SwarmNode>;
  /** Without `force`, a node that is still up (or a manager) must be refused with a message saying why. */
  removeNode(ref: string, options: { force: boolean }): Promise<void>;
  joinTokens(): Promise<JoinTokens>;
  rotateJoinToken(request: JoinTokenRotate): Promise<JoinTokens>;
  /** Answered before the node actually leaves, so the client sees the reply. */
  leave(request: LeaveRequest): Promise<void>;

  // Services and tasks. Optional while the manager grows them: a route whose method is missing answers 501.
  // Every `ref` is a full ID, a unique ID prefix or a name, as typed by the user (see resolveServiceRef).
  /** `spec` is already validated and defaulted by serviceSpecSchema. Refuses (409) a name already in use. */
  createService?(spec: ServiceSpec): Promise<Service>;
  listServices?(): Promise<Service[]>;
  getService?(ref: string): Promise<Service>;
  /** Replaces the spec. Refuses (409) if `update.version` is not the service's current one. */
  updateService?(ref: string, update: ServiceUpdate): Promise<Service>;
  removeService?(ref: string): Promise<void>;
  /** Back to the previous spec with the rollback config; 400 when there is none. */
  rollbackService?(ref: string): Promise<Service>;
  /** Lets an update waiting on its canaries go on; 400 when none wait. */
  promoteService?(ref: string): Promise<Service>;
  /** Tasks in any state (history included), of one service and/or node when given (refs as typed by the user). */
  listTasks?(filter: { service?: string; node?: string }): Promise<Task[]>;
  serviceLogs?(ref: string, options: ServiceLogOptions): AsyncIterable<ServiceLogLine>;
  /** This node's load balancer counters in the Prometheus text format (every node answers for itself). */
  metrics?(): Promise<{ text: string; contentType: string }>;
}
