/**
 * Conformance suite of {@link KvStore}: the same test bodies run against an in-memory
 * Deno KV and a temporary KV file (in the manner of hono's `common.case.test.ts`), plus
 * file-only cases for reopening and the schema version.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import fc from "fast-check";
import { estimateSize, FencedError } from "./group_commit.ts";
import { KvStore, messageSize, SCHEMA_VERSION, SchemaError } from "./kv_store.ts";
import type {
  FilterRecord,
  InflightRecord,
  PendingPublish,
  ReceiptRecord,
  SessionRecord,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
  WillRecord,
} from "./store.ts";

const encoder = new TextEncoder();

/** A store under test and how to get rid of it. */
interface Fixture {
  store: KvStore;
  /** Closes the store and opens the same data again (null for `:memory:`). */
  reopen: (() => Promise<KvStore>) | null;
  dispose(): Promise<void>;
}

type FixtureFactory = () => Promise<Fixture>;

const memory: FixtureFactory = async () => {
  const store = await KvStore.open(":memory:");
  return { store, reopen: null, dispose: () => Promise.resolve(store.close()) };
};

const file: FixtureFactory = async () => {
  const dir = await Deno.makeTempDir({ prefix: "kv_store_test_" });
  const path = join(dir, "broker.kv");
  const fx: Fixture = {
    store: await KvStore.open(path),
    reopen: async () => {
      fx.store.close();
      fx.store = await KvStore.open(path);
      return fx.store;
    },
    async dispose() {
      fx.store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
  return fx;
};

function message(topic: string, seq: number, id = 1000 + seq, text = `m${seq}`): StoredMessage {
  return { id, seq, topic, payload: encoder.encode(text), format: "text", publishedAt: 1 };
}

function head(name: string, nextSeq: number): TopicRecord {
  return { name, nextSeq, createdAt: 7 };
}

function subscription(subscriber: string, topic: string, position = 1): SubscriptionRecord {
  return { subscriber, topic, position, received: null, createdAt: 42 };
}

function session(sid: string, extra: Partial<SessionRecord> = {}): SessionRecord {
  return {
    sid,
    clientId: sid.replace(/^mqtt:/, ""),
    protocolVersion: 5,
    expirySec: 3600,
    user: null,
    createdAt: 10,
    disconnectedAt: null,
    ...extra,
  };
}

function filter(sid: string, f: string, extra: Partial<FilterRecord> = {}): FilterRecord {
  return {
    sid,
    filter: f,
    qos: 1,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0,
    createdAt: 11,
    ...extra,
  };
}

function inflight(sid: string, tag: number, extra: Partial<InflightRecord> = {}): InflightRecord {
  return {
    sid,
    tag,
    topic: "t",
    seq: tag,
    msgId: 500 + tag,
    qos: 2,
    phase: "sent",
    ...extra,
  };
}

function receipt(sid: string, tag: number, msgId = 900 + tag, seq = 1): ReceiptRecord {
  return { sid, tag, msgId, topic: "t", seq, at: 12 };
}

function will(sid: string, extra: Partial<WillRecord> = {}): WillRecord {
  return {
    sid,
    topic: `wills/${sid}`,
    payload: encoder.encode(`bye ${sid}`),
    format: "text",
    qos: 1,
    retain: false,
    delaySec: 0,
    user: null,
    dueAt: null,
    ...extra,
  };
}

/** A message using every optional field of schema version 2. */
function mqttMessage(topic: string, seq: number, id = 2000 + seq): StoredMessage {
  return {
    ...message(topic, seq, id),
    format: "binary",
    payload: new Uint8Array([0, 1, 254, 255]),
    qos: 1,
    retain: true,
    from: "mqtt:pub",
    expiresAt: 99_999,
    props: {
      payloadFormatIndicator: false,
      contentType: "application/octet-stream",
      responseTopic: "replies/pub",
      correlationData: new Uint8Array([7, 8, 9]),
      userProperties: { a: "1", b: ["2", "3"] },
    },
  };
}

function byTag(rs: { tag: number }[]): number[] {
  return rs.map((r) => r.tag).sort((a, b) => a - b);
}

/** Appends `seqs` to `topic`, each in its own operation, all in flight together. */
async function appendAll(store: KvStore, topic: string, seqs: number[]): Promise<void> {
  await Promise.all(seqs.map((seq) => store.append(message(topic, seq))));
}

function seqsOf(ms: StoredMessage[]): number[] {
  return ms.map((m) => m.seq);
}

/** Writes `entries` straight into the Deno KV file at `path`, as an older broker would have. */
async function writeRaw(path: string, entries: [Deno.KvKey, unknown][]): Promise<void> {
  const kv = await Deno.openKv(path);
  try {
    for (const [key, value] of entries) await kv.set(key, value);
  } finally {
    kv.close();
  }
}

/** The value under `key` in the Deno KV file at `path` (null when absent). */
async function readRaw(path: string, key: Deno.KvKey): Promise<unknown> {
  const kv = await Deno.openKv(path);
  try {
    return (await kv.get(key)).value;
  } finally {
    kv.close();
  }
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

/** Registers the conformance cases for one kind of store. */
function storeConformance(kind: string, make: FixtureFactory): void {
  function test(name: string, fn: (fx: Fixture) => Promise<void>): void {
    Deno.test(`KvStore (${kind}): ${name}`, async () => {
      const fx = await make();
      try {
        await fn(fx);
      } finally {
        await fx.dispose();
      }
    });
  }

  test("reserveIds never returns overlapping ranges", async ({ store }) => {
    const counts = [1, 1000, 7, 250, 1, 3, 1000, 64, 2, 500];
    const firsts = await Promise.all(counts.map((n) => store.reserveIds(n)));
    const ranges = firsts.map((first, i) => [first, first + (counts[i] as number)] as const)
      .sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < ranges.length; i++) {
      const prev = ranges[i - 1] as readonly [number, number];
      const cur = ranges[i] as readonly [number, number];
      assert.ok(prev[1] <= cur[0], `ranges [${prev}) and [${cur}) overlap`);
    }
    assert.ok((ranges[0] as readonly [number, number])[0] >= 1);
    const last = (ranges.at(-1) as readonly [number, number])[1];
    assert.ok(await store.reserveIds(1) >= last);
  });

  test("append and readLog return a topic's messages in seq order, gaps included", async ({ store }) => {
    await store.ensureTopic(head("t", 1));
    await appendAll(store, "t", [7, 1, 5, 2]);
    await appendAll(store, "t2", [1, 3]); // a topic whose name extends "t"
    await store.append(message("t", 9, 99, "last"));
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 100)), [1, 2, 5, 7, 9]);
    assert.deepEqual(seqsOf(await store.readLog("t", 3, 100)), [5, 7, 9]);
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 2)), [1, 2]);
    assert.deepEqual(seqsOf(await store.readLog("t", 10, 100)), []);
    assert.deepEqual(seqsOf(await store.readLog("t2", 1, 100)), [1, 3]);
    const [m] = await store.readLog("t", 9, 1);
    assert.deepEqual(m, message("t", 9, 99, "last"));
    assert.ok(m?.payload instanceof Uint8Array);
    assert.equal(await store.lastLogSeq("t"), 9);
    assert.equal((await store.loadTopic("t"))?.nextSeq, 1, "appends leave the head record alone");
    assert.deepEqual(await store.readLog("missing", 1, 10), []);
  });

  test("ensureTopic creates a topic and loadTopics lists every topic", async ({ store }) => {
    assert.equal(await store.loadTopic("a"), null);
    await store.ensureTopic(head("a", 1));
    await store.ensureTopic(head("b", 1));
    assert.deepEqual(await store.loadTopic("a"), head("a", 1));
    assert.deepEqual((await store.loadTopics()).map((t) => t.name).sort(), ["a", "b"]);
  });

  test("ensureTopic keeps the head of a topic that already has one", async ({ store }) => {
    await store.ensureTopic(head("a", 4));
    await appendAll(store, "a", [1, 2, 3]);
    await store.ensureTopic(head("a", 1));
    assert.equal((await store.loadTopic("a"))?.nextSeq, 4);
  });

  test("append with releasedId deletes the pending PUB in the same atomic, and writes nothing else", async ({ store }) => {
    const pending: PendingPublish = {
      id: 31,
      topic: "t",
      payload: encoder.encode("hello"),
      format: "text",
      receivedAt: 5,
      origin: "publisher 127.0.0.1:1",
    };
    await store.savePending(pending);
    await store.savePending({ ...pending, id: 32 });
    assert.deepEqual((await store.loadPending()).map((p) => p.id), [31, 32]);
    assert.deepEqual((await store.loadPending())[0], pending);

    const before = store.commitStats;
    const mutations = before.mutations;
    await store.append(message("t", 4, 31), { releasedId: 31 });
    assert.deepEqual((await store.loadPending()).map((p) => p.id), [32]);
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [4]);
    // The log segment and the pending PUB's deletion: no key per release besides.
    assert.equal(store.commitStats.mutations - mutations, 2);
  });

  test("barrier() settles after the operations before it, also while later ones never stop", async ({ store }) => {
    const first = store.savePosition(subscription("alice", "t", 7));
    let firstDone = false;
    first.then(() => firstDone = true);
    const barrier = store.barrier();
    // A load that never lets the store go quiet (flush() would wait for all of it).
    let stop = false;
    let n = 0;
    const load = (async () => {
      while (!stop && n < 10_000) await store.savePosition(subscription("bob", "t", ++n));
    })();
    await barrier;
    assert.ok(firstDone, "the earlier operation is committed first");
    assert.ok(n < 10_000, "the barrier did not wait for the load to end");
    stop = true;
    await load;
    assert.equal((await store.loadSubscription("alice", "t"))?.position, 7);
  });

  test("subscriptions save, load and delete with the subscriber index", async ({ store }) => {
    await store.saveSubscription(subscription("alice", "t1"));
    await store.saveSubscription(subscription("alice", "t2", 5));
    await store.saveSubscription(subscription("bob", "t1", 3));
    assert.deepEqual(await store.loadSubscription("alice", "t2"), subscription("alice", "t2", 5));
    assert.equal(await store.loadSubscription("carol", "t1"), null);
    assert.deepEqual((await store.loadSubscriberTopics("alice")).sort(), ["t1", "t2"]);
    assert.deepEqual(await store.loadSubscriberTopics("bob"), ["t1"]);
    assert.deepEqual(await store.loadSubscriberTopics("carol"), []);
    assert.deepEqual(
      (await store.loadTopicSubscriptions("t1")).map((s) => [s.subscriber, s.position]).sort(),
      [["alice", 1], ["bob", 3]],
    );

    const moved = { ...subscription("alice", "t1", 9), received: { seq: 9, id: 77 } };
    await store.savePosition(moved);
    assert.deepEqual(await store.loadSubscription("alice", "t1"), moved);
    assert.deepEqual((await store.loadSubscriberTopics("alice")).sort(), ["t1", "t2"]);

    await store.deleteSubscription("alice", "t1");
    assert.equal(await store.loadSubscription("alice", "t1"), null);
    assert.deepEqual(await store.loadSubscriberTopics("alice"), ["t2"]);
    assert.deepEqual((await store.loadTopicSubscriptions("t1")).map((s) => s.subscriber), ["bob"]);
  });

  test("trimLog deletes exactly the range [fromSeq, toSeq) of messages appended alone", async ({ store }) => {
    // Payloads are `m${seq}`: the bytes of a range are the lengths of those texts.
    const bytes = (from: number, to: number) =>
      range(from, to).reduce((n, seq) => n + `m${seq}`.length, 0);
    // One append per atomic: every segment holds one message.
    for (const seq of range(1, 121)) await store.append(message("t", seq));
    await appendAll(store, "other", range(1, 11));
    assert.equal(await store.payloadBytes(), bytes(1, 121) + bytes(1, 11));
    assert.equal(await store.trimLog("t", 10, 110, head("t", 10_000)), bytes(10, 110));
    const rest = seqsOf(await store.readLog("t", 1, 2000));
    assert.deepEqual(rest, [...range(1, 10), ...range(110, 121)]);
    assert.equal((await store.readLog("other", 1, 100)).length, 10);
    assert.equal(await store.trimLog("t", 10, 110, head("t", 10_000)), 0);
    assert.equal(await store.trimLog("t", 1, 3, head("t", 10_000)), bytes(1, 3));
    assert.equal(await store.payloadBytes(), bytes(3, 10) + bytes(110, 121) + bytes(1, 11));
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 3)), [3, 4, 5]);
  });

  test("messages appended together share segments; reads start at any seq inside one", async ({ store }) => {
    const written = store.commitStats.mutations;
    await appendAll(store, "t", range(1, 1201));
    // Keys written: a few segments and the topic's head, not one key per message.
    const keys = store.commitStats.mutations - written;
    assert.ok(keys < 100, `${keys} keys written for 1,200 messages`);
    assert.equal(await store.lastLogSeq("t"), 1200); // a segment is keyed by its last message
    for (const from of [1, 2, 57, 599, 600, 601, 1199, 1200]) {
      assert.deepEqual(
        seqsOf(await store.readLog("t", from, 5)),
        range(from, Math.min(from + 5, 1201)),
      );
    }
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 2000)), range(1, 1201));
    assert.deepEqual(await store.readLog("t", 1201, 10), []);
  });

  test("trimLog deletes exactly [fromSeq, toSeq) also inside segments, and counts what it deleted", async ({ store }) => {
    const bytes = (from: number, to: number) =>
      range(from, to).reduce((n, seq) => n + `m${seq}`.length, 0);
    await appendAll(store, "t", range(1, 1001));
    await appendAll(store, "t", range(1001, 1101));
    const before = await store.payloadBytes();
    let trimmed = 1;
    let freed = 0;
    for (const floor of [7, 333, 334, 950, 1000, 1001, 1050, 1101]) {
      freed += await store.trimLog("t", trimmed, floor, head("t", 10_000));
      assert.equal(freed, bytes(1, floor));
      trimmed = floor;
      assert.deepEqual(seqsOf(await store.readLog("t", 0, 2000)), range(floor, 1101));
      assert.equal(await store.payloadBytes(), before - freed);
    }
    assert.deepEqual(await store.readLog("t", 0, 10), []);
    assert.equal(await store.lastLogSeq("t"), 0);
    assert.equal(await store.payloadBytes(), 0);
  });

  test("trimLog writes the head with its first batch: the emptied log still bounds the next seq", async ({ store }) => {
    await store.ensureTopic(head("t", 1));
    await appendAll(store, "t", range(1, 11));
    await assert.rejects(store.trimLog("t", 1, 11, head("t", 10)), RangeError);
    assert.equal(await store.lastLogSeq("t"), 10, "a refused trim deleted nothing");
    // Inside one segment only (a rewrite, no deletion): the head goes with the rewrite.
    await store.append(message("t", 11));
    await store.append(message("t", 12)); // two segments: [1..10], [11], [12]
    await store.trimLog("t", 1, 5, head("t", 13));
    assert.equal((await store.loadTopic("t"))?.nextSeq, 13);
    await store.trimLog("t", 5, 13, head("t", 20));
    assert.equal(await store.lastLogSeq("t"), 0);
    assert.equal((await store.loadTopic("t"))?.nextSeq, 20);
    // Nothing to trim: the head is not rewritten.
    await store.trimLog("t", 13, 13, head("t", 30));
    assert.equal((await store.loadTopic("t"))?.nextSeq, 20);
  });

  test("a message with every schema 2 field round-trips through the log", async ({ store }) => {
    const m = mqttMessage("t", 1);
    await store.append(m);
    const [back] = await store.readLog("t", 1, 10);
    assert.deepEqual(back, m);
    assert.ok(back?.props?.correlationData instanceof Uint8Array);
  });

  test("sessions save, load, list and rewrite", async ({ store }) => {
    assert.equal(await store.loadSession("mqtt:a"), null);
    assert.deepEqual(await store.loadSessions(), []);
    await store.saveSession(session("mqtt:a"));
    await store.saveSession(session("mqtt:b", { protocolVersion: 4, user: "bob" }));
    assert.deepEqual(await store.loadSession("mqtt:a"), session("mqtt:a"));
    const ended = session("mqtt:a", { disconnectedAt: 77, expirySec: 0 });
    await store.saveSession(ended);
    assert.deepEqual(await store.loadSession("mqtt:a"), ended);
    assert.deepEqual(
      (await store.loadSessions()).sort((x, y) => x.sid.localeCompare(y.sid)),
      [ended, session("mqtt:b", { protocolVersion: 4, user: "bob" })],
    );
  });

  test("filters save, list and delete", async ({ store }) => {
    const a1 = filter("mqtt:a", "sensors/#", { subscriptionId: 3, noLocal: true });
    const a2 = filter("mqtt:a", "$share/g/x/+", { qos: 2, retainHandling: 2 });
    const b1 = filter("mqtt:b", "sensors/#", { retainAsPublished: true, qos: 0 });
    for (const f of [a1, a2, b1]) await store.saveFilter(f);
    const key = (f: FilterRecord) => `${f.sid} ${f.filter}`;
    const sorted = (fs: FilterRecord[]) => [...fs].sort((x, y) => key(x).localeCompare(key(y)));
    assert.deepEqual(sorted(await store.loadFilters()), sorted([a1, a2, b1]));
    await store.saveFilter({ ...a1, qos: 0 });
    await store.deleteFilter("mqtt:a", "$share/g/x/+");
    await store.deleteFilter("mqtt:a", "never/subscribed");
    assert.deepEqual(sorted(await store.loadFilters()), sorted([{ ...a1, qos: 0 }, b1]));
  });

  test("saveInflight writes, deletes and moves a position in one operation", async ({ store }) => {
    const retained = mqttMessage("r", 0, 41);
    await store.saveSubscription(subscription("mqtt:a", "t", 1));
    await store.saveInflight([
      inflight("mqtt:a", 1),
      inflight("mqtt:a", 2, { qos: 1 }),
      inflight("mqtt:a", 3, { topic: "r", seq: 0, msgId: 41, message: retained }),
      inflight("mqtt:b", 1),
    ]);
    assert.deepEqual(byTag(await store.loadInflight("mqtt:a")), [1, 2, 3]);
    const [embedded] = (await store.loadInflight("mqtt:a")).filter((r) => r.tag === 3);
    assert.deepEqual(embedded?.message, retained);

    const before = store.commitStats.operations;
    const moved = subscription("mqtt:a", "t", 3);
    await store.saveInflight(
      [inflight("mqtt:a", 2, { phase: "done" }), inflight("mqtt:a", 1, { seq: 9, msgId: 99 })],
      [{ sid: "mqtt:a", tag: 1 }, { sid: "mqtt:a", tag: 3 }, { sid: "mqtt:a", tag: 400 }],
      moved,
    );
    assert.equal(store.commitStats.operations, before + 1);
    const a = await store.loadInflight("mqtt:a");
    assert.deepEqual(byTag(a), [1, 2]);
    assert.deepEqual(a.find((r) => r.tag === 1), inflight("mqtt:a", 1, { seq: 9, msgId: 99 }));
    assert.equal(a.find((r) => r.tag === 2)?.phase, "done");
    assert.deepEqual(await store.loadSubscription("mqtt:a", "t"), moved);
    assert.deepEqual(await store.loadInflight("mqtt:b"), [inflight("mqtt:b", 1)]);

    await store.saveInflight([]); // nothing to do
    await store.saveInflight([], [{ sid: "mqtt:b", tag: 1 }]);
    assert.deepEqual(await store.loadInflight("mqtt:b"), []);
  });

  test("receipts are stored with their append, listed per session and deleted", async ({ store }) => {
    await store.append(message("t", 1, 901), { receipt: receipt("mqtt:a", 7, 901) });
    await store.append(message("t", 2, 902), {
      receipt: receipt("mqtt:a", 8, 902, 2),
    });
    await store.append(message("t", 3, 903), {
      receipt: receipt("mqtt:b", 7, 903, 3),
    });
    assert.deepEqual(await store.loadReceipt("mqtt:a", 7), receipt("mqtt:a", 7, 901));
    assert.equal(await store.loadReceipt("mqtt:a", 9), null);
    assert.deepEqual(byTag(await store.loadReceipts("mqtt:a")), [7, 8]);
    await store.deleteReceipt("mqtt:a", 7);
    await store.deleteReceipt("mqtt:a", 7);
    assert.equal(await store.loadReceipt("mqtt:a", 7), null);
    assert.deepEqual(await store.loadReceipts("mqtt:a"), [receipt("mqtt:a", 8, 902, 2)]);
    assert.deepEqual(await store.loadReceipts("mqtt:b"), [receipt("mqtt:b", 7, 903, 3)]);
  });

  test("retained messages are set and cleared by appends, one per topic", async ({ store }) => {
    assert.deepEqual(await store.loadRetained(), []);
    const first = mqttMessage("a", 1);
    await store.append(first, { retained: "set" });
    await store.append(message("b", 1), { retained: "set" });
    assert.deepEqual(
      (await store.loadRetained()).map((m) => [m.topic, m.id]).sort(),
      [["a", 2001], ["b", 1001]],
    );
    assert.deepEqual((await store.loadRetained()).find((m) => m.topic === "a"), first);

    await store.append(message("a", 2)); // RETAIN 0 leaves it alone
    assert.equal((await store.loadRetained()).find((m) => m.topic === "a")?.id, 2001);
    await store.append(mqttMessage("a", 3), { retained: "set" });
    assert.equal((await store.loadRetained()).find((m) => m.topic === "a")?.seq, 3);
    await store.append(message("a", 4, 1004, ""), { retained: "clear" });
    assert.deepEqual((await store.loadRetained()).map((m) => m.topic), ["b"]);
    assert.deepEqual(seqsOf(await store.readLog("a", 1, 10)), [1, 2, 3, 4]);
  });

  test("wills save, list and delete, also by the append that publishes them", async ({ store }) => {
    const a = will("mqtt:a", { props: { contentType: "text/plain" }, expiryIntervalSec: 60 });
    await store.saveWill(a);
    await store.saveWill(will("mqtt:b", { delaySec: 30, dueAt: 1234, retain: true, qos: 2 }));
    const sorted = async () => (await store.loadWills()).sort((x, y) => x.sid.localeCompare(y.sid));
    assert.deepEqual(await sorted(), [
      a,
      will("mqtt:b", {
        delaySec: 30,
        dueAt: 1234,
        retain: true,
        qos: 2,
      }),
    ]);
    await store.append(message("wills/mqtt:b", 1), { willOf: "mqtt:b" });
    assert.deepEqual(await sorted(), [a]);
    await store.deleteWill("mqtt:a");
    await store.deleteWill("mqtt:a");
    assert.deepEqual(await store.loadWills(), []);
  });

  test("append commits the message and every effect in one operation", async ({ store }) => {
    const pending: PendingPublish = {
      id: 60,
      topic: "t",
      payload: encoder.encode("held"),
      format: "text",
      receivedAt: 1,
      origin: "publisher 127.0.0.1:1",
    };
    await store.savePending(pending);
    await store.saveWill(will("mqtt:w"));
    await store.saveWill(will("mqtt:other"));
    await store.saveSubscription(subscription("old", "t", 1));
    await store.flush();

    const m = { ...mqttMessage("t", 5, 60), retain: true };
    const positions = [subscription("mqtt:x", "t", 5), subscription("share:g/t", "t", 5)];
    const before = { ...store.commitStats };
    await store.append(m, {
      releasedId: 60,
      receipt: receipt("mqtt:w", 3, 60, 5),
      retained: "set",
      positions,
      willOf: "mqtt:w",
    });
    assert.equal(store.commitStats.operations, before.operations + 1);
    assert.equal(store.commitStats.atomics, before.atomics + 1);

    assert.deepEqual(await store.readLog("t", 1, 10), [m]);
    assert.equal(await store.lastLogSeq("t"), 5);
    assert.deepEqual(await store.loadPending(), []);
    assert.deepEqual(await store.loadReceipt("mqtt:w", 3), receipt("mqtt:w", 3, 60, 5));
    assert.deepEqual(await store.loadRetained(), [m]);
    for (const p of positions) {
      assert.deepEqual(await store.loadSubscription(p.subscriber, "t"), p);
      assert.deepEqual(await store.loadSubscriberTopics(p.subscriber), ["t"]);
    }
    assert.equal((await store.loadTopicSubscriptions("t")).length, 3);
    assert.deepEqual((await store.loadWills()).map((w) => w.sid), ["mqtt:other"]);
  });

  test("append with more positions than one operation holds commits them all", async ({ store }) => {
    // 700 positions are 1,400 mutations, over the 1,000 of one operation: the positions
    // go first in operations of their own, then the message with its other effects.
    const positions = range(0, 700).map((i) => subscription(`mqtt:s${i}`, "wide", 1));
    const ops = store.commitStats.operations;
    await store.append(message("wide", 1), { positions, retained: "set" });
    assert.equal(store.commitStats.operations - ops, 3, "two of positions, then the message");
    assert.deepEqual(seqsOf(await store.readLog("wide", 1, 10)), [1]);
    assert.equal((await store.loadRetained()).length, 1);
    const subs = await store.loadTopicSubscriptions("wide");
    assert.equal(subs.length, 700);
    assert.deepEqual(await store.loadSubscriberTopics("mqtt:s699"), ["wide"]);

    // Long keys (topic 1,000 characters, session id 260) hit the estimated key bytes of
    // one operation at about 13 positions, before the mutation count does.
    const long = "x/".repeat(500);
    const many = range(0, 30).map((i) => subscription(`mqtt:${"c".repeat(250)}${i}`, long, 1));
    const before = store.commitStats.operations;
    await store.append(message(long, 1), { positions: many });
    assert.ok(store.commitStats.operations - before >= 3, "positions split by bytes");
    assert.equal((await store.loadTopicSubscriptions(long)).length, 30);
    assert.equal((await store.readLog(long, 1, 10)).length, 1);
  });

  test("deleteSession removes everything of that session and nothing of another", async ({ store }) => {
    const sids = ["mqtt:a", "mqtt:b"];
    for (const sid of sids) {
      await store.saveSession(session(sid));
      await store.saveFilter(filter(sid, "t/#"));
      await store.saveFilter(filter(sid, "u"));
      await store.saveSubscription(subscription(sid, "t/1", 1));
      await store.saveWill(will(sid));
    }
    // Positions materialised by appends, receipts, and enough in-flight entries to take
    // several operations.
    await store.append(message("t/2", 1), {
      positions: sids.map((sid) => subscription(sid, "t/2", 1)),
      receipt: receipt("mqtt:a", 1),
      retained: "set",
    });
    await store.append(message("u", 1), { receipt: receipt("mqtt:b", 1) });
    for (let tag = 1; tag <= 1200; tag += 400) {
      await store.saveInflight(range(tag, tag + 400).map((t) => inflight("mqtt:a", t)));
    }
    await store.saveInflight([inflight("mqtt:b", 1)]);
    await store.saveSubscription(subscription("json-consumer", "t/1", 1));

    const before = store.commitStats.operations;
    await store.deleteSession("mqtt:a");
    assert.ok(store.commitStats.operations - before >= 3, "deleted in several operations");

    assert.equal(await store.loadSession("mqtt:a"), null);
    assert.deepEqual((await store.loadFilters()).map((f) => f.sid), ["mqtt:b", "mqtt:b"]);
    assert.equal(await store.loadSubscription("mqtt:a", "t/1"), null);
    assert.equal(await store.loadSubscription("mqtt:a", "t/2"), null);
    assert.deepEqual(await store.loadSubscriberTopics("mqtt:a"), []);
    assert.deepEqual(await store.loadInflight("mqtt:a"), []);
    assert.deepEqual(await store.loadReceipts("mqtt:a"), []);
    // Not session state: the will, the retained message and the log stay.
    assert.deepEqual((await store.loadWills()).map((w) => w.sid).sort(), sids);
    assert.equal((await store.loadRetained()).length, 1);
    assert.equal((await store.readLog("t/2", 1, 10)).length, 1);

    // The other session, and the JSON-line consumer, are untouched.
    assert.deepEqual(await store.loadSession("mqtt:b"), session("mqtt:b"));
    assert.deepEqual((await store.loadSubscriberTopics("mqtt:b")).sort(), ["t/1", "t/2"]);
    assert.deepEqual(await store.loadInflight("mqtt:b"), [inflight("mqtt:b", 1)]);
    assert.deepEqual(await store.loadReceipts("mqtt:b"), [receipt("mqtt:b", 1)]);
    assert.deepEqual(
      (await store.loadTopicSubscriptions("t/1")).map((s) => s.subscriber).sort(),
      ["json-consumer", "mqtt:b"],
    );

    await store.deleteSession("mqtt:a"); // idempotent
    await store.deleteSession("mqtt:never");
    assert.deepEqual((await store.loadSessions()).map((s) => s.sid), ["mqtt:b"]);
  });

  test("payloadBytes counts retained, will and embedded in-flight payloads", async ({ store }) => {
    await store.append(message("t", 1, 1001, "abc"), { retained: "set" }); // 3 + 3
    await store.saveWill(will("mqtt:a", { payload: new Uint8Array(10) })); // 10
    await store.saveInflight([
      inflight("mqtt:a", 1, { message: { ...message("r", 0, 5), payload: new Uint8Array(7) } }),
      inflight("mqtt:a", 2), // no embedded message
    ]);
    assert.equal(await store.payloadBytes(), 3 + 3 + 10 + 7);
  });

  test("flush() resolves after every write submitted so far is readable", async ({ store }) => {
    for (let i = 1; i <= 50; i++) void store.append(message("f", i));
    await store.flush();
    assert.equal((await store.readLog("f", 1, 100)).length, 50);
  });
}

