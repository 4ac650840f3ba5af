/**
 * Where a topic's log segments written by this process are, and how many payload bytes
 * each holds: retention deletes them by key, without listing the log (a Deno KV listing
 * returns every value, so trimming by listing read back and deserialised each message
 * once more, in batches of 500 segments that stalled the broker for tens of ms).
 *
 * Only segments committed by this process are known; those written before a restart
 * all end below {@link SegmentIndex.coveredFrom} (sequence numbers only grow), so
 * retention lists that older part once and uses the index above it. An entry costs two
 * numbers; a topic that retention cannot trim (a stored subscription that never reads)
 * keeps one per commit that wrote to it, as its log keeps the segments themselves.
 *
 * @module
 */

/** The segments of one topic's log that this process wrote and retention has not deleted. */
export class SegmentIndex {
  /** Every log key at or above this sequence number was written by this process. */
  readonly coveredFrom: number;
  /** Last sequence numbers (the keys) of the segments, ascending, from `#head`. */
  #last: number[] = [];
  /** Payload bytes of each segment. */
  #bytes: number[] = [];
  #head = 0;

  constructor(firstSeq: number) {
    this.coveredFrom = firstSeq;
  }

  /** Segments known (not yet taken). */
  get size(): number {
    return this.#last.length - this.#head;
  }

  /** Records a committed segment; segments arrive in sequence order. */
  add(lastSeq: number, payloadBytes: number): void {
    this.#last.push(lastSeq);
    this.#bytes.push(payloadBytes);
  }

  /**
   * Up to `n` of the segments that end in `[fromSeq, toSeq)`, in order: where the first
   * is (for {@link remove}) and their last sequence numbers (their keys).
   */
  within(fromSeq: number, toSeq: number, n: number): { at: number; lastSeqs: number[] } {
    let at = this.#head;
    // Retention trims from where it last stopped, so this skips nothing in practice.
    while (at < this.#last.length && (this.#last[at] as number) < fromSeq) at++;
    const lastSeqs: number[] = [];
    for (let i = at; i < this.#last.length && lastSeqs.length < n; i++) {
      const last = this.#last[i] as number;
      if (last >= toSeq) break;
      lastSeqs.push(last);
    }
    return { at, lastSeqs };
  }

  /** Forgets `n` segments from position `at` (deleted) and returns their payload bytes. */
  remove(at: number, n: number): number {
    let bytes = 0;
    for (let i = at; i < at + n; i++) bytes += this.#bytes[i] as number;
    if (at !== this.#head) {
      this.#last.splice(at, n);
      this.#bytes.splice(at, n);
      return bytes;
    }
    const end = at + n;
    this.#head = end;
    // Cut the removed head off once it is most of the arrays: each entry moves at most
    // once on average.
    if (end > 64 && end * 2 > this.#last.length) {
      this.#last = this.#last.slice(end);
      this.#bytes = this.#bytes.slice(end);
      this.#head = 0;
    }
    return bytes;
  }

  /** The segment ending at `lastSeq` lost `bytes` of payload (retention rewrote it). */
  shrank(lastSeq: number, bytes: number): void {
    // Retention rewrites the segment holding its floor: the first one in practice.
    for (let i = this.#head; i < this.#last.length; i++) {
      if (this.#last[i] === lastSeq) this.#bytes[i] = (this.#bytes[i] as number) - bytes;
      if ((this.#last[i] as number) >= lastSeq) return;
    }
  }
}
