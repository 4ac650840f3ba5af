/**
 * MQTT sessions, black box, at protocol level 4 (3.1.1) and 5 (5.0): clean versus
 * persistent sessions across a disconnect and a graceful broker restart, Session Present,
 * v5 Session Expiry, takeover, redelivery with DUP of what the client did not
 * acknowledge, and inbound QoS 2 duplicates stored once (also across a restart).
 *
 * MQTT.js is the client where it can be; a raw socket client where the test must
 * withhold acknowledgements or repeat a packet.
 */
import assert from "node:assert/strict";
import type { BrokerConfig } from "../src/config.ts";
import type { Packet } from "../src/transport/mqtt_codec.ts";
import { startTestBroker, type TestBroker, waitFor } from "./helpers.ts";
import {
  Client,
  type Level,
  LEVELS,
  persistent,
  RawClient,
  sidOf,
  sleep,
  withDataDir,
} from "./mqtt_clients.ts";

/** How long to watch for messages that must not come. */
const QUIET_MS = 200;

const decoder = new TextDecoder();

function mqttBroker(config: Partial<BrokerConfig> = {}): Promise<TestBroker> {
  return startTestBroker({ mqttPort: -1, ...config });
}

/** Waits until the broker has noticed that `clientId` is gone (its session detached). */
async function detached(b: TestBroker, clientId: string): Promise<void> {
  await waitFor(
    () => !b.broker.sessions.live(sidOf(clientId))?.connected,
    `${clientId} to be detached`,
  );
}

/** Raw CONNECT fields of a persistent session at `level`. */
function rawPersistent(level: Level, clientId: string) {
  return level === 5
    ? { clientId, clean: false, properties: { sessionExpiryInterval: 300 } }
    : { clientId, clean: false };
}

const textOf = (p: Extract<Packet, { cmd: "publish" }>): string =>
  decoder.decode(p.payload as Uint8Array);

// --- clean and persistent sessions ----------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} a clean session (Clean Start) discards the stored session`, async () => {
    await using b = await mqttBroker();
    const id = `cs-${v}`;
    {
      await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
      assert.deepEqual(await c.subscribe({ "cs/t": 1 }), [1]);
    }
    await detached(b, id);
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await pub.publish("cs/t", "while away", { qos: 1 });
    {
      // v5: Clean Start with an expiry: the old session goes, a new persistent one starts.
      const opts = v === 5
        ? { clean: true, properties: { sessionExpiryInterval: 300 } }
        : { clean: true };
      await using c = await Client.open(b.mqttPort, v, { clientId: id, ...opts });
      assert.equal(c.connack.sessionPresent, false);
      await c.subscribe({ "cs/marker": 1 });
      await pub.publish("cs/t", "after", { qos: 1 });
      await pub.publish("cs/marker", "marker", { qos: 1 });
      await c.waitMessages(1);
      await sleep(QUIET_MS);
      // Neither the queued message nor the old subscription survived.
      assert.deepEqual(c.messages.map((m) => m.topic), ["cs/marker"]);
    }
    await detached(b, id);
    await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
    // 3.1.1 clean session ends with its connection; the v5 one above was kept.
    assert.equal(c.connack.sessionPresent, v === 5);
    await sleep(QUIET_MS);
    assert.deepEqual(c.messages, []);
  });

  Deno.test(`v${v} a persistent session keeps subscriptions and QoS 1/2 messages while offline`, async () => {
    await using b = await mqttBroker();
    const id = `ps-${v}`;
    {
      await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
      assert.equal(c.connack.sessionPresent, false);
      assert.deepEqual(await c.subscribe({ "ps/1": 1, "ps/2": 2 }), [1, 2]);
    }
    await detached(b, id);
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    for (let i = 0; i < 5; i++) {
      await pub.publish("ps/1", `one ${i}`, { qos: 1 });
      await pub.publish("ps/2", `two ${i}`, { qos: 2 });
    }
    await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
    assert.equal(c.connack.sessionPresent, true);
    await c.waitMessages(10);
    await sleep(QUIET_MS);
    assert.equal(c.messages.length, 10, "a message arrived twice");
    assert.deepEqual(c.wireTextsOn("ps/1"), [0, 1, 2, 3, 4].map((i) => `one ${i}`));
    assert.deepEqual(c.wireTextsOn("ps/2"), [0, 1, 2, 3, 4].map((i) => `two ${i}`));
    for (const p of c.wire) assert.equal(p.qos, p.topic === "ps/1" ? 1 : 2);
    // The subscriptions are live again without a SUBSCRIBE.
    await pub.publish("ps/2", "live", { qos: 2 });
    await waitFor(() => c.textsOn("ps/2").includes("live"), "the live message");
    await waitFor(
      () => b.broker.sessions.live(sidOf(id))?.inflightCount === 0,
      "every message acknowledged",
    );
  });

  Deno.test(`v${v} a persistent session survives a graceful broker restart`, async () => {
    await withDataDir(async (dataDir) => {
      const id = `rs-${v}`;
      const start = () => mqttBroker({ dataDir });
      {
        await using b = await start();
        {
          await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
          assert.deepEqual(await c.subscribe({ "rs/1": 1, "rs/2": 2 }), [1, 2]);
        }
        await detached(b, id);
        await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
        for (let i = 0; i < 3; i++) {
          await pub.publish("rs/1", `one ${i}`, { qos: 1 });
          await pub.publish("rs/2", `two ${i}`, { qos: 2 });
        }
      }
      {
        await using b = await start();
        await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
        assert.equal(c.connack.sessionPresent, true);
        await c.waitMessages(6);
        // Subscriptions came back from the store too.
        await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
        await pub.publish("rs/1", "after the restart", { qos: 1 });
        await c.waitMessages(7);
        await sleep(QUIET_MS);
        assert.equal(c.messages.length, 7);
        assert.deepEqual(c.wireTextsOn("rs/1"), ["one 0", "one 1", "one 2", "after the restart"]);
        assert.deepEqual(c.wireTextsOn("rs/2"), ["two 0", "two 1", "two 2"]);
        await waitFor(
          () => b.broker.sessions.live(sidOf(id))?.inflightCount === 0,
          "every message acknowledged",
        );
      }
      {
        // What was acknowledged before this restart is not sent again.
        await using b = await start();
        await using c = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
        assert.equal(c.connack.sessionPresent, true);
        await sleep(QUIET_MS);
        assert.deepEqual(c.messages, []);
      }
    });
  });
}

