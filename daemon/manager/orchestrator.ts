// The orchestrator (leader only): turns services into tasks and keeps them there. It compares what each
// service wants with the tasks that exist and proposes the difference as one store transaction per pass:
// new tasks for missing replica slots (or nodes, for global services), shutdown for extra ones,
// replacements for tasks that ended according to the restart policy, and for tasks whose node went down
// or was drained. Tasks never move between nodes: a replacement is a new task.
import { randomBytes } from 'node:crypto';
import type { Service, Task, TaskStatus } from '../api/services.ts';
import { TERMINAL_STATES } from '../api/services.ts';
import type { NodeRecord } from './nodes.ts';
import { allMatch, type NodeConstraint, parseNodeConstraint } from './scheduler/constraints.ts';
import { schedulerNode } from './scheduler/types.ts';
import { put, type StoreOp } from './store/store.ts';

/** Ended tasks kept per slot for `service ps` history; older ones are deleted. */
const HISTORY_PER_SLOT = 5;

export function newTaskId(): string {
  return randomBytes(13).toString('hex').slice(0, 25);
}

// An unhealthy task is as good as failed: its node stops it, and its replacement starts at once rather than
// after the stop (which can take the whole grace period).
const isUnhealthy = (task: Task) => task.status.state === 'running' && task.status.health === 'unhealthy';

function isLive(task: Task, lost: ReadonlySet<string>): boolean {
  return (
    task.desiredState !== 'shutdown' &&
    !TERMINAL_STATES.has(task.status.state) &&
    !lost.has(task.id) &&
    !isUnhealthy(task)
  );
}

function status(state: TaskStatus['state'], at: string, message = ''): TaskStatus {
  return { state, since: at, message };
}

export function newTask(service: Service, slot: number, nodeId: string | null, attempt: number, at: string): Task {
  return {
    id: newTaskId(),
    serviceId: service.id,
    serviceName: service.spec.name,
    slot,
    nodeId,
    specVersion: service.specVersion,
    template: structuredClone(service.spec.task),
    desiredState: service.spec.mode.kind.endsWith('job') ? 'complete' : 'running',
    status: nodeId ? status('assigned', at) : status('pending', at, 'waiting for the scheduler'),
    devices: [],
    attempt,
    // Decided when the task is made: its node gives it a host port ($PORT) and reports where it listens.
    ...((service.spec.endpoint?.ports.length ?? 0) > 0 ? { publishes: true } : {}),
    ...hostModePorts(service),
    version: 0,
    createdAt: at,
    updatedAt: at,
  };
}

function hostModePorts(service: Service): { hostPorts?: number[]; hostUdpPorts?: number[] } {
  const host = (service.spec.endpoint?.ports ?? []).filter((p) => p.mode === 'host');
  const tcp = host.filter((p) => p.protocol !== 'udp').map((p) => p.published);
  const udp = host.filter((p) => p.protocol === 'udp').map((p) => p.published);
  return { ...(tcp.length > 0 ? { hostPorts: tcp } : {}), ...(udp.length > 0 ? { hostUdpPorts: udp } : {}) };
}

function shutdown(task: Task, at: string): Task {
  return { ...task, desiredState: 'shutdown', updatedAt: at };
}

/** Whether an ended task should be replaced, and after which delay, per the service's restart policy. */
function restartDue(task: Task, service: Service, now: number): 'now' | 'later' | 'never' {
  const policy = service.spec.task.restart;
  const jobDone = service.spec.mode.kind.endsWith('job') && task.status.state === 'complete';
  if (jobDone || policy.condition === 'none') return 'never';
  if (policy.condition === 'on-failure' && task.status.state === 'complete') return 'never';
  if (policy.maxAttempts > 0 && task.attempt + 1 > policy.maxAttempts) return 'never';
  // The delay counts from the failure: for an unhealthy task, when the managers learnt of it.
  const failedAt = Date.parse(isUnhealthy(task) ? task.updatedAt : task.status.since);
  return now - failedAt >= policy.delayMs ? 'now' : 'later';
}

export interface OrchestrationInput {
  services: Service[];
  tasks: Task[];
  nodes: NodeRecord[];
  now: number;
}

