import { prng } from "../../tests/prng.ts";
import assert from "node:assert/strict";
import { getLogger } from "../log.ts";
import { KvStore } from "../store/kv_store.ts";
import type { BrokerStore, StoredMessage, SubscriptionRecord } from "../store/store.ts";
import { Supervisor } from "../supervisor.ts";
import {
  Delivery,
  type DeliverySink,
  type Exhausted,
  MAX_WINDOW,
  type RetryOptions,
} from "./delivery.ts";
import { Topic } from "./topic.ts";

const encoder = new TextEncoder();
const RETRY: RetryOptions = { retryIntervalMs: 20, retryLimit: 3 };

type Sent =
  | { kind: "message"; id: number; seq: number; attempt: number; at: number }
  | { kind: "release"; id: number; topic: string; attempt: number; at: number }
  | { kind: "accepted"; at: number };

/** A sink that records what the delivery puts on the wire, with timestamps. */
class RecordingSink implements DeliverySink {
  sent: Sent[] = [];
  #waiters: { n: number; resolve: () => void }[] = [];

  sendMessage(message: StoredMessage, attempt: number): void {
    this.#push({ kind: "message", id: message.id, seq: message.seq, attempt, at: Date.now() });
  }

  sendRelease(id: number, topic: string, attempt: number): void {
    this.#push({ kind: "release", id, topic, attempt, at: Date.now() });
  }

  /** An `accepted` callback that records when the protocol reply would go out. */
  accepted = (): void => this.#push({ kind: "accepted", at: Date.now() });

  #push(s: Sent): void {
    this.sent.push(s);
    this.#waiters = this.#waiters.filter((w) => {
      if (this.sent.length < w.n) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves once `n` events were recorded in all. */
  count(n: number, timeoutMs = 2000): Promise<void> {
    if (this.sent.length >= n) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const timer = setTimeout(
      () => reject(new Error(`only ${this.sent.length} of ${n} sends: ${show(this.sent)}`)),
      timeoutMs,
    );
    this.#waiters.push({
      n,
      resolve: () => {
        clearTimeout(timer);
        resolve();
      },
    });
    return promise;
  }

  /** Sends without timestamps, for comparisons. */
  get wire(): string[] {
    return this.sent.map((s) =>
      s.kind === "message"
        ? `message ${s.id} #${s.attempt}`
        : s.kind === "release"
        ? `release ${s.id} #${s.attempt}`
        : "accepted"
    );
  }
}

function show(sent: Sent[]): string {
  return JSON.stringify(sent.map((s) => s.kind + ("id" in s ? ` ${s.id}` : "")));
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Env {
  store: KvStore;
  topic: Topic;
  sink: RecordingSink;
  exhausted: Exhausted[];
  /** Publishes texts to the topic; resolves with the stored messages. */
  publish(...texts: string[]): Promise<StoredMessage[]>;
  /**
   * A started delivery for `record` (saved first), stopped after the test; `via` is the
   * store the delivery writes through (default: the test's store).
   */
  deliver(
    record?: Partial<SubscriptionRecord>,
    retry?: RetryOptions,
    via?: BrokerStore,
  ): Promise<Delivery>;
}

async function withDelivery(fn: (env: Env) => Promise<void>): Promise<void> {
  const store = await KvStore.open(":memory:");
  const sup = new Supervisor("topics", getLogger("supervisor", "test"), { minBackoffMs: 1 });
  const topic = await Topic.start("t", store, sup);
  const sink = new RecordingSink();
  const exhausted: Exhausted[] = [];
  const deliveries: Delivery[] = [];
  let nextId = 100;
  try {
    await fn({
      store,
      topic,
      sink,
      exhausted,
      publish: (...texts) =>
        Promise.all(
          texts.map((t) =>
            topic.append({ id: nextId++, payload: encoder.encode(t), format: "text" })
          ),
        ),
      async deliver(partial = {}, retry = RETRY, via: BrokerStore = store) {
        const record: SubscriptionRecord = {
          subscriber: "alice",
          topic: "t",
          position: 1,
          received: null,
          createdAt: 1,
          ...partial,
        };
        await store.saveSubscription(record);
        const d = new Delivery(topic, record, via, sink, retry, (_d, what) => {
          exhausted.push(what);
        });
        deliveries.push(d);
        d.start();
        return d;
      },
    });
  } finally {
    for (const d of deliveries) d.stop();
    topic.stop();
    sup.close();
    await store.flush();
    store.close();
  }
}

Deno.test("a delivery sends the next message at once", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const [m] = await publish("hello", "second");
    const d = await deliver();
    assert.deepEqual(sink.wire, [`message ${m!.id} #1`]);
    assert.deepEqual(d.outstanding, [m!.id]);
    assert.equal(d.position, 1);
  });
});

