/**
 * How long the store's commits take: a histogram with four buckets per doubling, from
 * 1 µs to about an hour, so that a percentile is read with at most 19 % error in a
 * fixed 512 bytes, however many commits it counts.
 *
 * @module
 */

/** Buckets per doubling of the duration. */
const STEPS = 4;
/** Bucket count: 1 µs · 2^(128 / 4) ≈ 1.2 hours, more than any commit can wait. */
const BUCKETS = 128;

/** The bucket of a duration in milliseconds: the first whose upper bound is not below it. */
function bucketOf(ms: number): number {
  const us = ms * 1000;
  if (!(us > 1)) return 0; // also NaN
  return Math.min(BUCKETS - 1, Math.ceil(Math.log2(us) * STEPS));
}

/** `ms` rounded to two decimals, as the broker reports commit times. */
export function roundMs(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/** The upper bound of bucket `i`, in milliseconds. */
function upperMs(i: number): number {
  return 2 ** (i / STEPS) / 1000;
}

/**
 * Commit durations.
 *
 * @example
 * ```ts
 * const t = new CommitTimes();
 * t.record(0.8);
 * t.record(12);
 * t.percentile(0.5); // 0.86: the upper bound of the bucket that holds 0.8
 * ```
 */
export class CommitTimes {
  #counts = new Uint32Array(BUCKETS);
  #count = 0;
  #maxMs = 0;

  /** Commits recorded. */
  get count(): number {
    return this.#count;
  }

  /** The longest commit recorded, exactly, in milliseconds (0 before the first). */
  get maxMs(): number {
    return this.#maxMs;
  }

  record(ms: number): void {
    this.#counts[bucketOf(ms)]!++;
    this.#count++;
    if (ms > this.#maxMs) this.#maxMs = ms;
  }

  /** The counts so far, for {@link percentile}'s `since`. */
  snapshot(): Uint32Array {
    return this.#counts.slice();
  }

  /**
   * The duration that a fraction `q` (0 to 1) of the commits did not exceed, in
   * milliseconds, as the upper bound of its bucket (never above {@link maxMs}); of the
   * commits recorded after `since` (a {@link snapshot}) when it is given. 0 when there
   * are none.
   */
  percentile(q: number, since?: Uint32Array): number {
    let total = 0;
    for (let i = 0; i < BUCKETS; i++) total += this.#counts[i]! - (since?.[i] ?? 0);
    if (total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.#counts[i]! - (since?.[i] ?? 0);
      if (seen >= rank) return Math.min(upperMs(i), this.#maxMs);
    }
    return this.#maxMs;
  }
}