/** One reconciliation pass: the store operations that bring tasks in line with services and nodes. */
export function reconcile({ services, tasks, nodes, now }: OrchestrationInput): StoreOp[] {
  const at = new Date(now).toISOString();
  const ops: StoreOp[] = [];
  const servicesById = new Map(services.map((s) => [s.id, s]));
  const nodesById = new Map(nodes.map((n) => [n.id, n]));
  const tasksByService = new Map<string, Task[]>();
  for (const task of tasks) {
    const list = tasksByService.get(task.serviceId) ?? [];
    list.push(task);
    tasksByService.set(task.serviceId, list);
  }

  // Tasks this pass takes off their node. Store objects are shared: never mutate them, note here instead.
  const lost = new Set<string>();
  for (const task of tasks) {
    const service = servicesById.get(task.serviceId);
    if (!service) {
      // Service removed: stop its tasks, forget them once ended.
      if (TERMINAL_STATES.has(task.status.state) || !task.nodeId)
        ops.push({ kind: 'delete', table: 'tasks', id: task.id });
      else if (task.desiredState !== 'shutdown') ops.push(put('tasks', shutdown(task, at), task.version));
      continue;
    }
    if (!isLive(task, lost) || !task.nodeId) continue;
    const node = nodesById.get(task.nodeId);
    // A node that is gone, down or drained loses its tasks, and so does one whose labels no longer meet
    // the service's constraints; the slot gets a replacement below.
    const misfit = node !== undefined && !meetsConstraints(node, service.spec.task.placement.constraints);
    if (!node || node.status.state === 'down' || node.availability === 'drain' || misfit) {
      const message = !node
        ? 'node removed'
        : node.status.state === 'down'
          ? 'node is down'
          : misfit
            ? 'node no longer meets the placement constraints'
            : 'node drained';
      const state = node?.status.state === 'down' || !node ? 'orphaned' : task.status.state;
      ops.push(
        put(
          'tasks',
          { ...shutdown(task, at), status: state === 'orphaned' ? status('orphaned', at, message) : task.status },
          task.version,
        ),
      );
      lost.add(task.id);
    }
  }

  for (const service of services) {
    const own = tasksByService.get(service.id) ?? [];
    if (service.spec.mode.kind === 'global' || service.spec.mode.kind === 'global-job') {
      ops.push(...reconcileGlobal(service, own, nodes, lost, at, now));
    } else {
      ops.push(...reconcileReplicated(service, own, lost, at, now));
    }
    ops.push(...pruneHistory(own));
  }
  return ops;
}

function reconcileReplicated(
  service: Service,
  tasks: Task[],
  lost: ReadonlySet<string>,
  at: string,
  now: number,
): StoreOp[] {
  const ops: StoreOp[] = [];
  const mode = service.spec.mode;
  const bySlot = new Map<number, Task[]>();
  for (const task of tasks) bySlot.set(task.slot, [...(bySlot.get(task.slot) ?? []), task]);
  const wanted =
    mode.kind === 'replicated' ? mode.replicas : mode.kind === 'replicated-job' ? mode.totalCompletions : 0;
  let concurrent = tasks.filter((t) => isLive(t, lost)).length;
  const maxConcurrent = mode.kind === 'replicated-job' ? mode.maxConcurrent : Number.POSITIVE_INFINITY;
  for (let slot = 1; slot <= wanted; slot++) {
    const slotTasks = (bySlot.get(slot) ?? []).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    if (slotTasks.some((t) => isLive(t, lost))) continue;
    const last = slotTasks.at(-1);
    let nodeLost = false;
    if (last) {
      // The slot's task ended, or lost its node: replace it (a lost node always, an exit per the policy).
      nodeLost = lost.has(last.id) || last.status.state === 'orphaned';
      const due = nodeLost ? 'now' : restartDue(last, service, now);
      if (due !== 'now') continue;
      if (last.desiredState !== 'shutdown' && !lost.has(last.id))
        ops.push(put('tasks', shutdown(last, at), last.version));
    }
    if (concurrent >= maxConcurrent) continue;
    // A task that lost its node did not fail: its replacement does not count as a restart attempt.
    ops.push(put('tasks', newTask(service, slot, null, last ? last.attempt + (nodeLost ? 0 : 1) : 0, at), 'absent'));
    concurrent++;
  }
  // Scale down: the highest slots go first.
  for (const task of tasks) {
    if (task.slot > wanted && isLive(task, lost)) {
      ops.push(put('tasks', shutdown(task, at), task.version));
    }
  }
  return ops;
}

function meetsConstraints(node: NodeRecord, constraints: readonly string[]): boolean {
  if (constraints.length === 0) return true;
  const parsed = constraints.map(parseNodeConstraint);
  // An invalid constraint is the scheduler's to report (it leaves new tasks pending); don't evict for it.
  if (parsed.some((c) => c === null)) return true;
  return allMatch(parsed as NodeConstraint[], schedulerNode(node));
}

function reconcileGlobal(
  service: Service,
  tasks: Task[],
  nodes: NodeRecord[],
  lost: ReadonlySet<string>,
  at: string,
  now: number,
): StoreOp[] {
  const ops: StoreOp[] = [];
  const eligible = nodes.filter(
    (n) =>
      n.status.state === 'ready' &&
      n.availability === 'active' &&
      meetsConstraints(n, service.spec.task.placement.constraints),
  );
  for (const node of eligible) {
    const onNode = tasks.filter((t) => t.nodeId === node.id).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    if (onNode.some((t) => isLive(t, lost))) continue;
    const last = onNode.at(-1);
    if (last && restartDue(last, service, now) !== 'now') continue;
    if (last && last.desiredState !== 'shutdown' && !lost.has(last.id))
      ops.push(put('tasks', shutdown(last, at), last.version));
    ops.push(put('tasks', newTask(service, 0, node.id, last ? last.attempt + 1 : 0, at), 'absent'));
  }
  return ops;
}

function pruneHistory(tasks: Task[]): StoreOp[] {
  const ops: StoreOp[] = [];
  const ended = new Map<string, Task[]>();
  for (const task of tasks) {
    if (!TERMINAL_STATES.has(task.status.state) || task.desiredState !== 'shutdown') continue;
    const key = task.slot > 0 ? `s${task.slot}` : `n${task.nodeId}`;
    ended.set(key, [...(ended.get(key) ?? []), task]);
  }
  for (const list of ended.values()) {
    list.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    for (const old of list.slice(HISTORY_PER_SLOT)) ops.push({ kind: 'delete', table: 'tasks', id: old.id });
  }
  return ops;
}
