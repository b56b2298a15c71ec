// A swarm whose mesh uses TLS 1.3 instead of Noise, with short-lived certificates renewed on the way.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SwarmNode } from '../../daemon/api/types.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmdCli, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const cluster = new SwarmProcesses('swarmTls');
let manager: NodeProcess;
let worker: NodeProcess;

beforeAll(async () => {
  manager = await cluster.init('m1', ['--mesh-encryption', 'tls', '--cert-expiry', '12']);
  const token = swarm(manager, 'join-token', '-q', 'worker').stdout.trim();
  worker = await cluster.join('w1', token, manager, ['--mesh-encryption', 'tls']);
}, 120_000);

afterAll(async () => {
  await cluster.stopAll();
});

describe('swarm over TLS 1.3', () => {
  it('forms: both nodes ready, info says tls', async () => {
    await waitFor(
      () => {
        const list = swarmJson<SwarmNode[]>(manager, 'node', 'ls');
        return list.length === 2 && list.every((n) => n.status.state === 'ready');
      },
      60_000,
      () => swarm(manager, 'node', 'ls').stdout,
    );
    expect(swarmJson<{ meshEncryption: string }>(worker, 'info').meshEncryption).toBe('tls');
  }, 90_000);

  it('renews a certificate before it expires', async () => {
    const certOf = () => (JSON.parse(readFileSync(join(worker.dataDir, 'node.json'), 'utf8')) as { cert: string }).cert;
    const first = certOf();
    await waitFor(() => certOf() !== first, 30_000);
    // Still a member after the first certificate's lifetime has passed.
    await new Promise((r) => setTimeout(r, 13_000));
    const list = swarmJson<SwarmNode[]>(manager, 'node', 'ls');
    expect(list.every((n) => n.status.state === 'ready')).toBe(true);
  }, 90_000);

  it('a node speaking Noise cannot join a TLS swarm, and says why', () => {
    const token = swarm(manager, 'join-token', '-q', 'worker').stdout.trim();
    const result = swarmdCli(
      'join',
      '--token',
      token,
      '--data-dir',
      join(cluster.root, 'noise-node'),
      '--listen-addr',
      '127.0.0.1:0',
      `127.0.0.1:${manager.port}`,
    );
    expect(result.status).toBe(1);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/--mesh-encryption noise; the swarm may use the other one/);
  }, 60_000);
});
