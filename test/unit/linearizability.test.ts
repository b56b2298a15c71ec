import { describe, expect, it } from 'vitest';
import { describeKvOperation, type KvInput, type KvOperation, kvModel } from '../../raft/check/kv-model.ts';
import { checkOperations, checkOperationsAsync, type Model } from '../../raft/check/linearizability.ts';

const INF = Number.POSITIVE_INFINITY;

function get(clientId: number, key: string, value: string | undefined, call: number, ret: number): KvOperation {
  return {
    clientId,
    input: { op: 'get', key },
    call,
    output: value === undefined ? undefined : { value },
    return: ret,
  };
}
function put(clientId: number, key: string, value: string, call: number, ret: number): KvOperation {
  return { clientId, input: { op: 'put', key, value }, call, output: ret === INF ? undefined : {}, return: ret };
}
function append(clientId: number, key: string, value: string, call: number, ret: number): KvOperation {
  return { clientId, input: { op: 'append', key, value }, call, output: ret === INF ? undefined : {}, return: ret };
}

function expectOk(history: KvOperation[]): void {
  const r = checkOperations(kvModel, history);
  expect(r.explanation).toBeUndefined();
  expect(r).toEqual({ ok: true, timedOut: false });
}

/** Asserts the history fails and the explanation names `culprit`; returns the explanation. */
function expectViolation(history: KvOperation[], culprit: KvOperation): string {
  const r = checkOperations(kvModel, history);
  expect(r.ok).toBe(false);
  expect(r.timedOut).toBe(false);
  expect(r.explanation).toContain(describeKvOperation(culprit));
  return r.explanation!;
}

describe('linearizability checker with the KV model: linearizable histories', () => {
  it('accepts an empty history', () => {
    expectOk([]);
  });

  it('accepts a sequential history', () => {
    expectOk([
      get(1, 'k', '', 0, 1),
      put(1, 'k', 'a', 2, 3),
      get(2, 'k', 'a', 4, 5),
      append(2, 'k', 'b', 6, 7),
      get(1, 'k', 'ab', 8, 9),
      put(1, 'k', 'c', 10, 11),
      get(2, 'k', 'c', 12, 13),
    ]);
  });

  it('accepts concurrent overlapping writes read in either order', () => {
    for (const winner of ['a', 'b']) {
      expectOk([
        put(1, 'k', 'a', 0, 10),
        put(2, 'k', 'b', 1, 9),
        get(3, 'k', winner, 11, 12),
        get(1, 'k', winner, 13, 14),
      ]);
    }
  });

  it('accepts reads concurrent with a write seeing the old value, then the new one', () => {
    expectOk([put(1, 'k', 'a', 0, 10), get(2, 'k', '', 1, 2), get(3, 'k', 'a', 3, 4), get(2, 'k', 'a', 5, 6)]);
  });

  it('treats an operation returning at t and one called at t as concurrent', () => {
    expectOk([put(1, 'k', 'a', 0, 5), get(2, 'k', '', 5, 6)]);
  });

  it('accepts a timed-out write that is observed later', () => {
    expectOk([put(1, 'k', 'a', 0, INF), get(2, 'k', '', 1, 2), get(2, 'k', 'a', 10, 11), get(3, 'k', 'a', 12, 13)]);
  });

  it('accepts a timed-out write that never took effect', () => {
    expectOk([
      put(1, 'k', 'a', 0, INF),
      get(2, 'k', '', 5, 6),
      put(2, 'k', 'b', 7, 8),
      get(3, 'k', 'b', 9, 10),
      get(3, 'k', 'b', 100, 101),
    ]);
  });

  it('accepts a timed-out write even when the client recorded when it gave up', () => {
    // The request may still be in flight after the client stops waiting, so it can take effect later.
    const late: KvOperation = {
      clientId: 1,
      input: { op: 'put', key: 'k', value: 'a' },
      call: 0,
      output: undefined,
      return: 5,
    };
    expectOk([late, get(2, 'k', '', 6, 7), get(2, 'k', 'a', 8, 9)]);
  });

  it('ignores gets whose answer never arrived', () => {
    expectOk([put(1, 'k', 'a', 0, 1), get(2, 'k', undefined, 2, INF), get(3, 'k', 'a', 3, 4)]);
  });

  it('accepts concurrent appends in either order, and a timed-out append applied once', () => {
    for (const seen of ['xy', 'yx']) {
      expectOk([append(1, 'k', 'x', 0, 10), append(2, 'k', 'y', 1, 9), get(3, 'k', seen, 11, 12)]);
    }
    expectOk([append(1, 'k', 'x', 0, 1), append(2, 'k', 'y', 2, INF), get(3, 'k', 'x', 3, 4), get(3, 'k', 'xy', 5, 6)]);
  });

  it('checks keys independently', () => {
    expectOk([put(1, 'a', '1', 0, 10), put(2, 'b', '2', 0, 10), get(3, 'a', '1', 11, 12), get(3, 'b', '2', 11, 12)]);
  });
});