Deno.test("an unacknowledged message is re-sent every interval, retryLimit sends in all, then onExhausted and silence", async () => {
  await withDelivery(async ({ publish, deliver, sink, exhausted, topic }) => {
    const [m] = await publish("hello");
    const d = await deliver();
    await sink.count(3);
    const at = sink.sent.map((s) => s.at);
    assert.deepEqual(sink.wire, [1, 2, 3].map((n) => `message ${m!.id} #${n}`));
    for (let i = 1; i < at.length; i++) {
      const gap = at[i]! - at[i - 1]!;
      assert.ok(gap >= 18, `re-sent after ${gap} ms, the interval is 20`);
    }
    // After the last send one more interval passes, then the delivery gives up.
    while (exhausted.length === 0) await delay(5);
    assert.ok(Date.now() - at[2]! >= 18);
    assert.deepEqual(exhausted, [{ id: m!.id, seq: 1, phase: "message", sends: 3 }]);
    await delay(RETRY.retryIntervalMs * 3);
    assert.equal(sink.sent.length, 3, "no send after exhaustion");
    assert.equal(exhausted.length, 1);
    assert.equal(d.position, 1, "the position stays on the exhausted message");
    assert.equal(topic.subscriberCount, 0, "an exhausted delivery detaches from its topic");
    await publish("more");
    await delay(5);
    assert.equal(sink.sent.length, 3, "a new message does not revive it");
  });
});

Deno.test("PUBREC stores `received` and switches to sending the release", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const [m] = await publish("hello");
    const d = await deliver();
    assert.equal(await d.received(m!.id, sink.accepted), null);
    assert.deepEqual(sink.wire, [`message ${m!.id} #1`, "accepted", `release ${m!.id} #1`]);
    const rec = await store.loadSubscription("alice", "t");
    assert.deepEqual(rec?.received, { seq: 1, id: m!.id });
    assert.equal(rec?.position, 1, "the position moves only at PUBCOMP");
    // The release is retried like the message, then given up on.
    await sink.count(5);
    assert.deepEqual(sink.wire.slice(3), [`release ${m!.id} #2`, `release ${m!.id} #3`]);
  });
});

Deno.test("a repeated PUBREC re-sends the release", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const [m] = await publish("hello");
    const d = await deliver();
    assert.equal(await d.received(m!.id, sink.accepted), null);
    assert.equal(await d.received(m!.id, sink.accepted), null);
    assert.deepEqual(sink.wire.slice(-2), ["accepted", `release ${m!.id} #2`]);
  });
});

Deno.test("PUBCOMP moves the durable position past the message and the next message is sent", async () => {
  await withDelivery(async ({ publish, deliver, sink, store, topic }) => {
    const [m1, m2] = await publish("one", "two");
    const d = await deliver();
    await d.received(m1!.id, sink.accepted);
    assert.equal(await d.completed(m1!.id, sink.accepted), null);
    const rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, 2);
    assert.equal(rec?.received, null);
    assert.equal(d.position, 2);
    assert.equal(topic.retentionFloor(), 2, "the topic tracks the new position");
    assert.deepEqual(sink.wire, [
      `message ${m1!.id} #1`,
      "accepted",
      `release ${m1!.id} #1`,
      "accepted",
      `message ${m2!.id} #1`,
    ]);
    assert.deepEqual(d.outstanding, [m2!.id]);
  });
});

Deno.test("each send gets its full interval: a timer set for an earlier send does not resend a later one early", async () => {
  // Interval 200 ms. Message 1 sent at t0; its PUBREC and PUBCOMP come ~120 ms later, so
  // the release and message 2 go out at ~t0+120. The one resend timer, set at t0, fires at
  // ~t0+200: it must wait for message 2's own deadline (~t0+320), not resend it then.
  await withDelivery(async ({ publish, deliver, sink }) => {
    const [m1, m2] = await publish("one", "two");
    const d = await deliver({}, { retryIntervalMs: 200, retryLimit: 3 });
    await sink.count(1);
    await delay(120);
    await d.received(m1!.id, sink.accepted);
    await d.completed(m1!.id, sink.accepted);
    const sentAt = sink.sent.find((s) => s.kind === "message" && s.id === m2!.id)!.at;
    await sink.count(6, 1000); // the resend of message 2
    const resend = sink.sent[5]!;
    assert.equal(resend.kind === "message" && resend.id === m2!.id && resend.attempt, 2);
    assert.ok(resend.at - sentAt >= 195, `resent ${resend.at - sentAt} ms after its send`);
    assert.deepEqual(sink.wire.slice(0, 5), [
      `message ${m1!.id} #1`,
      "accepted",
      `release ${m1!.id} #1`,
      "accepted",
      `message ${m2!.id} #1`,
    ]);
  });
});

