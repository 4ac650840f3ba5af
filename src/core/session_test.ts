import assert from "node:assert/strict";
import { KvStore } from "../store/kv_store.ts";
import type { Qos } from "../store/store.ts";
import { Broker } from "./broker.ts";
import type { FilterEntry, Outbound, Session, SessionOutput } from "./session.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

type Wire = { kind: "publish"; tag: number | null; dup: boolean; text: string; qos: Qos } | {
  kind: "release";
  tag: number;
};

/** An output that records what the session puts on the wire. */
class Recorder implements SessionOutput {
  wire: Wire[] = [];
  failed: string[] = [];
  publish(out: Outbound, tag: number | null, dup: boolean): void {
    this.wire.push({
      kind: "publish",
      tag,
      dup,
      text: decoder.decode(out.message.payload),
      qos: out.qos,
    });
  }
  release(tag: number): void {
    this.wire.push({ kind: "release", tag });
  }
  fail(reason: string): void {
    this.failed.push(reason);
  }
  published(): Extract<Wire, { kind: "publish" }>[] {
    return this.wire.filter((w) => w.kind === "publish") as Extract<Wire, { kind: "publish" }>[];
  }
}

async function settle(ms = 20): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

async function withBroker(path: string, fn: (b: Broker) => Promise<void>): Promise<void> {
  const store = await KvStore.open(path);
  const broker = await Broker.start(store, {
    retry: { retryIntervalMs: 1000, retryLimit: 3 },
    deadLetterMax: 100,
    retentionIntervalMs: 60_000,
  });
  try {
    await fn(broker);
  } finally {
    await broker.close();
    store.close();
  }
}

async function subscribe(b: Broker, s: Session, filter: string, qos: Qos): Promise<void> {
  const entry: FilterEntry = {
    sid: s.sid,
    filter,
    qos,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0,
    createdAt: Date.now(),
    durable: s.durable,
  };
  await b.sessions.subscribe(s, entry);
}

function publish(b: Broker, topic: string, text: string, qos: Qos = 2) {
  return b.publish(
    { topic, payload: encoder.encode(text), format: "text", qos, retain: false },
    { origin: "test", user: null },
  );
}

const open = (b: Broker, id: string, expirySec: number, clean = false) =>
  b.sessions.open(`mqtt:${id}`, {
    clean,
    expirySec,
    user: null,
    clientId: id,
    protocolVersion: 5,
  });

Deno.test("a session keeps at most `window` messages in flight and fills the window as acks come", async () => {
  await withBroker(":memory:", async (b) => {
    const { session } = await open(b, "w", 0);
    const out = new Recorder();
    session.attach(out, 3);
    await subscribe(b, session, "t/#", 1);
    for (let i = 0; i < 8; i++) await publish(b, "t/a", `m${i}`, 1);
    await settle();
    assert.deepEqual(out.published().map((w) => w.text), ["m0", "m1", "m2"]);
    assert.equal(session.inflightCount, 3);
    // Acknowledged out of order: the second one frees one slot.
    assert.equal(session.acknowledged(out.published()[1]?.tag as number), true);
    await settle();
    assert.deepEqual(out.published().map((w) => w.text), ["m0", "m1", "m2", "m3"]);
    for (const w of out.published()) session.acknowledged(w.tag as number);
    await settle();
    for (const w of out.published()) session.acknowledged(w.tag as number);
    await settle();
    assert.deepEqual(
      out.published().map((w) => w.text),
      [0, 1, 2, 3, 4, 5, 6, 7].map((i) => `m${i}`),
    );
    assert.equal(session.acknowledged(9999), false, "an unknown tag is refused");
  });
});

Deno.test("delivered QoS is the lower of the published and the granted QoS", async () => {
  await withBroker(":memory:", async (b) => {
    const { session } = await open(b, "q", 0);
    const out = new Recorder();
    session.attach(out, 10);
    await subscribe(b, session, "q", 1);
    await publish(b, "q", "two", 2);
    await publish(b, "q", "zero", 0);
    await settle();
    assert.deepEqual(out.published().map((w) => [w.text, w.qos, w.tag === null]), [
      ["two", 1, false],
      ["zero", 0, true],
    ]);
  });
});

