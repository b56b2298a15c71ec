// The updater's passes against a small simulated cluster: the orchestrator, the updater and a "worker" that
// moves tasks along, step by step, so the rollout's shape (waves, order, failures, canaries) is checked at
// every step rather than only at the end.
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { Service, ServiceSpec, Task, TaskTemplate } from '../../daemon/api/services.ts';
import { TERMINAL_STATES } from '../../daemon/api/services.ts';
import type { NodeRecord } from '../../daemon/manager/nodes.ts';
import { reconcile } from '../../daemon/manager/orchestrator.ts';
import { put, type StoreOp } from '../../daemon/manager/store/store.ts';
import { awaitsPromotion, planRollouts, promoted, rolledBack, withNewSpec } from '../../daemon/manager/updater.ts';
import { serviceSpec, storedService, taskTemplate } from '../helpers/fixtures.ts';

const START = Date.parse('2026-01-01T00:00:00Z');

function readyNode(id: string): NodeRecord {
  return {
    id,
    peerId: `peer-${id}`,
    role: 'worker',
    availability: 'active',
    labels: {},
    description: {
      hostname: id,
      platform: { os: 'linux', arch: 'x64' },
      resources: { nanoCpus: 8e9, memoryBytes: 16 * 1024 ** 3 },
      engine: { runtimes: ['process'] },
    },
    status: { state: 'ready', message: '', since: new Date(START).toISOString() },
    heartbeatPeriodMs: null,
    managerStatus: null,
    version: 1,
    createdAt: new Date(START).toISOString(),
    updatedAt: new Date(START).toISOString(),
  } as unknown as NodeRecord;
}

/** What a worker would do with a task in one step; the default starts everything and stops on request. */
type WorkerBehaviour = (task: Task) => Partial<Task['status']> | null;

class Cluster {
  services = new Map<string, Service>();
  tasks = new Map<string, Task>();
  now = START;
  private version = 1;
  readonly nodes = [readyNode('n1'), readyNode('n2')];
  worker: WorkerBehaviour = () => null;

  create(spec: ServiceSpec): void {
    this.services.set('svc', storedService('svc', spec, new Date(this.now).toISOString()));
  }

  get service(): Service {
    return this.services.get('svc')!;
  }

  update(change: (spec: ServiceSpec) => ServiceSpec): void {
    this.put('services', withNewSpec(this.service, change(structuredClone(this.service.spec)), this.at()));
  }

  at(): string {
    return new Date(this.now).toISOString();
  }

  apply(ops: StoreOp[]): void {
    for (const op of ops) {
      if (op.kind === 'delete') {
        if (op.table === 'tasks') this.tasks.delete(op.id);
        continue;
      }
      if (op.kind !== 'put') continue;
      this.put(op.table as 'tasks' | 'services', op.object as Task | Service);
    }
  }

  private put(table: 'tasks' | 'services', value: Task | Service): void {
    const stored = { ...value, version: ++this.version };
    if (table === 'tasks') this.tasks.set(stored.id, stored as Task);
    else this.services.set(stored.id, stored as Service);
  }

  /** One leader pass (orchestrator, updater, a trivial scheduler), then one worker step; time moves 250 ms. */
  step(): void {
    const input = () => ({ services: [...this.services.values()], tasks: [...this.tasks.values()], now: this.now });
    this.apply(reconcile({ ...input(), nodes: this.nodes }));
    this.apply(planRollouts(input()));
    let spread = 0;
    for (const task of this.tasks.values()) {
      if (task.status.state !== 'pending' || task.desiredState === 'shutdown') continue;
      const before = task.startAfter ? this.tasks.get(task.startAfter) : undefined;
      if (before && !TERMINAL_STATES.has(before.status.state)) continue;
      this.put('tasks', {
        ...task,
        nodeId: this.nodes[spread++ % 2]!.id,
        status: { state: 'assigned', since: this.at(), message: '' },
      });
    }
    this.now += 250;
    for (const task of [...this.tasks.values()]) {
      if (TERMINAL_STATES.has(task.status.state)) continue;
      const custom = this.worker(task);
      if (custom) {
        this.put('tasks', { ...task, status: { ...task.status, since: this.at(), ...custom } });
      } else if (task.desiredState === 'shutdown') {
        this.put('tasks', { ...task, status: { state: 'shutdown', since: this.at(), message: 'stopped' } });
      } else if (task.status.state === 'assigned') {
        this.put('tasks', { ...task, status: { state: 'starting', since: this.at(), message: '' } });
      } else if (task.status.state === 'starting') {
        const health = task.template.healthcheck ? { health: 'healthy' as const } : {};
        const running = { state: 'running' as const, since: this.at(), startedAt: this.at(), message: '', ...health };
        this.put('tasks', { ...task, status: running });
      }
    }
  }