storeConformance(":memory:", memory);
storeConformance("file", file);

// --- file-only cases ------------------------------------------------------------------

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kv_store_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("KvStore (file): after a restart trimLog deletes the earlier process's segments and its own, counting their bytes exactly", async () => {
  const fx = await file();
  try {
    const bytes = (from: number, to: number) =>
      range(from, to).reduce((n, seq) => n + `m${seq}`.length, 0);
    // Segments of several messages each, before and after the restart, in two topics.
    for (let seq = 1; seq <= 60; seq += 6) await appendAll(fx.store, "t", range(seq, seq + 6));
    await appendAll(fx.store, "u", range(1, 31));
    const r = await (fx.reopen as () => Promise<KvStore>)();
    for (let seq = 61; seq <= 120; seq += 6) await appendAll(r, "t", range(seq, seq + 6));
    await appendAll(r, "u", range(31, 61));
    assert.equal(await r.payloadBytes(), bytes(1, 121) + bytes(1, 61));
    // Across the restart, each floor inside a segment (rewritten without its head).
    assert.equal(await r.trimLog("t", 1, 40, head("t", 121)), bytes(1, 40));
    assert.equal(await r.trimLog("t", 40, 95, head("t", 121)), bytes(40, 95));
    assert.deepEqual(seqsOf(await r.readLog("t", 1, 200)), range(95, 121));
    assert.equal(await r.trimLog("t", 95, 95, head("t", 121)), 0);
    assert.equal(await r.trimLog("u", 1, 61, head("u", 61)), bytes(1, 61));
    assert.deepEqual(await r.readLog("u", 1, 100), []);
    assert.equal(await r.trimLog("t", 95, 121, head("t", 121)), bytes(95, 121));
    assert.deepEqual(await r.readLog("t", 1, 200), []);
    assert.equal(await r.payloadBytes(), 0);
    // Appends after the trims are indexed and trimmed like the others.
    await appendAll(r, "t", range(121, 131));
    assert.equal(await r.trimLog("t", 121, 131, head("t", 131)), bytes(121, 131));
    assert.equal(await r.payloadBytes(), 0);
  } finally {
    await fx.dispose();
  }
});

