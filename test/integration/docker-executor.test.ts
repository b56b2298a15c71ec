// The docker executor against a real engine (SWARMD_TEST_DOCKER_HOST, as .ci/run sets it), with the test image:
// tasks run unprivileged, exit codes and signals come back, stop honours the grace period, logs keep both streams,
// exec works, a second executor recovers running tasks by their labels, missing images fail fast and clearly.
// The last suite needs no engine: it fakes one that breaks connections, to show failures are ExecutorErrors.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DockerExecutor } from '../../daemon/worker/executors/docker.ts';
import { ExecutorError, type LogLine, type TaskRunSpec } from '../../daemon/worker/executors/types.ts';
import { describeWithDocker, ensureTestImage, probeDocker, TEST_IMAGE } from '../helpers/docker.ts';
import { runSpec } from '../helpers/fixtures.ts';

const probe = await probeDocker();
// A node ID of this run only: recover() and the cleanup see our containers, not another suite's.
const NODE = `node-${randomUUID().slice(0, 8)}`;

function taskSpec(overrides: Partial<TaskRunSpec> = {}): TaskRunSpec {
  return runSpec({
    taskId: `task-${randomUUID().slice(0, 8)}`,
    serviceId: 'svc-dexec',
    serviceName: 'dexec',
    nodeId: NODE,
    image: TEST_IMAGE,
    stopGracePeriodMs: 10_000,
    ...overrides,
  });
}

const sh = (script: string): Pick<TaskRunSpec, 'command' | 'args'> => ({ command: ['sh', '-c', script], args: [] });

async function rejectionOf(promise: Promise<unknown>): Promise<ExecutorError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ExecutorError);
    return error as ExecutorError;
  }
  throw new Error('expected an ExecutorError, but it resolved');
}

async function collect(lines: AsyncIterable<LogLine>, max = Number.POSITIVE_INFINITY): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const line of lines) {
    out.push(line);
    if (out.length >= max) break;
  }
  return out;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

