// The executor interface: how a worker runs one task on a runtime (docker, process, singularity).
// The agent drives each task through prepare -> start -> wait, and stop/remove when told to; after a
// swarmd restart, recover() finds the tasks that kept running so they are re-attached, not duplicated.

export type Runtime = 'docker' | 'process' | 'singularity';

export interface Mount {
  type: 'bind' | 'volume' | 'tmpfs';
  /** Host path (bind) or volume name (volume); absent for tmpfs. */
  source?: string;
  target: string;
  readOnly: boolean;
}

/** Everything an executor needs to run one task. Built by the agent from the service spec. */
export interface TaskRunSpec {
  taskId: string;
  serviceId: string;
  serviceName: string;
  /** Replica slot (replicated services) or node ID (global). */
  slot: string;
  nodeId: string;
  /** docker: image reference; singularity: SIF path, sandbox dir or docker:// / oras:// ref; process: unused. */
  image: string;
  /** Overrides the image's entrypoint (docker) or is the program to run (process). */
  command: string[];
  args: string[];
  env: Record<string, string>;
  workdir?: string;
  /** "uid[:gid]" or a user name; executors pick a non-root default when absent. */
  user?: string;
  labels: Record<string, string>;
  limits: { nanoCpus?: number; memoryBytes?: number; pids?: number };
  mounts: Mount[];
  /** Signal sent first on stop, e.g. "SIGTERM". */
  stopSignal: string;
  /** Time between the stop signal and SIGKILL. */
  stopGracePeriodMs: number;
  /** Accelerator device IDs allocated to this task (e.g. GPU UUIDs); nothing else is exposed. */
  devices: { kind: string; ids: string[] }[];
  /** Host port allocated to the task where the runtime shares the host network (process, singularity). */
  hostPort?: number;
}

/** Identifies a started task to its executor (a container ID, a PID and its start time...). */
export interface TaskHandle {
  taskId: string;
  runtime: Runtime;
  /** Runtime-specific, serializable: the agent persists handles to re-attach after a restart. */
  ref: Record<string, string | number>;
}

export interface ExitStatus {
  exitCode: number;
  /** Set when the task was killed by a signal (exitCode is then 128 + its number). */
  signal?: string;
  /** Set when the runtime itself failed (image missing, runtime error) rather than the task's program. */
  runtimeError?: string;
  oomKilled?: boolean;
}

export interface TaskInspection {
  running: boolean;
  exitStatus?: ExitStatus;
  startedAt?: string;
  pid?: number;
  /** Where the task's service can be reached from this host (e.g. 127.0.0.1:PORT). */
  address?: string;
}

export interface LogLine {
  stream: 'stdout' | 'stderr';
  time: string;
  line: string;
}

export interface ExecResult {
  exitCode: number;
  output: string;
}

export interface RecoveredTask {
  handle: TaskHandle;
  inspection: TaskInspection;
}

export class ExecutorError extends Error {
  /** Whether retrying the same task could succeed (a pull that timed out) or not (a bad image path). */
  readonly retryable: boolean;
  constructor(message: string, retryable: boolean) {
    super(message);
    this.name = 'ExecutorError';
    this.retryable = retryable;
  }
}

export interface Executor {
  readonly runtime: Runtime;
  /** Checks the runtime is usable on this node (binary found, engine answers). */
  available(): Promise<{ ok: boolean; reason?: string }>;
  /** Gets what the task needs before it can start (image present or pulled, directories). */
  prepare(spec: TaskRunSpec): Promise<void>;
  start(spec: TaskRunSpec): Promise<TaskHandle>;
  /** Resolves when the task exits (also for a handle re-attached by recover()). */
  wait(handle: TaskHandle): Promise<ExitStatus>;
  /** Sends the stop signal, then SIGKILL after the grace period; resolves once it has exited. */
  stop(handle: TaskHandle, signal: string, gracePeriodMs: number): Promise<void>;
  /** Frees what the task left behind (container, task directory). */
  remove(handle: TaskHandle): Promise<void>;
  logs(handle: TaskHandle, options: { follow: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogLine>;
  /** Runs a command inside the task (health checks), killed after timeoutMs. */
  exec(handle: TaskHandle, command: string[], timeoutMs: number): Promise<ExecResult>;
  inspect(handle: TaskHandle): Promise<TaskInspection>;
  /** Tasks of this node that a previous swarmd left running or exited. */
  recover(nodeId: string): Promise<RecoveredTask[]>;
}
