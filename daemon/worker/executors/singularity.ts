// The singularity runtime: a task is a foreground `apptainer exec/run` (or `singularity`) child process, never
// setuid. Supervision is the process runtime's (process.ts), composed rather than copied: this executor turns
// the spec into an apptainer command line (singularity/args.ts) and hands the process executor a spec that runs
// that command, so the supervisor wrapper, logs, exit status, cgroup limits, stop with grace, and re-attaching
// after a swarmd restart all work the same way. Apptainer forwards the signals it gets to its payload and exits
// with the payload's code, so the process runtime's view of the apptainer process is the task's.
//
// What is added on top:
// - the image, binds and accelerators, checked before anything starts (non-retryable errors naming the field);
// - apptainer's own environment, built from scratch: swarmd's is never passed on, so neither its secrets nor
//   APPTAINER_* settings of swarmd's shell (APPTAINER_BIND would add binds) reach a task;
// - exit 255 (apptainer's own failure) reported as a runtime error with its FATAL line (singularity/exit.ts);
// - exec for health checks: a task started with --containall has its own PID and mount namespaces, and without
//   root there is no entering them (no nsenter into a user namespace we do not own). So a check runs as a new
//   `apptainer exec` of the same image, with the same binds, working dir and environment, as the task's user:
//   it shares the host network (apptainer does not isolate it unprivileged, so localhost:$PORT reaches the
//   task) and the bound directories, not the task's processes. Checks pay a container start (~0.1-1 s).
//
// Task state lives in <dataDir>/singularity-tasks/tasks/<taskId>/, apart from the process runtime's, so each
// executor recovers only its own tasks.
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import { DEFAULT_PATH } from './process/launch.ts';
import { ProcessExecutor, type ProcessExecutorOptions } from './process.ts';
import { buildCommand, type ContainerCommand, parseImage } from './singularity/args.ts';
import { findBinary, probeBinary, type RuntimeBinary } from './singularity/binary.ts';
import { isRuntimeFailure, runtimeFailure } from './singularity/exit.ts';
import { checkBindSources, checkImage } from './singularity/host-checks.ts';
import { readTaskInfo, type SingularityTaskInfo, writeTaskInfo } from './singularity/task-info.ts';
import {
  type ExecResult,
  type Executor,
  ExecutorError,
  type ExitStatus,
  type LogLine,
  type RecoveredTask,
  type Runtime,
  type TaskHandle,
  type TaskInspection,
  type TaskRunSpec,
} from './types.ts';

export interface SingularityExecutorOptions extends Omit<ProcessExecutorOptions, 'stateDir' | 'warn'> {
  /** swarmd's data dir: task directories go in <dataDir>/singularity-tasks/tasks/. */
  dataDir: string;
  /** The binary: a path, or a name looked up on searchPath. Default: apptainer, else singularity, on searchPath. */
  binary?: string;
  /** Where binaries are looked up. Default: swarmd's PATH. */
  searchPath?: string;
  /**
   * Extra variables for apptainer's own environment, never the container's: APPTAINER_CACHEDIR, APPTAINER_TMPDIR,
   * proxy settings for docker:// pulls...
   */
  runtimeEnv?: Record<string, string>;
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** How many recent log lines are searched for apptainer's FATAL line. */
const FAILURE_TAIL = 50;

export class SingularityExecutor implements Executor {
  readonly runtime: Runtime = 'singularity';
  private readonly processes: ProcessExecutor;
  private readonly options: SingularityExecutorOptions;
  private readonly log: (level: 'info' | 'warn', message: string) => void;
  private readonly searchPath: string;
  private binary: RuntimeBinary | undefined;
  private readonly infos = new Map<string, SingularityTaskInfo>();

  constructor(options: SingularityExecutorOptions) {
    const { dataDir, binary: _binary, searchPath, runtimeEnv: _env, log, ...processOptions } = options;
    this.options = options;
    this.log = log ?? ((level, message) => console[level === 'warn' ? 'warn' : 'log'](`singularity: ${message}`));
    this.searchPath = searchPath ?? process.env.PATH ?? DEFAULT_PATH;
    this.processes = new ProcessExecutor({
      ...processOptions,
      stateDir: join(dataDir, 'singularity-tasks'),
      warn: (message) => this.log('warn', message),
    });
  }

  /**
   * Apptainer's own environment. As a non-root swarmd runs tasks as itself, HOME is its real home, so the image
   * cache (~/.apptainer/cache) and registry logins are shared by its tasks; as root, tasks run as other users
   * and HOME defaults to each task's working dir.
   */
  private runtimeEnv(): Record<string, string> {
    const env: Record<string, string> = { PATH: this.searchPath };
    if (process.getuid?.() !== 0) env.HOME = homedir();
    return { ...env, ...this.options.runtimeEnv };
  }

  async available(): Promise<{ ok: boolean; reason?: string }> {
    const found = findBinary(this.options.binary, this.searchPath);
    if ('reason' in found) return { ok: false, reason: found.reason };
    const probed = await probeBinary(found.path, this.runtimeEnv());
    if ('reason' in probed) return { ok: false, reason: probed.reason };
    const supervisor = await this.processes.available();
    if (!supervisor.ok) return supervisor;
    this.binary = probed;
    return { ok: true };
  }

  private async resolved(): Promise<RuntimeBinary> {
    if (this.binary === undefined) {
      const check = await this.available();
      if (!check.ok) throw new ExecutorError(`singularity runtime unavailable: ${check.reason}`, false);
    }
    return this.binary!;
  }