Deno.test("a delivery at the end of its topic sends the next message when it is published", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const d = await deliver();
    assert.deepEqual(sink.wire, []);
    assert.deepEqual(d.outstanding, []);
    const [m] = await publish("late");
    assert.deepEqual(sink.wire, [`message ${m!.id} #1`]);
    await d.received(m!.id, sink.accepted);
    await d.completed(m!.id, sink.accepted);
    const [m2] = await publish("later");
    assert.deepEqual(sink.wire.at(-1), `message ${m2!.id} #1`);
  });
});

Deno.test("acknowledgements with the wrong id or out of turn answer an error text", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const [m] = await publish("hello");
    const d = await deliver();
    const wrongRec = await d.received(m!.id + 1, sink.accepted);
    assert.match(wrongRec ?? "", new RegExp(`msgId ${m!.id + 1} .*PUBREC.*"t"`));
    const early = await d.completed(m!.id, sink.accepted);
    assert.match(early ?? "", new RegExp(`msgId ${m!.id} .*PUBCOMP`), "PUBCOMP before PUBREC");
    await d.received(m!.id, sink.accepted);
    const wrongComp = await d.completed(m!.id + 1, sink.accepted);
    assert.match(wrongComp ?? "", new RegExp(`msgId ${m!.id + 1} .*PUBCOMP`));
    assert.equal(
      sink.sent.filter((s) => s.kind === "accepted").length,
      1,
      "errors are not accepted",
    );
    assert.equal((await store.loadSubscription("alice", "t"))?.position, 1);
    assert.equal(await d.completed(m!.id, sink.accepted), null, "the right id still works");
  });
});

Deno.test("a delivery started from a record with `received` resends the release, not the message", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const [m1, m2] = await publish("one", "two");
    const d = await deliver({ received: { seq: 1, id: m1!.id } });
    assert.deepEqual(sink.wire, [`release ${m1!.id} #1`]);
    assert.deepEqual(d.outstanding, [m1!.id]);
    // A PUBREC for it answers by sending the release again, not an error.
    assert.equal(await d.received(m1!.id, sink.accepted), null);
    assert.equal(await d.completed(m1!.id, sink.accepted), null);
    assert.equal((await store.loadSubscription("alice", "t"))?.position, 2);
    assert.equal(sink.wire.at(-1), `message ${m2!.id} #1`);
  });
});

Deno.test("a delivery far behind reads old messages from the store", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const texts = Array.from({ length: 1100 }, (_, i) => `m${i + 1}`);
    const ms = await publish(...texts);
    await deliver({ position: 2 });
    await sink.count(1);
    assert.deepEqual(sink.wire, [`message ${ms[1]!.id} #1`]);
  });
});

Deno.test("stop() cancels the retry timer and nothing is sent afterwards", async () => {
  await withDelivery(async ({ publish, deliver, sink, topic, store }) => {
    const [m] = await publish("hello");
    const d = await deliver({}, { retryIntervalMs: 60_000, retryLimit: 5 });
    assert.equal(sink.sent.length, 1);
    // The op sanitizer fails this test if the 60 s retry timer outlives stop().
    d.stop();
    assert.equal(topic.subscriberCount, 0);
    await publish("more");
    assert.equal(sink.sent.length, 1);
    assert.deepEqual(d.outstanding, [m!.id]);
    assert.equal((await store.loadSubscription("alice", "t"))?.position, 1, "position kept");
  });
});

Deno.test("stop() during a retry interval with a short timer leaves no timer behind", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    await publish("hello");
    const d = await deliver({}, { retryIntervalMs: 10, retryLimit: 100 });
    await sink.count(2);
    d.stop();
    const n = sink.sent.length;
    await delay(30);
    assert.equal(sink.sent.length, n);
  });
});

