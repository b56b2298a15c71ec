// The docker executor's pure parts, without an engine: the container a spec becomes (the security policy), the
// multiplexed-stream and log-line decoding, signals and exit statuses, and how engine failures are classified.
// test/integration/docker-executor.test.ts runs the same executor against a real dockerd.
import { describe, expect, it } from 'vitest';
import { type ContainerPolicy, capabilityAdds, containerConfig } from '../../daemon/worker/executors/docker/config.ts';
import { toDockerError } from '../../daemon/worker/executors/docker/engine.ts';
import { exitStatusOf } from '../../daemon/worker/executors/docker/state.ts';
import { FrameDecoder, LogLineSplitter } from '../../daemon/worker/executors/docker/streams.ts';
import { normalizeSignal } from '../../daemon/worker/executors/signals.ts';
import { ExecutorError, type TaskRunSpec } from '../../daemon/worker/executors/types.ts';
import { runSpec } from '../helpers/fixtures.ts';

const policy: ContainerPolicy = {
  capAddAllowlist: ['NET_BIND_SERVICE'],
  allowRoot: false,
  defaultPidsLimit: 512,
  init: true,
  logMaxSize: '10m',
  logMaxFiles: 3,
};

function spec(overrides: Partial<TaskRunSpec> = {}): TaskRunSpec {
  return runSpec({
    serviceId: 's1',
    serviceName: 'web',
    slot: '2',
    nodeId: 'n1',
    image: 'nginx:1',
    stopSignal: 'TERM',
    stopGracePeriodMs: 2500,
    ...overrides,
  });
}

function fieldError(run: () => unknown): ExecutorError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(ExecutorError);
    expect((error as ExecutorError).retryable).toBe(false);
    return error as ExecutorError;
  }
  throw new Error('expected an ExecutorError');
}

