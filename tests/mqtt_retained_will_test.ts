/**
 * Black-box tests of MQTT retained messages and wills with MQTT.js over real sockets:
 * retained messages stored durably, sent to new subscribers with RETAIN set, cleared by
 * an empty payload, left alone by RETAIN 0, v5 Retain Handling and Retain As Published;
 * wills published on an abrupt end (not after DISCONNECT), v5 DISCONNECT 0x04, Will
 * Delay with its cancellation by a reconnect, will RETAIN and QoS.
 */
import assert from "node:assert/strict";
import { startTestBroker, type TestBroker, waitFor } from "./helpers.ts";
import { Client, LEVELS, sleep, tcpUrl } from "./mqtt_clients.ts";

function mqttBroker(dataDir?: string): Promise<TestBroker> {
  return startTestBroker({ mqttPort: -1, ...(dataDir ? { dataDir } : {}) });
}

function client(b: TestBroker, v: 4 | 5, clientId: string, extra = {}): Promise<Client> {
  return Client.connect(tcpUrl(b.mqttPort), {
    protocolVersion: v,
    clientId,
    clean: true,
    ...extra,
  });
}

// --- retained messages -----------------------------------------------------------------

Deno.test("retained: a new subscriber gets the stored message with RETAIN set, at min(granted, stored) QoS", async () => {
  await using b = await mqttBroker();
  for (const v of LEVELS) {
    await using pub = await client(b, v, `pub${v}`);
    await pub.publish(`ret${v}/a`, "kept", { qos: 1, retain: true });
    await pub.publish(`ret${v}/b`, "not kept", { qos: 1 });
    await using sub2 = await client(b, v, `sub2-${v}`);
    assert.deepEqual(await sub2.subscribe(`ret${v}/#`, { qos: 2 }), [2]);
    const m = await sub2.next();
    assert.equal(m.topic, `ret${v}/a`);
    assert.equal(m.text, "kept");
    assert.equal(m.packet.retain, true);
    assert.equal(m.packet.qos, 1, "stored QoS 1 caps granted QoS 2");
    await using sub0 = await client(b, v, `sub0-${v}`);
    await sub0.subscribe(`ret${v}/a`, { qos: 0 });
    const m0 = await sub0.next();
    assert.equal(m0.text, "kept");
    assert.equal(m0.packet.retain, true);
    assert.equal(m0.packet.qos, 0, "granted QoS 0 caps stored QoS 1");
    // Nothing else was retained: the next message is a live one, sent with RETAIN 0.
    await pub.publish(`ret${v}/b`, "live", { qos: 1 });
    const live = await sub2.next();
    assert.deepEqual([live.topic, live.text, live.packet.retain], [`ret${v}/b`, "live", false]);
  }
});

