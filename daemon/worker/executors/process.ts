// The process runtime: a task is a plain OS process, supervised by a tiny /bin/sh wrapper that outlives
// swarmd. The embedded default where no container runtime exists (edge devices, HPC login nodes, the demo):
// it needs no root and nothing installed beyond /bin/sh, util-linux `setsid` and `env`.
//
// It isolates nothing: the task sees the host's filesystem, network and devices. `image`, `labels` and
// `mounts` are ignored (mounts and devices with a warning; allocated GPUs are only named in the environment,
// launch.ts). What it does:
// - runs the program as a non-root user (see users.ts), with only the spec's environment (launch.ts);
// - keeps each task's state, logs and exit status in <stateDir>/tasks/<taskId>/ (task-store.ts, logs.ts),
//   so a restarted swarmd re-attaches to running tasks and learns how finished ones ended (wrapper.ts);
// - limits memory, pids and CPU with cgroup v2 where swarmd may create cgroups (cgroups.ts), else memory
//   by a sampling watchdog (watchdog.ts); a limit it cannot apply is reported through `warn` (limits.ts);
// - runs health-check commands inside the task's environment (exec.ts).
//
// Under systemd, swarmd's unit needs KillMode=process (or mixed), or restarting swarmd kills its tasks, and
// for cgroup limits Delegate=yes with DelegateSubgroup=swarmd-daemon (see cgroups.ts).
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync } from 'node:fs';
import { chown, mkdir, rm, stat } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import {
  type CgroupSupport,
  cgroupOomKilled,
  cgroupPids,
  detectCgroups,
  moveIntoCgroup,
  neededControllers,
  removeCgroup,
} from './process/cgroups.ts';
import { runCommand } from './process/exec.ts';
import { resolveProgram, taskEnv, unsearchableDir } from './process/launch.ts';
import { applyLimits, type TaskLimits } from './process/limits.ts';
import { TaskLogs } from './process/logs.ts';
import { bootId, childrenOf, isRunning, readProcStat, sessionMembers } from './process/procfs.ts';
import {
  listTaskDirs,
  oomFile,
  readExitFile,
  readRecord,
  statusFile,
  type TaskRecord,
  taskDir,
  tasksRoot,
  writeRecord,
} from './process/task-store.ts';
import { resolveTaskUser } from './process/users.ts';
import { MemoryWatchdog } from './process/watchdog.ts';
import { wrapperArgs } from './process/wrapper.ts';
import { exitStatusFromCode, signalNumber } from './signals.ts';
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

export interface ProcessExecutorOptions {
  /** Task directories go in <stateDir>/tasks/. Task users must be able to traverse stateDir. */
  stateDir: string;
  /** Limits that could not be applied, or only weakly, and other things an operator should know. */
  warn?: (message: string) => void;
  /** As root, run tasks that name no user as root rather than nobody (65534). */
  allowRoot?: boolean;
  /** Size at which a log file is rotated (one rotated file is kept). Default 10 MiB. */
  logMaxBytes?: number;
  /** A cgroup v2 directory prepared for swarmd's task cgroups; default: detect from swarmd's own cgroup. */
  cgroupParent?: string;
  /** How often running tasks are checked for exit. Default 200 ms. */
  exitPollMs?: number;
  /** How often the memory watchdog samples (only without a cgroup memory controller). Default 500 ms. */
  watchdogIntervalMs?: number;
}

/** How long to wait for a task that was sent SIGKILL (stuck in uninterruptible sleep, say). */
const KILL_WAIT_MS = 30_000;
/** How long to wait for the supervisor to fork the program's process. */
const SPAWN_WAIT_MS = 5_000;

interface ExitWaiter {
  record: TaskRecord;
  promise: Promise<ExitStatus>;
  resolve: (status: ExitStatus) => void;
  settling: boolean;
}

function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/bin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // Next.
    }
  }
  return undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function kill(pid: number, signal: number | NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Gone already (ESRCH), or not ours to signal (EPERM): nothing more to do either way.
  }
}

