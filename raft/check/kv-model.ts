/**
 * Sequential specification of the simulator's key-value store, for the linearizability checker.
 *
 * Keys are independent, so the model partitions histories by key and its state is the value of the one
 * key a partition is about (a missing key reads as '').
 */
import type { Model, Operation } from './linearizability.ts';

export type KvInput =
  | { op: 'get'; key: string }
  | { op: 'put'; key: string; value: string }
  | { op: 'append'; key: string; value: string };

/** `{ value }` for a get, `{}` for a put or append. */
export type KvOutput = { value: string } | Record<string, never>;

export type KvOperation = Operation<KvInput, KvOutput>;

export const kvModel: Model<string, KvInput, KvOutput> = {
  init: () => '',

  step(state, input, output) {
    switch (input.op) {
      case 'get':
        // A get never changes the state; with an unknown outcome any value is acceptable.
        return { ok: output === undefined || ('value' in output && output.value === state), next: state };
      case 'put':
        return { ok: true, next: input.value };
      case 'append':
        return { ok: true, next: state + input.value };
    }
  },

  readOnly: (input) => input.op === 'get',
  equal: (a, b) => a === b,
  hash: (s) => s,

  partition(history) {
    const byKey = new Map<string, KvOperation[]>();
    for (const op of history) {
      let ops = byKey.get(op.input.key);
      if (ops === undefined) {
        ops = [];
        byKey.set(op.input.key, ops);
      }
      ops.push(op);
    }
    return [...byKey.values()].map(withoutUnobservableOps);
  },

  describeOperation: describeKvOperation,
  describeState: (s) => JSON.stringify(s),
};

/** E.g. `c3 get(k1) -> "ab" [t=10..14]`, `c1 append(k1, "b") [t=3..7]`; `-> ?` when the outcome is unknown. */
export function describeKvOperation(op: KvOperation): string {
  const { input, output } = op;
  const call = input.op === 'get' ? `get(${input.key})` : `${input.op}(${input.key}, ${JSON.stringify(input.value)})`;
  let result = '';
  if (output === undefined) result = ' -> ?';
  else if ('value' in output) result = ` -> ${JSON.stringify(output.value)}`;
  const end = op.return === Number.POSITIVE_INFINITY ? '∞' : `${op.return}`;
  return `c${op.clientId} ${call}${result} [t=${op.call}..${end}]`;
}

/**
 * Drops operations with unknown outcome that cannot matter, because each one left pending multiplies the
 * configurations a failing search must exhaust (it may take effect at any point, or not at all).
 *
 * - A get whose answer never arrived neither changes nor constrains anything.
 * - A timed-out put or append of value v, where no get of this key returned a string containing v, can
 *   be dropped without changing the verdict. If the history is linearizable with it, then in that order
 *   no get runs between it and the next put (such a get would contain v, as puts replace and appends only
 *   extend), so removing it leaves every get's result unchanged. Conversely, if the history is
 *   linearizable without it, it can be placed last, where nobody observes it. A coincidental match
 *   (v spelled by other values) or an empty v merely keeps the operation, which is always sound.
 */
function withoutUnobservableOps(ops: KvOperation[]): KvOperation[] {
  const seen = ops
    .map((op) => (op.input.op === 'get' && op.output !== undefined && 'value' in op.output ? op.output.value : ''))
    .join('\u0000');
  return ops.filter((op) => op.output !== undefined || (op.input.op !== 'get' && seen.includes(op.input.value)));
}
