// The scheduler: PENDING tasks to nodes (DESIGN.md "Data flow" step 5). Pure: plain inputs in, decisions out;
// the caller writes them to the store. Same input, same output: every tie is broken by node ID or value.
//
// Pending tasks are batched per service (and spec version, so one batch shares one template): the filters run
// once per batch over the nodes, giving each node a capacity for that batch, and the batch is placed through a
// SpreadTree whose heaps are updated incrementally, so a batch of t tasks on n nodes costs O(n + t log n).
//
// The work is a generator that yields every few hundred units; schedule() runs it straight through,
// scheduleInChunks() gives the event loop a turn (setImmediate) whenever a slice has run sliceMs.
import type { Task } from '../../api/services.ts';
import { ClusterState, YIELD_EVERY } from './cluster.ts';
import { allMatch } from './constraints.ts';
import { CAUSES, capacity, type Demand, explain, hostPortLabels, parseDemand, rejection } from './filters.ts';
import { SpreadTree } from './spread-tree.ts';
import type { Placement, SchedulingInput, SchedulingResult, Unplaced } from './types.ts';

export function schedule(input: SchedulingInput): SchedulingResult {
  const steps = run(input);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/**
 * schedule(), in slices of about sliceMs with a setImmediate between them so timers and I/O keep running. The
 * input must not change until the promise settles.
 */
export async function scheduleInChunks(
  input: SchedulingInput,
  options: { sliceMs?: number } = {},
): Promise<SchedulingResult> {
  const sliceMs = options.sliceMs ?? 5;
  const steps = run(input);
  let sliceStart = performance.now();
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    if (performance.now() - sliceStart >= sliceMs) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      sliceStart = performance.now();
    }
  }
}

function* run(input: SchedulingInput): Generator<void, SchedulingResult, void> {
  const out: SchedulingResult = { placements: [], unplaced: [] };
  const cluster = new ClusterState(input.nodes);
  yield* cluster.load(input.placed);

  // Batches (service, spec version) in order of first appearance; tasks that already name a node are checked
  // there, before the batches, since they can't go anywhere else. Keyed by nested maps rather than a joined
  // string: no garbage per task.
  const batches: Task[][] = [];
  const byService = new Map<string, Map<number, Task[]>>();
  const pinned: Task[] = [];
  let work = 0;
  for (const task of input.pending) {
    if (++work % YIELD_EVERY === 0) yield;
    if (task.nodeId !== null) {
      pinned.push(task);
      continue;
    }
    let versions = byService.get(task.serviceId);
    if (!versions) {
      versions = new Map();
      byService.set(task.serviceId, versions);
    }
    const batch = versions.get(task.specVersion);
    if (batch) batch.push(task);
    else {
      const created = [task];
      versions.set(task.specVersion, created);
      batches.push(created);
    }
  }
  for (const task of pinned) {
    if (++work % YIELD_EVERY === 0) yield;
    placePinned(cluster, task, out);
  }
  for (const batch of batches) yield* placeBatch(cluster, batch, out);
  return out;
}

function* placeBatch(cluster: ClusterState, tasks: Task[], out: SchedulingResult): Generator<void, void, void> {
  const first = tasks[0]!;
  const serviceId = first.serviceId;
  const demand = parseDemand(first.template, hostPortLabels(first));
  let work = 0;
  if ('error' in demand) {
    for (const task of tasks) {
      out.unplaced.push({ taskId: task.id, reason: `no suitable node (${demand.error})` });
      if (++work % YIELD_EVERY === 0) yield;
    }
    return;
  }

  const svcCount = cluster.serviceCounts(serviceId);
  const room = new Float64Array(cluster.nodes.length);
  const feasible: number[] = [];
  for (const i of cluster.eligible) {
    if (++work % YIELD_EVERY === 0) yield;
    if (!allMatch(demand.constraints, cluster.nodes[i]!)) continue;
    const cap = capacity(cluster, i, demand, svcCount[i] as number);
    if (cap > 0) {
      room[i] = cap;
      feasible.push(i);
    }
  }
  const tree = new SpreadTree(cluster, demand.spread, svcCount);
  yield* tree.build(feasible, cluster.serviceNodes(serviceId));
  yield;

  let k = 0;
  for (; k < tasks.length && !tree.empty; k++) {
    const i = tree.next();
    const ids = cluster.commit(i, serviceId, demand.nanoCpus, demand.memoryBytes, demand.gpus);
    svcCount[i]!++;
    tree.placed(--room[i]! > 0);
    out.placements.push(placement(tasks[k]!.id, cluster.nodes[i]!.id, ids));
    if (++work % YIELD_EVERY === 0) yield;
  }
  if (k === tasks.length) return;

  // Every node is out of room for this batch: say why, counting each node under the first filter it fails now.
  const counts = new Int32Array(CAUSES);
  counts[0] = cluster.notReady;
  counts[1] = cluster.unavailable;
  for (const i of cluster.eligible) {
    const cause = rejection(cluster, i, demand, svcCount[i] as number);
    if (cause >= 0) counts[cause]!++;
    if (++work % YIELD_EVERY === 0) yield;
  }
  const reason = explain(counts);
  for (; k < tasks.length; k++) {
    out.unplaced.push({ taskId: tasks[k]!.id, reason });
    if (++work % YIELD_EVERY === 0) yield;
  }
}

/**
 * A task created for one node (a global service's): only that node is checked, and it is given its GPUs.
 * Max replicas per node is not checked: such tasks are one per node by construction.
 */
function placePinned(cluster: ClusterState, task: Task, out: SchedulingResult): void {
  const nodeId = task.nodeId as string;
  const demand = parseDemand(task.template, hostPortLabels(task));
  const unplaced = (reason: string) => out.unplaced.push({ taskId: task.id, reason } satisfies Unplaced);
  if ('error' in demand) return void unplaced(`no suitable node (${demand.error})`);
  const i = cluster.index.get(nodeId);
  if (i === undefined) return void unplaced(`no suitable node (node ${nodeId} not found)`);
  const pinnedDemand: Demand = { ...demand, maxPerNode: 0 };
  const cause = rejection(cluster, i, pinnedDemand, 0);
  if (cause >= 0) {
    const counts = new Int32Array(CAUSES);
    counts[cause] = 1;
    return void unplaced(explain(counts));
  }
  const ids = cluster.commit(i, task.serviceId, demand.nanoCpus, demand.memoryBytes, demand.gpus);
  out.placements.push(placement(task.id, nodeId, ids));
}

function placement(taskId: string, nodeId: string, gpuIds: string[]): Placement {
  return { taskId, nodeId, devices: gpuIds.length > 0 ? [{ kind: 'gpu', ids: gpuIds }] : [] };
}
