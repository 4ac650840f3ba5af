/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * The worker behind {@link Ticker} (`ticker.ts`): sleeps with `Atomics.wait`, which is
 * precise to tens of µs where a timer fires a millisecond or two late, and at
 * `startAt + k × period` (wall-clock ms, so the ticks fall on the pacer's due times)
 * rings the shared slot that the main thread's `Atomics.waitAsync` waits on.
 * Stops when the shared stop flag is set, or after `maxTicks`.
 *
 * @module
 */

/** Shared Int32Array slots. */
const STOP = 0;
const BELL = 1;

interface Start {
  shared: SharedArrayBuffer;
  startAt: number;
  periodUs: number;
  maxTicks: number;
}

const wallMs = () => performance.timeOrigin + performance.now();

self.onmessage = (e: MessageEvent<Start>) => {
  const { shared, startAt, periodUs, maxTicks } = e.data;
  const flags = new Int32Array(shared);
  // The first tick due now or later.
  let k = Math.max(0, Math.ceil(((wallMs() - startAt) * 1000) / periodUs));
  for (let n = 0; n < maxTicks && Atomics.load(flags, STOP) === 0; n++, k++) {
    const wait = startAt + (k * periodUs) / 1000 - wallMs();
    // Waits on the stop slot: a stop wakes it at once.
    if (wait > 0) Atomics.wait(flags, STOP, 0, wait);
    Atomics.notify(flags, BELL);
  }
  self.postMessage("done");
  self.close();
};
self.postMessage("ready");
