// Service and task fixtures shared by unit tests and benchmarks.
import type { TaskTemplate } from '../../daemon/api/services.ts';

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
  };
}
