// Test helpers for suites that need a real Docker engine.
//
// Which engine: SWARMD_TEST_DOCKER_HOST (what .ci/run exports: its own throwaway dockerd), else DOCKER_HOST,
// else the default socket /var/run/docker.sock. Both `unix:///path` and `tcp://host:port` are understood.
//
// A suite that needs Docker is declared with describeWithDocker(). In CI (CI=true) a missing engine FAILS
// the suite with the reason, so a broken CI setup can never pass as "all skipped"; on a developer machine
// the suite is skipped with a message that says what is missing and how to provide it.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import Docker from 'dockerode';
import { describe, it } from 'vitest';

export const TEST_IMAGE = 'swarmd-test/busybox:latest';
const BUILD_SCRIPT = resolve(import.meta.dirname, '../../docker/images/busybox/build.sh');
const DEFAULT_SOCKET = '/var/run/docker.sock';

export interface DockerProbe {
  /** True when the engine answered the ping. */
  ok: boolean;
  /** Why it is not usable (when !ok), or which engine answered (when ok). */
  reason: string;
  /** The engine's address as configured, e.g. unix:///var/run/docker.sock. */
  host: string;
  /** Which variable named the host, or 'default'. */
  source: 'SWARMD_TEST_DOCKER_HOST' | 'DOCKER_HOST' | 'default';
  /** A client for that engine (no request timeout), set only when ok. */
  docker: Docker | undefined;
}

export function isCI(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CI === 'true';
}

function engineAddress(env: NodeJS.ProcessEnv): Pick<DockerProbe, 'host' | 'source'> {
  if (env.SWARMD_TEST_DOCKER_HOST) return { host: env.SWARMD_TEST_DOCKER_HOST, source: 'SWARMD_TEST_DOCKER_HOST' };
  if (env.DOCKER_HOST) return { host: env.DOCKER_HOST, source: 'DOCKER_HOST' };
  return { host: `unix://${DEFAULT_SOCKET}`, source: 'default' };
}

/** dockerode options for an address like unix:///run/docker.sock, /run/docker.sock or tcp://127.0.0.1:2375. */
export function dockerOptions(host: string, timeoutMs?: number): Docker.DockerOptions {
  const timeout = timeoutMs === undefined ? {} : { timeout: timeoutMs };
  if (host.startsWith('/')) return { socketPath: host, ...timeout };
  const url = new URL(host);
  if (url.protocol === 'unix:') return { socketPath: url.pathname, ...timeout };
  if (url.protocol === 'tcp:' || url.protocol === 'http:') {
    return { protocol: 'http', host: url.hostname, port: url.port || '2375', ...timeout };
  }
  if (url.protocol === 'https:') return { protocol: 'https', host: url.hostname, port: url.port || '2376', ...timeout };
  throw new Error(`unsupported Docker host ${host} (use unix:///path/to/docker.sock or tcp://host:port)`);
}

/** Pings the engine with a short timeout. Never throws: a missing engine is reported in `reason`. */
export async function probeDocker(options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<DockerProbe> {
  const env = options.env ?? process.env;
  const timeoutMs = options.timeoutMs ?? 3_000;
  const { host, source } = engineAddress(env);
  const where =
    source === 'default' ? `${host} (default; SWARMD_TEST_DOCKER_HOST and DOCKER_HOST unset)` : `${host} (${source})`;
  let pinger: Docker;
  try {
    pinger = new Docker(dockerOptions(host, timeoutMs));
  } catch (error) {
    return { ok: false, reason: `bad Docker host ${where}: ${message(error)}`, host, source, docker: undefined };
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    await Promise.race([pinger.ping(), deadline]);
    const version = await Promise.race([pinger.version(), deadline]);
    return {
      ok: true,
      reason: `Docker ${version.Version} (API ${version.ApiVersion}) at ${where}`,
      host,
      source,
      docker: new Docker(dockerOptions(host)),
    };
  } catch (error) {
    return { ok: false, reason: `no Docker engine at ${where}: ${message(error)}`, host, source, docker: undefined };
  } finally {
    clearTimeout(timer);
  }
}

function message(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !error.message.includes(code) ? `${code} ${error.message}` : error.message;
  }
  return String(error);
}

