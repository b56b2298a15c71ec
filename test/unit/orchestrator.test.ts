// The orchestrator's reconciliation pass: what it proposes for a given state of services, tasks and nodes.
import { describe, expect, it } from 'vitest';
import type { Service, ServiceSpec, Task } from '../../daemon/api/services.ts';
import type { NodeRecord } from '../../daemon/manager/nodes.ts';
import { reconcile } from '../../daemon/manager/orchestrator.ts';
import type { StoreOp } from '../../daemon/manager/store/store.ts';
import { serviceSpec, storedService, taskTemplate } from '../helpers/fixtures.ts';

const now = Date.parse('2026-01-01T00:01:00Z');
const at = '2026-01-01T00:00:00.000Z';

function spec(mode: ServiceSpec['mode'], restart: Partial<ServiceSpec['task']['restart']> = {}): ServiceSpec {
  return serviceSpec('web', mode, taskTemplate({ command: ['/bin/sleep', '1000'], restart }));
}

const service = (s: ServiceSpec): Service => storedService('svc', s, at);

function node(
  id: string,
  state: 'ready' | 'down' = 'ready',
  availability: NodeRecord['availability'] = 'active',
): NodeRecord {
  return {
    id,
    peerId: `p-${id}`,
    role: 'worker',
    availability,
    labels: {},
    description: {
      hostname: id,
      platform: { os: 'linux', arch: 'x64' },
      resources: { nanoCpus: 2e9, memoryBytes: 2 ** 31 },
      swarmdVersion: '0',
    },
    addresses: [],
    status: { state, message: '', since: at },
    createdAt: at,
    updatedAt: at,
    version: 1,
  };
}

function task(slot: number, nodeId: string | null, state: Task['status']['state'], extra: Partial<Task> = {}): Task {
  return {
    id: `t${slot}-${state}-${nodeId}`,
    serviceId: 'svc',
    serviceName: 'web',
    slot,
    nodeId,
    specVersion: 1,
    template: spec({ kind: 'replicated', replicas: 1 }).task,
    desiredState: 'running',
    status: { state, since: at, message: '' },
    devices: [],
    attempt: 0,
    version: 1,
    createdAt: at,
    updatedAt: at,
    ...extra,
  };
}

const puts = (ops: StoreOp[]) =>
  ops.filter((o) => o.kind === 'put').map((o) => (o as unknown as { object: Task }).object);

