/**
 * mulberry32: a small, fast seeded PRNG, the same sequence for the same seed everywhere,
 * so that a failing randomised test can be replayed from its printed seed.
 *
 * @module
 */

/** A generator of numbers in [0, 1) from `seed`. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