describe('linearizability checker with the KV model: violations', () => {
  it('rejects a stale read after a completed write', () => {
    const stale = get(3, 'k', 'a', 4, 5);
    const explanation = expectViolation([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2, 3), stale], stale);
    expect(explanation).toContain('longest linearizable prefix found: 2 operation(s)');
    expect(explanation).toContain('state after it: "b"');
  });

  it('rejects a lost write', () => {
    const read = get(2, 'k', '', 2, 3);
    expectViolation([put(1, 'k', 'a', 0, 1), read], read);
    const appended = get(3, 'k', 'x', 4, 5);
    expectViolation([append(1, 'k', 'x', 0, 1), append(2, 'k', 'y', 2, 3), appended], appended);
  });

  it('rejects a duplicate apply', () => {
    const twice = get(2, 'k', 'xx', 2, 3);
    expectViolation([append(1, 'k', 'x', 0, 1), twice], twice);
    // A timed-out append may take effect once at most.
    const twiceAfterTimeout = get(2, 'k', 'xx', 2, 3);
    expectViolation([append(1, 'k', 'x', 0, INF), twiceAfterTimeout], twiceAfterTimeout);
  });

  it('rejects reads going backwards in time between two clients', () => {
    // c2 sees the new value, then c3, which starts after c2 is done, sees the old one.
    const backwards = get(3, 'k', '', 3, 4);
    expectViolation([put(1, 'k', 'a', 0, 10), get(2, 'k', 'a', 1, 2), backwards], backwards);
    // Same after a timed-out write: once observed, it cannot be undone.
    const undone = get(3, 'k', '', 3, 4);
    expectViolation([put(1, 'k', 'a', 0, INF), get(2, 'k', 'a', 1, 2), undone], undone);
  });

  it('rejects two concurrent writes observed in one order and then the other', () => {
    const flipped = get(1, 'k', 'a', 13, 14);
    expectViolation([put(1, 'k', 'a', 0, 10), put(2, 'k', 'b', 1, 9), get(3, 'k', 'b', 11, 12), flipped], flipped);
  });

  it('explains a violation with the longest linearizable prefix and the operations left over', () => {
    const r = checkOperations(kvModel, [
      put(1, 'k', 'a', 0, 10),
      get(2, 'k', 'a', 1, 2),
      get(3, 'k', '', 3, 6),
      get(4, 'k', 'zz', 4, 12),
    ]);
    expect(r.explanation).toBe(
      [
        'not linearizable: partition 0 (of 1) has no valid order.',
        'longest linearizable prefix found: 2 operation(s):',
        '  c1 put(k, "a") [t=0..10]',
        '  c2 get(k) -> "a" [t=1..2]',
        'state after it: "a"',
        'then none of these could take effect next (each was invoked before c3 get(k) -> "" [t=3..6] returned):',
        '  c3 get(k) -> "" [t=3..6]',
        '  c4 get(k) -> "zz" [t=4..12]',
      ].join('\n'),
    );
  });

  it('reports which partition failed', () => {
    const bad = get(3, 'b', '', 11, 12);
    const r = checkOperations(kvModel, [
      put(1, 'a', '1', 0, 10),
      put(2, 'b', '2', 0, 10),
      get(3, 'a', '1', 11, 12),
      bad,
    ]);
    expect(r.ok).toBe(false);
    expect(r.partition).toBe(1);
    expect(r.explanation).toContain('partition 1 (of 2)');
    expect(r.explanation).toContain(describeKvOperation(bad));
  });

  it('rejects an operation that returns before it is called', () => {
    expect(() => checkOperations(kvModel, [put(1, 'k', 'a', 5, 4)])).toThrow(RangeError);
  });
});

