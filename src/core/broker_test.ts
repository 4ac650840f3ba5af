import assert from "node:assert/strict";
import { KvStore } from "../store/kv_store.ts";
import { Broker } from "./broker.ts";

const encoder = new TextEncoder();
const source = { origin: "test", user: null };

/** A broker on an in-memory store, with `extra` options. */
async function start(extra: { maxStoreBytes?: number } = {}) {
  const store = await KvStore.open(":memory:");
  const broker = await Broker.start(store, {
    retry: { retryIntervalMs: 1000, retryLimit: 3 },
    deadLetterMax: 100,
    retentionIntervalMs: 60_000,
    ...extra,
  });
  return { store, broker };
}

Deno.test("Broker counts each stored payload byte once: pending, released, published, dead letters, trimmed", async () => {
  const { store, broker } = await start({ maxStoreBytes: 1_000_000 });
  try {
    assert.equal(broker.storedBytes, 0);
    // JSON-line QoS 2: held as pending, then moved to the log by its release.
    const id = await broker.acceptPublish("t", encoder.encode("0123456789"), "text", source);
    assert.equal(broker.storedBytes, 10);
    assert.equal(await broker.releasePublish(id), "released");
    assert.equal(broker.storedBytes, 10, "released: in the log now, no longer pending");
    // MQTT QoS 1: stored once.
    await broker.publish(
      { topic: "t", payload: encoder.encode("abcde"), format: "text", qos: 1, retain: false },
      source,
    );
    assert.equal(broker.storedBytes, 15);
    // QoS 0 that no stored subscription needs is not stored, so not counted.
    await broker.publish(
      { topic: "t", payload: encoder.encode("zzz"), format: "text", qos: 0, retain: false },
      source,
    );
    assert.equal(broker.storedBytes, 15);
    // A dead letter is stored like any message.
    await broker.deadLetter({ reason: "invalid-json", detail: "x" });
    const afterDeadLetter = broker.storedBytes;
    assert.ok(afterDeadLetter > 15, `dead letter counted: ${afterDeadLetter}`);
    // Retention deletes what no subscription needs (no subscriber on "t"): its bytes go.
    await broker.runRetention();
    assert.equal(broker.storedBytes, afterDeadLetter - 15);
    assert.equal(broker.storedBytes, await store.payloadBytes(), "the count is the store's");
  } finally {
    await broker.close();
    store.close();
  }
});

Deno.test("submitNowWith: false for a topic not started; a refusal or the stored message goes to settle, never inside the call", async () => {
  const { store, broker } = await start();
  try {
    const input = (topic: string, text: string) => ({
      topic,
      payload: encoder.encode(text),
      format: "text" as const,
      qos: 1 as const,
      retain: false,
    });
    const told: string[] = [];
    const settle = (name: string) => ({
      resolve: (m: { seq: number; topic: string }) => told.push(`${name} ${m.topic}#${m.seq}`),
      reject: (err: unknown) => told.push(`${name} ${(err as { code?: string }).code}`),
    });
    // Not started yet: nothing done, the caller takes the slow path (which starts it).
    assert.equal(broker.submitNowWith(input("s", "0"), source, settle("first")), false);
    await (await broker.submit(input("s", "0"), source)).committed;
    assert.equal(broker.submitNowWith(input("s", "1"), source, settle("a")), true);
    assert.equal(broker.submitNowWith(input("s/+", "x"), source, settle("wild")), true);
    assert.equal(broker.submitNowWith(input("s", "2"), source, settle("b")), true);
    assert.deepEqual(told, [], "nothing is told inside the call");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(told, ["wild invalid-topic", "a s#2", "b s#3"]);
    assert.deepEqual((await store.readLog("s", 1, 10)).map((m) => m.seq), [1, 2, 3]);
  } finally {
    await broker.close();
    store.close();
  }
});
