import assert from "node:assert/strict";
import { MemoryReducer } from "./memory_reducer.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("one collection once a crowd has halved and things are quiet, none for small numbers", async () => {
  let collections = 0;
  const reducer = new MemoryReducer({ minPeak: 100, quietMs: 30, collect: () => collections++ });
  try {
    for (let n = 1; n <= 99; n++) reducer.connections(n);
    for (let n = 98; n >= 0; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 0, "a peak under minPeak collects nothing");

    for (let n = 1; n <= 200; n++) reducer.connections(n);
    for (let n = 199; n >= 101; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 0, "above half of the peak: nothing yet");

    reducer.connections(100);
    reducer.connections(99);
    await sleep(10);
    reducer.connections(98); // still leaving: the quiet period starts again
    await sleep(10);
    assert.equal(collections, 0, "not while connections are still leaving");
    await sleep(80);
    assert.equal(collections, 1, "once quiet after falling to half of the peak");

    // The peak restarts from 98: falling further is no new crowd.
    for (let n = 97; n >= 0; n--) reducer.connections(n);
    await sleep(80);
    assert.equal(collections, 1);
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
