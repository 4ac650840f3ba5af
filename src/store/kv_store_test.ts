/**
 * Conformance suite of {@link KvStore}: the same test bodies run against an in-memory
 * Deno KV and a temporary KV file (in the manner of hono's `common.case.test.ts`), plus
 * file-only cases for reopening and the schema version.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { FencedError } from "./group_commit.ts";
import { KvStore, SCHEMA_VERSION, SchemaError } from "./kv_store.ts";
import type { PendingPublish, StoredMessage, SubscriptionRecord, TopicRecord } from "./store.ts";

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

/** Appends `seqs` to `topic`, each in its own operation, all in flight together. */
async function appendAll(store: KvStore, topic: string, seqs: number[]): Promise<void> {
  await Promise.all(seqs.map((seq) => store.append(message(topic, seq), head(topic, seq + 1))));
}

function seqsOf(ms: StoredMessage[]): number[] {
  return ms.map((m) => m.seq);
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
    await store.append(message("t", 9, 99, "last"), head("t", 10));
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 100)), [1, 2, 5, 7, 9]);
    assert.deepEqual(seqsOf(await store.readLog("t", 3, 100)), [5, 7, 9]);
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 2)), [1, 2]);
    assert.deepEqual(seqsOf(await store.readLog("t", 10, 100)), []);
    assert.deepEqual(seqsOf(await store.readLog("t2", 1, 100)), [1, 3]);
    const [m] = await store.readLog("t", 9, 1);
    assert.deepEqual(m, message("t", 9, 99, "last"));
    assert.ok(m?.payload instanceof Uint8Array);
    assert.equal((await store.loadTopic("t"))?.nextSeq, 10);
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
    await store.ensureTopic(head("a", 1));
    await appendAll(store, "a", [1, 2, 3]);
    await store.ensureTopic(head("a", 1));
    assert.equal((await store.loadTopic("a"))?.nextSeq, 4);
  });

  test("append with releasedId deletes the pending PUB and getReleased answers", async ({ store }) => {
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
    assert.equal(await store.getReleased(31), null);

    await store.append(message("t", 4, 31), head("t", 5), 31);
    assert.deepEqual((await store.loadPending()).map((p) => p.id), [32]);
    assert.deepEqual(await store.getReleased(31), { id: 31, topic: "t", seq: 4 });
    assert.equal(await store.getReleased(32), null);
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 10)), [4]);
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

  test("trimLog deletes exactly the range [fromSeq, toSeq) and returns its payload bytes", async ({ store }) => {
    // Payloads are `m${seq}`: the bytes of a range are the lengths of those texts.
    const bytes = (from: number, to: number) =>
      range(from, to).reduce((n, seq) => n + `m${seq}`.length, 0);
    await appendAll(store, "t", range(1, 1201));
    await appendAll(store, "other", range(1, 11));
    assert.equal(await store.payloadBytes(), bytes(1, 1201) + bytes(1, 11));
    assert.equal(await store.trimLog("t", 100, 1100), bytes(100, 1100));
    const rest = seqsOf(await store.readLog("t", 1, 2000));
    assert.deepEqual(rest, [...range(1, 100), ...range(1100, 1201)]);
    assert.equal((await store.readLog("other", 1, 100)).length, 10);
    assert.equal(await store.trimLog("t", 100, 1100), 0);
    assert.equal(await store.trimLog("t", 1, 3), bytes(1, 3));
    assert.equal(await store.payloadBytes(), bytes(3, 100) + bytes(1100, 1201) + bytes(1, 11));
    assert.deepEqual(seqsOf(await store.readLog("t", 1, 3)), [3, 4, 5]);
  });

  test("flush() resolves after every write submitted so far is readable", async ({ store }) => {
    for (let i = 1; i <= 50; i++) void store.append(message("f", i), head("f", i + 1));
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
    await s.append(message("t", 4, 51), head("t", 5), 51);
    await s.saveSubscription(subscription("alice", "t", 3));

    const r = await (fx.reopen as () => Promise<KvStore>)();
    assert.equal((await r.loadTopic("t"))?.nextSeq, 5);
    assert.deepEqual(seqsOf(await r.readLog("t", 1, 10)), [1, 2, 3, 4]);
    assert.deepEqual((await r.loadPending()).map((p) => [p.id, [...p.payload]]), [[50, [0, 255]]]);
    assert.deepEqual(await r.getReleased(51), { id: 51, topic: "t", seq: 4 });
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