describe('orchestrator', () => {
  it('creates one pending task per missing replica slot', () => {
    const ops = reconcile({
      services: [service(spec({ kind: 'replicated', replicas: 3 }))],
      tasks: [task(1, 'n1', 'running')],
      nodes: [node('n1')],
      now,
    });
    expect(puts(ops).map((t) => [t.slot, t.status.state, t.nodeId])).toEqual([
      [2, 'pending', null],
      [3, 'pending', null],
    ]);
  });

  it('scales down by shutting down the highest slots', () => {
    const tasks = [1, 2, 3].map((slot) => task(slot, 'n1', 'running'));
    const ops = reconcile({
      services: [service(spec({ kind: 'replicated', replicas: 1 }))],
      tasks,
      nodes: [node('n1')],
      now,
    });
    expect(puts(ops).map((t) => [t.slot, t.desiredState])).toEqual([
      [2, 'shutdown'],
      [3, 'shutdown'],
    ]);
  });

  it('replaces a failed task per the restart policy, counting the attempt, and stops after maxAttempts', () => {
    const s = service(spec({ kind: 'replicated', replicas: 1 }, { condition: 'on-failure', maxAttempts: 2 }));
    const failed = task(1, 'n1', 'failed', { attempt: 0 });
    const replacement = puts(reconcile({ services: [s], tasks: [failed], nodes: [node('n1')], now })).find(
      (t) => t.status.state === 'pending',
    )!;
    expect(replacement.attempt).toBe(1);
    const exhausted = task(1, 'n1', 'failed', { attempt: 2 });
    expect(reconcile({ services: [s], tasks: [exhausted], nodes: [node('n1')], now })).toEqual([]);
    const completed = task(1, 'n1', 'complete');
    expect(reconcile({ services: [s], tasks: [completed], nodes: [node('n1')], now })).toEqual([]);
  });

  it('waits out the restart delay', () => {
    const s = service(spec({ kind: 'replicated', replicas: 1 }, { delayMs: 120_000 }));
    const failed = task(1, 'n1', 'failed', {
      status: { state: 'failed', since: new Date(now - 1000).toISOString(), message: '' },
    });
    expect(reconcile({ services: [s], tasks: [failed], nodes: [node('n1')], now })).toEqual([]);
  });

  it('orphans the tasks of a down node and replaces them elsewhere, not as a restart attempt', () => {
    const s = service(spec({ kind: 'replicated', replicas: 1 }));
    const ops = reconcile({
      services: [s],
      tasks: [task(1, 'n1', 'running')],
      nodes: [node('n1', 'down'), node('n2')],
      now,
    });
    const objects = puts(ops);
    expect(objects[0]).toMatchObject({ slot: 1, desiredState: 'shutdown', status: { state: 'orphaned' } });
    expect(objects[1]).toMatchObject({ slot: 1, nodeId: null, attempt: 0, status: { state: 'pending' } });
  });

  it('moves a task off a node whose labels no longer meet the constraints', () => {
    const s = service({
      ...spec({ kind: 'replicated', replicas: 1 }),
      task: {
        ...spec({ kind: 'replicated', replicas: 1 }).task,
        placement: { constraints: ['node.labels.zone==edge'], spread: [], maxReplicasPerNode: 0 },
      },
    });
    const edge = { ...node('n1'), labels: { zone: 'edge' } };
    expect(reconcile({ services: [s], tasks: [task(1, 'n1', 'running')], nodes: [edge], now })).toEqual([]);
    const relabelled = { ...edge, labels: { zone: 'core' } };
    const objects = puts(reconcile({ services: [s], tasks: [task(1, 'n1', 'running')], nodes: [relabelled], now }));
    expect(objects[0]).toMatchObject({ slot: 1, desiredState: 'shutdown' });
    expect(objects[1]).toMatchObject({ slot: 1, nodeId: null, status: { state: 'pending' } });
  });

  it('runs one task per ready, active node for a global service', () => {
    const s = service(spec({ kind: 'global' }));
    const nodes = [node('n1'), node('n2'), node('n3', 'down'), node('n4', 'ready', 'drain')];
    const created = puts(reconcile({ services: [s], tasks: [], nodes, now }));
    expect(created.map((t) => [t.nodeId, t.status.state]).sort()).toEqual([
      ['n1', 'assigned'],
      ['n2', 'assigned'],
    ]);
  });

  it('runs a job to its completions, at most maxConcurrent at a time, without restarting completed ones', () => {
    const s = service(spec({ kind: 'replicated-job', maxConcurrent: 2, totalCompletions: 4 }));
    const first = puts(reconcile({ services: [s], tasks: [], nodes: [node('n1')], now }));
    expect(first.map((t) => t.slot)).toEqual([1, 2]);
    const done = [task(1, 'n1', 'complete'), task(2, 'n1', 'complete')];
    expect(puts(reconcile({ services: [s], tasks: done, nodes: [node('n1')], now })).map((t) => t.slot)).toEqual([
      3, 4,
    ]);
  });

  it('stops and then forgets the tasks of a removed service', () => {
    const ops = reconcile({
      services: [],
      tasks: [task(1, 'n1', 'running'), task(2, 'n1', 'shutdown')],
      nodes: [node('n1')],
      now,
    });
    expect(ops.map((o) => o.kind)).toEqual(['put', 'delete']);
  });
});
