/**
 * An MQTT connection parses its packets from views of one read buffer, which the next
 * read fills again (`SocketConnection.chunkArrived`): whatever the broker keeps of a
 * packet must be copied before that. These tests send each packet in its own read, small
 * enough to arrive whole (a packet split over reads is copied by the parser anyway), and
 * check that what was kept is what was sent.
 */
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { createPacketParser, encodePacket, type Packet } from "../src/transport/mqtt_codec.ts";
import { startTestBroker } from "./helpers.ts";

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let n = 0; n < bytes.length;) n += await conn.write(bytes.subarray(n));
}

/** A raw 3.1.1 or 5.0 client: `send` writes one packet, `next` reads the next one. */
async function rawClient(port: number, version: 4 | 5, connect: Record<string, unknown>) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const parser = createPacketParser(version, 1 << 20);
  const queue: Packet[] = [];
  const buf = new Uint8Array(64 * 1024);
  const next = async (): Promise<Packet> => {
    while (queue.length === 0) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("the broker closed the connection");
      for (const item of parser.push(buf.slice(0, n))) {
        assert.equal(item.kind, "packet");
        if (item.kind === "packet") queue.push(item.packet);
      }
    }
    return queue.shift() as Packet;
  };
  const send = (p: Record<string, unknown>) =>
    writeAll(conn, encodePacket(p as unknown as Packet, version));
  await send({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: version,
    keepalive: 0,
    ...connect,
  });
  assert.equal((await next()).cmd, "connack");
  return { conn, send, next };
}

/** `size` bytes, each `(seed + i) % 251`: payloads of one size that differ everywhere. */
function pattern(seed: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (seed + i) % 251;
  return out;
}

Deno.test("payloads kept for an offline session are whole after later reads reuse the buffer", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  const url = `mqtt://127.0.0.1:${port}`;
  // A persistent session subscribes, then goes away: what follows waits in the log and
  // the topic's memory, not on a socket.
  const sub = await mqtt.connectAsync(url, {
    clientId: "keeper",
    clean: false,
    reconnectPeriod: 0,
  });
  await sub.subscribeAsync("buf/t", { qos: 1 });
  await sub.endAsync();

  // Each PUBLISH in its own read: the next is written only once the last is answered.
  const COUNT = 40;
  const pub = await rawClient(port, 4, { clientId: "writer", clean: true });
  for (let i = 0; i < COUNT; i++) {
    await pub.send({
      cmd: "publish",
      topic: "buf/t",
      qos: 1,
      messageId: i + 1,
      payload: pattern(i, 100),
    });
    const ack = await pub.next();
    assert.equal(ack.cmd, "puback");
  }
  // A retained message, then more reads over the same buffer.
  await pub.send({
    cmd: "publish",
    topic: "buf/r",
    qos: 1,
    messageId: 100,
    retain: true,
    payload: pattern(7, 120),
  });
  assert.equal((await pub.next()).cmd, "puback");
  await pub.send({
    cmd: "publish",
    topic: "buf/other",
    qos: 1,
    messageId: 101,
    payload: pattern(99, 120),
  });
  assert.equal((await pub.next()).cmd, "puback");
  pub.conn.close();

  const got: Uint8Array[] = [];
  let retained: Uint8Array | undefined;
  const back = await mqtt.connectAsync(url, {
    clientId: "keeper",
    clean: false,
    reconnectPeriod: 0,
  });
  back.on("message", (topic, payload) => {
    if (topic === "buf/t") got.push(new Uint8Array(payload));
    else if (topic === "buf/r") retained = new Uint8Array(payload);
  });
  await back.subscribeAsync("buf/r", { qos: 1 });
  const deadline = Date.now() + 5000;
  while ((got.length < COUNT || retained === undefined) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  await back.endAsync();
  assert.equal(got.length, COUNT);
  for (let i = 0; i < COUNT; i++) assert.deepEqual(got[i], pattern(i, 100), `message ${i}`);
  assert.deepEqual(retained, pattern(7, 120));
});

Deno.test("a v5 will and its correlation data are whole after later reads reuse the buffer", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  const watcher = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: "watcher",
    protocolVersion: 5,
    reconnectPeriod: 0,
  });
  let will: { payload: Uint8Array; correlation?: Uint8Array } | undefined;
  watcher.on("message", (_topic, payload, packet) => {
    const c = packet.properties?.correlationData;
    will = { payload: new Uint8Array(payload), correlation: c ? new Uint8Array(c) : undefined };
  });
  await watcher.subscribeAsync("buf/will", { qos: 1 });

  const client = await rawClient(port, 5, {
    clientId: "mortal",
    clean: true,
    will: {
      topic: "buf/will",
      qos: 1,
      retain: false,
      payload: pattern(3, 60),
      properties: { correlationData: pattern(11, 20) },
    },
  });
  // More reads over the buffer the CONNECT came in, then an end without DISCONNECT.
  for (let i = 0; i < 5; i++) {
    await client.send({
      cmd: "publish",
      topic: "buf/x",
      qos: 1,
      messageId: i + 1,
      payload: pattern(200 + i, 100),
    });
    assert.equal((await client.next()).cmd, "puback");
  }
  client.conn.close();
  const deadline = Date.now() + 5000;
  while (will === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await watcher.endAsync();
  assert.ok(will, "the will was published");
  assert.deepEqual(will.payload, pattern(3, 60));
  assert.deepEqual(will.correlation, pattern(11, 20));
});