export class ProcessExecutor implements Executor {
  readonly runtime: Runtime = 'process';
  private readonly stateDir: string;
  private readonly warn: (message: string) => void;
  private readonly allowRoot: boolean;
  private readonly logMaxBytes: number;
  private readonly cgroupParent: string | undefined;
  private readonly exitPollMs: number;
  private readonly watchdog: MemoryWatchdog;
  private readonly records = new Map<string, TaskRecord>();
  private readonly taskLogs = new Map<string, TaskLogs>();
  private readonly exits = new Map<string, ExitWaiter>();
  /** Tasks whose exit is not seen yet: checked every exitPollMs. */
  private readonly pending = new Set<string>();
  private exitTimer: NodeJS.Timeout | undefined;
  /** wait() calls in progress. */
  private waiting = 0;
  private cgroups: Promise<CgroupSupport> | undefined;
  private tools: { setsid: string; env: string } | undefined;

  constructor(options: ProcessExecutorOptions) {
    this.stateDir = options.stateDir;
    this.warn = options.warn ?? ((message) => console.warn(`process executor: ${message}`));
    this.allowRoot = options.allowRoot ?? false;
    this.logMaxBytes = options.logMaxBytes ?? 10 * 1024 * 1024;
    this.cgroupParent = options.cgroupParent;
    this.exitPollMs = options.exitPollMs ?? 200;
    this.watchdog = new MemoryWatchdog(options.watchdogIntervalMs ?? 500, this.warn);
  }

