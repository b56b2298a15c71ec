// Disaster recovery on a swarm of real processes: 3 managers lose 2 of them for good, so Raft has no quorum and
// nothing can change. `swarmd run --force-new-cluster` on the survivor brings it back as the only manager with the
// state it had (services, nodes); the lost managers are listed as workers, changes commit again, the lost managers
// coming back together (a quorum of the old membership, electing a leader of their own while the forced manager is
// down) are made workers once it is back, and its normal restart afterwards keeps the one-manager membership (it is in the
// Raft log, on disk).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Service } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import { SwarmProcesses, swarm, swarmdCli, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const cluster = new SwarmProcesses('forceNewCluster');

afterAll(async () => {
  const m1 = cluster.nodes.get('m1');
  if (m1) swarm(m1, 'service', 'rm', 'kept', 'after');
  await new Promise((r) => setTimeout(r, 1000));
  await cluster.stopAll();
});

describe('force-new-cluster', () => {
  it('brings a swarm that lost its quorum back on its last manager, with its state', async () => {
    let m1 = await cluster.init('m1');
    const managerToken = swarm(m1, 'join-token', '-q', 'manager').stdout.trim();
    await cluster.join('m2', managerToken, m1);
    await cluster.join('m3', managerToken, m1);
    const nodes = () => swarmJson<SwarmNode[]>(m1, 'node', 'ls');
    await waitFor(
      () => nodes().filter((n) => n.managerStatus?.raftRole === 'voter').length === 3,
      60_000,
      () => swarm(m1, 'node', 'ls').stdout,
    );
    const m1Id = swarmJson<{ nodeId: string }>(m1, 'info').nodeId;
    // Kept on m1, so that no task is left behind on the managers about to die.
    const created = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'kept',
      '--constraint',
      `node.id==${m1Id}`,
      '--',
      'sleep',
      '600',
    );
    expect(created.status, created.stderr).toBe(0);
    // m1 has applied it (it answers from its own store once it runs the task).
    await waitFor(
      () => swarm(m1, 'service', 'ps', 'kept').stdout.includes('Running'),
      60_000,
      () => swarm(m1, 'service', 'ps', 'kept').stdout,
    );

    await cluster.kill9('m2');
    await cluster.kill9('m3');
    await cluster.stop('m1');
    // Said plainly where the flag does not apply.
    const misuse = swarmdCli('init', '--force-new-cluster');
    expect(misuse.status).not.toBe(0);
    expect(misuse.stderr).toMatch(/--force-new-cluster applies to swarmd run/);

    m1 = await cluster.run('m1', ['--force-new-cluster']);
    await waitFor(
      () => m1.output().includes('force-new-cluster: starting as the only manager of the swarm'),
      10_000,
      () => m1.output(),
    );
    await waitFor(
      () => {
        const list = nodes();
        const self = list.find((n) => n.id === m1Id);
        return (
          self?.managerStatus?.leader === true &&
          list.filter((n) => n.role === 'manager').length === 1 &&
          list.filter((n) => n.role === 'worker').length === 2
        );
      },
      60_000,
      () => swarm(m1, 'node', 'ls').stdout,
    );
    expect(swarmJson<Service[]>(m1, 'service', 'ls').map((s) => s.spec.name)).toEqual(['kept']);
    const after = swarm(m1, 'service', 'create', '--detach', '--name', 'after', '--replicas', '0', '--', 'sleep', '1');
    expect(after.status, after.stderr).toBe(0);

    // The lost managers come back together, with their old data, while the forced manager is down for a while: the
    // two are a quorum of the old membership and elect a leader of their own, a split brain. Once the forced manager
    // is back, it tells each that it was left out of a newer cluster; each asks it for its role, is told it is a
    // worker, and drops its Raft state.
    await cluster.stop('m1');
    const [m2, m3] = await Promise.all([cluster.run('m2'), cluster.run('m3')]);
    const backIds = [m2, m3].map((node) => swarmJson<{ nodeId: string }>(node, 'info').nodeId);
    const oldLeader = () =>
      [m2, m3].some((node) => {
        const list = swarm(node, 'node', 'ls', '--format', 'json');
        return list.status === 0 && (JSON.parse(list.stdout) as SwarmNode[]).some((n) => n.managerStatus?.leader);
      });
    await waitFor(oldLeader, 60_000, () => `${m2.output().slice(-2000)}\n${m3.output().slice(-2000)}`);
    m1 = await cluster.run('m1');
    await waitFor(
      () =>
        [m2, m3].every((node, i) => {
          const back = nodes().find((n) => n.id === backIds[i]);
          return back?.role === 'worker' && back.status.state === 'ready' && !existsSync(join(node.dataDir, 'raft'));
        }),
      60_000,
      () =>
        `${swarm(m1, 'node', 'ls').stdout}\n--- m2\n${m2.output().slice(-3000)}\n--- m3\n${m3.output().slice(-3000)}`,
    );
    expect(
      nodes()
        .filter((n) => n.role === 'manager')
        .map((n) => n.id),
    ).toEqual([m1Id]);
    // Neither leads anything any more: their own API refuses manager commands.
    for (const node of [m2, m3]) expect(swarm(node, 'service', 'ls').status).not.toBe(0);
    // Each knows it is a worker now (node.json says so), and the flag is refused there: a worker holds no cluster
    // state.
    const savedRole = () => (JSON.parse(readFileSync(join(m2.dataDir, 'node.json'), 'utf8')) as { role: string }).role;
    await waitFor(() => savedRole() === 'worker', 10_000, savedRole);
    const refused = swarmdCli('run', '--force-new-cluster', '--data-dir', m2.dataDir);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/--force-new-cluster: this node is a worker/);

    // m1 came back with a normal restart: the one-manager membership was written to the Raft log, so it held
    // without the flag, with everything committed before.
    expect(nodes().find((n) => n.id === m1Id)?.managerStatus?.leader).toBe(true);
    expect(
      swarmJson<Service[]>(m1, 'service', 'ls')
        .map((s) => s.spec.name)
        .sort(),
    ).toEqual(['after', 'kept']);
  }, 240_000);
});
