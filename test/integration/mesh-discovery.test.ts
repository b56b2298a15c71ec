// The swarm's private DHT finds a manager whose address changed: a worker that only knows the manager's
// old address asks the DHT (served by the managers) and reaches it at the new one.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { ApiClient } from '../../daemon/api/client.ts';
import type { MeshHost } from '../../daemon/mesh/host.ts';
import type { KnownManager } from '../../daemon/node-state.ts';
import { Swarmd } from '../../daemon/swarmd.ts';
import { waitFor } from '../helpers/swarm-processes.ts';

const root = mkdtempSync(join(tmpdir(), 'swarmd-dht-'));
const base = 36000 + Math.floor(Math.random() * 500) * 6;
const logs: string[] = [];
const log = (name: string) => (level: string, message: string) => logs.push(`${name} ${level} ${message}`);
const daemons: Swarmd[] = [];

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(root, { recursive: true, force: true });
});

it('a worker finds a manager that moved to a new address through the DHT', async () => {
  const m1 = await Swarmd.init({
    dataDir: join(root, 'm1'),
    listen: { host: '127.0.0.1', port: base },
    log: log('m1'),
  });
  daemons.push(m1);
  const tokens = await new ApiClient(m1.socketPath).joinTokens();
  const remote = { host: '127.0.0.1', port: base };
  let m2 = await Swarmd.join({
    dataDir: join(root, 'm2'),
    listen: { host: '127.0.0.1', port: base + 1 },
    token: tokens.manager,
    remote,
    log: log('m2'),
  });
  daemons.push(m2);
  const w = await Swarmd.join({
    dataDir: join(root, 'w'),
    listen: { host: '127.0.0.1', port: base + 2 },
    token: tokens.worker,
    remote,
    log: log('w'),
  });
  daemons.push(w);
  const m2Id = m2.nodeId;
  await waitFor(
    () => logs.some((l) => l.startsWith('m1') && l.includes('promoting it to a raft voter')),
    30_000,
    () => logs.join('\n'),
  );

  // m2 comes back on another port (a new lease, a renumbered site); m1, a DHT server, learns where when
  // m2 reconnects to it.
  const m2PeerId = (
    JSON.parse(readFileSync(join(root, 'm2', 'node.json'), 'utf8')) as { managers: KnownManager[] }
  ).managers.find((m) => m.nodeId === m2Id)!.peerId;
  await m2.stop();
  m2 = await Swarmd.run({ dataDir: join(root, 'm2'), listen: { host: '127.0.0.1', port: base + 3 }, log: log('m2') });
  daemons.push(m2);
  await waitFor(
    () => logs.some((l) => l.startsWith('m') && l.includes('is now the leader') && logs.indexOf(l) > 0),
    30_000,
  );
  // Until m2 has reconnected to m1, m1 can only tell the DHT m2's old address, and the worker's lookup below would
  // find nothing new: wait for what the test relies on, rather than for luck.
  const m1Host = (m1 as unknown as { host: MeshHost }).host;
  let m1Knows: string[] = [];
  for (let deadline = Date.now() + 30_000; !m1Knows.some((a) => a.includes(`/tcp/${base + 3}`)); ) {
    if (Date.now() > deadline) throw new Error(`m1 never learned m2's new address: ${m1Knows.join(', ')}`);
    await new Promise((r) => setTimeout(r, 200));
    m1Knows = await m1Host.findPeer(m2PeerId, AbortSignal.timeout(2000)).catch(() => []);
  }

  // The running worker now knows no manager but m2, at its old address: the DHT (whose routing table has
  // m1 from before) is its only way to find m2.
  const since = logs.length;
  const state = (w as unknown as { state: { managers: KnownManager[] } }).state;
  state.managers = [{ nodeId: m2Id, peerId: m2PeerId, addrs: [`/ip4/127.0.0.1/tcp/${base + 1}`] }];

  // It reaches m2 at its new address: either its agent asked the DHT for m2 explicitly (and logs so), or
  // the DHT's own queries had already put m2's new address in its peer store. Nothing else tells the
  // worker that address: m2 never connects to it, and its heartbeat answers came from m1.
  await waitFor(
    () => state.managers.some((m) => m.nodeId === m1.nodeId),
    30_000,
    () => logs.slice(since).join('\n'),
  );
  expect(logs.slice(since).some((l) => l.startsWith('w') && l.includes('heartbeat failed'))).toBe(false);
}, 120_000);
