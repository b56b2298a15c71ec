// Services and tasks as the API and the store hold them. Shared by daemon and cli; no behaviour here.
import type { Mount, Runtime } from '../worker/executors/types.ts';

export type ServiceMode =
  | { kind: 'replicated'; replicas: number }
  | { kind: 'global' }
  | { kind: 'replicated-job'; maxConcurrent: number; totalCompletions: number }
  | { kind: 'global-job' };

export interface RestartPolicy {
  condition: 'none' | 'on-failure' | 'any';
  delayMs: number;
  /** 0 = unlimited. */
  maxAttempts: number;
  /** Attempts are counted within this window; 0 = forever. */
  windowMs: number;
}

export interface Placement {
  /** e.g. "node.labels.zone==edge", "node.role!=manager". */
  constraints: string[];
  /** Spread over the values of these node attributes, e.g. "node.labels.rack". */
  spread: string[];
  /** 0 = no limit. */
  maxReplicasPerNode: number;
}

export interface Resources {
  reservations: { nanoCpus: number; memoryBytes: number; gpus: number };
  limits: { nanoCpus: number; memoryBytes: number; pids: number };
}

export interface TaskTemplate {
  runtime: Runtime;
  image: string;
  command: string[];
  args: string[];
  env: Record<string, string>;
  workdir: string | null;
  user: string | null;
  labels: Record<string, string>;
  mounts: Mount[];
  resources: Resources;
  restart: RestartPolicy;
  placement: Placement;
  stopSignal: string;
  stopGracePeriodMs: number;
}

export interface ServiceSpec {
  name: string;
  labels: Record<string, string>;
  mode: ServiceMode;
  task: TaskTemplate;
}

export interface Service {
  id: string;
  spec: ServiceSpec;
  /** Bumped on every spec change; tasks carry the spec version they were made from. */
  specVersion: number;
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** Task states only move forward, in this order. */
export const TASK_STATES = [
  'new',
  'pending',
  'assigned',
  'accepted',
  'preparing',
  'starting',
  'running',
  'complete',
  'failed',
  'shutdown',
  'rejected',
  'orphaned',
] as const;
export type TaskState = (typeof TASK_STATES)[number];

/** States a task does not leave. */
export const TERMINAL_STATES: ReadonlySet<TaskState> = new Set([
  'complete',
  'failed',
  'shutdown',
  'rejected',
  'orphaned',
]);

export interface TaskStatus {
  state: TaskState;
  /** When it entered this state. */
  since: string;
  message: string;
  /** For a task that cannot be placed: why, in words a person can act on. */
  pendingReason?: string;
  exitCode?: number;
  error?: string;
}

export interface Task {
  id: string;
  serviceId: string;
  serviceName: string;
  /** Replica slot (1..n) for replicated services and jobs; 0 for global ones (one per node). */
  slot: number;
  /** Set by the scheduler; global tasks are created with it. */
  nodeId: string | null;
  specVersion: number;
  /** A copy of the template this task runs, so later spec changes don't alter it. */
  template: TaskTemplate;
  /** Owned by managers: what the task should do. */
  desiredState: 'running' | 'shutdown' | 'complete';
  /** Owned by the worker running it. */
  status: TaskStatus;
  /** Accelerator device IDs allocated by the scheduler. */
  devices: { kind: string; ids: string[] }[];
  /** Restart attempts made for this slot (carried over to the replacement). */
  attempt: number;
  version: number;
  createdAt: string;
  updatedAt: string;
}