Deno.test("a message that expired before its first send is skipped and the position passes it", async () => {
  await withDelivery(async ({ topic, sink, store, deliver }) => {
    const gone = await topic.append({
      id: 1,
      payload: encoder.encode("stale"),
      format: "text",
      expiresAt: Date.now() - 1,
    });
    const live = await topic.append({ id: 2, payload: encoder.encode("fresh"), format: "text" });
    const d = await deliver({ position: gone.seq });
    await sink.count(1);
    assert.deepEqual(sink.wire, ["message 2 #1"]);
    assert.equal(d.position, gone.seq + 1);
    await store.flush();
    assert.equal((await store.loadSubscription("alice", "t"))?.position, live.seq);
  });
});

// --- windows -----------------------------------------------------------------------------

const SLOW: RetryOptions = { retryIntervalMs: 60_000, retryLimit: 3 };

Deno.test("a window of 3 sends three messages at once and one more as each completes", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const ms = await publish("a", "b", "c", "d", "e");
    const id = (i: number) => ms[i]!.id;
    const d = await deliver({ window: 3 }, SLOW);
    assert.deepEqual(sink.wire, [0, 1, 2].map((i) => `message ${id(i)} #1`));
    assert.deepEqual(d.outstanding, [id(0), id(1), id(2)]);
    assert.equal(await d.received(id(0), sink.accepted), null);
    assert.equal(sink.sent.length, 5, "a PUBREC frees no room: only the release goes out");
    assert.equal(await d.completed(id(0), sink.accepted), null);
    assert.deepEqual(sink.wire.slice(-2), ["accepted", `message ${id(3)} #1`]);
    assert.deepEqual(d.outstanding, [id(1), id(2), id(3)]);
    assert.equal(d.position, ms[1]!.seq);
  });
});

Deno.test("a window's acknowledgements in any order: the position waits for the oldest, the record keeps the rest", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const ms = await publish("a", "b", "c", "d");
    const [a, b, c] = ms.map((m) => m.id) as [number, number, number];
    const d = await deliver({ window: 4 }, SLOW);
    // b and c are completed, a only received: the position stays on a.
    for (const id of [b, c, a]) assert.equal(await d.received(id, sink.accepted), null);
    for (const id of [b, c]) assert.equal(await d.completed(id, sink.accepted), null);
    assert.equal(d.position, ms[0]!.seq);
    assert.deepEqual(d.outstanding, [a, ms[3]!.id]);
    let rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, ms[0]!.seq);
    assert.equal(rec?.received, null);
    assert.deepEqual(rec?.pending, [ms[0]!.seq, a]);
    assert.deepEqual(rec?.completed, [ms[1]!.seq, ms[2]!.seq]);
    assert.equal(rec?.window, 4);
    // a completes: the position passes a, b and c at once.
    assert.equal(await d.completed(a, sink.accepted), null);
    assert.equal(d.position, ms[3]!.seq);
    rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, ms[3]!.seq);
    assert.equal(rec?.pending, undefined);
    assert.equal(rec?.completed, undefined);
    // A repeated PUBCOMP of a completed message is refused, as with a window of one.
    assert.match((await d.completed(b, sink.accepted)) ?? "", /awaiting PUBCOMP/);
  });
});

Deno.test("a window of 100 through 400 messages acknowledged out of order: each sent once, the position always the oldest not completed", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const ms = await publish(...Array.from({ length: 400 }, (_, i) => `m${i}`));
    const d = await deliver({ window: 100 }, SLOW);
    await sink.count(100);
    const random = prng(5);
    const done = new Set<number>();
    // Complete a random message of the window at a time (PUBREC, then PUBCOMP), so that the
    // front of the window lags and moves by many at once, over and over.
    while (done.size < ms.length) {
      const open = d.outstanding;
      assert.ok(open.length > 0 && open.length <= 100, `${open.length} outstanding`);
      const id = open[Math.floor(random() * Math.min(open.length, 30))] as number;
      assert.equal(await d.received(id, sink.accepted), null);
      assert.equal(await d.completed(id, sink.accepted), null);
      done.add(id);
      const oldest = ms.find((m) => !done.has(m.id));
      assert.equal(d.position, oldest ? oldest.seq : ms[ms.length - 1]!.seq + 1);
      // The window holds the 100 messages from the position on, minus the completed; those
      // past the topic's memory come once the store has read them.
      const expected = ms.filter((m) => m.seq >= d.position && m.seq < d.position + 100)
        .filter((m) => !done.has(m.id)).map((m) => m.id).join();
      for (let t = 0; t < 200 && d.outstanding.join() !== expected; t++) await delay(1);
      assert.equal(d.outstanding.join(), expected);
    }
    const sent = sink.sent.filter((s) => s.kind === "message").map((s) => s.id);
    assert.deepEqual(sent, ms.map((m) => m.id), "every message sent once, in order");
    const rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, ms[ms.length - 1]!.seq + 1);
  });
});