describe('docker executor: container config', () => {
  it('is unprivileged by default', () => {
    const config = containerConfig(spec({ labels: { a: 'b', 'swarmd.node.id': 'forged' } }), policy);
    expect(config).toMatchObject({
      name: 'swarmd-web.2.t1',
      Image: 'nginx:1',
      User: '65534:65534',
      StopSignal: 'SIGTERM',
      StopTimeout: 3,
      Labels: {
        a: 'b',
        'swarmd.task.id': 't1',
        'swarmd.service.id': 's1',
        'swarmd.service.name': 'web',
        'swarmd.node.id': 'n1',
        'swarmd.slot': '2',
      },
      HostConfig: {
        CapDrop: ['ALL'],
        CapAdd: [],
        SecurityOpt: ['no-new-privileges'],
        Privileged: false,
        ReadonlyRootfs: false,
        Init: true,
        PidsLimit: 512,
        Devices: [],
        DeviceRequests: [],
        NetworkMode: 'none',
        RestartPolicy: { Name: 'no' },
        LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '3' } },
      },
    });
    // The image's entrypoint and command stay when the spec sets neither.
    expect(config.Entrypoint).toBeUndefined();
    expect(config.Cmd).toBeUndefined();
  });

  it('maps command to the entrypoint, args to Cmd, limits, mounts, host network', () => {
    const config = containerConfig(
      spec({
        command: ['/bin/server'],
        args: ['--port', '8080'],
        env: { A: '1' },
        workdir: '/srv',
        user: '1000:1000',
        limits: { nanoCpus: 1_500_000_000, memoryBytes: 256 * 1024 * 1024, pids: 64 },
        mounts: [
          { type: 'bind', source: '/data', target: '/data', readOnly: true },
          { type: 'volume', source: 'cache', target: '/cache', readOnly: false },
          { type: 'tmpfs', target: '/tmp', readOnly: false },
        ],
        hostPort: 31000,
      }),
      policy,
    );
    expect(config).toMatchObject({
      Entrypoint: ['/bin/server'],
      Cmd: ['--port', '8080'],
      Env: ['A=1'],
      WorkingDir: '/srv',
      User: '1000:1000',
      Labels: { 'swarmd.host-port': '31000' },
      HostConfig: {
        NanoCpus: 1_500_000_000,
        Memory: 256 * 1024 * 1024,
        MemorySwap: 256 * 1024 * 1024,
        PidsLimit: 64,
        NetworkMode: 'host',
        Mounts: [
          { Type: 'bind', Source: '/data', Target: '/data', ReadOnly: true },
          { Type: 'volume', Source: 'cache', Target: '/cache', ReadOnly: false },
          { Type: 'tmpfs', Source: '', Target: '/tmp', ReadOnly: false },
        ],
      },
    });
    expect(containerConfig(spec({ args: ['x'] }), policy)).toMatchObject({ Cmd: ['x'] });
    expect(containerConfig(spec({ args: ['x'] }), policy).Entrypoint).toBeUndefined();
  });

  it('exposes allocated GPUs by explicit ID, never by count, and refuses devices it cannot expose', () => {
    const config = containerConfig(spec({ devices: [{ kind: 'gpu', ids: ['GPU-aaaa', 'GPU-bbbb'] }] }), policy);
    expect(config.HostConfig?.DeviceRequests).toEqual([
      { Driver: 'nvidia', DeviceIDs: ['GPU-aaaa', 'GPU-bbbb'], Capabilities: [['gpu']] },
    ]);
    expect(config.HostConfig?.DeviceRequests?.[0]).not.toHaveProperty('Count');
    const error = fieldError(() => containerConfig(spec({ devices: [{ kind: 'fpga', ids: ['x'] }] }), policy));
    expect(error.message).toMatch(/^devices\[0\]\.kind: /);
  });

  it('refuses root unless allowed, and names the field of every bad value', () => {
    for (const user of ['root', '0', '00', '0:0', 'root:root', ' root ']) {
      expect(fieldError(() => containerConfig(spec({ user }), policy)).message).toMatch(/^spec\.user: /);
    }
    expect(containerConfig(spec({ user: 'root' }), { ...policy, allowRoot: true }).User).toBe('root');
    expect(containerConfig(spec({ user: '65534:0' }), policy).User).toBe('65534:0');
    expect(containerConfig(spec({ user: '' }), policy).User).toBe('65534:65534');

    const bad: [Partial<TaskRunSpec>, RegExp][] = [
      [{ limits: { memoryBytes: 1024 } }, /^limits\.memoryBytes: /],
      [{ limits: { nanoCpus: 0 } }, /^limits\.nanoCpus: /],
      [{ limits: { pids: -1 } }, /^limits\.pids: /],
      [{ env: { 'A=B': '1' } }, /^env\.A=B: /],
      [{ stopSignal: 'SIGNOPE' }, /^stopSignal: /],
      [{ workdir: 'relative' }, /^workdir: /],
      [{ mounts: [{ type: 'bind', source: 'rel', target: '/x', readOnly: false }] }, /^mounts\[0\]\.source: /],
      [{ mounts: [{ type: 'tmpfs', source: '/x', target: '/x', readOnly: false }] }, /^mounts\[0\]\.source: /],
      [{ mounts: [{ type: 'volume', source: 'v', target: 'x', readOnly: false }] }, /^mounts\[0\]\.target: /],
    ];
    for (const [overrides, message] of bad) {
      expect(fieldError(() => containerConfig(spec(overrides), policy)).message).toMatch(message);
    }
  });

  it('adds back only capabilities on the allowlist', () => {
    expect(capabilityAdds(['net_bind_service', 'CAP_NET_BIND_SERVICE'], ['NET_BIND_SERVICE'])).toEqual([
      'NET_BIND_SERVICE',
    ]);
    expect(fieldError(() => capabilityAdds(['SYS_ADMIN'], ['NET_BIND_SERVICE'])).message).toMatch(/SYS_ADMIN/);
    expect(capabilityAdds([], [])).toEqual([]);
  });
});

