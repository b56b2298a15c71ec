// Services end to end on a 3-node swarm of real processes (1 manager, 2 workers), with the process
// runtime: tasks are placed, scaled, restarted per policy, moved off a dead node, re-attached after a
// swarmd restart (never duplicated), and removed.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Task } from '../../daemon/api/services.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const cluster = new SwarmProcesses('services');
let m1: NodeProcess;
const MARK = `swarmd-it-${process.pid}`;

function tasks(service: string): Task[] {
  return swarmJson<Task[]>(m1, 'service', 'ps', service);
}

function running(service: string): Task[] {
  return tasks(service).filter((t) => t.status.state === 'running' && t.desiredState === 'running');
}

/** Processes on this machine whose command line carries the test's mark and the given tag. */
function programs(tag: string): number[] {
  try {
    return execFileSync('pgrep', ['-f', `${MARK}-${tag}`], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .filter(Boolean)
      .map(Number)
      .filter((pid) => {
        // pgrep also matches the supervisor shell: count only the program itself (sleep).
        const comm = execFileSync('cat', [`/proc/${pid}/comm`], { encoding: 'utf8' }).trim();
        return comm === 'sleep';
      });
  } catch {
    return [];
  }
}

/** A process-runtime service running `sleep 1000` as `<MARK>-<name>` (see programs()), after an optional script. */
function createService(name: string, flags: string[], script = ''): void {
  const result = swarm(
    m1,
    'service',
    'create',
    '--detach',
    '--runtime',
    'process',
    '--name',
    name,
    ...flags,
    '--',
    '/bin/bash',
    '-c',
    `${script}exec -a ${MARK}-${name} sleep 1000`,
  );
  expect(result.status, result.stderr).toBe(0);
}

beforeAll(async () => {
  m1 = await cluster.init('m1');
  const token = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
  await cluster.join('w1', token, m1);
  await cluster.join('w2', token, m1);
}, 120_000);

afterAll(async () => {
  for (const name of ['sleeper', 'mover']) swarm(m1, 'service', 'rm', name);
  await new Promise((r) => setTimeout(r, 2000));
  await cluster.stopAll();
  for (const pid of programs('')) process.kill(pid, 'SIGKILL');
});

describe('services on the process runtime', () => {
  it('places 3 replicas on 3 nodes, scales up and down', async () => {
    createService('sleeper', ['--replicas', '3', '--restart-delay', '0s']);
    await waitFor(
      () => running('sleeper').length === 3,
      60_000,
      () => swarm(m1, 'service', 'ps', 'sleeper').stdout,
    );
    expect(new Set(running('sleeper').map((t) => t.nodeId)).size).toBe(3);
    expect(programs('sleeper')).toHaveLength(3);

    expect(swarm(m1, 'service', 'scale', '--detach', 'sleeper=5').status).toBe(0);
    await waitFor(() => running('sleeper').length === 5, 60_000);
    expect(swarm(m1, 'service', 'scale', '--detach', 'sleeper=2').status).toBe(0);
    await waitFor(
      () => running('sleeper').length === 2 && programs('sleeper').length === 2,
      60_000,
      () => swarm(m1, 'service', 'ps', 'sleeper').stdout,
    );
    expect(tasks('sleeper').filter((t) => t.status.state === 'shutdown')).toHaveLength(3);
  }, 180_000);

  it('replaces a task whose program was killed, per the restart policy', async () => {
    const [victim] = programs('sleeper');
    process.kill(victim!, 'SIGKILL');
    await waitFor(() => tasks('sleeper').some((t) => t.status.state === 'failed' && t.status.exitCode === 137), 30_000);
    // The managers keep when it began running (the updater's monitor window counts from there) past its end.
    const failed = tasks('sleeper').find((t) => t.status.state === 'failed' && t.status.exitCode === 137)!;
    expect(Date.parse(failed.status.startedAt!)).toBeLessThan(Date.parse(failed.status.since));
    await waitFor(() => running('sleeper').length === 2 && programs('sleeper').length === 2, 30_000);
  }, 60_000);

  it('re-attaches to running tasks after swarmd restarts on a worker: no duplicates', async () => {
    const w1 = cluster.nodes.get('w1')!;
    const w1Id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
    const before = running('sleeper')
      .filter((t) => t.nodeId === w1Id)
      .map((t) => t.id);
    const pidsBefore = programs('sleeper').sort();
    await cluster.kill9('w1');
    await cluster.run('w1');
    await new Promise((r) => setTimeout(r, 3000));
    expect(
      running('sleeper')
        .filter((t) => t.nodeId === w1Id)
        .map((t) => t.id),
    ).toEqual(before);
    expect(programs('sleeper').sort()).toEqual(pidsBefore);
  }, 90_000);

  it('service logs gathers the lines of every task, from every node', async () => {
    createService('talker', ['--replicas', '3'], 'echo hello-from-$HOSTNAME-slot; echo oops >&2; ');
    await waitFor(() => running('talker').length === 3, 60_000);
    await new Promise((r) => setTimeout(r, 1500)); // let the log watchers see the lines
    const logs = swarm(m1, 'service', 'logs', 'talker');
    expect(logs.status, logs.stderr).toBe(0);
    expect(logs.stdout.match(/hello-from-/g)).toHaveLength(3);
    expect(logs.stdout.match(/oops/g) ?? logs.stderr.match(/oops/g)).toHaveLength(3);
    expect(swarm(m1, 'service', 'rm', 'talker').status).toBe(0);
  }, 90_000);

  it('the leader pushes assignments: a node with a 30 s heartbeat period starts its task at once', async () => {
    const w1 = cluster.nodes.get('w1')!;
    const w1Id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
    expect(swarm(m1, 'node', 'update', '--heartbeat-period', '30', w1Id).status).toBe(0);
    await new Promise((r) => setTimeout(r, 1500)); // w1 takes the new period at its next heartbeat
    const started = Date.now();
    createService('pushed', ['--constraint', `node.id==${w1Id}`]);
    await waitFor(
      () => running('pushed').length === 1,
      10_000,
      () => swarm(m1, 'service', 'ps', 'pushed').stdout,
    );
    expect(Date.now() - started).toBeLessThan(10_000); // far less than the 30 s period
    expect(swarm(m1, 'service', 'rm', 'pushed').status).toBe(0);
    expect(swarm(m1, 'node', 'update', '--heartbeat-period', 'default', w1Id).status).toBe(0);
  }, 60_000);

  it('rm stops every task of the service', async () => {
    expect(swarm(m1, 'service', 'rm', 'sleeper').status).toBe(0);
    await waitFor(() => programs('sleeper').length === 0, 30_000);
    expect(
      swarmJson<unknown[]>(m1, 'service', 'ls').some((s) => (s as { spec: { name: string } }).spec.name === 'sleeper'),
    ).toBe(false);
  }, 60_000);

  it('moves the tasks of a dead worker to the other nodes', async () => {
    createService('mover', ['--replicas', '3']);
    await waitFor(() => running('mover').length === 3, 60_000);
    const w2 = cluster.nodes.get('w2')!;
    const w2Id = swarmJson<{ nodeId: string }>(w2, 'info').nodeId;
    await cluster.kill9('w2');
    await waitFor(
      () => running('mover').length === 3 && running('mover').every((t) => t.nodeId !== w2Id),
      60_000,
      () => swarm(m1, 'service', 'ps', 'mover').stdout,
    );
  }, 120_000);
});
