// The docker executor: each task is one container on the local engine, through dockerode, unprivileged by default
// (see docker/config.ts for the policy). Every failure comes out as an ExecutorError that says what was being done
// and whether retrying can help; the engine going away mid-call is one of them, never an unhandled rejection.
//
// Modules: docker/config.ts (spec -> container), docker/engine.ts (calls, errors, time limits), docker/images.ts
// (local image or pull), docker/logs.ts and docker/streams.ts (multiplexed output), docker/exec.ts (health-check
// commands), docker/state.ts (engine state -> exit status, inspection, handles), docker/signals.ts.
import type Docker from 'dockerode';
import { type ContainerPolicy, containerConfig, containerName, LABEL } from './docker/config.ts';
import {
  call,
  DockerError,
  type Engine,
  engineAddress,
  hasStatus,
  type WaitAnswer,
  waitForExit,
} from './docker/engine.ts';
import { ContainerExecs } from './docker/exec.ts';
import { ImageStore } from './docker/images.ts';
import { containerLogs } from './docker/logs.ts';
import { containerIdOf, exitStatusOf, handleOf, inspectionOf, isRunning, neverStarted } from './docker/state.ts';
import { normalizeSignal } from './signals.ts';
import {
  type ExecResult,
  type Executor,
  ExecutorError,
  type ExitStatus,
  type LogLine,
  type RecoveredTask,
  type TaskHandle,
  type TaskInspection,
  type TaskRunSpec,
} from './types.ts';

export interface DockerExecutorOptions {
  docker: Docker;
  /** This node: labels every container, and only its tasks are accepted. */
  nodeId: string;
  /** Capabilities a task may add back after ALL are dropped; a task can't add anything else. Default none. */
  capAddAllowlist?: string[];
  /** Let tasks run as root (user "root" or UID 0). Default false. */
  allowRoot?: boolean;
  /** Pids limit for tasks whose spec sets none. Default 512; 0 for the engine's default (unlimited). */
  defaultPidsLimit?: number;
  /** Limit for pulling a missing image. Default 5 minutes. */
  pullTimeoutMs?: number;
  /** Limit for short engine calls (inspect, kill, remove...). Default 30 s. */
  requestTimeoutMs?: number;
  /** Limit for creating and starting a container (vfs copies the image's layers on create). Default 2 minutes. */
  createTimeoutMs?: number;
  /** json-file log rotation. Default 10m per file, 3 files. */
  logMaxSize?: string;
  logMaxFiles?: number;
  warn?: (message: string) => void;
}

/** Oldest Engine API with what we use: DeviceRequests (1.40, Docker 19.03). */
const MIN_API_VERSION = [1, 40] as const;

export class DockerExecutor implements Executor {
  readonly runtime = 'docker' as const;
  private readonly engine: Engine;
  private readonly nodeId: string;
  private readonly policy: Omit<ContainerPolicy, 'init'>;
  private readonly createTimeoutMs: number;
  private readonly warn: (message: string) => void;
  private readonly images: ImageStore;
  private readonly execs: ContainerExecs;
  /** Whether the engine has an init binary (docker-init, i.e. tini); asked once. */
  private initSupport: Promise<boolean> | undefined;

  constructor(options: DockerExecutorOptions) {
    this.engine = {
      docker: options.docker,
      address: engineAddress(options.docker),
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
    };
    this.nodeId = options.nodeId;
    this.policy = {
      capAddAllowlist: options.capAddAllowlist ?? [],
      allowRoot: options.allowRoot ?? false,
      defaultPidsLimit: options.defaultPidsLimit ?? 512,
      logMaxSize: options.logMaxSize ?? '10m',
      logMaxFiles: options.logMaxFiles ?? 3,
    };
    this.createTimeoutMs = options.createTimeoutMs ?? 120_000;
    this.warn = options.warn ?? (() => {});
    this.images = new ImageStore(this.engine, options.pullTimeoutMs ?? 300_000);
    this.execs = new ContainerExecs(this.engine);
  }