  async available(): Promise<{ ok: boolean; reason?: string }> {
    if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (/proc), not ${process.platform}` };
    if (!existsSync('/bin/sh')) return { ok: false, reason: '/bin/sh not found' };
    const setsid = findTool('setsid');
    const env = findTool('env');
    if (setsid === undefined) return { ok: false, reason: 'setsid (util-linux) not found' };
    if (env === undefined) return { ok: false, reason: 'env (coreutils) not found' };
    this.tools = { setsid, env };
    return { ok: true };
  }

  /** Checks what start() would refuse (user, program, working dir) without creating anything. */
  async prepare(spec: TaskRunSpec): Promise<void> {
    taskDir(this.stateDir, spec.taskId);
    const user = await resolveTaskUser(spec.user, this.allowRoot);
    const cwd = await this.workdir(spec);
    await resolveProgram(spec.command, taskEnv(spec, cwd).PATH!, cwd, user);
  }

  private async workdir(spec: TaskRunSpec): Promise<string> {
    if (spec.workdir === undefined || spec.workdir === '') return join(taskDir(this.stateDir, spec.taskId), 'work');
    const stats = await stat(spec.workdir).catch(() => undefined);
    if (!stats?.isDirectory()) throw new ExecutorError(`working directory not found: ${spec.workdir}`, false);
    return spec.workdir;
  }

  async start(spec: TaskRunSpec): Promise<TaskHandle> {
    if (this.tools === undefined) {
      const check = await this.available();
      if (!check.ok) throw new ExecutorError(`process runtime unavailable: ${check.reason}`, false);
    }
    const tools = this.tools!;
    const dir = taskDir(this.stateDir, spec.taskId);
    const user = await resolveTaskUser(spec.user, this.allowRoot);
    const cwd = await this.workdir(spec);
    const env = taskEnv(spec, cwd);
    const program = await resolveProgram(spec.command, env.PATH!, cwd, user);
    if (spec.mounts.length > 0) this.warn(`task ${spec.taskId}: the process runtime ignores mounts`);
    if (spec.devices.some((device) => device.kind === 'gpu')) {
      this.warn(
        `task ${spec.taskId}: the process runtime exposes allocated GPUs by environment only ` +
          "(CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES); it cannot hide the host's other devices",
      );
    }
    const others = [...new Set(spec.devices.filter((device) => device.kind !== 'gpu').map((device) => device.kind))];
    if (others.length > 0) {
      this.warn(
        `task ${spec.taskId}: the process runtime cannot expose or isolate ${others.join(', ')} devices; ` +
          "the task sees all of the host's",
      );
    }

    await mkdir(tasksRoot(this.stateDir), { recursive: true, mode: 0o711 });
    try {
      await mkdir(dir, { mode: 0o711 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new ExecutorError(`task directory already exists: ${dir} (task started before, or not removed)`, false);
      }
      throw new ExecutorError(`cannot create task directory ${dir}: ${(error as Error).message}`, true);
    }

    let child: ChildProcess | undefined;
    let record: TaskRecord | undefined;
    try {
      // The task's user owns only its working dir; everything else in the task dir is swarmd's.
      if (cwd === join(dir, 'work')) {
        await mkdir(cwd, { mode: 0o700 });
        if (user.switchUser) await chown(cwd, user.uid, user.gid);
      }
      const blocked = await unsearchableDir(cwd, user);
      if (blocked !== undefined) {
        this.warn(
          `task ${spec.taskId}: uid ${user.uid} cannot search ${blocked}, so it cannot reach its working dir ${cwd} ` +
            'by absolute path ($HOME included); make the state dir traversable (chmod o+x)',
        );
      }
      let cgroup: TaskLimits = {};
      if (neededControllers(spec.limits).length > 0) {
        this.cgroups ??= detectCgroups(this.cgroupParent);
        cgroup = await applyLimits(spec.taskId, spec.limits, await this.cgroups, this.warn);
      }
      record = {
        version: 1,
        taskId: spec.taskId,
        nodeId: spec.nodeId,
        serviceId: spec.serviceId,
        serviceName: spec.serviceName,
        dir,
        cwd,
        env,
        uid: user.uid,
        gid: user.gid,
        switchUser: user.switchUser,
        ...(spec.hostPort !== undefined ? { hostPort: spec.hostPort } : {}),
        ...(cgroup.path !== undefined ? { cgroup: cgroup.path } : {}),
        ...(cgroup.watchdogMemoryBytes !== undefined ? { watchdogMemoryBytes: cgroup.watchdogMemoryBytes } : {}),
        bootId: bootId(),
        supervisorPid: 0,
        supervisorStart: 0,
      };

      // Opened here, inherited as fds 1 and 2: the program appends to them directly (see logs.ts). Fd 3 is
      // where the supervisor records the exit status.
      const stdout = openSync(join(dir, 'stdout.log'), 'a', 0o640);
      const stderr = openSync(join(dir, 'stderr.log'), 'a', 0o640);
      const status = openSync(statusFile(dir), 'a', 0o640);
      const { argv } = wrapperArgs({
        setsidPath: tools.setsid,
        envPath: tools.env,
        program,
        spec,
        env,
      });
      try {
        child = spawn('/bin/sh', argv, {
          cwd,
          env,
          detached: true,
          stdio: ['pipe', stdout, stderr, status],
          ...(user.switchUser ? { uid: user.uid, gid: user.gid } : {}),
        });
      } finally {
        closeSync(stdout);
        closeSync(stderr);
        closeSync(status);
      }
      const spawned = child;
      // The program's shell may die before reading "go" (EPIPE): that must not become an uncaught error.
      spawned.stdin!.on('error', () => {});
      await new Promise<void>((resolve, reject) => {
        spawned.once('spawn', resolve);
        spawned.once('error', reject);
      });
      const supervisorPid = spawned.pid!;
      const supervisorStart = readProcStat(supervisorPid)?.startTime ?? 0;
      record.supervisorPid = supervisorPid;
      record.supervisorStart = supervisorStart;
      await writeRecord(record);

      // The program's process waits for "go" (wrapper.ts): find it, put it in its cgroup, record it.
      const pid = await this.findProgram(supervisorPid, supervisorStart);
      if (pid === undefined) {
        throw new ExecutorError(
          `the supervisor exited before starting the program: ${await this.stderrTail(dir)}`,
          true,
        );
      }
      record.pid = pid;
      record.pidStart = readProcStat(pid)?.startTime ?? 0;
      if (record.cgroup !== undefined) {
        try {
          await moveIntoCgroup(record.cgroup, pid);
        } catch (error) {
          this.warn(`task ${spec.taskId}: cannot move into cgroup ${record.cgroup}, limits not applied: ${error}`);
          if (spec.limits.memoryBytes !== undefined) record.watchdogMemoryBytes = spec.limits.memoryBytes;
        }
      }
      record.startedAt = new Date().toISOString();
      await writeRecord(record);
      spawned.stdin!.end('go\n');
    } catch (error) {
      // Closing the handshake pipe makes a program still waiting for "go" give up without running.
      child?.stdin?.destroy();
      if (child?.pid !== undefined) kill(child.pid, 'SIGKILL');
      if (record?.pid !== undefined) kill(record.pid, 'SIGKILL');
      if (record?.cgroup !== undefined) await removeCgroup(record.cgroup).catch(() => {});
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      if (error instanceof ExecutorError) throw error;
      throw new ExecutorError(`cannot start task ${spec.taskId}: ${(error as Error).message}`, true);
    }

    // Let swarmd exit while the task runs; libuv still reaps the supervisor if it exits first.
    child.unref();
    const taskId = spec.taskId;
    child.once('exit', () => this.checkExit(taskId));
    child.on('error', () => {});
    this.register(record, true);
    return this.handleOf(record);
  }

  /** The supervisor's child, once it has forked it (or undefined if the supervisor died first). */
  private async findProgram(supervisorPid: number, supervisorStart: number): Promise<number | undefined> {
    const deadline = Date.now() + SPAWN_WAIT_MS;
    while (Date.now() < deadline) {
      const [pid] = childrenOf(supervisorPid);
      if (pid !== undefined) return pid;
      if (!isRunning(supervisorPid, supervisorStart)) return undefined;
      await sleep(2);
    }
    return undefined;
  }

  private async stderrTail(dir: string): Promise<string> {
    const lines: string[] = [];
    for await (const line of new TaskLogs(dir, this.logMaxBytes).read({ follow: false, tail: 5 })) {
      lines.push(line.line);
    }
    return lines.join(' | ') || '(no output)';
  }

  private handleOf(record: TaskRecord): TaskHandle {
    const ref: Record<string, string | number> = {
      dir: record.dir,
      bootId: record.bootId,
      supervisorPid: record.supervisorPid,
      supervisorStart: record.supervisorStart,
    };
    if (record.pid !== undefined) ref.pid = record.pid;
    if (record.pidStart !== undefined) ref.pidStart = record.pidStart;
    return { taskId: record.taskId, runtime: 'process', ref };
  }

  /** Tracks a started or recovered task: logs timestamped while it runs, its exit noticed, memory watched. */
  private register(record: TaskRecord, running: boolean): void {
    this.records.set(record.taskId, record);
    const logs = this.logsOf(record);
    if (!running) {
      logs.finish();
      return;
    }
    logs.watch();
    if (record.watchdogMemoryBytes !== undefined && record.pid !== undefined && record.pidStart !== undefined) {
      this.watchdog.watch(record.taskId, {
        pid: record.pid,
        pidStart: record.pidStart,
        limitBytes: record.watchdogMemoryBytes,
        oomFile: oomFile(record.dir),
      });
    }
    void this.exitOf(record);
  }

  private logsOf(record: TaskRecord): TaskLogs {
    let logs = this.taskLogs.get(record.taskId);
    if (logs === undefined) {
      logs = new TaskLogs(record.dir, this.logMaxBytes);
      this.taskLogs.set(record.taskId, logs);
    }
    return logs;
  }

  private async recordOf(handle: TaskHandle): Promise<TaskRecord> {
    if (handle.runtime !== 'process') {
      throw new ExecutorError(`not a process task handle: runtime ${handle.runtime}`, false);
    }
    const known = this.records.get(handle.taskId);
    if (known !== undefined) return known;
    const record = await readRecord(taskDir(this.stateDir, handle.taskId));
    if (record === undefined) throw new ExecutorError(`unknown task ${handle.taskId} (no task record)`, false);
    this.register(record, this.running(record));
    return record;
  }

  /** The task runs while its supervisor or its program does (the same processes, same boot). */
  private running(record: TaskRecord): boolean {
    if (record.bootId !== bootId()) return false;
    if (isRunning(record.supervisorPid, record.supervisorStart)) return true;
    return record.pid !== undefined && record.pidStart !== undefined && isRunning(record.pid, record.pidStart);
  }

  private async exitStatusOf(record: TaskRecord): Promise<ExitStatus> {
    const { code, aborted } = await readExitFile(record.dir);
    if (aborted || record.pid === undefined) {
      return { exitCode: -1, runtimeError: 'swarmd stopped while starting the task; the program never ran' };
    }
    if (code === undefined) {
      return {
        exitCode: -1,
        runtimeError:
          record.bootId !== bootId()
            ? 'the node rebooted while the task ran; its exit status is unknown'
            : 'the supervisor ended without recording an exit status (was it killed?)',
      };
    }
    const status = exitStatusFromCode(code);
    const oom =
      existsSync(oomFile(record.dir)) || (record.cgroup !== undefined && (await cgroupOomKilled(record.cgroup)));
    if (oom) status.oomKilled = true;
    return status;
  }

  private exitOf(record: TaskRecord): Promise<ExitStatus> {
    const existing = this.exits.get(record.taskId);
    if (existing !== undefined) return existing.promise;
    let resolve!: (status: ExitStatus) => void;
    const promise = new Promise<ExitStatus>((r) => {
      resolve = r;
    });
    this.exits.set(record.taskId, { record, promise, resolve, settling: false });
    this.pending.add(record.taskId);
    if (this.exitTimer === undefined) {
      this.exitTimer = setInterval(() => {
        for (const taskId of this.pending) this.checkExit(taskId);
      }, this.exitPollMs);
      // Tasks outlive swarmd: watching them keeps swarmd alive only while someone awaits wait().
      if (this.waiting === 0) this.exitTimer.unref();
    }
    this.checkExit(record.taskId);
    return promise;
  }

  private checkExit(taskId: string): void {
    const waiter = this.exits.get(taskId);
    if (waiter === undefined || waiter.settling || this.running(waiter.record)) return;
    waiter.settling = true;
    this.pending.delete(taskId);
    if (this.pending.size === 0 && this.exitTimer !== undefined) {
      clearInterval(this.exitTimer);
      this.exitTimer = undefined;
    }
    void (async () => {
      const status = await this.exitStatusOf(waiter.record).catch(
        (error: unknown): ExitStatus => ({ exitCode: -1, runtimeError: `cannot read exit status: ${error}` }),
      );
      await this.killLeftovers(waiter.record).catch(() => {});
      this.watchdog.unwatch(taskId);
      this.taskLogs.get(taskId)?.finish();
      waiter.resolve(status);
    })();
  }

  /**
   * Kills what the program left behind (children still in its session or cgroup): a task ends with its main
   * process, as a container does. Session P can only be ours while PID P is unused or still our program:
   * the kernel does not hand out a PID that a live process uses as its session ID.
   */
  private async killLeftovers(record: TaskRecord): Promise<void> {
    if (record.bootId !== bootId()) return;
    const pids = new Set<number>();
    if (record.pid !== undefined) {
      const stat = readProcStat(record.pid);
      if (stat === undefined || stat.startTime === record.pidStart) {
        for (const pid of sessionMembers(new Set([record.pid])).get(record.pid) ?? []) pids.add(pid);
      }
    }
    if (record.cgroup !== undefined) for (const pid of await cgroupPids(record.cgroup)) pids.add(pid);
    for (const pid of pids) kill(pid, 'SIGKILL');
  }

  async wait(handle: TaskHandle): Promise<ExitStatus> {
    const exited = this.exitOf(await this.recordOf(handle));
    this.waiting += 1;
    this.exitTimer?.ref();
    try {
      return await exited;
    } finally {
      this.waiting -= 1;
      if (this.waiting === 0) this.exitTimer?.unref();
    }
  }

  /** Signals the program's process group (its children too), not the supervisor, which records the status. */
  private signalProgram(record: TaskRecord, signal: number): void {
    if (record.pid === undefined || record.pidStart === undefined) {
      // Never released: the supervisor and its waiting child are all there is.
      if (isRunning(record.supervisorPid, record.supervisorStart)) kill(-record.supervisorPid, 'SIGKILL');
      return;
    }
    if (!isRunning(record.pid, record.pidStart)) return;
    try {
      process.kill(-record.pid, signal);
    } catch {
      kill(record.pid, signal);
    }
  }

  async stop(handle: TaskHandle, signal: string, gracePeriodMs: number): Promise<void> {
    const record = await this.recordOf(handle);
    const signum = signalNumber(signal);
    const exited = this.exitOf(record);
    this.signalProgram(record, signum);
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), Math.max(0, gracePeriodMs));
    });
    const timedOut = await Promise.race([exited.then(() => false), graceOver]);
    clearTimeout(timer);
    if (!timedOut) return;
    this.signalProgram(record, signalNumber('SIGKILL'));
    await this.killLeftovers(record);
    const killWait = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), KILL_WAIT_MS);
    });
    const stuck = await Promise.race([exited.then(() => false), killWait]);
    clearTimeout(timer);
    if (stuck) throw new ExecutorError(`task ${record.taskId} did not exit ${KILL_WAIT_MS} ms after SIGKILL`, true);
  }

  async remove(handle: TaskHandle): Promise<void> {
    const dir = taskDir(this.stateDir, handle.taskId);
    const record = this.records.get(handle.taskId) ?? (await readRecord(dir));
    if (record !== undefined) {
      if (this.running(record)) {
        throw new ExecutorError(`task ${handle.taskId} is still running: stop it before removing it`, false);
      }
      await this.killLeftovers(record);
      if (record.cgroup !== undefined) {
        await removeCgroup(record.cgroup).catch((error: unknown) =>
          this.warn(`task ${handle.taskId}: cannot remove cgroup ${record.cgroup}: ${error}`),
        );
      }
    }
    this.taskLogs.get(handle.taskId)?.close();
    this.taskLogs.delete(handle.taskId);
    this.watchdog.unwatch(handle.taskId);
    this.records.delete(handle.taskId);
    this.exits.delete(handle.taskId);
    this.pending.delete(handle.taskId);
    await rm(dir, { recursive: true, force: true });
  }

  async *logs(
    handle: TaskHandle,
    options: { follow: boolean; tail?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine> {
    const record = await this.recordOf(handle);
    yield* this.logsOf(record).read(options);
  }

  async exec(handle: TaskHandle, command: string[], timeoutMs: number): Promise<ExecResult> {
    const record = await this.recordOf(handle);
    if (!this.running(record)) throw new ExecutorError(`task ${record.taskId} is not running`, false);
    const [program, ...args] = command;
    if (program === undefined || program === '') throw new ExecutorError('exec needs a command', false);
    return runCommand(program, args, {
      cwd: record.cwd,
      env: record.env,
      ...(record.switchUser ? { uid: record.uid, gid: record.gid } : {}),
      timeoutMs,
    });
  }

  async inspect(handle: TaskHandle): Promise<TaskInspection> {
    return this.inspectRecord(await this.recordOf(handle));
  }

  private async inspectRecord(record: TaskRecord): Promise<TaskInspection> {
    const running = this.running(record);
    const inspection: TaskInspection = { running };
    if (!running) inspection.exitStatus = await this.exitStatusOf(record);
    if (record.startedAt !== undefined) inspection.startedAt = record.startedAt;
    if (record.pid !== undefined) inspection.pid = record.pid;
    if (record.hostPort !== undefined) inspection.address = `127.0.0.1:${record.hostPort}`;
    return inspection;
  }

  async recover(nodeId: string): Promise<RecoveredTask[]> {
    const recovered: RecoveredTask[] = [];
    for (const dir of await listTaskDirs(this.stateDir)) {
      const record = await readRecord(dir);
      if (record === undefined) {
        this.warn(`ignoring ${dir}: no task record (swarmd stopped while creating it?)`);
        continue;
      }
      if (record.nodeId !== nodeId) continue;
      if (!this.records.has(record.taskId)) this.register(record, this.running(record));
      recovered.push({ handle: this.handleOf(record), inspection: await this.inspectRecord(record) });
    }
    return recovered;
  }

  /** Stops watching (swarmd shutting down). Tasks keep running; a later recover() re-attaches them. */
  close(): void {
    if (this.exitTimer !== undefined) clearInterval(this.exitTimer);
    this.exitTimer = undefined;
    this.pending.clear();
    this.watchdog.close();
    for (const logs of this.taskLogs.values()) logs.close();
  }
}
