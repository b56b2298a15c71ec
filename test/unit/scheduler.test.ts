// The scheduler as a pure function: nodes, placed and pending tasks in; placements and reasons out.
import { describe, expect, it } from 'vitest';
import type { Task, TaskTemplate } from '../../daemon/api/services.ts';
import {
  type Placement,
  type SchedulerNode,
  type SchedulingInput,
  schedule,
  scheduleInChunks,
} from '../../daemon/manager/scheduler/index.ts';
import { taskTemplate } from '../helpers/fixtures.ts';

const GiB = 2 ** 30;
const CPU = 1e9;
const at = '2026-01-01T00:00:00.000Z';

function node(id: string, extra: Partial<Omit<SchedulerNode, 'resources'>> & Partial<SchedulerNode['resources']> = {}) {
  const { nanoCpus = 8 * CPU, memoryBytes = 16 * GiB, gpus = [], ...rest } = extra;
  return {
    id,
    hostname: `host-${id}`,
    role: 'worker',
    availability: 'active',
    state: 'ready',
    labels: {},
    os: 'linux',
    arch: 'x86_64',
    ...rest,
    resources: { nanoCpus, memoryBytes, gpus },
  } satisfies SchedulerNode;
}

interface Want {
  constraints?: string[];
  spread?: string[];
  maxPerNode?: number;
  cpu?: number;
  mem?: number;
  gpus?: number;
}

function template(want: Want): TaskTemplate {
  return taskTemplate({
    reservations: { nanoCpus: want.cpu ?? 0, memoryBytes: want.mem ?? 0, gpus: want.gpus ?? 0 },
    placement: {
      constraints: want.constraints ?? [],
      spread: want.spread ?? [],
      maxReplicasPerNode: want.maxPerNode ?? 0,
    },
  });
}

/** n pending tasks of one service, ids `${service}.${slot}`. */
function pending(service: string, n: number, want: Want = {}, firstSlot = 1): Task[] {
  const t = template(want);
  return Array.from({ length: n }, (_, k) => makeTask(service, firstSlot + k, null, t));
}

function makeTask(service: string, slot: number, nodeId: string | null, t: TaskTemplate): Task {
  return {
    id: `${service}.${slot}`,
    serviceId: service,
    serviceName: service,
    slot,
    nodeId,
    specVersion: 1,
    template: t,
    desiredState: 'running',
    status: { state: nodeId === null ? 'pending' : 'running', since: at, message: '' },
    devices: [],
    attempt: 0,
    version: 1,
    createdAt: at,
    updatedAt: at,
  };
}

/** Placements turned back into placed (running) tasks, carrying their devices, for a second round. */
function asPlaced(tasks: Task[], placements: Placement[]): Task[] {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  return placements.map((p) => ({
    ...byId.get(p.taskId)!,
    nodeId: p.nodeId,
    devices: p.devices,
    status: { state: 'running', since: at, message: '' },
  }));
}

/** Tasks per node ID. */
function spreadOf(placements: Placement[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const p of placements) counts[p.nodeId] = (counts[p.nodeId] ?? 0) + 1;
  return counts;
}

const run = (input: Partial<SchedulingInput>) => schedule({ nodes: [], placed: [], pending: [], ...input });

describe('scheduler: constraints', () => {
  const nodes = [
    node('n1', { role: 'manager', labels: { zone: 'edge' } }),
    node('n2', { labels: { zone: 'core' } }),
    node('n3', { hostname: 'gpu-box', arch: 'aarch64' }),
  ];
  const placedOn = (constraints: string[]) =>
    Object.keys(spreadOf(run({ nodes, pending: pending('s', 6, { constraints }) }).placements)).sort();

  it('matches labels with == and !=, a missing label reading as ""', () => {
    expect(placedOn(['node.labels.zone==edge'])).toEqual(['n1']);
    expect(placedOn(['node.labels.zone!=edge'])).toEqual(['n2', 'n3']);
    expect(placedOn(['node.labels.zone==EDGE'])).toEqual(['n1']); // values compare case-insensitively
    expect(placedOn(['node.labels.ZONE==edge'])).toEqual([]); // label names don't
  });

  it('matches role, hostname, id and platform, and needs all constraints to hold', () => {
    expect(placedOn(['node.role==manager'])).toEqual(['n1']);
    expect(placedOn(['node.role!=manager'])).toEqual(['n2', 'n3']);
    expect(placedOn(['node.hostname==gpu-box'])).toEqual(['n3']);
    expect(placedOn(['Node.ID == n2'])).toEqual(['n2']);
    expect(placedOn(['node.platform.arch!=aarch64', 'node.platform.os==linux'])).toEqual(['n1', 'n2']);
    expect(placedOn(['node.role==worker', 'node.labels.zone==core'])).toEqual(['n2']);
  });

  it('leaves tasks pending with the number of mismatching nodes', () => {
    const r = run({ nodes, pending: pending('s', 2, { constraints: ['node.labels.zone==moon'] }) });
    expect(r.placements).toEqual([]);
    expect(r.unplaced).toEqual([
      { taskId: 's.1', reason: 'no suitable node (constraint mismatch on 3 nodes)' },
      { taskId: 's.2', reason: 'no suitable node (constraint mismatch on 3 nodes)' },
    ]);
  });

  it('rejects an invalid constraint or spread preference instead of guessing', () => {
    const bad = run({ nodes, pending: pending('s', 1, { constraints: ['node.colour==red'] }) });
    expect(bad.unplaced[0]!.reason).toBe('no suitable node (invalid placement constraint "node.colour==red")');
    const badSpread = run({ nodes, pending: pending('s', 1, { spread: ['zone'] }) });
    expect(badSpread.unplaced[0]!.reason).toBe('no suitable node (invalid spread preference "zone")');
  });
});

