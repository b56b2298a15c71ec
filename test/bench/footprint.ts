// npm run bench -- footprint
// Idle resident memory of a swarmd worker and manager in a 3-manager swarm after 30 s, next to one idle
// etcd member (where etcd is installed) measured in the same run. Last line: one JSON object.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundle } from '../../cli/build.ts';
import { SwarmProcesses, swarm } from '../helpers/swarm-processes.ts';
import { round } from './lib/http-load.ts';
import { killHard, sleep, startProcess } from './lib/processes.ts';

const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 30);

function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
  return round(kb / 1024, 1);
}

async function etcdIdleRss(): Promise<number | null> {
  if (spawnSync('etcd', ['--version']).status !== 0) return null;
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-bench-etcd-'));
  const etcd = await startProcess(
    'etcd',
    [
      '--data-dir',
      join(dir, 'data'),
      '--listen-client-urls',
      'http://127.0.0.1:42379',
      '--advertise-client-urls',
      'http://127.0.0.1:42379',
      '--listen-peer-urls',
      'http://127.0.0.1:42380',
      '--initial-advertise-peer-urls',
      'http://127.0.0.1:42380',
      '--initial-cluster',
      'default=http://127.0.0.1:42380',
      '--logger',
      'zap',
      '--log-outputs',
      join(dir, 'etcd.log'),
    ],
    join(dir, 'etcd.out'),
    () => fetch('http://127.0.0.1:42379/health').then((r) => r.ok),
  );
  await sleep(IDLE_SECONDS * 1000);
  const rss = rssMiB(etcd.pid);
  await killHard(etcd);
  rmSync(dir, { recursive: true, force: true });
  return rss;
}

/** A 3-manager swarm with one worker, idle for IDLE_SECONDS; the RSS of each process. */
async function measureSwarm(label: string, swarmdArgs?: string[]) {
  const cluster = new SwarmProcesses('benchFootprint', swarmdArgs ? { swarmdArgs } : {});
  try {
    const m1 = await cluster.init('m1');
    const managerToken = swarm(m1, 'join-token', '-q', 'manager').stdout.trim();
    const workerToken = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
    await cluster.join('m2', managerToken, m1);
    await cluster.join('m3', managerToken, m1);
    const w1 = await cluster.join('w1', workerToken, m1);
    process.stdout.write(`${label}: 3 managers and 1 worker up; idling ${IDLE_SECONDS} s\n`);
    await sleep(IDLE_SECONDS * 1000);
    const managers = ['m1', 'm2', 'm3'].map((n) => rssMiB(cluster.nodes.get(n)!.child.pid!));
    const worker = rssMiB(w1.child.pid!);
    process.stdout.write(`${label}: worker ${worker} MiB, managers ${managers.join(' / ')} MiB\n`);
    return { workerRssMiB: worker, managerRssMiB: managers };
  } finally {
    await cluster.stopAll();
  }
}

export async function benchFootprint(): Promise<Record<string, unknown>> {
  // What `npm run build` ships (bundled, manager code split off, small young generation), and the
  // TypeScript sources run directly, as in development and tests.
  const outdir = mkdtempSync(join(tmpdir(), 'swarmd-bench-dist-'));
  let bundled: Awaited<ReturnType<typeof measureSwarm>>;
  try {
    await buildBundle(outdir);
    bundled = await measureSwarm('bundled build', ['--max-semi-space-size=1', join(outdir, 'swarmd.mjs')]);
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
  const source = await measureSwarm('TypeScript sources');
  const etcd = await etcdIdleRss();
  if (etcd !== null) process.stdout.write(`anchor: one idle etcd member ${etcd} MiB\n`);
  const target = 84; // dockerd idle with swarm mode, measured on this machine (shared/anchors/baselines.md)
  return {
    bench: 'footprint',
    idleSeconds: IDLE_SECONDS,
    bundled,
    source,
    etcdMemberRssMiB: etcd,
    ratios: {
      bundledWorkerToDockerdSwarm: round(bundled.workerRssMiB / target),
      bundledManagerToEtcdMember: etcd ? round(Math.max(...bundled.managerRssMiB) / etcd) : null,
    },
  };
}
