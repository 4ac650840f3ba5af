import assert from "node:assert/strict";
import { resetLogging, setupLogging } from "../log.ts";
import {
  type Fence,
  FencedError,
  GroupCommitter,
  type Mutation,
  PACED_BATCH,
  type Pool,
  PoolSlot,
} from "./group_commit.ts";

const OWNER: Deno.KvKey = ["meta", "owner"];

/**
 * A real in-memory KV with an owner key, and a committer fenced on it (with a commit
 * delay of `delayMs`, none by default).
 */
async function setup(
  delayMs = 0,
  streamDelayMs = 0,
): Promise<{ kv: Deno.Kv; gc: GroupCommitter; fence: Fence }> {
  const kv = await Deno.openKv(":memory:");
  const res = await kv.set(OWNER, { token: "t1" });
  const fence = { key: OWNER, versionstamp: res.versionstamp };
  const pacing = { delayMs, streamDelayMs };
  return { kv, gc: new GroupCommitter(kv, fence, undefined, undefined, pacing), fence };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `p`'s value, or rejects if it takes longer than `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function set(key: Deno.KvKey, value: unknown): Mutation {
  return { type: "set", key, value };
}

async function countKeys(kv: Deno.Kv, prefix: Deno.KvKey): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix })) n++;
  return n;
}

Deno.test("operations submitted in the same turn share one atomic", async () => {
  const { kv, gc } = await setup();
  try {
    const ops = [];
    for (let i = 0; i < 50; i++) ops.push(gc.commit([set(["k", i], i), set(["j", i], -i)]));
    await Promise.all(ops);
    assert.equal(gc.stats.atomics, 1);
    assert.equal(gc.stats.operations, 50);
    assert.equal(gc.stats.mutations, 100);
    assert.equal(await countKeys(kv, ["k"]), 50);
    assert.equal(await countKeys(kv, ["j"]), 50);
  } finally {
    kv.close();
  }
});

Deno.test("each operation resolves only after its data is readable in KV", async () => {
  const { kv, gc } = await setup();
  try {
    const seen = await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) =>
          gc.commit([set(["k", i], `v${i}`)]).then(async () => (await kv.get(["k", i])).value),
      ),
    );
    assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => `v${i}`));
    // An operation submitted while an atomic is in flight is resolved by a later one.
    const first = gc.commit([set(["a"], 1)]);
    await Promise.resolve(); // the loop starts and the first atomic is in flight
    const second = gc.commit([set(["b"], 2)]).then(async () => (await kv.get(["b"])).value);
    await first;
    assert.equal(await second, 2);
  } finally {
    kv.close();
  }
});

Deno.test("an operation is never split across atomics when the mutation limit forces several", async () => {
  const { kv, gc } = await setup();
  try {
    // 30 operations of 70 mutations: 14 fit in 1,000, so 14 + 14 + 2 in three atomics.
    const ops = [];
    for (let op = 0; op < 30; op++) {
      const ms: Mutation[] = [];
      for (let i = 0; i < 70; i++) ms.push(set(["op", op, i], i));
      ops.push(gc.commit(ms));
    }
    await Promise.all(ops);
    assert.equal(gc.stats.atomics, 3);
    assert.equal(gc.stats.operations, 30);
    assert.equal(gc.stats.mutations, 2100);
    // Keys written by one atomic share its versionstamp.
    const stampsOfOp = new Map<number, Set<string>>();
    const allStamps = new Set<string>();
    for await (const e of kv.list({ prefix: ["op"] })) {
      const op = e.key[1] as number;
      const s = stampsOfOp.get(op) ?? new Set<string>();
      s.add(e.versionstamp);
      stampsOfOp.set(op, s);
      allStamps.add(e.versionstamp);
    }
    assert.equal(stampsOfOp.size, 30);
    for (const [op, stamps] of stampsOfOp) {
      assert.equal(stamps.size, 1, `operation ${op} was written by ${stamps.size} atomics`);
    }
    assert.equal(allStamps.size, 3);
  } finally {
    kv.close();
  }
});

Deno.test("30 operations of 40 mutations fill whole atomics of at most 1,000 mutations", async () => {
  const { kv, gc } = await setup();
  try {
    const ops = [];
    for (let op = 0; op < 30; op++) {
      const ms: Mutation[] = [];
      for (let i = 0; i < 40; i++) ms.push(set(["op", op, i], i));
      ops.push(gc.commit(ms));
    }
    await Promise.all(ops);
    assert.equal(gc.stats.atomics, 2);
    assert.equal(await countKeys(kv, ["op"]), 1200);
  } finally {
    kv.close();
  }
});

