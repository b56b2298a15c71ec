// npm run bench -- deploy
// On a real dockerd (SWARMD_TEST_DOCKER_HOST or DOCKER_HOST): create a service of 10 replicas and time
// until all run, scale it to 50, remove it. First with a one-node swarmd (a separate process) on that
// engine, then with Docker Swarm on the same engine (swarm mode, run after swarmd is gone), and the ratios.
// Both are driven through their APIs and polled every 50 ms. Then the engine alone: the same numbers of
// containers created and started in parallel straight through its API (dockerode), no orchestrator at all, which
// is the floor for any orchestrator that drives this engine through its API. Last line: one JSON object.
import type Docker from 'dockerode';
import { ApiClient } from '../../daemon/api/client.ts';
import type { ServiceSpec } from '../../daemon/api/services.ts';
import { ensureTestImage, probeDocker, removeTaskContainers, TEST_IMAGE } from '../helpers/docker.ts';
import { serviceSpec, taskTemplate } from '../helpers/fixtures.ts';
import { SwarmProcesses } from '../helpers/swarm-processes.ts';
import { inDockerSwarm } from './lib/docker-swarm.ts';
import { round } from './lib/http-load.ts';
import { until } from './lib/poll.ts';

interface Steps {
  create10Seconds: number;
  scale10To50Seconds: number;
  removeSeconds: number;
}

export async function containersOf(docker: Docker, label: string): Promise<number> {
  return (await docker.listContainers({ filters: { label: [label] } })).length;
}

async function measureSwarmd(docker: Docker, host: string): Promise<Steps> {
  process.env.DOCKER_HOST = host;
  const cluster = new SwarmProcesses('benchDeploy');
  try {
    const node = await cluster.init('m1');
    const api = new ApiClient(node.socket);
    const spec: ServiceSpec = serviceSpec(
      'bench',
      { kind: 'replicated', replicas: 10 },
      {
        ...taskTemplate({ runtime: 'docker', image: TEST_IMAGE, command: [] }),
        args: ['sleep', '1000'],
      },
    );
    const running = async (n: number) => {
      const tasks = await api.listTasks({ service: 'bench' });
      return tasks.filter((t) => t.status.state === 'running' && t.desiredState === 'running').length === n;
    };
    let t0 = performance.now();
    const service = await api.createService(spec);
    const create10Seconds = round(
      (performance.now() - t0) / 1000 + (await until('swarmd: 10 running', () => running(10))),
      3,
    );
    t0 = performance.now();
    const current = await api.getService(service.id);
    await api.updateService(service.id, {
      version: current.version,
      spec: { ...current.spec, mode: { kind: 'replicated', replicas: 50 } },
    });
    const scale10To50Seconds = round(
      (performance.now() - t0) / 1000 + (await until('swarmd: 50 running', () => running(50))),
      3,
    );
    t0 = performance.now();
    await api.removeService(service.id);
    const removeSeconds = round(
      (performance.now() - t0) / 1000 +
        (await until('swarmd: removed', async () => (await containersOf(docker, 'swarmd.service.name=bench')) === 0)),
      3,
    );
    return { create10Seconds, scale10To50Seconds, removeSeconds };
  } finally {
    await cluster.stopAll();
    await removeTaskContainers(docker);
  }
}

