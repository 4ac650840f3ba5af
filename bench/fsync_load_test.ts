/**
 * The bench's fsync load as the bench runs it, a child process: it flushes on its schedule
 * (never more often), reports what it did when stopped, and stops by itself when its time
 * is up.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startFsyncLoad } from "./fsync_load.ts";

Deno.test("fsync load: flushes at most on its schedule, and reports when stopped", async () => {
  const load = await startFsyncLoad(100, undefined, 30);
  await new Promise((r) => setTimeout(r, 1_500));
  const done = await load.stop();
  // It ran until stopped: about 1.5 s, not its 30.
  assert.ok(done.seconds > 0.5 && done.seconds < 10, `ran ${done.seconds} s`);
  // Never ahead of its schedule (one flush at the start, then one each 10 ms); a slow
  // disk may keep it behind, but it flushed.
  assert.ok(done.fsyncs <= Math.floor(done.seconds * 100) + 1, `${done.fsyncs} flushes`);
  assert.ok(done.fsyncs >= 10, `${done.fsyncs} flushes in ${done.seconds} s`);
});

Deno.test("fsync load: stops by itself once its time is up", async () => {
  const load = await startFsyncLoad(50, undefined, 0.5);
  await new Promise((r) => setTimeout(r, 2_000));
  const done = await load.stop();
  assert.ok(done.seconds >= 0.5 && done.seconds < 1.5, `ran ${done.seconds} s`);
  assert.ok(done.fsyncs >= 1 && done.fsyncs <= 26, `${done.fsyncs} flushes`);
});