Deno.test("a window resumed from its record sends releases for the received, nothing for the completed, the others again", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const ms = await publish("a", "b", "c", "d", "e");
    const seq = (i: number) => ms[i]!.seq;
    const id = (i: number) => ms[i]!.id;
    // a received, b completed, c never acknowledged, d received; window 4 leaves e out.
    const d = await deliver({
      position: seq(0),
      window: 4,
      pending: [seq(0), id(0), seq(3), id(3)],
      completed: [seq(1)],
    }, SLOW);
    assert.deepEqual(sink.wire, [
      `release ${id(0)} #1`,
      `message ${id(2)} #1`,
      `release ${id(3)} #1`,
    ]);
    assert.deepEqual(d.outstanding, [id(0), id(2), id(3)]);
    // Completing a passes the completed b too; room for e opens.
    assert.equal(await d.completed(id(0), sink.accepted), null);
    assert.equal(d.position, seq(2));
    assert.deepEqual(sink.wire.slice(-2), ["accepted", `message ${id(4)} #1`]);
  });
});

Deno.test("a resumed release whose message is no longer stored is still sent", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const [m] = await publish("only");
    // Message 0 (id 7) was received before a restart and is gone from the log.
    const d = await deliver({ position: 0, window: 8, pending: [0, 7], completed: [] }, SLOW);
    await sink.count(2);
    assert.deepEqual(sink.wire, ["release 7 #1", `message ${m!.id} #1`]);
    assert.equal(await d.received(7, sink.accepted), null);
    assert.equal(await d.completed(7, sink.accepted), null);
    assert.equal(d.position, m!.seq);
  });
});

Deno.test("a window resends each overdue message on one timer and reports the first exhausted", async () => {
  await withDelivery(async ({ publish, deliver, sink, exhausted }) => {
    const ms = await publish("a", "b");
    const d = await deliver({ window: 2 }, { retryIntervalMs: 20, retryLimit: 2 });
    assert.equal(await d.received(ms[1]!.id, sink.accepted), null);
    await sink.count(6);
    assert.deepEqual(sink.wire.slice(0, 4), [
      `message ${ms[0]!.id} #1`,
      `message ${ms[1]!.id} #1`,
      "accepted",
      `release ${ms[1]!.id} #1`,
    ]);
    assert.deepEqual(sink.wire.slice(4).toSorted(), [
      `message ${ms[0]!.id} #2`,
      `release ${ms[1]!.id} #2`,
    ]);
    while (exhausted.length === 0) await delay(5);
    assert.deepEqual(exhausted, [{ id: ms[0]!.id, seq: ms[0]!.seq, phase: "message", sends: 2 }]);
  });
});

Deno.test("a smaller window lets the messages already out finish and sends no more until they fit", async () => {
  await withDelivery(async ({ publish, deliver, sink }) => {
    const ms = await publish("a", "b", "c", "d");
    const id = (i: number) => ms[i]!.id;
    const d = await deliver({ window: 3 }, SLOW);
    d.setWindow(1);
    for (const i of [0, 1]) {
      assert.equal(await d.received(id(i), sink.accepted), null);
      assert.equal(await d.completed(id(i), sink.accepted), null);
    }
    assert.equal(sink.wire.filter((w) => w.startsWith("message")).length, 3, "d waits");
    assert.equal(await d.received(id(2), sink.accepted), null);
    assert.equal(await d.completed(id(2), sink.accepted), null);
    assert.deepEqual(sink.wire.at(-1), `message ${id(3)} #1`);
    d.setWindow(4);
    d.wake();
    assert.deepEqual(d.outstanding, [id(3)]);
  });
});