Deno.test("v5 Session Expiry Interval 1 s: the session is gone soon after, a longer one stays", async () => {
  await using b = await mqttBroker();
  for (const [id, expiry] of [["short", 1], ["long", 300]] as const) {
    await using c = await Client.open(b.mqttPort, 5, { clientId: id, ...persistent(5, expiry) });
    await c.subscribe({ "ex/t": 1 });
  }
  const gone = Date.now();
  await using pub = await Client.open(b.mqttPort, 5, { clientId: "pub" });
  await pub.publish("ex/t", "queued", { qos: 1 });
  // Expiry runs on a 1 s tick: allow up to 2.5 s after the disconnect, then check.
  await waitFor(() => b.broker.sessions.count === 2, "the short session to expire", 3000);
  const after = Date.now() - gone;
  assert.ok(after >= 900, `the session expired after ${after} ms, before its 1 s`);
  {
    await using c = await Client.open(b.mqttPort, 5, { clientId: "short", ...persistent(5, 1) });
    assert.equal(c.connack.sessionPresent, false);
    await sleep(QUIET_MS);
    assert.deepEqual(c.messages, []);
  }
  await using c = await Client.open(b.mqttPort, 5, { clientId: "long", ...persistent(5) });
  assert.equal(c.connack.sessionPresent, true);
  assert.deepEqual((await c.waitMessages(1)).map((m) => m.text), ["queued"]);
});

for (const v of LEVELS) {
  Deno.test(`v${v} takeover: a second CONNECT with the same id closes the first`, async () => {
    await using b = await mqttBroker();
    const id = `twice-${v}`;
    await using first = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
    await first.subscribe({ "to/t": 1 });
    await using second = await Client.open(b.mqttPort, v, { clientId: id, ...persistent(v) });
    // The second connection takes the session over, with its subscription.
    assert.equal(second.connack.sessionPresent, true);
    await first.expectClosed();
    if (v === 5) assert.equal(first.disconnects.at(-1)?.reasonCode, 0x8e); // Session taken over
    await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
    await pub.publish("to/t", "for the second", { qos: 1 });
    await second.waitMessages(1);
    await sleep(QUIET_MS);
    assert.deepEqual(second.messages.map((m) => m.text), ["for the second"]);
    assert.deepEqual(first.messages, []);
    assert.ok(second.mqtt.connected && !second.isClosed);
    assert.ok(b.broker.sessions.live(sidOf(id))?.connected);
  });
}

