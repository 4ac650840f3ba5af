/**
 * Flow control toward MQTT subscribers: a subscriber that reads slower than its
 * publishers is paced, not disconnected: messages wait in the topic's log while its
 * connection's output is backed up, whatever their QoS.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import mqtt from "mqtt";
import { createPacketParser, encodePacket, type Packet } from "../src/transport/mqtt_codec.ts";
import type { KvStore } from "../src/store/kv_store.ts";
import { concat, writeStats } from "../src/transport/connection.ts";
import { startTestBroker, waitFor } from "./helpers.ts";

const COUNT = 3000;
const PAYLOAD_BYTES = 2048;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let n = 0; n < bytes.length;) n += await conn.write(bytes.subarray(n));
}

/**
 * A raw 3.1.1 clean-session subscriber to `topic` at QoS 0 that reads only when the test
 * calls `readSome` (so it can stop reading); `got` holds the packets after the SUBACK.
 */
async function rawSubscriber(port: number, clientId: string, topic: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const parser = createPacketParser(4, 1 << 20);
  const got: Packet[] = [];
  const readSome = async () => {
    const buf = new Uint8Array(64 * 1024);
    const n = await conn.read(buf);
    if (n === null) throw new Error("the broker closed the subscriber");
    for (const item of parser.push(buf.subarray(0, n))) {
      assert.equal(item.kind, "packet");
      if (item.kind === "packet") got.push(item.packet);
    }
  };
  await writeAll(
    conn,
    encodePacket(
      {
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 4,
        clean: true,
        clientId,
        keepalive: 0,
      },
      4,
    ),
  );
  await writeAll(
    conn,
    encodePacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos: 0 }] }, 4),
  );
  while (!got.some((p) => p.cmd === "suback")) await readSome();
  got.length = 0;
  return { conn, got, readSome };
}

Deno.test("a QoS 0 subscriber that stops reading is paced, not dropped, and then gets every message in order", async () => {
  // 6 MB of messages against a 64 KiB write buffer: without pacing the broker would
  // close this connection as too slow.
  await using b = await startTestBroker({ mqttPort: -1, writeBufferBytes: 65_536 });
  const port = b.mqttPort as number;
  const { conn: sub, got, readSome } = await rawSubscriber(port, "slow", "flow/t");

  // The publisher sends everything while the subscriber reads nothing.
  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: "fast",
    reconnectPeriod: 0,
  });
  const body = new Uint8Array(PAYLOAD_BYTES);
  for (let i = 0; i < COUNT; i++) {
    new DataView(body.buffer).setUint32(0, i);
    await pub.publishAsync("flow/t", Buffer.from(body), { qos: 1 });
  }
  await waitFor(() => b.broker.metrics.messagesStored >= COUNT, "every message stored", 20_000);
  const session = b.broker.sessions.live("mqtt:slow");
  assert.ok(session?.connected, "the slow subscriber is still connected");

  // Now it reads: every message arrives, in order.
  while (got.length < COUNT) await readSome();
  const order = got.map((p) => {
    assert.equal(p.cmd, "publish");
    const payload = (p as { payload: Uint8Array }).payload;
    return new DataView(payload.buffer, payload.byteOffset).getUint32(0);
  });
  assert.deepEqual(order, Array.from({ length: COUNT }, (_, i) => i));
  sub.close();
  await pub.endAsync();
});

