// Seeded pseudo-random numbers (xorshift128+ over 32-bit halves, seeded through splitmix32), so every
// simulation run is a pure function of its seed. Not for cryptography.

export interface Prng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [lo, hi] inclusive. */
  int(lo: number, hi: number): number;
  /** true with probability p. */
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  /** An independent generator derived from this one (for a sub-system, so streams don't interleave). */
  fork(): Prng;
}

function splitmix32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export function createPrng(seed: number): Prng {
  const init = splitmix32(seed);
  let s0 = init() | 1;
  let s1 = init();
  let s2 = init();
  let s3 = init();
  // xoshiro128** : small state, good statistical quality, all 32-bit integer operations.
  const nextU32 = (): number => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  };
  const prng: Prng = {
    next: () => nextU32() / 4294967296,
    int: (lo, hi) => lo + Math.floor((nextU32() / 4294967296) * (hi - lo + 1)),
    chance: (p) => nextU32() / 4294967296 < p,
    pick: (items) => {
      if (items.length === 0) throw new Error('pick from an empty list');
      return items[Math.floor((nextU32() / 4294967296) * items.length)]!;
    },
    fork: () => createPrng(nextU32()),
  };
  return prng;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