Deno.test("an operation too large for one atomic alone is rejected with RangeError and writes nothing", async () => {
  const { kv, gc } = await setup();
  try {
    const many: Mutation[] = [];
    for (let i = 0; i < 1001; i++) many.push(set(["big", i], i));
    await assert.rejects(gc.commit(many), RangeError);
    // Too many bytes in few mutations (10 values of ~100 KB, estimated over 700,000).
    const heavy: Mutation[] = [];
    for (let i = 0; i < 10; i++) heavy.push(set(["heavy", i], new Uint8Array(100_000)));
    await assert.rejects(gc.commit(heavy), RangeError);
    // Exactly 1,000 mutations is allowed.
    await gc.commit(many.slice(0, 1000));
    assert.equal(await countKeys(kv, ["big"]), 1000);
    assert.equal(await countKeys(kv, ["heavy"]), 0);
    assert.equal(gc.stats.atomics, 1);
  } finally {
    kv.close();
  }
});

Deno.test("the last write of a key in a batch wins", async () => {
  const { kv, gc } = await setup();
  try {
    await kv.set(["deleted-then-set"], "old");
    await Promise.all([
      gc.commit([set(["pos"], 1), set(["set-then-deleted"], "x")]),
      gc.commit([set(["pos"], 2), { type: "delete", key: ["deleted-then-set"] }]),
      gc.commit([set(["pos"], 3), { type: "delete", key: ["set-then-deleted"] }]),
      gc.commit([set(["deleted-then-set"], "new")]),
    ]);
    assert.equal(gc.stats.atomics, 1);
    assert.equal((await kv.get(["pos"])).value, 3);
    assert.equal((await kv.get(["set-then-deleted"])).value, null);
    assert.equal((await kv.get(["deleted-then-set"])).value, "new");
  } finally {
    kv.close();
  }
});

Deno.test("distinct keys in one batch are never merged as one", async () => {
  const { kv, gc } = await setup();
  try {
    // Keys whose parts could be confused by a naive string encoding.
    const keys: Deno.KvKey[] = [
      ["a", "b"],
      ["a\u0000sb"],
      ["n", 1],
      ["n", "1"],
      ["n", 1n],
      ["u", new Uint8Array([12])],
      ["u", 12n],
      ["u", true],
      ["u", "true"],
    ];
    await Promise.all(keys.map((key, i) => gc.commit([set(key, i)])));
    const lost: string[] = [];
    for (const [i, key] of keys.entries()) {
      if ((await kv.get(key)).value !== i) lost.push(Deno.inspect(key));
    }
    assert.deepEqual(lost, [], `writes lost for keys ${lost.join(", ")}`);
  } finally {
    kv.close();
  }
});

function append(log: Deno.KvKey, seq: number, value: unknown): Mutation {
  return { type: "append", log, seq, value };
}

/** Every entry under `prefix`: its last key part and its value. */
async function entries(kv: Deno.Kv, prefix: Deno.KvKey): Promise<[unknown, unknown][]> {
  const out: [unknown, unknown][] = [];
  for await (const e of kv.list({ prefix })) out.push([e.key.at(-1), e.value]);
  return out;
}

Deno.test("appends to one log in one atomic become one segment under the last sequence number", async () => {
  const { kv, gc } = await setup();
  try {
    await Promise.all([
      gc.commit([append(["log", "a"], 1, "a1"), set(["head", "a"], 2)]),
      gc.commit([append(["log", "b"], 1, "b1")]),
      gc.commit([append(["log", "a"], 2, "a2"), append(["log", "a"], 3, "a3")]),
      gc.commit([append(["log", "b"], 7, "b7"), set(["head", "a"], 4)]),
    ]);
    assert.equal(gc.stats.atomics, 1);
    assert.deepEqual(await entries(kv, ["log", "a"]), [[3, ["a1", "a2", "a3"]]]);
    assert.deepEqual(await entries(kv, ["log", "b"]), [[7, ["b1", "b7"]]]);
    assert.equal((await kv.get(["head", "a"])).value, 4);
    assert.equal(gc.stats.mutations, 3); // two segments and one head, not six keys
    // A later atomic starts a new segment of the same log.
    await gc.commit([append(["log", "a"], 4, "a4")]);
    assert.deepEqual(await entries(kv, ["log", "a"]), [[3, ["a1", "a2", "a3"]], [4, ["a4"]]]);
  } finally {
    kv.close();
  }
});

