// GPUs end to end on a one-node swarm of real processes. No GPU here, so `nvidia-smi` is a stand-in script on
// swarmd's PATH that prints the recorded output of an H100 node (test/fixtures/nvidia-smi/h100.csv) for the
// exact query swarmd makes, and fails for any other. Everything after it is real: the node advertises the GPU
// by UUID, the scheduler allocates it to one task, the process runtime hands the task exactly that GPU
// (CUDA_VISIBLE_DEVICES) and a task without --gpus none, a second service waits pending with the reason, and
// runs once the GPU is free.
// test/gpu/run-on-gpu.sh does the same on a machine with a real GPU.
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Task } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import { NVIDIA_SMI_ARGS } from '../../daemon/worker/accelerators/nvidia.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmdCli, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const RECORDED = readFileSync(resolve(import.meta.dirname, '../fixtures/nvidia-smi/h100.csv'), 'utf8');
const UUID = RECORDED.split(',')[0]!.trim();

describe('GPUs (stand-in nvidia-smi with recorded H100 output)', () => {
  const bin = mkdtempSync(join(tmpdir(), 'swarmd-fake-gpu-'));
  const out = mkdtempSync(join(tmpdir(), 'swarmd-gpu-out-'));
  chmodSync(out, 0o777); // tasks run as nobody and write here
  const cluster = new SwarmProcesses('gpus');
  const savedPath = process.env.PATH;
  let m1: NodeProcess;

  const tasks = (service: string) => swarmJson<Task[]>(m1, 'service', 'ps', service);

  beforeAll(async () => {
    const expected = NVIDIA_SMI_ARGS.join(' ');
    writeFileSync(
      join(bin, 'nvidia-smi'),
      `#!/bin/sh\n[ "$*" = "${expected}" ] || { echo "stand-in nvidia-smi: unexpected arguments: $*" >&2; exit 2; }\ncat <<'EOF'\n${RECORDED.trim()}\nEOF\n`,
    );
    chmodSync(join(bin, 'nvidia-smi'), 0o755);
    process.env.PATH = `${bin}:${savedPath}`;
    // Port 0: the kernel picks the mesh port, and the join instructions must name the one it picked.
    m1 = await cluster.init('m1', ['--listen-addr', '127.0.0.1:0']);
  }, 60_000);

  afterAll(async () => {
    process.env.PATH = savedPath;
    await cluster.stopAll();
  });

  it('with --listen-addr 127.0.0.1:0, the join instructions name the port the mesh listens on', async () => {
    const port = Number(/swarmd join --token \S+ 127\.0\.0\.1:(\d+)\n/.exec(m1.output())?.[1]);
    expect(port).toBeGreaterThan(0);
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.destroy();
  });

  it('the node advertises the GPU by UUID, with its model and memory', async () => {
    await waitFor(
      () => swarmJson<SwarmNode[]>(m1, 'node', 'ls')[0]!.description.resources.gpus?.length === 1,
      20_000,
      () => m1.output(),
    );
    const [node] = swarmJson<SwarmNode[]>(m1, 'node', 'ls');
    expect(node!.description.resources.gpus).toEqual([
      { id: UUID, model: 'NVIDIA H100 80GB HBM3', memoryBytes: 81559 * 1024 * 1024 },
    ]);
  });

  it('a --gpus 1 task gets exactly that GPU; a second waits pending with the reason, then runs', async () => {
    const script = (name: string) =>
      `echo "$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES" > ${out}/${name}; exec sleep 1000`;
    const first = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'train',
      '--gpus',
      '1',
      '--',
      '/bin/sh',
      '-c',
      script('train'),
    );
    expect(first.status, first.stderr).toBe(0);
    await waitFor(
      () => tasks('train').some((t) => t.status.state === 'running'),
      30_000,
      () => swarm(m1, 'service', 'ps', 'train').stdout,
    );
    const [task] = tasks('train').filter((t) => t.status.state === 'running');
    expect(task!.devices).toEqual([{ kind: 'gpu', ids: [UUID] }]);
    await waitFor(() => readFileSync(join(out, 'train'), 'utf8').trim() !== '', 10_000);
    expect(readFileSync(join(out, 'train'), 'utf8').trim()).toBe(`${UUID}|${UUID}`);
    expect(swarm(m1, 'service', 'ps', 'train').stdout).toContain(`gpu:${UUID}`);

    // A task without --gpus is told there is no GPU for it, so CUDA does not pick the one train holds.
    const cpu = swarm(m1, 'service', 'create', '--detach', '--name', 'cpu', '--', '/bin/sh', '-c', script('cpu'));
    expect(cpu.status, cpu.stderr).toBe(0);
    await waitFor(() => existsSync(join(out, 'cpu')) && readFileSync(join(out, 'cpu'), 'utf8').trim() !== '', 30_000);
    expect(readFileSync(join(out, 'cpu'), 'utf8').trim()).toBe('|void');
    swarm(m1, 'service', 'rm', 'cpu');

    const second = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'eval',
      '--gpus',
      '1',
      '--',
      '/bin/sh',
      '-c',
      script('eval'),
    );
    expect(second.status, second.stderr).toBe(0);
    await waitFor(() => tasks('eval').some((t) => t.status.pendingReason !== undefined), 20_000);
    const [waiting] = tasks('eval');
    expect(waiting!.status.state).toBe('pending');
    expect(waiting!.status.pendingReason).toMatch(/insufficient GPUs/i);

    expect(swarm(m1, 'service', 'rm', 'train').status).toBe(0);
    await waitFor(
      () => tasks('eval').some((t) => t.status.state === 'running'),
      30_000,
      () => swarm(m1, 'service', 'ps', 'eval').stdout,
    );
    expect(tasks('eval').find((t) => t.status.state === 'running')!.devices).toEqual([{ kind: 'gpu', ids: [UUID] }]);
    swarm(m1, 'service', 'rm', 'eval');
  }, 90_000);

  it('--gpus more than any node has stays pending with the reason; the CLI says so', () => {
    const result = swarm(m1, 'service', 'create', '--name', 'greedy', '--gpus', '2', '--', '/bin/sleep', '1000');
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/stuck pending: no suitable node \(insufficient GPUs/i);
    swarm(m1, 'service', 'rm', 'greedy');
  }, 60_000);

  it('a malformed --node-resource is refused at start, naming it', () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'swarmd-bad-resource-'));
    const result = swarmdCli('init', '--data-dir', dataDir, '--listen-addr', '127.0.0.1:0', '--node-resource', 'fpga');
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/--node-resource "fpga": want KIND=COUNT or KIND=ID/);
  });
});
