// The service spec schema (defaults, refusals naming the field), the unit parsers, and the `swarm service`
// commands end to end against in-memory handlers over a real unix socket.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { waitForConvergence } from '../../cli/commands/service-progress.ts';
import { ApiClient, ApiClientError } from '../../daemon/api/client.ts';
import type { ControlHandlers, ServiceLogLine, ServiceLogOptions } from '../../daemon/api/handlers.ts';
import { resolveNodeRef } from '../../daemon/api/node-ref.ts';
import { checkBody, parseBody } from '../../daemon/api/schemas.ts';
import { type ApiServer, startApiServer } from '../../daemon/api/server.ts';
import { resolveServiceRef } from '../../daemon/api/service-ref.ts';
import { parseConstraint, type ServiceUpdate, serviceSpecSchema } from '../../daemon/api/service-schema.ts';
import type { Service, ServiceSpec, Task, TaskState } from '../../daemon/api/services.ts';
import type { JoinTokens, SwarmInfo, SwarmNode } from '../../daemon/api/types.ts';
import { parseBytes, parseCpus, parseDuration } from '../../daemon/api/units.ts';
import { storedService, swarmNode } from '../helpers/fixtures.ts';
import { runSwarm } from '../helpers/swarm-cli.ts';

// ---------------------------------------------------------------- schema

const DEFAULT_TASK: Omit<ServiceSpec['task'], 'runtime'> = {
  image: '',
  command: [],
  args: [],
  env: {},
  workdir: null,
  user: null,
  labels: {},
  mounts: [],
  resources: {
    reservations: { nanoCpus: 0, memoryBytes: 0, gpus: 0 },
    limits: { nanoCpus: 0, memoryBytes: 0, pids: 0 },
  },
  restart: { condition: 'any', delayMs: 5000, maxAttempts: 0, windowMs: 0 },
  placement: { constraints: [], spread: [], maxReplicasPerNode: 0 },
  stopSignal: 'SIGTERM',
  stopGracePeriodMs: 10_000,
  healthcheck: null,
  forceUpdate: 0,
};

// swarmkit api/defaults/service.go: parallelism 1, no delay, pause on failure, 5 s monitor, no failure tolerated.
const SWARM_ROLLOUT = {
  parallelism: 1,
  delayMs: 0,
  failureAction: 'pause',
  monitorMs: 5000,
  maxFailureRatio: 0,
  order: 'stop-first',
} as const;
const DEFAULT_UPDATE = { ...SWARM_ROLLOUT, canary: 0, autoPromote: false };

