import assert from "node:assert/strict";
import { getLogger } from "../log.ts";
import type { CommitPacing } from "../store/group_commit.ts";
import { KvStore } from "../store/kv_store.ts";
import type { StoredMessage, SubscriptionRecord } from "../store/store.ts";
import { Supervisor } from "../supervisor.ts";
import {
  type AppendInput,
  Topic,
  type TopicHooks,
  type TopicOptions,
  TopicUnavailableError,
} from "./topic.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Env {
  store: KvStore;
  sup: Supervisor;
  topic: Topic;
}

/** A topic on a real in-memory store under a fast supervisor; everything closed after. */
async function withTopic(
  fn: (env: Env) => Promise<void>,
  hooks: TopicHooks = {},
  name = "t",
): Promise<void> {
  const store = await KvStore.open(":memory:");
  const sup = new Supervisor("topics", getLogger("supervisor", "test"), {
    minBackoffMs: 1,
    maxBackoffMs: 2,
    maxRestarts: 3,
  });
  let topic: Topic | undefined;
  try {
    topic = await Topic.start(name, store, sup, { hooks });
    await fn({ store, sup, topic });
  } finally {
    topic?.stop();
    sup.close();
    await store.flush();
    store.close();
  }
}

/**
 * A real in-memory store (paced as given) and a supervisor, for tests that start their
 * topics themselves with `start`; the topics are stopped and everything closed after.
 */
async function withStore(
  fn: (env: {
    store: KvStore;
    sup: Supervisor;
    start: (options?: TopicOptions) => Promise<Topic>;
  }) => Promise<void>,
  pacing?: CommitPacing,
): Promise<void> {
  const store = await KvStore.open(":memory:", pacing);
  const sup = new Supervisor("topics", getLogger("supervisor", "test"));
  const started: Topic[] = [];
  const start = async (options?: TopicOptions) => {
    const topic = await Topic.start("t", store, sup, options);
    started.push(topic);
    return topic;
  };
  try {
    await fn({ store, sup, start });
  } finally {
    for (const topic of started) topic.stop();
    sup.close();
    await store.flush();
    store.close();
  }
}

let nextId = 1;
function input(text: string): AppendInput {
  return { id: nextId++, payload: encoder.encode(text), format: "text" };
}

function textOf(m: StoredMessage | null): string | null {
  return m ? decoder.decode(m.payload) : null;
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await delay(2);
  }
}

Deno.test("appends get consecutive seqs and are durable when they resolve", async () => {
  await withTopic(async ({ store, topic }) => {
    const ms = await Promise.all(["a", "b", "c", "d"].map((t) => topic.append(input(t))));
    assert.deepEqual(ms.map((m) => m.seq), [1, 2, 3, 4]);
    assert.deepEqual(ms.map((m) => m.topic), ["t", "t", "t", "t"]);
    assert.equal(topic.nextSeq, 5);
    const log = await store.readLog("t", 1, 10);
    assert.deepEqual(
      log.map((m) => [m.seq, m.id, textOf(m)]),
      ms.map((m) => [m.seq, m.id, textOf(m)]),
    );
    assert.equal(await store.lastLogSeq("t"), 4);
  });
});

Deno.test("read() answers from memory for recent messages and null past the end", async () => {
  await withTopic(async ({ topic }) => {
    assert.equal(topic.read(1), null, "an empty topic has nothing to read");
    await Promise.all(["a", "b", "c"].map((t) => topic.append(input(t))));
    const second = topic.read(2);
    assert.ok(!(second instanceof Promise), "a recent message is read without the store");
    assert.equal(textOf(second), "b");
    assert.equal(textOf(topic.read(1) as StoredMessage), "a");
    assert.equal(topic.read(4), null);
  });
});

