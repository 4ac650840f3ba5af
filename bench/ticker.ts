/**
 * Sub-millisecond ticks for paced publishing. A timer in Deno fires a millisecond or two
 * late, which would add that much to every paced message's latency (its timestamp is
 * the time it was due); spinning the event loop instead (MessageChannel) starves the
 * socket reads. So a worker sleeps with `Atomics.wait` and posts a message per period.
 *
 * @module
 */

/** Ticks on the main thread at `startAt + k × period` until stopped. */
export class Ticker {
  readonly #worker: Worker;
  readonly #flags: Int32Array;
  readonly #shared: SharedArrayBuffer;
  readonly #ready = Promise.withResolvers<void>();
  readonly #ended = Promise.withResolvers<void>();
  #onTick: () => void = () => {};
  #started = false;
  #stopped = false;

  /** Starts the worker; {@link start} once {@link ready}. */
  constructor() {
    this.#shared = new SharedArrayBuffer(8);
    this.#flags = new Int32Array(this.#shared);
    this.#flags[1] = 1; // the first tick may be posted
    this.#worker = new Worker(new URL("./ticker_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker.onmessage = (e: MessageEvent<number | "ready" | "done">) => {
      if (e.data === "ready") this.#ready.resolve();
      else if (e.data === "done") this.#end();
      else {
        Atomics.store(this.#flags, 1, 1);
        if (!this.#stopped) this.#onTick();
      }
    };
    this.#worker.onerror = (e) => {
      e.preventDefault();
      console.error(`ticker worker failed: ${e.message}`);
      this.#ready.resolve();
      this.#end();
    };
  }

  /** Resolves once the worker runs (it takes a few ms to load). */
  get ready(): Promise<void> {
    return this.#ready.promise;
  }

  /**
   * Ticks at wall-clock ms `startAt + k × periodUs / 1000`, at most `maxTicks` times;
   * `onTick` runs at each tick the main thread gets to.
   */
  start(startAt: number, periodUs: number, maxTicks: number, onTick: () => void): void {
    this.#onTick = onTick;
    this.#started = true;
    this.#worker.postMessage({ shared: this.#shared, startAt, periodUs, maxTicks });
  }

  /** Stops the ticks; resolves once the worker has ended. */
  stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      Atomics.store(this.#flags, 0, 1);
      Atomics.notify(this.#flags, 0);
      if (!this.#started) this.#end();
    }
    return this.#ended.promise;
  }

  #end(): void {
    this.#worker.terminate();
    this.#ended.resolve();
  }
}
