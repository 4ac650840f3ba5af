import assert from "node:assert/strict";
import { MemoryReducer } from "./memory_reducer.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("one collection once a crowd has arrived or halved and things are quiet, none for small numbers", async () => {
  let collections = 0;
  const reducer = new MemoryReducer({ minPeak: 100, quietMs: 30, collect: () => collections++ });
  /** A change 10 ms after the last one starts the quiet period over: no collection until later. */
  const quietStartsOver = async (count: number, expected: number, moving: string) => {
    await sleep(10);
    reducer.connections(count);
    await sleep(10);
    assert.equal(collections, expected, `not while connections are still ${moving}`);
    await sleep(80);
    assert.equal(collections, expected + 1, `once quiet after ${moving}`);
  };
  try {
    for (let n = 1; n <= 99; n++) reducer.connections(n);
    for (let n = 98; n >= 0; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 0, "a peak under minPeak collects nothing");

    for (let n = 1; n <= 150; n++) reducer.connections(n);
    await quietStartsOver(151, 0, "arriving"); // risen by minPeak

    for (let n = 152; n <= 200; n++) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 1, "49 more since the last collection: nothing");
    for (let n = 199; n >= 101; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 1, "above half of the peak: nothing yet");

    reducer.connections(100);
    reducer.connections(99);
    await quietStartsOver(98, 1, "leaving"); // fallen to half of the peak

    // Peak and base restart from 98: falling further is no new crowd, nor is climbing
    // back to 197; 198 is 100 more than at the last collection.
    for (let n = 97; n >= 0; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 2);
    for (let n = 1; n <= 197; n++) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 2, "97 fewer, then 99 more than at the last collection");
    reducer.connections(198);
    await sleep(80);
    assert.equal(collections, 3, "100 more than at the last collection");
  } finally {
    reducer.stop();
  }
});

Deno.test("the real collection frees garbage, and stop cancels a pending one", async () => {
  const reducer = new MemoryReducer({ minPeak: 2, quietMs: 10 });
  let junk: object[] | null = Array.from({ length: 300_000 }, (_, i) => ({ i, s: `x${i}` }));
  const withJunk = Deno.memoryUsage().heapUsed;
  junk = null;
  reducer.connections(4);
  reducer.connections(1);
  await sleep(60);
  assert.equal(junk, null);
  const after = Deno.memoryUsage().heapUsed;
  assert.ok(after < withJunk - 10_000_000, `heap ${withJunk} → ${after}`);

  let called = false;
  const stopped = new MemoryReducer({ minPeak: 2, quietMs: 10, collect: () => called = true });
  stopped.connections(4);
  stopped.connections(1);
  stopped.stop();
  await sleep(40);
  assert.equal(called, false);
});
