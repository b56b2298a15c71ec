/**
 * Linearizability checker for client histories recorded against the Raft simulator (or anything else
 * with a sequential specification).
 *
 * The algorithm is the one porcupine (github.com/anishathalye/porcupine) uses: Wing & Gong's search as
 * improved by Lowe ("Testing for linearizability", 2017), plus P-compositionality (Horn & Kroening).
 *
 * - Every operation becomes two events, its call and its return, sorted by time into a doubly linked
 *   list. An operation may be linearized next only if its call comes before the first return still in
 *   the list: anything called after that return started after some pending operation finished, so it
 *   cannot be ordered before it.
 * - The search takes the earliest such operation whose step the model accepts, removes its two events
 *   from the list and starts again from the front. When the front-most remaining event is a return,
 *   every candidate before it has failed: undo the most recent choice and try the next candidate.
 * - A cache of (set of linearized operations, model state) configurations already explored prunes the
 *   search: reaching the same pair again by another order cannot lead anywhere new. This is what makes
 *   the search practical on histories of thousands of operations.
 * - Two refinements over porcupine, both explained where they are made: the cache identifies the set of
 *   linearized operations by the operations still in flight instead of a bitset over all of them, and
 *   backtracking skips the alternatives to a read-only operation (if the model says which those are).
 * - The search is exponential in the worst case (the problem is NP-complete): long bursts of concurrent
 *   writes that no read pins down, or many timed-out writes that were observed, make it slow. Hence the
 *   timeout.
 * - If the model can split the history into independent sub-histories (one per key for a key-value
 *   store), each is checked alone: a history is linearizable iff each of its parts is, and the search
 *   cost grows with the concurrency inside one part, not with the whole history.
 *
 * The search is an explicit loop with its own stack (no recursion), written as a generator that pauses
 * every thousand steps or so, letting a driver enforce a deadline or give the event loop a turn.
 */

export interface Operation<I, O> {
  clientId: number;
  input: I;
  /** Time the client invoked the operation. */
  call: number;
  /** The answer the client got; undefined when the outcome is unknown (the client timed out). */
  output: O | undefined;
  /** Time the client got the answer; Number.POSITIVE_INFINITY when it timed out. */
  return: number;
}

export interface Model<S, I, O> {
  init(): S;
  /**
   * Whether applying `input` to `state` can produce `output`, and the state after it. When `output` is
   * undefined (unknown outcome) the model must accept any outcome the input could have had.
   */
  step(state: S, input: I, output: O | undefined): { ok: boolean; next: S };
  equal(a: S, b: S): boolean;
  /**
   * Optional: true if the operation leaves every state unchanged (a read). Lets the search skip the
   * alternatives to it when backtracking. Must hold in all states: an operation that only sometimes
   * changes nothing (a delete of a missing key, a compare-and-set that fails) is not read-only.
   */
  readOnly?(input: I): boolean;
  /** Optional: a string that equal states share; lets the cache skip most `equal` calls. */
  hash?(s: S): string;
  /** Optional: independent sub-histories (e.g. one per key), each checked on its own. */
  partition?(history: Operation<I, O>[]): Operation<I, O>[][];
  describeOperation?(op: Operation<I, O>): string;
  /** Optional: shown in the explanation of a failure. */
  describeState?(s: S): string;
}

/**
 * - `ok: true, timedOut: false`: the history is linearizable.
 * - `ok: false`: it is not; `partition` is the 0-based index (into `model.partition`'s result, 0 when the
 *   model does not partition) of a part that has no linearization, and `explanation` says why.
 * - `ok: true, timedOut: true`: inconclusive. The deadline passed before the search finished and no
 *   violation had been found so far (porcupine's "Unknown"). Like porcupine's users, we let this count as
 *   a pass so a slow machine does not turn into a false alarm; callers that want proof must also check
 *   `timedOut`. `explanation` says how far the check got. A violation found before the deadline is always
 *   reported as `ok: false`, never hidden by a later timeout.
 */
export interface CheckResult {
  ok: boolean;
  timedOut: boolean;
  partition?: number;
  explanation?: string;
}

export interface CheckOptions {
  /** Give up after this long (see CheckResult for what that returns). Default: no limit. */
  timeoutMs?: number;
}

export interface AsyncCheckOptions extends CheckOptions {
  /** Longest stretch of work between two turns of the event loop. Default 10 ms. */
  sliceMs?: number;
}

/** Checks synchronously. It blocks the event loop until done, or for at most about `timeoutMs`. */
export function checkOperations<S, I, O>(
  model: Model<S, I, O>,
  history: Operation<I, O>[],
  options: CheckOptions = {},
): CheckResult {
  const started = performance.now();
  const deadline = started + (options.timeoutMs ?? Number.POSITIVE_INFINITY);
  const run = checkAll(model, history);
  for (;;) {
    const r = run.next();
    if (r.done) return r.value;
    if (performance.now() >= deadline) return inconclusive(r.value, performance.now() - started);
  }
}

