import assert from "node:assert/strict";
import { KvStore } from "../store/kv_store.ts";
import { Broker } from "./broker.ts";

const encoder = new TextEncoder();
const source = { origin: "test", user: null };

Deno.test("Broker counts each stored payload byte once: pending, released, published, dead letters, trimmed", async () => {
  const store = await KvStore.open(":memory:");
  const broker = await Broker.start(store, {
    retry: { retryIntervalMs: 1000, retryLimit: 3 },
    deadLetterMax: 100,
    retentionIntervalMs: 60_000,
    maxStoreBytes: 1_000_000,
  });
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