Deno.test("retained: a retained message survives a graceful restart of the broker", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-mqtt-retained-" });
  try {
    {
      await using b = await mqttBroker(dataDir);
      await using pub = await client(b, 5, "pub");
      await pub.publish("persist/me", "across restarts", {
        qos: 1,
        retain: true,
        properties: { contentType: "text/plain", userProperties: { k: "v" } },
      });
      await pub.publish("persist/cleared", "gone soon", { qos: 1, retain: true });
      await pub.publish("persist/cleared", "", { qos: 1, retain: true });
    }
    await using b = await mqttBroker(dataDir);
    for (const v of LEVELS) {
      await using sub = await client(b, v, `after-restart-${v}`);
      await sub.subscribe("persist/#", { qos: 1 });
      const m = await sub.next();
      assert.deepEqual([m.topic, m.text, m.packet.retain], ["persist/me", "across restarts", true]);
      if (v === 5) {
        assert.equal(m.packet.properties?.contentType, "text/plain");
        assert.deepEqual({ ...m.packet.properties?.userProperties }, { k: "v" });
      }
      await sub.expectSilence(150);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("retained: an empty payload clears it and still reaches current subscribers; RETAIN 0 leaves it", async () => {
  await using b = await mqttBroker();
  for (const v of LEVELS) {
    const t = `clear${v}/t`;
    await using pub = await client(b, v, `pub${v}`);
    await using live = await client(b, v, `live${v}`);
    await live.subscribe(t, { qos: 1 });
    await pub.publish(t, "first", { qos: 1, retain: true });
    // RETAIN 0 is delivered but does not replace the retained message.
    await pub.publish(t, "normal", { qos: 1, retain: false });
    {
      await using late = await client(b, v, `late-a${v}`);
      await late.subscribe(t, { qos: 1 });
      const m = await late.next();
      assert.deepEqual([m.text, m.packet.retain], ["first", true]);
    }
    // The clearing message goes to current subscribers as a normal message.
    await pub.publish(t, "", { qos: 1, retain: true });
    const got = await live.until(t, "");
    assert.deepEqual(got.map((m) => m.text), ["first", "normal", ""]);
    for (const m of got) assert.equal(m.packet.retain, false, "live messages have RETAIN 0");
    // A new subscriber gets nothing retained: the first message it sees is a later one.
    await using late = await client(b, v, `late-b${v}`);
    await late.subscribe(t, { qos: 1 });
    await pub.publish(t, "after", { qos: 1 });
    const m = await late.next();
    assert.deepEqual([m.text, m.packet.retain], ["after", false]);
  }
});

Deno.test("retained v5: Retain As Published keeps RETAIN on forwarded messages, without it RETAIN is 0", async () => {
  await using b = await mqttBroker();
  await using rap = await client(b, 5, "rap");
  await using plain = await client(b, 5, "plain");
  await using old = await client(b, 4, "old");
  await rap.subscribe("rap/t", { qos: 1, rap: true });
  await plain.subscribe("rap/t", { qos: 1, rap: false });
  await old.subscribe("rap/t", { qos: 1 });
  await using pub = await client(b, 5, "pub");
  await pub.publish("rap/t", "retained", { qos: 1, retain: true });
  await pub.publish("rap/t", "not retained", { qos: 1, retain: false });
  const flags = async (c: Client) =>
    (await c.until("rap/t", "not retained")).map((m) => [m.text, m.packet.retain]);
  assert.deepEqual(await flags(rap), [["retained", true], ["not retained", false]]);
  assert.deepEqual(await flags(plain), [["retained", false], ["not retained", false]]);
  assert.deepEqual(await flags(old), [["retained", false], ["not retained", false]]);
});

Deno.test("retained v5: Retain Handling 0 sends always, 1 only for a new subscription, 2 never", async () => {
  await using b = await mqttBroker();
  await using pub = await client(b, 5, "pub");
  await pub.publish("rh/t", "kept", { qos: 1, retain: true });
  /** Subscribes, then publishes a marker: what arrived before it came from the SUBSCRIBE. */
  let n = 0;
  const retainedAfter = async (c: Client, rh: 0 | 1 | 2) => {
    assert.deepEqual(await c.subscribe("rh/t", { qos: 1, rh }), [1]);
    const marker = `marker ${++n}`;
    await pub.publish("rh/t", marker, { qos: 1 });
    const got = await c.until("rh/t", marker);
    return got.slice(0, -1).map((m) => [m.text, m.packet.retain]);
  };
  await using c0 = await client(b, 5, "rh0");
  assert.deepEqual(await retainedAfter(c0, 0), [["kept", true]]);
  assert.deepEqual(await retainedAfter(c0, 0), [["kept", true]], "again when re-subscribing");
  await using c1 = await client(b, 5, "rh1");
  assert.deepEqual(await retainedAfter(c1, 1), [["kept", true]]);
  assert.deepEqual(await retainedAfter(c1, 1), [], "not when the subscription existed");
  await using c2 = await client(b, 5, "rh2");
  assert.deepEqual(await retainedAfter(c2, 2), []);
  // 3.1.1 has no Retain Handling: a repeated SUBSCRIBE gets the retained message again.
  await using c4 = await client(b, 4, "v4");
  for (let i = 0; i < 2; i++) {
    await c4.subscribe("rh/t", { qos: 1 });
    const marker = `marker v4 ${i}`;
    await pub.publish("rh/t", marker, { qos: 1 });
    const got = await c4.until("rh/t", marker);
    assert.deepEqual(got.map((m) => [m.text, m.packet.retain]), [["kept", true], [marker, false]]);
  }
});

// --- wills -----------------------------------------------------------------------------

/** A watcher of `topic` at QoS 2, so that it sees each will at the will's own QoS. */
async function watcher(b: TestBroker, topic: string, clientId = "watcher"): Promise<Client> {
  const w = await client(b, 5, clientId);
  await w.subscribe(topic, { qos: 2 });
  return w;
}

/** Waits until the broker has no live session for MQTT client id `clientId`. */
function sessionGone(b: TestBroker, clientId: string): Promise<void> {
  return waitFor(
    () => b.broker.sessions.live(`mqtt:${clientId}`) === undefined,
    `${clientId} gone`,
  );
}

Deno.test("wills: published at their QoS when the connection drops without DISCONNECT", async () => {
  await using b = await mqttBroker();
  await using w = await watcher(b, "will/#");
  for (const v of LEVELS) {
    for (const qos of [0, 1, 2] as const) {
      const topic = `will/${v}/${qos}`;
      await using c = await client(b, v, `dying-${v}-${qos}`, {
        will: { topic, payload: `gone ${v} ${qos}`, qos, retain: false },
      });
      await c.drop();
      const m = await w.next();
      assert.deepEqual([m.topic, m.text, m.packet.qos], [topic, `gone ${v} ${qos}`, qos]);
      assert.equal(m.packet.retain, false);
    }
  }
});

Deno.test("wills: not published after a normal DISCONNECT", async () => {
  await using b = await mqttBroker();
  await using w = await watcher(b, "will/t");
  for (const v of LEVELS) {
    await using c = await client(b, v, `polite${v}`, {
      will: { topic: "will/t", payload: "should not appear", qos: 1, retain: false },
    });
    await c.end();
    await sessionGone(b, `polite${v}`);
  }
  await using pub = await client(b, 5, "pub");
  await pub.publish("will/t", "marker", { qos: 1 });
  assert.deepEqual((await w.until("will/t", "marker")).map((m) => m.text), ["marker"]);
});

Deno.test("wills v5: DISCONNECT with reason 0x04 publishes the will", async () => {
  await using b = await mqttBroker();
  await using w = await watcher(b, "will/t");
  await using c = await client(b, 5, "asks-for-will", {
    will: { topic: "will/t", payload: "as asked", qos: 1, retain: false },
  });
  await c.end(0x04);
  const m = await w.next();
  assert.deepEqual([m.topic, m.text], ["will/t", "as asked"]);
});

Deno.test("wills v5: Will Delay Interval delays the will; a reconnect within it cancels it", async () => {
  await using b = await mqttBroker();
  await using w = await watcher(b, "will/delayed");
  const options = (payload: string) => ({
    // The will waits for the smaller of Will Delay and Session Expiry: keep the session.
    properties: { sessionExpiryInterval: 60 },
    will: {
      topic: "will/delayed",
      payload,
      qos: 1 as const,
      retain: false,
      properties: { willDelayInterval: 2 },
    },
  });
  await using back = await client(b, 5, "comes-back", { ...options("cancelled"), clean: false });
  await using gone = await client(b, 5, "stays-away", { ...options("delayed"), clean: false });
  // "comes-back" drops first, so its will, if not cancelled, would be due first.
  await back.drop();
  const droppedAt = Date.now();
  await gone.drop();
  await sleep(300);
  await using again = await client(b, 5, "comes-back", {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(again.connack.sessionPresent, true);
  const m = await w.next(5000);
  const after = Date.now() - droppedAt;
  assert.equal(m.text, "delayed");
  assert.ok(after >= 1900, `the will came ${after} ms after the drop, before its 2 s delay`);
  assert.ok(after < 4500, `the will came ${after} ms after the drop`);
  // A will that was cancelled would have been due no later than the one received.
  await using pub = await client(b, 5, "pub");
  await pub.publish("will/delayed", "marker", { qos: 1 });
  assert.deepEqual((await w.until("will/delayed", "marker")).map((x) => x.text), ["marker"]);
});

Deno.test("wills: the will's RETAIN flag is honoured", async () => {
  await using b = await mqttBroker();
  for (const v of LEVELS) {
    for (const retain of [true, false]) {
      const topic = `will-ret/${v}/${retain}`;
      await using c = await client(b, v, `dying-${v}-${retain}`, {
        will: { topic, payload: "last words", qos: 1, retain },
      });
      await using w = await watcher(b, topic, `w-${v}-${retain}`);
      await c.drop();
      const live = await w.next();
      assert.deepEqual([live.text, live.packet.retain], ["last words", false]);
      // A subscriber that comes later sees the will only if it was retained.
      await using late = await client(b, v, `late-${v}-${retain}`);
      await late.subscribe(topic, { qos: 1 });
      if (retain) {
        const m = await late.next();
        assert.deepEqual([m.text, m.packet.retain], ["last words", true]);
      } else {
        await using pub = await client(b, v, `pub-${v}`);
        await pub.publish(topic, "marker", { qos: 1 });
        assert.deepEqual((await late.until(topic, "marker")).map((m) => m.text), ["marker"]);
      }
    }
  }
});
