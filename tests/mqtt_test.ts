/**
 * MQTT black-box tests with the real MQTT.js client (and a raw socket client where
 * MQTT.js cannot do what a case needs), at protocol level 4 (3.1.1) and 5 (5.0): CONNECT
 * codes, QoS 0/1/2 both ways, SUBSCRIBE/UNSUBSCRIBE, keep-alive, wildcards and `$`
 * topics, the outbound window, and the way across to the JSON-line ports.
 *
 * Sessions (persistence, expiry, takeover, redelivery) are in mqtt_session_test.ts.
 */
import assert from "node:assert/strict";
import type { BrokerConfig } from "../src/config.ts";
import {
  LineClient,
  publish,
  receive,
  startTestBroker,
  subscriber,
  type TestBroker,
  waitFor,
} from "./helpers.ts";
import {
  Client,
  type Level,
  LEVELS,
  persistent,
  RawClient,
  type Received,
  sidOf,
  sleep,
} from "./mqtt_clients.ts";

/** How long to watch for messages that must not come (duplicates, unsubscribed topics). */
const QUIET_MS = 200;

function mqttBroker(config: Partial<BrokerConfig> = {}): Promise<TestBroker> {
  return startTestBroker({ mqttPort: -1, ...config });
}

/** The CONNACK code of either level: 3.1.1 return code or v5 reason code. */
function connackCode(c: { returnCode?: number; reasonCode?: number }, level: Level): number {
  return (level === 5 ? c.reasonCode : c.returnCode) ?? -1;
}

/** Waits until the broker has no QoS 1/2 message in flight to `clientId`. */
async function allAcknowledged(b: TestBroker, clientId: string): Promise<void> {
  await waitFor(
    () => b.broker.sessions.live(sidOf(clientId))?.inflightCount === 0,
    `every message to ${clientId} acknowledged`,
  );
}

// --- CONNECT / CONNACK -------------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} CONNECT is accepted; Session Present is false for a new session`, async () => {
    await using b = await mqttBroker();
    await using c = await Client.open(b.mqttPort, v, { clientId: `new-${v}`, clean: false });
    assert.equal(connackCode(c.connack, v), 0);
    assert.equal(c.connack.sessionPresent, false);
    if (v === 5) {
      // The broker's limits come with the v5 CONNACK.
      assert.equal(c.connack.properties?.receiveMaximum, b.config.mqttReceiveMaximum);
      assert.equal(c.connack.properties?.maximumPacketSize, b.config.mqttMaxPacketBytes);
    }
    assert.ok(b.broker.sessions.live(sidOf(`new-${v}`))?.connected);
  });

  Deno.test(`v${v} CONNACK Session Present is true when a stored session resumes`, async () => {
    await using b = await mqttBroker();
    const id = `back-${v}`;
    {
      await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
      assert.equal(c.connack.sessionPresent, false);
      assert.deepEqual(await c.subscribe({ "t/a": 1 }), [1]);
    }
    {
      await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
      assert.equal(connackCode(c.connack, v), 0);
      assert.equal(c.connack.sessionPresent, true);
    }
    // Clean session / Clean Start: the stored session is discarded, Session Present 0.
    await using c = await Client.open(b.mqttPort, v, { clientId: id, clean: true });
    assert.equal(c.connack.sessionPresent, false);
  });

  Deno.test(`v${v} a client id longer than the limit is refused`, async () => {
    await using b = await mqttBroker();
    const max = b.config.mqttMaxClientIdBytes;
    // Exactly the limit (in UTF-8 bytes: "é" is two) is fine.
    const longest = "é".repeat(max / 2);
    await using ok = await Client.open(b.mqttPort, v, { clientId: longest });
    assert.equal(connackCode(ok.connack, v), 0);
    const err = await Client.open(b.mqttPort, v, { clientId: "x".repeat(max + 1) }).then(
      () => assert.fail("CONNECT accepted"),
      (e) => e as { code?: number },
    );
    // 3.1.1: 0x02 Identifier rejected; v5: 0x85 Client Identifier not valid.
    assert.equal(err.code, v === 5 ? 0x85 : 0x02);
  });
}