function problem(body: unknown): string {
  try {
    parseBody(serviceSpecSchema, body);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('the spec was accepted');
}

const docker = (task: Record<string, unknown> = {}, rest: Record<string, unknown> = {}) => ({
  name: 'web',
  ...rest,
  task: { runtime: 'docker', image: 'nginx:1.27', ...task },
});

describe('serviceSpecSchema', () => {
  it("fills in Docker Swarm's defaults", () => {
    const spec = parseBody(serviceSpecSchema, { name: 'web', task: { runtime: 'process', command: ['/bin/sleep'] } });
    expect(spec).toEqual({
      name: 'web',
      labels: {},
      mode: { kind: 'replicated', replicas: 1 },
      task: { ...DEFAULT_TASK, runtime: 'process', command: ['/bin/sleep'] },
      update: DEFAULT_UPDATE,
      rollback: SWARM_ROLLOUT,
      endpoint: { ports: [], algorithm: 'round-robin' },
    } satisfies ServiceSpec);
    expect(
      parseBody(serviceSpecSchema, docker({}, { mode: { kind: 'replicated-job', maxConcurrent: 4 } })).mode,
    ).toEqual({
      kind: 'replicated-job',
      maxConcurrent: 4,
      totalCompletions: 4,
    });
    expect(parseBody(serviceSpecSchema, docker({}, { mode: { kind: 'replicated-job' } })).mode).toEqual({
      kind: 'replicated-job',
      maxConcurrent: 1,
      totalCompletions: 1,
    });
    expect(parseBody(serviceSpecSchema, docker({}, { mode: { kind: 'global' } })).mode).toEqual({ kind: 'global' });
  });

  it('takes sizes and durations as numbers or docker-style strings, and normalizes signals and attributes', () => {
    const spec = parseBody(
      serviceSpecSchema,
      docker({
        resources: { reservations: { memoryBytes: '256m' }, limits: { memoryBytes: 1073741824, nanoCpus: 5e8 } },
        restart: { delayMs: '1m30s', windowMs: 2000 },
        stopSignal: 'int',
        stopGracePeriodMs: '500ms',
        placement: { constraints: ['node.role!=manager'], spread: ['Node.Labels.rack'] },
      }),
    );
    expect(spec.task.resources).toEqual({
      reservations: { nanoCpus: 0, memoryBytes: 256 * 1024 ** 2, gpus: 0 },
      limits: { nanoCpus: 5e8, memoryBytes: 1024 ** 3, pids: 0 },
    });
    expect(spec.task.restart).toEqual({ condition: 'any', delayMs: 90_000, maxAttempts: 0, windowMs: 2000 });
    expect(spec.task.stopSignal).toBe('SIGINT');
    expect(spec.task.stopGracePeriodMs).toBe(500);
    expect(spec.task.placement.spread).toEqual(['node.labels.rack']);
    // What the API hands back can be sent back unchanged (scale and update do exactly that).
    expect(parseBody(serviceSpecSchema, spec)).toEqual(spec);
  });

  it.each([
    [
      'unknown runtime',
      docker({ runtime: 'podman' }),
      'task.runtime: unknown runtime "podman": must be one of docker, singularity, process',
    ],
    ['missing runtime', { name: 'web', task: { image: 'x' } }, 'task.runtime: is required'],
    [
      'negative replicas',
      docker({}, { mode: { kind: 'replicated', replicas: -1 } }),
      'mode.replicas: must not be negative',
    ],
    [
      'fractional replicas',
      docker({}, { mode: { kind: 'replicated', replicas: 1.5 } }),
      'mode.replicas: must be a whole number of replicas',
    ],
    [
      'unknown mode',
      docker({}, { mode: { kind: 'daemonset' } }),
      'mode.kind: unknown mode: must be one of replicated, global, replicated-job, global-job',
    ],
    [
      'job with no concurrency',
      docker({}, { mode: { kind: 'replicated-job', maxConcurrent: 0 } }),
      'mode.maxConcurrent: must be at least 1',
    ],
    [
      'job with no completions',
      docker({}, { mode: { kind: 'replicated-job', totalCompletions: 0 } }),
      'mode.totalCompletions: must be at least 1',
    ],
    [
      'replicas on a global service',
      docker({}, { mode: { kind: 'global', replicas: 2 } }),
      'mode.replicas: unknown field',
    ],
    [
      'malformed constraint',
      docker({ placement: { constraints: ['node.role==manager', 'zone=edge'] } }),
      'task.placement.constraints[1]: invalid constraint "zone=edge": expected KEY==VALUE or KEY!=VALUE',
    ],
    [
      'constraint on an unknown attribute',
      docker({ placement: { constraints: ['node.rack==a'] } }),
      'task.placement.constraints[0]: invalid constraint "node.rack==a": unknown attribute "node.rack"',
    ],
    [
      'memory "12XB"',
      docker({ resources: { limits: { memoryBytes: '12XB' } } }),
      'task.resources.limits.memoryBytes: invalid memory value "12XB": unknown unit "XB"',
    ],
    [
      'negative memory',
      docker({ resources: { reservations: { memoryBytes: -1 } } }),
      'task.resources.reservations.memoryBytes: must be a whole, non-negative number of bytes',
    ],
    [
      'tiny memory limit',
      docker({ resources: { limits: { memoryBytes: '1k' } } }),
      'task.resources.limits.memoryBytes: must be at least 4MiB (or 0 for none)',
    ],
    [
      'negative CPUs',
      docker({ resources: { limits: { nanoCpus: -5 } } }),
      'task.resources.limits.nanoCpus: must not be negative',
    ],
    [
      'reservation above the limit',
      docker({ resources: { reservations: { memoryBytes: '2g' }, limits: { memoryBytes: '1g' } } }),
      'task.resources.reservations.memoryBytes: must not exceed the memory limit',
    ],
    [
      'missing image for docker',
      { name: 'web', task: { runtime: 'docker' } },
      'task.image: is required for the docker runtime',
    ],
    [
      'missing image for singularity',
      { name: 'web', task: { runtime: 'singularity', command: ['x'] } },
      'task.image: is required for the singularity runtime',
    ],
    [
      'missing program for process',
      { name: 'web', task: { runtime: 'process' } },
      'task.command: is required for the process runtime',
    ],
    [
      'image for process',
      { name: 'web', task: { runtime: 'process', image: 'x', command: ['y'] } },
      'task.image: the process runtime runs no image',
    ],
    ['bad service name', docker({}, { name: '-web' }), 'name: invalid service name'],
    ['long service name', docker({}, { name: 'a'.repeat(64) }), 'name: invalid service name'],
    ['missing name', { task: { runtime: 'docker', image: 'x' } }, 'name: is required'],
    ['bad env key', docker({ env: { 'MY VAR': 'x' } }), 'task.env["MY VAR"]: invalid environment variable name'],
    ['bad label key', docker({}, { labels: { '-x': '1' } }), 'labels["-x"]: invalid label key'],
    ['relative workdir', docker({ workdir: 'srv' }), 'task.workdir: must be an absolute path'],
    [
      'relative mount target',
      docker({ mounts: [{ type: 'volume', target: 'data' }] }),
      'task.mounts[0].target: must be an absolute path',
    ],
    [
      'relative bind source',
      docker({ mounts: [{ type: 'bind', source: 'srv', target: '/data' }] }),
      'task.mounts[0].source: must be an absolute path for a bind mount',
    ],
    [
      'bind without source',
      docker({ mounts: [{ type: 'bind', target: '/data' }] }),
      'task.mounts[0].source: is required for a bind mount',
    ],
    [
      'tmpfs with a source',
      docker({ mounts: [{ type: 'tmpfs', source: '/x', target: '/tmp' }] }),
      'task.mounts[0].source: a tmpfs mount has no source',
    ],
    [
      'unknown mount type',
      docker({ mounts: [{ type: 'npipe', target: '/x' }] }),
      'task.mounts[0].type: must be one of: bind, volume, tmpfs',
    ],
    [
      'duplicate mount target',
      docker({
        mounts: [
          { type: 'tmpfs', target: '/x' },
          { type: 'volume', target: '/x' },
        ],
      }),
      'task.mounts[1].target: duplicate mount point /x',
    ],
    ['unknown signal', docker({ stopSignal: 'SIGFOO' }), 'task.stopSignal: unknown signal "SIGFOO"'],
    ['bad duration', docker({ restart: { delayMs: '5' } }), 'task.restart.delayMs: invalid duration "5": missing unit'],
    [
      'unknown restart condition',
      docker({ restart: { condition: 'always' } }),
      'task.restart.condition: must be one of: none, on-failure, any',
    ],
    ['unknown field', docker({ privileged: true }), 'task.privileged: unknown field'],
  ])('refuses %s, naming the field', (_name, body, message) => {
    expect(problem(body)).toContain(message);
  });

  it('reports the field path in checkBody, for the CLI to map onto its flags', () => {
    const result = checkBody(serviceSpecSchema, docker({ resources: { limits: { memoryBytes: '12XB' } } }));
    expect(result).toMatchObject({ ok: false, problem: { path: ['task', 'resources', 'limits', 'memoryBytes'] } });
  });
});

describe('parseConstraint', () => {
  it.each([
    ['node.labels.zone==edge', { attribute: 'node.labels.zone', op: '==', value: 'edge' }],
    ['Node.Role != manager', { attribute: 'node.role', op: '!=', value: 'manager' }],
    ['node.labels.Rack==A1', { attribute: 'node.labels.Rack', op: '==', value: 'A1' }],
    ['node.platform.os==linux', { attribute: 'node.platform.os', op: '==', value: 'linux' }],
    ['node.platform.arch!=arm64', { attribute: 'node.platform.arch', op: '!=', value: 'arm64' }],
    ['node.hostname==edge-1', { attribute: 'node.hostname', op: '==', value: 'edge-1' }],
    ['node.id==abc123', { attribute: 'node.id', op: '==', value: 'abc123' }],
  ])('parses %s', (text, expected) => {
    expect(parseConstraint(text)).toEqual(expected);
  });

  it.each([
    ['zone=edge', 'expected KEY==VALUE or KEY!=VALUE'],
    ['node.rack==a', 'unknown attribute "node.rack"'],
    ['==edge', 'unknown attribute ""'],
    ['node.role==', 'missing value after the operator'],
    ['node.labels.==x', 'missing label name'],
    ['node.labels.my zone==x', 'invalid label name "my zone"'],
    ['node.role==a==b', 'only one == or != per constraint'],
  ])('refuses %s, naming the constraint', (text, reason) => {
    expect(() => parseConstraint(text)).toThrow(`invalid constraint "${text}": ${reason}`);
  });
});

describe('units', () => {
  it.each([
    ['1024', 1024],
    ['0', 0],
    ['512m', 512 * 1024 ** 2],
    ['1.5G', 1.5 * 1024 ** 3],
    ['10 MiB', 10 * 1024 ** 2],
    ['1kb', 1024],
    ['1KiB', 1024],
    ['2t', 2 * 1024 ** 4],
    ['7b', 7],
    ['1.5b', 1],
  ])('parseBytes(%j) = %d', (text, bytes) => {
    expect(parseBytes(text)).toBe(bytes);
  });

  it.each([
    ['12XB', 'invalid memory value "12XB": unknown unit "XB"'],
    ['1ki', 'unknown unit "ki"'],
    ['1kbb', 'unknown unit "kbb"'],
    ['', 'invalid memory value ""'],
    ['m', 'invalid memory value "m"'],
    ['-1m', 'invalid memory value "-1m"'],
    ['1  m', 'invalid memory value "1  m"'],
    ['1e3', 'invalid memory value "1e3": expected a number of bytes'],
  ])('parseBytes(%j) throws', (text, message) => {
    expect(() => parseBytes(text)).toThrow(message);
  });

  it.each([
    ['0.5', 500_000_000],
    ['2', 2_000_000_000],
    ['.25', 250_000_000],
    ['0.000000001', 1],
    ['1.500000000000', 1_500_000_000],
  ])('parseCpus(%j) = %d', (text, nano) => {
    expect(parseCpus(text)).toBe(nano);
  });

  it.each([
    ['abc', 'expected a number of CPUs'],
    ['-1', 'expected a number of CPUs'],
    ['', 'expected a number of CPUs'],
    ['0.0000000001', 'too precise'],
  ])('parseCpus(%j) throws', (text, message) => {
    expect(() => parseCpus(text)).toThrow(`invalid CPU value "${text}": ${message}`);
  });

  it.each([
    ['10s', 10_000],
    ['1m30s', 90_000],
    ['500ms', 500],
    ['1h', 3_600_000],
    ['2h45m', 9_900_000],
    ['1.5s', 1500],
    ['0', 0],
    ['+3s', 3000],
    ['1500us', 2],
    ['100ns', 0],
  ])('parseDuration(%j) = %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    ['5', 'missing unit after 5'],
    ['-1s', 'must not be negative'],
    ['1x', 'unknown unit "x"'],
    ['1d', 'unknown unit "d"'],
    ['', 'expected a duration'],
    ['s', 'expected a duration'],
    ['1s2', 'missing unit after 2'],
  ])('parseDuration(%j) throws', (text, message) => {
    expect(() => parseDuration(text)).toThrow(`invalid duration "${text}": ${message}`);
  });
});

