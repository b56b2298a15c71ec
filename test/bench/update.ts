// npm run bench -- update
// On a real dockerd (SWARMD_TEST_DOCKER_HOST or DOCKER_HOST), swarmd first (a one-node swarm in its own
// process), then Docker Swarm on the same engine, the same steps through their APIs, polled every 50 ms:
// 1. a rolling update of 10 replicas, parallelism 2, delay 0, stop-first (both defaults), of a container whose
//    process exits on SIGTERM (sleep under an init): time from the update call to all 10 new tasks running;
// 2. a health check that starts failing (the file it tests is removed inside the container; interval 1 s,
//    timeout 1 s, 1 retry, restart delay 0): time from the removal to the replacement task running.
// Last line: one JSON object with both sides and the ratios.
import type Docker from 'dockerode';
import { ApiClient } from '../../daemon/api/client.ts';
import type { Task } from '../../daemon/api/services.ts';
import { ensureTestImage, probeDocker, removeTaskContainers, TEST_IMAGE } from '../helpers/docker.ts';
import { serviceSpec, taskTemplate } from '../helpers/fixtures.ts';
import { SwarmProcesses } from '../helpers/swarm-processes.ts';
import { containersOf } from './deploy.ts';
import { inDockerSwarm } from './lib/docker-swarm.ts';
import { round } from './lib/http-load.ts';
import { until } from './lib/poll.ts';

interface Steps {
  update10Seconds: number;
  unhealthyToReplacedSeconds: number;
}

const HEALTH = { intervalMs: 1000, timeoutMs: 1000, retries: 1 };
const HEALTHY_FILE = '/tmp/healthy';
const HEALTHY_CMD = ['/bin/sh', '-c', `touch ${HEALTHY_FILE} && exec sleep 1000`];

/** Removes the file the health check tests, inside the container, and returns when that is done. */
async function breakHealth(docker: Docker, containerId: string): Promise<void> {
  const exec = await docker.getContainer(containerId).exec({ Cmd: ['rm', '-f', HEALTHY_FILE] });
  const stream = await exec.start({});
  await new Promise((resolve) => {
    stream.on('end', resolve);
    stream.on('close', resolve);
    stream.resume();
  });
}

async function measureSwarmd(docker: Docker, host: string): Promise<Steps> {
  process.env.DOCKER_HOST = host;
  const cluster = new SwarmProcesses('benchUpdate');
  try {
    const node = await cluster.init('m1');
    const api = new ApiClient(node.socket);
    const runningTasks = async (name: string) =>
      (await api.listTasks({ service: name })).filter(
        (t: Task) => t.status.state === 'running' && t.desiredState === 'running',
      );

    const template = {
      ...taskTemplate({ runtime: 'docker', image: TEST_IMAGE, command: [] }),
      args: ['sleep', '1000'],
    };
    const rolling = await api.createService(
      serviceSpec('bench-update', { kind: 'replicated', replicas: 10 }, template, { parallelism: 2, delayMs: 0 }),
    );
    await until('swarmd: 10 running', async () => (await runningTasks('bench-update')).length === 10);
    const t0 = performance.now();
    const current = await api.getService(rolling.id);
    await api.updateService(rolling.id, {
      version: current.version,
      spec: { ...current.spec, task: { ...current.spec.task, args: ['sleep', '2000'] } },
    });
    const newRunning = async () =>
      (await runningTasks('bench-update')).filter((t) => t.template.args[1] === '2000').length === 10;
    const update10Seconds = round((performance.now() - t0) / 1000 + (await until('swarmd: update', newRunning)), 3);
    await api.removeService(rolling.id);

    const checked = await api.createService(
      serviceSpec(
        'bench-health',
        { kind: 'replicated', replicas: 1 },
        {
          ...template,
          command: HEALTHY_CMD,
          args: [],
          restart: { ...template.restart, delayMs: 0 },
          healthcheck: {
            kind: 'cmd',
            command: ['test', '-f', HEALTHY_FILE],
            path: '/',
            port: 0,
            startPeriodMs: 0,
            ...HEALTH,
          },
        },
      ),
    );
    let first: Task | undefined;
    await until('swarmd: healthy', async () => {
      first = (await runningTasks('bench-health')).find((t) => t.status.health === 'healthy');
      return first !== undefined;
    });
    const [container] = await docker.listContainers({ filters: { label: [`swarmd.task.id=${first!.id}`] } });
    const t1 = performance.now();
    await breakHealth(docker, container!.Id);
    const replaced = async () => (await runningTasks('bench-health')).some((t) => t.id !== first!.id);
    const unhealthyToReplacedSeconds = round(
      (performance.now() - t1) / 1000 + (await until('swarmd: replaced', replaced)),
      3,
    );
    await api.removeService(checked.id);
    return { update10Seconds, unhealthyToReplacedSeconds };
  } finally {
    await cluster.stopAll();
    await removeTaskContainers(docker);
  }
}

