/**
 * Message ids: broker-wide integers that are never handed out twice, also across
 * crashes. Ids are reserved from the store in blocks, so no message waits on a counter
 * commit; a crash skips the rest of its block instead of reusing it.
 *
 * @module
 */
import type { BrokerStore } from "../store/store.ts";

/**
 * Ids reserved per store commit. At tens of thousands of messages a second a block of
 * 1,000 lasted a few dozen milliseconds and its refill (a commit of its own) was often
 * late; a crash skips at most one block of 2^53.
 */
const BLOCK = 10_000;
/** Reserve the next block when this few ids are left, before anyone has to wait. */
const LOW_WATER = 5_000;

/** Hands out message ids from reserved blocks. */
export class IdAllocator {
  #store: BrokerStore;
  /** Reserved ranges [first, end), oldest first; ids come from the first. */
  #blocks: [number, number][] = [];
  #refill: Promise<void> | null = null;
  /** The first id this allocator reserved: every lower one may have been handed out before. */
  #floor: number | undefined;
  /** One past the highest id this allocator handed out. */
  #issuedEnd = 0;

  constructor(store: BrokerStore) {
    this.#store = store;
  }

  /** The next fresh id if one is reserved already (no waiting), else undefined. */
  tryNext(): number | undefined {
    const block = this.#blocks[0];
    if (!block || block[0] >= block[1]) return undefined;
    const id = block[0]++;
    if (block[0] === block[1]) this.#blocks.shift();
    if (this.#available() <= LOW_WATER) this.#reserve().catch(() => {});
    this.#issuedEnd = id + 1; // ids only grow
    return id;
  }

  /**
   * Whether `id` may have been handed out, by this allocator or an earlier one on the
   * same store: below the first id this one reserved, or below one past the last it
   * handed out. False for ids that nobody has handed out yet.
   */
  async mayHaveIssued(id: number): Promise<boolean> {
    if (this.#floor === undefined) await this.#reserve();
    return id < Math.max(this.#floor as number, this.#issuedEnd);
  }

  /** The next fresh id. */
  async next(): Promise<number> {
    for (;;) {
      const id = this.tryNext();
      if (id !== undefined) return id;
      this.#blocks.shift(); // an empty block, if any
      await this.#reserve();
    }
  }

  #available(): number {
    let n = 0;
    for (const [first, end] of this.#blocks) n += end - first;
    return n;
  }

  #reserve(): Promise<void> {
    this.#refill ??= this.#store.reserveIds(BLOCK)
      .then((first) => {
        this.#floor ??= first;
        this.#blocks.push([first, first + BLOCK]);
      })
      .finally(() => this.#refill = null);
    return this.#refill;
  }
}
