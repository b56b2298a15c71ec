// Service and task fixtures shared by unit tests and benchmarks.
import { DEFAULT_ROLLBACK_CONFIG, DEFAULT_UPDATE_CONFIG } from '../../daemon/api/service-schema.ts';
import type { Service, ServiceSpec, TaskTemplate } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import type { TaskRunSpec } from '../../daemon/worker/executors/types.ts';

/** A process-runtime template with nothing reserved, limited or constrained; override what a test needs. */
export function taskTemplate(
  overrides: {
    runtime?: TaskTemplate['runtime'];
    image?: string;
    command?: string[];
    reservations?: Partial<TaskTemplate['resources']['reservations']>;
    restart?: Partial<TaskTemplate['restart']>;
    placement?: Partial<TaskTemplate['placement']>;
  } = {},
): TaskTemplate {
  return {
    runtime: overrides.runtime ?? 'process',
    image: overrides.image ?? '',
    command: overrides.command ?? ['/bin/true'],
    args: [],
    env: {},
    workdir: null,
    user: null,
    labels: {},
    mounts: [],
    resources: {
      reservations: { nanoCpus: 0, memoryBytes: 0, gpus: 0, ...overrides.reservations },
      limits: { nanoCpus: 0, memoryBytes: 0, pids: 0 },
    },
    restart: { condition: 'any', delayMs: 0, maxAttempts: 0, windowMs: 0, ...overrides.restart },
    placement: { constraints: [], spread: [], maxReplicasPerNode: 0, ...overrides.placement },
    stopSignal: 'SIGTERM',
    stopGracePeriodMs: 10_000,
    healthcheck: null,
    forceUpdate: 0,
  };
}

/** What a worker hands an executor: a plain task with nothing mounted, limited or allocated; override the rest. */
export function runSpec(overrides: Partial<TaskRunSpec> = {}): TaskRunSpec {
  return {
    taskId: 't1',
    serviceId: 'svc-id',
    serviceName: 'svc',
    slot: '1',
    nodeId: 'node-a',
    image: '',
    command: [],
    args: [],
    env: {},
    labels: {},
    limits: {},
    mounts: [],
    stopSignal: 'SIGTERM',
    stopGracePeriodMs: 1000,
    devices: [],
    ...overrides,
  };
}

/** A spec with Swarm's update and rollback defaults. */
export function serviceSpec(
  name: string,
  mode: ServiceSpec['mode'],
  task: TaskTemplate,
  update: Partial<ServiceSpec['update']> = {},
): ServiceSpec {
  return {
    name,
    labels: {},
    mode,
    task,
    update: { ...DEFAULT_UPDATE_CONFIG, ...update },
    rollback: { ...DEFAULT_ROLLBACK_CONFIG },
    endpoint: { ports: [], algorithm: 'round-robin' },
  };
}

/** A stored service as the store holds it, never updated. */
export function storedService(id: string, spec: ServiceSpec, at: string, version = 1): Service {
  return {
    id,
    spec,
    specVersion: 1,
    previousSpec: null,
    updateStatus: null,
    version,
    createdAt: at,
    updatedAt: at,
  };
}

/** A ready, active worker as the API shows it (4 CPUs, 8 GiB); override what a test needs. */
export function swarmNode(id: string, hostname: string, overrides: Partial<SwarmNode> = {}): SwarmNode {
  return {
    id,
    peerId: `12D3KooW${hostname}`,
    role: 'worker',
    availability: 'active',
    labels: {},
    description: {
      hostname,
      platform: { os: 'linux', arch: 'x64' },
      resources: { nanoCpus: 4e9, memoryBytes: 8 * 1024 ** 3 },
      swarmdVersion: '0.1.0',
    },
    addresses: [],
    status: { state: 'ready', message: '', since: '2026-01-01T00:00:00.000Z' },
    heartbeatPeriodMs: null,
    managerStatus: null,
    version: 1,
    createdAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:00:00.000Z',
    ...overrides,
  };
}
