// The container a task runs in, from its TaskRunSpec: unprivileged unless the node allows otherwise.
//
// Pure (no engine calls), so the whole policy can be read, and tested, in one place:
// - a non-root user (65534:65534, nobody) unless the spec names one; root only where the node allows it;
// - every capability dropped, adds only from the node's allowlist; no-new-privileges; never privileged;
// - a pids limit always, memory and CPU limits from the spec (no swap beyond the memory limit);
// - no network (the load balancer attaches tasks later) or the host's when the worker gave the task a port;
// - no host devices except the GPUs the scheduler allocated, by explicit ID;
// - json-file logs with a size cap, so a chatty task can't fill the disk.
import type Docker from 'dockerode';
import { normalizeSignal } from '../signals.ts';
import { ExecutorError, type TaskRunSpec } from '../types.ts';

/** Labels tying a container to its task; recover() finds a node's containers by LABEL.nodeId. */
export const LABEL = {
  taskId: 'swarmd.task.id',
  serviceId: 'swarmd.service.id',
  serviceName: 'swarmd.service.name',
  nodeId: 'swarmd.node.id',
  slot: 'swarmd.slot',
  /** The host port of a task on the host network, so inspect() can give its address after a restart too. */
  hostPort: 'swarmd.host-port',
} as const;

export const NOBODY = '65534:65534';
/** Docker's floor ("Minimum memory limit allowed is 6MB"): checked here so the error names the field. */
export const MIN_MEMORY_BYTES = 6 * 1024 * 1024;

export interface ContainerPolicy {
  /** Capabilities a task of this node may add back (e.g. NET_BIND_SERVICE); nothing else. */
  capAddAllowlist: readonly string[];
  allowRoot: boolean;
  /** Applied when the spec sets no pids limit; 0 leaves the engine's default (usually unlimited). */
  defaultPidsLimit: number;
  /** Run an init (tini) as PID 1: only where the engine has one (docker-init), or the container can't start. */
  init: boolean;
  /** json-file rotation: size of one file and how many are kept. */
  logMaxSize: string;
  logMaxFiles: number;
}

function invalid(field: string, problem: string): ExecutorError {
  return new ExecutorError(`${field}: ${problem}`, false);
}

/** `swarmd-<service>.<slot>.<task>`, with anything Docker refuses in a name replaced by "-". */
export function containerName(spec: Pick<TaskRunSpec, 'serviceName' | 'slot' | 'taskId'>): string {
  const clean = (part: string) => part.replace(/[^a-zA-Z0-9_.-]/g, '-');
  return `swarmd-${clean(spec.serviceName)}.${clean(spec.slot)}.${clean(spec.taskId)}`;
}

/** The user the task runs as: the spec's, or nobody. Root (by name or UID 0) only when the node allows it. */
export function taskUser(user: string | undefined, allowRoot: boolean): string {
  const wanted = user?.trim();
  if (!wanted) return NOBODY;
  const name = wanted.split(':')[0] ?? '';
  if ((name === 'root' || /^0+$/.test(name)) && !allowRoot) {
    throw invalid('spec.user', `"${wanted}" runs the task as root, which this node does not allow (allowRoot is off)`);
  }
  return wanted;
}

function capName(cap: string): string {
  const upper = cap.trim().toUpperCase();
  return upper.startsWith('CAP_') ? upper.slice(4) : upper;
}

/**
 * The capabilities to add back after dropping ALL: those the task asks for, each of which must be on the node's
 * allowlist. A request outside it fails the task rather than running it without what it needs.
 */
export function capabilityAdds(requested: readonly string[], allowlist: readonly string[]): string[] {
  const allowed = new Set(allowlist.map(capName));
  const adds = [...new Set(requested.map(capName))];
  for (const cap of adds) {
    if (!allowed.has(cap)) {
      throw invalid('capabilities', `${cap} is not on this node's allowlist (${[...allowed].join(', ') || 'empty'})`);
    }
  }
  return adds;
}

function environment(env: Record<string, string>): string[] {
  return Object.entries(env).map(([key, value]) => {
    if (key === '' || key.includes('=') || key.includes('\0') || value.includes('\0')) {
      throw invalid(`env.${key}`, 'a variable name must be non-empty, without "=" or NUL');
    }
    return `${key}=${value}`;
  });
}

function mounts(spec: TaskRunSpec): Docker.MountSettings[] {
  return spec.mounts.map((mount, i) => {
    const field = `mounts[${i}]`;
    if (!mount.target.startsWith('/')) throw invalid(`${field}.target`, `"${mount.target}" is not an absolute path`);
    if (mount.type === 'bind' && !mount.source?.startsWith('/')) {
      throw invalid(`${field}.source`, `a bind mount needs an absolute host path (got "${mount.source ?? ''}")`);
    }
    if (mount.type === 'tmpfs' && mount.source) throw invalid(`${field}.source`, 'a tmpfs mount has no source');
    // Mounts, not Binds: a missing bind source is an error instead of a root-owned directory created on the host.
    return { Type: mount.type, Source: mount.source ?? '', Target: mount.target, ReadOnly: mount.readOnly };
  });
}