Deno.test("KvStore (file): reopening keeps topics, log, pending, releases and subscriptions", async () => {
  const fx = await file();
  try {
    const s = fx.store;
    await s.ensureTopic(head("t", 1));
    await appendAll(s, "t", [1, 2, 3]);
    await s.savePending({
      id: 50,
      topic: "t",
      payload: new Uint8Array([0, 255]),
      format: "binary",
      receivedAt: 1,
      origin: "x",
    });
    await s.savePending({
      id: 51,
      topic: "t",
      payload: new Uint8Array([1]),
      format: "binary",
      receivedAt: 1,
      origin: "x",
    });
    await s.append(message("t", 4, 51), { releasedId: 51 });
    await s.saveSubscription(subscription("alice", "t", 3));

    const r = await (fx.reopen as () => Promise<KvStore>)();
    assert.equal(await r.lastLogSeq("t"), 4);
    assert.deepEqual(seqsOf(await r.readLog("t", 1, 10)), [1, 2, 3, 4]);
    assert.deepEqual((await r.loadPending()).map((p) => [p.id, [...p.payload]]), [[50, [0, 255]]]);
    assert.deepEqual(await r.loadSubscription("alice", "t"), subscription("alice", "t", 3));
    assert.deepEqual(await r.loadSubscriberTopics("alice"), ["t"]);
  } finally {
    await fx.dispose();
  }
});