  /** Everything start() refuses, checked without starting anything. */
  private async plan(
    spec: TaskRunSpec,
  ): Promise<{ binary: RuntimeBinary; command: ContainerCommand; run: TaskRunSpec }> {
    const binary = await this.resolved();
    const command = buildCommand(spec, { envPrefix: binary.envPrefix, swarmdIsRoot: process.getuid?.() === 0 });
    await checkImage(parseImage(spec.image));
    await checkBindSources(spec.mounts);
    // The process runtime runs apptainer: in the task dir's work/ (the container's working dir is --pwd), with no
    // mounts or devices of its own (they are apptainer's flags) and only apptainer's environment.
    const { workdir: _workdir, ...rest } = spec;
    const run: TaskRunSpec = {
      ...rest,
      image: '',
      command: [binary.path, ...command.args],
      args: [],
      env: { ...this.runtimeEnv(), ...command.env },
      mounts: [],
      devices: [],
    };
    return { binary, command, run };
  }

  async prepare(spec: TaskRunSpec): Promise<void> {
    const { run } = await this.plan(spec);
    await this.processes.prepare(run);
  }

  async start(spec: TaskRunSpec): Promise<TaskHandle> {
    const { binary, command, run } = await this.plan(spec);
    for (const warning of command.warnings) this.log('warn', `task ${spec.taskId}: ${warning}`);
    const handle = await this.processes.start(run);
    const info: SingularityTaskInfo = { version: 1, binary: binary.path, execPrefix: command.execPrefix };
    this.infos.set(spec.taskId, info);
    await writeTaskInfo(String(handle.ref.dir), info).catch((error: unknown) =>
      this.log(
        'warn',
        `task ${spec.taskId}: cannot record its health-check command (exec after a restart fails): ${error}`,
      ),
    );
    return toSingularity(handle);
  }

  private async info(handle: TaskHandle): Promise<SingularityTaskInfo | undefined> {
    let info = this.infos.get(handle.taskId);
    if (info === undefined && handle.ref.dir !== undefined) {
      info = await readTaskInfo(String(handle.ref.dir));
      if (info !== undefined) this.infos.set(handle.taskId, info);
    }
    return info;
  }

  /** Exit 255 is apptainer failing, not the program: say so, with its FATAL line. */
  private async exitStatus(handle: TaskHandle, status: ExitStatus): Promise<ExitStatus> {
    if (!isRuntimeFailure(status)) return status;
    const lines: LogLine[] = [];
    for await (const line of this.processes.logs(toProcess(handle), { follow: false, tail: FAILURE_TAIL })) {
      lines.push(line);
    }
    const info = await this.info(handle);
    return runtimeFailure(status, basename(info?.binary ?? this.binary?.path ?? 'apptainer'), lines);
  }

  async wait(handle: TaskHandle): Promise<ExitStatus> {
    return this.exitStatus(handle, await this.processes.wait(toProcess(handle)));
  }

  stop(handle: TaskHandle, signal: string, gracePeriodMs: number): Promise<void> {
    return this.processes.stop(toProcess(handle), signal, gracePeriodMs);
  }

  async remove(handle: TaskHandle): Promise<void> {
    await this.processes.remove(toProcess(handle));
    this.infos.delete(handle.taskId);
  }

  logs(handle: TaskHandle, options: { follow: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogLine> {
    return this.processes.logs(toProcess(handle), options);
  }

  async exec(handle: TaskHandle, command: string[], timeoutMs: number): Promise<ExecResult> {
    const processHandle = toProcess(handle);
    if (command.length === 0 || command[0] === '') throw new ExecutorError('exec needs a command', false);
    const info = await this.info(handle);
    if (info === undefined) {
      throw new ExecutorError(`task ${handle.taskId}: no container command recorded, cannot run commands in it`, false);
    }
    // The process runtime runs it as the task's user, with apptainer's environment (APPTAINERENV_ included).
    return this.processes.exec(processHandle, [info.binary, ...info.execPrefix, ...command], timeoutMs);
  }

  async inspect(handle: TaskHandle): Promise<TaskInspection> {
    const inspection = await this.processes.inspect(toProcess(handle));
    if (inspection.exitStatus !== undefined)
      inspection.exitStatus = await this.exitStatus(handle, inspection.exitStatus);
    return inspection;
  }

  async recover(nodeId: string): Promise<RecoveredTask[]> {
    const recovered: RecoveredTask[] = [];
    for (const task of await this.processes.recover(nodeId)) {
      const handle = toSingularity(task.handle);
      const inspection = task.inspection;
      if (inspection.exitStatus !== undefined)
        inspection.exitStatus = await this.exitStatus(handle, inspection.exitStatus);
      recovered.push({ handle, inspection });
    }
    return recovered;
  }

  /** Stops watching (swarmd shutting down). Tasks keep running; a later recover() re-attaches them. */
  close(): void {
    this.processes.close();
  }
}

/** The process runtime knows these tasks as its own: handles differ only in their runtime name. */
function toProcess(handle: TaskHandle): TaskHandle {
  if (handle.runtime !== 'singularity') {
    throw new ExecutorError(`not a singularity task handle: runtime ${handle.runtime}`, false);
  }
  return { ...handle, runtime: 'process' };
}

function toSingularity(handle: TaskHandle): TaskHandle {
  return { ...handle, runtime: 'singularity' };
}
