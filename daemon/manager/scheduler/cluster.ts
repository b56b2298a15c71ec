// What the scheduler knows of the cluster while it runs: per-node free resources and free GPU IDs, task counts,
// and which nodes each service's tasks are on. Built once per scheduling run from the plain inputs, then
// updated in place as tasks are placed, so no step rescans the task list.
import { type Task, TERMINAL_STATES } from '../../api/services.ts';
import type { SchedulerNode } from './types.ts';

/** How many units of work run between yields; one unit is one node or task visited (well under 1 us each). */
export const YIELD_EVERY = 256;

export class ClusterState {
  readonly nodes: SchedulerNode[];
  readonly index = new Map<string, number>();
  readonly freeCpu: Float64Array;
  readonly freeMem: Float64Array;
  /** Unallocated GPU IDs per node, in the order the node lists them (the first free ones are given out). */
  readonly freeGpus: string[][];
  /** Tasks of every service on each node: the second key of "least loaded". */
  readonly total: Int32Array;
  /** Ready and active nodes: the only ones that can take a task. */
  readonly eligible: number[] = [];
  notReady = 0;
  unavailable = 0;
  /** serviceId -> the node index of each of its tasks (repeated per task), for spread and max-per-node. */
  readonly #byService = new Map<string, number[]>();

  constructor(nodes: SchedulerNode[]) {
    this.nodes = nodes;
    const n = nodes.length;
    this.freeCpu = new Float64Array(n);
    this.freeMem = new Float64Array(n);
    this.freeGpus = new Array<string[]>(n);
    this.total = new Int32Array(n);
  }

  /** Indexes the nodes and the tasks already placed; a generator so a large input can be spread over slices. */
  *load(placed: readonly Task[]): Generator<void, void, void> {
    let work = 0;
    for (let i = 0; i < this.nodes.length; i++) {
      const node = this.nodes[i]!;
      this.freeCpu[i] = node.resources.nanoCpus;
      this.freeMem[i] = node.resources.memoryBytes;
      // A repeated ID (bad input) keeps its first entry; the copy takes nothing and is counted nowhere.
      if (this.index.has(node.id)) continue;
      this.index.set(node.id, i);
      if (node.state !== 'ready') this.notReady++;
      else if (node.availability !== 'active') this.unavailable++;
      else this.eligible.push(i);
      if (++work % YIELD_EVERY === 0) yield;
    }
    const usedGpus = new Map<number, Set<string>>();
    for (const task of placed) {
      if (++work % YIELD_EVERY === 0) yield;
      // History (complete, failed, ...) holds no resources.
      if (task.nodeId === null || TERMINAL_STATES.has(task.status.state)) continue;
      const i = this.index.get(task.nodeId);
      // A task on a node that has left still counts nowhere.
      if (i === undefined) continue;
      const r = task.template.resources.reservations;
      this.#add(i, task.serviceId, r.nanoCpus, r.memoryBytes);
      for (const device of task.devices) {
        if (device.kind !== 'gpu') continue;
        let used = usedGpus.get(i);
        if (!used) {
          used = new Set();
          usedGpus.set(i, used);
        }
        for (const id of device.ids) used.add(id);
      }
    }
    for (let i = 0; i < this.nodes.length; i++) {
      const used = usedGpus.get(i);
      const ids = this.nodes[i]!.resources.gpus.map((g) => g.id);
      this.freeGpus[i] = used ? ids.filter((id) => !used.has(id)) : ids;
      if (++work % YIELD_EVERY === 0) yield;
    }
  }

  /** The service's task count per node (indexed like nodes). */
  serviceCounts(serviceId: string): Int32Array {
    const counts = new Int32Array(this.nodes.length);
    for (const i of this.#byService.get(serviceId) ?? []) counts[i]!++;
    return counts;
  }

  /** Node indices of the service's tasks, one entry per task. */
  serviceNodes(serviceId: string): readonly number[] {
    return this.#byService.get(serviceId) ?? [];
  }

  /** Records one task placed on node i and returns the GPU IDs it gets (the caller checked they are free). */
  commit(i: number, serviceId: string, nanoCpus: number, memoryBytes: number, gpus: number): string[] {
    this.#add(i, serviceId, nanoCpus, memoryBytes);
    return gpus > 0 ? (this.freeGpus[i] as string[]).splice(0, gpus) : [];
  }

  #add(i: number, serviceId: string, nanoCpus: number, memoryBytes: number): void {
    this.freeCpu[i]! -= Math.max(0, nanoCpus);
    this.freeMem[i]! -= Math.max(0, memoryBytes);
    this.total[i]!++;
    let list = this.#byService.get(serviceId);
    if (!list) {
      list = [];
      this.#byService.set(serviceId, list);
    }
    list.push(i);
  }
}
