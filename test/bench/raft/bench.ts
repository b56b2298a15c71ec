// npm run bench -- raft
// Three members as real OS processes on loopback, real fsync, 256-byte values: 1 and 64 concurrent clients
// for 10 s each, then leader failover (kill -9 the leader, time until a write commits), a few times. The
// same for a 3-member etcd where the etcd binary is installed (Debian's etcd-server), and the ratios.
// The last line is one JSON object with every figure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type LoadResult, postOnce, round, runLoad } from '../lib/http-load.ts';
import { sleep } from '../lib/processes.ts';
import { type BenchCluster, EtcdCluster, SwarmdRaftCluster } from './clusters.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const FAILOVERS = Number(process.env.BENCH_FAILOVERS ?? 3);

interface SystemResult {
  oneClient: LoadResult;
  sixtyFourClients: LoadResult;
  failoverSeconds: number[];
  failoverMedian: number;
}

async function measure(cluster: BenchCluster): Promise<SystemResult> {
  await cluster.start();
  try {
    const leader = await cluster.leaderIndex();
    const load = (clients: number) =>
      runLoad({
        url: cluster.writeUrl(leader),
        clients,
        seconds: SECONDS,
        warmupSeconds: 1,
        maxRequests: 2_000_000,
        body: (n) => cluster.body(n),
      });
    const oneClient = await load(1);
    log(
      `${cluster.name} 1 client: ${oneClient.writesPerSec} writes/s, p50 ${oneClient.p50Ms} ms, p99 ${oneClient.p99Ms} ms`,
    );
    const sixtyFourClients = await load(64);
    log(
      `${cluster.name} 64 clients: ${sixtyFourClients.writesPerSec} writes/s, p50 ${sixtyFourClients.p50Ms} ms, p99 ${sixtyFourClients.p99Ms} ms`,
    );
    const failoverSeconds: number[] = [];
    for (let i = 0; i < FAILOVERS; i++) {
      const seconds = await failover(cluster);
      failoverSeconds.push(seconds);
      log(`${cluster.name} failover ${i + 1}: ${seconds} s`);
    }
    const sorted = [...failoverSeconds].sort((a, b) => a - b);
    return {
      oneClient,
      sixtyFourClients,
      failoverSeconds,
      failoverMedian: sorted[Math.floor(sorted.length / 2)] ?? Number.NaN,
    };
  } finally {
    await cluster.stop();
  }
}

/** kill -9 the leader; probe writes on the survivors every 10 ms (300 ms timeout) until one commits. */
async function failover(cluster: BenchCluster): Promise<number> {
  const leader = await cluster.leaderIndex();
  const survivors = [0, 1, 2].filter((i) => i !== leader);
  // Make sure the survivors answer before the kill, so connection set-up is not counted.
  await postOnce(cluster.writeUrl(survivors[0]!), cluster.body(1), 5000);
  const killedAt = performance.now();
  await cluster.kill(leader);
  let n = 0;
  let elapsed = Number.NaN;
  while (performance.now() - killedAt < 30_000) {
    const target = survivors[n++ % survivors.length]!;
    try {
      await postOnce(cluster.writeUrl(target), cluster.body(n), 300);
      elapsed = (performance.now() - killedAt) / 1000;
      break;
    } catch {
      await sleep(10);
    }
  }
  await cluster.restart(leader);
  await cluster.leaderIndex();
  await sleep(1000); // let the restarted member catch up before the next kill
  return round(elapsed, 3);
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

export async function benchRaft(): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-bench-raft-'));
  try {
    const ours = await measure(new SwarmdRaftCluster(join(dir, 'swarmd')));
    const etcdVersion = EtcdCluster.available();
    let etcd: SystemResult | null = null;
    if (etcdVersion) {
      log(`anchor: ${etcdVersion}`);
      etcd = await measure(new EtcdCluster(join(dir, 'etcd')));
    } else {
      log('anchor: etcd not installed (apt-get install etcd-server) - no ratios this run');
    }
    const ratio = (a: number, b: number | undefined) => (b ? round(a / b) : null);
    return {
      bench: 'raft',
      seconds: SECONDS,
      swarmd: ours,
      etcd: etcd ? { version: etcdVersion, ...etcd } : null,
      ratios: etcd
        ? {
            writesPerSec1: ratio(ours.oneClient.writesPerSec, etcd.oneClient.writesPerSec),
            p50Ms1: ratio(ours.oneClient.p50Ms, etcd.oneClient.p50Ms),
            writesPerSec64: ratio(ours.sixtyFourClients.writesPerSec, etcd.sixtyFourClients.writesPerSec),
            p99Ms64: ratio(ours.sixtyFourClients.p99Ms, etcd.sixtyFourClients.p99Ms),
            failover: ratio(ours.failoverMedian, etcd.failoverMedian),
          }
        : null,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
