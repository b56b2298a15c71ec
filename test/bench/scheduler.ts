// npm run bench -- scheduler
// The scheduler alone, in process: 10,000 simulated nodes (varied CPUs, memory, GPUs, labels, a few drained or
// down) and 100,000 pending tasks from 100 services with constraints, spread preferences, max-per-node limits and
// GPU reservations. Times schedule() (placements/s), then scheduleInChunks() while watching the event loop: the
// longest synchronous slice, from a setImmediate probe and from perf_hooks.monitorEventLoopDelay. Then an
// incremental pass: one service scaled up by 1,000 with the 100,000 tasks already placed.
// Reference figure (it can't run here): Nomad's C2M, 2,000,000 containers on 6,100 hosts in 22 min 14 s, about
// 1,500 placements/s with 3 schedulers (hashicorp.com/c2m; /work/shared/anchors/hpc-edge.md 1.8).
// The last line is one JSON object with every figure.
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { isDeepStrictEqual } from 'node:util';
import type { Task, TaskTemplate } from '../../daemon/api/services.ts';
import {
  type SchedulerNode,
  type SchedulingInput,
  type SchedulingResult,
  schedule,
  scheduleInChunks,
} from '../../daemon/manager/scheduler/index.ts';
import { taskTemplate } from '../helpers/fixtures.ts';
import { round } from './lib/http-load.ts';