Deno.test("v4 an empty client id without clean session is refused with 0x02", async () => {
  await using b = await mqttBroker();
  {
    const { raw, connack } = await RawClient.open(b.mqttPort, 4, { clientId: "", clean: false });
    await using _ = raw;
    assert.equal(connack.returnCode, 0x02); // 3.1.1 [MQTT-3.1.3-8]
    assert.equal(connack.sessionPresent, false);
    // A refused CONNECT is followed by the end of the connection.
    assert.deepEqual(await raw.expectClosed(), []);
  }
  // With clean session the broker makes up an id and accepts.
  const { raw, connack } = await RawClient.open(b.mqttPort, 4, { clientId: "", clean: true });
  await using _ = raw;
  assert.equal(connack.returnCode, 0);
  await raw.send({ cmd: "pingreq" });
  await raw.expect("pingresp");
});

Deno.test("v5 an empty client id gets an Assigned Client Identifier", async () => {
  await using b = await mqttBroker();
  await using c = await Client.open(b.mqttPort, 5, { clientId: "" });
  assert.equal(c.connack.reasonCode, 0);
  const assigned = c.connack.properties?.assignedClientIdentifier;
  assert.ok(typeof assigned === "string" && assigned.length > 0, "no assigned client id");
  assert.ok(b.broker.sessions.live(sidOf(assigned))?.connected, "no session under that id");
  // The connection works under that id.
  await c.subscribe({ "id/t": 1 });
  await c.publish("id/t", "to myself", { qos: 1 });
  assert.equal((await c.waitMessages(1))[0]?.text, "to myself");
  // Also without clean start (allowed in v5, unlike 3.1.1), and a second one is different.
  const { raw, connack } = await RawClient.open(b.mqttPort, 5, {
    clientId: "",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  await using _ = raw;
  assert.equal(connack.reasonCode, 0);
  const other = connack.properties?.assignedClientIdentifier;
  assert.ok(typeof other === "string" && other.length > 0);
  assert.notEqual(other, assigned);
});

// --- PUBLISH, QoS ------------------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} QoS 0/1/2 both ways: delivered QoS = min(published, granted)`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    // SUBACK grants what was asked (the broker supports QoS 2).
    assert.deepEqual(await sub.subscribe({ "q/0": 0, "q/1": 1, "q/2": 2 }), [0, 1, 2]);
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    for (const granted of [0, 1, 2] as const) {
      for (const qos of [0, 1, 2] as const) {
        // Resolves on PUBACK (QoS 1) or PUBCOMP after PUBREC/PUBREL (QoS 2).
        await pub.publish(`q/${granted}`, `pub ${qos}`, { qos });
      }
    }
    await sub.waitMessages(9);
    await sleep(QUIET_MS);
    assert.equal(sub.messages.length, 9, "a message arrived twice");
    for (const granted of [0, 1, 2]) {
      assert.deepEqual(sub.wireTextsOn(`q/${granted}`), ["pub 0", "pub 1", "pub 2"]);
      assert.deepEqual(sub.textsOn(`q/${granted}`).sort(), ["pub 0", "pub 1", "pub 2"]);
      assert.deepEqual(
        sub.wire.filter((p) => p.topic === `q/${granted}`).map((p) => p.qos),
        [0, 1, 2].map((qos) => Math.min(qos, granted)),
        `QoS on q/${granted}`,
      );
    }
    // The subscriber answered every PUBLISH (PUBACK, or PUBREC then PUBCOMP to our PUBREL).
    await allAcknowledged(b, `sub-${v}`);
    assert.equal(b.broker.sessions.live(sidOf(`pub-${v}`))?.receipts.size, 0);
  });

  Deno.test(`v${v} a pipelined burst of mixed QoS arrives once each, in order`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    await sub.subscribe({ "burst/a": 2, "burst/b": 2 });
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    const n = 60;
    // Not awaited one by one: the PUBLISHes go out back to back on one socket.
    await Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          pub.publish(i % 2 ? "burst/b" : "burst/a", `m${i}`, { qos: (i % 3) as 0 | 1 | 2 }),
      ),
    );
    await sub.waitMessages(n);
    await sleep(QUIET_MS);
    assert.equal(sub.messages.length, n);
    for (const [topic, parity] of [["burst/a", 0], ["burst/b", 1]] as const) {
      const expected = Array.from({ length: n }, (_, i) => i).filter((i) => i % 2 === parity);
      // Order on the wire (MQTT.js hands QoS 2 messages over later, at their PUBREL).
      assert.deepEqual(sub.wireTextsOn(topic), expected.map((i) => `m${i}`), `order on ${topic}`);
      const got = sub.wire.filter((p) => p.topic === topic);
      assert.deepEqual(got.map((p) => p.qos), expected.map((i) => i % 3));
      assert.deepEqual(sub.textsOn(topic).sort(), expected.map((i) => `m${i}`).sort());
    }
    await allAcknowledged(b, `sub-${v}`);
  });
}

