import assert from "node:assert/strict";
import { Mailbox } from "./mailbox.ts";

Deno.test("messages are handled one at a time in the order they were posted", () => {
  const handled: number[] = [];
  const box = new Mailbox<number>((m) => handled.push(m), (err) => {
    throw err;
  });
  for (let i = 0; i < 100; i++) box.post(i);
  assert.deepEqual(handled, Array.from({ length: 100 }, (_, i) => i));
  assert.equal(box.size, 0);
});

Deno.test("a message posted from inside a handler runs after the current one, not inside it", () => {
  const events: string[] = [];
  let depth = 0;
  const box: Mailbox<string> = new Mailbox<string>((m) => {
    depth++;
    assert.equal(depth, 1, "a handler never runs inside another");
    events.push(`start ${m}`);
    if (m === "a") {
      box.post("b");
      box.post("c");
      assert.equal(box.size, 2, "b and c wait for a to finish");
    }
    // "b1" is posted while "c" is still waiting: it goes behind it.
    if (m === "b") box.post("b1");
    events.push(`end ${m}`);
    depth--;
  }, (err) => {
    throw err;
  });
  box.post("a");
  assert.deepEqual(events, [
    "start a",
    "end a",
    "start b",
    "end b",
    "start c",
    "end c",
    "start b1",
    "end b1",
  ]);
  assert.equal(box.size, 0);
});

Deno.test("a throwing handler reports the message to crash and the mailbox keeps going", () => {
  const handled: number[] = [];
  const crashes: [string, number][] = [];
  const box = new Mailbox<number>((m) => {
    if (m % 3 === 0) throw new Error(`bad ${m}`);
    handled.push(m);
  }, (err, m) => crashes.push([(err as Error).message, m]));
  for (let i = 1; i <= 7; i++) box.post(i);
  assert.deepEqual(handled, [1, 2, 4, 5, 7]);
  assert.deepEqual(crashes, [["bad 3", 3], ["bad 6", 6]]);
  box.post(8);
  assert.deepEqual(handled, [1, 2, 4, 5, 7, 8]);
});

Deno.test("a message posted by a handler that then throws is still handled", () => {
  const handled: string[] = [];
  const crashed: string[] = [];
  const box: Mailbox<string> = new Mailbox<string>((m) => {
    handled.push(m);
    if (m === "boom") {
      box.post("after");
      throw new Error("boom");
    }
  }, (_err, m) => crashed.push(m));
  box.post("boom");
  assert.deepEqual(handled, ["boom", "after"]);
  assert.deepEqual(crashed, ["boom"]);
});

Deno.test("takeAll() removes the waiting messages, which then are never handled", () => {
  let taken: number[] = [];
  const handled: number[] = [];
  const box: Mailbox<number> = new Mailbox<number>((m) => {
    handled.push(m);
    if (m === 1) {
      box.post(2);
      box.post(3);
      taken = box.takeAll();
    }
  }, () => {});
  box.post(1);
  assert.deepEqual(taken, [2, 3]);
  assert.deepEqual(handled, [1]);
  assert.equal(box.size, 0);
  box.post(4);
  assert.deepEqual(handled, [1, 4]);
});