describe('docker executor: streams', () => {
  const frame = (type: number, text: string) => {
    const payload = Buffer.from(text);
    const header = Buffer.alloc(8);
    header[0] = type;
    header.writeUInt32BE(payload.length, 4);
    return Buffer.concat([header, payload]);
  };

  it('decodes frames in order, across chunk boundaries', () => {
    const bytes = Buffer.concat([frame(1, 'out\n'), frame(2, 'err\n'), frame(1, 'more\n')]);
    const decoder = new FrameDecoder();
    const frames = [];
    for (let i = 0; i < bytes.length; i += 3) frames.push(...decoder.push(bytes.subarray(i, i + 3)));
    frames.push(...decoder.end());
    expect(frames.map((f) => [f.stream, f.payload.toString()])).toEqual([
      ['stdout', 'out\n'],
      ['stderr', 'err\n'],
      ['stdout', 'more\n'],
    ]);
  });

  it('passes a stream that is not multiplexed through as stdout', () => {
    const decoder = new FrameDecoder();
    const frames = [...decoder.push(Buffer.from('plain text output\n')), ...decoder.push(Buffer.from('more'))];
    expect(frames.map((f) => [f.stream, f.payload.toString()])).toEqual([
      ['stdout', 'plain text output\n'],
      ['stdout', 'more'],
    ]);
  });

  it('splits timestamped log frames into lines, joining partial ones per stream', () => {
    const splitter = new LogLineSplitter();
    const euro = Buffer.from('€'); // 3 bytes, cut in two across frames below
    const lines = [
      ...splitter.push({ stream: 'stdout', payload: Buffer.from('2026-01-01T00:00:00.000000001Z hello\n') }),
      ...splitter.push({
        stream: 'stdout',
        payload: Buffer.concat([Buffer.from('2026-01-01T00:00:01.5Z long '), euro.subarray(0, 1)]),
      }),
      ...splitter.push({ stream: 'stderr', payload: Buffer.from('2026-01-01T00:00:02Z oops\n') }),
      ...splitter.push({
        stream: 'stdout',
        payload: Buffer.concat([Buffer.from('2026-01-01T00:00:03Z '), euro.subarray(1), Buffer.from(' line\n')]),
      }),
      ...splitter.push({ stream: 'stdout', payload: Buffer.from('2026-01-01T00:00:04Z no newline at the end') }),
      ...splitter.end(),
    ];
    expect(lines).toEqual([
      { stream: 'stdout', time: '2026-01-01T00:00:00.000000001Z', line: 'hello' },
      { stream: 'stderr', time: '2026-01-01T00:00:02Z', line: 'oops' },
      { stream: 'stdout', time: '2026-01-01T00:00:01.5Z', line: 'long € line' },
      { stream: 'stdout', time: '2026-01-01T00:00:04Z', line: 'no newline at the end' },
    ]);
  });
});

describe('docker executor: signals, exit statuses, errors', () => {
  it('normalizes signal names and numbers', () => {
    expect(normalizeSignal('TERM', 'f')).toBe('SIGTERM');
    expect(normalizeSignal('sigint', 'f')).toBe('SIGINT');
    expect(normalizeSignal('9', 'f')).toBe('SIGKILL');
    expect(() => normalizeSignal('NOPE', 'stopSignal')).toThrow(/^stopSignal: unknown signal/);
  });

  it('reads signals from exit codes above 128, and OOM and runtime errors from the state', () => {
    expect(exitStatusOf(0, undefined)).toEqual({ exitCode: 0 });
    expect(exitStatusOf(143, undefined)).toEqual({ exitCode: 143, signal: 'SIGTERM' });
    const state = { OOMKilled: true, Error: '' } as Parameters<typeof exitStatusOf>[1];
    expect(exitStatusOf(137, state)).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: true });
    expect(exitStatusOf(255, undefined)).toEqual({ exitCode: 255 });
  });

  it('classifies engine failures: answers by status, lost connections and timeouts as retryable', () => {
    const answer = (statusCode: number, message: string) =>
      Object.assign(new Error(`(HTTP code ${statusCode}) unexpected - ${message} `), { statusCode, json: { message } });
    const notFound = toDockerError(answer(404, 'No such container: abc'), 'inspecting abc', 'unix:///d.sock');
    expect(notFound).toMatchObject({
      status: 404,
      retryable: false,
      message: 'inspecting abc: No such container: abc',
    });
    expect(toDockerError(answer(500, 'boom'), 'x', 'e').retryable).toBe(true);
    const refused = Object.assign(new Error('connect ECONNREFUSED /d.sock'), { code: 'ECONNREFUSED' });
    const lost = toDockerError(refused, 'waiting', 'unix:///d.sock');
    expect(lost.retryable).toBe(true);
    expect(lost.message).toMatch(/^waiting: cannot reach the Docker engine at unix:\/\/\/d\.sock \(ECONNREFUSED\)/);
    const hangUp = toDockerError(new Error('socket hang up'), 'waiting', 'e');
    expect(hangUp.message).toMatch(/lost the connection to the Docker engine at e \(socket hang up\)/);
    const slow = toDockerError(new Error('aborted'), 'inspecting', 'e', 30_000);
    expect(slow).toMatchObject({ retryable: true, timedOut: true });
    expect(slow.message).toMatch(/within 30000 ms/);
    const denied = Object.assign(new Error('connect EACCES /d.sock'), { code: 'EACCES' });
    expect(toDockerError(denied, 'x', 'e')).toMatchObject({ retryable: false });
  });
});