// --- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} after UNSUBSCRIBE (UNSUBACK) nothing more arrives`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    await sub.subscribe({ "u/a": 1, "u/b": 1 });
    // A second subscriber of u/a shows when the later messages were delivered.
    await using watcher = await Client.open(b.mqttPort, v, { clientId: `watch-${v}` });
    await watcher.subscribe({ "u/a": 1 });
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await pub.publish("u/a", "before", { qos: 1 });
    await sub.waitMessages(1);

    const unsuback = await sub.mqtt.unsubscribeAsync("u/a") as unknown as { granted?: number[] };
    if (v === 5) {
      assert.deepEqual(unsuback.granted, [0x00]);
      const none = await sub.mqtt.unsubscribeAsync("u/none") as unknown as { granted?: number[] };
      assert.deepEqual(none.granted, [0x11]); // No subscription existed
    }
    for (let i = 1; i <= 3; i++) await pub.publish("u/a", `after ${i}`, { qos: (i % 3) as 1 | 2 });
    await pub.publish("u/b", "still subscribed", { qos: 1 });
    await watcher.waitMessages(4);
    await waitFor(() => sub.textsOn("u/b").length === 1, "the message on u/b");
    await sleep(QUIET_MS);
    assert.deepEqual(sub.textsOn("u/a"), ["before"]);
    // The position in u/a is gone with the filter: re-subscribing starts at the end.
    await sub.subscribe({ "u/a": 1 });
    await pub.publish("u/a", "again", { qos: 1 });
    await waitFor(() => sub.textsOn("u/a").length === 2, "the message after re-subscribing");
    assert.deepEqual(sub.textsOn("u/a"), ["before", "again"]);
  });
}

Deno.test("PINGREQ/PINGRESP keep a Keep Alive 1 s connection up; a silent one is closed", async () => {
  await using b = await mqttBroker();
  const started = Date.now();
  const pings = new Map<Level, number>();
  const clients: Client[] = [];
  const silent: { level: Level; raw: RawClient; at: number }[] = [];
  try {
    for (const v of LEVELS) {
      const c = await Client.open(b.mqttPort, v, { clientId: `ka-${v}`, keepalive: 1 });
      clients.push(c);
      pings.set(v, 0);
      c.mqtt.on("packetreceive", (p) => {
        if (p.cmd === "pingresp") pings.set(v, (pings.get(v) ?? 0) + 1);
      });
      // A client that promises Keep Alive 1 s and then says nothing.
      const { raw } = await RawClient.open(b.mqttPort, v, { clientId: `mute-${v}`, keepalive: 1 });
      silent.push({ level: v, raw, at: Date.now() });
    }
    // 1.5 × Keep Alive without a packet closes the connection.
    await Promise.all(silent.map(async ({ level, raw, at }) => {
      const before = await raw.expectClosed(3500);
      const after = Date.now() - at;
      assert.ok(after >= 1400, `v${level} silent client closed after only ${after} ms`);
      // v5 says why: DISCONNECT 0x8D Keep Alive timeout.
      const codes = before.map((p) => p.cmd === "disconnect" ? p.reasonCode : p.cmd);
      assert.deepEqual(codes, level === 5 ? [0x8d] : []);
    }));
    await sleep(Math.max(0, 3000 - (Date.now() - started)));
    for (const [i, v] of LEVELS.entries()) {
      const c = clients[i] as Client;
      assert.ok(c.mqtt.connected && !c.isClosed, `v${v} client lost its connection`);
      assert.ok((pings.get(v) ?? 0) >= 2, `v${v}: ${pings.get(v)} PINGRESPs in 3 s`);
    }
  } finally {
    await Promise.all([...clients.map((c) => c.end()), ...silent.map(({ raw }) => raw.close())]);
  }
});

