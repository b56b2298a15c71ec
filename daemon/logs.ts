// Service logs: every node serves the logs of the tasks it runs (to managers only); the manager that the
// CLI asks collects them from the nodes over the mesh and merges them into one stream.
import type { ServiceLogLine, ServiceLogOptions } from './api/handlers.ts';
import type { Task } from './api/services.ts';
import type { FramedStream } from './mesh/framed-stream.ts';
import type { MembershipGate } from './mesh/gate.ts';
import type { MeshHost } from './mesh/host.ts';
import { PROTOCOLS } from './mesh/protocols.ts';
import type { LogLine } from './worker/executors/types.ts';
import type { TaskRunner } from './worker/task-runner.ts';

interface LogsRequest {
  taskId: string;
  follow: boolean;
  tail?: number;
}

/** Serves PROTOCOLS.logs: the lines of one local task, until it ends or the reader goes away. */
export async function serveLogs(host: MeshHost, runner: () => TaskRunner): Promise<void> {
  await host.handle(
    PROTOCOLS.logs,
    async (stream) => {
      const request = (await stream.read(AbortSignal.timeout(10_000))) as Partial<LogsRequest> | undefined;
      if (!request || typeof request.taskId !== 'string') return;
      const abort = new AbortController();
      // The reader closing its end (Ctrl-C on `swarm service logs -f`) stops the follow.
      void stream.read().then(
        () => abort.abort(),
        () => abort.abort(),
      );
      const tail = typeof request.tail === 'number' && request.tail >= 0 ? request.tail : undefined;
      const options = {
        follow: request.follow === true,
        signal: abort.signal,
        ...(tail === undefined ? {} : { tail }),
      };
      try {
        for await (const line of runner().logs(request.taskId, options)) await stream.send(line);
      } catch {
        // the reader went away, or the executor failed: either way this stream is done
      }
    },
    { maxFrameBytes: 64 * 1024 },
  );
}

export interface LogSource {
  host: MeshHost;
  gate: MembershipGate;
  selfNodeId: string;
  runner: TaskRunner;
  peerOf: (nodeId: string) => string | undefined;
}

/** The lines of every task of a service, merged as they arrive. */
export async function* collectServiceLogs(
  source: LogSource,
  tasks: Task[],
  options: ServiceLogOptions,
): AsyncIterable<ServiceLogLine> {
  const streams = tasks.filter((t) => t.nodeId !== null).map((task) => taskLines(source, task, options));
  yield* merge(streams, options.signal);
}

async function* taskLines(source: LogSource, task: Task, options: ServiceLogOptions): AsyncIterable<ServiceLogLine> {
  const label = (line: LogLine): ServiceLogLine => ({
    taskId: task.id,
    slot: task.slot,
    nodeId: task.nodeId!,
    stream: line.stream,
    time: line.time,
    line: line.line,
  });
  const wanted = {
    follow: options.follow,
    signal: options.signal,
    ...(options.tail === undefined ? {} : { tail: options.tail }),
  };
  if (task.nodeId === source.selfNodeId) {
    for await (const line of source.runner.logs(task.id, wanted)) yield label(line);
    return;
  }
  const peerId = source.peerOf(task.nodeId!);
  if (!peerId) return;
  let stream: FramedStream;
  try {
    await source.gate.ensureHello(peerId);
    ({ stream } = await source.host.openStream(peerId, PROTOCOLS.logs, { signal: AbortSignal.timeout(10_000) }));
  } catch {
    return; // the node is unreachable: its lines are missing, the others still come
  }
  const onAbort = () => stream.abort(new Error('reader went away'));
  options.signal.addEventListener('abort', onAbort, { once: true });
  try {
    await stream.send({
      taskId: task.id,
      follow: options.follow,
      ...(options.tail === undefined ? {} : { tail: options.tail }),
    });
    for await (const frame of stream) {
      const line = frame as Partial<LogLine>;
      if (typeof line.line !== 'string') continue;
      yield label({
        stream: line.stream === 'stderr' ? 'stderr' : 'stdout',
        time: String(line.time ?? ''),
        line: line.line,
      });
    }
  } catch {
    // stream broken: end this task's lines
  } finally {
    options.signal.removeEventListener('abort', onAbort);
  }
}

/** Interleaves several async streams, yielding each item as soon as it arrives. */
async function* merge<T>(sources: AsyncIterable<T>[], signal: AbortSignal): AsyncIterable<T> {
  const iterators = sources.map((s) => s[Symbol.asyncIterator]());
  const next = (i: number) => iterators[i]!.next().then((result) => ({ i, result }));
  const pending = new Map(iterators.map((_, i) => [i, next(i)]));
  while (pending.size > 0 && !signal.aborted) {
    const { i, result } = await Promise.race(pending.values());
    if (result.done) {
      pending.delete(i);
      continue;
    }
    pending.set(i, next(i));
    yield result.value;
  }
}