// ---------------------------------------------------------------- CLI against a fake manager

const NODE_A = 'aaaa1111aaaa1111aaaa1111aaaa1111';
const NODE_B = 'bbbb2222bbbb2222bbbb2222bbbb2222';

function makeService(id: string, spec: ServiceSpec): Service {
  return storedService(id, spec, '2026-01-01T00:00:00.000Z', 10);
}

const ago = (ms: number) => new Date(Date.now() - ms).toISOString();

function makeTask(service: Service, id: string, fields: Partial<Task> & { state?: TaskState; since?: string }): Task {
  const { state = 'running', since = ago(5_500), ...rest } = fields;
  return {
    id,
    serviceId: service.id,
    serviceName: service.spec.name,
    slot: 1,
    nodeId: NODE_A,
    specVersion: 1,
    template: service.spec.task,
    desiredState: 'running',
    status: { state, since, message: '' },
    devices: [],
    attempt: 0,
    version: 1,
    createdAt: since,
    updatedAt: since,
    ...rest,
  };
}

const spec = (name: string, mode: ServiceSpec['mode'], task: Record<string, unknown>) =>
  parseBody(serviceSpecSchema, { name, mode, task });

/** Fake manager: services and tasks in memory, every call recorded. New replicated services start running. */
class FakeHandlers implements ControlHandlers {
  services: Service[] = [];
  tasks: Task[] = [];
  calls: { method: string; args: unknown[] }[] = [];
  nodes = [swarmNode(NODE_A, 'edge-1'), swarmNode(NODE_B, 'edge-2')];
  logLines: ServiceLogLine[] = [];
  /** Thrown after the log lines, as a failure half-way through a stream. */
  logFailure: Error | undefined;
  #next = 0;