Deno.test("KvStore (file): reserveIds never overlaps a range reserved before a reopen", async () => {
  const fx = await file();
  try {
    const before: [number, number][] = [];
    for (const n of [1000, 1, 250]) {
      const first = await fx.store.reserveIds(n);
      before.push([first, first + n]);
    }
    const end = Math.max(...before.map((r) => r[1]));
    const r = await (fx.reopen as () => Promise<KvStore>)();
    const firsts = await Promise.all([r.reserveIds(1000), r.reserveIds(1), r.reserveIds(10)]);
    for (const f of firsts) assert.ok(f >= end, `id ${f} was reserved before the reopen`);
    assert.equal(new Set(firsts).size, 3);
  } finally {
    await fx.dispose();
  }
});

Deno.test("KvStore: a store written with a higher schema version is refused with SchemaError", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const kv = await Deno.openKv(path);
    await kv.set(["meta", "schema"], 99);
    kv.close();

    await assert.rejects(KvStore.open(path), (err: unknown) => {
      assert.ok(err instanceof SchemaError);
      assert.match(err.message, /99/);
      assert.match(err.message, new RegExp(`version ${SCHEMA_VERSION}`));
      return true;
    });
    // Refusing wrote nothing: the schema stays, no owner was taken. (The handle was
    // closed, or the resource sanitizer fails this test.)
    const check = await Deno.openKv(path);
    try {
      assert.equal((await check.get(["meta", "schema"])).value, 99);
      assert.equal((await check.get(["meta", "owner"])).value, null);
    } finally {
      check.close();
    }
  });
});

