// Named resources an operator declares for a node, for what discovery cannot see (FPGAs, InfiniBand ports...):
//   --node-resource fpga=2        two anonymous units: ids fpga-0, fpga-1
//   --node-resource ib=mlx5_0     one named unit: id mlx5_0
// Flags of the same kind add up (fpga=2 twice gives fpga-0..fpga-3). The scheduler allocates by ID, like GPUs.
// A malformed flag is an error naming it: a node must not start advertising something other than what was meant.

export interface NodeResource {
  kind: string;
  ids: string[];
}

const KIND = /^[A-Za-z][A-Za-z0-9_.-]*$/;
/** Device names, CDI names (vendor.com/class=name) and paths-like IDs; no commas, spaces or quotes. */
const ID = /^[A-Za-z0-9][A-Za-z0-9_.:/=+-]*$/;
/** Anonymous units per flag: enough for any real device count, not enough to exhaust memory by a typo. */
const MAX_COUNT = 4096;

function bad(flag: string, problem: string): Error {
  return new Error(`--node-resource "${flag}": ${problem}`);
}

export function parseNodeResources(flags: string[]): NodeResource[] {
  const byKind = new Map<string, string[]>();
  const anonymous = new Map<string, number>();
  for (const flag of flags) {
    const eq = flag.indexOf('=');
    if (eq < 0) throw bad(flag, 'want KIND=COUNT or KIND=ID (e.g. fpga=2, ib=mlx5_0)');
    const kind = flag.slice(0, eq).trim();
    const value = flag.slice(eq + 1).trim();
    if (kind === '') throw bad(flag, 'empty resource name');
    if (!KIND.test(kind))
      throw bad(flag, `invalid resource name "${kind}" (letters, digits, "_", ".", "-"; a letter first)`);
    if (value === '') throw bad(flag, 'empty value: want a count or an ID');
    let added: string[];
    if (/^\d+$/.test(value)) {
      const count = Number(value);
      if (count === 0) throw bad(flag, 'a count must be at least 1');
      if (count > MAX_COUNT) throw bad(flag, `a count of at most ${MAX_COUNT}`);
      const first = anonymous.get(kind) ?? 0;
      anonymous.set(kind, first + count);
      added = Array.from({ length: count }, (_, i) => `${kind}-${first + i}`);
    } else {
      if (!ID.test(value)) throw bad(flag, `invalid ID "${value}"`);
      added = [value];
    }
    const ids = byKind.get(kind) ?? [];
    for (const id of added) {
      if (ids.includes(id)) throw bad(flag, `${kind} "${id}" is declared twice`);
      ids.push(id);
    }
    byKind.set(kind, ids);
  }
  return [...byKind].map(([kind, ids]) => ({ kind, ids }));
}