/** Same result as checkOperations, but yields to the event loop every `sliceMs`: for use in live processes. */
export async function checkOperationsAsync<S, I, O>(
  model: Model<S, I, O>,
  history: Operation<I, O>[],
  options: AsyncCheckOptions = {},
): Promise<CheckResult> {
  const started = performance.now();
  const deadline = started + (options.timeoutMs ?? Number.POSITIVE_INFINITY);
  const sliceMs = options.sliceMs ?? 10;
  const run = checkAll(model, history);
  let sliceEnd = performance.now() + sliceMs;
  for (;;) {
    const r = run.next();
    if (r.done) return r.value;
    const now = performance.now();
    if (now >= deadline) return inconclusive(r.value, now - started);
    if (now >= sliceEnd) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      sliceEnd = performance.now() + sliceMs;
    }
  }
}

/** Where the search is when it pauses, so a timeout can say how far it got. */
interface Progress {
  partition: number;
  partitions: number;
}

function inconclusive(at: Progress, elapsedMs: number): CheckResult {
  return {
    ok: true,
    timedOut: true,
    explanation:
      `inconclusive: gave up after ${Math.round(elapsedMs)} ms while checking partition ${at.partition} ` +
      `(of ${at.partitions}); no violation found before that`,
  };
}

function* checkAll<S, I, O>(model: Model<S, I, O>, history: Operation<I, O>[]): Generator<Progress, CheckResult> {
  const parts = model.partition ? model.partition(history) : [history];
  const progress: Progress = { partition: 0, partitions: parts.length };
  for (let p = 0; p < parts.length; p++) {
    progress.partition = p;
    const ops = parts[p]!;
    const search = searchPartition(model, ops);
    let r = search.next();
    while (!r.done) {
      yield progress;
      r = search.next();
    }
    if (r.value !== undefined) {
      return { ok: false, timedOut: false, partition: p, explanation: explain(model, ops, p, parts.length, r.value) };
    }
  }
  return { ok: true, timedOut: false };
}

/** How many search steps between pauses: small enough for a responsive deadline, large enough to be free. */
const STEPS_PER_PAUSE = 1024;
const NIL = -1;

/** The deepest point a failed search reached, kept to explain the failure. */
interface DeadEnd<S> {
  /** Operations (indices into the partition) in the order linearized. */
  prefix: number[];
  state: S;
  /** Operations that were pending there, none of which the model accepted next. */
  candidates: number[];
  /** The pending operation that returned first, which is what stopped the search going further. */
  blocking: number;
}

/**
 * Searches one partition. Returns undefined if it is linearizable, else the deepest dead end found.
 * Yields (nothing) every STEPS_PER_PAUSE steps.
 */
function* searchPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: Operation<I, O>[],
): Generator<void, DeadEnd<S> | undefined> {
  const n = ops.length;

  // Events: 2i is the call of operation i, 2i+1 its return. An unknown outcome means the operation may
  // take effect at any time after its call, or never: give it a return after everything else (even if
  // the client recorded when it gave up, the request may still be in flight). Placed at the very end, its
  // effect is unobservable, which is how "never took effect" is represented.
  const time = (e: number): number => {
    const op = ops[e >> 1]!;
    if ((e & 1) === 0) return op.call;
    return op.output === undefined ? Number.POSITIVE_INFINITY : op.return;
  };
  for (let i = 0; i < n; i++) {
    if (!(time(2 * i) <= time(2 * i + 1))) {
      throw new RangeError(`operation ${describe(model, ops[i]!)} returns before it is called`);
    }
  }
  // Sort by time. At equal times calls go first: an operation that returns at t and one called at t are
  // treated as concurrent, which can only accept more histories (no false alarms from coarse clocks).
  const order = Array.from({ length: 2 * n }, (_, e) => e).sort((a, b) => {
    const ta = time(a);
    const tb = time(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    if ((a & 1) !== (b & 1)) return (a & 1) - (b & 1);
    return a - b;
  });

  // Doubly linked list over the events, as index arrays. Node 0 is the head; event e is node e + 1.
  const next = new Int32Array(2 * n + 1);
  const prev = new Int32Array(2 * n + 1);
  let last = 0;
  for (const e of order) {
    next[last] = e + 1;
    prev[e + 1] = last;
    last = e + 1;
  }
  next[last] = NIL;
  const isCall = (node: number): boolean => (node & 1) === 1; // node = 2i + 1 for a call
  const opOf = (node: number): number => (node - 1) >> 1;
  const unlink = (node: number): void => {
    next[prev[node]!] = next[node]!;
    if (next[node] !== NIL) prev[next[node]!] = prev[node]!;
  };
  const relink = (node: number): void => {
    next[prev[node]!] = node;
    if (next[node] !== NIL) prev[next[node]!] = node;
  };
  // Linearizing operation i takes both its events out; undoing puts them back in the reverse order.
  const lift = (call: number): void => {
    unlink(call);
    unlink(call + 1);
  };
  const unlift = (call: number): void => {
    relink(call + 1);
    relink(call);
  };

  // Cache of configurations already explored: (set of linearized operations, state). Porcupine keys the
  // set with a bitset over all operations, O(n) per step. The list itself identifies the set more
  // cheaply: let F be the first return left in it. Every linearized operation was called before F
  // returned (it was picked ahead of the first return of its time, which was not after F), and every
  // operation called before F returned is linearized unless its call is still in the list ahead of F.
  // So the set is fixed by F and the calls ahead of it: the operations in flight at that moment, a
  // handful however long the history. Equal keys mean equal sets, so only states need comparing.
  const cache = new Map<string, S[]>();
  /** Records the current set with `state`; false if that configuration was already explored. */
  const remember = (state: S): boolean => {
    let key = '';
    let c = next[0]!;
    for (; c !== NIL && isCall(c); c = next[c]!) key += `${c},`;
    key += c;
    if (model.hash) key += `:${model.hash(state)}`;
    const states = cache.get(key);
    if (states === undefined) {
      cache.set(key, [state]);
      return true;
    }
    if (states.some((seen) => model.equal(seen, state))) return false;
    states.push(state);
    return true;
  };

  // The current partial linearization: the call nodes lifted, the state before each, and whether each
  // is read-only (see the backtracking below for why that matters).
  const chosen: number[] = [];
  const before: S[] = [];
  const reads: boolean[] = [];
  let state = model.init();
  let deepest: DeadEnd<S> | undefined;
  let node = next[0]!;
  let steps = 0;

  while (next[0] !== NIL) {
    if (++steps % STEPS_PER_PAUSE === 0) yield;
    if (isCall(node)) {
      const i = opOf(node);
      const op = ops[i]!;
      const r = model.step(state, op.input, op.output);
      if (r.ok) {
        lift(node);
        if (remember(r.next)) {
          chosen.push(node);
          before.push(state);
          reads.push(model.readOnly?.(op.input) ?? false);
          state = r.next;
          node = next[0]!;
          continue;
        }
        unlift(node);
      }
      // Rejected, or leads to a configuration already explored: try the next candidate. A call's
      // return is always later in the list, so this never runs off the end.
      node = next[node]!;
      continue;
    }

    // `node` is the first remaining return: every candidate before it failed from here. Remember the
    // deepest such point for the explanation, then backtrack.
    if (deepest === undefined || chosen.length > deepest.prefix.length) {
      const candidates: number[] = [];
      for (let c = next[0]!; c !== node; c = next[c]!) candidates.push(opOf(c));
      deepest = { prefix: chosen.map(opOf), state, candidates, blocking: opOf(node) };
    }
    // Undo the last choice and try the candidate after it, unless that choice was a read-only operation
    // X. If any linearization exists from the configuration X was picked in, moving X to its front gives
    // another: every operation still pending there returns after the first return left, which is after
    // X's call, so none has to precede X; X was accepted in that state; and as X changes no state, the
    // others see the same states as before. So that configuration fails exactly when the one with X
    // added does: give it up too, and keep undoing. Without this, a dead end would be re-explored once
    // for every subset of the reads concurrent with it. (Checking that X left this one state unchanged
    // would not do: a delete of a missing key may matter once moved after a put of that key.)
    for (;;) {
      const undo = chosen.pop();
      if (undo === undefined) return deepest;
      state = before.pop()!;
      unlift(undo);
      if (!reads.pop()) {
        node = next[undo]!;
        break;
      }
    }
  }
  return undefined;
}

function describe<S, I, O>(model: Model<S, I, O>, op: Operation<I, O>): string {
  if (model.describeOperation) return model.describeOperation(op);
  const output = op.output === undefined ? '?' : JSON.stringify(op.output);
  return `c${op.clientId} ${JSON.stringify(op.input)} -> ${output} [t=${op.call}..${op.return}]`;
}

/** How many operations of the linearizable prefix to print: the end of it is what matters. */
const PREFIX_SHOWN = 10;

function explain<S, I, O>(
  model: Model<S, I, O>,
  ops: Operation<I, O>[],
  partition: number,
  partitions: number,
  dead: DeadEnd<S>,
): string {
  const lines = [`not linearizable: partition ${partition} (of ${partitions}) has no valid order.`];
  const shown = dead.prefix.slice(-PREFIX_SHOWN);
  lines.push(
    `longest linearizable prefix found: ${dead.prefix.length} operation(s)` +
      (shown.length < dead.prefix.length ? `, last ${shown.length} shown:` : ':'),
  );
  if (shown.length < dead.prefix.length) lines.push(`  ... ${dead.prefix.length - shown.length} earlier`);
  for (const i of shown) lines.push(`  ${describe(model, ops[i]!)}`);
  if (shown.length === 0) lines.push('  (none)');
  if (model.describeState) lines.push(`state after it: ${model.describeState(dead.state)}`);
  lines.push(
    `then none of these could take effect next (each was invoked before ` +
      `${describe(model, ops[dead.blocking]!)} returned):`,
  );
  for (const i of dead.candidates) lines.push(`  ${describe(model, ops[i]!)}`);
  return lines.join('\n');
}