const NODES = Number(process.env.BENCH_NODES ?? 10_000);
const SERVICES = Number(process.env.BENCH_SERVICES ?? 100);
const TASKS = Number(process.env.BENCH_TASKS ?? 100_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SLICE_MS = 5;
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const CPU = 1e9;
const at = '2026-01-01T00:00:00.000Z';

/** mulberry32: the same cluster every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeNodes(rand: () => number): SchedulerNode[] {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
  return Array.from({ length: NODES }, (_, i) => {
    const zone = `z${Math.floor(rand() * 10)}`;
    const cpus = pick([4, 8, 16, 32, 64]);
    const hasGpus = rand() < 0.08;
    const r = rand();
    return {
      id: `node-${i.toString(36).padStart(4, '0')}`,
      hostname: `host-${i}`,
      role: i % 20 === 0 ? 'manager' : 'worker',
      availability: r < 0.02 ? 'drain' : r < 0.025 ? 'pause' : 'active',
      state: rand() < 0.01 ? 'down' : 'ready',
      labels: {
        zone,
        rack: `${zone}-r${Math.floor(rand() * 20)}`,
        tier: rand() < 0.3 ? 'edge' : 'core',
        disk: rand() < 0.5 ? 'ssd' : 'hdd',
      },
      os: 'linux',
      arch: rand() < 0.8 ? 'x86_64' : 'aarch64',
      resources: {
        nanoCpus: cpus * CPU,
        memoryBytes: cpus * pick([2, 4, 8]) * GiB,
        gpus: hasGpus ? Array.from({ length: pick([4, 8]) }, (_, g) => ({ id: `GPU-${i}-${g}` })) : [],
      },
    } satisfies SchedulerNode;
  });
}

const CONSTRAINTS: string[][] = [
  [],
  [],
  ['node.role!=manager'],
  ['node.labels.tier==edge'],
  ['node.labels.tier!=edge', 'node.platform.arch==x86_64'],
  ['node.labels.disk==ssd'],
  ['node.platform.os==linux', 'node.labels.zone!=z0'],
];
const SPREAD: string[][] = [[], ['node.labels.zone'], ['node.labels.zone', 'node.labels.rack']];

function template(s: number, rand: () => number): TaskTemplate {
  const gpu = s % 25 === 7; // 4 of 100 services want a GPU each
  return taskTemplate({
    runtime: 'docker',
    image: `registry.local/app-${s}:1`,
    command: [],
    reservations: {
      nanoCpus: Math.round((0.05 + rand() * 0.95) * 10) * 0.1 * CPU,
      memoryBytes: (64 + Math.floor(rand() * 16) * 64) * MiB,
      gpus: gpu ? 1 : 0,
    },
    restart: { delayMs: 5000 },
    placement: {
      constraints: gpu ? [] : CONSTRAINTS[s % CONSTRAINTS.length]!,
      spread: SPREAD[s % SPREAD.length]!,
      maxReplicasPerNode: s % 10 === 3 ? 2 : 0,
    },
  });
}

function task(service: number, slot: number, t: TaskTemplate): Task {
  return {
    id: `task-${service}-${slot}`,
    serviceId: `svc-${service}`,
    serviceName: `app-${service}`,
    slot,
    nodeId: null,
    specVersion: 1,
    template: t,
    desiredState: 'running',
    status: { state: 'pending', since: at, message: '' },
    devices: [],
    attempt: 0,
    version: 1,
    createdAt: at,
    updatedAt: at,
  };
}

function makePending(rand: () => number): Task[] {
  const tasks: Task[] = [];
  const perService = Math.floor(TASKS / SERVICES);
  for (let s = 0; s < SERVICES; s++) {
    const t = template(s, rand);
    for (let k = 1; k <= perService; k++) tasks.push(task(s, k, t));
  }
  return tasks;
}

/**
 * Runs f while a setImmediate probe and an event-loop-delay histogram watch how long the loop is held. GC pauses
 * (from a PerformanceObserver) are subtracted from each probe gap they fall in, to tell the scheduler's own
 * slices from the collector's.
 */
async function watched<T>(f: () => Promise<T>): Promise<{
  value: T;
  ms: number;
  maxSliceMs: number;
  maxSliceLessGcMs: number;
  maxGcPauseMs: number;
  maxDelayMs: number;
}> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  const gaps: [number, number][] = [];
  const gcs: [number, number][] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push([e.startTime, e.startTime + e.duration]);
  });
  observer.observe({ entryTypes: ['gc'] });
  let last = performance.now();
  let done = false;
  const probe = () => {
    const now = performance.now();
    gaps.push([last, now]);
    last = now;
    if (!done) setImmediate(probe);
  };
  histogram.enable();
  setImmediate(probe);
  const start = performance.now();
  const value = await f();
  const ms = performance.now() - start;
  done = true;
  histogram.disable();
  await new Promise((resolve) => setTimeout(resolve, 10)); // let the observer deliver
  observer.disconnect();
  let maxSliceMs = 0;
  let maxSliceLessGcMs = 0;
  for (const [from, to] of gaps) {
    let gc = 0;
    for (const [a, b] of gcs) gc += Math.max(0, Math.min(b, to) - Math.max(a, from));
    maxSliceMs = Math.max(maxSliceMs, to - from);
    maxSliceLessGcMs = Math.max(maxSliceLessGcMs, to - from - gc);
  }
  return {
    value,
    ms,
    maxSliceMs: round(maxSliceMs, 2),
    maxSliceLessGcMs: round(maxSliceLessGcMs, 2),
    maxGcPauseMs: round(Math.max(0, ...gcs.map(([a, b]) => b - a)), 2),
    maxDelayMs: round(histogram.max / 1e6, 2),
  };
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function asPlaced(pending: Task[], result: SchedulingResult): Task[] {
  const byId = new Map(pending.map((t) => [t.id, t]));
  return result.placements.map((p) => ({
    ...byId.get(p.taskId)!,
    nodeId: p.nodeId,
    devices: p.devices,
    status: { state: 'running', since: at, message: '' },
  }));
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

export async function benchScheduler(): Promise<Record<string, unknown>> {
  const rand = prng(42);
  const nodes = makeNodes(rand);
  const pending = makePending(rand);
  const input: SchedulingInput = { nodes, placed: [], pending };
  log(`${nodes.length} nodes, ${pending.length} pending tasks from ${SERVICES} services`);

  // One run to warm the JIT, then RUNS timed ones.
  const expected = schedule(input);
  const syncRuns: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const start = performance.now();
    schedule(input);
    syncRuns.push(performance.now() - start);
  }
  const syncMs = median(syncRuns);
  const placed = expected.placements.length;
  const perSec = Math.round(placed / (syncMs / 1000));
  log(`schedule: ${placed} placed, ${expected.unplaced.length} unplaced in ${round(syncMs, 1)} ms = ${perSec}/s`);

  const chunked = await watched(() => scheduleInChunks(input, { sliceMs: SLICE_MS }));
  const same = isDeepStrictEqual(chunked.value, expected);
  log(
    `scheduleInChunks: ${round(chunked.ms, 1)} ms, longest slice ${chunked.maxSliceMs} ms (probe; ` +
      `${chunked.maxSliceLessGcMs} ms less GC, longest GC pause ${chunked.maxGcPauseMs} ms), ` +
      `max event-loop delay ${chunked.maxDelayMs} ms, same result: ${same}`,
  );

  // Scale one service up by 1,000 on the loaded cluster: indexing 100,000 placed tasks dominates.
  const alreadyPlaced = asPlaced(pending, expected);
  const more = Array.from({ length: 1000 }, (_, k) =>
    task(1, 100_000 + k, pending[Math.floor(TASKS / SERVICES)]!.template),
  );
  const incrementalRuns: number[] = [];
  let incremental: SchedulingResult = { placements: [], unplaced: [] };
  for (let r = 0; r < RUNS; r++) {
    const start = performance.now();
    incremental = schedule({ nodes, placed: alreadyPlaced, pending: more });
    incrementalRuns.push(performance.now() - start);
  }
  const incrementalMs = median(incrementalRuns);
  log(`incremental: 1000 more tasks with ${alreadyPlaced.length} placed in ${round(incrementalMs, 1)} ms`);

  const reasons = new Map<string, number>();
  for (const u of expected.unplaced) reasons.set(u.reason, (reasons.get(u.reason) ?? 0) + 1);
  return {
    bench: 'scheduler',
    nodes: nodes.length,
    services: SERVICES,
    tasks: pending.length,
    placed,
    unplaced: expected.unplaced.length,
    unplacedReasons: Object.fromEntries([...reasons].sort((a, b) => b[1] - a[1]).slice(0, 5)),
    sync: { runsMs: syncRuns.map((ms) => round(ms, 1)), medianMs: round(syncMs, 1), placementsPerSec: perSec },
    chunked: {
      sliceMs: SLICE_MS,
      totalMs: round(chunked.ms, 1),
      placementsPerSec: Math.round(placed / (chunked.ms / 1000)),
      maxSliceMs: chunked.maxSliceMs,
      maxSliceLessGcMs: chunked.maxSliceLessGcMs,
      maxGcPauseMs: chunked.maxGcPauseMs,
      maxEventLoopDelayMs: chunked.maxDelayMs,
      sameResult: same,
    },
    incremental: {
      placedTasks: alreadyPlaced.length,
      pending: more.length,
      placed: incremental.placements.length,
      medianMs: round(incrementalMs, 1),
    },
    reference: {
      name: 'Nomad C2M (Dec 2020, 3 schedulers, 2M containers on 6,100 hosts in 22 min 14 s)',
      placementsPerSec: 1500,
      source: 'hashicorp.com/c2m',
    },
    target: { placementsPerSec: 20_000, maxSliceMs: 10 },
    ratioToReference: round(perSec / 1500, 1),
  };
}
