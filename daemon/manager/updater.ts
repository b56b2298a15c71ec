// The updater (leader only): rolls a service's tasks over to its current template, or back to the previous
// one. Like the orchestrator it is a pure pass over the store: everything it needs to go on is in the service's
// updateStatus and in the tasks themselves, so a new leader continues an update where the old one left it,
// without starting it over or running it twice.
//
// Tasks are grouped by their place in the service: the replica slot, or the node of a global service. A place
// whose live task runs another template is "dirty". Each pass replaces up to `parallelism` dirty places:
// - stop-first: the old task is told to stop and its replacement waits (startAfter) until it has ended;
// - start-first: the replacement starts beside the old task, which stops once the replacement is ready.
// A task is ready when it runs and, if it has a health check, is healthy. New-version tasks that fail count
// towards the failure action if they fail within the monitor window after they began running (or never ran,
// as Docker counts them); the update completes once no place is dirty and the last replacement stayed
// ready through the monitor window.
//
// Canaries (which Docker Swarm lacks): with update.canary = N, the first N places get a new task beside the
// old one and the update waits, in `awaiting_promotion`, until `service promote` (or auto-promote once the
// canaries stayed ready through the monitor window). A rollback drops them: they run the template the rollback
// leaves, so they are dirty places' extra tasks and are stopped.
import { isDeepStrictEqual } from 'node:util';
import type { RolloutConfig, Service, ServiceSpec, Task, UpdateStatus } from '../api/services.ts';
import { TERMINAL_STATES } from '../api/services.ts';
import { newTask } from './orchestrator.ts';
import { put, type StoreOp } from './store/store.ts';

const ROLLING: ReadonlySet<UpdateStatus['state']> = new Set(['updating', 'awaiting_promotion', 'rollback_started']);

export function isRolling(service: Service): boolean {
  const status = service.updateStatus;
  return status !== null && ROLLING.has(status.state) && !service.spec.mode.kind.endsWith('job');
}

const isLive = (task: Task) => task.desiredState !== 'shutdown' && !TERMINAL_STATES.has(task.status.state);

/** Running, and healthy when it has a health check: what counts as running for updates and the load balancer. */
export function isReady(task: Task): boolean {
  return task.status.state === 'running' && (task.template.healthcheck === null || task.status.health === 'healthy');
}

/** When a ready task became ready (its health is reported after the state, so this errs on the early side). */
const readySince = (task: Task) => Date.parse(task.status.since);

const placeOf = (task: Task) => (task.slot > 0 ? `s${task.slot}` : `n${task.nodeId}`);

interface Place {
  key: string;
  slot: number;
  nodeId: string | null;
  current: Task[];
  old: Task[];
}

export interface RolloutInput {
  services: Service[];
  tasks: Task[];
  now: number;
}

/** One pass of every rolling update and rollback: the store operations that move them on. */
export function planRollouts({ services, tasks, now }: RolloutInput): StoreOp[] {
  const ops: StoreOp[] = [];
  const byService = new Map<string, Task[]>();
  for (const task of tasks) byService.set(task.serviceId, [...(byService.get(task.serviceId) ?? []), task]);
  for (const service of services) {
    if (isRolling(service)) ops.push(...planRollout(service, byService.get(service.id) ?? [], now));
  }
  return ops;
}

