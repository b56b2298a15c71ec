// What the control API server asks of the daemon. The server does transport, routing and validation; an
// implementation of this interface (the manager's, or a fake in tests) does the work. Every method may throw
// an ApiError (errors.ts) to answer with a specific status; anything else it throws becomes a 500.
import type { JoinTokenRotate, LeaveRequest, NodeUpdate } from './schemas.ts';
import type { JoinTokens, SwarmInfo, SwarmNode } from './types.ts';

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
}