Deno.test("a log named by one frozen key array, by copies of it, or by several, is one log", async () => {
  const { kv, gc } = await setup();
  try {
    const a = Object.freeze(["log", "a"]);
    const b = Object.freeze(["log", "b"]);
    for (let round = 0; round < 2; round++) {
      const base = round * 10;
      await Promise.all([
        gc.commit([append(a, base + 1, "x")]),
        gc.commit([append(["log", "a"], base + 2, "y")]), // a fresh array, same log
        gc.commit([append(b, base + 1, "z")]),
        gc.commit([append(Object.freeze(["log", "a"]), base + 3, "w")]),
      ]);
    }
    assert.equal(gc.stats.atomics, 2);
    assert.deepEqual(await entries(kv, ["log", "a"]), [[3, ["x", "y", "w"]], [13, [
      "x",
      "y",
      "w",
    ]]]);
    assert.deepEqual(await entries(kv, ["log", "b"]), [[1, ["z"]], [11, ["z"]]]);
  } finally {
    kv.close();
  }
});

Deno.test("a segment is split before it would pass the value size limit, in sequence order", async () => {
  const { kv, gc } = await setup();
  try {
    // 40 values of 5,000 bytes: about 13 fit under MAX_VALUE_BYTES, so 4 segments.
    const ops = [];
    for (let seq = 1; seq <= 40; seq++) {
      ops.push(gc.commit([append(["log", "big"], seq, new Uint8Array(5000).fill(seq))]));
    }
    await Promise.all(ops);
    assert.equal(gc.stats.atomics, 1);
    const segs = await entries(kv, ["log", "big"]);
    assert.ok(segs.length >= 3 && segs.length <= 5, `${segs.length} segments`);
    const seqs = segs.flatMap(([, v]) => (v as Uint8Array[]).map((b) => b[0]));
    assert.deepEqual(seqs, Array.from({ length: 40 }, (_, i) => i + 1));
    for (const [last, v] of segs) assert.equal((v as Uint8Array[]).at(-1)![0], last);
  } finally {
    kv.close();
  }
});

Deno.test("appends submitted out of sequence order are still written in order", async () => {
  const { kv, gc } = await setup();
  try {
    await Promise.all([3, 1, 2].map((seq) => gc.commit([append(["log"], seq, seq)])));
    assert.deepEqual(await entries(kv, ["log"]), [[3, [1, 2, 3]]]);
  } finally {
    kv.close();
  }
});

Deno.test("a changed fence key makes commits reject with FencedError and write nothing", async () => {
  const { kv, gc } = await setup();
  try {
    await gc.commit([set(["before"], 1)]);
    await kv.set(OWNER, { token: "another process" });
    const results = await Promise.allSettled([
      gc.commit([set(["after", 1], 1)]),
      gc.commit([set(["after", 2], 2)]),
    ]);
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof FencedError, `got ${r.reason}`);
    }
    // A later commit is fenced too: the committer never adopts the new owner.
    await assert.rejects(gc.commit([set(["after", 3], 3)]), FencedError);
    assert.equal(await countKeys(kv, ["after"]), 0);
    assert.equal((await kv.get(["before"])).value, 1);
    assert.equal(gc.stats.atomics, 1);
  } finally {
    kv.close();
  }
});

Deno.test("a fence on an absent key holds until someone writes the key", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const gc = new GroupCommitter(kv, { key: OWNER, versionstamp: null });
    await gc.commit([set(["x"], 1)]);
    await kv.set(OWNER, "taken");
    await assert.rejects(gc.commit([set(["y"], 1)]), FencedError);
    assert.equal((await kv.get(["y"])).value, null);
  } finally {
    kv.close();
  }
});

Deno.test("drain() waits for every operation submitted, also those submitted during a commit", async () => {
  const { kv, gc } = await setup();
  try {
    const settled: number[] = [];
    for (let i = 0; i < 10; i++) gc.commit([set(["d", i], i)]).then(() => settled.push(i));
    // More operations arrive while the first atomic is in flight.
    await Promise.resolve();
    for (let i = 10; i < 20; i++) gc.commit([set(["d", i], i)]).then(() => settled.push(i));
    await gc.drain();
    assert.equal(await countKeys(kv, ["d"]), 20);
    // Every promise has settled (its reaction is queued before drain() returns).
    await Promise.resolve();
    assert.equal(settled.length, 20);
    assert.ok(gc.stats.atomics >= 1 && gc.stats.atomics <= 2);
    // drain() with nothing submitted returns at once.
    await gc.drain();
  } finally {
    kv.close();
  }
});