Deno.test("KvStore: a new store writes the schema version and accepts it when reopened", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    (await KvStore.open(path)).close();
    const kv = await Deno.openKv(path);
    try {
      assert.equal((await kv.get(["meta", "schema"])).value, SCHEMA_VERSION);
    } finally {
      kv.close();
    }
    (await KvStore.open(path)).close();
  });
});

Deno.test("KvStore: a second open of the same file fences the first one's writes", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const first = await KvStore.open(path);
    try {
      const firstIds = await first.reserveIds(10);
      const second = await KvStore.open(path);
      try {
        await assert.rejects(first.ensureTopic(head("late", 1)), FencedError);
        await assert.rejects(first.reserveIds(10), /owner key changed/);
        assert.equal(await second.loadTopic("late"), null);
        assert.equal(await second.reserveIds(1), firstIds + 10);
      } finally {
        second.close();
      }
    } finally {
      first.close();
    }
  });
});

Deno.test("KvStore (file): a fenced append writes neither the message nor any effect", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const first = await KvStore.open(path);
    try {
      await first.saveWill(will("mqtt:w"));
      const second = await KvStore.open(path);
      try {
        await assert.rejects(
          first.append(message("t", 1), {
            receipt: receipt("mqtt:w", 1),
            retained: "set",
            positions: [subscription("mqtt:x", "t", 1)],
            willOf: "mqtt:w",
          }),
          FencedError,
        );
        assert.deepEqual(await second.readLog("t", 1, 10), []);
        assert.equal(await second.loadTopic("t"), null);
        assert.equal(await second.loadReceipt("mqtt:w", 1), null);
        assert.deepEqual(await second.loadRetained(), []);
        assert.equal(await second.loadSubscription("mqtt:x", "t"), null);
        assert.deepEqual((await second.loadWills()).map((w) => w.sid), ["mqtt:w"]);
      } finally {
        second.close();
      }
    } finally {
      first.close();
    }
  });
});