  live(): Task[] {
    return [...this.tasks.values()].filter(
      (t) => t.desiredState !== 'shutdown' && !TERMINAL_STATES.has(t.status.state),
    );
  }

  running(template: TaskTemplate): Task[] {
    return [...this.tasks.values()].filter(
      (t) => t.status.state === 'running' && isDeepStrictEqual(t.template, template),
    );
  }

  /** Steps until the predicate holds, checking an invariant at every step. */
  until(done: () => boolean, invariant: () => void = () => {}, maxSteps = 400): number {
    for (let i = 0; i < maxSteps; i++) {
      if (done()) return i;
      this.step();
      invariant();
    }
    throw new Error(`not done after ${maxSteps} steps: ${JSON.stringify(this.service.updateStatus)}`);
  }
}

const v1 = taskTemplate({ command: ['/bin/sleep', '1000'], restart: { delayMs: 0 } });
const v2 = { ...v1, command: ['/bin/sleep', '2000'] };

function started(replicas: number, update: Partial<ServiceSpec['update']> = {}): Cluster {
  const cluster = new Cluster();
  cluster.create(serviceSpec('web', { kind: 'replicated', replicas }, v1, { monitorMs: 1000, ...update }));
  cluster.until(() => cluster.running(v1).length === replicas);
  return cluster;
}

describe('rolling updates', () => {
  it('replaces 6 replicas two at a time with start-first, never below 6 running', () => {
    const cluster = started(6, { parallelism: 2, order: 'start-first' });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    expect(cluster.service.updateStatus?.state).toBe('updating');
    let maxNewStarting = 0;
    const waves: number[] = [];
    cluster.until(
      () => cluster.service.updateStatus?.state === 'completed',
      () => {
        const running = cluster.live().filter((t) => t.status.state === 'running').length;
        expect(running).toBeGreaterThanOrEqual(6);
        const starting = cluster
          .live()
          .filter((t) => isDeepStrictEqual(t.template, v2) && t.status.state !== 'running');
        maxNewStarting = Math.max(maxNewStarting, starting.length);
        const done = cluster.running(v2).length;
        if (done !== waves.at(-1)) waves.push(done);
      },
    );
    expect(maxNewStarting).toBe(2);
    expect(waves.filter((n) => n > 0)).toEqual([2, 4, 6]);
    expect(cluster.live().every((t) => isDeepStrictEqual(t.template, v2))).toBe(true);
    expect(cluster.service.previousSpec?.task).toEqual(v1);
  });

  it('with stop-first, the replacement waits until the old task has stopped', () => {
    const cluster = started(3, { parallelism: 1, order: 'stop-first' });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(
      () => cluster.service.updateStatus?.state === 'completed',
      () => {
        expect(cluster.live().length).toBeLessThanOrEqual(3);
        for (const task of cluster.live()) {
          if (!task.startAfter || task.status.state === 'pending') continue;
          // Scheduled only once the task it replaces had ended.
          expect(TERMINAL_STATES.has(cluster.tasks.get(task.startAfter)!.status.state)).toBe(true);
        }
        expect(cluster.live().filter((t) => t.status.state !== 'running').length).toBeLessThanOrEqual(1);
      },
    );
    expect(cluster.running(v2)).toHaveLength(3);
  });

  it('waits the delay between replacements and the monitor window before completing', () => {
    const cluster = started(2, { parallelism: 1, delayMs: 2000, monitorMs: 3000 });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    const startedAt = cluster.now;
    cluster.until(() => cluster.service.updateStatus?.state === 'completed');
    const second = [...cluster.tasks.values()].filter((t) => isDeepStrictEqual(t.template, v2)).at(-1)!;
    const first = [...cluster.tasks.values()].find((t) => isDeepStrictEqual(t.template, v2))!;
    expect(Date.parse(second.createdAt) - Date.parse(first.createdAt)).toBeGreaterThanOrEqual(2000);
    expect(cluster.now - startedAt).toBeGreaterThanOrEqual(2000 + 3000);
  });

  it('changing only the replica count or the update settings starts no update', () => {
    const cluster = started(2);
    cluster.update((spec) => ({
      ...spec,
      mode: { kind: 'replicated', replicas: 3 },
      update: { ...spec.update, parallelism: 5 },
    }));
    expect(cluster.service.updateStatus).toBeNull();
    cluster.update((spec) => ({ ...spec, task: { ...spec.task, forceUpdate: 1 } }));
    expect(cluster.service.updateStatus?.state).toBe('updating');
  });
});