describe('scheduler: spread and least loaded', () => {
  it('balances 9 tasks on 3 equal nodes 3 each', () => {
    const r = run({ nodes: [node('a'), node('b'), node('c')], pending: pending('s', 9) });
    expect(spreadOf(r.placements)).toEqual({ a: 3, b: 3, c: 3 });
    expect(r.unplaced).toEqual([]);
  });

  it('counts the service own tasks first, then all tasks on the node (global tasks included)', () => {
    const nodes = [node('a'), node('b'), node('c')];
    const other = template({});
    const placed = [
      makeTask('s', 1, 'a', other), // one of this service on a
      makeTask('global', 0, 'b', other), // a global task on b
      makeTask('global', 0, 'c', other),
      makeTask('other', 1, 'c', other), // c carries the most
    ];
    const r = run({ nodes, placed, pending: pending('s', 3, {}, 2) });
    // b and c have none of s: b first (fewer tasks overall), then c, then back to a (tied on s at 1, a has
    // 1 task overall against b's 2 and c's 3).
    expect(r.placements.map((p) => p.nodeId)).toEqual(['b', 'c', 'a']);
  });

  it('spreads over the values of a label before balancing nodes, a missing label being its own value', () => {
    const nodes = [
      node('a1', { labels: { zone: 'a' } }),
      node('a2', { labels: { zone: 'a' } }),
      node('a3', { labels: { zone: 'a' } }),
      node('b1', { labels: { zone: 'b' } }),
      node('x1'),
    ];
    const r = run({ nodes, pending: pending('s', 6, { spread: ['node.labels.zone'] }) });
    expect(spreadOf(r.placements)).toEqual({ a1: 1, a2: 1, b1: 2, x1: 2 });
  });

  it('counts tasks already in a zone, and spreads hierarchically', () => {
    const nodes = [
      node('a-r1', { labels: { zone: 'a', rack: '1' } }),
      node('a-r2', { labels: { zone: 'a', rack: '2' } }),
      node('b-r1', { labels: { zone: 'b', rack: '1' } }),
      node('b-r1b', { labels: { zone: 'b', rack: '1' } }),
    ];
    const t = template({});
    const placed = [makeTask('s', 1, 'a-r1', t), makeTask('s', 2, 'a-r1', t)];
    const spread = ['node.labels.zone', 'node.labels.rack'];
    const r = run({ nodes, placed, pending: pending('s', 6, { spread }, 3) });
    // Zone a holds 2 already: b gets 4 of 6 for 4 + 4. Within a, rack 2 catches up with rack 1 (2 each).
    expect(spreadOf(r.placements)).toEqual({ 'a-r2': 2, 'b-r1': 2, 'b-r1b': 2 });
  });

  it('counts a service as one across spec versions (two batches)', () => {
    const v2 = pending('s', 2, { maxPerNode: 1 }, 3).map((t) => ({ ...t, specVersion: 2 }));
    const r = run({
      nodes: [node('a'), node('b'), node('c')],
      pending: [...pending('s', 2, { maxPerNode: 1 }), ...v2],
    });
    expect(spreadOf(r.placements)).toEqual({ a: 1, b: 1, c: 1 });
    expect(r.unplaced.map((u) => u.taskId)).toEqual(['s.4']);
  });

  it('stops at max replicas per node and says so', () => {
    const r = run({ nodes: [node('a'), node('b'), node('c')], pending: pending('s', 5, { maxPerNode: 1 }) });
    expect(spreadOf(r.placements)).toEqual({ a: 1, b: 1, c: 1 });
    expect(r.unplaced.map((u) => u.reason)).toEqual([
      'no suitable node (max replicas per node reached on 3 nodes)',
      'no suitable node (max replicas per node reached on 3 nodes)',
    ]);
  });
});