Deno.test("a persistent session survives a restart: unacknowledged messages come again with DUP and their tags, releases again, completed ones never", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/kv`;
  let tags: number[] = [];
  try {
    await withBroker(path, async (b) => {
      const { session } = await open(b, "p", 3600);
      const out = new Recorder();
      session.attach(out, 10);
      await subscribe(b, session, "p", 2);
      for (let i = 0; i < 4; i++) await publish(b, "p", `m${i}`, 2);
      await settle(50);
      tags = out.published().map((w) => w.tag as number);
      assert.equal(tags.length, 4);
      // m0 complete, m1 received (PUBREC), m2 and m3 only sent.
      assert.equal(await session.received(tags[0] as number), true);
      assert.equal(session.completed(tags[0] as number), true);
      assert.equal(await session.received(tags[1] as number), true);
      await b.store.flush();
      await b.sessions.disconnected(session, 3600);
    });
    await withBroker(path, async (b) => {
      const { session, present } = await open(b, "p", 3600);
      assert.equal(present, true);
      const out = new Recorder();
      session.attach(out, 10);
      await settle(50);
      assert.deepEqual(out.wire, [
        { kind: "release", tag: tags[1] },
        { kind: "publish", tag: tags[2], dup: true, text: "m2", qos: 2 },
        { kind: "publish", tag: tags[3], dup: true, text: "m3", qos: 2 },
      ]);
      // A new message after the restart goes out fresh, after them.
      await publish(b, "p", "m4", 2);
      await settle();
      assert.equal(out.published().at(-1)?.text, "m4");
      assert.equal(out.published().at(-1)?.dup, false);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a completion above the position is remembered: after a restart that message is not sent again", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/kv`;
  try {
    await withBroker(path, async (b) => {
      const { session } = await open(b, "o", 3600);
      const out = new Recorder();
      session.attach(out, 10);
      await subscribe(b, session, "o", 1);
      for (let i = 0; i < 3; i++) await publish(b, "o", `m${i}`, 1);
      await settle(50);
      // Only the last one is acknowledged: the position stays at the first.
      assert.equal(session.acknowledged(out.published()[2]?.tag as number), true);
      await b.store.flush();
      await b.sessions.disconnected(session, 3600);
    });
    await withBroker(path, async (b) => {
      const { session } = await open(b, "o", 3600);
      const out = new Recorder();
      session.attach(out, 10);
      await settle(50);
      assert.deepEqual(out.published().map((w) => [w.text, w.dup]), [["m0", true], ["m1", true]]);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a filter covers topics created after it, in the append's own atomic", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/kv`;
  try {
    await withBroker(path, async (b) => {
      const { session } = await open(b, "f", 3600);
      await subscribe(b, session, "new/+", 1);
      await b.sessions.disconnected(session, 3600);
      // The session is offline; the topic did not exist when it subscribed.
      await publish(b, "new/topic", "first", 1);
      assert.equal((await b.store.loadSubscription("mqtt:f", "new/topic"))?.position, 1);
    });
    await withBroker(path, async (b) => {
      const { session } = await open(b, "f", 3600);
      const out = new Recorder();
      session.attach(out, 10);
      await settle(50);
      assert.deepEqual(out.published().map((w) => w.text), ["first"]);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ending a session deletes its positions, filters and messages in flight", async () => {
  await withBroker(":memory:", async (b) => {
    const { session } = await open(b, "e", 3600);
    const out = new Recorder();
    session.attach(out, 10);
    await subscribe(b, session, "e", 1);
    await publish(b, "e", "x", 1);
    await settle();
    assert.equal((await b.store.loadInflight("mqtt:e")).length, 1);
    await b.sessions.end("mqtt:e");
    assert.deepEqual(await b.store.loadInflight("mqtt:e"), []);
    assert.deepEqual(await b.store.loadSubscriberTopics("mqtt:e"), []);
    assert.equal(await b.store.loadSession("mqtt:e"), null);
    assert.deepEqual(b.filterIndex.entriesOf("mqtt:e"), []);
  });
});
