// A real swarm: 3 managers and 2 workers as separate OS processes on loopback, started and driven
// through the `swarmd` and `swarm` CLIs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SwarmNode } from '../../daemon/api/types.ts';
import { createMeshHost, type MeshHost } from '../../daemon/mesh/host.ts';
import { loadOrCreateNodeKey } from '../../daemon/mesh/node-key.ts';
import { PROTOCOLS } from '../../daemon/mesh/protocols.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmdCli, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const cluster = new SwarmProcesses('swarm');
let m1: NodeProcess;
let workerToken: string;
let managerToken: string;

/** m1's full multiaddr, with /p2p/: dials reuse one connection instead of opening one per stream. */
function m1Addr(): string {
  return swarmJson<{ listenAddrs: string[] }>(m1, 'info').listenAddrs[0]!;
}

/** A bare libp2p host with the given key (an outsider, or an impostor using a node's own key). */
async function withHost(key: PrivateKey, body: (host: MeshHost) => Promise<void>): Promise<void> {
  const host = await createMeshHost({ privateKey: key, listen: { host: '127.0.0.1', port: 0 }, encryption: 'noise' });
  try {
    await body(host);
  } finally {
    await host.stop();
  }
}

function inspect(via: NodeProcess, id: string): SwarmNode {
  return swarmJson<SwarmNode[]>(via, 'node', 'inspect', id)[0]!;
}

function nodes(via: NodeProcess): SwarmNode[] {
  return swarmJson<SwarmNode[]>(via, 'node', 'ls');
}

function allReady(via: NodeProcess, count: number): boolean {
  const list = nodes(via);
  return list.length === count && list.every((n) => n.status.state === 'ready');
}

beforeAll(async () => {
  m1 = await cluster.init('m1');
  workerToken = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
  managerToken = swarm(m1, 'join-token', '-q', 'manager').stdout.trim();
  await cluster.join('m2', managerToken, m1);
  await cluster.join('m3', managerToken, m1);
  await cluster.join('w1', workerToken, m1);
  await cluster.join('w2', workerToken, m1);
}, 180_000);

afterAll(async () => {
  await cluster.stopAll();
});

describe('swarm formation', () => {
  it('init prints how to join, with a worker token that names the CA', () => {
    expect(m1.output()).toMatch(/Swarm initialized: current node \(\w+\) is now a manager/);
    expect(m1.output()).toContain(`swarmd join --token ${workerToken} 127.0.0.1:${m1.port}\n`);
    expect(workerToken).toMatch(/^SWMTKN-1-[a-z2-7]{32}-[a-z2-7]{26}$/);
    expect(managerToken).not.toBe(workerToken);
  });

  it('node ls shows 3 managers and 2 workers, all ready, one leader', async () => {
    await waitFor(
      () => allReady(m1, 5),
      60_000,
      () => swarm(m1, 'node', 'ls').stdout,
    );
    const list = nodes(m1);
    expect(list.filter((n) => n.role === 'manager')).toHaveLength(3);
    expect(list.filter((n) => n.role === 'worker')).toHaveLength(2);
    await waitFor(
      () => nodes(m1).filter((n) => n.managerStatus?.raftRole === 'voter').length === 3,
      60_000,
      () => JSON.stringify(nodes(m1).map((n) => n.managerStatus)),
    );
    expect(nodes(m1).filter((n) => n.managerStatus?.leader)).toHaveLength(1);
    const table = swarm(m1, 'node', 'ls');
    expect(table.stdout).toMatch(/Leader/);
    expect(table.stdout.split('\n').filter((l) => l.includes('Ready'))).toHaveLength(5);
  }, 120_000);

  it('a worker answers manager operations with a clear error', () => {
    const w1 = cluster.nodes.get('w1')!;
    const result = swarm(w1, 'node', 'ls');
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('this node is not a manager');
  });

  it('after kill -9 of the leader, a new leader answers and shows the old one down; swarmd run brings it back', async () => {
    const leaderId = nodes(m1).find((n) => n.managerStatus?.leader)!.id;
    const leaderName = [...cluster.nodes.values()].find(
      (n) => swarmJson<{ nodeId: string }>(n, 'info').nodeId === leaderId,
    )!.name;
    await cluster.kill9(leaderName);
    const survivor = [...cluster.nodes.values()].find((n) => n.name.startsWith('m') && n.name !== leaderName)!;
    await waitFor(
      () => {
        const list = nodes(survivor);
        const newLeader = list.find((n) => n.managerStatus?.leader);
        const old = list.find((n) => n.id === leaderId);
        return newLeader !== undefined && newLeader.id !== leaderId && old?.status.state === 'down';
      },
      60_000,
      () => swarm(survivor, 'node', 'ls').stdout,
    );
    const restarted = await cluster.run(leaderName);
    await waitFor(
      () => allReady(survivor, 5),
      60_000,
      () => swarm(survivor, 'node', 'ls').stdout + restarted.output(),
    );
  }, 180_000);
});

