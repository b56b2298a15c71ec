// Rolling updates, rollback, health checks and canaries on the Docker runtime: 3 managers and a worker, real
// swarmd processes sharing one real dockerd. Tasks run on the worker only, so a manager can be killed
// mid-update without taking tasks with it.
import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ApiClient } from '../../daemon/api/client.ts';
import type { Service, Task } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import {
  describeWithDocker,
  ensureTestImage,
  probeDocker,
  removeTaskContainers,
  TEST_IMAGE,
} from '../helpers/docker.ts';
import { type NodeProcess, SwarmProcesses, swarm } from '../helpers/swarm-processes.ts';

const probe = await probeDocker();
if (probe.ok) process.env.DOCKER_HOST = probe.host;

const live = (tasks: Task[]) =>
  tasks.filter(
    (t) =>
      t.desiredState !== 'shutdown' &&
      !['complete', 'failed', 'shutdown', 'rejected', 'orphaned'].includes(t.status.state),
  );
const onSpec = (service: Service) => (t: Task) => isDeepStrictEqual(t.template, service.spec.task);

describeWithDocker('rolling updates on the docker runtime', probe, (docker) => {
  const cluster = new SwarmProcesses('updatesDocker');
  const managers: NodeProcess[] = [];
  let api: ApiClient;
  let via: NodeProcess;
  const names: string[] = [];

  /** Creates a service of `replicas` busybox tasks on the worker and waits until all run. */
  async function create(name: string, replicas: number, ...flags: string[]): Promise<void> {
    names.push(name);
    const result = swarm(
      via,
      'service',
      'create',
      '--detach',
      '--runtime',
      'docker',
      '--name',
      name,
      '--replicas',
      String(replicas),
      '--constraint',
      'node.role==worker',
      '--stop-grace-period',
      '2s',
      ...flags,
      TEST_IMAGE,
      'sleep',
      '1000',
    );
    expect(result.status, result.stderr).toBe(0);
    await until(async () => (await running(name)).length === replicas, 90_000, name);
  }

  const tasks = (name: string) => api.listTasks({ service: name });
  const service = (name: string) => api.getService(name);
  const running = async (name: string) =>
    (await tasks(name)).filter((t) => t.status.state === 'running' && t.desiredState === 'running');

  async function until(check: () => Promise<boolean>, timeoutMs: number, name: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check().catch(() => false))) {
      if (Date.now() > deadline) {
        throw new Error(
          `timed out: ${JSON.stringify((await service(name).catch(() => null))?.updateStatus)}\n${swarm(via, 'service', 'ps', name).stdout}`,
        );
      }
      await new Promise((r) => setTimeout(r, 150));
    }
  }

  const state = async (name: string) => (await service(name)).updateStatus?.state;

  beforeAll(async () => {
    await ensureTestImage(docker(), probe.host);
    const m1 = await cluster.init('m1');
    const managerToken = swarm(m1, 'join-token', '-q', 'manager').stdout.trim();
    const workerToken = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
    managers.push(m1, await cluster.join('m2', managerToken, m1), await cluster.join('m3', managerToken, m1));
    await cluster.join('w1', workerToken, m1);
    via = m1;
    api = new ApiClient(m1.socket);
  }, 120_000);

  afterAll(async () => {
    for (const name of names) swarm(via, 'service', 'rm', name);
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.stopAll();
    await removeTaskContainers(docker());
  });

  it('updates 6 replicas two at a time with start-first, never below 6 running, in three waves', async () => {
    await create('waves', 6, '--update-parallelism', '2', '--update-order', 'start-first', '--update-monitor', '500ms');
    const update = swarm(via, 'service', 'update', '--detach', '--args', 'sleep 2000', 'waves');
    expect(update.status, update.stderr).toBe(0);
    const after = await service('waves');
    expect(after.updateStatus?.state).toBe('updating');
    let fewestRunning = Number.POSITIVE_INFINITY;
    let mostStarting = 0;
    const waves: number[] = [];
    await until(
      async () => {
        const all = await tasks('waves');
        const alive = live(all);
        fewestRunning = Math.min(fewestRunning, alive.filter((t) => t.status.state === 'running').length);
        const fresh = alive.filter(onSpec(after));
        mostStarting = Math.max(mostStarting, fresh.filter((t) => t.status.state !== 'running').length);
        const done = fresh.filter((t) => t.status.state === 'running').length;
        if (done !== waves.at(-1)) waves.push(done);
        return (await state('waves')) === 'completed';
      },
      120_000,
      'waves',
    );
    expect(fewestRunning).toBeGreaterThanOrEqual(6);
    expect(mostStarting).toBeLessThanOrEqual(2);
    expect(mostStarting).toBeGreaterThan(0);
    // Replacements become ready in pairs; a poll may see a pair land one task at a time, never three at once.
    for (let i = 1; i < waves.length; i++) expect(waves[i]! - waves[i - 1]!).toBeLessThanOrEqual(2);
    expect(waves.at(-1)).toBe(6);
    const final = await running('waves');
    expect(final).toHaveLength(6);
    expect(final.every((t) => t.template.args.join(' ') === 'sleep 2000')).toBe(true);
    expect(live(await tasks('waves'))).toHaveLength(6);
  }, 180_000);

  it('pauses an update whose new tasks fail; the other replicas keep the old version', async () => {
    await create('pausing', 3);
    // An image that is nowhere: a broken release.
    const update = swarm(
      via,
      'service',
      'update',
      '--image',
      'swarmd-test/missing:1',
      '--update-failure-action',
      'pause',
      'pausing',
    );
    expect(update.status).toBe(1);
    expect(update.stderr).toMatch(
      /pausing: update paused: task \w+ \(slot \d\) (was rejected|failed): .*swarmd-test\/missing:1/,
    );
    const paused = await service('pausing');
    expect(paused.updateStatus?.state).toBe('paused');
    const old = (await running('pausing')).filter((t) => t.template.image === TEST_IMAGE);
    expect(old).toHaveLength(2);
  }, 120_000);

  it('rolls back automatically when the failure action is rollback', async () => {
    await create('reverting', 3, '--update-failure-action', 'rollback');
    const update = swarm(via, 'service', 'update', '--args', 'false', 'reverting');
    expect(update.stderr).toMatch(/rollback/);
    await until(async () => (await state('reverting')) === 'rollback_completed', 90_000, 'reverting');
    const back = await service('reverting');
    expect(back.spec.task.args).toEqual(['sleep', '1000']);
    expect(back.updateStatus?.message).toMatch(
      /^rollback completed \(update rolled back: task \w+ \(slot \d\) failed: task exited with code 1\)/,
    );
    const serving = await running('reverting');
    expect(serving).toHaveLength(3);
    expect(serving.every((t) => t.template.args.join(' ') === 'sleep 1000')).toBe(true);
  }, 120_000);

  it('health: tasks report healthy; an update to a failing check rolls back and the old tasks keep serving', async () => {
    await create('checked', 2, '--health-cmd', 'true', '--health-interval', '300ms', '--health-retries', '2');
    await until(async () => (await running('checked')).every((t) => t.status.health === 'healthy'), 30_000, 'checked');
    expect(swarm(via, 'service', 'ps', 'checked').stdout).toMatch(/Running \(healthy\)/);
    const update = swarm(
      via,
      'service',
      'update',
      '--health-cmd',
      'exit 1',
      '--update-failure-action',
      'rollback',
      '--update-order',
      'start-first',
      'checked',
    );
    expect(update.status).toBe(0); // the rollback completed, which is where the command stops
    expect(update.stderr).toMatch(/is unhealthy|task unhealthy/);
    const back = await service('checked');
    expect(back.updateStatus?.state).toBe('rollback_completed');
    const serving = await running('checked');
    expect(serving).toHaveLength(2);
    expect(serving.every((t) => t.template.healthcheck?.command.join(' ') === '/bin/sh -c true')).toBe(true);
    // The unhealthy task was stopped and reported as failed, saying why.
    const failed = (await tasks('checked')).filter((t) => t.status.state === 'failed');
    expect(failed.some((t) => /task unhealthy: exit 1/.test(t.status.error ?? ''))).toBe(true);
  }, 120_000);

  it('canary: 1 new task beside 4 old ones, promote, then all new; canary then rollback, all old', async () => {
    await create('birds', 4, '--update-canary', '1', '--update-parallelism', '2', '--update-monitor', '500ms');
    const update = swarm(via, 'service', 'update', '--args', 'sleep 2000', 'birds');
    expect(update.status, update.stderr).toBe(0);
    expect(update.stderr).toMatch(/awaiting promotion/);
    let now = await service('birds');
    expect(now.updateStatus?.state).toBe('awaiting_promotion');
    const side = await running('birds');
    expect(side).toHaveLength(5);
    expect(side.filter(onSpec(now))).toHaveLength(1);
    const promoted = swarm(via, 'service', 'promote', 'birds');
    expect(promoted.status, promoted.stderr).toBe(0);
    now = await service('birds');
    expect(now.updateStatus?.state).toBe('completed');
    expect((await running('birds')).filter(onSpec(now))).toHaveLength(4);
    expect(live(await tasks('birds'))).toHaveLength(4);
    // A second canary, dropped by rollback.
    const before = new Set((await running('birds')).map((t) => t.id));
    expect(swarm(via, 'service', 'update', '--args', 'sleep 3000', 'birds').status).toBe(0);
    expect(await state('birds')).toBe('awaiting_promotion');
    const rolled = swarm(via, 'service', 'rollback', 'birds');
    expect(rolled.status, rolled.stderr).toBe(0);
    expect(await state('birds')).toBe('rollback_completed');
    const after = await running('birds');
    expect(after.map((t) => t.id).sort()).toEqual([...before].sort());
    expect(swarm(via, 'service', 'promote', 'birds').stderr).toMatch(/no canaries awaiting promotion/);
  }, 180_000);

  it('a leader killed mid-update: the new leader finishes it, without starting over', async () => {
    await create('handover', 4, '--update-delay', '1500ms', '--update-monitor', '500ms');
    expect(swarm(via, 'service', 'update', '--detach', '--args', 'sleep 2000', 'handover').status).toBe(0);
    const target = await service('handover');
    await until(async () => (await running('handover')).filter(onSpec(target)).length >= 1, 60_000, 'handover');
    const nodes = await api.listNodes();
    const leaderId = nodes.find((n: SwarmNode) => n.managerStatus?.leader)!.id;
    const leader = managers.find((m) => swarm(m, 'info', '--format', 'json').stdout.includes(leaderId))!;
    await cluster.kill9(leader.name);
    via = managers.find((m) => m !== leader)!;
    api = new ApiClient(via.socket);
    await until(async () => (await state('handover')) === 'completed', 120_000, 'handover');
    const all = await tasks('handover');
    // Every slot replaced exactly once: no update started over, none done twice.
    const fresh = all.filter(onSpec(await service('handover')));
    expect(fresh).toHaveLength(4);
    expect(new Set(fresh.map((t) => t.slot)).size).toBe(4);
    expect(live(all)).toHaveLength(4);
  }, 180_000);

  it('refuses bad rollout flags, naming the flag', () => {
    const bad = [
      [['--update-parallelism=-1'], /invalid --update-parallelism "-1": must not be negative/],
      [['--update-max-failure-ratio', '1.5'], /invalid --update-max-failure-ratio "1.5": must be between 0 and 1/],
      [['--update-order', 'random'], /invalid --update-order "random": unknown order "random"/],
      [['--rollback-failure-action', 'rollback'], /invalid --rollback-failure-action "rollback"/],
      [['--health-retries', '2'], /--health-\* settings need a check/],
    ] as const;
    for (const [flags, message] of bad) {
      const result = swarm(via, 'service', 'update', ...flags, 'waves');
      expect(result.status, flags.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
    }
  });
});
