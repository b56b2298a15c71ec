// Balancing algorithms of the load balancer: round-robin evenness and exclusions, least-connections with live
// counts, power-of-two-choices with an injected random source.
import { describe, expect, it } from 'vitest';
import { createBalancer, sharedCursor } from '../../daemon/lb/balancer.ts';
import type { Endpoint } from '../../daemon/lb/endpoints.ts';

const eps = (...ids: string[]): Endpoint[] =>
  ids.map((taskId, i) => ({ taskId, nodeId: 'n1', address: `127.0.0.1:${9000 + i}` }));
const none = new Set<string>();

/** A deterministic sequence of values in [0, 1). */
function sequence(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

describe('round-robin', () => {
  it('cycles through every endpoint in turn', () => {
    const b = createBalancer('round-robin', { active: () => 0 });
    const list = eps('a', 'b', 'c');
    const picks = Array.from({ length: 9 }, () => b.pick(list, none)!.taskId);
    expect(picks).toEqual(['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('skips excluded endpoints and stays even over the rest', () => {
    const b = createBalancer('round-robin', { active: () => 0 });
    const list = eps('a', 'b', 'c', 'd');
    const counts: Record<string, number> = {};
    for (let i = 0; i < 300; i++) {
      const id = b.pick(list, new Set(['b']))!.taskId;
      counts[id] = (counts[id] ?? 0) + 1;
    }
    expect(counts).toEqual({ a: 100, c: 100, d: 100 });
  });

  it('returns undefined when all are excluded or the list is empty', () => {
    const b = createBalancer('round-robin', { active: () => 0 });
    expect(b.pick(eps('a', 'b'), new Set(['a', 'b']))).toBeUndefined();
    expect(b.pick([], none)).toBeUndefined();
  });

  it('keeps going when the list shrinks', () => {
    const b = createBalancer('round-robin', { active: () => 0 });
    b.pick(eps('a', 'b', 'c'), none);
    b.pick(eps('a', 'b', 'c'), none);
    const smaller = eps('a');
    expect(b.pick(smaller, none)!.taskId).toBe('a');
    expect(b.pick(smaller, none)!.taskId).toBe('a');
  });
});

describe('round-robin with a shared cursor (ingress threads)', () => {
  it('balancers sharing a cursor rotate as one, and a cursor moved meanwhile is re-read, not overwritten', () => {
    const slots = new Int32Array(new SharedArrayBuffer(8));
    const [one, two] = [0, 1].map(() =>
      createBalancer('round-robin', { active: () => 0, cursor: sharedCursor(slots, 1) }),
    );
    const list = eps('a', 'b', 'c');
    const picks = [one, two, two, one, two, one].map((b) => b!.pick(list, none)!.taskId);
    expect(picks).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
    expect(slots[0]).toBe(0); // its own slot only

    // Another thread moves the cursor between this pick's read and its swap: the swap fails and it picks again.
    let raced = false;
    const racing = {
      load: () => Atomics.load(slots, 1),
      swap: (expected: number, next: number) => {
        if (!raced) {
          raced = true;
          Atomics.store(slots, 1, (expected + 1) % 3); // what the other thread's pick did
          return false;
        }
        return Atomics.compareExchange(slots, 1, expected, next) === expected;
      },
    };
    Atomics.store(slots, 1, 0);
    const b = createBalancer('round-robin', { active: () => 0, cursor: racing });
    expect(b.pick(list, none)!.taskId).toBe('b'); // 'a' went to the other thread
    expect(Atomics.load(slots, 1)).toBe(2);
  });
});

describe('least-connections', () => {
  it('picks the endpoint with the fewest active connections', () => {
    const active: Record<string, number> = { a: 5, b: 1, c: 3 };
    const b = createBalancer('least-connections', { active: (id) => active[id] ?? 0 });
    expect(b.pick(eps('a', 'b', 'c'), none)!.taskId).toBe('b');
    expect(b.pick(eps('a', 'b', 'c'), new Set(['b']))!.taskId).toBe('c');
  });

  it('follows live counts as connections open', () => {
    const active: Record<string, number> = { a: 0, b: 0, c: 0 };
    const b = createBalancer('least-connections', { active: (id) => active[id] ?? 0 });
    const list = eps('a', 'b', 'c');
    for (let i = 0; i < 30; i++) active[b.pick(list, none)!.taskId]!++;
    expect(active).toEqual({ a: 10, b: 10, c: 10 });
  });

  it('spreads ties instead of always taking the first', () => {
    const b = createBalancer('least-connections', { active: () => 0 });
    const list = eps('a', 'b', 'c');
    const picks = new Set(Array.from({ length: 3 }, () => b.pick(list, none)!.taskId));
    expect(picks.size).toBe(3);
  });
});

describe('power of two choices', () => {
  it('takes the less busy of the two drawn', () => {
    const active: Record<string, number> = { a: 9, b: 2, c: 4, d: 0 };
    // First draw: index 0 (a) of 4. Second: floor(0.5 * 3) = 1 among the other three, which skips a: index 2 (c).
    const b = createBalancer('p2c', { active: (id) => active[id] ?? 0, random: sequence(0, 0.5, 0.8, 0) });
    expect(b.pick(eps('a', 'b', 'c', 'd'), none)!.taskId).toBe('c');
    // Next: floor(0.8 * 4) = 3 (d), then floor(0 * 3) = 0 (a): d has no connections.
    expect(b.pick(eps('a', 'b', 'c', 'd'), none)!.taskId).toBe('d');
  });

  it('never draws the same endpoint twice', () => {
    const active: Record<string, number> = { a: 1, b: 0 };
    // Both draws give index 0: the second is shifted past the first, so b is compared and wins.
    const b = createBalancer('p2c', { active: (id) => active[id] ?? 0, random: sequence(0, 0) });
    expect(b.pick(eps('a', 'b'), none)!.taskId).toBe('b');
  });

  it('copes with a random source that returns 1', () => {
    const b = createBalancer('p2c', { active: () => 0, random: () => 1 });
    expect(b.pick(eps('a', 'b', 'c'), none)).toBeDefined();
  });

  it('honours exclusions and single candidates', () => {
    const b = createBalancer('p2c', { active: () => 0, random: sequence(0.1, 0.7, 0.3) });
    for (let i = 0; i < 20; i++) expect(b.pick(eps('a', 'b', 'c'), new Set(['a', 'c']))!.taskId).toBe('b');
    expect(b.pick(eps('a'), none)!.taskId).toBe('a');
    expect(b.pick(eps('a'), new Set(['a']))).toBeUndefined();
  });

  it('steers new connections away from a busy endpoint', () => {
    const active: Record<string, number> = { a: 100, b: 0, c: 0 };
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const b = createBalancer('p2c', { active: (id) => active[id] ?? 0, random });
    let toA = 0;
    for (let i = 0; i < 300; i++) if (b.pick(eps('a', 'b', 'c'), none)!.taskId === 'a') toA++;
    expect(toA).toBe(0);
  });
});