Deno.test("read() of seqs older than the in-memory window comes from the store", async () => {
  await withTopic(async ({ topic }) => {
    // With no subscriber attached the memory keeps only the newest 32 to 64 messages.
    const all = await Promise.all(
      Array.from({ length: 200 }, (_, i) => topic.append(input(`m${i + 1}`))),
    );
    assert.deepEqual(all.map((m) => m.seq), Array.from({ length: 200 }, (_, i) => i + 1));
    const old = topic.read(1);
    assert.ok(old instanceof Promise, "the oldest messages left the memory");
    assert.equal(textOf(await old), "m1");
    assert.equal(textOf(await topic.read(50)), "m50");
    assert.ok(topic.memoryFrom > 200 - 64, `memory from ${topic.memoryFrom}`);
    const recent = topic.read(200 - 31);
    assert.ok(!(recent instanceof Promise), "the newest 32 are always in memory");
    assert.equal(textOf(recent), `m${200 - 31}`);
    assert.equal(textOf(topic.read(200) as StoredMessage), "m200");
    assert.equal(topic.read(201), null);
  });
});

Deno.test("a topic restarted from the store continues its seqs and reads its old log", async () => {
  const store = await KvStore.open(":memory:");
  const sup = new Supervisor("topics", getLogger("supervisor", "test"));
  try {
    const first = await Topic.start("t", store, sup);
    await Promise.all(["a", "b"].map((t) => first.append(input(t))));
    first.stop();
    const again = await Topic.start("t", store, sup);
    try {
      assert.equal(again.nextSeq, 3);
      assert.equal(textOf(await again.read(1)), "a");
      assert.equal((await again.append(input("c"))).seq, 3);
    } finally {
      again.stop();
    }
  } finally {
    sup.close();
    store.close();
  }
});

Deno.test("a log trimmed to nothing still bounds the seqs of a restarted topic (the trim writes the head)", async () => {
  const store = await KvStore.open(":memory:");
  const sup = new Supervisor("topics", getLogger("supervisor", "test"));
  try {
    const first = await Topic.start("t", store, sup);
    await Promise.all(["a", "b", "c"].map((t) => first.append(input(t))));
    await store.trimLog("t", 1, 4, first.headRecord());
    first.stop();
    assert.equal(await store.lastLogSeq("t"), 0);
    const again = await Topic.start("t", store, sup);
    try {
      assert.equal(again.nextSeq, 4);
      assert.equal((await again.append(input("d"))).seq, 4);
    } finally {
      again.stop();
    }
  } finally {
    sup.close();
    store.close();
  }
});

Deno.test("attached subscribers are woken after the commit, once per message", async () => {
  await withTopic(async ({ store, topic }) => {
    const seen: Promise<string | null>[] = [];
    let wakes = 0;
    const subscriber = {
      position: 1,
      wake() {
        wakes++;
        // What woke us must be in the store already.
        const seq = wakes;
        seen.push(store.readLog("t", seq, 1).then((ms) => textOf(ms[0] ?? null)));
      },
    };
    topic.attach(subscriber);
    assert.equal(topic.subscriberCount, 1);
    const pending = topic.append(input("x"));
    assert.equal(wakes, 0, "not woken before the commit");
    await pending;
    await topic.append(input("y"));
    assert.equal(wakes, 2);
    assert.deepEqual(await Promise.all(seen), ["x", "y"]);
    topic.detach(subscriber);
    await topic.append(input("z"));
    assert.equal(wakes, 2, "a detached subscriber is not woken");
  });
});