interface SwarmTask {
  ID: string;
  Status: { State: string; ContainerStatus?: { ContainerID?: string } };
  Spec: { ContainerSpec: { Args?: string[] } };
}

async function measureDockerSwarm(docker: Docker): Promise<Steps | { error: string }> {
  return inDockerSwarm(docker, async () => {
    const runningTasks = async (name: string) =>
      ((await docker.listTasks({ filters: { service: [name], 'desired-state': ['running'] } })) as SwarmTask[]).filter(
        (t) => t.Status.State === 'running',
      );
    const rollingSpec = (args: string[]) => ({
      Name: 'bench-update',
      TaskTemplate: { ContainerSpec: { Image: TEST_IMAGE, Args: args, Init: true } },
      Mode: { Replicated: { Replicas: 10 } },
      UpdateConfig: { Parallelism: 2, Delay: 0 },
    });
    const created = (await docker.createService(rollingSpec(['sleep', '1000']) as Docker.CreateServiceOptions)) as {
      id?: string;
      ID?: string;
    };
    const service = docker.getService(created.id ?? created.ID!);
    await until('docker swarm: 10 running', async () => (await runningTasks('bench-update')).length === 10);
    const t0 = performance.now();
    const info = (await service.inspect()) as { Version: { Index: number } };
    await service.update({ version: info.Version.Index, ...rollingSpec(['sleep', '2000']) });
    const newRunning = async () =>
      (await runningTasks('bench-update')).filter((t) => t.Spec.ContainerSpec.Args?.[1] === '2000').length === 10;
    const update10Seconds = round(
      (performance.now() - t0) / 1000 + (await until('docker swarm: update', newRunning)),
      3,
    );
    await service.remove();
    await until(
      'docker swarm: removed',
      async () => (await containersOf(docker, 'com.docker.swarm.service.name=bench-update')) === 0,
    );

    const nanos = (ms: number) => ms * 1e6;
    const checkedCreated = (await docker.createService({
      Name: 'bench-health',
      TaskTemplate: {
        ContainerSpec: {
          Image: TEST_IMAGE,
          Command: HEALTHY_CMD,
          Init: true,
          HealthCheck: {
            Test: ['CMD', 'test', '-f', HEALTHY_FILE],
            Interval: nanos(HEALTH.intervalMs),
            Timeout: nanos(HEALTH.timeoutMs),
            Retries: HEALTH.retries,
          },
        },
        RestartPolicy: { Condition: 'any', Delay: 0 },
      },
      Mode: { Replicated: { Replicas: 1 } },
    })) as { id?: string; ID?: string };
    let first: SwarmTask | undefined;
    await until('docker swarm: healthy', async () => {
      [first] = await runningTasks('bench-health');
      const id = first?.Status.ContainerStatus?.ContainerID;
      if (!id) return false;
      const state = (await docker.getContainer(id).inspect()).State as { Health?: { Status: string } };
      return state.Health?.Status === 'healthy';
    });
    const t1 = performance.now();
    await breakHealth(docker, first!.Status.ContainerStatus!.ContainerID!);
    const replaced = async () => (await runningTasks('bench-health')).some((t) => t.ID !== first!.ID);
    const unhealthyToReplacedSeconds = round(
      (performance.now() - t1) / 1000 + (await until('docker swarm: replaced', replaced)),
      3,
    );
    await docker.getService(checkedCreated.id ?? checkedCreated.ID!).remove();
    return { update10Seconds, unhealthyToReplacedSeconds };
  });
}

export async function benchUpdate(): Promise<Record<string, unknown>> {
  const probe = await probeDocker();
  if (!probe.ok || !probe.docker) {
    process.stdout.write(`no Docker engine: ${probe.reason}\n`);
    return { bench: 'update', skipped: probe.reason };
  }
  const docker = probe.docker;
  await ensureTestImage(docker, probe.host);
  const swarmd = await measureSwarmd(docker, probe.host);
  const say = (who: string, s: Steps) =>
    process.stdout.write(
      `${who}: update of 10 (parallelism 2) in ${s.update10Seconds} s; failing health check to replacement running in ${s.unhealthyToReplacedSeconds} s\n`,
    );
  say('swarmd', swarmd);
  const dockerSwarm = await measureDockerSwarm(docker);
  if ('error' in dockerSwarm) process.stdout.write(`anchor: ${dockerSwarm.error}\n`);
  else say('docker swarm', dockerSwarm);
  const ratio = (k: keyof Steps) => ('error' in dockerSwarm ? null : round(swarmd[k] / dockerSwarm[k]));
  return {
    bench: 'update',
    engine: probe.reason,
    settings: { replicas: 10, parallelism: 2, delayMs: 0, order: 'stop-first', health: HEALTH, restartDelayMs: 0 },
    swarmd,
    dockerSwarm,
    ratios: { update10: ratio('update10Seconds'), unhealthyToReplaced: ratio('unhealthyToReplacedSeconds') },
    target: 'ratios at or below 0.5',
  };
}