Deno.test("without a commit delay, an operation after a commit starts its own atomic at once", async () => {
  const { kv, gc } = await setup();
  try {
    for (let i = 0; i < 5; i++) await gc.commit([set(["s", i], i)]);
    assert.equal(gc.stats.atomics, 5);
  } finally {
    kv.close();
  }
});

Deno.test("with a commit delay, operations arriving one by one soon after an atomic share the next", async () => {
  const { kv, gc } = await setup(200);
  try {
    // Before the first atomic begins: the paced one begins 200 ms after it at the earliest.
    const before = performance.now();
    await gc.commit([set(["p", 0], 0)]);
    const later: Promise<void>[] = [];
    for (let i = 1; i <= 4; i++) {
      later.push(gc.commit([set(["p", i], i)]));
      await sleep(2);
    }
    await Promise.all(later);
    // All four waited for the delay since the first atomic began, and went in one.
    assert.equal(gc.stats.atomics, 2);
    assert.equal(gc.stats.operations, 5);
    assert.ok(performance.now() - before >= 195, "the paced atomic waited for the delay");
    assert.equal(await countKeys(kv, ["p"]), 5);
  } finally {
    kv.close();
  }
});

Deno.test("with a commit delay, a quiet committer and a queue of PACED_BATCH operations start at once", async () => {
  const { kv, gc } = await setup(60_000);
  try {
    // The first operation of a quiet committer goes at once, not a minute later.
    await within(gc.commit([set(["q", 0], 0)]), 2_000, "the first commit");
    // One fewer would wait a minute; this many go now.
    const ops = [];
    for (let i = 1; i <= PACED_BATCH; i++) ops.push(gc.commit([set(["q", i], i)]));
    await within(Promise.all(ops), 2_000, `a queue of ${PACED_BATCH}`);
    assert.equal(gc.stats.atomics, 2);
    assert.equal(await countKeys(kv, ["q"]), PACED_BATCH + 1);
  } finally {
    kv.close();
  }
});

Deno.test("deferrable operations wait for the stream delay, until one that is not arrives", async () => {
  const { kv, gc } = await setup(0, 60_000);
  try {
    await within(gc.commit([set(["d", 0], 0)]), 2_000, "the first commit");
    // Not deferrable: no commit delay applies to it, so it starts at once.
    await within(gc.commit([set(["d", 1], 1)]), 2_000, "an operation that is not deferrable");
    let done = false;
    const deferred = Promise.withResolvers<void>();
    gc.submit([set(["d", 2], 2)], deferred, true);
    const waiting = deferred.promise.then(() => done = true);
    await sleep(20);
    assert.equal(done, false, "a deferrable operation waits for the stream delay");
    // One that is not deferrable ends the wait, and both share its atomic.
    await within(gc.commit([set(["d", 3], 3)]), 2_000, "the one that ends the wait");
    await waiting;
    assert.equal(gc.stats.atomics, 3);
    // PACED_BATCH deferrable operations go at once.
    const batch = Array.from({ length: PACED_BATCH }, (_, i) => {
      const settle = Promise.withResolvers<void>();
      gc.submit([set(["e", i], i)], settle, true);
      return settle.promise;
    });
    await within(Promise.all(batch), 2_000, `${PACED_BATCH} deferrable operations`);
    assert.equal(await countKeys(kv, ["e"]), PACED_BATCH);
  } finally {
    await gc.drain();
    kv.close();
  }
});

Deno.test("drain() writes a paced queue at once and leaves no timer behind", async () => {
  const { kv, gc } = await setup(60_000);
  try {
    await within(gc.commit([set(["r", 0], 0)]), 2_000, "the first commit");
    let done = false;
    const waiting = gc.commit([set(["r", 1], 1)]).then(() => done = true);
    await sleep(5);
    assert.equal(done, false, "a small queue waits for the delay");
    await within(gc.drain(), 2_000, "drain()");
    await Promise.resolve(); // the operation's reaction is queued before drain() returns
    assert.equal(done, true, "drain() returned with the operation written");
    await waiting;
    assert.equal(gc.stats.atomics, 2);
    assert.equal((await kv.get(["r", 1])).value, 1);
    // Two drains at once both return promptly, with everything written.
    const two = [gc.commit([set(["r", 2], 2)]), gc.commit([set(["r", 3], 3)])];
    await within(Promise.all([gc.drain(), gc.drain(), ...two]), 2_000, "two drains");
    assert.equal((await kv.get(["r", 3])).value, 3);
    // The test's op and timer sanitizers fail it if the pacing timer were still armed.
  } finally {
    kv.close();
  }
});