Deno.test("a beforeAppend hook that throws makes that append fail and the topic restart without reusing a seq", async () => {
  // The fourth append (the second of the batch below) fails, once.
  let calls = 0;
  const hooks: TopicHooks = {
    beforeAppend() {
      if (++calls === 4) throw new Error("injected failure");
    },
  };
  await withTopic(async ({ store, sup, topic }) => {
    const before = await Promise.all(["a", "b"].map((t) => topic.append(input(t))));
    // In flight together: one before the failure, the failing one, two held after it.
    const results = await Promise.allSettled([
      topic.append(input("c")),
      topic.append(input("boom")),
      topic.append(input("d")),
      topic.append(input("e")),
    ]);
    assert.equal(results[1]?.status, "rejected");
    assert.match(String((results[1] as PromiseRejectedResult).reason), /injected failure/);
    for (const i of [0, 2, 3]) {
      assert.equal(results[i]?.status, "fulfilled", `append ${i}: ${Deno.inspect(results[i])}`);
    }
    await until(() => sup.restartCount === 1);
    const later = await topic.append(input("f"));

    const ok = [
      ...before,
      ...results.flatMap((r) => r.status === "fulfilled" ? [r.value] : []),
      later,
    ];
    const seqs = ok.map((m) => m.seq);
    assert.equal(new Set(seqs).size, seqs.length, `a seq was reused: ${seqs}`);
    const log = await store.readLog("t", 1, 100);
    assert.deepEqual(log.map((m) => textOf(m)), ["a", "b", "c", "d", "e", "f"]);
    assert.deepEqual(log.map((m) => m.seq), [...seqs].sort((x, y) => x - y));
    assert.equal(await store.lastLogSeq("t") + 1, topic.nextSeq);
    assert.equal(sup.restartCount, 1);
  }, hooks);
});

Deno.test("a subscriber attached before a restart is woken after it", async () => {
  let fail = false;
  await withTopic(async ({ sup, topic }) => {
    let wakes = 0;
    topic.attach({ wake: () => wakes++, position: 1 });
    fail = true;
    await assert.rejects(topic.append(input("boom")), /injected/);
    fail = false;
    await until(() => sup.restartCount === 1);
    assert.ok(wakes >= 1, "woken by the restart, to re-read the log");
    assert.equal(topic.subscriberCount, 1);
  }, {
    beforeAppend() {
      if (fail) throw new Error("injected");
    },
  });
});

Deno.test("a topic its supervisor gave up on refuses appends with TopicUnavailableError", async () => {
  await withTopic(async ({ sup, topic }) => {
    for (let i = 1; i <= 3; i++) {
      await assert.rejects(topic.append(input("boom")), /always/);
      await until(() => sup.restartCount === i);
    }
    await assert.rejects(topic.append(input("boom")), /always/);
    await assert.rejects(topic.append(input("x")), TopicUnavailableError);
  }, {
    beforeAppend() {
      throw new Error("always failing");
    },
  });
});

Deno.test("stop() refuses later appends", async () => {
  await withTopic(async ({ topic }) => {
    await topic.append(input("a"));
    topic.stop();
    await assert.rejects(topic.append(input("b")), TopicUnavailableError);
  });
});

Deno.test("retentionFloor follows the lowest tracked position", async () => {
  const store = await KvStore.open(":memory:");
  const sup = new Supervisor("topics", getLogger("supervisor", "test"));
  let topic: Topic | undefined;
  try {
    await store.saveSubscription({
      subscriber: "stored",
      topic: "t",
      position: 2,
      received: null,
      createdAt: 1,
    });
    topic = await Topic.start("t", store, sup);
    // A stored position is never behind the head: the first message gets seq 2.
    assert.equal(topic.nextSeq, 2);
    await Promise.all(["a", "b", "c", "d", "e"].map((t) => topic!.append(input(t))));
    assert.equal(topic.retentionFloor(), 2, "positions of stored subscriptions are loaded");
    topic.untrackPosition("stored");
    assert.equal(topic.retentionFloor(), 7, "with no subscription everything can go");
    topic.trackPosition("alice", 4);
    topic.trackPosition("bob", 3);
    assert.equal(topic.retentionFloor(), 3);
    topic.trackPosition("bob", 5);
    assert.equal(topic.retentionFloor(), 4);
    topic.untrackPosition("alice");
    assert.equal(topic.retentionFloor(), 5);
    await topic.append(input("f"));
    topic.untrackPosition("bob");
    assert.equal(topic.retentionFloor(), 8);
  } finally {
    topic?.stop();
    sup.close();
    store.close();
  }
});

function qos0(text: string): AppendInput {
  return { ...input(text), qos: 0 };
}