describe('failures during an update', () => {
  const broken = { ...v1, command: ['/bin/false'] };
  const failBroken: WorkerBehaviour = (task) =>
    task.status.state === 'assigned' && isDeepStrictEqual(task.template, broken)
      ? { state: 'failed', error: 'task exited with code 1', exitCode: 1 }
      : null;

  it('pauses with failure action pause, leaving the other replicas on the old version', () => {
    const cluster = started(4, { parallelism: 1, failureAction: 'pause' });
    cluster.worker = failBroken;
    cluster.update((spec) => ({ ...spec, task: broken }));
    cluster.until(() => cluster.service.updateStatus?.state === 'paused');
    expect(cluster.service.updateStatus?.message).toMatch(
      /update paused: task \w+ \(slot 1\) failed: task exited with code 1/,
    );
    for (let i = 0; i < 20; i++) cluster.step();
    expect(cluster.running(v1)).toHaveLength(3);
  });

  it('rolls back automatically with failure action rollback, and the old version serves again', () => {
    const cluster = started(4, { parallelism: 2, failureAction: 'rollback' });
    cluster.worker = failBroken;
    cluster.update((spec) => ({ ...spec, task: broken }));
    cluster.until(() => cluster.service.updateStatus?.state === 'rollback_started');
    expect(cluster.service.spec.task).toEqual(v1);
    expect(cluster.service.updateStatus?.message).toMatch(/^update rolled back: task/);
    cluster.until(() => cluster.service.updateStatus?.state === 'rollback_completed');
    expect(cluster.running(v1)).toHaveLength(4);
    expect(cluster.live()).toHaveLength(4);
  });

  it('tolerates failures up to the max failure ratio', () => {
    let failedOnce = false;
    const cluster = started(4, { parallelism: 1, maxFailureRatio: 0.25 });
    cluster.worker = (task) => {
      if (failedOnce || task.status.state !== 'assigned' || !isDeepStrictEqual(task.template, v2)) return null;
      failedOnce = true;
      return { state: 'failed', error: 'boom' };
    };
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(() => cluster.service.updateStatus?.state === 'completed');
    expect(cluster.running(v2)).toHaveLength(4);
  });

  it('counts a failure only within the monitor window after the task began running, as Docker does', () => {
    // The first new task fails once, `after` ms into running; the update is slow (delay 3 s), so it is still
    // going on then. Monitor window: 1 s.
    const firstFailsAfter = (after: number) => {
      const cluster = started(3, { parallelism: 1, delayMs: 3000, monitorMs: 1000, failureAction: 'rollback' });
      let failed = false;
      cluster.worker = (task) => {
        const started = task.status.startedAt;
        if (failed || task.status.state !== 'running' || !started || !isDeepStrictEqual(task.template, v2)) return null;
        if (cluster.now - Date.parse(started) < after) return null;
        failed = true;
        return { state: 'failed', error: 'exit 1' };
      };
      cluster.update((spec) => ({ ...spec, task: v2 }));
      cluster.until(() => failed);
      cluster.until(() => ['completed', 'rollback_started'].includes(cluster.service.updateStatus!.state));
      return cluster.service.updateStatus!.state;
    };
    expect(firstFailsAfter(500)).toBe('rollback_started');
    expect(firstFailsAfter(2000)).toBe('completed');
  });

  it('counts a new task that turns unhealthy as a failure', () => {
    const checked = {
      ...v2,
      healthcheck: {
        kind: 'tcp' as const,
        command: [],
        path: '/',
        port: 80,
        intervalMs: 1000,
        timeoutMs: 1000,
        retries: 1,
        startPeriodMs: 0,
      },
    };
    const cluster = started(2, { parallelism: 1 });
    cluster.worker = (task) =>
      task.status.state === 'assigned' && task.template.healthcheck ? { state: 'running', health: 'unhealthy' } : null;
    cluster.update((spec) => ({ ...spec, task: checked }));
    cluster.until(() => cluster.service.updateStatus?.state === 'paused');
    expect(cluster.service.updateStatus?.message).toMatch(/is unhealthy/);
    // The unhealthy task never counted as ready: the other old replica was not touched.
    expect(cluster.running(v1).length).toBeGreaterThanOrEqual(1);
  });

  it('a rollback that fails pauses rather than rolling back again', () => {
    const cluster = started(2, { parallelism: 1 });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(() => cluster.service.updateStatus?.state === 'completed');
    cluster.worker = (task) =>
      task.status.state === 'assigned' && isDeepStrictEqual(task.template, v1)
        ? { state: 'failed', error: 'gone' }
        : null;
    cluster.apply([put('services', rolledBack(cluster.service, cluster.at(), 'by hand'))]);
    cluster.until(() => cluster.service.updateStatus?.state === 'rollback_paused');
    expect(cluster.service.updateStatus?.message).toMatch(/^rollback paused: task/);
  });
});