Deno.test("submit() tells its Settle once the atomic committed, or of a refusal, never inside the call", async () => {
  const { kv, gc } = await setup();
  try {
    const events: string[] = [];
    const settle = (name: string) => ({
      resolve: () => events.push(`${name} committed`),
      reject: (err: unknown) => events.push(`${name} ${(err as Error).name}`),
    });
    gc.submit([set(["a"], 1)], settle("a"));
    gc.submit([set(["big"], new Uint8Array(70_000))], settle("big")); // over one value's limit
    gc.submit([set(["b"], 2)], settle("b"));
    assert.deepEqual(events, [], "nothing is told inside submit, not even the refusal");
    await gc.drain();
    assert.deepEqual(events.toSorted(), ["a committed", "b committed", "big RangeError"]);
    // When told, the data is there: read back inside the settle of a later operation.
    let seen: unknown;
    const { promise, resolve } = Promise.withResolvers<void>();
    gc.submit([set(["c"], 3)], {
      resolve: () => void kv.get(["c"]).then((e) => (seen = e.value)).then(() => resolve()),
      reject: (err) => assert.fail(String(err)),
    });
    await promise;
    assert.equal(seen, 3);
    assert.equal((await kv.get(["big"])).value, null);
  } finally {
    kv.close();
  }
});

Deno.test("a `latest` mutation stores its source's state when the atomic is built, once per atomic", async () => {
  const { kv, gc } = await setup();
  try {
    let state = 0;
    let snapshots = 0;
    const source = {
      maxSize: 16,
      snapshot() {
        snapshots++;
        return state;
      },
    };
    const latest = (): Mutation => ({ type: "latest", key: ["pos"], source });
    // Three operations in one turn, the state moved after each: one atomic, one snapshot
    // of the state as it is when the atomic is built (after all three).
    const ops = [];
    for (let i = 0; i < 3; i++) {
      state++;
      ops.push(gc.commit([latest()]));
    }
    state = 10;
    await Promise.all(ops);
    assert.equal(gc.stats.atomics, 1);
    assert.equal(snapshots, 1);
    assert.equal((await kv.get(["pos"])).value, 10);
    // A source whose snapshots may be too large for one value is refused at submission.
    const huge = { maxSize: 1 << 20, snapshot: () => 0 };
    await assert.rejects(gc.commit([{ type: "latest", key: ["pos"], source: huge }]), RangeError);
    assert.equal(snapshots, 1);
  } finally {
    kv.close();
  }
});

// --- pools ---------------------------------------------------------------------------------

/** A pool whose segments go under ["pool", n] and that records what left it. */
function testPool(): Pool & {
  left: unknown[];
  unadded: (slot: PoolSlot) => void;
  lost: unknown[];
} {
  let n = 0;
  const left: unknown[] = [];
  const lost: unknown[] = [];
  return {
    left,
    lost,
    newKey: () => ["pool", ++n],
    removed: (slot) => left.push(slot.value),
    unadded: (slot) => lost.push(slot.value),
  };
}

async function poolKeys(kv: Deno.Kv): Promise<[Deno.KvKey, unknown][]> {
  const out: [Deno.KvKey, unknown][] = [];
  for await (const e of kv.list({ prefix: ["pool"] })) out.push([e.key, e.value]);
  return out;
}

