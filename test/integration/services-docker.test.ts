// Services on the Docker runtime, on a 3-node swarm of real processes sharing one real dockerd: a global
// service, a constraint, a job to its completions, a killed container replaced.
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Task } from '../../daemon/api/services.ts';
import {
  describeWithDocker,
  ensureTestImage,
  probeDocker,
  removeTaskContainers,
  TEST_IMAGE,
} from '../helpers/docker.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmJson, waitFor } from '../helpers/swarm-processes.ts';

const probe = await probeDocker();
// The swarmd processes find the engine through DOCKER_HOST, as they would on a real node.
if (probe.ok) process.env.DOCKER_HOST = probe.host;

describeWithDocker('services on the docker runtime', probe, (docker) => {
  const cluster = new SwarmProcesses('servicesDocker');
  let m1: NodeProcess;
  const names: string[] = [];

  const tasks = (service: string) => swarmJson<Task[]>(m1, 'service', 'ps', service);
  const running = (service: string) =>
    tasks(service).filter((t) => t.status.state === 'running' && t.desiredState === 'running');
  const create = (name: string, ...args: string[]) => {
    names.push(name);
    const result = swarm(m1, 'service', 'create', '--detach', '--runtime', 'docker', '--name', name, ...args);
    expect(result.status, result.stderr).toBe(0);
  };

  beforeAll(async () => {
    await ensureTestImage(docker(), probe.host);
    m1 = await cluster.init('m1');
    const token = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
    await cluster.join('w1', token, m1);
    await cluster.join('w2', token, m1);
  }, 120_000);

  afterAll(async () => {
    for (const name of names) swarm(m1, 'service', 'rm', name);
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.stopAll();
    // Whatever is left (a test that failed half way) goes too.
    await removeTaskContainers(docker());
  });

  it('a global service runs one unprivileged container per node', async () => {
    create('everywhere', '--mode', 'global', TEST_IMAGE, 'sleep', '1000');
    await waitFor(
      () => running('everywhere').length === 3,
      90_000,
      () => swarm(m1, 'service', 'ps', 'everywhere').stdout,
    );
    expect(new Set(running('everywhere').map((t) => t.nodeId)).size).toBe(3);
    const containers = await docker().listContainers({ filters: { label: ['swarmd.service.name=everywhere'] } });
    expect(containers).toHaveLength(3);
    const details = await docker().getContainer(containers[0]!.Id).inspect();
    expect(details.Config.User).toBe('65534:65534');
    expect(details.HostConfig.CapDrop).toEqual(['ALL']);
    expect(details.HostConfig.SecurityOpt).toContain('no-new-privileges');
  }, 120_000);

  it('honours a placement constraint on a node label', async () => {
    const w1 = cluster.nodes.get('w1')!;
    const w1Id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
    expect(swarm(m1, 'node', 'update', '--label-add', 'zone=edge', w1Id).status).toBe(0);
    create('edgy', '--replicas', '2', '--constraint', 'node.labels.zone==edge', TEST_IMAGE, 'sleep', '1000');
    await waitFor(
      () => running('edgy').length === 2,
      90_000,
      () => swarm(m1, 'service', 'ps', 'edgy').stdout,
    );
    expect(running('edgy').every((t) => t.nodeId === w1Id)).toBe(true);
  }, 120_000);

  it('runs a replicated job to its completions', async () => {
    create(
      'batch',
      '--mode',
      'replicated-job',
      '--total-completions',
      '4',
      '--max-concurrent',
      '2',
      TEST_IMAGE,
      'sh',
      '-c',
      'sleep 0.2',
    );
    await waitFor(
      () => tasks('batch').filter((t) => t.status.state === 'complete').length === 4,
      90_000,
      () => swarm(m1, 'service', 'ps', 'batch').stdout,
    );
    await new Promise((r) => setTimeout(r, 2000));
    expect(tasks('batch').filter((t) => t.status.state === 'complete')).toHaveLength(4); // and no more
  }, 120_000);

  it('replaces a killed container per the restart policy', async () => {
    create('phoenix', '--replicas', '1', '--restart-delay', '0s', TEST_IMAGE, 'sleep', '1000');
    await waitFor(() => running('phoenix').length === 1, 90_000);
    const [first] = running('phoenix');
    const [container] = await docker().listContainers({ filters: { label: [`swarmd.task.id=${first!.id}`] } });
    await docker().getContainer(container!.Id).kill();
    await waitFor(
      () => running('phoenix').length === 1 && running('phoenix')[0]!.id !== first!.id,
      60_000,
      () => swarm(m1, 'service', 'ps', 'phoenix').stdout,
    );
    expect(tasks('phoenix').find((t) => t.id === first!.id)?.status.state).toBe('failed');
  }, 120_000);
});