Deno.test("KvStore (file): corrupt session-state values are quarantined, not thrown", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const first = await KvStore.open(path);
    try {
      await first.saveSession(session("mqtt:ok"));
      await first.saveFilter(filter("mqtt:ok", "a/#"));
      await first.saveInflight([inflight("mqtt:ok", 1)]);
      await first.saveWill(will("mqtt:ok"));
      await first.append(message("ok", 1), {
        retained: "set",
        receipt: receipt("mqtt:ok", 1),
      });
    } finally {
      first.close();
    }
    // Written behind the store's back: wrong shapes under every new prefix.
    const bad: [Deno.KvKey, unknown][] = [
      [["session", "mqtt:bad"], { ...session("mqtt:bad"), protocolVersion: 3 }],
      [["filter", "mqtt:bad", "x"], "not a filter"],
      [["filter", "mqtt:ok", "y"], { ...filter("mqtt:ok", "y"), qos: 3 }],
      [["inflight", "mqtt:ok", 2], { ...inflight("mqtt:ok", 2), phase: "lost" }],
      [["receipt", "mqtt:ok", 2], { tag: 2 }],
      [["retained", "bad"], { ...message("bad", 1), payload: "text, not bytes" }],
      [["will", "mqtt:bad"], { ...will("mqtt:bad"), dueAt: "soon" }],
    ];
    const raw = await Deno.openKv(path);
    for (const [key, value] of bad) await raw.set(key, value);
    raw.close();

    const store = await KvStore.open(path);
    try {
      assert.equal(await store.loadSession("mqtt:bad"), null);
      assert.deepEqual((await store.loadSessions()).map((s) => s.sid), ["mqtt:ok"]);
      assert.deepEqual(await store.loadFilters(), [filter("mqtt:ok", "a/#")]);
      assert.deepEqual(await store.loadInflight("mqtt:ok"), [inflight("mqtt:ok", 1)]);
      assert.equal(await store.loadReceipt("mqtt:ok", 2), null);
      assert.deepEqual(await store.loadReceipts("mqtt:ok"), [receipt("mqtt:ok", 1)]);
      assert.deepEqual((await store.loadRetained()).map((m) => m.topic), ["ok"]);
      assert.deepEqual((await store.loadWills()).map((w) => w.sid), ["mqtt:ok"]);
      await store.flush();
    } finally {
      store.close();
    }

    const check = await Deno.openKv(path);
    try {
      for (const [key, value] of bad) {
        assert.equal((await check.get(key)).versionstamp, null, `${String(key)} still in place`);
        assert.deepEqual((await check.get(["quarantine", ...key])).value, value);
      }
    } finally {
      check.close();
    }
  });
});

// --- older schema versions -------------------------------------------------------------

Deno.test("KvStore: a version 2 store (one message per log key) is migrated to the current version and reads on", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    await writeRaw(path, [
      [["meta", "schema"], 2],
      [["topic", "t"], { name: "t", nextSeq: 4, createdAt: 1 }],
      ...[1, 2, 3].map((seq): [Deno.KvKey, unknown] => [["log", "t", seq], mqttMessage("t", seq)]),
    ]);

    const store = await KvStore.open(path);
    try {
      assert.equal(await store.lastLogSeq("t"), 3);
      await appendAll(store, "t", [4, 5, 6]); // one segment after three single messages
      assert.deepEqual(await store.readLog("t", 2, 3), [
        mqttMessage("t", 2),
        mqttMessage("t", 3),
        message("t", 4),
      ]);
      assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [1, 2, 3, 4, 5, 6]);
      const bytes = await store.payloadBytes();
      // 1..3 (single messages) go, and 4 leaves the segment 4..6.
      assert.equal(await store.trimLog("t", 1, 5, head("t", 10_000)), 3 * 4 + "m4".length);
      assert.equal(await store.payloadBytes(), bytes - 3 * 4 - "m4".length);
      assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [5, 6]);
      assert.equal(await store.trimLog("t", 5, 7, head("t", 10_000)), "m5m6".length);
      assert.deepEqual(await store.readLog("t", 1, 10), []);
    } finally {
      store.close();
    }
    await assertSchemaCurrent(path);
  });
});