describe('describeKvOperation', () => {
  it('prints client, call, outcome and interval', () => {
    expect(describeKvOperation(get(3, 'k1', 'ab', 10, 14))).toBe('c3 get(k1) -> "ab" [t=10..14]');
    expect(describeKvOperation(append(1, 'k1', 'b', 3, 7))).toBe('c1 append(k1, "b") [t=3..7]');
    expect(describeKvOperation(put(2, 'k2', 'x', 3, INF))).toBe('c2 put(k2, "x") -> ? [t=3..∞]');
  });
});

/** Deterministic PRNG (mulberry32), so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A history that is linearizable by construction. Each client issues operations one after another, as
 * real clients do; each operation takes effect at a random instant inside its interval, and the outputs
 * come from replaying those instants in order on a real sequential map. Intervals of different clients
 * overlap at random. A few writes time out: the client moves on, and the write takes effect at some
 * later instant (possibly after the client's next operations) or never.
 */
function randomHistory(seed: number, count: number, clients: number, keys: number, timeoutRate = 0.02): KvOperation[] {
  const random = rng(seed);
  const int = (n: number) => Math.floor(random() * n);
  const ops: { op: KvOperation; at: number }[] = [];
  const clock = new Array<number>(clients).fill(0);
  for (let k = 0; k < count; k++) {
    const clientId = k % clients;
    const call = clock[clientId]! + 1 + int(20);
    const ret = call + 1 + int(100);
    const key = `k${int(keys)}`;
    const kind = random();
    const input: KvInput =
      kind < 0.5
        ? { op: 'get', key }
        : kind < 0.7
          ? { op: 'put', key, value: `${k};` }
          : { op: 'append', key, value: `${k};` };
    if (input.op !== 'get' && random() < timeoutRate) {
      // Timed out: the client gives up at `ret`; the write lands up to 500 ticks later, or never.
      ops.push({
        op: { clientId, input, call, output: undefined, return: INF },
        at: random() < 0.5 ? call + 1 + int(500) : INF,
      });
    } else {
      ops.push({ op: { clientId, input, call, output: {}, return: ret }, at: call + random() * (ret - call) });
    }
    clock[clientId] = ret;
  }
  const store = new Map<string, string>();
  for (const { op } of ops.filter(({ at }) => at !== INF).sort((a, b) => a.at - b.at)) {
    const { input } = op;
    if (input.op === 'get') op.output = { value: store.get(input.key) ?? '' };
    else store.set(input.key, (input.op === 'append' ? (store.get(input.key) ?? '') : '') + input.value);
  }
  return ops.map(({ op }) => op);
}

describe('linearizability checker on large randomized histories', () => {
  const history = randomHistory(42, 5000, 8, 4);

  it('generates what it claims: overlapping intervals and some timed-out writes', () => {
    const overlapping = history.filter((op, i) => i > 0 && op.call < history[i - 1]!.return).length;
    expect(overlapping).toBeGreaterThan(2500);
    expect(history.filter((op) => op.output === undefined).length).toBeGreaterThan(10);
  });

  it('accepts a 5000-operation history that is linearizable by construction', () => {
    expect(checkOperations(kvModel, history, { timeoutMs: 15_000 })).toEqual({ ok: true, timedOut: false });
  });

  it('rejects it once one read is corrupted, naming that read', () => {
    const corrupted = history.map((op) => ({ ...op }));
    const i = corrupted.findIndex((op, j) => j > 2500 && op.input.op === 'get' && op.output !== undefined);
    corrupted[i]!.output = { value: 'corrupt' };
    const r = checkOperations(kvModel, corrupted, { timeoutMs: 15_000 });
    expect(r.ok).toBe(false);
    expect(r.timedOut).toBe(false);
    expect(r.explanation).toContain(describeKvOperation(corrupted[i]!));
  });

  it('rejects it once one read returns a value overwritten long before', () => {
    const stale = history.map((op) => ({ ...op }));
    // A read late in the history that returns the first value ever put to its key.
    const i = stale.findLastIndex((op) => op.input.op === 'get' && op.output !== undefined);
    const key = stale[i]!.input.key;
    const first = stale.find((op) => op.input.key === key && op.input.op === 'put' && op.output !== undefined)!;
    stale[i]!.output = { value: (first.input as { value: string }).value };
    const r = checkOperations(kvModel, stale, { timeoutMs: 15_000 });
    expect(r.ok).toBe(false);
    expect(r.explanation).toContain(describeKvOperation(stale[i]!));
  });
});