describe('scheduler: node state and resources', () => {
  it('skips down, paused and drained nodes', () => {
    const nodes = [
      node('down', { state: 'down' }),
      node('paused', { availability: 'pause' }),
      node('drained', { availability: 'drain' }),
      node('ok'),
    ];
    const r = run({ nodes, pending: pending('s', 3) });
    expect(spreadOf(r.placements)).toEqual({ ok: 3 });
    const none = run({ nodes: nodes.slice(0, 3), pending: pending('s', 1) });
    expect(none.unplaced[0]!.reason).toBe('no suitable node (2 nodes not available for new tasks; 1 node not ready)');
  });

  it('respects memory and CPU reservations, net of placed tasks, and counts nodes per cause', () => {
    const nodes = [
      node('small1', { memoryBytes: 1 * GiB }),
      node('small2', { memoryBytes: 1 * GiB }),
      node('busy', { memoryBytes: 8 * GiB }),
      node('few-cpus', { nanoCpus: 1 * CPU }),
      node('drained', { availability: 'drain' }),
      node('big', { memoryBytes: 8 * GiB, nanoCpus: 4 * CPU }),
    ];
    const hog = template({ mem: 7 * GiB });
    const placed = [makeTask('hog', 1, 'busy', hog)];
    const r = run({ nodes, placed, pending: pending('s', 3, { mem: 3 * GiB, cpu: 2 * CPU }) });
    // big takes 2 (8 GiB / 3 GiB, 4 CPUs / 2); nothing else fits one. Causes with equal counts keep filter order.
    expect(spreadOf(r.placements)).toEqual({ big: 2 });
    expect(r.unplaced).toEqual([
      {
        taskId: 's.3',
        reason:
          'no suitable node (insufficient memory on 4 nodes; 1 node not available for new tasks; insufficient CPU on 1 node)',
      },
    ]);
  });

  it('allocates concrete, distinct GPU IDs and keeps a task pending when none is free', () => {
    const nodes = [
      node('g1', { gpus: [{ id: 'GPU-aaaa' }, { id: 'GPU-bbbb' }] }),
      node('g2', { gpus: [{ id: 'GPU-cccc' }, { id: 'GPU-dddd' }] }),
      node('cpu-only'),
    ];
    const first = pending('s', 3, { gpus: 1 });
    const r1 = run({ nodes, pending: first });
    expect(r1.unplaced).toEqual([]);
    const ids = r1.placements.flatMap((p) => p.devices.flatMap((d) => (d.kind === 'gpu' ? d.ids : [])));
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
    for (const p of r1.placements) {
      expect(p.nodeId).not.toBe('cpu-only');
      const own = nodes.find((n) => n.id === p.nodeId)!.resources.gpus.map((g) => g.id);
      expect(own).toEqual(expect.arrayContaining(p.devices[0]!.ids));
    }

    // Second round: the placed tasks hold their GPUs; the 4th gets the last one, the 5th finds none.
    const r2 = run({ nodes, placed: asPlaced(first, r1.placements), pending: pending('s', 2, { gpus: 1 }, 4) });
    expect(r2.placements).toHaveLength(1);
    const last = r2.placements[0]!.devices[0]!.ids;
    expect([...ids, ...last].sort()).toEqual(['GPU-aaaa', 'GPU-bbbb', 'GPU-cccc', 'GPU-dddd']);
    expect(r2.unplaced).toEqual([{ taskId: 's.5', reason: 'no suitable node (insufficient GPUs on 3 nodes)' }]);
    // Without the CPU-only node, only the two GPU nodes are counted.
    const r3 = run({
      nodes: nodes.slice(0, 2),
      placed: asPlaced([...first, ...pending('s', 1, { gpus: 1 }, 4)], [...r1.placements, ...r2.placements]),
      pending: pending('s', 1, { gpus: 1 }, 5),
    });
    expect(r3.unplaced).toEqual([{ taskId: 's.5', reason: 'no suitable node (insufficient GPUs on 2 nodes)' }]);
  });

  it('gives a task created for one node (global) its GPUs there, or says why not', () => {
    const nodes = [node('g1', { gpus: [{ id: 'GPU-1' }] }), node('down', { state: 'down', gpus: [{ id: 'GPU-2' }] })];
    const t = template({ gpus: 1 });
    const r = run({ nodes, pending: [makeTask('g', 0, 'g1', t), { ...makeTask('g', 0, 'down', t), id: 'g.down' }] });
    expect(r.placements).toEqual([{ taskId: 'g.0', nodeId: 'g1', devices: [{ kind: 'gpu', ids: ['GPU-1'] }] }]);
    expect(r.unplaced).toEqual([{ taskId: 'g.down', reason: 'no suitable node (1 node not ready)' }]);
  });
});