Deno.test("QoS 0 messages no stored subscription needs stay in memory, in order with logged ones", async () => {
  await withTopic(async ({ store, topic }) => {
    const woken: (string | null)[] = [];
    let next = 1;
    topic.attach({
      get position() {
        return next;
      },
      wake() {
        for (let m = topic.readCached(next); m; m = topic.readCached(next)) {
          woken.push(textOf(m));
          next = m.seq + 1;
        }
      },
    });
    // A logged QoS 1 message, then QoS 0 ones submitted while its commit is in flight:
    // they reach readers only after it, in sequence order.
    const all = await Promise.all([
      topic.append({ ...input("q1"), qos: 1 }),
      topic.append(qos0("a")),
      topic.append(qos0("b")),
      topic.append({ ...input("q2"), qos: 2 }),
      topic.append(qos0("c")),
    ]);
    assert.deepEqual(all.map((m) => m.seq), [1, 2, 3, 4, 5]);
    await until(() => woken.length === 5);
    assert.deepEqual(woken, ["q1", "a", "b", "q2", "c"]);
    // Only the QoS 1 and 2 messages are in the log; the head counts every number.
    assert.deepEqual((await store.readLog("t", 1, 10)).map(textOf), ["q1", "q2"]);
    assert.equal(topic.nextSeq, 6);
  });
});

Deno.test("QoS 0 messages go through the log while a stored subscription is on the topic", async () => {
  await withTopic(async ({ store, topic }) => {
    topic.trackPosition("clean", 1, false);
    await topic.append(qos0("memory"));
    topic.trackPosition("persistent", 2); // durable: stored positions need the log
    await topic.append(qos0("logged"));
    topic.untrackPosition("persistent");
    await topic.append(qos0("memory again"));
    assert.deepEqual((await store.readLog("t", 1, 10)).map(textOf), ["logged"]);
    // A retained QoS 0 message is stored whatever the subscriptions.
    await topic.append({ ...qos0("kept"), retain: true });
    assert.deepEqual((await store.readLog("t", 1, 10)).map(textOf), ["logged", "kept"]);
  });
});

Deno.test("after a restart a topic never hands out again the numbers of messages kept in memory", async () => {
  let fail = false;
  await withTopic(async ({ topic }) => {
    const first = await Promise.all([topic.append(qos0("a")), topic.append(qos0("b"))]);
    assert.deepEqual(first.map((m) => m.seq), [1, 2]);
    fail = true;
    await assert.rejects(topic.append(qos0("boom")));
    fail = false;
    // An append posted while the topic restarts is held and replayed after it.
    const after = await topic.append(qos0("c"));
    assert.ok(after.seq > 2, `seq ${after.seq} was handed out before the restart`);
  }, {
    beforeAppend() {
      if (fail) throw new Error("injected failure");
    },
  });
});

/**
 * The sequence number a topic started over a stored head at `nextSeq` and one stored
 * subscription (position 4 unless `held` says otherwise) hands its first append.
 */
async function firstSeqAfterStart(
  nextSeq: number,
  held: Partial<SubscriptionRecord>,
): Promise<number> {
  let seq = 0;
  await withStore(async ({ store, start }) => {
    await store.ensureTopic({ name: "t", nextSeq, createdAt: 1 });
    await store.saveSubscription({
      subscriber: "c",
      topic: "t",
      position: 4,
      received: null,
      createdAt: 2,
      ...held,
    });
    const topic = await start();
    seq = (await topic.append(input("x"))).seq;
  });
  return seq;
}

Deno.test("a stored position ahead of the stored head moves the head past it at start", async () => {
  // What a broker leaves behind when its last messages were kept in memory only and a
  // persistent subscriber then subscribed at the topic's end.
  assert.equal(await firstSeqAfterStart(3, { position: 40 }), 40);
});

Deno.test("the head starts past every sequence number a stored acknowledgement names", async () => {
  // An early delivery's PUBREC or completion can be stored (a `latest` record built while
  // the message's append waited in a later atomic) and the message lost to a crash.
  const cases: [Partial<SubscriptionRecord>, number][] = [
    [{ received: { seq: 7, id: 70 } }, 8],
    [{ pending: [5, 50, 9, 90] }, 10],
    [{ completed: [6, 11] }, 12],
  ];
  for (const [held, expected] of cases) {
    const seq = await firstSeqAfterStart(4, { window: 100, ...held });
    assert.equal(seq, expected, JSON.stringify(held));
  }
});