  reset(): void {
    this.calls = [];
    this.#next = 0;
    this.logFailure = undefined;
    const web = makeService(
      'web0000000000000000000000000001',
      spec(
        'web',
        { kind: 'replicated', replicas: 3 },
        { runtime: 'process', command: ['/usr/bin/python3'], args: ['-m', 'http.server'] },
      ),
    );
    const agent = makeService(
      'agt0000000000000000000000000002',
      spec('agent', { kind: 'global' }, { runtime: 'docker', image: 'registry.local/agent:2' }),
    );
    const batch = makeService(
      'bat0000000000000000000000000003',
      spec(
        'batch',
        { kind: 'replicated-job', maxConcurrent: 2, totalCompletions: 10 },
        { runtime: 'singularity', image: '/sif/batch.sif' },
      ),
    );
    this.services = [web, agent, batch];
    this.tasks = [
      makeTask(web, 'task-web-1-new-aaaaaaaaaaaa', { slot: 1, nodeId: NODE_A }),
      makeTask(web, 'task-web-1-old-bbbbbbbbbbbb', {
        slot: 1,
        nodeId: NODE_B,
        desiredState: 'shutdown',
        state: 'failed',
        since: ago(190_000),
        status: { state: 'failed', since: ago(190_000), message: 'exited', error: 'task: non-zero exit (1)' },
      }),
      makeTask(web, 'task-web-2-cccccccccccccccc', { slot: 2, nodeId: NODE_B }),
      makeTask(web, 'task-web-3-dddddddddddddddd', {
        slot: 3,
        nodeId: null,
        status: {
          state: 'pending',
          since: ago(5_500),
          message: '',
          pendingReason: 'no suitable node (insufficient memory on 2 nodes)',
        },
      }),
      makeTask(agent, 'task-agent-a-eeeeeeeeeeeeee', { slot: 0, nodeId: NODE_A }),
      makeTask(agent, 'task-agent-b-ffffffffffffff', { slot: 0, nodeId: NODE_B }),
      makeTask(batch, 'task-batch-1-gggggggggggggg', { slot: 1, state: 'complete', desiredState: 'complete' }),
      makeTask(batch, 'task-batch-2-hhhhhhhhhhhhhh', { slot: 2 }),
    ];
    this.logLines = [
      {
        taskId: 'task-web-1-new-aaaaaaaaaaaa',
        slot: 1,
        nodeId: NODE_A,
        stream: 'stdout',
        time: '2026-01-01T00:00:01.000Z',
        line: 'serving on 8000',
      },
      {
        taskId: 'task-web-2-cccccccccccccccc',
        slot: 2,
        nodeId: NODE_B,
        stream: 'stderr',
        time: '2026-01-01T00:00:02.000Z',
        line: 'GET / 200',
      },
    ];
  }

