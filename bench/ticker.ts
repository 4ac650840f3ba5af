/**
 * Sub-millisecond ticks for paced publishing. A timer in Deno fires a millisecond or two
 * late, which would add that much to every paced message's latency (its timestamp is
 * the time it was due); spinning the event loop instead (MessageChannel) starves the
 * socket reads. So a worker sleeps with `Atomics.wait` and, at each period, rings a
 * shared slot (`Atomics.notify`) that the main thread waits on with `Atomics.waitAsync`:
 * the wake-up comes to the main thread as a task of its event loop, between its socket
 * reads. A ring while the main thread is busy (not waiting) is lost, and the tick it
 * was waiting for already sends everything due by then, so a busy main thread is never
 * flooded.
 *
 * Not a message per tick: at 10,000 ticks a second, `postMessage` made a serialised
 * copy on each side and an event to dispatch for every tick, the largest part of the
 * generator's garbage (about 2.9 KB per paced message in all), and the collector's work
 * on it ran on the generator's one core, holding back the messages due meanwhile.
 *
 * @module
 */

/** Shared Int32Array slots (see ticker_worker.ts). */
const STOP = 0;
/** Rung at each tick; it always holds 0, so the main thread's wait always waits. */
const BELL = 1;

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
    this.#worker = new Worker(new URL("./ticker_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker.onmessage = (e: MessageEvent<"ready" | "done">) => {
      if (e.data === "ready") this.#ready.resolve();
      else this.#end();
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
    void this.#listen();
  }

  async #listen(): Promise<void> {
    while (!this.#stopped) {
      await Atomics.waitAsync(this.#flags, BELL, 0).value;
      if (!this.#stopped) this.#onTick();
    }
  }

  /** Stops the ticks; resolves once the worker has ended. */
  stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      Atomics.store(this.#flags, STOP, 1);
      Atomics.notify(this.#flags, STOP);
      Atomics.notify(this.#flags, BELL); // ends the main thread's wait
      if (!this.#started) this.#end();
    }
    return this.#ended.promise;
  }

  #end(): void {
    this.#stopped = true;
    Atomics.notify(this.#flags, BELL);
    this.#worker.terminate();
    this.#ended.resolve();
  }
}
