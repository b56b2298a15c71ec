// RaftNode (core + timers + transport + storage + state machine) in one process over the in-memory network.
import { afterEach, describe, expect, it } from 'vitest';
import { type RaftNode, RaftTimeoutError } from '../../raft/driver/raft-node.ts';
import { MemoryNetwork } from '../../raft/driver/transport.ts';
import { MemoryStorage } from '../../raft/storage/memory-storage.ts';
import { KvStateMachine, startCluster, waitFor } from '../helpers/raft-cluster.ts';

let nodes: RaftNode[] = [];
afterEach(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

describe('RaftNode', () => {
  it('elects a leader; a proposal on any member resolves with the state machine result there', async () => {
    const cluster = await startCluster(['a', 'b', 'c']);
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    expect(await leader.propose(KvStateMachine.put('x', '1'))).toBe('ok');
    const follower = cluster.nodes.find((n) => n !== leader)!;
    expect(await follower.propose(KvStateMachine.put('y', '2'))).toBe('ok'); // forwarded to the leader
    await follower.read();
    expect(cluster.machines.get(follower.id)!.data.get('x')).toBe('1');
    expect(cluster.machines.get(follower.id)!.data.get('y')).toBe('2');
  });

  it('group commit: 200 concurrent proposals take far fewer fsync batches', async () => {
    const cluster = await startCluster(['a', 'b', 'c']);
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    const before = leader.metrics.fsyncBatches;
    await Promise.all(Array.from({ length: 200 }, (_, i) => leader.propose(KvStateMachine.put(`k${i}`, 'v'))));
    const batches = leader.metrics.fsyncBatches - before;
    expect(batches).toBeLessThan(50);
  });

  it('compacts its log into snapshots and a restarted member restores from one', async () => {
    const storages = new Map(['a', 'b', 'c'].map((id) => [id, new MemoryStorage()]));
    const network = new MemoryNetwork();
    const cluster = await startCluster(['a', 'b', 'c'], { snapshotEvery: 20, storages, network });
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    for (let i = 0; i < 60; i++) await leader.propose(KvStateMachine.put(`k${i}`, `v${i}`));
    expect(leader.metrics.snapshotsTaken).toBeGreaterThan(0);
    const victim = cluster.nodes.find((n) => n !== leader)!;
    await waitFor(() => cluster.machines.get(victim.id)!.data.size === 60);
    await victim.stop();
    const restarted = await cluster.restart(victim.id);
    nodes = cluster.nodes;
    await restarted.read();
    expect(cluster.machines.get(victim.id)!.data.get('k59')).toBe('v59');
    expect(restarted.status().snapshotIndex).toBeGreaterThan(0);
  });

  it('a proposal that cannot commit (no quorum) fails with an unknown-outcome timeout', async () => {
    const network = new MemoryNetwork();
    const cluster = await startCluster(['a', 'b', 'c'], { network, requestTimeoutMs: 300 });
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    network.isolate(
      leader.id,
      ['a', 'b', 'c'].filter((id) => id !== leader.id),
    );
    await expect(leader.propose(KvStateMachine.put('x', '1'))).rejects.toBeInstanceOf(RaftTimeoutError);
  });

  it('changes membership: a new member joins as learner, is promoted, and serves reads', async () => {
    const network = new MemoryNetwork();
    const cluster = await startCluster(['a', 'b', 'c'], { network });
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    await leader.propose(KvStateMachine.put('before', '1'));
    const joiner = await cluster.join('d');
    nodes = cluster.nodes;
    await leader.changeMembership({ type: 'addLearner', node: 'd' });
    await waitFor(() => cluster.machines.get('d')!.data.get('before') === '1');
    await leader.changeMembership({ type: 'addVoter', node: 'd' });
    expect(leader.status().conf.voters).toEqual(['a', 'b', 'c', 'd']);
    await joiner.read();
    expect(cluster.machines.get('d')!.data.get('before')).toBe('1');
  });

  it('writes a commit index that moved alone, so members that come back after a full stop know the membership', async () => {
    // The promotion of c is the last entry: a and b learn that it committed from a heartbeat, which appends
    // nothing (no fsync is needed for that). Were that commit index not written at all, a member restarting after
    // the whole cluster stopped would apply only the membership of an older commit: here b would still see c as a
    // learner, and b and c together, a majority of {a, b, c}, could depend on c's own luck to elect a leader.
    const storages = new Map(['a', 'b', 'c'].map((id) => [id, new MemoryStorage()] as [string, MemoryStorage]));
    const network = new MemoryNetwork();
    const cluster = await startCluster(['a', 'b'], { network, storages });
    nodes = cluster.nodes;
    const leader = await cluster.leader();
    await leader.propose(KvStateMachine.put('before', '1'));
    await cluster.join('c');
    nodes = cluster.nodes;
    await leader.changeMembership({ type: 'addLearner', node: 'c' });
    await leader.changeMembership({ type: 'addVoter', node: 'c' });
    await waitFor(() => cluster.nodes.every((n) => n.status().conf.voters.length === 3));
    await Promise.all(cluster.nodes.map((n) => n.stop()));
    for (const storage of storages.values()) {
      const persisted = await storage.load();
      expect(persisted.hardState.commit).toBe(persisted.entries.at(-1)!.index);
    }

    const survivors = ['a', 'b', 'c'].filter((id) => id !== leader.id);
    const restarted = await Promise.all(survivors.map((id) => cluster.restart(id)));
    nodes = restarted;
    await waitFor(() => restarted.some((n) => n.isLeader()));
    const next = restarted.find((n) => n.isLeader())!;
    expect(await next.propose(KvStateMachine.put('after', '2'))).toBe('ok');
  });
});