describe('linearizability checker deadline', () => {
  // Many concurrent appends and an impossible final read: every order of the appends reaches a distinct
  // state, so the search has to explore a factorial number of configurations before it can give up.
  const hopeless: KvOperation[] = [];
  for (let c = 0; c < 40; c++) hopeless.push(append(c, 'k', String.fromCharCode(65 + c), c, 1000));
  hopeless.push(get(99, 'k', 'impossible', 1001, 1002));

  it('returns an inconclusive pass when the timeout expires', () => {
    const started = performance.now();
    const r = checkOperations(kvModel, hopeless, { timeoutMs: 100 });
    expect(performance.now() - started).toBeLessThan(2000);
    expect(r.ok).toBe(true);
    expect(r.timedOut).toBe(true);
    expect(r.explanation).toMatch(/^inconclusive/);
  });

  it('keeps the event loop responsive in the async variant', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    try {
      const r = await checkOperationsAsync(kvModel, hopeless, { timeoutMs: 300, sliceMs: 5 });
      expect(r.timedOut).toBe(true);
    } finally {
      clearInterval(timer);
    }
    expect(ticks).toBeGreaterThan(10);
  });

  it('gives the same answers asynchronously', async () => {
    const bad = get(2, 'k', 'xx', 2, 3);
    const r = await checkOperationsAsync(kvModel, [append(1, 'k', 'x', 0, 1), bad]);
    expect(r.ok).toBe(false);
    expect(r.explanation).toContain(describeKvOperation(bad));
    expect(await checkOperationsAsync(kvModel, randomHistory(7, 500, 4, 3))).toEqual({ ok: true, timedOut: false });
  });
});

describe('linearizability checker with a model that neither partitions nor hashes', () => {
  // A register holding a number: write, read, and reset to 0. Exercises the default describe, the cache
  // without hashes, and the read-only shortcut.
  type RegisterInput = { write?: number; reset?: true };
  const register: Model<number, RegisterInput, { read?: number }> = {
    init: () => 0,
    step: (s, input, output) => {
      if (input.reset) return { ok: true, next: 0 };
      if (input.write !== undefined) return { ok: true, next: input.write };
      return { ok: output === undefined || output.read === s, next: s };
    },
    readOnly: (input) => !input.reset && input.write === undefined,
    equal: (a, b) => a === b,
  };

  it('does not take an operation that changes nothing in one state for a read', () => {
    // The reset finds the register at 0 already, but it must go after the write for the read to hold.
    const history = [
      { clientId: 1, input: { reset: true as const }, call: 0, output: {}, return: 10 },
      { clientId: 2, input: { write: 1 }, call: 1, output: {}, return: 2 },
      { clientId: 3, input: {}, call: 11, output: { read: 0 }, return: 12 },
    ];
    expect(checkOperations(register, history)).toEqual({ ok: true, timedOut: false });
  });

  it('explores every state reached by the same set of operations', () => {
    // Both writes are linearized either way round; only the order b, a explains the read.
    const history = [
      { clientId: 1, input: { write: 1 }, call: 0, output: {}, return: 10 },
      { clientId: 2, input: { write: 2 }, call: 1, output: {}, return: 9 },
      { clientId: 3, input: {}, call: 11, output: { read: 1 }, return: 12 },
    ];
    expect(checkOperations(register, history)).toEqual({ ok: true, timedOut: false });
  });

  it('accepts a timed-out write that never took effect, without any model-side pruning', () => {
    const history = [
      { clientId: 1, input: { write: 1 }, call: 0, output: undefined, return: INF },
      { clientId: 2, input: {}, call: 1, output: { read: 0 }, return: 2 },
      { clientId: 2, input: { write: 2 }, call: 3, output: {}, return: 4 },
      { clientId: 3, input: {}, call: 5, output: { read: 2 }, return: 6 },
    ];
    expect(checkOperations(register, history)).toEqual({ ok: true, timedOut: false });
  });

  it('accepts and rejects', () => {
    const w = { clientId: 1, input: { write: 1 }, call: 0, output: {}, return: 2 };
    expect(checkOperations(register, [w, { clientId: 2, input: {}, call: 1, output: { read: 0 }, return: 3 }]).ok).toBe(
      true,
    );
    const r = checkOperations(register, [w, { clientId: 2, input: {}, call: 3, output: { read: 0 }, return: 4 }]);
    expect(r.ok).toBe(false);
    expect(r.partition).toBe(0);
    expect(r.explanation).toContain('c2 {} -> {"read":0} [t=3..4]');
  });
});
