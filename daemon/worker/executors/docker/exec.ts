// Commands run inside a task's container (health checks), with a time limit.
//
// Docker cannot kill an exec: the API has no call for it (moby/moby#9098, moby/moby#35703, still open), and the
// PID exec inspect gives is a host PID we can't safely signal from here (the engine may be remote, in a VM, or
// rootless). So when the limit passes we stop reading, the call fails with a retryable ExecutorError, and the
// command keeps running inside the container until it exits by itself or the container stops. To keep a command
// that always hangs from piling up one process per check, a container with MAX_LINGERING such execs still running
// gets no new one until they finish.
import type Docker from 'dockerode';
import { type ExecResult, ExecutorError } from '../types.ts';
import { call, type Engine, hasStatus, toDockerError } from './engine.ts';
import { FrameDecoder } from './streams.ts';

const MAX_LINGERING = 3;
/** Output kept per exec (stdout and stderr interleaved); the rest is dropped. Health checks print little. */
const MAX_OUTPUT_BYTES = 64 * 1024;
/** The exit code can be set a moment after the output ends: how often, and how long, to look for it. */
const EXIT_POLL_MS = 25;
const EXIT_POLL_LIMIT_MS = 2_000;

export class ContainerExecs {
  private readonly engine: Engine;
  /** Container ID -> IDs of its execs that timed out and may still be running. */
  private readonly lingering = new Map<string, Set<string>>();

  constructor(engine: Engine) {
    this.engine = engine;
  }

  async run(container: Docker.Container, command: string[], timeoutMs: number): Promise<ExecResult> {
    if (command.length === 0) throw new ExecutorError('exec: empty command', false);
    const shown = JSON.stringify(command);
    await this.checkLingering(container);
    const deadline = Date.now() + timeoutMs;
    const exec = await call(this.engine, `creating exec ${shown} in container ${container.id}`, (abortSignal) =>
      container.exec({
        Cmd: command,
        AttachStdin: false,
        AttachStdout: true,
        AttachStderr: true,
        Tty: false,
        abortSignal,
      }),
    );
    const what = `exec ${shown} in container ${container.id}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), Math.max(0, deadline - Date.now()));
    try {
      const stream = (await exec.start({
        Detach: false,
        Tty: false,
        abortSignal: controller.signal,
      })) as AsyncIterable<Buffer>;
      const output = await collect(stream);
      const exitCode = await this.exitCode(exec, what, deadline);
      return { exitCode, output };
    } catch (error) {
      if (controller.signal.aborted) {
        this.remember(container.id, exec.id);
        throw new ExecutorError(
          `${what} did not finish within ${timeoutMs} ms; Docker cannot kill an exec, so it keeps running in the ` +
            'container until it exits or the container stops',
          true,
        );
      }
      if (hasStatus(error, 409)) throw new ExecutorError(`${what}: the container is not running`, false);
      throw error instanceof ExecutorError ? error : toDockerError(error, what, this.engine.address);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Forgets a container's execs (when the container is removed). */
  forget(containerId: string): void {
    this.lingering.delete(containerId);
  }

  private async exitCode(exec: Docker.Exec, what: string, deadline: number): Promise<number> {
    const giveUp = Math.min(deadline, Date.now() + EXIT_POLL_LIMIT_MS);
    for (;;) {
      const info = await call(this.engine, `inspecting ${what}`, (abortSignal) => exec.inspect({ abortSignal }));
      if (!info.Running && info.ExitCode !== null) return info.ExitCode;
      if (Date.now() >= giveUp) throw new ExecutorError(`${what}: its output ended but it has not exited`, true);
      await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
    }
  }

  private remember(containerId: string, execId: string): void {
    let ids = this.lingering.get(containerId);
    if (!ids) {
      ids = new Set();
      this.lingering.set(containerId, ids);
    }
    ids.add(execId);
  }

  private async checkLingering(container: Docker.Container): Promise<void> {
    const ids = this.lingering.get(container.id);
    if (!ids) return;
    for (const id of ids) {
      try {
        const info = await call(this.engine, `inspecting exec ${id}`, (abortSignal) =>
          this.engine.docker.getExec(id).inspect({ abortSignal }),
        );
        if (!info.Running) ids.delete(id);
      } catch (error) {
        if (!hasStatus(error, 404)) throw error;
        ids.delete(id);
      }
    }
    if (ids.size === 0) this.lingering.delete(container.id);
    if (ids.size >= MAX_LINGERING) {
      throw new ExecutorError(
        `container ${container.id}: ${ids.size} earlier execs that timed out are still running in it; ` +
          'not starting another until they finish',
        true,
      );
    }
  }
}

/** Stdout and stderr interleaved as the engine sent them, up to MAX_OUTPUT_BYTES. */
async function collect(stream: AsyncIterable<Buffer>): Promise<string> {
  const frames = new FrameDecoder();
  const kept: Buffer[] = [];
  let size = 0;
  let dropped = false;
  const keep = (payload: Buffer) => {
    const room = MAX_OUTPUT_BYTES - size;
    if (payload.length > room) dropped = true;
    if (room <= 0) return;
    const part = payload.subarray(0, room);
    kept.push(part);
    size += part.length;
  };
  for await (const chunk of stream) {
    for (const frame of frames.push(chunk)) keep(frame.payload);
  }
  for (const frame of frames.end()) keep(frame.payload);
  const output = Buffer.concat(kept).toString('utf8');
  return dropped ? `${output}\n[output truncated at ${MAX_OUTPUT_BYTES} bytes]` : output;
}
