// docker/: what CI can check of the packaging without a registry or Apptainer.
// - The Dockerfile, against a real engine: a Node base image is made locally (docker/images/node/build.sh: this
//   machine's node binary, its libraries and busybox, `docker import`ed), the bundle is built on the host
//   (cli/build.ts, as `npm run build`), and the Dockerfile's runtime stage is built from them
//   (--target runtime-prebuilt, NODE_IMAGE=the local image). A container of it runs `swarmd --help`, and one that
//   runs `swarmd init` becomes healthy by the image's own HEALTHCHECK. Then compose.yaml's flow (the manager
//   publishes the worker token, the workers join with it) is played without compose, which this engine cannot
//   network: three containers in one network namespace, the service names resolving to loopback.
// - compose.yaml parses, and its services' commands are swarmd commands and flags that `swarmd --help` documents.
// - swarmd.def parses as an Apptainer definition file.
// SWARMD_TEST_DIST=DIR uses a bundle built beforehand instead of building one.
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { buildBundle } from '../../cli/build.ts';
import { demuxDockerLogs, describeWithDocker, probeDocker, runContainer } from '../helpers/docker.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const DOCKER_DIR = join(ROOT, 'docker');
const BASE_IMAGE = 'swarmd-test/node:latest';
const RUN_ID = randomUUID().slice(0, 8);
const IMAGE = `swarmd-test/swarmd:${RUN_ID}`;
const LABELS = { 'org.swarmd.test': 'true', 'org.swarmd.test.run': RUN_ID };

const probe = await probeDocker();

/** The address for the docker CLI: it wants unix:// in front of a bare socket path. */
function cliHost(host: string): string {
  return host.startsWith('/') ? `unix://${host}` : host;
}

function check(what: string, run: SpawnSyncReturns<string>): string {
  if (run.error) throw new Error(`${what}: ${run.error.message}`);
  if (run.status !== 0) throw new Error(`${what} failed (exit ${run.status}):\n${run.stdout}\n${run.stderr}`);
  return run.stdout;
}

function seconds(since: number): string {
  return `${((performance.now() - since) / 1000).toFixed(1)} s`;
}

/** `swarmd --help`, read from the source: its commands and the flags it documents. */
function swarmdHelp(): { commands: Set<string>; flags: Set<string> } {
  const help = check(
    'swarmd --help',
    spawnSync(process.execPath, [join(ROOT, 'cli/swarmd.ts'), '--help'], { encoding: 'utf8', timeout: 60_000 }),
  );
  const section = (title: string) => {
    const start = help.indexOf(`${title}:\n`);
    expect(start, `"${title}:" in swarmd --help`).toBeGreaterThanOrEqual(0);
    const rest = help.slice(start + title.length + 2);
    return rest.slice(0, rest.search(/\n\n|$/)).split('\n');
  };
  const commands = new Set(section('Commands').map((line) => line.trim().split(/\s+/)[0]!));
  const flags = new Set(
    section('Options').flatMap((line) => [...line.matchAll(/(?:^|[\s,])(--?[\w-]+)/g)].map((m) => m[1]!)),
  );
  return { commands, flags };
}

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  entrypoint?: string[];
  command?: string[];
  volumes?: string[];
  depends_on?: string[];
  [key: string]: unknown;
}

function loadCompose(): { services: Record<string, ComposeService>; volumes: Record<string, unknown> } {
  // merge: compose files share settings with YAML merge keys (<<: *node).
  return parseYaml(readFileSync(join(DOCKER_DIR, 'compose.yaml'), 'utf8'), { merge: true });
}

/** The value of `--flag VALUE` (or `--flag=VALUE`) in a command line. */
function flagValue(command: string[], flag: string): string | undefined {
  const index = command.findIndex((word) => word === flag || word.startsWith(`${flag}=`));
  if (index < 0) return undefined;
  const word = command[index]!;
  return word.includes('=') ? word.slice(word.indexOf('=') + 1) : command[index + 1];
}