/** Allocated GPUs by explicit ID. Never Count: Docker maps Count=N to GPUs 0..N-1, whichever are allocated. */
function deviceRequests(spec: TaskRunSpec): Docker.DeviceRequest[] {
  const ids: string[] = [];
  spec.devices.forEach((device, i) => {
    if (device.kind !== 'gpu') {
      // The scheduler allocated it, so the task expects it: failing says why; running without it would not.
      throw invalid(`devices[${i}].kind`, `"${device.kind}" devices are not supported by the docker executor`);
    }
    ids.push(...device.ids);
  });
  return ids.length === 0 ? [] : [{ Driver: 'nvidia', DeviceIDs: ids, Capabilities: [['gpu']] }];
}

function limits(spec: TaskRunSpec, policy: ContainerPolicy): Docker.HostConfig {
  const { nanoCpus, memoryBytes, pids } = spec.limits;
  const host: Docker.HostConfig = {};
  if (nanoCpus !== undefined) {
    if (!Number.isInteger(nanoCpus) || nanoCpus <= 0) throw invalid('limits.nanoCpus', `${nanoCpus} is not > 0`);
    host.NanoCpus = nanoCpus;
  }
  if (memoryBytes !== undefined) {
    if (!Number.isInteger(memoryBytes) || memoryBytes < MIN_MEMORY_BYTES) {
      throw invalid('limits.memoryBytes', `${memoryBytes} is below Docker's minimum of ${MIN_MEMORY_BYTES} bytes`);
    }
    host.Memory = memoryBytes;
    // Equal to Memory: no swap on top. Docker's default (twice the limit) would let a hog swap instead of being
    // OOM-killed at its limit.
    host.MemorySwap = memoryBytes;
  }
  const pidsLimit = pids ?? policy.defaultPidsLimit;
  if (!Number.isInteger(pidsLimit) || pidsLimit < 0) throw invalid('limits.pids', `${pidsLimit} is not >= 0`);
  if (pidsLimit > 0) host.PidsLimit = pidsLimit;
  return host;
}

/** The createContainer() options for a task. Throws a non-retryable ExecutorError naming the offending field. */
export function containerConfig(spec: TaskRunSpec, policy: ContainerPolicy): Docker.ContainerCreateOptions {
  const labels: Record<string, string> = {
    ...spec.labels,
    // Ours last: a spec label can't pass a container off as another task's.
    [LABEL.taskId]: spec.taskId,
    [LABEL.serviceId]: spec.serviceId,
    [LABEL.serviceName]: spec.serviceName,
    [LABEL.nodeId]: spec.nodeId,
    [LABEL.slot]: spec.slot,
  };
  if (spec.hostPort !== undefined) labels[LABEL.hostPort] = String(spec.hostPort);
  if (spec.stopGracePeriodMs < 0) throw invalid('stopGracePeriodMs', `${spec.stopGracePeriodMs} is negative`);

  const config: Docker.ContainerCreateOptions = {
    name: containerName(spec),
    Image: spec.image,
    Labels: labels,
    User: taskUser(spec.user, policy.allowRoot),
    Env: environment(spec.env),
    StopSignal: normalizeSignal(spec.stopSignal, 'stopSignal'),
    // Also what dockerd uses when it stops the container itself (daemon shutdown, `docker stop` by hand).
    StopTimeout: Math.ceil(spec.stopGracePeriodMs / 1000),
    Tty: false,
    OpenStdin: false,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    HostConfig: {
      CapDrop: ['ALL'],
      // TaskRunSpec has no capabilities yet: nothing is added back until it does.
      CapAdd: capabilityAdds([], policy.capAddAllowlist),
      SecurityOpt: ['no-new-privileges'],
      Privileged: false,
      ReadonlyRootfs: false,
      Init: policy.init,
      ...limits(spec, policy),
      Mounts: mounts(spec),
      Devices: [],
      DeviceRequests: deviceRequests(spec),
      NetworkMode: spec.hostPort !== undefined ? 'host' : 'none',
      // Restarts are the orchestrator's: a task runs once and its replacement is a new task.
      RestartPolicy: { Name: 'no' },
      AutoRemove: false,
      LogConfig: {
        Type: 'json-file',
        Config: { 'max-size': policy.logMaxSize, 'max-file': String(policy.logMaxFiles) },
      },
    },
  };
  // command replaces the image's entrypoint, and args its CMD. With neither, the image's own are used. (When
  // Entrypoint is set, Docker ignores the image's CMD, so args alone are the arguments.)
  if (spec.command.length > 0) {
    config.Entrypoint = spec.command;
    config.Cmd = spec.args;
  } else if (spec.args.length > 0) {
    config.Cmd = spec.args;
  }
  if (spec.workdir) {
    if (!spec.workdir.startsWith('/')) throw invalid('workdir', `"${spec.workdir}" is not an absolute path`);
    config.WorkingDir = spec.workdir;
  }
  return config;
}