function planRollout(service: Service, tasks: Task[], now: number): StoreOp[] {
  const status = service.updateStatus!;
  const rollingBack = status.state === 'rollback_started';
  const config: RolloutConfig = rollingBack ? service.spec.rollback : service.spec.update;
  const at = new Date(now).toISOString();
  // Publishing ports or no longer publishing any changes how tasks run (a host port in $PORT): a redeploy too.
  const isCurrent = (task: Task) =>
    isDeepStrictEqual(task.template, service.spec.task) && Boolean(task.publishes) === publishes(service.spec);

  const failure = firstFailure(service, tasks, isCurrent, config.monitorMs, now);
  if (failure) {
    const places = Math.max(1, countPlaces(service, tasks));
    if (failure.count / places > config.maxFailureRatio && config.failureAction !== 'continue') {
      return [onFailure(service, failure.task, config.failureAction, at)];
    }
  }

  const places = groupPlaces(tasks.filter(isLive), isCurrent);
  const ops: StoreOp[] = [];
  const canaryPhase = !rollingBack && service.spec.update.canary > 0 && !status.promoted;
  let inProgress = 0;
  let readyPlaces = 0;
  const dirty: Place[] = [];
  let lastReady = Date.parse(status.startedAt);
  for (const place of places) {
    const readyNew = place.current.filter(isReady);
    for (const task of readyNew) lastReady = Math.max(lastReady, readySince(task));
    if (place.current.length === 0) {
      if (place.old.length > 0) dirty.push(place);
      continue;
    }
    if (readyNew.length === 0) {
      inProgress++;
      continue;
    }
    readyPlaces++;
    // A ready replacement (or a promoted canary) takes over: the old tasks of its place stop.
    if (!canaryPhase) for (const task of place.old) ops.push(stop(task, at));
  }

  if (canaryPhase) return [...ops, ...planCanaries(service, places, dirty, inProgress, lastReady, now, at)];

  const delayOver = config.delayMs === 0 || now >= lastReady + config.delayMs;
  const room = config.parallelism === 0 ? dirty.length : Math.max(0, config.parallelism - inProgress);
  if (delayOver) {
    for (const place of dirty.slice(0, room)) ops.push(...replace(service, place, config.order, at));
  }

  // Done once every place runs a ready task of the spec: a slot left empty by a failed task (waiting out its
  // restart delay) is not done yet.
  const wanted = service.spec.mode.kind === 'replicated' ? service.spec.mode.replicas : places.length;
  const allReady = dirty.length === 0 && inProgress === 0 && readyPlaces >= wanted;
  if (allReady && now >= lastReady + config.monitorMs) {
    // An automatic rollback keeps saying why it happened.
    const why = rollingBack && status.message.startsWith('update rolled back') ? ` (${status.message})` : '';
    ops.push(
      setStatus(service, at, {
        state: rollingBack ? 'rollback_completed' : 'completed',
        message: rollingBack ? `rollback completed${why}` : 'update completed',
        completedAt: at,
      }),
    );
  }
  return ops;
}

function planCanaries(
  service: Service,
  places: Place[],
  dirty: Place[],
  inProgress: number,
  lastReady: number,
  now: number,
  at: string,
): StoreOp[] {
  const { canary, autoPromote, monitorMs } = service.spec.update;
  const withCanary = places.filter((p) => p.current.length > 0).length;
  const ops: StoreOp[] = [];
  // Canaries start beside the old tasks whatever the order: the old version keeps serving in full.
  for (const place of dirty.slice(0, Math.max(0, canary - withCanary))) {
    ops.push(...replace(service, place, 'start-first', at));
  }
  const status = service.updateStatus!;
  const settled = withCanary >= Math.min(canary, places.length) && inProgress === 0 && now >= lastReady + monitorMs;
  if (!settled) return ops;
  if (autoPromote) {
    ops.push(setStatus(service, at, { state: 'updating', message: 'canaries promoted automatically', promoted: true }));
  } else if (status.state !== 'awaiting_promotion') {
    const name = service.spec.name;
    ops.push(
      setStatus(service, at, {
        state: 'awaiting_promotion',
        message: `${withCanary} canary task(s) healthy; run "swarm service promote ${name}" to go on or "swarm service rollback ${name}" to drop them`,
      }),
    );
  }
  return ops;
}

/** Starts the new task of a dirty place, stopping the old one first (stop-first) or leaving it running. */
function replace(service: Service, place: Place, order: RolloutConfig['order'], at: string): StoreOp[] {
  const ops: StoreOp[] = [];
  const previous = place.old[0]!;
  const task = newTask(service, place.slot, place.nodeId, previous.attempt, at);
  if (order === 'stop-first') {
    for (const old of place.old) ops.push(stop(old, at));
    task.startAfter = previous.id;
    task.status = { state: 'pending', since: at, message: `waiting for task ${previous.id} to stop (stop-first)` };
  }
  ops.push(put('tasks', task, 'absent'));
  return ops;
}

function stop(task: Task, at: string): StoreOp {
  // A task no node has taken yet has nothing to stop: it ends here (a stop-first successor waits on it).
  const status = task.nodeId ? task.status : { state: 'shutdown' as const, since: at, message: 'replaced by update' };
  return put('tasks', { ...task, desiredState: 'shutdown', status, updatedAt: at }, task.version);
}

function groupPlaces(live: Task[], isCurrent: (task: Task) => boolean): Place[] {
  const places = new Map<string, Place>();
  for (const task of live) {
    const key = placeOf(task);
    let place = places.get(key);
    if (!place) {
      place = { key, slot: task.slot, nodeId: task.slot > 0 ? null : task.nodeId, current: [], old: [] };
      places.set(key, place);
    }
    (isCurrent(task) ? place.current : place.old).push(task);
  }
  // Lowest slots first, so waves and canaries are predictable.
  return [...places.values()].sort((a, b) => a.slot - b.slot || a.key.localeCompare(b.key));
}

