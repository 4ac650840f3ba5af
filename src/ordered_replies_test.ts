import assert from "node:assert/strict";
import { OrderedReplies, Ticket } from "./ordered_replies.ts";

function deferred<T>() {
  return Promise.withResolvers<T>();
}

Deno.test("replies go out in the order they were added, whatever order their waits settle in", async () => {
  const sent: string[] = [];
  const replies = new OrderedReplies((err) => assert.fail(String(err)));
  const a = deferred<string>();
  const b = deferred<string>();
  replies.add(a.promise, (v) => sent.push(v));
  replies.add(b.promise, (v) => sent.push(v));
  replies.add(null, () => sent.push("c"));
  b.resolve("b");
  await b.promise;
  await Promise.resolve();
  assert.deepEqual(sent, []); // "a" still waits, so nothing after it goes
  assert.equal(replies.pending, 3);
  a.resolve("a");
  await replies.settled();
  assert.deepEqual(sent, ["a", "b", "c"]);
  assert.equal(replies.pending, 0);
});

Deno.test("replies that become ready together are sent in one synchronous pass", async () => {
  const replies = new OrderedReplies((err) => assert.fail(String(err)));
  const gate = deferred<void>();
  let turn = 0;
  const turns: number[] = [];
  for (let i = 0; i < 50; i++) replies.add(gate.promise, () => turns.push(turn));
  // A microtask counter: a promise chain would let it advance between the sends.
  const ticking = (async () => {
    for (let i = 0; i < 500; i++) {
      await Promise.resolve();
      turn++;
    }
  })();
  gate.resolve();
  await replies.settled();
  await ticking;
  assert.equal(turns.length, 50);
  assert.equal(new Set(turns).size, 1, `sent over ${new Set(turns).size} microtask turns`);
});

Deno.test("a rejected wait goes to its fail handler, or to onError; later replies still go", async () => {
  const sent: string[] = [];
  const errors: unknown[] = [];
  const replies = new OrderedReplies((err) => errors.push(err));
  replies.add(Promise.reject(new Error("no commit")), () => sent.push("x"), (err) => {
    sent.push(`failed: ${(err as Error).message}`);
  });
  replies.add(Promise.reject(new Error("unhandled")), () => sent.push("y"));
  replies.add(null, () => {
    throw new Error("send threw");
  });
  replies.add(Promise.resolve("z"), (v) => sent.push(v));
  await replies.settled();
  assert.deepEqual(sent, ["failed: no commit", "z"]);
  assert.deepEqual(errors.map((e) => (e as Error).message), ["unhandled", "send threw"]);
});

Deno.test("settled() resolves at once when nothing is pending, and again after new replies", async () => {
  const replies = new OrderedReplies(() => {});
  await replies.settled();
  const d = deferred<number>();
  let got = 0;
  replies.add(d.promise, (v) => got = v);
  let done = false;
  const waiting = replies.settled().then(() => done = true);
  await Promise.resolve();
  assert.equal(done, false);
  d.resolve(7);
  await waiting;
  assert.equal(got, 7);
});

Deno.test("tickets: settled synchronously in any order, sent in queue order; a second settlement is ignored", () => {
  const sent: string[] = [];
  const failed: unknown[] = [];
  const replies = new OrderedReplies((err) => assert.fail(String(err)));
  const a = replies.ticket<string>((v) => sent.push(v));
  const b = replies.ticket<string>((v) => sent.push(v), (err) => failed.push(err));
  const c = replies.ticket<string>((v) => sent.push(v));
  c.resolve("c");
  b.reject("b failed");
  assert.deepEqual(sent, []); // a still waits
  a.resolve("a");
  assert.deepEqual(sent, ["a", "c"]); // at once, in one pass, without a microtask
  assert.deepEqual(failed, ["b failed"]);
  a.resolve("again");
  b.resolve("late");
  assert.deepEqual(sent, ["a", "c"]);
  assert.equal(replies.pending, 0);
});

Deno.test("a send that settles or adds replies while the queue is being sent: all go, in order, once", () => {
  const sent: string[] = [];
  const replies = new OrderedReplies((err) => assert.fail(String(err)));
  const one = replies.ticket<string>((v) => {
    sent.push(v);
    two.resolve("two"); // the next one, settled from inside this pass
    replies.add(null, () => sent.push("three")); // queued behind both
  });
  const two = replies.ticket<string>((v) => sent.push(v));
  one.resolve("one");
  assert.deepEqual(sent, ["one", "two", "three"]);
  assert.equal(replies.pending, 0);
  replies.add(null, () => sent.push("four")); // the queue goes on after it emptied
  assert.deepEqual(sent, ["one", "two", "three", "four"]);
});

Deno.test("a Ticket subclass overrides send and fail and is queued with enqueue; a failure without a handler goes to onError", () => {
  const log: string[] = [];
  const errors: unknown[] = [];
  class Reply extends Ticket<number> {
    constructor(readonly name: string) {
      super();
    }
    override send(value: number): void {
      log.push(`${this.name} ${value}`);
    }
    override fail(err: unknown): void {
      log.push(`${this.name} failed: ${err}`);
    }
  }
  const replies = new OrderedReplies((err) => errors.push(err));
  const a = replies.enqueue(new Reply("a"));
  const plain = replies.ticket<number>((v) => log.push(`plain ${v}`)); // no fail handler
  const b = replies.enqueue(new Reply("b"));
  b.reject("disk full");
  plain.reject("lost");
  assert.deepEqual(log, []);
  a.resolve(1);
  assert.deepEqual(log, ["a 1", "b failed: disk full"]);
  assert.deepEqual(errors, ["lost"]);
  assert.throws(() => new Reply("c").resolve(2), /before it was queued/);
});

Deno.test("a queue that never empties reuses its slots: 100,000 replies through a window of 100 keep it small", () => {
  const replies = new OrderedReplies((err) => assert.fail(String(err)));
  const sent: number[] = [];
  const open: ReturnType<typeof replies.ticket<number>>[] = [];
  for (let i = 0; i < 100_000; i++) {
    open.push(replies.ticket<number>((v) => sent.push(v)));
    if (open.length > 100) open.shift()!.resolve(i); // the oldest settles: never empty
  }
  assert.equal(replies.pending, 100);
  assert.ok(replies.slots <= 2_200, `${replies.slots} slots for 100 pending`);
  assert.equal(sent.length, 100_000 - 100);
  assert.ok(sent.every((v, i) => i === 0 || v > sent[i - 1]!), "in order");
  for (const t of open) t.resolve(-1);
  assert.equal(replies.pending, 0);
});