  #record(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
  }

  async info(): Promise<SwarmInfo> {
    throw new Error('not used');
  }
  async listNodes(): Promise<SwarmNode[]> {
    this.#record('listNodes');
    return this.nodes;
  }
  async getNode(ref: string): Promise<SwarmNode> {
    return resolveNodeRef(this.nodes, ref);
  }
  async updateNode(): Promise<SwarmNode> {
    throw new Error('not used');
  }
  async promoteNode(): Promise<SwarmNode> {
    throw new Error('not used');
  }
  async demoteNode(): Promise<SwarmNode> {
    throw new Error('not used');
  }
  async removeNode(): Promise<void> {}
  async joinTokens(): Promise<JoinTokens> {
    return { worker: 'w', manager: 'm' };
  }
  async rotateJoinToken(): Promise<JoinTokens> {
    return { worker: 'w', manager: 'm' };
  }
  async leave(): Promise<void> {}

  async createService(created: ServiceSpec): Promise<Service> {
    this.#record('createService', created);
    this.#next += 1;
    const service = makeService(`new${String(this.#next).padStart(29, '0')}`, created);
    this.services.push(service);
    if (created.mode.kind === 'replicated') {
      for (let slot = 1; slot <= created.mode.replicas; slot += 1) {
        this.tasks.push(makeTask(service, `${service.id}-task-${slot}`, { slot }));
      }
    }
    return service;
  }
  async listServices(): Promise<Service[]> {
    this.#record('listServices');
    return this.services;
  }
  async getService(ref: string): Promise<Service> {
    this.#record('getService', ref);
    return resolveServiceRef(this.services, ref);
  }
  async updateService(ref: string, update: ServiceUpdate): Promise<Service> {
    this.#record('updateService', ref, update);
    const service = resolveServiceRef(this.services, ref);
    const updated = { ...service, spec: update.spec, version: service.version + 1 };
    this.services = this.services.map((s) => (s === service ? updated : s));
    return updated;
  }
  async removeService(ref: string): Promise<void> {
    this.#record('removeService', ref);
    const service = resolveServiceRef(this.services, ref);
    this.services = this.services.filter((s) => s !== service);
  }
  async listTasks(filter: { service?: string; node?: string }): Promise<Task[]> {
    this.#record('listTasks', filter);
    const service = filter.service ? resolveServiceRef(this.services, filter.service) : undefined;
    return this.tasks.filter((task) => !service || task.serviceId === service.id);
  }
  async *serviceLogs(ref: string, options: ServiceLogOptions): AsyncIterable<ServiceLogLine> {
    this.#record('serviceLogs', ref, { follow: options.follow, tail: options.tail });
    resolveServiceRef(this.services, ref);
    yield* this.logLines;
    if (this.logFailure) throw this.logFailure;
  }
}

let dir: string;
let socketPath: string;
let server: ApiServer;
const handlers = new FakeHandlers();

function swarm(args: string[], env: Record<string, string | undefined> = {}) {
  return runSwarm(socketPath, args, env);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'swarm-service-'));
  socketPath = join(dir, 'swarmd.sock');
  server = await startApiServer({ socketPath, handlers, log: { error: () => {} } });
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => handlers.reset());

const created = () => handlers.calls.find((call) => call.method === 'createService')?.args[0] as ServiceSpec;