describe('membership security', () => {
  it('an outsider gets only the join protocol: every other protocol is refused', async () => {
    const key = await generateKeyPair('Ed25519');
    await withHost(key, async (outsider) => {
      const target = m1Addr();
      for (const protocol of [PROTOCOLS.raft, PROTOCOLS.control, PROTOCOLS.dispatcher]) {
        const attempt = async () => {
          const { stream } = await outsider.openStream(target, protocol, { signal: AbortSignal.timeout(5000) });
          await stream.send({ hello: 'let me in' });
          const answer = await stream.read(AbortSignal.timeout(5000));
          if (answer === undefined) throw new Error('closed');
          return answer;
        };
        await expect(attempt(), protocol).rejects.toThrow();
      }
      // The join protocol answers (it presents the CA), but a wrong secret is refused.
      const { stream } = await outsider.openStream(target, PROTOCOLS.join, { signal: AbortSignal.timeout(5000) });
      const offer = (await stream.read(AbortSignal.timeout(5000))) as { caPublicKey: string };
      expect(typeof offer.caPublicKey).toBe('string');
      await stream.send({ secret: 'aaaaaaaaaaaaaaaaaaaaaaaaaa' });
      const reply = (await stream.read(AbortSignal.timeout(5000))) as { error?: string };
      expect(reply.error).toMatch(/invalid join token/);
    });
  }, 60_000);

  it('a token with the wrong CA fingerprint is refused before the secret is sent', () => {
    const wrong = workerToken.replace(/^SWMTKN-1-([a-z2-7])/, (_m, c: string) => `SWMTKN-1-${c === 'a' ? 'b' : 'a'}`);
    const result = swarmdCli(
      'join',
      '--token',
      wrong,
      '--data-dir',
      join(cluster.root, 'intruder'),
      '--listen-addr',
      '127.0.0.1:0',
      `127.0.0.1:${m1.port}`,
    );
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/fingerprint/);
  }, 60_000);

  it('a worker cannot speak Raft, even with a valid certificate', async () => {
    const w2 = cluster.nodes.get('w2')!;
    const state = JSON.parse(readFileSync(join(w2.dataDir, 'node.json'), 'utf8')) as { cert: string };
    // Act as w2 with its own key and certificate from a second host.
    const key = await loadOrCreateNodeKey(w2.dataDir);
    await withHost(key, async (impostor) => {
      const target = m1Addr();
      const hello = await impostor.openStream(target, PROTOCOLS.hello, { signal: AbortSignal.timeout(5000) });
      await hello.stream.send({ cert: state.cert });
      const answer = (await hello.stream.read(AbortSignal.timeout(5000))) as { cert?: string; error?: string };
      expect(answer.cert).toBeTypeOf('string'); // a member: hello succeeds
      const attempt = async () => {
        const { stream } = await impostor.openStream(target, PROTOCOLS.raft, { signal: AbortSignal.timeout(5000) });
        await stream.send([]);
        const reply = await stream.read(AbortSignal.timeout(5000));
        if (reply === undefined) throw new Error('closed');
      };
      await expect(attempt()).rejects.toThrow();
    });
  }, 60_000);

  it('a removed node is dropped within seconds and cannot come back with its old certificate', async () => {
    const w2 = cluster.nodes.get('w2')!;
    const w2Id = swarmJson<{ nodeId: string }>(w2, 'info').nodeId;
    const rm = swarm(m1, 'node', 'rm', '--force', w2Id);
    expect(rm.status, rm.stderr).toBe(0);
    expect(nodes(m1).some((n) => n.id === w2Id)).toBe(false);
    // w2 keeps running and heartbeating with its old certificate; it must stay out.
    await new Promise((r) => setTimeout(r, 3000));
    expect(nodes(m1).some((n) => n.id === w2Id)).toBe(false);
    // Presenting that certificate again is refused by name.
    const state = JSON.parse(readFileSync(join(w2.dataDir, 'node.json'), 'utf8')) as { cert: string };
    await cluster.kill9('w2');
    const key = await loadOrCreateNodeKey(w2.dataDir);
    await withHost(key, async (comeback) => {
      const { stream } = await comeback.openStream(m1Addr(), PROTOCOLS.hello, { signal: AbortSignal.timeout(5000) });
      await stream.send({ cert: state.cert });
      const answer = (await stream.read(AbortSignal.timeout(5000))) as { error?: string };
      expect(answer.error).toMatch(/removed from the swarm/);
    });
  }, 60_000);

  it('malformed, oversized and truncated frames close that stream and the daemon keeps running', async () => {
    const key = await generateKeyPair('Ed25519');
    await withHost(key, async (outsider) => {
      const target = m1Addr();
      for (const protocol of [PROTOCOLS.join, PROTOCOLS.hello]) {
        for (const payload of [{ secret: 12 }, { cert: 'x'.repeat(5000) }, 'not an object', [1, 2, 3]]) {
          const { stream } = await outsider.openStream(target, protocol, { signal: AbortSignal.timeout(5000) });
          await stream.send(payload).catch(() => {});
          await stream.read(AbortSignal.timeout(5000)).catch(() => undefined);
          stream.abort(new Error('done'));
        }
      }
      expect(swarm(m1, 'info').status).toBe(0);
      expect(m1.child.exitCode).toBeNull();
    });
  }, 60_000);
});