describe('docker/compose.yaml', () => {
  const compose = loadCompose();
  const services = Object.entries(compose.services ?? {});
  const help = swarmdHelp();

  it('has one manager that runs swarmd init and two workers that run swarmd join', () => {
    const verbs = services.map(([, service]) => service.command?.slice(0, 2).join(' '));
    expect(verbs.filter((verb) => verb === 'swarmd init')).toHaveLength(1);
    expect(verbs.filter((verb) => verb === 'swarmd join')).toHaveLength(2);
    expect(services).toHaveLength(3);
  });

  it("uses only swarmd's commands and the flags swarmd --help documents", () => {
    expect(help.commands).toContain('init');
    expect(help.flags).toContain('--listen-addr');
    for (const [name, service] of services) {
      const command = service.command ?? [];
      expect(command[0], `${name}: command`).toBe('swarmd');
      expect(help.commands, `${name}: swarmd ${command[1]}`).toContain(command[1]);
      for (const word of command.slice(2).filter((w) => w.startsWith('-'))) {
        expect(help.flags, `${name}: ${word}`).toContain(word.split('=')[0]);
      }
    }
    // The flag compose-join.sh adds for the workers.
    const script = readFileSync(join(DOCKER_DIR, 'compose-join.sh'), 'utf8');
    expect(script).toContain('exec swarmd join --token "$token" "$@"');
    expect(help.flags).toContain('--token');
  });

  it('wires the workers to the manager: its advertised address, the token volume, the entry script', () => {
    const [managerName, manager] = services.find(([, service]) => service.command?.[1] === 'init')!;
    const advertised = flagValue(manager.command!, '--advertise-addr');
    expect(advertised).toBe(`${managerName}:2377`);
    for (const [name, service] of services) {
      expect(service.entrypoint, name).toEqual(['compose-join.sh']);
      expect(service.image, name).toBe(manager.image);
      expect(service.build?.dockerfile, name).toBe('docker/Dockerfile');
      expect(existsSync(resolve(DOCKER_DIR, service.build!.context, service.build!.dockerfile)), name).toBe(true);
      const volumes = service.volumes ?? [];
      expect(
        volumes.some((volume) => /^[\w-]+:\/data$/.test(volume)),
        `${name}: a data volume`,
      ).toBe(true);
      expect(
        volumes.some((volume) => /^join:\/shared(:ro)?$/.test(volume)),
        `${name}: the token volume`,
      ).toBe(true);
      for (const volume of volumes) expect(compose.volumes, volume).toHaveProperty(volume.split(':')[0]!);
      if (service.command?.[1] !== 'join') continue;
      expect(service.command.at(-1), `${name}: joins the manager`).toBe(advertised);
      expect(flagValue(service.command, '--advertise-addr'), name).toBe(`${name}:2377`);
      expect(service.depends_on, name).toContain(managerName);
    }
    // The image has the entry script on its PATH.
    expect(readFileSync(join(DOCKER_DIR, 'Dockerfile'), 'utf8')).toMatch(
      /^COPY .*docker\/compose-join\.sh \/usr\/local\/bin\/$/m,
    );
  });

  it('compose-join.sh is valid sh', () => {
    check(
      'sh -n docker/compose-join.sh',
      spawnSync('sh', ['-n', join(DOCKER_DIR, 'compose-join.sh')], { encoding: 'utf8' }),
    );
  });
});