async function measureDockerSwarm(docker: Docker): Promise<Steps | { error: string }> {
  return inDockerSwarm(docker, async () => {
    const running = async (n: number) => {
      const tasks = (await docker.listTasks({ filters: { service: ['bench'], 'desired-state': ['running'] } })) as {
        Status: { State: string };
      }[];
      return tasks.filter((t) => t.Status.State === 'running').length === n;
    };
    const spec = (replicas: number) => ({
      Name: 'bench',
      TaskTemplate: { ContainerSpec: { Image: TEST_IMAGE, Command: ['sleep', '1000'] } },
      Mode: { Replicated: { Replicas: replicas } },
    });
    let t0 = performance.now();
    const created = (await docker.createService(spec(10))) as { id?: string; ID?: string };
    const id = created.id ?? created.ID!;
    const create10Seconds = round(
      (performance.now() - t0) / 1000 + (await until('docker swarm: 10 running', () => running(10))),
      3,
    );
    t0 = performance.now();
    const service = docker.getService(id);
    const info = (await service.inspect()) as { Version: { Index: number } };
    await service.update({ version: info.Version.Index, ...spec(50) });
    const scale10To50Seconds = round(
      (performance.now() - t0) / 1000 + (await until('docker swarm: 50 running', () => running(50))),
      3,
    );
    t0 = performance.now();
    await service.remove();
    const removeSeconds = round(
      (performance.now() - t0) / 1000 +
        (await until(
          'docker swarm: removed',
          async () => (await containersOf(docker, 'com.docker.swarm.service.name=bench')) === 0,
        )),
      3,
    );
    return { create10Seconds, scale10To50Seconds, removeSeconds };
  });
}

interface EngineFloor {
  create10Seconds: number;
  create40Seconds: number;
}

/** 10, then 40 more, containers created and started at once through the engine's API; removed after. */
async function measureEngineFloor(docker: Docker): Promise<EngineFloor> {
  const label = `swarmd-bench-floor=${process.pid}`;
  const started: Docker.Container[] = [];
  const batch = async (n: number) => {
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: n }, async () => {
        const container = await docker.createContainer({
          Image: TEST_IMAGE,
          Cmd: ['sleep', '1000'],
          Labels: { 'swarmd-bench-floor': String(process.pid) },
          HostConfig: { NetworkMode: 'none' },
        });
        started.push(container);
        await container.start();
      }),
    );
    return round((performance.now() - t0) / 1000, 3);
  };
  try {
    const create10Seconds = await batch(10);
    const create40Seconds = await batch(40);
    return { create10Seconds, create40Seconds };
  } finally {
    await Promise.all(started.map((c) => c.remove({ force: true }).catch(() => {})));
    if ((await containersOf(docker, label)) > 0)
      process.stdout.write(`engine floor: containers labelled ${label} left\n`);
  }
}

export async function benchDeploy(): Promise<Record<string, unknown>> {
  const probe = await probeDocker();
  if (!probe.ok || !probe.docker) {
    process.stdout.write(`no Docker engine: ${probe.reason}\n`);
    return { bench: 'deploy', skipped: probe.reason };
  }
  const docker = probe.docker;
  await ensureTestImage(docker, probe.host);
  const swarmd = await measureSwarmd(docker, probe.host);
  process.stdout.write(
    `swarmd: 10 running in ${swarmd.create10Seconds} s, 10 -> 50 in ${swarmd.scale10To50Seconds} s, removed in ${swarmd.removeSeconds} s\n`,
  );
  const dockerSwarm = await measureDockerSwarm(docker);
  if ('error' in dockerSwarm) process.stdout.write(`anchor: ${dockerSwarm.error}\n`);
  else {
    process.stdout.write(
      `docker swarm: 10 running in ${dockerSwarm.create10Seconds} s, 10 -> 50 in ${dockerSwarm.scale10To50Seconds} s, removed in ${dockerSwarm.removeSeconds} s\n`,
    );
  }
  const engineFloor = await measureEngineFloor(docker);
  process.stdout.write(
    `engine alone (parallel create+start through its API): 10 in ${engineFloor.create10Seconds} s, 40 more in ${engineFloor.create40Seconds} s\n`,
  );
  const ratio = (k: keyof Steps) => ('error' in dockerSwarm ? null : round(swarmd[k] / dockerSwarm[k]));
  return {
    bench: 'deploy',
    engine: probe.reason,
    swarmd,
    dockerSwarm,
    engineFloor,
    ratios: {
      create10: ratio('create10Seconds'),
      scale10To50: ratio('scale10To50Seconds'),
      remove: ratio('removeSeconds'),
    },
  };
}