// --- wildcards and $ topics ----------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} wildcards + and # match by level, also topics created later`, async () => {
    await using b = await mqttBroker();
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    // A topic that exists before the SUBSCRIBEs: only later messages are delivered.
    await pub.publish("sport/old", "early", { qos: 1 });
    const expected: Record<string, string[]> = {
      "sport/tennis/+": ["sport/tennis/player1", "sport/tennis/player2"],
      "sport/#": [
        "sport",
        "sport/",
        "sport/golf/player1",
        "sport/old",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
      ],
      "+/tennis/#": [
        "other/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
      ],
      "+": ["sport", "tennis", "top"],
      "sport/+": ["sport/", "sport/old"],
      "sport/+/player1": ["sport/golf/player1", "sport/tennis/player1"],
    };
    const subs = new Map<string, Client>();
    try {
      for (const [i, filter] of Object.keys(expected).entries()) {
        const c = await Client.open(b.mqttPort, v, { clientId: `w${i}-${v}` });
        subs.set(filter, c);
        assert.deepEqual(await c.subscribe({ [filter]: 1 }), [1]);
      }
      const topics = [
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport",
        "sport/",
        "sport/tennis/player1/ranking",
        "sport/golf/player1",
        "sport/old",
        "other/tennis",
        "top",
        "tennis",
      ];
      for (const t of topics) await pub.publish(t, `to ${t}`, { qos: 1 });
      for (const [filter, want] of Object.entries(expected)) {
        await (subs.get(filter) as Client).waitMessages(want.length);
      }
      await sleep(QUIET_MS);
      for (const [filter, want] of Object.entries(expected)) {
        const got = (subs.get(filter) as Client).messages;
        assert.deepEqual(got.map((m) => m.topic).sort(), want, `filter ${filter}`);
        for (const m of got) assert.equal(m.text, `to ${m.topic}`);
      }
    } finally {
      await Promise.all([...subs.values()].map((c) => c.end()));
    }
  });

  Deno.test(`v${v} overlapping filters give one copy at the highest granted QoS`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    assert.deepEqual(await sub.subscribe({ "ov/+": 1, "ov/#": 2, "ov/a": 0 }), [1, 2, 0]);
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await pub.publish("ov/a", "two", { qos: 2 });
    await pub.publish("ov/a", "one", { qos: 1 });
    await pub.publish("ov/a", "zero", { qos: 0 });
    await pub.publish("ov/a/deep", "deep", { qos: 2 }); // only ov/# matches
    await sub.waitMessages(4);
    await sleep(QUIET_MS);
    assert.equal(sub.messages.length, 4);
    assert.deepEqual(
      sub.wire.map((p) => [p.topic, new TextDecoder().decode(p.payload as Uint8Array), p.qos]),
      [["ov/a", "two", 2], ["ov/a", "one", 1], ["ov/a", "zero", 0], ["ov/a/deep", "deep", 2]],
    );
  });

  Deno.test(`v${v} $SYS topics: '#' and '+/…' never match them, '$SYS/#' does`, async () => {
    await using b = await mqttBroker({ mqttSysInterval: 1 });
    await using all = await Client.open(b.mqttPort, v, { clientId: `all-${v}` });
    await all.subscribe({ "#": 0 });
    await using plus = await Client.open(b.mqttPort, v, { clientId: `plus-${v}` });
    await plus.subscribe({ "+/broker/#": 0 });
    await using sys = await Client.open(b.mqttPort, v, { clientId: `sys-${v}` });
    await sys.subscribe({ "$SYS/#": 0 });
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await pub.publish("plain/topic", "ordinary", { qos: 1 });
    await pub.publish("plain/broker/x", "ordinary too", { qos: 1 });
    // A $SYS round published while all three are subscribed (not retained copies).
    await waitFor(
      () => sys.messages.some((m) => m.topic === "$SYS/broker/uptime" && !m.packet.retain),
      "a live $SYS message",
      3500,
    );
    await waitFor(() => all.messages.length >= 2, "the ordinary messages on '#'");
    await waitFor(() => plus.messages.length >= 1, "the ordinary message on '+/broker/#'");
    assert.ok(sys.messages.every((m) => m.topic.startsWith("$SYS/broker/")));
    assert.deepEqual(all.messages.map((m) => m.topic).sort(), ["plain/broker/x", "plain/topic"]);
    assert.deepEqual(plus.messages.map((m) => m.topic), ["plain/broker/x"]);
    // Clients may not publish to $ topics.
    if (v === 5) {
      const err = await pub.publish("$SYS/broker/fake", "x", { qos: 1 }).then(
        () => assert.fail("PUBLISH to $SYS accepted"),
        (e) => e as { code?: number },
      );
      assert.equal(err.code, 0x90); // Topic Name invalid
    } else {
      // 3.1.1 has no negative PUBACK: the broker closes the connection.
      void pub.publish("$SYS/broker/fake", "x", { qos: 1 }).catch(() => {});
      await pub.expectClosed();
    }
    await sleep(QUIET_MS);
    assert.ok(!sys.messages.some((m) => m.topic === "$SYS/broker/fake"));
  });
}

