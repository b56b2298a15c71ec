// Chooses the endpoint for a new connection. One balancer per published port and algorithm: round-robin keeps a
// cursor, the other two read live active-connection counts that the forwarder maintains.
import type { BalancingAlgorithm, Endpoint, TaskId } from './endpoints.ts';

export interface Balancer {
  /** An endpoint whose task is not in `excluded`, or undefined when every endpoint is. */
  pick(endpoints: readonly Endpoint[], excluded: ReadonlySet<TaskId>): Endpoint | undefined;
}

export interface BalancerOptions {
  /** Open connections to a task through this balancer's ingress (least-connections, p2c). */
  active: (taskId: TaskId) => number;
  /** Uniform in [0, 1); injectable so that tests are deterministic. Default Math.random. */
  random?: () => number;
  /** Round-robin's position, when several ingresses of one port (threads) must rotate as one. Default its own. */
  cursor?: RoundRobinCursor;
}

/** Where round-robin goes on from: an index into the endpoint list, moved only by compare-and-swap. */
export interface RoundRobinCursor {
  load(): number;
  /** Sets the cursor to `next` if it still is `expected`; false when another picker moved it first. */
  swap(expected: number, next: number): boolean;
}

/**
 * A cursor in shared memory (one Int32 slot), for ingress threads: each thread's round-robin then goes on from where
 * the last pick of any thread left off, so clients see one rotation, as from a single balancer.
 */
export function sharedCursor(slots: Int32Array, slot: number): RoundRobinCursor {
  return {
    load: () => Atomics.load(slots, slot),
    swap: (expected, next) => Atomics.compareExchange(slots, slot, expected, next) === expected,
  };
}

function ownCursor(): RoundRobinCursor {
  let value = 0;
  return {
    load: () => value,
    swap: (expected, next) => {
      if (value !== expected) return false;
      value = next;
      return true;
    },
  };
}

export function createBalancer(algorithm: BalancingAlgorithm, options: BalancerOptions): Balancer {
  switch (algorithm) {
    case 'round-robin':
      return new RoundRobin(options.cursor ?? ownCursor());
    case 'least-connections':
      return new LeastConnections(options.active);
    case 'p2c':
      return new PowerOfTwoChoices(options.active, options.random ?? Math.random);
  }
}

class RoundRobin implements Balancer {
  private readonly cursor: RoundRobinCursor;

  constructor(cursor: RoundRobinCursor) {
    this.cursor = cursor;
  }

  pick(endpoints: readonly Endpoint[], excluded: ReadonlySet<TaskId>): Endpoint | undefined {
    const n = endpoints.length;
    // The cursor is an index, not a task: when the list changes (a task added or gone) rotation simply goes on
    // over the new list, which is as even as anything can be without remembering past lists. A shared cursor
    // moved by another thread meanwhile makes the swap fail: pick again from where that one left it.
    for (;;) {
      const from = this.cursor.load();
      let picked: Endpoint | undefined;
      let next = 0;
      for (let i = 0; i < n; i++) {
        const endpoint = endpoints[(from + i) % n]!;
        if (excluded.has(endpoint.taskId)) continue;
        picked = endpoint;
        next = (from + i + 1) % n;
        break;
      }
      if (picked === undefined) return undefined;
      if (this.cursor.swap(from, next)) return picked;
    }
  }
}

class LeastConnections implements Balancer {
  /** Where the scan for the minimum starts: rotating it spreads ties instead of always taking the first. */
  private start = 0;
  private readonly active: (taskId: TaskId) => number;

  constructor(active: (taskId: TaskId) => number) {
    this.active = active;
  }

  pick(endpoints: readonly Endpoint[], excluded: ReadonlySet<TaskId>): Endpoint | undefined {
    const n = endpoints.length;
    let best: Endpoint | undefined;
    let bestActive = Number.POSITIVE_INFINITY;
    let bestIndex = 0;
    for (let i = 0; i < n; i++) {
      const index = (this.start + i) % n;
      const endpoint = endpoints[index]!;
      if (excluded.has(endpoint.taskId)) continue;
      const active = this.active(endpoint.taskId);
      if (active < bestActive) {
        best = endpoint;
        bestActive = active;
        bestIndex = index;
      }
    }
    if (best !== undefined) this.start = (bestIndex + 1) % n;
    return best;
  }
}

/** Two endpoints drawn at random, the less busy one wins: near least-connections, without herding onto one task. */
class PowerOfTwoChoices implements Balancer {
  private readonly active: (taskId: TaskId) => number;
  private readonly random: () => number;

  constructor(active: (taskId: TaskId) => number, random: () => number) {
    this.active = active;
    this.random = random;
  }

  pick(endpoints: readonly Endpoint[], excluded: ReadonlySet<TaskId>): Endpoint | undefined {
    const eligible = excluded.size === 0 ? endpoints : endpoints.filter((e) => !excluded.has(e.taskId));
    const n = eligible.length;
    if (n === 0) return undefined;
    if (n === 1) return eligible[0];
    const i = this.index(n);
    // A second index drawn from the other n-1, so the two are always distinct.
    let j = this.index(n - 1);
    if (j >= i) j++;
    const a = eligible[i]!;
    const b = eligible[j]!;
    return this.active(b.taskId) < this.active(a.taskId) ? b : a;
  }

  private index(n: number): number {
    // Clamped: an injected source returning exactly 1 must not index past the end.
    return Math.min(n - 1, Math.floor(this.random() * n));
  }
}