Deno.test("a pool's values added in one atomic share a key; removed ones leave it, the last one deletes it", async () => {
  const { kv, gc } = await setup();
  try {
    const pool = testPool();
    const slots = ["a", "b", "c"].map((v) => new PoolSlot(v));
    await Promise.all(slots.map((slot) => gc.commit([{ type: "pool-add", pool, slot }])));
    assert.equal(gc.stats.atomics, 1);
    assert.deepEqual(await poolKeys(kv), [[["pool", 1], ["a", "b", "c"]]]);
    const seg = slots[0]!.segment;
    assert.ok(seg !== null && slots.every((s) => s.segment === seg));

    // Two removals in one atomic: one rewrite; the pool hears of each once committed.
    await Promise.all(
      [slots[0]!, slots[2]!].map((slot) => gc.commit([{ type: "pool-remove", slot }])),
    );
    assert.deepEqual(await poolKeys(kv), [[["pool", 1], ["b"]]]);
    assert.deepEqual(pool.left, ["a", "c"]);
    assert.equal(slots[0]!.segment, null);

    await gc.commit([{ type: "pool-remove", slot: slots[1]! }]);
    assert.deepEqual(await poolKeys(kv), []);
    // Removing a value whose addition has not committed is refused.
    await assert.rejects(
      gc.commit([{ type: "pool-remove", slot: new PoolSlot("never added") }]),
      /before its addition committed/,
    );
  } finally {
    kv.close();
  }
});

Deno.test("a pool's segments stay under the value limit, and a failed atomic changes none of them", async () => {
  const { kv, gc } = await setup();
  try {
    const pool = testPool();
    const big = "x".repeat(10_000); // ~20 KB estimated each: three per segment
    const slots = Array.from({ length: 7 }, (_, i) => new PoolSlot(`${i}${big}`));
    await Promise.all(slots.map((slot) => gc.commit([{ type: "pool-add", pool, slot }])));
    const keys = await poolKeys(kv);
    assert.deepEqual(keys.map(([, v]) => (v as string[]).length), [3, 3, 1]);
    // The store taken over: the removal fails and every slot keeps its segment.
    await kv.set(OWNER, { token: "another process" });
    await assert.rejects(gc.commit([{ type: "pool-remove", slot: slots[0]! }]), FencedError);
    assert.ok(slots[0]!.segment !== null);
    assert.deepEqual(pool.left, []);
    // An addition that fails is told to the pool, and its slot is in no segment.
    const late = new PoolSlot("late");
    await assert.rejects(gc.commit([{ type: "pool-add", pool, slot: late }]), FencedError);
    assert.equal(late.segment, null);
    assert.deepEqual(pool.lost, ["late"]);
    assert.deepEqual(await poolKeys(kv), keys);
  } finally {
    kv.close();
  }
});

Deno.test("operations that share a `latest` source count its size once per atomic", async () => {
  const { kv, gc } = await setup();
  try {
    // 60 KB each, as a window's record may be: counted per operation, a hundred of them
    // would need nine atomics (700 KB each), counted once, one.
    const source = { maxSize: 60_000, snapshot: () => "record" };
    await Promise.all(
      Array.from({ length: 100 }, () => gc.commit([{ type: "latest", key: ["pos"], source }])),
    );
    assert.equal(gc.stats.atomics, 1);
    assert.equal((await kv.get(["pos"])).value, "record");
  } finally {
    kv.close();
  }
});

Deno.test("each atomic's duration is recorded; the slowest is exact and bounds the percentiles", async () => {
  const { kv, gc } = await setup();
  try {
    for (let i = 0; i < 20; i++) await gc.commit([set(["k", i], i)]);
    const t = gc.times;
    assert.equal(t.count, gc.stats.atomics);
    assert.equal(t.count, 20);
    assert.ok(t.maxMs > 0, `slowest ${t.maxMs} ms`);
    const p50 = t.percentile(0.5);
    assert.ok(p50 > 0 && p50 <= t.percentile(0.99) && t.percentile(0.99) <= t.maxMs);
    assert.equal(gc.stats.slow, 0, "no commit of :memory: takes 200 ms");
  } finally {
    kv.close();
  }
});

Deno.test("slow commits are counted, and warned of at most once per 10 s", async () => {
  const lines: string[] = [];
  const { kv, gc } = await setup();
  try {
    await setupLogging({ level: "info", format: "json", write: (line) => lines.push(line) });
    gc.slowCommitMs = 0; // every commit counts as slow
    for (let i = 0; i < 5; i++) await gc.commit([set(["k", i], i), set(["j", i], i)]);
    assert.equal(gc.stats.slow, 5);
    const warnings = lines.map((l) => JSON.parse(l)).filter((r) => r.level === "WARN");
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.equal(warnings[0].logger, "broker.store");
    assert.equal(warnings[0].properties.keys, 2);
    assert.equal(warnings[0].properties.count, 1);
    assert.match(warnings[0].message, /^Store commit took \d+ ms \(2 keys\)/);
  } finally {
    await resetLogging();
    kv.close();
  }
});