describe('canaries', () => {
  it('runs 1 canary beside 4 old tasks until promoted, then replaces the rest', () => {
    const cluster = started(4, { canary: 1, parallelism: 2 });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(() => cluster.service.updateStatus?.state === 'awaiting_promotion');
    expect(cluster.running(v1)).toHaveLength(4);
    expect(cluster.running(v2)).toHaveLength(1);
    for (let i = 0; i < 20; i++) cluster.step();
    expect(cluster.live()).toHaveLength(5);
    expect(awaitsPromotion(cluster.service)).toBe(true);
    cluster.apply([put('services', promoted(cluster.service, cluster.at()))]);
    cluster.until(() => cluster.service.updateStatus?.state === 'completed');
    expect(cluster.running(v2)).toHaveLength(4);
    expect(cluster.live()).toHaveLength(4);
  });

  it('drops the canaries on rollback, leaving all old tasks', () => {
    const cluster = started(4, { canary: 1 });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(() => cluster.service.updateStatus?.state === 'awaiting_promotion');
    const old = new Set(cluster.running(v1).map((t) => t.id));
    cluster.apply([put('services', rolledBack(cluster.service, cluster.at(), 'by hand'))]);
    cluster.until(() => cluster.service.updateStatus?.state === 'rollback_completed');
    expect(
      cluster
        .live()
        .map((t) => t.id)
        .sort(),
    ).toEqual([...old].sort());
    expect(cluster.running(v2)).toHaveLength(0);
  });

  it('promotes by itself with auto-promote once the canaries stayed up through the monitor window', () => {
    const cluster = started(3, { canary: 1, autoPromote: true, monitorMs: 2000 });
    cluster.update((spec) => ({ ...spec, task: v2 }));
    cluster.until(() => cluster.service.updateStatus?.promoted === true);
    cluster.until(() => cluster.service.updateStatus?.state === 'completed');
    expect(cluster.running(v2)).toHaveLength(3);
  });
});

describe('completion', () => {
  it('a rollback is not complete while a slot waits out its restart delay with no task', () => {
    const cluster = new Cluster();
    const slowRestart = { ...v1, restart: { ...v1.restart, delayMs: 5000 } };
    const broken = { ...slowRestart, command: ['/bin/false'] };
    const spec = serviceSpec('web', { kind: 'replicated', replicas: 2 }, slowRestart, {
      failureAction: 'rollback',
      monitorMs: 0,
    });
    cluster.create({ ...spec, rollback: { ...spec.rollback, monitorMs: 0 } });
    cluster.until(() => cluster.running(slowRestart).length === 2);
    cluster.worker = (task) =>
      task.status.state === 'starting' && isDeepStrictEqual(task.template, broken)
        ? { state: 'failed', error: 'exit 1' }
        : null;
    cluster.update((spec) => ({ ...spec, task: broken }));
    cluster.until(() => cluster.service.updateStatus?.state === 'rollback_started');
    cluster.until(
      () => cluster.service.updateStatus?.state === 'rollback_completed',
      () => {
        if (cluster.service.updateStatus?.state === 'rollback_completed')
          expect(cluster.running(slowRestart)).toHaveLength(2);
      },
    );
    expect(cluster.running(slowRestart)).toHaveLength(2);
  });
});