Deno.test("a subscriber that stops completing does not make the memory keep more than 16,384 messages", async () => {
  await withTopic(async ({ topic }) => {
    topic.attach({ position: 1, wake() {} }); // never moves
    await Promise.all(Array.from({ length: 20_000 }, (_, i) => topic.append(input(`m${i + 1}`))));
    const kept = topic.nextSeq - topic.memoryFrom;
    assert.ok(kept <= 16_384 && kept > 16_000, `${kept} messages kept`);
    // What left the memory is still in the log for it.
    assert.equal(textOf(await topic.read(1)), "m1");
  });
});

Deno.test("the memory keeps what an attached subscriber has not completed, not what a detached one lacks", async () => {
  await withTopic(async ({ topic }) => {
    const reader = { position: 1, wake() {} };
    topic.attach(reader);
    topic.trackPosition("clean", 1, false);
    await Promise.all(Array.from({ length: 3000 }, (_, i) => topic.append(qos0(`m${i + 1}`))));
    assert.equal(topic.memoryFrom, 1, "every message the attached reader still needs is kept");
    assert.equal(textOf(topic.readCached(1) ?? null), "m1");
    // The reader completes up to 2,990: the memory lets go of what is below, at the next
    // appends, down to the newest few.
    reader.position = 2990;
    await Promise.all(Array.from({ length: 40 }, (_, i) => topic.append(qos0(`n${i + 1}`))));
    assert.equal(topic.memoryFrom, 2990);
    assert.equal(textOf(topic.readCached(2990) ?? null), "m2990");
    // A stored subscriber that is not attached (an offline session) reads the log: the
    // memory does not wait for it.
    topic.detach(reader);
    topic.untrackPosition("clean");
    topic.trackPosition("stored", 1);
    await Promise.all(Array.from({ length: 100 }, (_, i) => topic.append(input(`o${i + 1}`))));
    assert.ok(topic.memoryFrom > 3140 - 64, `memory still from ${topic.memoryFrom}`);
  });
});

/**
 * A topic whose store holds every commit after its first for a minute (a commit delay),
 * or until `flush()`: appends stay in flight for as long as a test needs.
 */
async function withHeldCommits(
  earlyDelivery: boolean,
  fn: (env: Env & { wakes: () => number }) => Promise<void>,
): Promise<void> {
  await withStore(async ({ store, sup, start }) => {
    await store.barrier(); // the commit that starts the minute
    const topic = await start({ earlyDelivery });
    let wakes = 0;
    topic.attach({ position: 1, wake: () => wakes++ });
    await fn({ store, sup, topic, wakes: () => wakes });
  }, { delayMs: 60_000 });
}

function qos1(text: string, extra: Partial<AppendInput> = {}): AppendInput {
  return { ...input(text), qos: 1, ...extra };
}

Deno.test("early delivery: a plain QoS 1 message is readable before its commit, its appender told after", async () => {
  await withHeldCommits(true, async ({ store, topic, wakes }) => {
    let acked = false;
    const a = topic.append(qos1("a")).then(() => acked = true);
    await until(() => topic.readCached(1) !== null);
    assert.equal(textOf(topic.readCached(1) as StoredMessage), "a");
    assert.equal(wakes(), 1);
    assert.equal(acked, false, "the appender waits for the commit");
    assert.deepEqual(await store.readLog("t", 1, 10), [], "not in the store yet");
    assert.equal(topic.retentionFloor(), 1, "retention stays behind the commits in flight");
    // A QoS 2 message and a retained one wait for their commits, and so does a plain
    // QoS 1 message after them: the order of the topic holds.
    const rest = [
      topic.append(input("b")),
      topic.append(qos1("r", { retain: true })),
      topic.append(qos1("c")),
    ];
    await delay(30);
    assert.equal(topic.readCached(2), null);
    assert.equal(wakes(), 1);
    await store.flush();
    await Promise.all([a, ...rest]);
    assert.equal(acked, true);
    assert.deepEqual([2, 3, 4].map((seq) => textOf(topic.readCached(seq) as StoredMessage)), [
      "b",
      "r",
      "c",
    ]);
    assert.equal(wakes(), 4);
    assert.equal(topic.retentionFloor(), 5);
    const log = await store.readLog("t", 1, 10);
    assert.deepEqual(log.map((m) => [m.seq, textOf(m)]), [[1, "a"], [2, "b"], [3, "r"], [4, "c"]]);
  });
});

