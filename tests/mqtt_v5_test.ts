/**
 * Black-box tests of MQTT 5.0 features (and their 3.1.1 counterparts where there are
 * any) with MQTT.js and a raw socket client: keep-alive enforcement and Server Keep
 * Alive, Message Expiry, Topic Aliases both ways, Maximum Packet Size both ways,
 * property passthrough, Subscription Identifiers, No Local, the assigned client id and
 * CONNACK properties, shared subscriptions as CONNACK announces them, MQTT over
 * WebSocket beside TCP and JSON-line clients, and `$SYS`.
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
} from "./helpers.ts";
import { Client, LEVELS, RawClient, sleep, tcpUrl, wsUrl } from "./mqtt_clients.ts";

function mqttBroker(config: Partial<BrokerConfig> = {}): Promise<TestBroker> {
  return startTestBroker({ mqttPort: -1, ...config });
}

function client(b: TestBroker, v: 4 | 5, clientId: string, extra = {}): Promise<Client> {
  return Client.connect(tcpUrl(b.mqttPort), {
    protocolVersion: v,
    clientId,
    clean: true,
    ...extra,
  });
}

// --- keep-alive ----------------------------------------------------------------------------

Deno.test("keep-alive: silent for 1.5 × Keep Alive closes the connection, v5 with DISCONNECT 0x8D first", async () => {
  await using b = await mqttBroker();
  const silent = async (v: 4 | 5) => {
    const start = performance.now();
    await using c = await RawClient.accepted(b.mqttPort, v, {
      clientId: `silent${v}`,
      keepalive: 1,
    });
    const last = await c.expectClosed(4000);
    const after = (c.closedAt as number) - start;
    // 1.5 s after the CONNECT (the last packet), 3.1.1 [MQTT-3.1.2-24], v5 [MQTT-3.1.2-22].
    assert.ok(after >= 1400, `v${v}: closed ${after.toFixed(0)} ms after CONNECT, too early`);
    assert.ok(after < 3000, `v${v}: closed only ${after.toFixed(0)} ms after CONNECT`);
    if (v === 5) {
      assert.equal(last.length, 1, `v5: expected one DISCONNECT, got ${JSON.stringify(last)}`);
      assert.equal(last[0]?.cmd, "disconnect");
      assert.equal((last[0] as { reasonCode?: number }).reasonCode, 0x8d);
    } else {
      assert.deepEqual(last, [], "3.1.1 has no DISCONNECT from the server");
    }
  };
  const pinging = async (v: 4 | 5) => {
    await using c = await RawClient.accepted(b.mqttPort, v, {
      clientId: `pinging${v}`,
      keepalive: 1,
    });
    for (let i = 0; i < 5; i++) {
      await sleep(500);
      await c.send({ cmd: "pingreq" });
      await c.expect("pingresp");
    }
    assert.equal(c.closedAt, null, "a client that pings stays connected");
  };
  await Promise.all([silent(4), silent(5), pinging(4), pinging(5)]);
});

Deno.test("keep-alive v5: with mqttMaxKeepalive the CONNACK carries Server Keep Alive", async () => {
  await using b = await mqttBroker({ mqttMaxKeepalive: 5 });
  const cases: [number, number | undefined][] = [[0, 5], [60, 5], [3, undefined], [5, undefined]];
  for (const [asked, server] of cases) {
    await using c = await client(b, 5, `ka${asked}`, { keepalive: asked });
    assert.equal(c.connack.properties?.serverKeepAlive, server, `keepalive ${asked}`);
  }
});

// --- message expiry --------------------------------------------------------------------------

Deno.test("message expiry v5: an expired message is not delivered; a delivered one carries the time left", async () => {
  await using b = await mqttBroker();
  const persistent = {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  };
  {
    await using sub = await client(b, 5, "offline", persistent);
    await sub.subscribe("exp/t", { qos: 1 });
  }
  await using pub = await client(b, 5, "pub");
  const publishedAt = Date.now();
  await pub.publish("exp/t", "short", { qos: 1, properties: { messageExpiryInterval: 1 } });
  await pub.publish("exp/t", "long", { qos: 1, properties: { messageExpiryInterval: 60 } });
  await pub.publish("exp/t", "forever", { qos: 1 });
  await sleep(2100 - (Date.now() - publishedAt));
  await using sub = await client(b, 5, "offline", persistent);
  assert.equal(sub.connack.sessionPresent, true);
  const got = await sub.until("exp/t", "forever");
  assert.deepEqual(got.map((m) => m.text), ["long", "forever"]);
  const left = got[0]?.packet.properties?.messageExpiryInterval as number;
  // 60 s minus the 2 s offline: the remaining whole seconds, v5 [MQTT-3.3.2-6].
  assert.ok(left <= 58 && left >= 50, `Message Expiry Interval ${left}`);
  assert.equal(got[1]?.packet.properties?.messageExpiryInterval, undefined);
});

// --- topic aliases ------------------------------------------------------------------------------

Deno.test("topic alias v5 inbound: an alias set with a topic stands for it in later PUBLISHes", async () => {
  await using b = await mqttBroker();
  await using sub = await client(b, 4, "sub");
  await sub.subscribe("alias/#", { qos: 1 });
  await using pub = await client(b, 5, "pub");
  assert.equal(pub.connack.properties?.topicAliasMaximum, b.config.mqttTopicAliasMaximum);
  await pub.publish("alias/one", "set", { qos: 1, properties: { topicAlias: 3 } });
  await pub.publish("", "used", { qos: 1, properties: { topicAlias: 3 } });
  // Re-pointing an alias is allowed: from now on 3 means alias/two.
  await pub.publish("alias/two", "moved", { qos: 1, properties: { topicAlias: 3 } });
  await pub.publish("", "used again", { qos: 1, properties: { topicAlias: 3 } });
  const got = await sub.until("alias/two", "used again");
  const byTopic = (t: string) => got.filter((m) => m.topic === t).map((m) => m.text);
  assert.deepEqual(byTopic("alias/one"), ["set", "used"]);
  assert.deepEqual(byTopic("alias/two"), ["moved", "used again"]);
  assert.equal(got.length, 4);
});

Deno.test("topic alias v5 inbound: alias 0 or above the maximum is DISCONNECT 0x94", async () => {
  await using b = await mqttBroker({ mqttTopicAliasMaximum: 5 });
  for (const alias of [0, 6]) {
    await using c = await RawClient.accepted(b.mqttPort, 5, { clientId: `bad-alias-${alias}` });
    await c.send({
      cmd: "publish",
      topic: "alias/x",
      payload: "x",
      qos: 0,
      dup: false,
      retain: false,
      properties: { topicAlias: alias },
    });
    const last = await c.expectClosed(3000);
    assert.equal(last.length, 1, `alias ${alias}: ${JSON.stringify(last)}`);
    assert.equal(last[0]?.cmd, "disconnect");
    assert.equal((last[0] as { reasonCode?: number }).reasonCode, 0x94);
  }
  // The broker still serves others.
  await using ok = await client(b, 5, "fine");
  await ok.subscribe("alias/x", { qos: 0 });
});

Deno.test("topic alias v5 outbound: with Topic Alias Maximum the broker sends aliases, first come first served", async () => {
  await using b = await mqttBroker();
  await using raw = await RawClient.accepted(b.mqttPort, 5, {
    clientId: "raw",
    properties: { topicAliasMaximum: 1 },
  });
  await raw.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "out/#", qos: 0 }] });
  await raw.expect("suback");
  await using js = await client(b, 5, "js", { properties: { topicAliasMaximum: 5 } });
  await js.subscribe("out/#", { qos: 0 });
  await using pub = await client(b, 5, "pub");
  const sent: [string, string][] = [["out/a", "1"], ["out/a", "2"], ["out/b", "3"], ["out/b", "4"]];
  const raws = [];
  for (const [topic, text] of sent) {
    await pub.publish(topic, text, { qos: 0 });
    raws.push(await raw.expect("publish"));
    const m = await js.next();
    // MQTT.js resolves aliases: the topic must come out right.
    assert.deepEqual([m.topic, m.text], [topic, text]);
  }
  const seen = raws.map((p) => [p.topic, p.properties?.topicAlias, String(p.payload)]);
  assert.deepEqual(seen, [
    ["out/a", 1, "1"], // alias 1 given to out/a with its topic
    ["", 1, "2"], // then the alias alone
    ["out/b", undefined, "3"], // the client takes one alias: out/b goes with its name
    ["out/b", undefined, "4"],
  ]);
});

// --- maximum packet size -------------------------------------------------------------------------

Deno.test("maximum packet size v5 outbound: a message over the client's maximum is skipped, later ones flow", async () => {
  await using b = await mqttBroker();
  await using small = await client(b, 5, "small", { properties: { maximumPacketSize: 200 } });
  await small.subscribe("mps/t", { qos: 1 });
  await using big = await client(b, 5, "big");
  await big.subscribe("mps/t", { qos: 1 });
  await using pub = await client(b, 5, "pub");
  await pub.publish("mps/t", "x".repeat(500), { qos: 1 });
  await pub.publish("mps/t", "fits", { qos: 1 });
  assert.deepEqual((await big.until("mps/t", "fits")).map((m) => m.text.length), [500, 4]);
  assert.deepEqual((await small.until("mps/t", "fits")).map((m) => m.text), ["fits"]);
  await small.expectSilence(150);
});

Deno.test("maximum packet size inbound: a packet over mqttMaxPacketBytes closes the connection (v5: DISCONNECT 0x95)", async () => {
  await using b = await mqttBroker({ mqttMaxPacketBytes: 1024 });
  await using watcher = await client(b, 5, "watcher");
  await watcher.subscribe("mps/in", { qos: 0 });
  for (const v of LEVELS) {
    await using c = await client(b, v, `sender${v}`);
    if (v === 5) assert.equal(c.connack.properties?.maximumPacketSize, 1024);
    await c.publish("mps/in", "fits", { qos: 0 });
    await c.publish("mps/in", "y".repeat(2000), { qos: 0 });
    await c.expectClosed();
    if (v === 5) {
      assert.deepEqual(c.disconnects.map((d) => d.reasonCode), [0x95]);
    } else {
      assert.deepEqual(c.disconnects, []);
    }
    assert.deepEqual((await watcher.next()).text, "fits");
  }
  await watcher.expectSilence(100);
});

// --- properties, subscription identifiers, No Local ------------------------------------------

Deno.test("properties v5: user properties, content type, response topic, correlation data pass unaltered", async () => {
  await using b = await mqttBroker();
  await using sub = await client(b, 5, "sub");
  await sub.subscribe("props/t", { qos: 2 });
  await using pub = await client(b, 5, "pub");
  const correlation = new Uint8Array([0, 1, 2, 0xfe, 0xff]);
  await pub.publish("props/t", "with properties", {
    qos: 2,
    properties: {
      payloadFormatIndicator: true,
      contentType: "application/x-test; charset=utf-8",
      responseTopic: "props/reply",
      correlationData: correlation as unknown as Buffer,
      userProperties: { single: "1", repeated: ["a", "b"], "ünïcode": "välue" },
    },
  });
  const m = await sub.next();
  const p = m.packet.properties ?? {};
  assert.equal(m.text, "with properties");
  assert.equal(p.payloadFormatIndicator, true);
  assert.equal(p.contentType, "application/x-test; charset=utf-8");
  assert.equal(p.responseTopic, "props/reply");
  assert.deepEqual(new Uint8Array(p.correlationData as Uint8Array), correlation);
  assert.deepEqual({ ...p.userProperties }, {
    single: "1",
    repeated: ["a", "b"],
    "ünïcode": "välue",
  });
  // A message without properties gets none added (besides what its format implies).
  await pub.publish("props/t", new Uint8Array([1, 2, 3]), { qos: 1 });
  const bare = await sub.next();
  assert.deepEqual(bare.payload, new Uint8Array([1, 2, 3]));
  assert.equal(bare.packet.properties?.userProperties, undefined);
  assert.equal(bare.packet.properties?.contentType, undefined);
});

Deno.test("subscription identifiers v5: each matching filter's identifier comes with the message", async () => {
  await using b = await mqttBroker();
  await using sub = await client(b, 5, "sub");
  await sub.subscribe("sid/+", { qos: 1, properties: { subscriptionIdentifier: 7 } });
  await sub.subscribe("sid/#", { qos: 1, properties: { subscriptionIdentifier: 300 } });
  await sub.subscribe("sid/only/#", { qos: 1 });
  await using pub = await client(b, 5, "pub");
  const ids = async (topic: string) => {
    await pub.publish(topic, topic, { qos: 1 });
    const m = await sub.next();
    assert.equal(m.topic, topic);
    const id = m.packet.properties?.subscriptionIdentifier;
    return id === undefined ? [] : [id].flat().sort((x, y) => x - y);
  };
  // One copy of the message, with both identifiers, v5 [MQTT-3.3.4-3], [MQTT-3.3.4-4].
  assert.deepEqual(await ids("sid/a"), [7, 300]);
  assert.deepEqual(await ids("sid/a/b"), [300]);
  assert.deepEqual(await ids("sid/only/x"), [300]);
  await sub.expectSilence(100);
  // A retained message sent at SUBSCRIBE carries that subscription's identifier.
  await pub.publish("sidr/t", "kept", { qos: 1, retain: true });
  await sub.subscribe("sidr/#", { qos: 1, properties: { subscriptionIdentifier: 42 } });
  const r = await sub.next();
  assert.deepEqual([r.text, r.packet.retain], ["kept", true]);
  assert.deepEqual([r.packet.properties?.subscriptionIdentifier].flat(), [42]);
});

Deno.test("no local v5: a client does not get its own messages on a No Local subscription", async () => {
  await using b = await mqttBroker();
  await using self = await client(b, 5, "self");
  await self.subscribe("nl/t", { qos: 1, nl: true });
  await using other = await client(b, 5, "other");
  await other.subscribe("nl/t", { qos: 1 });
  await self.publish("nl/t", "mine", { qos: 1 });
  await other.publish("nl/t", "theirs", { qos: 1 });
  assert.deepEqual((await other.until("nl/t", "theirs")).map((m) => m.text), ["mine", "theirs"]);
  assert.deepEqual((await self.until("nl/t", "theirs")).map((m) => m.text), ["theirs"]);
});

// --- CONNACK -----------------------------------------------------------------------------------

Deno.test("connack v5: an empty client id is assigned one; the broker's limits are announced", async () => {
  await using b = await mqttBroker({
    mqttReceiveMaximum: 100,
    mqttTopicAliasMaximum: 7,
    mqttMaxPacketBytes: 4096,
  });
  await using c = await client(b, 5, "");
  const p = c.connack.properties ?? {};
  const assigned = p.assignedClientIdentifier as string;
  assert.match(assigned, /^auto-/);
  assert.equal(p.receiveMaximum, 100);
  assert.equal(p.topicAliasMaximum, 7);
  assert.equal(p.maximumPacketSize, 4096);
  assert.equal(p.retainAvailable, true);
  assert.equal(p.wildcardSubscriptionAvailable, true);
  assert.equal(p.subscriptionIdentifiersAvailable, true);
  assert.equal(typeof p.sharedSubscriptionAvailable, "boolean");
  // The assigned id is the session's: a second empty-id client gets another one.
  assert.ok(b.broker.sessions.live(`mqtt:${assigned}`), "a session under the assigned id");
  await using d = await client(b, 5, "");
  assert.notEqual(d.connack.properties?.assignedClientIdentifier, assigned);
  // 3.1.1: an empty id only with clean session, 3.1.1 [MQTT-3.1.3-7], [MQTT-3.1.3-8].
  await using e = await client(b, 4, "");
  assert.equal(e.connack.returnCode, 0);
  // (Neither MQTT.js nor the codec will make that CONNECT, so it is written byte by byte:
  // "MQTT", level 4, flags 0 (clean session 0), Keep Alive 0, client id "".)
  await using raw = await RawClient.connect(b.mqttPort, 4);
  await raw.sendBytes(new Uint8Array([0x10, 12, 0, 4, 77, 81, 84, 84, 4, 0, 0, 0, 0, 0]));
  const refused = await raw.expect("connack");
  assert.equal(refused.returnCode, 2);
  assert.deepEqual(await raw.expectClosed(3000), []);
});

Deno.test("shared subscriptions: SUBACK agrees with CONNACK's Shared Subscription Available", async () => {
  await using b = await mqttBroker();
  let available: boolean;
  {
    await using probe = await client(b, 5, "probe");
    available = probe.connack.properties?.sharedSubscriptionAvailable !== false;
  }
  for (const v of LEVELS) {
    await using c = await client(b, v, `share${v}`);
    const codes = await c.subscribe("$share/g/t", { qos: 1 });
    if (available) {
      assert.deepEqual(codes, [1], `v${v}: announced, so granted`);
    } else {
      // v5 0x9E Shared Subscriptions not supported; 3.1.1 0x80.
      assert.deepEqual(codes, [v === 5 ? 0x9e : 0x80], `v${v}: not announced, so refused`);
    }
  }
});

// --- WebSocket ------------------------------------------------------------------------------

Deno.test("websocket: MQTT.js over ws:// at both levels meets TCP clients and JSON-line clients", async () => {
  await using b = await mqttBroker({ mqttWsPort: -1 });
  await using line = await subscriber(b, "liner", "ws/from-mqtt");
  await using tcp = await client(b, 5, "tcp");
  await tcp.subscribe("ws/#", { qos: 1 });
  await using linePub = await LineClient.connect(b.publisherPort);
  for (const v of LEVELS) {
    await using ws = await Client.connect(wsUrl(b.mqttWsPort), {
      protocolVersion: v,
      clientId: `ws${v}`,
      clean: true,
    });
    assert.deepEqual(await ws.subscribe("ws/to-ws", { qos: 2 }), [2]);
    // ws → TCP MQTT and JSON lines
    await ws.publish("ws/from-mqtt", `hello from ws v${v}`, { qos: 1 });
    const atTcp = await tcp.next();
    assert.deepEqual([atTcp.topic, atTcp.text], ["ws/from-mqtt", `hello from ws v${v}`]);
    const atLine = await receive(line);
    assert.deepEqual([atLine.topic, atLine.msg], ["ws/from-mqtt", `hello from ws v${v}`]);
    // TCP MQTT → ws
    await tcp.publish("ws/to-ws", "from tcp", { qos: 2 });
    const fromTcp = await ws.next();
    assert.deepEqual([fromTcp.topic, fromTcp.text, fromTcp.packet.qos], [
      "ws/to-ws",
      "from tcp",
      2,
    ]);
    assert.equal((await tcp.next()).text, "from tcp"); // tcp's own ws/# sees it too
    // JSON lines → ws
    await publish(linePub, "ws/to-ws", { n: v });
    const fromLine = await ws.next();
    assert.deepEqual(JSON.parse(fromLine.text), { n: v });
    assert.equal((await tcp.next()).topic, "ws/to-ws");
  }
});

// --- $SYS -----------------------------------------------------------------------------------

Deno.test("$SYS: the store's commits, counted and timed", async () => {
  await using b = await mqttBroker({ mqttSysInterval: 1 });
  await using pub = await client(b, 5, "commits-pub");
  for (let i = 0; i < 5; i++) await pub.publish("durable/t", `m${i}`, { qos: 1 });
  await using sys = await client(b, 5, "commits-sys");
  await sys.subscribe("$SYS/broker/store/commits/#", { qos: 0 });
  const figures = new Map<string, string>();
  const deadline = Date.now() + 3500;
  // The retained copies first, then a live round: read until a round has every figure.
  while (figures.size < 5 || Number(figures.get("count")) < 5) {
    const m = await sys.next(Math.max(1, deadline - Date.now()));
    figures.set(m.topic.slice("$SYS/broker/store/commits/".length), m.text);
  }
  assert.deepEqual([...figures.keys()].sort(), [
    "count",
    "latency/max",
    "latency/p50",
    "latency/p99",
    "slow",
  ]);
  assert.equal(figures.get("slow"), "0");
  const [p50, p99, max] = ["latency/p50", "latency/p99", "latency/max"].map((name) => {
    assert.match(figures.get(name) as string, /^\d+\.\d\d$/, name);
    return Number(figures.get(name));
  });
  assert.ok((max as number) > 0, `the slowest commit took ${max} ms`);
  assert.ok((p50 as number) <= (p99 as number) && (p99 as number) <= (max as number));
});

Deno.test("$SYS: a subscriber of $SYS/broker/# gets the broker's figures every interval", async () => {
  await using b = await mqttBroker({ mqttSysInterval: 1 });
  for (const v of LEVELS) {
    await using sys = await client(b, v, `sys${v}`);
    await sys.subscribe("$SYS/broker/#", { qos: 0 });
    const figures = new Map<string, string>();
    const wanted = [
      "uptime",
      "clients/connected",
      "messages/received",
      "messages/sent",
      "bytes/sent",
      "store/messages/count",
      "version",
    ];
    const deadline = Date.now() + 3500;
    while (!wanted.every((w) => figures.has(w))) {
      const m = await sys.next(Math.max(1, deadline - Date.now()));
      assert.ok(m.topic.startsWith("$SYS/broker/"), m.topic);
      figures.set(m.topic.slice("$SYS/broker/".length), m.text);
    }
    assert.match(figures.get("uptime") as string, /^\d+ seconds$/);
    assert.ok(Number(figures.get("clients/connected")) >= 1, `${figures.get("clients/connected")}`);
    for (
      const name of ["messages/received", "messages/sent", "bytes/sent", "store/messages/count"]
    ) {
      assert.match(figures.get(name) as string, /^\d+$/, name);
    }
  }
});