describeWithDocker('docker executor', probe, (docker) => {
  let executor: DockerExecutor;
  const warnings: string[] = [];

  beforeAll(async () => {
    await ensureTestImage(docker(), probe.host);
    executor = new DockerExecutor({
      docker: docker(),
      nodeId: NODE,
      defaultPidsLimit: 256,
      pullTimeoutMs: 1_500,
      warn: (message) => warnings.push(message),
    });
    expect(await executor.available()).toEqual({ ok: true });
  });

  afterAll(async () => {
    if (!probe.ok) return;
    const left = await docker().listContainers({ all: true, filters: { label: [`swarmd.node.id=${NODE}`] } });
    await Promise.all(left.map((c) => docker().getContainer(c.Id).remove({ force: true, v: true })));
  });

  /** prepare + start, and the engine's view of the container. */
  async function run(spec: TaskRunSpec, on = executor) {
    await on.prepare(spec);
    const handle = await on.start(spec);
    const container = docker().getContainer(String(handle.ref.containerId));
    return { handle, container };
  }

  it('runs a task to its exit code, keeps stdout and stderr apart in the logs, and removes it without a trace', async () => {
    const spec = taskSpec({ ...sh('echo to-out; echo to-err >&2; echo "$GREETING"; exit 3'), env: { GREETING: 'hi' } });
    const { handle, container } = await run(spec);
    expect(handle).toMatchObject({ taskId: spec.taskId, runtime: 'docker' });
    expect(handle.ref.name).toBe(`swarmd-dexec.1.${spec.taskId}`);

    expect(await executor.wait(handle)).toEqual({ exitCode: 3 });
    const inspection = await executor.inspect(handle);
    expect(inspection).toMatchObject({ running: false, exitStatus: { exitCode: 3 } });

    const lines = await collect(executor.logs(handle, { follow: false }));
    // In order within a stream; across the two, the engine reads two pipes, so no order is promised.
    const of = (stream: string) => lines.filter((l) => l.stream === stream).map((l) => l.line);
    expect(of('stdout')).toEqual(['to-out', 'hi']);
    expect(of('stderr')).toEqual(['to-err']);
    for (const { time } of lines) expect(Date.parse(time)).toBeGreaterThan(Date.parse('2020-01-01'));
    const tail = await collect(executor.logs(handle, { follow: false, tail: 1 }));
    expect(tail).toHaveLength(1);
    expect(['hi', 'to-err']).toContain(tail[0]?.line);

    await executor.remove(handle);
    await expect(container.inspect()).rejects.toMatchObject({ statusCode: 404 });
    await executor.remove(handle); // Idempotent.
    await expect(executor.inspect(handle)).rejects.toThrow(/no longer exists/);
  });

  it('runs unprivileged: nobody, no capabilities, no-new-privileges, pids and memory limits, no network', async () => {
    const spec = taskSpec({
      ...sh('sleep 30'),
      limits: { memoryBytes: 64 * 1024 * 1024, nanoCpus: 500_000_000 },
      labels: { team: 'hpc', 'swarmd.task.id': 'forged' },
    });
    const { handle, container } = await run(spec);
    const info = await container.inspect();
    expect(info.Config.User).toBe('65534:65534');
    expect(info.HostConfig.CapDrop).toEqual(['ALL']);
    expect(info.HostConfig.CapAdd ?? []).toEqual([]);
    expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges');
    expect(info.HostConfig.Privileged).toBe(false);
    expect(info.HostConfig.PidsLimit).toBe(256);
    expect(info.HostConfig.Memory).toBe(64 * 1024 * 1024);
    expect(info.HostConfig.MemorySwap).toBe(64 * 1024 * 1024);
    expect(info.HostConfig.NanoCpus).toBe(500_000_000);
    expect(info.HostConfig.NetworkMode).toBe('none');
    expect(info.HostConfig.LogConfig).toMatchObject({ Type: 'json-file', Config: { 'max-size': '10m' } });
    expect(info.Config.Labels).toMatchObject({
      team: 'hpc',
      'swarmd.task.id': spec.taskId,
      'swarmd.service.id': 'svc-dexec',
      'swarmd.service.name': 'dexec',
      'swarmd.node.id': NODE,
      'swarmd.slot': '1',
    });

    const inspection = await executor.inspect(handle);
    expect(inspection.running).toBe(true);
    expect(inspection.pid).toBeGreaterThan(0);
    expect(Date.parse(inspection.startedAt ?? '')).toBeGreaterThan(Date.now() - 60_000);
    expect(inspection.exitStatus).toBeUndefined();

    // What the task's processes actually get (exec runs as the container's user too).
    const status = await executor.exec(
      handle,
      ['sh', '-c', 'id -u; grep -E "^(CapEff|NoNewPrivs)" /proc/self/status'],
      5_000,
    );
    expect(status.exitCode).toBe(0);
    expect(status.output).toMatch(/^65534\nCapEff:\s+0+\nNoNewPrivs:\s+1\n$/);
    if (info.HostConfig.Init) {
      // tini (docker-init) is PID 1 and reaps zombies; the task is its child.
      expect((await executor.exec(handle, ['cat', '/proc/1/cmdline'], 5_000)).output).toMatch(/init/);
    }
    await executor.remove(handle);
  });

  it('exec returns output and exit code, and gives up after its timeout', async () => {
    const { handle } = await run(taskSpec(sh('sleep 30')));
    const result = await executor.exec(handle, ['sh', '-c', 'echo out; echo err >&2; exit 4'], 5_000);
    expect(result.exitCode).toBe(4);
    // Both streams, in the order the engine copied them from two pipes: not necessarily the order written.
    expect(result.output.split('\n').sort()).toEqual(['', 'err', 'out']);
    const started = Date.now();
    const error = await rejectionOf(executor.exec(handle, ['sleep', '20'], 300));
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(error.retryable).toBe(true);
    expect(error.message).toMatch(/did not finish within 300 ms.*cannot kill an exec/);
    await executor.remove(handle);
    // A container that is gone: a clear, non-retryable error.
    const gone = await rejectionOf(executor.exec(handle, ['true'], 1_000));
    expect(gone.retryable).toBe(false);
  });

  it('follows logs as they come and stops following when aborted', async () => {
    const { handle } = await run(
      taskSpec(sh('i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); sleep 0.05; done')),
    );
    const first = await collect(executor.logs(handle, { follow: true }), 3);
    expect(first.map((l) => l.line)).toEqual(['line0', 'line1', 'line2']);

    const controller = new AbortController();
    const seen: string[] = [];
    for await (const line of executor.logs(handle, { follow: true, tail: 0, signal: controller.signal })) {
      seen.push(line.line);
      if (seen.length === 2) controller.abort();
    }
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(seen.length).toBeLessThan(10);
    await executor.remove(handle);
  });

  it('stop: a task that exits on SIGTERM exits 0 at once; one that ignores it is killed after the grace period', async () => {
    const polite = await run(taskSpec(sh('trap "exit 0" TERM; while true; do sleep 0.1; done')));
    const stubborn = await run(taskSpec(sh('trap "" TERM; while true; do sleep 0.1; done')));
    await new Promise((resolve) => setTimeout(resolve, 300)); // Let the shells install their traps.

    let started = Date.now();
    await executor.stop(polite.handle, 'SIGTERM', 10_000);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(await executor.wait(polite.handle)).toEqual({ exitCode: 0 });

    started = Date.now();
    await executor.stop(stubborn.handle, 'SIGTERM', 1_000);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(6_000);
    expect(await executor.wait(stubborn.handle)).toEqual({ exitCode: 137, signal: 'SIGKILL' });
    await executor.stop(stubborn.handle, 'SIGTERM', 1_000); // Already down: nothing to do.

    // A signal other than the container's StopSignal is sent as such (not followed by SIGTERM).
    const interrupted = await run(
      taskSpec(sh('trap "exit 5" INT; trap "exit 6" TERM; while true; do sleep 0.1; done')),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    await executor.stop(interrupted.handle, 'INT', 5_000);
    expect(await executor.wait(interrupted.handle)).toEqual({ exitCode: 5 });

    await Promise.all([polite, stubborn, interrupted].map(({ handle }) => executor.remove(handle)));
  });

  it('recover(): a second executor finds the running task by its labels and waits for its exit', async () => {
    const spec = taskSpec(sh('sleep 1.5; exit 7'));
    const { handle } = await run(spec);
    const restarted = new DockerExecutor({ docker: docker(), nodeId: NODE });
    const recovered = await restarted.recover(NODE);
    const mine = recovered.find((task) => task.handle.taskId === spec.taskId);
    expect(mine?.handle).toEqual(handle);
    expect(mine?.inspection.running).toBe(true);
    expect(await restarted.wait(mine!.handle)).toEqual({ exitCode: 7 });
    expect(await restarted.recover(`other-${NODE}`)).toEqual([]);
    await restarted.remove(mine!.handle);
  });

  it('a missing image that cannot be pulled fails fast with an ExecutorError naming it', async () => {
    // A registry that says "no such manifest" (127.0.0.0/8 registries are plain HTTP for dockerd): not retryable.
    const registry = createHttpServer((request, response) => {
      const headers = { 'Content-Type': 'application/json', 'Docker-Distribution-API-Version': 'registry/2.0' };
      if (request.url === '/v2/') {
        response.writeHead(200, headers).end('{}');
        return;
      }
      response
        .writeHead(404, headers)
        .end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] }));
    });
    // One that accepts connections and never answers: the pull timeout (1.5 s here) must end it. Retryable.
    const sockets = new Set<Socket>();
    const silent = createNetServer((socket) => sockets.add(socket));
    // And a port nobody listens on.
    const closed = createNetServer();
    try {
      const [registryPort, silentPort, closedPort] = await Promise.all([
        listen(registry),
        listen(silent),
        listen(closed),
      ]);
      await new Promise((resolve) => closed.close(resolve));

      const notFound = `127.0.0.1:${registryPort}/swarmd-test/missing:1`;
      let error = await rejectionOf(executor.prepare(taskSpec({ image: notFound })));
      expect(error.message).toContain(notFound);
      expect(error.message).toMatch(/not found|manifest unknown/);
      expect(error.retryable).toBe(false);

      const hanging = `127.0.0.1:${silentPort}/swarmd-test/missing:1`;
      const started = Date.now();
      error = await rejectionOf(executor.prepare(taskSpec({ image: hanging })));
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(error.message).toContain(hanging);
      expect(error.message).toMatch(/within 1500 ms/);
      expect(error.retryable).toBe(true);

      const unreachable = `127.0.0.1:${closedPort}/swarmd-test/missing:1`;
      error = await rejectionOf(executor.prepare(taskSpec({ image: unreachable })));
      expect(error.message).toContain(unreachable);
      expect(error.retryable).toBe(true);

      // start() without prepare(): the image is still missing.
      error = await rejectionOf(executor.start(taskSpec({ image: notFound })));
      expect(error.message).toContain(notFound);
    } finally {
      for (const socket of sockets) socket.destroy();
      registry.closeAllConnections();
      await Promise.all([registry, silent].map((server) => new Promise((resolve) => server.close(resolve))));
    }
  });

  it('refuses root unless the node allows it', async () => {
    for (const user of ['root', '0', '0:0', 'root:wheel']) {
      const error = await rejectionOf(executor.prepare(taskSpec({ ...sh('id -u'), user })));
      expect(error.message).toMatch(/^spec\.user: /);
      expect(error.retryable).toBe(false);
    }
    const permissive = new DockerExecutor({ docker: docker(), nodeId: NODE, allowRoot: true });
    const { handle } = await run(taskSpec({ ...sh('id -u'), user: 'root' }), permissive);
    expect(await permissive.wait(handle)).toEqual({ exitCode: 0 });
    expect((await collect(permissive.logs(handle, { follow: false }))).map((l) => l.line)).toEqual(['0']);
    await permissive.remove(handle);
  });

  it('reports oomKilled for a task over its memory limit', async () => {
    // The string doubles until the 16 MiB limit (no swap on top) is hit.
    const spec = taskSpec({
      ...sh('x=0123456789abcdef; while true; do x="$x$x"; done'),
      limits: { memoryBytes: 16 * 1024 * 1024 },
    });
    const { handle } = await run(spec);
    const status = await executor.wait(handle);
    expect(status).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: true });
    await executor.remove(handle);
  });

  it('mounts volumes read-only and tmpfs writable; remove() keeps named volumes', async () => {
    const volume = `swarmd-test-${randomUUID().slice(0, 8)}`;
    await docker().createVolume({ Name: volume });
    try {
      const spec = taskSpec({
        ...sh('grep " /data " /proc/mounts | cut -d" " -f4 | cut -d, -f1; touch /scratch/ok && echo scratch-ok'),
        mounts: [
          { type: 'volume', source: volume, target: '/data', readOnly: true },
          { type: 'tmpfs', target: '/scratch', readOnly: false },
        ],
      });
      const { handle } = await run(spec);
      expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
      expect((await collect(executor.logs(handle, { follow: false }))).map((l) => l.line)).toEqual([
        'ro',
        'scratch-ok',
      ]);
      await executor.remove(handle);
      expect((await docker().getVolume(volume).inspect()).Name).toBe(volume);
    } finally {
      await docker().getVolume(volume).remove();
    }
  });

  it('a task with a host port runs on the host network, and inspect() gives its address', async () => {
    const spec = taskSpec({ ...sh('sleep 30'), hostPort: 31999 });
    const { handle, container } = await run(spec);
    expect((await container.inspect()).HostConfig.NetworkMode).toBe('host');
    expect(await executor.inspect(handle)).toMatchObject({ running: true, address: '127.0.0.1:31999' });
    await executor.remove(handle);
  });

  it('GPUs are requested by ID; where the engine cannot provide them, start() fails and leaves nothing', async () => {
    const spec = taskSpec({
      ...sh('true'),
      devices: [{ kind: 'gpu', ids: ['GPU-00000000-0000-0000-0000-000000000000'] }],
    });
    const error = await rejectionOf(run(spec));
    // This engine has no NVIDIA support (or, on a GPU machine, no such GPU): either way the task can't run here.
    if (/could not select device driver/.test(error.message)) expect(error.retryable).toBe(false);
    const left = await docker().listContainers({ all: true, filters: { label: [`swarmd.task.id=${spec.taskId}`] } });
    expect(left).toEqual([]);
  });

  it('a task whose program does not exist fails, clearly, and leaves no container after remove', async () => {
    const spec = taskSpec({ command: ['/no/such/program'] });
    await executor.prepare(spec);
    const mine = () => docker().listContainers({ all: true, filters: { label: [`swarmd.task.id=${spec.taskId}`] } });
    let handle: Awaited<ReturnType<DockerExecutor['start']>>;
    try {
      handle = await executor.start(spec);
    } catch (error) {
      // Without an init, runc fails to exec the program: start() fails and removes the container it created.
      expect(error).toBeInstanceOf(ExecutorError);
      expect((error as ExecutorError).message).toMatch(/no such file or directory/);
      expect((error as ExecutorError).retryable).toBe(false);
      expect(await mine()).toEqual([]);
      return;
    }
    // With an init (tini) as PID 1 the container starts, and tini reports the failed exec as exit code 127.
    expect(await executor.wait(handle)).toEqual({ exitCode: 127 });
    const lines = await collect(executor.logs(handle, { follow: false }));
    expect(lines.some((l) => l.stream === 'stderr' && l.line.includes('/no/such/program'))).toBe(true);
    await executor.remove(handle);
    expect(await mine()).toEqual([]);
  });
});