Deno.test("early delivery off: a QoS 1 message is readable only after its commit", async () => {
  await withHeldCommits(false, async ({ store, topic, wakes }) => {
    const a = topic.append(qos1("a"));
    const b = topic.append(qos0("b"));
    await delay(30);
    assert.equal(topic.readCached(1), null);
    assert.equal(wakes(), 0);
    await store.flush();
    await Promise.all([a, b]);
    assert.equal(textOf(topic.readCached(1) as StoredMessage), "a");
    assert.equal(textOf(topic.readCached(2) as StoredMessage), "b");
    assert.equal(wakes(), 2);
  });
});

Deno.test("an early delivery's commit waits for the stream delay only when nobody waits for it", async () => {
  await withStore(async ({ store, start }) => {
    const topic = await start({ earlyDelivery: true });
    const settled = new Set<string>();
    const append = (text: string, extra: Partial<AppendInput>) =>
      topic.append({ ...input(text), ...extra }).then(() => settled.add(text));
    await store.barrier(); // a commit that began just now: the delay counts from it
    // A pipelined QoS 1 message, and QoS 0 ones (logged, for a stored subscription):
    // delivered already, so their commits wait.
    topic.trackPosition("stored", 1);
    const waiting = [append("pipelined", { qos: 1, pipelined: true }), append("q0", { qos: 0 })];
    await delay(30);
    assert.equal(textOf(topic.readCached(1) as StoredMessage), "pipelined");
    assert.deepEqual([...settled], [], "their commits wait");
    // A publisher that waits for its PUBACK: its commit starts at once, with theirs.
    void append("waited for", { qos: 1 });
    await until(() => settled.size === 3);
    await Promise.all(waiting);
    // A retained message is not delivered before its commit, so nothing defers it.
    await store.barrier();
    void append("retained", { qos: 1, pipelined: true, retain: true });
    await until(() => settled.has("retained"));
  }, { delayMs: 0, streamDelayMs: 60_000 });
});

Deno.test("early delivery: a subscriber reached for the first time gets the message before its commit, unless its position is stored", async () => {
  await withStore(async ({ store, start }) => {
    await store.barrier(); // the commit that starts the minute
    let subs: { sid: string; durable: boolean }[] = [{ sid: "clean", durable: false }];
    const materialised: [string, number, boolean][] = [];
    const topic: Topic = await start({
      earlyDelivery: true,
      reach: {
        subscribersOf: () => subs,
        materialised: (_t, sids, seq) => {
          for (const sid of sids) materialised.push([sid, seq, topic.readCached(seq) !== null]);
        },
      },
    });
    const a = topic.append(qos1("a"));
    await until(() => materialised.length === 1);
    assert.deepEqual(materialised, [["clean", 1, true]], "reached with the message in memory");
    assert.deepEqual(await store.readLog("t", 1, 10), [], "before its commit");
    // A subscriber whose new position is stored waits for the commit that stores it.
    subs = [...subs, { sid: "durable", durable: true }];
    const b = topic.append(qos1("b"));
    await delay(30);
    assert.equal(topic.readCached(2), null);
    assert.equal(materialised.length, 1);
    await store.flush();
    await Promise.all([a, b]);
    assert.deepEqual(materialised, [["clean", 1, true], ["durable", 2, true]]);
    assert.deepEqual((await store.loadTopicSubscriptions("t")).map((s) => s.subscriber), [
      "durable",
    ]);
  }, { delayMs: 60_000 });
});