// --- the outbound window -------------------------------------------------------------------

/** Window settings for `level`: the v5 client's Receive Maximum, or the broker's cap. */
function windowOf(level: Level, size: number) {
  return level === 5
    ? { broker: {}, connect: { properties: { receiveMaximum: size } } }
    : { broker: { mqttMaxInflight: size }, connect: {} };
}

for (const v of LEVELS) {
  const how = v === 5 ? "Receive Maximum 2" : "--mqtt-max-inflight 2";
  Deno.test(`v${v} ${how}: never more than 2 unacknowledged messages in flight`, async () => {
    const w = windowOf(v, 2);
    await using b = await mqttBroker(w.broker);
    const { raw, connack } = await RawClient.open(b.mqttPort, v, {
      clientId: `slow-${v}`,
      ...w.connect,
    });
    await using _ = raw;
    assert.equal(connack.sessionPresent, false);
    await raw.send({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "win/a", qos: 1 }, { topic: "win/b", qos: 2 }],
    });
    assert.deepEqual((await raw.expect("suback")).granted, [1, 2]);
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    const n = 12;
    for (let i = 0; i < n; i++) await pub.publish(i % 2 ? "win/b" : "win/a", `m${i}`, { qos: 2 });

    const got: { topic: string; text: string }[] = [];
    const take = async () => {
      const p = await raw.expect("publish");
      got.push({ topic: p.topic, text: new TextDecoder().decode(p.payload as Uint8Array) });
      return p;
    };
    // Two arrive, then nothing until one is acknowledged.
    const first = await take();
    const second = await take();
    await raw.expectSilence(QUIET_MS);
    const ack = async (p: Awaited<ReturnType<typeof take>>) => {
      if (p.qos === 1) return raw.send({ cmd: "puback", messageId: p.messageId as number });
      await raw.send({ cmd: "pubrec", messageId: p.messageId as number });
      await raw.expect("pubrel");
      // PUBREC alone does not free the slot: the window counts until PUBCOMP.
      await raw.expectSilence(50);
      await raw.send({ cmd: "pubcomp", messageId: p.messageId as number });
    };
    await ack(first);
    const third = await take();
    await raw.expectSilence(QUIET_MS);
    // From here on: acknowledge each as it comes; at most 2 are ever outstanding.
    const outstanding = [second, third];
    while (got.length < n) {
      await ack(outstanding.shift() as Awaited<ReturnType<typeof take>>);
      outstanding.push(await take());
      // Both slots are taken again: nothing else may be queued behind the new one.
      await raw.expectSilence(0);
    }
    for (const p of outstanding) await ack(p);
    await raw.expectSilence(QUIET_MS);
    for (const topic of ["win/a", "win/b"]) {
      const want = Array.from({ length: n }, (_, i) => i)
        .filter((i) => (i % 2 ? "win/b" : "win/a") === topic).map((i) => `m${i}`);
      assert.deepEqual(got.filter((m) => m.topic === topic).map((m) => m.text), want);
    }
    await allAcknowledged(b, `slow-${v}`);
  });

  Deno.test(`v${v} ${how}: 50 messages published quickly all arrive with MQTT.js`, async () => {
    const w = windowOf(v, 2);
    await using b = await mqttBroker(w.broker);
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}`, ...w.connect });
    await sub.subscribe({ "fast/#": 2 });
    let maxOutstanding = 0;
    const open = new Set<number>();
    sub.mqtt.on("packetreceive", (p) => {
      if (p.cmd === "publish" && p.qos > 0) open.add(p.messageId as number);
      maxOutstanding = Math.max(maxOutstanding, open.size);
    });
    sub.mqtt.on("packetsend", (p) => {
      if (p.cmd === "puback" || p.cmd === "pubcomp") open.delete(p.messageId as number);
    });
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await Promise.all(
      Array.from(
        { length: 50 },
        (_, i) => pub.publish(`fast/${i % 3}`, `m${i}`, { qos: (1 + i % 2) as 1 | 2 }),
      ),
    );
    await sub.waitMessages(50, 5000);
    await sleep(QUIET_MS);
    assert.equal(sub.messages.length, 50);
    for (let t = 0; t < 3; t++) {
      const want = Array.from({ length: 50 }, (_, i) => i).filter((i) => i % 3 === t);
      assert.deepEqual(sub.wireTextsOn(`fast/${t}`), want.map((i) => `m${i}`));
      assert.deepEqual(sub.textsOn(`fast/${t}`).sort(), want.map((i) => `m${i}`).sort());
    }
    assert.ok(maxOutstanding <= 2, `${maxOutstanding} messages were in flight at once`);
  });
}

// --- across protocols ----------------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} a JSON-line PUB reaches an MQTT subscriber of the same topic`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    await sub.subscribe({ "a/b": 2, "j/+": 1 });
    await using p = await LineClient.connect(b.publisherPort);
    await publish(p, "a/b", "grüße ✓");
    await publish(p, "j/obj", { n: 1, list: [true, null] });
    await sub.waitMessages(2);
    const text = sub.messages.find((m) => m.topic === "a/b") as Received;
    const obj = sub.messages.find((m) => m.topic === "j/obj") as Received;
    assert.equal(text.topic, "a/b");
    // The payload is the UTF-8 of msg.
    assert.deepEqual(text.payload, new TextEncoder().encode("grüße ✓"));
    assert.equal(text.packet.qos, 2); // JSON-line PUBs are QoS 2 exchanges
    assert.equal(obj.topic, "j/obj");
    assert.deepEqual(JSON.parse(obj.text), { n: 1, list: [true, null] });
    assert.equal(obj.packet.qos, 1);
    if (v === 5) {
      assert.equal(text.packet.properties?.payloadFormatIndicator, true);
      assert.equal(obj.packet.properties?.payloadFormatIndicator, true);
      assert.equal(obj.packet.properties?.contentType, "application/json");
    }
  });

  Deno.test(`v${v} an MQTT PUBLISH reaches a JSON-line consumer (text or base64)`, async () => {
    await using b = await mqttBroker();
    await using c = await subscriber(b, "ann", "a/b");
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    const binary = new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0x41]);
    await pub.publish("a/b", "héllo", { qos: 1 });
    await pub.publish("a/b", binary, { qos: 2 });
    await pub.publish("a/b", "", { qos: 0 });
    const first = await receive(c);
    assert.equal(first.topic, "a/b");
    assert.equal(first.msg, "héllo");
    const second = await receive(c);
    assert.deepEqual(second.msg, { base64: btoa(String.fromCharCode(...binary)) });
    assert.ok((second.msgId as number) > (first.msgId as number));
    assert.equal((await receive(c)).msg, "");
    await c.expectSilence(QUIET_MS);
  });
}