// --- redelivery (raw client: it decides when to acknowledge) ---------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} an unacknowledged QoS 1 PUBLISH comes again with DUP and its packet id`, async () => {
    await withDataDir(async (dataDir) => {
      const id = `dup1-${v}`;
      const start = () => mqttBroker({ dataDir });
      let tag: number;
      {
        await using b = await start();
        {
          const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
          await using _ = raw;
          assert.equal(connack.sessionPresent, false);
          await raw.send({
            cmd: "subscribe",
            messageId: 1,
            subscriptions: [{ topic: "dup/t", qos: 1 }],
          });
          assert.deepEqual((await raw.expect("suback")).granted, [1]);
          await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
          await pub.publish("dup/t", "unacked", { qos: 1 });
          await pub.publish("dup/t", "next", { qos: 1 });
          const p = await raw.expect("publish");
          assert.equal(textOf(p), "unacked");
          assert.equal(p.dup, false);
          assert.equal(p.qos, 1);
          tag = p.messageId as number;
          // Window per session: "next" also goes out (it is not acknowledged either).
          const q = await raw.expect("publish");
          assert.equal(textOf(q), "next");
          // No PUBACK; the socket just goes.
        }
        await detached(b, id);
        {
          const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
          await using _ = raw;
          assert.equal(connack.sessionPresent, true);
          const p = await raw.expect("publish");
          assert.deepEqual([textOf(p), p.dup, p.messageId, p.qos], ["unacked", true, tag, 1]);
          const q = await raw.expect("publish");
          assert.equal(textOf(q), "next");
          assert.equal(q.dup, true);
          // Only the second is acknowledged this time.
          await raw.send({ cmd: "puback", messageId: q.messageId as number });
          await raw.expectSilence(QUIET_MS);
          await raw.disconnect();
        }
        await detached(b, id);
      }
      // After a graceful restart the first is still owed, with the same identifier.
      await using b = await start();
      {
        const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
        await using _ = raw;
        assert.equal(connack.sessionPresent, true);
        const p = await raw.expect("publish");
        assert.deepEqual([textOf(p), p.dup, p.messageId], ["unacked", true, tag]);
        await raw.send({ cmd: "puback", messageId: tag });
        await raw.expectSilence(QUIET_MS);
        await raw.disconnect();
      }
      await detached(b, id);
      // Acknowledged: never sent again.
      const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
      await using _ = raw;
      assert.equal(connack.sessionPresent, true);
      await raw.expectSilence(QUIET_MS);
    });
  });

  Deno.test(`v${v} an unfinished outbound QoS 2 resumes: PUBLISH with DUP, then PUBREL`, async () => {
    await using b = await mqttBroker();
    const id = `dup2-${v}`;
    const reconnect = async () => {
      await detached(b, id);
      const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
      assert.equal(connack.sessionPresent, true);
      return raw;
    };
    let tag: number;
    {
      const { raw } = await RawClient.open(b.mqttPort, v, rawPersistent(v, id));
      await using _ = raw;
      await raw.send({
        cmd: "subscribe",
        messageId: 1,
        subscriptions: [{ topic: "dup/q2", qos: 2 }],
      });
      assert.deepEqual((await raw.expect("suback")).granted, [2]);
      await using pub = await Client.open(b.mqttPort, v, { clientId: `pub-${v}` });
      await pub.publish("dup/q2", "exactly once", { qos: 2 });
      const p = await raw.expect("publish");
      assert.deepEqual([textOf(p), p.dup, p.qos], ["exactly once", false, 2]);
      tag = p.messageId as number;
    }
    {
      // No PUBREC was sent: the PUBLISH comes again.
      await using raw = await reconnect();
      const p = await raw.expect("publish");
      assert.deepEqual([textOf(p), p.dup, p.messageId], ["exactly once", true, tag]);
      await raw.send({ cmd: "pubrec", messageId: tag });
      assert.equal((await raw.expect("pubrel")).messageId, tag);
      // No PUBCOMP either.
    }
    {
      // PUBREC was received: only the PUBREL is sent again, never the message.
      await using raw = await reconnect();
      assert.equal((await raw.expect("pubrel")).messageId, tag);
      await raw.send({ cmd: "pubcomp", messageId: tag });
      await raw.expectSilence(QUIET_MS);
      await raw.disconnect();
    }
    await using raw = await reconnect();
    await raw.expectSilence(QUIET_MS);
  });
}