  async available(): Promise<{ ok: boolean; reason?: string }> {
    try {
      const timeout = Math.min(this.engine.requestTimeoutMs, 5_000);
      const version = await call(
        this.engine,
        'asking the Docker engine its version',
        () => this.engine.docker.version(),
        timeout,
      );
      const [major = 0, minor = 0] = String(version.ApiVersion).split('.').map(Number);
      const [wantMajor, wantMinor] = MIN_API_VERSION;
      if (major < wantMajor || (major === wantMajor && minor < wantMinor)) {
        return {
          ok: false,
          reason: `Docker ${version.Version} at ${this.engine.address} speaks API ${version.ApiVersion}; need ${wantMajor}.${wantMinor} (Docker 19.03) or later`,
        };
      }
      return { ok: true };
    } catch (error) {
      return { ok: false, reason: (error as Error).message };
    }
  }

  async prepare(spec: TaskRunSpec): Promise<void> {
    // Refuse a bad spec before pulling anything for it.
    this.config(spec, false);
    await this.images.ensure(spec.image);
  }

  async start(spec: TaskRunSpec): Promise<TaskHandle> {
    const config = this.config(spec, await this.engineHasInit());
    const name = containerName(spec);
    let id: string;
    try {
      const created = await call(
        this.engine,
        `creating container ${name}`,
        (abortSignal) => this.engine.docker.createContainer({ ...config, abortSignal }),
        this.createTimeoutMs,
      );
      id = created.id;
    } catch (error) {
      if (hasStatus(error, 409)) return this.adopt(spec, name);
      if (hasStatus(error, 404)) {
        throw new ExecutorError(`image ${spec.image} is not on this node (prepare() gets it); cannot start`, true);
      }
      throw error;
    }
    await this.startCreated(id, name);
    return handleOf(spec.taskId, id, name);
  }

  async wait(handle: TaskHandle): Promise<ExitStatus> {
    const container = this.container(handle);
    const what = `waiting for container ${container.id} (task ${handle.taskId})`;
    // No time limit: a task runs for as long as it runs. If the engine goes away, the request fails.
    let result: WaitAnswer;
    try {
      result = await call(this.engine, what, (signal) => waitForExit(this.engine.docker, container.id, signal), 0);
    } catch (error) {
      throw hasStatus(error, 404) ? this.gone(handle, container.id) : error;
    }
    // Exit code from wait(); OOM and runtime errors only inspect has. Removed in between: the code is all we get.
    const info = await this.inspectContainer(container).catch(() => undefined);
    if (info && neverStarted(info.State)) {
      // wait() returns at once for a container that never started: not an exit of the task.
      return { exitCode: info.State.ExitCode || 125, runtimeError: info.State.Error || 'the container never started' };
    }
    return exitStatusOf(result.StatusCode, info?.State, result.Error?.Message || undefined);
  }