// --- QoS 0 kept in memory ------------------------------------------------------------------

Deno.test("QoS 0 messages only clean sessions receive are delivered in order without being stored; a persistent subscriber makes them stored", async () => {
  await using b = await mqttBroker();
  await using sub = await Client.open(b.mqttPort, 4, { clientId: "clean-sub" });
  await sub.subscribe({ "q0/t": 0 });
  await using pub = await Client.open(b.mqttPort, 4, { clientId: "q0-pub" });
  // QoS 0 and QoS 1 interleaved: one order on the wire, only QoS 1 in the log.
  for (let i = 1; i <= 20; i++) await pub.publish("q0/t", `m${i}`, { qos: i % 5 === 0 ? 1 : 0 });
  await sub.waitMessages(20);
  assert.deepEqual(sub.textsOn("q0/t"), Array.from({ length: 20 }, (_, i) => `m${i + 1}`));
  const logged = async () =>
    (await b.broker.store.readLog("q0/t", 1, 100)).map((m) => new TextDecoder().decode(m.payload));
  assert.deepEqual(await logged(), ["m5", "m10", "m15", "m20"]);

  // A persistent session on the topic: QoS 0 messages go through the log from now on,
  // and one published while it is offline reaches it when it comes back.
  const durable = await Client.open(b.mqttPort, 4, { ...persistent(4), clientId: "keeper" });
  await durable.subscribe({ "q0/t": 0 });
  await durable.drop();
  // Once the broker has seen it go: a QoS 0 message sent to a connection that is
  // already dead is gone (at most once).
  await waitFor(
    () => b.broker.sessions.live(sidOf("keeper"))?.connected !== true,
    "keeper offline",
  );
  await pub.publish("q0/t", "while away", { qos: 0 });
  await waitFor(async () => (await logged()).includes("while away"), "the QoS 0 message stored");
  // A raw client: it reads from the first byte, so a PUBLISH in the CONNACK's segment is
  // not missed (MQTT.js may emit a QoS 0 message before a listener can be attached).
  await using back = await RawClient.accepted(b.mqttPort, 4, { clientId: "keeper", clean: false });
  const again = await back.expect("publish");
  assert.equal(again.topic, "q0/t");
  assert.equal(new TextDecoder().decode(again.payload as Uint8Array), "while away");
  assert.equal(again.qos, 0);
});

