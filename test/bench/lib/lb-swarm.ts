// The load balancer benches' real swarm: a manager (m1, ingress on 127.0.0.1) and a worker (w1, ingress on
// 127.0.0.2) as swarmd processes, and one service of 3 tasks on the worker behind one published port. Requests to
// 127.0.0.2 find the tasks local; requests to 127.0.0.1 cross to the worker (the mesh hop).
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient } from '../../../daemon/api/client.ts';
import { freePort } from '../../helpers/loopback-tcp.ts';
import { SwarmProcesses } from '../../helpers/swarm-processes.ts';

const SWARM_CLI = join(fileURLToPath(import.meta.url), '../../../../cli/swarm.ts');

/** A way to start the bench's swarm: its daemons' extra flags, and the suffix of its targets' names. */
export interface SwarmVariant {
  suffix: string;
  flags: string[];
  how: string;
}

export interface BenchService {
  /** --publish's value for a published port; PORT stands for the port picked. */
  publish: string;
  /** The task's shell command line (it runs under /bin/sh -c); TASKS stands for a directory anyone may write. */
  command: string;
  /** Whether the published port answers on this ingress address. */
  ready: (port: number, host: string) => Promise<boolean>;
}

export async function startBenchSwarm(
  dir: string,
  variant: SwarmVariant,
  service: BenchService,
): Promise<{ cluster: SwarmProcesses; port: number }> {
  const cluster = new SwarmProcesses('benchLb');
  const m1 = await cluster.init('m1', ['--ingress-host', '127.0.0.1', ...variant.flags]);
  const workerToken = (await new ApiClient(m1.socket).joinTokens()).worker;
  await cluster.join('w1', workerToken, m1, ['--ingress-host', '127.0.0.2', ...variant.flags]);
  // Tasks run as nobody: their files go in a directory anyone may write.
  const tasks = join(dir, `tasks${variant.suffix || '-default'}`);
  mkdirSync(tasks, { mode: 0o777 });
  chmodSync(tasks, 0o777);
  const port = await freePort();
  const created = spawnSync(
    process.execPath,
    [SWARM_CLI, '--host', m1.socket, 'service', 'create', '--detach', '--name', 'bench', '--replicas', '3',
      '--constraint', 'node.role==worker', '--publish', service.publish.replaceAll('PORT', String(port)), '--',
      '/bin/sh', '-c', service.command.replaceAll('TASKS', tasks)], // biome-ignore format: flags in pairs
    { encoding: 'utf8' },
  );
  if (created.status !== 0) throw new Error(`service create: ${created.stderr}`);
  const deadline = Date.now() + 60_000;
  while (!((await service.ready(port, '127.0.0.1')) && (await service.ready(port, '127.0.0.2')))) {
    if (Date.now() > deadline) throw new Error(`the swarm's published port ${port} did not answer within 60 s`);
    await new Promise((r) => setTimeout(r, 300));
  }
  return { cluster, port };
}

/** Stops the swarms and their tasks, which outlive their daemon by design (a restart re-attaches them). */
export async function stopBenchSwarms(dir: string, clusters: SwarmProcesses[]): Promise<void> {
  for (const cluster of clusters) {
    const m1 = cluster.nodes.get('m1')!;
    spawnSync(process.execPath, [SWARM_CLI, '--host', m1.socket, 'service', 'rm', 'bench']);
  }
  if (clusters.length > 0) await new Promise((r) => setTimeout(r, 2000));
  for (const cluster of clusters) await cluster.stopAll();
  spawnSync('pkill', ['-KILL', '-f', join(dir, 'tasks-')]);
}