function countPlaces(service: Service, tasks: Task[]): number {
  const mode = service.spec.mode;
  if (mode.kind === 'replicated') return mode.replicas;
  return new Set(tasks.filter(isLive).map(placeOf)).size;
}

/** New-version tasks that failed (or turned unhealthy) since the update began: the first and how many. */
/**
 * The new-version tasks that failed, as Docker counts them: a task that never ran, or that failed (or turned
 * unhealthy) within the monitor window after it began running. One that ran longer was fine as an update; its
 * later failure is the restart policy's business, not a reason to roll the whole service back.
 */
function firstFailure(
  service: Service,
  tasks: Task[],
  isCurrent: (task: Task) => boolean,
  monitorMs: number,
  now: number,
): { task: Task; count: number } | null {
  const since = Date.parse(service.updateStatus!.startedAt);
  const withinWindow = (t: Task) => {
    if (t.status.startedAt === undefined) return true;
    const failedAt = t.status.state === 'running' ? now : Date.parse(t.status.since);
    return failedAt - Date.parse(t.status.startedAt) <= monitorMs;
  };
  const failed = tasks
    .filter(
      (t) =>
        isCurrent(t) &&
        Date.parse(t.createdAt) >= since &&
        (t.status.state === 'failed' || t.status.state === 'rejected' || t.status.health === 'unhealthy') &&
        withinWindow(t),
    )
    .sort((a, b) => a.status.since.localeCompare(b.status.since));
  return failed.length === 0 ? null : { task: failed[0]!, count: failed.length };
}

function onFailure(service: Service, failed: Task, action: 'pause' | 'rollback', at: string): StoreOp {
  const rollingBack = service.updateStatus!.state === 'rollback_started';
  const why = `task ${failed.id} (slot ${failed.slot || failed.nodeId}) ${describeFailure(failed)}`;
  if (action === 'rollback' && !rollingBack && service.previousSpec) {
    return put('services', rolledBack(service, at, `update rolled back: ${why}`), service.version);
  }
  return setStatus(service, at, {
    state: rollingBack ? 'rollback_paused' : 'paused',
    message: `${rollingBack ? 'rollback' : 'update'} paused: ${why}`,
  });
}

function describeFailure(task: Task): string {
  if (task.status.health === 'unhealthy' && task.status.state === 'running') return 'is unhealthy';
  const detail = task.status.error ?? task.status.message;
  return `${task.status.state === 'rejected' ? 'was rejected' : 'failed'}${detail ? `: ${detail}` : ''}`;
}

/**
 * The service with a new spec. A changed template (or --force) starts a rolling update from the spec before;
 * any other change (replicas, update settings, labels) applies without one.
 */
export function withNewSpec(service: Service, spec: ServiceSpec, at: string): Service {
  const changed = { ...service, spec, specVersion: service.specVersion + 1, updatedAt: at };
  if (isDeepStrictEqual(spec.task, service.spec.task) && publishes(spec) === publishes(service.spec)) return changed;
  return {
    ...changed,
    previousSpec: service.spec,
    updateStatus: { state: 'updating', startedAt: at, message: 'update in progress', promoted: false },
  };
}

/** Tasks of a service with published ports get a host port and report their address (see newTask). */
function publishes(spec: ServiceSpec): boolean {
  return (spec.endpoint?.ports.length ?? 0) > 0;
}

/** Whether `service promote` has canaries to promote. */
export function awaitsPromotion(service: Service): boolean {
  const state = service.updateStatus?.state;
  return (
    service.spec.update.canary > 0 &&
    !service.updateStatus!.promoted &&
    (state === 'updating' || state === 'awaiting_promotion')
  );
}

export function promoted(service: Service, at: string): Service {
  return {
    ...service,
    updateStatus: { ...service.updateStatus!, state: 'updating', message: 'canaries promoted', promoted: true },
    updatedAt: at,
  };
}

/**
 * The service with its previous spec back and a rollback under way. The rollback config stays the one of the
 * spec being rolled back from: that is what the user set for undoing this update.
 */
export function rolledBack(service: Service, at: string, message: string): Service {
  const previous = service.previousSpec!;
  return {
    ...service,
    spec: { ...previous, rollback: service.spec.rollback },
    previousSpec: service.spec,
    specVersion: service.specVersion + 1,
    updateStatus: { state: 'rollback_started', startedAt: at, message, promoted: false },
    updatedAt: at,
  };
}

function setStatus(
  service: Service,
  at: string,
  change: Partial<UpdateStatus> & Pick<UpdateStatus, 'state' | 'message'>,
): StoreOp {
  const updateStatus: UpdateStatus = { ...service.updateStatus!, ...change };
  return put('services', { ...service, updateStatus, updatedAt: at }, service.version);
}
