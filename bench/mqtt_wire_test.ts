/**
 * The load generator's hand-made MQTT encoding and frame reader, checked against the
 * broker's codec (npm:mqtt-packet through src/transport/mqtt_codec.ts). Not part of
 * `deno task test` (bench/ is outside its include); run it with
 * `deno test --allow-net --allow-env bench/mqtt_wire_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  createPacketParser,
  encodePacket,
  type IPublishPacket,
  type Packet,
} from "../src/transport/mqtt_codec.ts";
import {
  ACK_BYTES,
  MqttSocket,
  PAYLOAD_BYTES,
  payloadOf,
  payloadSeq,
  payloadTime,
  PUBACK,
  PUBCOMP,
  PublishEncoder,
  PUBREC,
  PUBREL,
  writeAck,
} from "./mqtt_wire.ts";

function decode(bytes: Uint8Array): Packet[] {
  const parser = createPacketParser(4, 1 << 20);
  const out: Packet[] = [];
  for (const item of parser.push(bytes)) {
    assert.equal(item.kind, "packet", JSON.stringify(item));
    if (item.kind === "packet") out.push(item.packet);
  }
  return out;
}

Deno.test("PublishEncoder writes what mqtt-packet encodes, at QoS 0, 1 and 2", () => {
  for (const qos of [0, 1, 2] as const) {
    for (const topic of ["t", "bench/qos", "x".repeat(200)]) {
      const enc = new PublishEncoder(topic, qos);
      const out = new Uint8Array(enc.size + 3);
      const end = enc.write(out, 3, 0x1234, 987_654, 1_790_000_000_123_456);
      assert.equal(end, 3 + enc.size);
      const payload = payloadOf(987_654, 1_790_000_000_123_456);
      const expected = encodePacket(
        {
          cmd: "publish",
          topic,
          qos,
          dup: false,
          retain: false,
          ...(qos > 0 ? { messageId: 0x1234 } : {}),
          payload,
        },
        4,
      );
      assert.deepEqual(out.subarray(3), expected, `qos ${qos} topic ${topic.length} bytes`);
      const [p] = decode(out.subarray(3)) as IPublishPacket[];
      assert.equal(p!.topic, topic);
      assert.equal(p!.payload.length, PAYLOAD_BYTES);
    }
  }
});

Deno.test("payloads carry the sequence number and the timestamp", () => {
  const p = payloadOf(42, 1_790_000_000_654_321);
  assert.equal(p.length, PAYLOAD_BYTES);
  assert.equal(payloadSeq(p, 0), 42);
  assert.equal(payloadTime(p, 0), 1_790_000_000_654_321);
  assert.match(new TextDecoder().decode(p), /^0000000042 1790000000654321 x+$/);
  assert.ok(Number.isNaN(payloadSeq(new TextEncoder().encode("not a payload at all"), 0)));
});

Deno.test("acknowledgements match mqtt-packet's", () => {
  const cmds = { [PUBACK]: "puback", [PUBREC]: "pubrec", [PUBREL]: "pubrel", [PUBCOMP]: "pubcomp" };
  for (const [type, cmd] of Object.entries(cmds)) {
    const out = new Uint8Array(ACK_BYTES);
    writeAck(out, 0, Number(type), 0xbeef);
    const expected = encodePacket({ cmd, messageId: 0xbeef } as Packet, 4);
    assert.deepEqual(out, expected, cmd);
  }
});

Deno.test("the frame reader splits packets across any chunking, and grows for big ones", async () => {
  const big = new PublishEncoder("b".repeat(60_000), 1);
  const small = new PublishEncoder("s", 2);
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 50; i++) {
    const enc = i % 10 === 3 ? big : small;
    const f = new Uint8Array(enc.size);
    enc.write(f, 0, i + 1, i, 1_790_000_000_000_000 + i);
    frames.push(f);
    const ack = new Uint8Array(ACK_BYTES);
    writeAck(ack, 0, PUBREL, i + 1);
    frames.push(ack);
  }
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    all.set(f, at);
    at += f.length;
  }
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const serving = (async () => {
    const conn = await listener.accept();
    // Odd chunk sizes, including single bytes inside the Remaining Length.
    let i = 0;
    for (let k = 0; i < all.length; k++) {
      const n = Math.min(all.length - i, [1, 2, 3, 7, 1000, 65_537][k % 6]!);
      await conn.write(all.subarray(i, i + n));
      i += n;
    }
    conn.close();
  })();
  const sock = await MqttSocket.open(port, 16);
  const seen: { type: number; seq?: number; id: number }[] = [];
  while (
    await sock.read((type, flags, buf, body, end) => {
      if (type === PUBREL) seen.push({ type, id: (buf[body]! << 8) | buf[body + 1]! });
      else {
        const topicLength = (buf[body]! << 8) | buf[body + 1]!;
        const p = body + 2 + topicLength;
        assert.equal((flags >> 1) & 3, topicLength === 1 ? 2 : 1);
        assert.equal(end - p - 2, PAYLOAD_BYTES);
        seen.push({ type, id: (buf[p]! << 8) | buf[p + 1]!, seq: payloadSeq(buf, p + 2) });
      }
    })
  ) { /* until the end of the stream */ }
  sock.close();
  await serving;
  assert.equal(seen.length, 100);
  for (let i = 0; i < 50; i++) {
    assert.deepEqual(seen[2 * i], { type: 3, id: i + 1, seq: i });
    assert.deepEqual(seen[2 * i + 1], { type: PUBREL, id: i + 1 });
  }
});
