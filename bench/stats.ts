/**
 * What a scenario measures: latency percentiles, and the completeness of what each
 * consumer received (nothing missing, no duplicate, in order per topic).
 *
 * @module
 */

/** The `q` quantile (0..1) of `sorted` (ascending), nearest rank; NaN when empty. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

/** Latency samples in milliseconds, kept in a preallocated array (bounded by `capacity`). */
export class Latencies {
  #samples: Float64Array;
  #n = 0;
  /** Samples beyond the capacity, counted but not kept. */
  dropped = 0;
  constructor(capacity: number) {
    this.#samples = new Float64Array(capacity);
  }
  /** Records one sample. */
  add(ms: number): void {
    if (this.#n < this.#samples.length) this.#samples[this.#n++] = ms;
    else this.dropped++;
  }
  /** The samples in the order they were recorded (arrival order), in ms. */
  samples(): Float64Array {
    return this.#samples.subarray(0, this.#n);
  }
  /** p50, p99, p99.9 and the maximum, in ms. */
  summary(): { p50: number; p99: number; p999: number; max: number; count: number } {
    const s = this.#samples.slice(0, this.#n).sort();
    return {
      p50: quantile(s, 0.5),
      p99: quantile(s, 0.99),
      p999: quantile(s, 0.999),
      max: s.length ? s[s.length - 1] as number : NaN,
      count: s.length,
    };
  }
}

/**
 * What one consumer received on one topic, against what its publisher sent: sequence
 * numbers 0..expected-1, in that order, each once.
 */
export class Stream {
  readonly label: string;
  readonly expected: number;
  #seen: Uint8Array;
  #last = -1;
  distinct = 0;
  duplicates = 0;
  outOfOrder = 0;
  /** Sequence numbers outside 0..expected-1 (a corrupted or foreign payload). */
  unexpected = 0;

  constructor(label: string, expected: number) {
    this.label = label;
    this.expected = expected;
    this.#seen = new Uint8Array(expected);
  }

  /** Records the delivery of sequence number `seq`. */
  receive(seq: number): void {
    if (!Number.isInteger(seq) || seq < 0 || seq >= this.expected) {
      this.unexpected++;
      return;
    }
    if (this.#seen[seq]) this.duplicates++;
    else {
      this.#seen[seq] = 1;
      this.distinct++;
    }
    if (seq <= this.#last) this.outOfOrder++;
    this.#last = Math.max(this.#last, seq);
  }

  get missing(): number {
    return this.expected - this.distinct;
  }
}

/** The verdict over all streams of a scenario. */
export interface Completeness {
  ok: boolean;
  missing: number;
  duplicates: number;
  outOfOrder: number;
  unexpected: number;
  /** One line per faulty stream (at most 10). */
  problems: string[];
}

/** Sums the streams and lists the faulty ones. */
export function completeness(streams: Iterable<Stream>): Completeness {
  const c: Completeness = {
    ok: true,
    missing: 0,
    duplicates: 0,
    outOfOrder: 0,
    unexpected: 0,
    problems: [],
  };
  for (const s of streams) {
    c.missing += s.missing;
    c.duplicates += s.duplicates;
    c.outOfOrder += s.outOfOrder;
    c.unexpected += s.unexpected;
    if (s.missing || s.duplicates || s.outOfOrder || s.unexpected) {
      c.ok = false;
      if (c.problems.length < 10) {
        c.problems.push(
          `${s.label}: ${s.distinct}/${s.expected} received, ${s.missing} missing, ` +
            `${s.duplicates} duplicates, ${s.outOfOrder} out of order, ${s.unexpected} unexpected`,
        );
      }
    }
  }
  return c;
}