describe('bad CLI input', () => {
  it('gives one clear line and a non-zero exit', () => {
    const cases: [string[], RegExp][] = [
      [['init', '--bogus'], /bogus/],
      [['init', '--listen-addr', 'nowhere'], /--listen-addr must be HOST:PORT/],
      [['init', '--lb-threads', '17'], /--lb-threads must be a whole number from 0 to 16, got "17"/],
      [['init', '--lb-threads', 'two'], /--lb-threads must be a whole number/],
      [['init', '--lb-relay', 'fast'], /--lb-relay must be auto, native or js, got "fast"/],
      [['join', '--token', 'SWMTKN-2-abc-def', '127.0.0.1:1'], /token/i],
      [['join', '127.0.0.1:1'], /--token/],
      [['run', '--data-dir', join(cluster.root, 'does-not-exist')], /not part of a swarm/],
      [['frobnicate'], /unknown command/],
    ];
    for (const [args, pattern] of cases) {
      const result = swarmdCli(...args);
      expect(result.status, args.join(' ')).not.toBe(0);
      expect(result.stderr, args.join(' ')).toMatch(pattern);
      expect(result.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
  }, 120_000);
});

describe('role changes', () => {
  it('promote makes a worker a Raft voter; demote makes it a worker again', async () => {
    const w1 = cluster.nodes.get('w1')!;
    const w1Id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
    const promote = swarm(m1, 'node', 'promote', w1Id);
    expect(promote.status, promote.stderr).toBe(0);
    await waitFor(
      () => nodes(m1).find((n) => n.id === w1Id)?.managerStatus?.raftRole === 'voter',
      60_000,
      () => JSON.stringify(nodes(m1).find((n) => n.id === w1Id)),
    );
    // The promoted node now serves manager operations itself.
    await waitFor(
      () => swarm(w1, 'node', 'ls').status === 0,
      30_000,
      () => swarm(w1, 'node', 'ls').stderr,
    );

    const demote = swarm(m1, 'node', 'demote', w1Id);
    expect(demote.status, demote.stderr).toBe(0);
    await waitFor(
      () => {
        const node = nodes(m1).find((n) => n.id === w1Id);
        return node?.role === 'worker' && node.managerStatus === null;
      },
      60_000,
      () => JSON.stringify(nodes(m1).find((n) => n.id === w1Id)),
    );
    await waitFor(() => swarm(w1, 'node', 'ls').stderr.includes('not a manager'), 30_000);
    await waitFor(
      () => allReady(m1, 4),
      30_000,
      () => swarm(m1, 'node', 'ls').stdout,
    );
  }, 180_000);

  it('demoting the leader hands leadership over first', async () => {
    const leader = nodes(m1).find((n) => n.managerStatus?.leader)!;
    const via = [...cluster.nodes.values()].find((n) => n.name.startsWith('m') && n.child.exitCode === null)!;
    const demote = swarm(via, 'node', 'demote', leader.id);
    expect(demote.status, demote.stderr).toBe(0);
    const other = [...cluster.nodes.values()].find(
      (n) => n.name.startsWith('m') && swarmJson<{ nodeId: string }>(n, 'info').nodeId !== leader.id,
    )!;
    await waitFor(
      () => {
        const list = nodes(other);
        const newLeader = list.find((n) => n.managerStatus?.leader);
        return (
          newLeader !== undefined &&
          newLeader.id !== leader.id &&
          list.find((n) => n.id === leader.id)?.role === 'worker'
        );
      },
      60_000,
      () => swarm(other, 'node', 'ls').stdout,
    );
    const removedFromRaft = () =>
      !swarmJson<SwarmNode[]>(other, 'node', 'ls').some((n) => n.id === leader.id && n.managerStatus !== null);
    await waitFor(removedFromRaft, 60_000);
  }, 180_000);
});

describe('node management', () => {
  it('updates labels, availability and a per-node heartbeat period', () => {
    const w1 = cluster.nodes.get('w1')!;
    const id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
    const via = [...cluster.nodes.values()].find(
      (n) => n.name.startsWith('m') && n.child.exitCode === null && n.child.signalCode === null,
    )!;
    const update = swarm(
      via,
      'node',
      'update',
      '--label-add',
      'zone=edge',
      '--availability',
      'drain',
      '--heartbeat-period',
      '5',
      id,
    );
    expect(update.status, update.stderr).toBe(0);
    const node = inspect(via, id);
    expect(node.labels).toEqual({ zone: 'edge' });
    expect(node.availability).toBe('drain');
    expect(node.heartbeatPeriodMs).toBe(5000);
    expect(swarm(via, 'node', 'update', '--heartbeat-period', 'default', '--label-rm', 'zone', id).status).toBe(0);
    const after = inspect(via, id);
    expect(after.heartbeatPeriodMs).toBeNull();
    expect(after.labels).toEqual({});
    const bad = swarm(via, 'node', 'update', '--heartbeat-period', '-3', id);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--heartbeat-period/);
  }, 60_000);

  it('a rotated join token replaces the old one; a worker can leave, and a manager must be forced to', async () => {
    const via = [...cluster.nodes.values()].find(
      (n) => n.name.startsWith('m') && n.child.exitCode === null && n.child.signalCode === null,
    )!;
    const rotated = swarm(via, 'join-token', '--rotate', '-q', 'worker').stdout.trim();
    expect(rotated).toMatch(/^SWMTKN-1-/);
    expect(rotated).not.toBe(workerToken);
    const stale = swarmdCli(
      'join',
      '--token',
      workerToken,
      '--data-dir',
      join(cluster.root, 'stale'),
      '--listen-addr',
      '127.0.0.1:0',
      `127.0.0.1:${via.port}`,
    );
    expect(stale.status).toBe(1);
    expect(stale.stderr).toMatch(/invalid join token/);

    const w3 = await cluster.join('w3', rotated, via);
    const w3Id = swarmJson<{ nodeId: string }>(w3, 'info').nodeId;
    const leave = swarmdCli('leave', '--data-dir', w3.dataDir);
    expect(leave.status, leave.stderr).toBe(0);
    await waitFor(() => w3.child.exitCode !== null, 20_000);
    await waitFor(() => inspect(via, w3Id).status.state === 'down', 30_000);
    expect(swarm(via, 'node', 'rm', w3Id).status).toBe(0); // down: no --force needed

    const refused = swarmdCli('leave', '--data-dir', via.dataDir);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/demote it first/);
  }, 120_000);
});
