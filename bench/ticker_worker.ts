/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * The worker behind {@link Ticker} (`ticker.ts`): sleeps with `Atomics.wait`, which is
 * precise to tens of µs where a timer fires a millisecond or two late, and posts a tick
 * at `startAt + k × period` (wall-clock ms, so the ticks fall on the pacer's due times),
 * skipping ticks while the previous one is not yet taken (a busy main thread is never
 * flooded). Stops when the shared stop flag is set, or after `maxTicks`.
 *
 * @module
 */

/** Shared Int32Array slots. */
const STOP = 0;
const TAKEN = 1;

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
    if (Atomics.compareExchange(flags, TAKEN, 1, 0) === 1) self.postMessage(k);
  }
  self.postMessage("done");
  self.close();
};
self.postMessage("ready");