describe('scheduler: host-mode published ports', () => {
  it('keeps a host-mode task off nodes where a host program holds its port, and says so when none is left', () => {
    const nodes = [
      node('a', { portsInUse: new Set(['8080/tcp']) }),
      node('b'),
      node('c', { portsInUse: new Set(['22/tcp']) }),
    ];
    const tasks = pending('web', 4).map((t) => ({ ...t, hostPorts: [8080] }));
    const r = run({ nodes, pending: tasks });
    expect(spreadOf(r.placements)).toEqual({ b: 2, c: 2 });

    const crowded = [
      node('a', { portsInUse: new Set(['8080/tcp']) }),
      node('b', { portsInUse: new Set(['8080/tcp', '9090/tcp']) }),
    ];
    const r2 = run({ nodes: crowded, pending: tasks.slice(0, 1) });
    expect(r2.unplaced).toEqual([
      { taskId: 'web.1', reason: 'no suitable node (published port in use by the host on 2 nodes)' },
    ]);
    // A task without host-mode ports (ingress mode) may go anywhere: the other nodes' ingresses reach it.
    expect(run({ nodes: crowded, pending: pending('api', 2) }).placements).toHaveLength(2);
  });

  it('says why a global task cannot run on its node', () => {
    const t = { ...makeTask('g', 0, 'a', template({})), hostPorts: [8080] };
    const r = run({ nodes: [node('a', { portsInUse: new Set(['8080/tcp']) })], pending: [t] });
    expect(r.unplaced).toEqual([
      { taskId: 'g.0', reason: 'no suitable node (published port in use by the host on 1 node)' },
    ]);
  });
});

/** A mid-sized cluster with labels, resources, constraints and spread, for determinism and chunking. */
function bigInput(nodeCount: number, services: number, perService: number): SchedulingInput {
  const nodes = Array.from({ length: nodeCount }, (_, i) =>
    node(`node-${(i * 7919) % nodeCount}`, {
      labels: { zone: `z${i % 5}`, rack: `r${i % 17}`, ...(i % 3 === 0 ? { tier: 'edge' } : {}) },
      memoryBytes: (4 + (i % 4) * 4) * GiB,
      nanoCpus: (2 + (i % 3) * 2) * CPU,
    }),
  );
  const tasks: Task[] = [];
  for (let s = 0; s < services; s++) {
    tasks.push(
      ...pending(`svc${s}`, perService, {
        mem: (s % 4) * 64 * 2 ** 20,
        cpu: (s % 3) * 0.1 * CPU,
        constraints: s % 4 === 1 ? ['node.labels.tier==edge'] : [],
        spread: s % 3 === 0 ? ['node.labels.zone'] : s % 3 === 1 ? ['node.labels.zone', 'node.labels.rack'] : [],
        maxPerNode: s % 5 === 2 ? 2 : 0,
      }),
    );
  }
  return { nodes, placed: [], pending: tasks };
}

describe('scheduler: determinism and chunking', () => {
  it('gives the same output for the same input, whatever the order of the nodes', () => {
    const input = bigInput(300, 10, 200);
    const a = schedule(input);
    const b = schedule(input);
    const c = schedule({ ...input, nodes: [...input.nodes].reverse() });
    expect(b).toEqual(a);
    expect(c).toEqual(a);
    expect(a.placements.length + a.unplaced.length).toBe(2000);
  });

  it('scheduleInChunks matches schedule and leaves the event loop no slice much longer than sliceMs', async () => {
    const input = bigInput(3000, 40, 1000);
    const t0 = performance.now();
    const expected = schedule(input);
    const syncMs = performance.now() - t0;

    // A probe that re-arms itself with setImmediate: the gap between two runs is how long the loop was held.
    let maxGap = 0;
    let probes = 0;
    let last = performance.now();
    let done = false;
    const probe = () => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      probes++;
      if (!done) setImmediate(probe);
    };
    setImmediate(probe);
    const chunked = await scheduleInChunks(input, { sliceMs: 5 });
    done = true;

    expect(chunked).toEqual(expected);
    expect(syncMs).toBeGreaterThan(20); // big enough that yielding matters
    expect(probes).toBeGreaterThan(3);
    // 5 ms slices plus one unit of work; the margin absorbs GC and a loaded CI machine.
    expect(maxGap).toBeLessThan(25);
  });
});
