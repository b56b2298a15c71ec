// From what the engine reports about a container to the executor's types: exit status, inspection, handle.
import type Docker from 'dockerode';
import { signalName } from '../signals.ts';
import { ExecutorError, type ExitStatus, type TaskHandle, type TaskInspection } from '../types.ts';
import { LABEL } from './config.ts';

/** What Docker writes for a time that never happened (StartedAt of a container never started). */
const ZERO_TIME = '0001-01-01T00:00:00Z';

/**
 * Exit code and flags of a finished container. Docker does not record whether a container died from a signal:
 * like a shell, it reports 128 + the signal's number (tini, our init, passes its child's on). So a code in
 * 129..192 that names a signal is reported as that signal; a program that itself exits with, say, 137 is
 * indistinguishable from one killed by SIGKILL.
 */
export function exitStatusOf(exitCode: number, state: ContainerState | undefined, waitError?: string): ExitStatus {
  const status: ExitStatus = { exitCode };
  if (exitCode > 128 && exitCode <= 128 + 64) {
    const signal = signalName(exitCode - 128);
    if (signal) status.signal = signal;
  }
  if (state?.OOMKilled) status.oomKilled = true;
  const runtimeError = state?.Error || waitError;
  if (runtimeError) status.runtimeError = runtimeError;
  return status;
}

type ContainerState = Docker.ContainerInspectInfo['State'];

/** Whether the container's process exists (a paused one does, and keeps its resources). */
export function isRunning(state: ContainerState): boolean {
  return state.Running || state.Paused || state.Restarting;
}

/** A container that was created but whose process never started (start failed, or swarmd died in between). */
export function neverStarted(state: ContainerState): boolean {
  return !isRunning(state) && (!state.StartedAt || state.StartedAt === ZERO_TIME);
}

export function inspectionOf(info: Docker.ContainerInspectInfo): TaskInspection {
  const state = info.State;
  const inspection: TaskInspection = { running: isRunning(state) };
  if (state.StartedAt && state.StartedAt !== ZERO_TIME) inspection.startedAt = state.StartedAt;
  if (state.Pid > 0) inspection.pid = state.Pid;
  if (!inspection.running) {
    if (neverStarted(state)) {
      // Exited without ever running: only worth reporting when the engine said why.
      if (state.Error) inspection.exitStatus = { exitCode: state.ExitCode || 125, runtimeError: state.Error };
    } else {
      inspection.exitStatus = exitStatusOf(state.ExitCode, state);
    }
  }
  // Tasks on the host network listen on the port the worker gave them; the others have no address until the
  // load balancer attaches them to a network.
  const hostPort = info.Config.Labels?.[LABEL.hostPort];
  if (hostPort && info.HostConfig.NetworkMode === 'host') inspection.address = `127.0.0.1:${hostPort}`;
  return inspection;
}

export function handleOf(taskId: string, containerId: string, name: string): TaskHandle {
  return { taskId, runtime: 'docker', ref: { containerId, name: name.replace(/^\//, '') } };
}

/** The container ID in a handle, checked: handles are persisted by the agent and come back after restarts. */
export function containerIdOf(handle: TaskHandle): string {
  const id = handle.ref.containerId;
  if (handle.runtime !== 'docker' || typeof id !== 'string' || id === '') {
    throw new ExecutorError(`task ${handle.taskId}: not a docker task handle (${JSON.stringify(handle.ref)})`, false);
  }
  return id;
}