// --- inbound QoS 2 duplicates ----------------------------------------------------------------

for (const v of LEVELS) {
  Deno.test(`v${v} an inbound QoS 2 PUBLISH repeated before PUBREL is stored once`, async () => {
    await using b = await mqttBroker();
    await using sub = await Client.open(b.mqttPort, v, { clientId: `sub-${v}` });
    await sub.subscribe({ "in/t": 2 });
    const { raw } = await RawClient.open(b.mqttPort, v, { clientId: `raw-${v}` });
    await using _ = raw;
    const publish = { cmd: "publish", topic: "in/t", qos: 2, messageId: 7, retain: false } as const;
    await raw.send({ ...publish, payload: "once", dup: false });
    assert.equal((await raw.expect("pubrec")).messageId, 7);
    await raw.send({ ...publish, payload: "once", dup: true });
    assert.equal((await raw.expect("pubrec")).messageId, 7);
    await raw.send({ cmd: "pubrel", messageId: 7 });
    assert.equal((await raw.expect("pubcomp")).messageId, 7);
    await sub.waitMessages(1);
    // Identifier 7 is free again after PUBCOMP: the next PUBLISH with it is a new message.
    await raw.send({ ...publish, payload: "again", dup: false });
    assert.equal((await raw.expect("pubrec")).messageId, 7);
    await raw.send({ cmd: "pubrel", messageId: 7 });
    assert.equal((await raw.expect("pubcomp")).messageId, 7);
    await sub.waitMessages(2);
    await sleep(QUIET_MS);
    assert.deepEqual(sub.messages.map((m) => m.text), ["once", "again"]);
  });

  Deno.test(`v${v} an inbound QoS 2 PUBLISH repeated after a restart is stored once`, async () => {
    await withDataDir(async (dataDir) => {
      const start = () => mqttBroker({ dataDir });
      const subId = `sub-${v}`;
      const pubId = `raw-${v}`;
      const publish = {
        cmd: "publish",
        topic: "in/t",
        payload: "across",
        qos: 2,
        messageId: 7,
        retain: false,
      } as const;
      {
        await using b = await start();
        {
          await using sub = await Client.open(b.mqttPort, v, { clientId: subId, ...persistent(v) });
          await sub.subscribe({ "in/t": 2 });
        }
        const { raw } = await RawClient.open(b.mqttPort, v, rawPersistent(v, pubId));
        await using _ = raw;
        await raw.send({ ...publish, dup: false });
        assert.equal((await raw.expect("pubrec")).messageId, 7);
        // The broker stops before the PUBREL.
      }
      await using b = await start();
      {
        const { raw, connack } = await RawClient.open(b.mqttPort, v, rawPersistent(v, pubId));
        await using _ = raw;
        assert.equal(connack.sessionPresent, true);
        // The client did not see PUBCOMP, so it sends the PUBLISH again (DUP), then PUBREL.
        await raw.send({ ...publish, dup: true });
        assert.equal((await raw.expect("pubrec")).messageId, 7);
        await raw.send({ cmd: "pubrel", messageId: 7 });
        assert.equal((await raw.expect("pubcomp")).messageId, 7);
        await raw.disconnect();
      }
      await using sub = await Client.open(b.mqttPort, v, { clientId: subId, ...persistent(v) });
      assert.equal(sub.connack.sessionPresent, true);
      await sub.waitMessages(1);
      await sleep(QUIET_MS);
      assert.deepEqual(sub.messages.map((m) => m.text), ["across"]);
    });
  });
}