describe('docker/swarmd.def (Apptainer; parsed only, no apptainer here)', () => {
  const text = readFileSync(join(DOCKER_DIR, 'swarmd.def'), 'utf8');
  const lines = text.split('\n');
  const firstSection = lines.findIndex((line) => line.startsWith('%'));
  const header = Object.fromEntries(
    lines
      .slice(0, firstSection)
      .map((line) => line.replace(/#.*/, '').trim())
      .filter(Boolean)
      .map((line) => {
        const match = /^(\w+):\s*(.+)$/.exec(line);
        expect(match, `header line "${line}"`).not.toBeNull();
        return [match![1]!.toLowerCase(), match![2]!];
      }),
  );
  const sections = new Map<string, string[]>();
  let current: string[] = [];
  for (const line of lines.slice(firstSection)) {
    const match = /^%(\w+)(?:\s+(\S+))?\s*$/.exec(line);
    if (match) {
      current = [];
      sections.set(match[2] ? `${match[1]} ${match[2]}` : match[1]!, current);
    } else if (line.trim() && !line.trim().startsWith('#')) {
      current.push(line.trim());
    }
  }

  it('has a header with a bootstrap agent and its base', () => {
    expect(['docker', 'docker-archive', 'localimage', 'oras', 'library']).toContain(header.bootstrap);
    expect(header.from).toMatch(/node:2[2-9]|node:[3-9]\d/);
  });

  it('has only sections Apptainer knows, each with a body', () => {
    const known = ['setup', 'files', 'post', 'environment', 'runscript', 'startscript', 'test', 'labels', 'help'];
    const appSections = ['apprun', 'appfiles', 'appenv', 'apphelp', 'applabels', 'appinstall', 'appsetup', 'apptest'];
    for (const [name, body] of sections) {
      const [kind] = name.split(' ');
      expect([...known, ...appSections], name).toContain(kind);
      expect(body.length, `%${name} is empty`).toBeGreaterThan(0);
    }
    for (const required of ['files', 'runscript', 'labels', 'help']) expect([...sections.keys()]).toContain(required);
  });

  it('runs swarmd from its runscript, and copies files that exist after npm run build', () => {
    expect(sections.get('runscript')!.join('\n')).toMatch(/^exec \S*swarmd "\$@"$/m);
    for (const line of sections.get('files')!) {
      const [source, destination] = line.split(/\s+/);
      expect(destination, line).toMatch(/^\//);
      // dist/ is the output of `npm run build`; the rest is in the repository.
      if (source !== 'dist') expect(existsSync(join(ROOT, source!)), source).toBe(true);
    }
    expect(sections.get('files')!.map((line) => line.split(/\s+/)[0])).toContain('dist');
  });
});

describeWithDocker('docker/Dockerfile on a real engine', probe, (docker) => {
  let work = '';
  const env = { ...process.env, DOCKER_HOST: cliHost(probe.host), DOCKER_BUILDKIT: '0' };
  let image: Docker.ImageInspectInfo;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'swarmd-packaging-'));
    let since = performance.now();
    check(
      'docker/images/node/build.sh',
      spawnSync('bash', [join(DOCKER_DIR, 'images/node/build.sh')], {
        encoding: 'utf8',
        env: { ...env, NODE: process.execPath, IMAGE: BASE_IMAGE },
      }),
    );
    console.log(`[packaging] base image ${BASE_IMAGE} ready in ${seconds(since)}`);

    // The build context: what docker/Dockerfile's runtime stages copy, and the bundle.
    const context = join(work, 'context');
    mkdirSync(join(context, 'docker'), { recursive: true });
    for (const path of ['bin', 'skel', 'compose-join.sh']) {
      cpSync(join(DOCKER_DIR, path), join(context, 'docker', path), { recursive: true });
    }
    since = performance.now();
    const prebuilt = process.env.SWARMD_TEST_DIST;
    if (prebuilt) {
      expect(statSync(join(prebuilt, 'swarmd.mjs')).isFile()).toBe(true);
      cpSync(prebuilt, join(context, 'dist'), { recursive: true });
    } else {
      try {
        await buildBundle(join(context, 'dist'));
      } catch (error) {
        throw new Error(`building the bundle (cli/build.ts, as npm run build) failed: ${(error as Error).message}`);
      }
    }
    console.log(`[packaging] bundle ready in ${seconds(since)}`);

    since = performance.now();
    check(
      'docker build',
      spawnSync(
        'docker',
        [
          'build',
          '--file',
          join(DOCKER_DIR, 'Dockerfile'),
          '--build-arg',
          `NODE_IMAGE=${BASE_IMAGE}`,
          '--target',
          'runtime-prebuilt',
          '--label',
          `org.swarmd.test.run=${RUN_ID}`,
          '--tag',
          IMAGE,
          context,
        ],
        { encoding: 'utf8', env, timeout: 300_000 },
      ),
    );
    console.log(`[packaging] docker build --target runtime-prebuilt: ${seconds(since)}`);
    image = await docker().getImage(IMAGE).inspect();
  }, 400_000);

  afterAll(async () => {
    const containers = await docker()
      .listContainers({ all: true, filters: { label: [`org.swarmd.test.run=${RUN_ID}`] } })
      .catch(() => []);
    for (const info of containers) {
      await docker()
        .getContainer(info.Id)
        .remove({ force: true, v: true })
        .catch(() => undefined);
    }
    for (const info of await docker()
      .listVolumes({ filters: { label: [`org.swarmd.test.run=${RUN_ID}`] } })
      .then((r) => r.Volumes ?? [])
      .catch(() => [])) {
      await docker()
        .getVolume(info.Name)
        .remove()
        .catch(() => undefined);
    }
    await docker()
      .getImage(IMAGE)
      .remove({ force: true })
      .catch(() => undefined);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('is a non-root image with swarmd as entry point, /data as volume, the mesh port and a health check', () => {
    const config = image.Config;
    expect(config.User).toBe('10001:10001');
    expect(config.Entrypoint).toEqual(['swarmd']);
    expect(Object.keys(config.Volumes ?? {})).toEqual(['/data']);
    expect(Object.keys(config.ExposedPorts ?? {})).toEqual(['2377/tcp']);
    expect(config.Env).toContain('SWARMD_DATA_DIR=/data');
    expect(config.Healthcheck?.Test?.[0]).toBe('CMD');
    expect(config.Healthcheck?.Test).toContain('swarm');
  });

  it('runs swarmd --help (exit 0) as uid 10001', async () => {
    const help = await runContainer(docker(), {
      Image: IMAGE,
      Cmd: ['--help'],
      Labels: LABELS,
      HostConfig: { NetworkMode: 'none' },
    });
    expect(help.stderr).toBe('');
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/^Usage: swarmd COMMAND/);
    const id = await runContainer(docker(), {
      Image: IMAGE,
      Entrypoint: ['sh', '-c', 'id -u; stat -c %u /data /shared'],
      Labels: LABELS,
      HostConfig: { NetworkMode: 'none' },
    });
    expect(id.stdout.split('\n').filter(Boolean)).toEqual(['10001', '10001', '10001']);
  });

  it("the health check's command fails while no daemon answers", async () => {
    const test = image.Config.Healthcheck!.Test!.slice(1);
    const run = await runContainer(docker(), {
      Image: IMAGE,
      Entrypoint: test,
      Labels: LABELS,
      HostConfig: { NetworkMode: 'none' },
    });
    expect(run.exitCode).not.toBe(0);
  });

  it('swarmd init becomes healthy by the image HEALTHCHECK', async () => {
    // The image's own test command; only the interval is shortened (15 s in the image) so the test need not wait.
    const healthcheck = { ...image.Config.Healthcheck, Interval: 1_000_000_000 };
    const container = await docker().createContainer({
      Image: IMAGE,
      Cmd: ['init'],
      Labels: LABELS,
      Healthcheck: healthcheck,
      HostConfig: { NetworkMode: 'none', Init: true },
    });
    await container.start();
    const since = performance.now();
    let state = (await container.inspect()).State;
    while (state.Health?.Status !== 'healthy' && performance.now() - since < 60_000) {
      expect(state.Running, 'the container is running').toBe(true);
      await new Promise((resolveWait) => setTimeout(resolveWait, 500));
      state = (await container.inspect()).State;
    }
    const output = demuxDockerLogs((await container.logs({ stdout: true, stderr: true })) as unknown as Buffer);
    const logs = output.stdout + output.stderr;
    expect(state.Health?.Status, `health after ${seconds(since)}; logs:\n${logs}`).toBe('healthy');
    console.log(`[packaging] swarmd init healthy after ${seconds(since)}`);
    expect(state.Health?.Log?.at(-1)?.Output).toMatch(/Role:\s+manager/);
    await container.stop({ t: 20 });
    expect((await container.inspect()).State.ExitCode, 'swarmd stops cleanly on SIGTERM').toBe(0);
  });

  it("compose.yaml's join flow: the manager publishes the worker token, two workers join with it", async () => {
    const { services } = loadCompose();
    const entries = Object.entries(services);
    const [managerName, manager] = entries.find(([, service]) => service.command?.[1] === 'init')!;
    const workers = entries.filter(([, service]) => service.command?.[1] === 'join');
    const volume = `swarmd-test-join-${RUN_ID}`;
    await docker().createVolume({ Name: volume, Labels: LABELS });
    const names = [managerName, ...workers.map(([name]) => name)];
    const start = async (name: string, command: string[], hostConfig: Docker.HostConfig, readOnly: boolean) => {
      const container = await docker().createContainer({
        name: `swarmd-test-${name}-${RUN_ID}`,
        Image: IMAGE,
        Entrypoint: manager.entrypoint!,
        Cmd: command,
        Labels: LABELS,
        HostConfig: { ...hostConfig, Init: true, Binds: [`${volume}:/shared${readOnly ? ':ro' : ''}`] },
      });
      await container.start();
      return container;
    };
    // One network namespace for all three (this engine has no bridge network): the service names resolve to
    // loopback, and each worker listens on a port of its own instead of 2377.
    const managerContainer = await start(
      managerName,
      manager.command!,
      { NetworkMode: 'none', ExtraHosts: names.map((name) => `${name}:127.0.0.1`) },
      false,
    );
    let port = 2377;
    for (const [name, service] of workers) {
      port += 1;
      const command = service.command!.map((word) =>
        word === '0.0.0.0:2377' || word === `${name}:2377` ? word.replace(':2377', `:${port}`) : word,
      );
      await start(name, command, { NetworkMode: `container:${managerContainer.id}` }, true);
    }
    const since = performance.now();
    let nodes: { status?: { state?: string } }[] = [];
    let last = '';
    while (performance.now() - since < 60_000) {
      const exec = await managerContainer.exec({
        Cmd: ['swarm', '--format', 'json', 'node', 'ls'],
        AttachStdout: true,
        AttachStderr: true,
      });
      const stream = await exec.start({});
      const chunks: Buffer[] = [];
      await new Promise<void>((resolveRead) => {
        stream.on('data', (chunk: Buffer) => chunks.push(chunk));
        stream.on('end', () => resolveRead());
      });
      const output = demuxDockerLogs(Buffer.concat(chunks));
      last = output.stdout + output.stderr;
      try {
        nodes = JSON.parse(output.stdout);
      } catch {
        nodes = [];
      }
      if (nodes.length === 3 && nodes.every((node) => node.status?.state === 'ready')) break;
      await new Promise((resolveWait) => setTimeout(resolveWait, 1000));
    }
    const logs = await Promise.all(
      names.map(async (name) => {
        const container = docker().getContainer(`swarmd-test-${name}-${RUN_ID}`);
        const output = demuxDockerLogs((await container.logs({ stdout: true, stderr: true })) as unknown as Buffer);
        return `--- ${name}\n${output.stdout}${output.stderr}`;
      }),
    );
    expect(
      nodes.map((node) => node.status?.state),
      `swarm node ls: ${last}\n${logs.join('\n')}`,
    ).toEqual(['ready', 'ready', 'ready']);
    console.log(`[packaging] manager and ${workers.length} workers ready after ${seconds(since)}`);
    expect(logs.join('\n')).toContain('compose-join: worker join token written to /shared/worker-token');
  });
});