/** Checks that `path` now has the current schema version. */
async function assertSchemaCurrent(path: string): Promise<void> {
  const kv = await Deno.openKv(path);
  try {
    assert.equal((await kv.get(["meta", "schema"])).value, SCHEMA_VERSION);
  } finally {
    kv.close();
  }
}

Deno.test("KvStore: a version 1 store is migrated to the current version and its data stays readable", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    // What a version 1 broker wrote, value shapes included (no schema 2 fields).
    const v1Message = {
      id: 7,
      seq: 1,
      topic: "t",
      payload: encoder.encode("v1"),
      format: "text",
      publishedAt: 3,
    };
    const kv = await Deno.openKv(path);
    await kv.set(["meta", "schema"], 1);
    await kv.set(["meta", "ids"], 1001);
    await kv.set(["topic", "t"], { name: "t", nextSeq: 2, createdAt: 1 });
    await kv.set(["log", "t", 1], v1Message);
    await kv.set(["sub", "t", "alice"], {
      subscriber: "alice",
      topic: "t",
      position: 1,
      received: { seq: 1, id: 7 },
      createdAt: 2,
    });
    await kv.set(["subscriber", "alice", "t"], 2);
    kv.close();

    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.readLog("t", 1, 10), [v1Message]);
      assert.equal((await store.loadTopic("t"))?.nextSeq, 2);
      assert.deepEqual(await store.loadSubscription("alice", "t"), {
        subscriber: "alice",
        topic: "t",
        position: 1,
        received: { seq: 1, id: 7 },
        createdAt: 2,
      });
      assert.deepEqual(await store.loadSubscriberTopics("alice"), ["t"]);
      assert.equal(await store.reserveIds(1), 1001);
      await store.append(mqttMessage("t", 2), { retained: "set" });
      assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [1, 2]);
    } finally {
      store.close();
    }
    await assertSchemaCurrent(path);
    (await KvStore.open(path)).close(); // and it opens again as the current version
    await assertSchemaCurrent(path);
  });
});

Deno.test("KvStore: the version 1 fixture written by the version 1 broker opens as the current version", async () => {
  // testdata/schema_v1.kv was written by KvStore at schema version 1 (see
  // testdata/README.md). It is copied first: opening migrates it.
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    await Deno.copyFile(new URL("./testdata/schema_v1.kv", import.meta.url), path);
    const kv = await Deno.openKv(path);
    try {
      assert.equal((await kv.get(["meta", "schema"])).value, 1);
    } finally {
      kv.close();
    }

    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.loadTopics(), [
        { name: "sensors/a", nextSeq: 5, createdAt: 1700000000000 },
      ]);
      const log = await store.readLog("sensors/a", 1, 10);
      assert.deepEqual(log.map((m) => [m.seq, m.id, m.format]), [
        [1, 1, "text"],
        [2, 2, "text"],
        [3, 3, "text"],
        [4, 5, "json"],
      ]);
      assert.equal(new TextDecoder().decode(log[3]?.payload), '{"v":5}');
      assert.ok(log.every((m) => m.qos === undefined && m.props === undefined));
      assert.deepEqual(await store.loadPending(), [{
        id: 4,
        topic: "sensors/a",
        payload: new Uint8Array([0, 255]),
        format: "binary",
        receivedAt: 1700000000010,
        origin: "publisher 127.0.0.1:5321",
      }]);
      assert.deepEqual(await store.loadSubscription("alice", "sensors/a"), {
        subscriber: "alice",
        topic: "sensors/a",
        position: 2,
        received: { seq: 2, id: 2 },
        createdAt: 1700000000005,
      });
      assert.deepEqual(
        (await store.loadTopicSubscriptions("sensors/a")).map((s) => s.subscriber),
        ["alice", "bob"],
      );
      assert.equal(await store.reserveIds(1), 1001);
      assert.deepEqual(await store.loadSessions(), []);
      assert.equal(await store.payloadBytes(), 2 + 2 + 2 + 7 + 2); // log m1..m3, {"v":5}, pending
    } finally {
      store.close();
    }
    await assertSchemaCurrent(path);
  });
});

Deno.test("messageSize is never below the group committer's estimate of the message", () => {
  const text = fc.string({ maxLength: 40 });
  const message = fc.record({
    id: fc.nat(),
    seq: fc.nat(),
    topic: text,
    payload: fc.uint8Array({ maxLength: 300 }),
    format: fc.constantFrom("text" as const, "json" as const, "binary" as const),
    publishedAt: fc.nat(),
    qos: fc.option(fc.constantFrom(0 as const, 1 as const, 2 as const), { nil: undefined }),
    retain: fc.option(fc.boolean(), { nil: undefined }),
    from: fc.option(text, { nil: undefined }),
    expiresAt: fc.option(fc.nat(), { nil: undefined }),
    props: fc.option(
      fc.record({
        contentType: fc.option(text, { nil: undefined }),
        responseTopic: fc.option(text, { nil: undefined }),
        correlationData: fc.option(fc.uint8Array({ maxLength: 50 }), { nil: undefined }),
        userProperties: fc.option(fc.dictionary(text, text, { maxKeys: 4 }), { nil: undefined }),
      }),
      { nil: undefined },
    ),
  }, { requiredKeys: ["id", "seq", "topic", "payload", "format", "publishedAt"] });
  fc.assert(fc.property(message, (m) => messageSize(m) >= estimateSize(m)), { numRuns: 500 });
  // Every optional field present, with long names: still within the bound.
  const full = mqttMessage("x".repeat(100), 1);
  assert.ok(messageSize(full) >= estimateSize(full));
});

Deno.test("KvStore: a segment holds compact messages (no topic, no field names) that read back as the messages", async () => {
  const store = await KvStore.open(":memory:");
  try {
    const all = [message("t", 1), mqttMessage("t", 2), {
      ...message("t", 3),
      format: "json" as const,
    }];
    await Promise.all(all.map((m) => store.append(m)));
    assert.deepEqual(await store.readLog("t", 1, 10), all);
  } finally {
    store.close();
  }
  // The raw value: one segment of arrays, every field in its place, trailing absences cut.
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const s = await KvStore.open(path);
    const m2 = mqttMessage("t", 2);
    try {
      await Promise.all([s.append(message("t", 1)), s.append(m2)]);
    } finally {
      s.close();
    }
    assert.deepEqual(await readRaw(path, ["log", "t", 2]), [
      [1001, 1, 1, encoder.encode("m1"), 1],
      [2002, 2, 1, m2.payload, 0, 1, true, "mqtt:pub", 99_999, m2.props],
    ]);
  });
});