Deno.test("a full window of the largest size stores as one value", async () => {
  await withDelivery(async ({ topic, deliver, sink, store }) => {
    const ids: number[] = [];
    for (let i = 0; i < MAX_WINDOW; i++) {
      ids.push(
        (await topic.append({ id: 5000 + i, payload: encoder.encode("x"), format: "text" })).id,
      );
    }
    const d = await deliver({ window: MAX_WINDOW }, SLOW);
    await sink.count(MAX_WINDOW);
    assert.equal(d.outstanding.length, MAX_WINDOW);
    // Every other message received, the rest after the first completed: the largest record.
    const acks = await Promise.all(
      ids.map((id, i) =>
        i % 2 === 0
          ? d.received(id, sink.accepted)
          : d.received(id, sink.accepted).then(() => d.completed(id, sink.accepted))
      ),
    );
    assert.deepEqual(acks.filter((a) => a !== null), []);
    const rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.pending?.length, MAX_WINDOW); // seq and id each
    assert.equal(rec?.completed?.length, MAX_WINDOW / 2);
  });
});

Deno.test("a window's acknowledgements made before their atomic is built share one save, and the stored record has them all", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const ms = await publish("a", "b", "c", "d");
    const ids = ms.map((m) => m.id);
    const d = await deliver({ window: 4 }, SLOW);
    await store.flush();
    const before = store.commitStats.operations;
    // Four PUBRECs in one turn: one operation carries them.
    const answers = ids.map((id) => d.received(id, sink.accepted));
    assert.deepEqual(await Promise.all(answers), [null, null, null, null]);
    assert.equal(store.commitStats.operations - before, 1);
    let rec = await store.loadSubscription("alice", "t");
    assert.deepEqual(rec?.pending, ms.flatMap((m) => [m.seq, m.id]));
    // PUBCOMPs of two turns: the second turn's come after the first's atomic was built,
    // so they need an operation of their own.
    const first = [d.completed(ids[1]!, sink.accepted), d.completed(ids[2]!, sink.accepted)];
    await Promise.resolve(); // the committer starts on a microtask and builds its atomic
    const second = [d.completed(ids[3]!, sink.accepted)];
    assert.deepEqual(await Promise.all([...first, ...second]), [null, null, null]);
    assert.equal(store.commitStats.operations - before, 3);
    rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, ms[0]!.seq);
    assert.deepEqual(rec?.pending, [ms[0]!.seq, ids[0]]);
    assert.deepEqual(rec?.completed, ms.slice(1).map((m) => m.seq));
  });
});

Deno.test("acknowledgements whose shared save fails each answer the error, keep their place, and succeed when sent again", async () => {
  await withDelivery(async ({ publish, deliver, sink, store }) => {
    const ms = await publish("a", "b", "c");
    const ids = ms.map((m) => m.id);
    // The delivery's only store call is the save; this one fails while `failing` is set.
    let failing = true;
    const flaky = new Proxy(store, {
      get(target, name) {
        if (name !== "savePositionFrom") return Reflect.get(target, name);
        return (t: string, s: string, source: Delivery) =>
          failing ? Promise.reject(new Error("disk full")) : target.savePositionFrom(t, s, source);
      },
    });
    const d = await deliver({ window: 3 }, SLOW, flaky);
    // Three PUBRECs in one turn share one save; it fails, and each hears so.
    const refused = await Promise.all(ids.map((id) => d.received(id, sink.accepted)));
    for (const text of refused) {
      assert.match(text ?? "", /could not store.*disk full.*PUBREC again/);
    }
    assert.equal(sink.wire.filter((w) => w === "accepted").length, 0);
    assert.deepEqual(d.outstanding, ids); // still awaiting PUBREC, nothing released
    failing = false;
    assert.deepEqual(await Promise.all(ids.map((id) => d.received(id, sink.accepted))), [
      null,
      null,
      null,
    ]);
    assert.deepEqual(sink.wire.slice(-6), ids.flatMap((id) => ["accepted", `release ${id} #1`]));
    // A failing save of PUBCOMPs leaves the releases in place, to be completed again.
    failing = true;
    const notDone = await d.completed(ids[0]!, sink.accepted);
    assert.match(notDone ?? "", /could not store.*PUBCOMP again/);
    assert.equal(d.position, ms[0]!.seq);
    failing = false;
    assert.equal(await d.completed(ids[0]!, sink.accepted), null);
    assert.equal(d.position, ms[1]!.seq);
    const rec = await store.loadSubscription("alice", "t");
    assert.equal(rec?.position, ms[1]!.seq);
    assert.deepEqual(rec?.pending, [ms[1]!.seq, ids[1], ms[2]!.seq, ids[2]]);
  });
});