describe('docker executor: the engine goes away', () => {
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-dx-'));
  const handle = { taskId: 't1', runtime: 'docker' as const, ref: { containerId: 'abc', name: 'swarmd-x.1.t1' } };
  /**
   * A fake engine that reads a request and drops the connection, as a dockerd that stops mid-call does: at once,
   * or (midBody) after answering "200 OK" with a body that never comes, which is how dockerd answers wait and logs
   * until the container exits or writes. dockerode's own container.wait() never settles in that second case.
   */
  async function fakeEngine(name: string, midBody: boolean): Promise<{ socketPath: string; server: Server }> {
    const socketPath = join(dir, name);
    const server = createNetServer((socket) =>
      socket.once('data', () => {
        if (!midBody) return socket.destroy();
        socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n');
        setTimeout(() => socket.destroy(), 50);
      }),
    );
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    return { socketPath, server };
  }

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const midBody of [false, true]) {
    it(`every call fails with a retryable ExecutorError naming the engine (connection dropped ${midBody ? 'mid-answer' : 'at once'})`, async () => {
      const { socketPath, server } = await fakeEngine(midBody ? 'mid.sock' : 'drop.sock', midBody);
      try {
        const docker = new Docker({ socketPath });
        const executor = new DockerExecutor({ docker, nodeId: 'n1', requestTimeoutMs: 500 });
        const attempts: Record<string, () => Promise<unknown>> = {
          wait: () => executor.wait(handle),
          inspect: () => executor.inspect(handle),
          stop: () => executor.stop(handle, 'SIGTERM', 1_000),
          remove: () => executor.remove(handle),
          exec: () => executor.exec(handle, ['true'], 1_000),
          recover: () => executor.recover('n1'),
          prepare: () => executor.prepare(taskSpec({ nodeId: 'n1' })),
          start: () => executor.start(taskSpec({ nodeId: 'n1' })),
          'logs (follow)': () => collect(executor.logs(handle, { follow: true })),
          logs: () => collect(executor.logs(handle, { follow: false })),
        };
        for (const [name, attempt] of Object.entries(attempts)) {
          const started = Date.now();
          const error = await rejectionOf(attempt());
          expect(error.retryable, name).toBe(true);
          expect(error.message, name).toContain(`unix://${socketPath}`);
          // Short calls are also bounded by requestTimeoutMs; wait() and the streams have no limit and must see the
          // broken connection itself.
          expect(Date.now() - started, name).toBeLessThan(2_000);
        }
        const available = await executor.available();
        expect(available.ok).toBe(false);
        expect(available.reason).toContain(`unix://${socketPath}`);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    });
  }

  it('reports an engine that is not there at all', async () => {
    const missing = join(dir, 'missing.sock');
    const executor = new DockerExecutor({ docker: new Docker({ socketPath: missing }), nodeId: 'n1' });
    expect(await executor.available()).toEqual({
      ok: false,
      reason: expect.stringMatching(/cannot reach the Docker engine at unix:.*missing\.sock \(ENOENT\)/),
    });
    const error = await rejectionOf(executor.start(taskSpec({ nodeId: 'n1' })));
    expect(error.retryable).toBe(true);
  });
});