/**
 * Declares a suite that needs a Docker engine (probe it once per file with `await probeDocker()`).
 * - engine answers: the suite runs; `docker()` returns the client.
 * - no engine, CI=true: the suite fails: one test, "has a Docker engine", fails with the probe's reason, and the
 *   suite's own tests are listed as skipped under "not run without an engine".
 * - no engine, outside CI: the whole suite is skipped and a message says what is missing.
 */
export function describeWithDocker(name: string, probe: DockerProbe, body: (docker: () => Docker) => void): void {
  const skip = !probe.ok && !isCI();
  if (skip) {
    console.warn(
      `[docker] skipping "${name}": ${probe.reason}.\n` +
        '[docker] To run it: start a Docker engine and point SWARMD_TEST_DOCKER_HOST (or DOCKER_HOST) at it, ' +
        'e.g. SWARMD_TEST_DOCKER_HOST=unix:///var/run/docker.sock; or run .ci/run, which starts its own dockerd. ' +
        'In CI (CI=true) this suite fails instead of skipping.',
    );
  }
  const docker = (): Docker => {
    if (!probe.docker) throw new Error(`no Docker engine: ${probe.reason}`);
    return probe.docker;
  };
  describe.skipIf(skip)(name, () => {
    if (probe.ok || skip) {
      body(docker);
      return;
    }
    // CI without an engine. A failing beforeAll would only mark the tests skipped, so fail a test of our own
    // (the totals then count it), and list the suite's tests, not run, beside it.
    it('has a Docker engine', () => {
      throw new Error(`CI=true and this suite needs a Docker engine: ${probe.reason}`);
    });
    describe.skipIf(true)('not run without an engine', () => body(docker));
  });
}

/**
 * Makes sure swarmd-test/busybox:latest exists on the engine, building it with docker/images/busybox/build.sh
 * (needs Debian's busybox-static) when it is missing.
 */
export async function ensureTestImage(docker: Docker, host: string): Promise<void> {
  try {
    await docker.getImage(TEST_IMAGE).inspect();
    return;
  } catch {
    // Missing: build it below.
  }
  const build = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', env: { ...process.env, DOCKER_HOST: host } });
  if (build.status !== 0) {
    throw new Error(
      `${TEST_IMAGE} is missing and ${BUILD_SCRIPT} failed (exit ${build.status}):\n${build.stdout}${build.stderr}`,
    );
  }
}

export interface ContainerRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Splits Docker's multiplexed log stream (8-byte frame headers: stream, 0, 0, 0, big-endian length). */
export function demuxDockerLogs(raw: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let offset = 0;
  while (offset + 8 <= raw.length) {
    const stream = raw[offset];
    const length = raw.readUInt32BE(offset + 4);
    const payload = raw.subarray(offset + 8, offset + 8 + length);
    (stream === 2 ? err : out).push(payload);
    offset += 8 + length;
  }
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/**
 * Creates a container, runs it to completion and returns its exit code and output. The container is always
 * removed, whatever happens. Tty is forced off so stdout and stderr stay apart.
 */
export async function runContainer(docker: Docker, spec: Docker.ContainerCreateOptions): Promise<ContainerRun> {
  const container = await docker.createContainer({
    ...spec,
    Tty: false,
    Labels: { 'org.swarmd.test': 'true', ...spec.Labels },
  });
  try {
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    const logs = (await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    return { exitCode: StatusCode, ...demuxDockerLogs(logs) };
  } finally {
    await container.remove({ force: true, v: true }).catch(() => undefined);
  }
}

/** Force-removes every container a swarmd task left on the engine (a test or bench that stopped half way). */
export async function removeTaskContainers(docker: Docker): Promise<void> {
  const left = await docker.listContainers({ all: true, filters: { label: ['swarmd.task.id'] } });
  await Promise.all(
    left.map((c) =>
      docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => {}),
    ),
  );
}
