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

/**
 * A probe of a task's health, run by the worker on the task's node. `cmd` runs inside the task (docker exec, or
 * the runtime's equivalent) and passes on exit 0; `http` GETs a path on the task's port and passes on 2xx/3xx;
 * `tcp` passes when a connection opens. Defaults are Docker's (30 s interval and timeout, 3 retries).
 */
export interface HealthCheck {
  kind: 'cmd' | 'http' | 'tcp';
  /** cmd: the command and its arguments. */
  command: string[];
  /** http: the path to GET. */
  path: string;
  /** http, tcp: the port on the task's address; 0 = the task's host port (its PORT). */
  port: number;
  intervalMs: number;
  timeoutMs: number;
  /** Consecutive failures that make a task unhealthy. */
  retries: number;
  /** Failures in this time after start do not count (a success still makes the task healthy). */
  startPeriodMs: number;
}

export type HealthState = 'starting' | 'healthy' | 'unhealthy';

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
  healthcheck: HealthCheck | null;
  /** Bumped by `swarm service update --force`: a changed template redeploys every task. */
  forceUpdate: number;
}

/** How tasks are replaced when the template changes (`update`) or on rollback (`rollback`). Swarm's defaults. */
export interface RolloutConfig {
  /** Tasks replaced at once; 0 = all at once. */
  parallelism: number;
  /** Wait after a task is replaced before replacing the next. */
  delayMs: number;
  /** What a failed replacement does: rollback is not allowed for a rollback (it would never end). */
  failureAction: 'pause' | 'continue' | 'rollback';
  /** How long a new task is watched for failure after it is running (and healthy). */
  monitorMs: number;
  /** Failures tolerated, as a fraction of the service's tasks, before the failure action applies. */
  maxFailureRatio: number;
  /** stop-first: old task stops, then the new one starts; start-first: both run until the new one is ready. */
  order: 'stop-first' | 'start-first';
}

export interface UpdateConfig extends RolloutConfig {
  /** New-version tasks started beside the old ones, then the update waits for `service promote`; 0 = none. */
  canary: number;
  /** Promote the canaries once they stay running and healthy through the monitor window. */
  autoPromote: boolean;
}

/**
 * A port the built-in load balancer publishes for the service. `ingress`: every node listens on `published` and
 * forwards to any task; `host`: only nodes running a task listen, and forward to their own tasks only.
 * `target` documents the port the program listens on inside a container with a network of its own; tasks that share
 * the host's network (process, singularity, host-network docker) cannot all listen on one port, so they get a host
 * port from their node in $PORT and must listen there instead.
 */
export type PortProtocol = 'tcp' | 'udp';

/** A published port is one per protocol: 53/tcp and 53/udp are two ports, as in the kernel. */
export function portLabel(port: { published: number; protocol: PortProtocol }): string {
  return `${port.published}/${port.protocol}`;
}

export interface PublishedPort {
  published: number;
  target: number;
  /** udp: each client address and port is a flow, kept on one task until idle (daemon/lb/udp-ingress.ts). */
  protocol: PortProtocol;
  mode: 'ingress' | 'host';
  /** Send a PROXY protocol v2 header to the task first, so it sees the client's address. */
  proxyProtocol: boolean;
}

export interface EndpointSpec {
  ports: PublishedPort[];
  algorithm: 'round-robin' | 'least-connections' | 'p2c';
}

export interface ServiceSpec {
  name: string;
  labels: Record<string, string>;
  mode: ServiceMode;
  task: TaskTemplate;
  update: UpdateConfig;
  rollback: RolloutConfig;
  endpoint: EndpointSpec;
}

export const UPDATE_STATES = [
  'updating',
  'awaiting_promotion',
  'paused',
  'completed',
  'rollback_started',
  'rollback_paused',
  'rollback_completed',
] as const;
export type UpdateState = (typeof UPDATE_STATES)[number];

/** Where a rolling update or rollback stands; kept in the store so a new leader carries it on. */
export interface UpdateStatus {
  state: UpdateState;
  startedAt: string;
  completedAt?: string;
  message: string;
  /** Canaries were promoted (by `service promote` or auto-promote): the update goes on past them. */
  promoted: boolean;
}

export interface Service {
  id: string;
  spec: ServiceSpec;
  /** Bumped on every spec change; tasks carry the spec version they were made from. */
  specVersion: number;
  /** The spec before the last update: what `service rollback` returns to. */
  previousSpec: ServiceSpec | null;
  updateStatus: UpdateStatus | null;
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
  /** Only for tasks with a health check, once running. */
  health?: HealthState;
  /** Where the task listens (host:port, reachable from its node), for services with published ports. */
  address?: string;
  /** When it began running, kept through its later states: the updater's monitor window counts from here. */
  startedAt?: string;
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
  /** A stop-first update's replacement is not scheduled until this task (the one it replaces) has ended. */
  startAfter?: string;
  /** Its service publishes ports: the node gives the task a host port ($PORT) and reports its address. */
  publishes?: boolean;
  /** Its service's host-mode published ports: the scheduler keeps it off nodes where a host program holds one. */
  hostPorts?: number[];
  /** The same for UDP ports (apart, so tasks stored before UDP read the same). */
  hostUdpPorts?: number[];
  version: number;
  createdAt: string;
  updatedAt: string;
}