Deno.test("KvStore: a version 3 store (segments of message objects) is migrated and reads, trims and counts on", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    await writeRaw(path, [
      [["meta", "schema"], 3],
      [["topic", "t"], { name: "t", nextSeq: 4, createdAt: 1 }],
      [["log", "t", 3], [message("t", 1), mqttMessage("t", 2), message("t", 3)]],
    ]);

    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.readLog("t", 2, 10), [mqttMessage("t", 2), message("t", 3)]);
      await appendAll(store, "t", [4, 5]); // a compact segment after the old one
      assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [1, 2, 3, 4, 5]);
      const bytes = await store.payloadBytes();
      assert.equal(bytes, "m1".length + 4 + "m3m4m5".length);
      // 1 and 2 go: the old segment is written again, compact, with 3 alone.
      assert.equal(await store.trimLog("t", 1, 3, head("t", 10_000)), "m1".length + 4);
      assert.equal(await store.payloadBytes(), bytes - "m1".length - 4);
      assert.deepEqual(await store.readLog("t", 1, 10), [
        message("t", 3),
        message("t", 4),
        message("t", 5),
      ]);
    } finally {
      store.close();
    }
    await assertSchemaCurrent(path);
    assert.deepEqual(await readRaw(path, ["log", "t", 3]), [[1003, 3, 1, encoder.encode("m3"), 1]]);
  });
});

Deno.test("KvStore: a damaged compact message quarantines its segment as it was stored", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const bad = [[1001, 1, 1, encoder.encode("m1"), 7]]; // no format 7
    await writeRaw(path, [
      [["meta", "schema"], 4],
      [["log", "t", 1], bad],
      [["log", "t", 2], [[1002, 2, 1, encoder.encode("m2"), 1]]],
    ]);
    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.readLog("t", 1, 10), [message("t", 2)]);
      await store.flush();
    } finally {
      store.close();
    }
    assert.deepEqual(await readRaw(path, ["quarantine", "log", "t", 1]), bad);
    assert.equal(await readRaw(path, ["log", "t", 1]), null);
  });
});

function pendingPub(id: number, text = `p${id}`): PendingPublish {
  return {
    id,
    topic: "t",
    payload: encoder.encode(text),
    format: "text",
    receivedAt: 1,
    origin: "publisher 127.0.0.1:1",
  };
}

/** {@link pendingPub} as a segment stores it (schema 6: no field names). */
function compactPub(id: number): unknown[] {
  return [id, "t", 1, encoder.encode(`p${id}`), 1, "publisher 127.0.0.1:1"];
}

Deno.test("KvStore (file): pending PUBs of one atomic share a key; releases rewrite it, and a reopened store holds exactly the unreleased", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    let store = await KvStore.open(path);
    try {
      await Promise.all([1, 2, 3, 4].map((id) => store.savePending(pendingPub(id))));
      await store.savePending(pendingPub(5)); // an atomic of its own
      assert.deepEqual(await readRaw(path, ["pend", 1]), [1, 2, 3, 4].map(compactPub));
      assert.deepEqual(await readRaw(path, ["pend", 5]), [compactPub(5)]);
      // Releases of 2 and 5 (one atomic each with its log append).
      await Promise.all([
        store.append(message("t", 1, 2), { releasedId: 2 }),
        store.append(message("t", 2, 5), { releasedId: 5 }),
      ]);
      assert.deepEqual(await readRaw(path, ["pend", 1]), [1, 3, 4].map(compactPub));
      assert.equal(await readRaw(path, ["pend", 5]), null);
      assert.equal(await store.payloadBytes(), "p1p3p4".length + "p2p5".length);
    } finally {
      store.close();
    }
    store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.loadPending(), [1, 3, 4].map((id) => pendingPub(id)));
      // Released after the restart: the rest of the segment stays until the last goes.
      await store.append(message("t", 3, 3), { releasedId: 3 });
      assert.deepEqual(await readRaw(path, ["pend", 1]), [1, 4].map(compactPub));
      await Promise.all(
        [1, 4].map((id, i) => store.append(message("t", 4 + i, id), { releasedId: id })),
      );
      assert.equal(await readRaw(path, ["pend", 1]), null);
      assert.deepEqual(await store.loadPending(), []);
    } finally {
      store.close();
    }
  });
});

Deno.test("KvStore: a version 4 store's pending PUBs (one key each) load, release and migrate", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    await writeRaw(path, [
      [["meta", "schema"], 4],
      [["pending", 7], pendingPub(7)],
      [["pending", 8], pendingPub(8)],
    ]);
    const store = await KvStore.open(path);
    try {
      assert.deepEqual((await store.loadPending()).map((p) => p.id), [7, 8]);
      assert.equal(await store.payloadBytes(), "p7p8".length);
      await store.append(message("t", 1, 7), { releasedId: 7 });
      assert.deepEqual((await store.loadPending()).map((p) => p.id), [8]);
    } finally {
      store.close();
    }
    assert.equal(await readRaw(path, ["pending", 7]), null);
    assert.deepEqual(await readRaw(path, ["pending", 8]), pendingPub(8));
    await assertSchemaCurrent(path);
  });
});

Deno.test("KvStore: a version 5 store's pending PUB objects and received pairs load, and are written compact from then on", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const pairs = { ...subscription("alice", "t", 3), window: 4, pending: [[3, 31], [5, 35]] };
    await writeRaw(path, [
      [["meta", "schema"], 5],
      [["pend", 1], [1, 2, 3].map((id) => pendingPub(id))],
      [["sub", "t", "alice"], pairs],
      [["subscriber", "alice", "t"], 1],
    ]);
    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.loadPending(), [1, 2, 3].map((id) => pendingPub(id)));
      assert.equal(await store.payloadBytes(), "p1p2p3".length);
      assert.deepEqual(await store.loadSubscription("alice", "t"), {
        ...pairs,
        pending: [3, 31, 5, 35],
      });
      // Releasing 2 writes the segment again, compact, with 1 and 3.
      await store.append(message("t", 1, 2), { releasedId: 2 });
    } finally {
      store.close();
    }
    assert.deepEqual(await readRaw(path, ["pend", 1]), [1, 3].map(compactPub));
    await assertSchemaCurrent(path);
  });
});

Deno.test("KvStore: a damaged compact pending PUB or received list quarantines its value as it was stored", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "broker.kv");
    const badPub = [[1, "t", 1, encoder.encode("p1"), 9, "publisher 127.0.0.1:1"]]; // no format 9
    const odd = { ...subscription("alice", "t", 3), pending: [3, 31, 5] }; // an id missing
    await writeRaw(path, [
      [["meta", "schema"], 6],
      [["pend", 1], badPub],
      [["pend", 2], [compactPub(2)]],
      [["sub", "t", "alice"], odd],
    ]);
    const store = await KvStore.open(path);
    try {
      assert.deepEqual(await store.loadPending(), [pendingPub(2)]);
      assert.equal(await store.loadSubscription("alice", "t"), null);
      await store.flush();
    } finally {
      store.close();
    }
    assert.deepEqual(await readRaw(path, ["quarantine", "pend", 1]), badPub);
    assert.deepEqual(await readRaw(path, ["quarantine", "sub", "t", "alice"]), odd);
    assert.equal(await readRaw(path, ["pend", 1]), null);
  });
});