Deno.test("the acknowledgements of messages committed together leave in a few writes, not one each", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  const pub = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const parser = createPacketParser(4, 1 << 20);
    const got: Packet[] = [];
    const readUntil = async (enough: () => boolean) => {
      const buf = new Uint8Array(64 * 1024);
      while (!enough()) {
        const n = await pub.read(buf);
        if (n === null) throw new Error("the broker closed the publisher");
        for (const item of parser.push(buf.subarray(0, n))) {
          if (item.kind === "packet") got.push(item.packet);
        }
      }
    };
    await writeAll(
      pub,
      encodePacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 4,
        clean: true,
        clientId: "burst",
        keepalive: 0,
      }, 4),
    );
    await readUntil(() => got.length === 1);
    // 200 QoS 1 PUBLISHes in one write: stored by a few group commits, each of which
    // makes many PUBACKs ready at once.
    const burst = Array.from({ length: 200 }, (_, i) =>
      encodePacket({
        cmd: "publish",
        topic: "burst/t",
        payload: Buffer.from(`m${i}`),
        qos: 1,
        dup: false,
        retain: false,
        messageId: i + 1,
      }, 4));
    const commits = (b.broker.store as KvStore).commitStats.atomics;
    const writes = writeStats.writes;
    await writeAll(pub, concat(burst));
    await readUntil(() => got.length === 201);
    const acks = got.slice(1);
    assert.deepEqual(
      acks.map((p) => p.cmd === "puback" ? p.messageId : p.cmd),
      burst.map((_, i) => i + 1),
    );
    const used = writeStats.writes - writes;
    const atomics = (b.broker.store as KvStore).commitStats.atomics - commits;
    // At most one write per commit (and a little slack): one per PUBACK before the change.
    assert.ok(used <= atomics + 2, `${used} writes for 200 PUBACKs from ${atomics} commits`);
  } finally {
    pub.close();
  }
});

Deno.test("a clean QoS 0 subscriber far behind messages kept in memory only skips the gap and goes on with the newest", async () => {
  // QoS 0 published, only a clean session subscribed: nothing is stored. The subscriber
  // stops reading while 6,000 messages (more than a topic keeps in memory) go by; when it
  // reads again it may have lost the oldest, but it must not be stuck behind them.
  await using b = await startTestBroker({ mqttPort: -1, writeBufferBytes: 65_536 });
  const port = b.mqttPort as number;
  const { conn: sub, got, readSome } = await rawSubscriber(port, "behind", "gap/t");

  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: "p0",
    reconnectPeriod: 0,
  });
  const total = 6000;
  const body = new Uint8Array(1024);
  for (let i = 0; i < total; i++) {
    new DataView(body.buffer).setUint32(0, i);
    await pub.publishAsync("gap/t", Buffer.from(body), { qos: 0 });
  }
  await pub.publishAsync("gap/t", Buffer.from("last"), { qos: 1 });
  const isLast = (p: Packet) => p.cmd === "publish" && p.payload.length === 4;
  const deadline = Date.now() + 20_000;
  while (!got.some(isLast)) {
    assert.ok(Date.now() < deadline, `the newest message never came (${got.length} received)`);
    await readSome();
  }
  const order = got.filter((p) => !isLast(p)).map((p) => {
    const payload = (p as { payload: Uint8Array }).payload;
    return new DataView(payload.buffer, payload.byteOffset).getUint32(0);
  });
  assert.ok(order.every((n, i) => i === 0 || n > order[i - 1]!), "out of order or repeated");
  assert.ok(order.length >= 1024, `only ${order.length} of ${total} arrived`);
  assert.equal(await b.broker.store.readLog("gap/t", 1, 10).then((l) => l.length), 1); // "last"
  sub.close();
  await pub.endAsync();
});

Deno.test("the stream delay never holds a publisher that waits for each PUBACK", async () => {
  await using b = await startTestBroker({ mqttPort: -1, streamCommitDelay: 100 });
  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${b.mqttPort}`, {
    clientId: "one-by-one",
    reconnectPeriod: 0,
  });
  try {
    // Each message is its own commit, started at once: held for the delay, the 20 would
    // take two seconds.
    const started = performance.now();
    for (let i = 0; i < 20; i++) await pub.publishAsync("stream/one-by-one", `m${i}`, { qos: 1 });
    const took = performance.now() - started;
    assert.ok(took < 1000, `20 publishes one at a time took ${took.toFixed(0)} ms`);
  } finally {
    await pub.endAsync(true);
  }
});