Deno.test("an MQTT connection's end frees its per-address slot, also one ended by a takeover", async () => {
  await using b = await startTestBroker({ mqttPort: -1, maxConnectionsPerAddress: 2 });
  const first = await RawClient.accepted(b.mqttPort, 4, { clientId: "slot-1" });
  await using second = await RawClient.accepted(b.mqttPort, 4, { clientId: "slot-2" });
  // Full: the next one from this address is closed without a CONNACK.
  await using refused = await RawClient.connect(b.mqttPort, 4);
  await refused.expectClosed(5000);

  // A DISCONNECT ends the first connection; its slot is free again.
  await first.send({ cmd: "disconnect" });
  await first.expectClosed(5000);
  await first.close();
  let third: RawClient | undefined;
  const takers: RawClient[] = [];
  await waitFor(async () => {
    try {
      third = await RawClient.accepted(b.mqttPort, 4, { clientId: "slot-3" });
      return true;
    } catch {
      return false; // the broker has not seen the first one end yet
    }
  }, "a connection accepted in the freed slot");
  await third!.send({ cmd: "pingreq" });
  await third!.expect("pingresp");
  await third!.close();

  // A takeover of slot-2's client id in the slot the third one left: the old connection
  // is closed, and its end (awaited by the takeover) frees its slot for the next one.
  await waitFor(async () => {
    try {
      const taker = await RawClient.accepted(b.mqttPort, 4, { clientId: "slot-2" });
      takers.push(taker);
      return true;
    } catch {
      return false; // the third one's end not seen yet
    }
  }, "the takeover accepted");
  await second.expectClosed(5000);
  await waitFor(async () => {
    try {
      takers.push(await RawClient.accepted(b.mqttPort, 4, { clientId: "slot-4" }));
      return true;
    } catch {
      return false;
    }
  }, "the old slot-2 connection's slot reused");
  for (const t of takers) {
    await t.send({ cmd: "pingreq" });
    await t.expect("pingresp");
    await t.close();
  }
});