describe('swarm service create', () => {
  it('sends the spec a typical process command line describes, and prints the ID', async () => {
    const line = [
      'service create -d --name web --replicas 3',
      '-e PORT=8000 --env OPTS=a=b -e HOME --label team=ops --container-label tier',
      '--constraint node.labels.zone==edge --constraint node.role!=manager',
      '--placement-pref spread=node.labels.rack --replicas-max-per-node 2',
      '--reserve-cpu 0.5 --reserve-memory 256m --limit-cpu 1 --limit-memory 1g --limit-pids 100 --gpus 1',
      '--restart-condition on-failure --restart-delay 10s --restart-max-attempts 3 --restart-window 1m30s',
      '--stop-signal INT --stop-grace-period 30s',
      '--mount type=bind,source=/srv/www,target=/data,readonly --mount type=tmpfs,dst=/scratch',
      '-w /srv/www -u 1000:1000',
      '-- /usr/bin/python3 -m http.server 8000',
    ].join(' ');
    const { code, stdout, stderr } = await swarm(line.split(' '), { HOME: '/home/op' });
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe('new00000000000000000000000000001\n');
    expect(created()).toEqual({
      name: 'web',
      labels: { team: 'ops' },
      mode: { kind: 'replicated', replicas: 3 },
      task: {
        runtime: 'process',
        image: '',
        command: ['/usr/bin/python3'],
        args: ['-m', 'http.server', '8000'],
        env: { PORT: '8000', OPTS: 'a=b', HOME: '/home/op' },
        workdir: '/srv/www',
        user: '1000:1000',
        labels: { tier: '' },
        mounts: [
          { type: 'bind', source: '/srv/www', target: '/data', readOnly: true },
          { type: 'tmpfs', target: '/scratch', readOnly: false },
        ],
        resources: {
          reservations: { nanoCpus: 500_000_000, memoryBytes: 256 * 1024 ** 2, gpus: 1 },
          limits: { nanoCpus: 1_000_000_000, memoryBytes: 1024 ** 3, pids: 100 },
        },
        restart: { condition: 'on-failure', delayMs: 10_000, maxAttempts: 3, windowMs: 90_000 },
        placement: {
          constraints: ['node.labels.zone==edge', 'node.role!=manager'],
          spread: ['node.labels.rack'],
          maxReplicasPerNode: 2,
        },
        stopSignal: 'SIGINT',
        stopGracePeriodMs: 30_000,
        healthcheck: null,
        forceUpdate: 0,
      },
      update: DEFAULT_UPDATE,
      rollback: SWARM_ROLLOUT,
      endpoint: { ports: [], algorithm: 'round-robin' },
    } satisfies ServiceSpec);
  });

  it('takes IMAGE then the command line untouched for docker, flags included', async () => {
    const { code } = await swarm([
      'service',
      'create',
      '-d',
      '--runtime',
      'docker',
      '--name',
      'nginx',
      'nginx:1.27',
      'nginx',
      '-g',
      'daemon off;',
    ]);
    expect(code).toBe(0);
    expect(created().task).toMatchObject({
      runtime: 'docker',
      image: 'nginx:1.27',
      command: [],
      args: ['nginx', '-g', 'daemon off;'],
    });
  });

  it('defaults to the process runtime, one replica, and a name derived from the program', async () => {
    const { code } = await swarm(['service', 'create', '-d', 'sleep', 'infinity']);
    expect(code).toBe(0);
    expect(created().mode).toEqual({ kind: 'replicated', replicas: 1 });
    expect(created().task).toMatchObject({ runtime: 'process', command: ['sleep'], args: ['infinity'] });
    expect(created().name).toMatch(/^sleep-[0-9a-f]{6}$/);
  });

  it('maps job flags the way docker does', async () => {
    await swarm(['service', 'create', '-d', '--mode', 'replicated-job', '--replicas', '5', '--name', 'job', 'true']);
    expect(created().mode).toEqual({ kind: 'replicated-job', maxConcurrent: 5, totalCompletions: 5 });
    handlers.reset();
    await swarm([
      'service',
      'create',
      '-d',
      '--mode',
      'replicated-job',
      '--max-concurrent',
      '2',
      '--total-completions',
      '8',
      'true',
    ]);
    expect(created().mode).toEqual({ kind: 'replicated-job', maxConcurrent: 2, totalCompletions: 8 });
    handlers.reset();
    await swarm(['service', 'create', '-d', '--mode', 'global', 'true']);
    expect(created().mode).toEqual({ kind: 'global' });
  });

  it('without --detach, waits and shows progress until the service converges', async () => {
    const { code, stdout, stderr } = await swarm(['service', 'create', '--name', 'api', '--replicas', '2', 'true']);
    expect(code).toBe(0);
    expect(stdout).toBe('new00000000000000000000000000001\n');
    expect(stderr).toBe('api: 2/2 running\napi: converged\n');
  });

  it.each([
    [['--limit-memory', '12XB'], 'invalid --limit-memory "12XB": unknown unit "XB"; expected a number of bytes'],
    [
      ['--runtime', 'podman'],
      'invalid --runtime "podman": unknown runtime; must be one of docker, singularity, process',
    ],
    [['--replicas=-1'], 'invalid --replicas "-1": must not be negative'],
    [['--replicas', 'three'], 'invalid --replicas "three": must be a whole number'],
    [
      ['--constraint', 'node.role=manager'],
      'invalid --constraint "node.role=manager": expected KEY==VALUE or KEY!=VALUE',
    ],
    [['--constraint', 'node.rack==a'], 'invalid --constraint "node.rack==a": unknown attribute "node.rack"'],
    [
      ['--placement-pref', 'pack=node.labels.rack'],
      'invalid --placement-pref "pack=node.labels.rack": expected spread=',
    ],
    [['--limit-cpu', 'lots'], 'invalid --limit-cpu "lots": expected a number of CPUs'],
    [['--restart-delay', '5'], 'invalid --restart-delay "5": missing unit after 5'],
    [['--restart-condition', 'always'], 'invalid --restart-condition "always": must be one of: none, on-failure, any'],
    [['--stop-signal', 'NOPE'], 'invalid --stop-signal "NOPE": unknown signal "NOPE"'],
    [
      ['--mount', 'type=bind,source=srv,target=/data'],
      'invalid --mount "type=bind,source=srv,target=/data": must be an absolute path for a bind mount',
    ],
    [['--mount', 'type=bind,source=/srv'], 'invalid --mount "type=bind,source=/srv": target is required'],
    [
      ['--mount', 'type=bind,src=/a,target=/b,propagation=shared'],
      'invalid --mount "type=bind,src=/a,target=/b,propagation=shared": unknown key "propagation"',
    ],
    [['-e', 'MY VAR=1'], 'invalid --env "MY VAR=1": invalid environment variable name'],
    [['-e', 'UNSET_HERE'], 'invalid --env "UNSET_HERE": expected KEY=VALUE (UNSET_HERE is not set here to copy)'],
    [['--label', '=x'], 'invalid --label "=x": expected key=value'],
    [['--name', 'bad name'], 'invalid --name "bad name": invalid service name'],
    [['--workdir', 'srv'], 'invalid --workdir "srv": must be an absolute path'],
    [
      ['--mode', 'daemonset'],
      'invalid --mode "daemonset": must be one of replicated, global, replicated-job, global-job',
    ],
    [
      ['--mode', 'global', '--replicas', '2'],
      '--replicas can only be used with replicated or replicated-job mode, not global',
    ],
    [['--max-concurrent', '2'], '--max-concurrent can only be used with replicated-job mode, not replicated'],
    [
      ['--reserve-memory', '2g', '--limit-memory', '1g'],
      'invalid --reserve-memory "2g": must not exceed the memory limit',
    ],
    [['--bogus'], 'unknown flag --bogus'],
  ])('refuses %j with exit 2, naming the flag, before any request', async (flags, message) => {
    const { code, stdout, stderr } = await swarm(['service', 'create', ...flags, 'true']);
    expect(stderr).toContain(`swarm: ${message}`);
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(handlers.calls).toEqual([]);
  });

  it('refuses a missing image or program with exit 2', async () => {
    const docker = await swarm(['service', 'create', '--runtime', 'docker', '--name', 'x']);
    expect(docker).toMatchObject({
      code: 2,
      stderr: "swarm: IMAGE is required for the docker runtime (see 'swarm service create --help')\n",
    });
    const process = await swarm(['service', 'create', '--name', 'x']);
    expect(process.code).toBe(2);
    expect(process.stderr).toContain('swarm: the program to run is required for the process runtime');
    expect(handlers.calls).toEqual([]);
  });
});