  async stop(handle: TaskHandle, signal: string, gracePeriodMs: number): Promise<void> {
    const container = this.container(handle);
    const stopSignal = normalizeSignal(signal, 'stop signal');
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.inspectContainer(container);
    } catch (error) {
      if (hasStatus(error, 404)) return; // Gone: nothing runs.
      throw error;
    }
    if (!isRunning(info.State)) return;
    const graceSeconds = Math.max(0, Math.ceil(gracePeriodMs / 1000));
    const configured = safeSignal((info.Config as { StopSignal?: string }).StopSignal);
    if (stopSignal === configured) {
      // docker stop sends the container's StopSignal (the spec's), then SIGKILL after t seconds. The engine keeps
      // that promise even if swarmd dies meanwhile, so it is preferred when the signals agree.
      await call(
        this.engine,
        `stopping container ${container.id}`,
        (abortSignal) => container.stop({ t: graceSeconds, abortSignal }),
        this.engine.requestTimeoutMs + graceSeconds * 1000,
      ).catch(ignoreStatus(304, 404));
    } else {
      // Another signal than the container's: docker stop would send its own too (the API's stop signal parameter
      // needs API 1.42), so send ours and count the grace period here.
      await this.kill(container, stopSignal);
      if (!(await this.exitsWithin(container, gracePeriodMs))) await this.kill(container, 'SIGKILL');
    }
    // stop() returns once the container is down; a kill only sends. Either way, resolve after it has exited.
    if (!(await this.exitsWithin(container, this.engine.requestTimeoutMs))) {
      throw new ExecutorError(
        `task ${handle.taskId}: container ${container.id} was killed but has not exited ` +
          `${this.engine.requestTimeoutMs} ms later`,
        true,
      );
    }
  }

  async remove(handle: TaskHandle): Promise<void> {
    const container = this.container(handle);
    // v: true removes the container's anonymous volumes (an image's VOLUME gets a new one per container, which
    // nothing would ever reuse); named volumes, the spec's mounts, are never removed by it.
    await call(this.engine, `removing container ${container.id}`, (abortSignal) =>
      container.remove({ force: true, v: true, abortSignal }),
    ).catch(ignoreStatus(404, 409)); // 409: a removal already in progress.
    this.execs.forget(container.id);
  }

  logs(handle: TaskHandle, options: { follow: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogLine> {
    return containerLogs(this.engine, this.container(handle), options);
  }

  exec(handle: TaskHandle, command: string[], timeoutMs: number): Promise<ExecResult> {
    return this.execs.run(this.container(handle), command, timeoutMs);
  }

  async inspect(handle: TaskHandle): Promise<TaskInspection> {
    const container = this.container(handle);
    try {
      return inspectionOf(await this.inspectContainer(container));
    } catch (error) {
      if (hasStatus(error, 404)) throw this.gone(handle, container.id);
      throw error;
    }
  }

  async recover(nodeId: string): Promise<RecoveredTask[]> {
    const summaries = await call(this.engine, `listing the containers of node ${nodeId}`, (abortSignal) =>
      this.engine.docker.listContainers({ all: true, filters: { label: [`${LABEL.nodeId}=${nodeId}`] }, abortSignal }),
    );
    const recovered: RecoveredTask[] = [];
    for (const summary of summaries) {
      const taskId = summary.Labels[LABEL.taskId];
      if (!taskId) continue;
      try {
        const info = await this.inspectContainer(this.engine.docker.getContainer(summary.Id));
        recovered.push({ handle: handleOf(taskId, info.Id, info.Name), inspection: inspectionOf(info) });
      } catch (error) {
        if (!hasStatus(error, 404)) throw error; // Removed since the listing: nothing to recover.
      }
    }
    return recovered;
  }

  private config(spec: TaskRunSpec, init: boolean): Docker.ContainerCreateOptions {
    if (spec.nodeId !== this.nodeId) {
      throw new ExecutorError(`task ${spec.taskId} is for node ${spec.nodeId}, not this node (${this.nodeId})`, false);
    }
    return containerConfig(spec, { ...this.policy, init });
  }

  private async startCreated(id: string, name: string): Promise<void> {
    const container = this.engine.docker.getContainer(id);
    try {
      await call(
        this.engine,
        `starting container ${name}`,
        (abortSignal) => container.start({ abortSignal }),
        this.createTimeoutMs,
      );
    } catch (error) {
      if (hasStatus(error, 304)) return; // Already started.
      // No handle reaches the agent, so nothing else would remove it. (If the engine is gone this fails too, and
      // recover() finds the container later, never started.)
      await call(this.engine, `removing container ${name}`, (abortSignal) =>
        container.remove({ force: true, v: true, abortSignal }),
      ).catch(() => undefined);
      if (error instanceof ExecutorError && /could not select device driver/.test(error.message)) {
        // dockerd answers 500, but this engine will never have the driver: no point retrying here.
        throw new ExecutorError(
          `${error.message} (the engine has no NVIDIA GPU support: nvidia-container-toolkit, then restart dockerd)`,
          false,
        );
      }
      throw error;
    }
  }

  /**
   * The container name is taken: an earlier start() of this task got as far as creating it (swarmd died, or the
   * create call timed out on our side while the engine finished it). Use that container if it has not run yet.
   */
  private async adopt(spec: TaskRunSpec, name: string): Promise<TaskHandle> {
    const info = await this.inspectContainer(this.engine.docker.getContainer(name));
    if (info.Config.Labels?.[LABEL.taskId] !== spec.taskId) {
      throw new ExecutorError(`container name ${name} is taken by a container that is not task ${spec.taskId}`, false);
    }
    if (neverStarted(info.State) && !info.State.Error) await this.startCreated(info.Id, name);
    else if (!isRunning(info.State)) {
      throw new ExecutorError(`task ${spec.taskId} already ran in container ${info.Id}; a task runs only once`, false);
    }
    return handleOf(spec.taskId, info.Id, name);
  }

  private async engineHasInit(): Promise<boolean> {
    this.initSupport ??= call(this.engine, 'asking the Docker engine for its info', () =>
      this.engine.docker.info(),
    ).then(
      (info: { InitBinary?: string; InitCommit?: { ID?: string } }) => {
        // dockerd reports InitCommit.ID "N/A" when it could not run its init binary (`docker-init --version`).
        const supported = Boolean(info.InitBinary) && info.InitCommit?.ID !== 'N/A';
        if (!supported) {
          this.warn(
            `docker executor: the engine at ${this.engine.address} has no usable init binary ` +
              `(${info.InitBinary || 'none'}); tasks run without an init reaping their zombies`,
          );
        }
        return supported;
      },
      (error: unknown) => {
        this.initSupport = undefined; // Ask again next time.
        throw error;
      },
    );
    return this.initSupport;
  }

  private container(handle: TaskHandle): Docker.Container {
    return this.engine.docker.getContainer(containerIdOf(handle));
  }

  private inspectContainer(container: Docker.Container): Promise<Docker.ContainerInspectInfo> {
    return call(this.engine, `inspecting container ${container.id}`, (abortSignal) =>
      container.inspect({ abortSignal }),
    );
  }

  private async kill(container: Docker.Container, signal: string): Promise<void> {
    await call(this.engine, `sending ${signal} to container ${container.id}`, (abortSignal) =>
      container.kill({ signal, abortSignal }),
    ).catch(ignoreStatus(404, 409)); // 409: not running (anymore).
  }

  /** Whether the container is down within timeoutMs (at once if it already is, or is gone). */
  private async exitsWithin(container: Docker.Container, timeoutMs: number): Promise<boolean> {
    try {
      await call(
        this.engine,
        `waiting for container ${container.id} to exit`,
        (abortSignal) => waitForExit(this.engine.docker, container.id, abortSignal),
        Math.max(1, timeoutMs),
      );
      return true;
    } catch (error) {
      if (hasStatus(error, 404)) return true;
      if (error instanceof DockerError && error.timedOut) return false;
      throw error;
    }
  }

  private gone(handle: TaskHandle, containerId: string): ExecutorError {
    return new ExecutorError(`task ${handle.taskId}: container ${containerId} no longer exists`, false);
  }
}

function safeSignal(signal: string | undefined): string {
  try {
    return normalizeSignal(signal || 'SIGTERM', 'StopSignal');
  } catch {
    return 'SIGTERM';
  }
}

/** For .catch(): swallows a DockerError with one of these statuses (the wanted state already holds), rethrows others. */
function ignoreStatus(...statuses: number[]): (error: unknown) => void {
  return (error) => {
    if (!hasStatus(error, ...statuses)) throw error;
  };
}