describe('swarm service ls, ps, inspect', () => {
  it('lists services with running/desired replicas, what they run and their published ports', async () => {
    handlers.services.find((s) => s.spec.name === 'web')!.spec.endpoint = {
      ports: [
        { published: 8080, target: 8000, protocol: 'tcp', mode: 'ingress', proxyProtocol: false },
        { published: 53, target: 53, protocol: 'udp', mode: 'host', proxyProtocol: false },
      ],
      algorithm: 'round-robin',
    };
    const { code, stdout } = await swarm(['service', 'ls']);
    expect(code).toBe(0);
    expect(stdout).toBe(
      [
        'ID             NAME    MODE             REPLICAS               IMAGE                             PORTS',
        'agt000000000   agent   global           2/2                    registry.local/agent:2',
        'bat000000000   batch   replicated job   1/2 (1/10 completed)   /sif/batch.sif',
        'web000000000   web     replicated       2/3                    /usr/bin/python3 -m http.server   *:8080->8000/tcp, 53->53/udp (host)',
        '',
      ].join('\n'),
    );
    expect((await swarm(['service', 'ls', '-q'])).stdout).toBe(
      'agt0000000000000000000000000002\nbat0000000000000000000000000003\nweb0000000000000000000000000001\n',
    );
  });

  it('lists the tasks of a service, docker style: newest first per slot, age, node, pending reason', async () => {
    const { code, stdout, stderr } = await swarm(['service', 'ps', 'web']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe(
      [
        'ID             NAME        NODE     DESIRED STATE   CURRENT STATE           ERROR',
        'task-web-1-n   web.1       edge-1   Running         Running 5 seconds ago',
        'task-web-1-o    \\_ web.1   edge-2   Shutdown        Failed 3 minutes ago    task: non-zero exit (1)',
        'task-web-2-c   web.2       edge-2   Running         Running 5 seconds ago',
        'task-web-3-d   web.3                Running         Pending 5 seconds ago   no suitable node (insufficient memory on 2 nodes)',
        '',
      ].join('\n'),
    );
    const global = await swarm(['service', 'ps', 'agent', '--no-trunc']);
    expect(global.stdout).toContain('task-agent-a-eeeeeeeeeeeeee   agent.aaaa1111aaaa1111aaaa1111aaaa1111   edge-1');
  });

  it('reports an unknown service and still lists the others', async () => {
    const { code, stdout, stderr } = await swarm(['service', 'ps', 'nope', 'batch']);
    expect(code).toBe(1);
    expect(stderr).toBe('swarm: no such service: nope\n');
    expect(stdout).toContain('batch.2');
  });

  it('inspects services by name, ID or ID prefix, as JSON', async () => {
    const { code, stdout } = await swarm(['service', 'inspect', 'web', 'agt0000000000000000000000000002', 'bat']);
    expect(code).toBe(0);
    const found = JSON.parse(stdout) as Service[];
    expect(found.map((service) => service.spec.name)).toEqual(['web', 'agent', 'batch']);
  });
});

describe('swarm service scale, rm, logs', () => {
  it('scales by sending the whole spec back with the version it read', async () => {
    const { code, stdout } = await swarm(['service', 'scale', '-d', 'web=5', 'batch=20']);
    expect(code).toBe(0);
    expect(stdout).toBe('web scaled to 5\nbatch scaled to 20\n');
    const updates = handlers.calls.filter((call) => call.method === 'updateService');
    expect(updates).toHaveLength(2);
    const [ref, update] = updates[0]!.args as [string, ServiceUpdate];
    expect(ref).toBe('web0000000000000000000000000001');
    expect(update.version).toBe(10);
    expect(update.spec.mode).toEqual({ kind: 'replicated', replicas: 5 });
    expect(update.spec.task).toEqual(handlers.services.find((s) => s.spec.name === 'web')!.spec.task);
    expect((updates[1]!.args[1] as ServiceUpdate).spec.mode).toEqual({
      kind: 'replicated-job',
      maxConcurrent: 2,
      totalCompletions: 20,
    });
  });

  it('refuses to scale a global service, and a malformed specifier before any request', async () => {
    const global = await swarm(['service', 'scale', '-d', 'agent=2']);
    expect(global.code).toBe(1);
    expect(global.stderr).toBe('swarm: agent: scale can only be used with replicated or replicated-job mode\n');
    handlers.reset();
    const typo = await swarm(['service', 'scale', 'web=3', 'batch']);
    expect(typo).toMatchObject({
      code: 2,
      stderr: 'swarm: invalid scale specifier "batch": expected SERVICE=REPLICAS\n',
    });
    expect(handlers.calls).toEqual([]);
  });

  it('removes each service named, reporting the missing ones', async () => {
    const { code, stdout, stderr } = await swarm(['service', 'rm', 'web', 'nope', 'agent']);
    expect(code).toBe(1);
    expect(stdout).toBe('web\nagent\n');
    expect(stderr).toBe('swarm: no such service: nope\n');
    expect(handlers.services.map((service) => service.spec.name)).toEqual(['batch']);
  });

  it('prints log lines prefixed with service.slot.task@node, stderr lines on stderr', async () => {
    const { code, stdout, stderr } = await swarm(['service', 'logs', '--tail', '10', 'web']);
    expect(code).toBe(0);
    expect(stdout).toBe('web.1.task-web-1-n@edge-1    | serving on 8000\n');
    expect(stderr).toBe('web.2.task-web-2-c@edge-2    | GET / 200\n');
    expect(handlers.calls.find((call) => call.method === 'serviceLogs')?.args).toEqual([
      'web0000000000000000000000000001',
      { follow: false, tail: 10 },
    ]);
  });
});

describe('swarm service logs, failures', () => {
  it('reports a failure before the stream as an error answer, and one in the middle after the lines sent', async () => {
    const missing = await swarm(['service', 'logs', 'nope']);
    expect(missing).toMatchObject({ code: 1, stdout: '', stderr: 'swarm: no such service: nope\n' });
    handlers.logFailure = new Error('lost the connection to node edge-2');
    const broken = await swarm(['service', 'logs', '-f', 'web']);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toBe('web.1.task-web-1-n@edge-1    | serving on 8000\n');
    expect(broken.stderr).toBe('web.2.task-web-2-c@edge-2    | GET / 200\nswarm: lost the connection to node edge-2\n');
  });
});

describe('convergence progress', () => {
  it('gives up on tasks stuck pending, naming the reason', async () => {
    const client = new ApiClient(socketPath);
    let out = '';
    const result = await waitForConvergence(client, 'web', {
      out: { write: (text: string) => (out += text) },
      intervalMs: 10,
      stuckPendingMs: 50,
    });
    // The replica that failed before is reported too: nothing says it is old news here.
    expect(out).toBe(
      'web: 2/3 running, 1 pending: no suitable node (insufficient memory on 2 nodes) (last failure: task: non-zero exit (1))\n',
    );
    expect(result).toEqual({
      converged: false,
      reason:
        "web: 1 task stuck pending: no suitable node (insufficient memory on 2 nodes) (the swarm keeps trying; see 'swarm service ps web')",
    });
  });

  it('prints a line per change and returns once converged', async () => {
    const client = new ApiClient(socketPath);
    const pending = handlers.tasks.find((task) => task.id === 'task-web-3-dddddddddddddddd')!;
    let out = '';
    let polls = 0;
    const wait = waitForConvergence(client, 'web', {
      out: {
        write: (text: string) => {
          out += text;
          polls += 1;
          // The scheduler finds room after the first report.
          pending.status = { state: 'running', since: ago(0), message: '' };
          pending.nodeId = NODE_A;
        },
      },
      intervalMs: 10,
      ignoreTaskIds: new Set(['task-web-1-old-bbbbbbbbbbbb']),
    });
    expect(await wait).toEqual({ converged: true });
    expect(polls).toBeGreaterThan(1);
    expect(out).toBe(
      'web: 2/3 running, 1 pending: no suitable node (insufficient memory on 2 nodes)\nweb: 3/3 running\nweb: converged\n',
    );
  });
});

describe('service routes', () => {
  it('refuses an invalid spec with 400 naming the field', async () => {
    const client = new ApiClient(socketPath);
    const error = await client
      .createService({
        name: 'web',
        task: { runtime: 'docker', image: 'x', resources: { limits: { memoryBytes: '12XB' } } },
      })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ApiClientError);
    expect(error).toMatchObject({
      status: 400,
      field: 'task.resources.limits.memoryBytes',
      message: expect.stringContaining('task.resources.limits.memoryBytes: invalid memory value "12XB"'),
    });
    expect(handlers.calls).toEqual([]);
  });

  it('passes task filters through, and answers 404 for an unknown service', async () => {
    const client = new ApiClient(socketPath);
    expect(await client.listTasks({ service: 'agent', node: 'edge-1' })).toHaveLength(2);
    expect(handlers.calls.at(-1)).toEqual({ method: 'listTasks', args: [{ service: 'agent', node: 'edge-1' }] });
    await expect(client.getService('nope')).rejects.toMatchObject({ status: 404, message: 'no such service: nope' });
  });

  it('answers 501 when the daemon does not serve services yet', async () => {
    const bare = join(dir, 'bare.sock');
    const {
      createService: _c,
      listServices: _l,
      listTasks: _t,
      ...nodeOnly
    } = Object.fromEntries(
      Object.getOwnPropertyNames(FakeHandlers.prototype).map((name) => [name, () => Promise.resolve(undefined)]),
    ) as Record<string, unknown>;
    const other = await startApiServer({ socketPath: bare, handlers: nodeOnly as unknown as ControlHandlers });
    try {
      const client = new ApiClient(bare);
      await expect(client.listServices()).rejects.toMatchObject({
        status: 501,
        message: 'services: not supported by this swarmd yet',
      });
      await expect(client.listTasks()).rejects.toMatchObject({
        status: 501,
        message: 'tasks: not supported by this swarmd yet',
      });
    } finally {
      await other.close();
    }
  });
});
