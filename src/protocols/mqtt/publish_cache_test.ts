import assert from "node:assert/strict";
import type { StoredMessage } from "../../store/store.ts";
import { encodePacket, type OutboundPacket } from "../../transport/mqtt_codec.ts";
import {
  cachedEncoding,
  type Encoded,
  publishHead,
  publishVariant,
  shareEncoding,
} from "./publish_cache.ts";
import { concat } from "../../transport/connection.ts";
import { Buffer } from "node:buffer";
import * as mqtt from "mqtt-packet";
import fc from "fast-check";

/**
 * A receiver's packet: the shared bytes with its identifier and DUP written in, as the
 * connection's output queue joins them (`concat` with a patch), or as they are at QoS 0.
 */
function forReceiver(e: Encoded, tag: number | null, dup: boolean): Uint8Array {
  return tag === null ? e.bytes : concat([e.bytes], [0, e.idOffset, tag, dup ? 1 : 0]);
}

function sharedEncoding(
  m: StoredMessage,
  variant: number,
  packet: () => OutboundPacket,
  version: 4 | 5,
): Encoded {
  return cachedEncoding(m, variant) ?? shareEncoding(m, variant, encodePacket(packet(), version));
}

function sharedPublish(
  m: StoredMessage,
  variant: number,
  packet: () => OutboundPacket,
  version: 4 | 5,
  tag: number | null,
  dup: boolean,
): Uint8Array {
  return forReceiver(sharedEncoding(m, variant, packet, version), tag, dup);
}

function cachedPublish(m: StoredMessage, variant: number, tag: number | null, dup: boolean) {
  const e = cachedEncoding(m, variant);
  return e && forReceiver(e, tag, dup);
}

const message: StoredMessage = {
  id: 1,
  seq: 1,
  topic: "fan/out/\u00e9",
  payload: new TextEncoder().encode("x".repeat(300)),
  format: "text",
  publishedAt: 0,
};

function packet(qos: 0 | 1 | 2, messageId: number | undefined, dup: boolean): OutboundPacket {
  return {
    cmd: "publish",
    topic: message.topic,
    payload: message.payload,
    qos,
    dup,
    retain: false,
    messageId,
    properties: { payloadFormatIndicator: true },
  } as OutboundPacket;
}

Deno.test("a shared PUBLISH with its identifier and DUP written in equals a fresh encoding", () => {
  for (const version of [4, 5] as const) {
    for (const qos of [1, 2] as const) {
      for (const [tag, dup] of [[1, false], [258, true], [65535, false]] as const) {
        const shared = sharedPublish(
          message,
          publishVariant(version, qos, false),
          () => packet(qos, 1, false),
          version,
          tag,
          dup,
        );
        assert.deepEqual(shared, encodePacket(packet(qos, tag, dup), version));
      }
    }
    const qos0 = sharedPublish(
      message,
      publishVariant(version, 0, false),
      () => packet(0, undefined, false),
      version,
      null,
      false,
    );
    assert.deepEqual(qos0, encodePacket(packet(0, undefined, false), version));
  }
});

Deno.test("receivers get their own copies: one's identifier does not leak into another's", () => {
  const variant = publishVariant(4, 1, true);
  const a = sharedPublish(message, variant, () => packet(1, 1, false), 4, 7, false);
  const b = cachedPublish(message, variant, 9, false);
  assert.notEqual(a, b);
  assert.deepEqual(a, encodePacket(packet(1, 7, false), 4));
  assert.deepEqual(b, encodePacket(packet(1, 9, false), 4));
});

Deno.test("variants are cached apart, and the cache stays out of the stored message", async () => {
  const fresh: StoredMessage = { ...message, id: 2 };
  const v4 = publishVariant(4, 1, false);
  const v5 = publishVariant(5, 1, false);
  assert.equal(cachedPublish(fresh, v4, 3, false), undefined, "nothing before the first encoding");
  sharedPublish(fresh, v4, () => packet(1, 1, false), 4, 3, false);
  assert.equal(cachedPublish(fresh, v5, 3, false), undefined, "another level is another variant");
  const ids = new Set<number>();
  for (const level of [4, 5] as const) {
    for (const qos of [0, 1, 2] as const) {
      for (const retain of [false, true]) ids.add(publishVariant(level, qos, retain));
    }
  }
  assert.equal(ids.size, 12);
  // A copy of the message, under another topic, does not take the original's encodings.
  const copy: StoredMessage = { ...fresh, topic: "elsewhere" };
  assert.equal(cachedPublish(copy, v4, 3, false), undefined, "a copy has none of its own");
  assert.notEqual(cachedPublish(fresh, v4, 3, false), undefined, "the original keeps its own");
  const kv = await Deno.openKv(":memory:");
  try {
    await kv.set(["m"], fresh);
    // (structuredClone: `message` has encodings of its own from the tests above, and a
    // spread would copy them into the expected value.)
    assert.deepEqual((await kv.get(["m"])).value, structuredClone({ ...message, id: 2 }));
    assert.deepEqual(
      JSON.parse(JSON.stringify(fresh)),
      JSON.parse(JSON.stringify(message.id === 2 ? message : { ...message, id: 2 })),
    );
  } finally {
    kv.close();
  }
});

Deno.test("the output queue writes identifiers and DUP into shared bytes as it joins them, never into the shared bytes", () => {
  const variant = publishVariant(5, 2, false);
  const e = sharedEncoding(message, variant, () => packet(2, 1, false), 5);
  const before = e.bytes.slice();
  const ack = encodePacket({ cmd: "pubrec", messageId: 1 } as OutboundPacket, 5);
  // As a connection joins its queue: part index, offset, identifier, DUP per patch.
  const joined = concat([e.bytes, ack, e.bytes], [
    0,
    e.idOffset,
    300,
    0,
    1,
    2,
    0xfffe,
    0,
    2,
    e.idOffset,
    7,
    1,
  ]);
  assert.deepEqual(
    joined,
    concat([
      encodePacket(packet(2, 300, false), 5),
      encodePacket({ cmd: "pubrec", messageId: 0xfffe } as OutboundPacket, 5),
      encodePacket(packet(2, 7, true), 5),
    ]),
  );
  assert.deepEqual(e.bytes, before);
  // One part and no patch: the part itself, no copy.
  assert.equal(concat([e.bytes], []), e.bytes);
});

Deno.test("a PUBLISH head, its identifier and DUP written in, then the payload, is mqtt-packet's encoding", () => {
  // Payload lengths around the Remaining Length's 1/2/3-byte boundaries, with the head.
  const lengths = fc.oneof(
    fc.nat({ max: 300 }),
    fc.integer({ min: 16_300, max: 16_400 }),
    fc.integer({ min: 2_097_100, max: 2_097_200 }),
  );
  fc.assert(
    fc.property(
      fc.stringMatching(/^[a-z\u00e9/]{1,20}$/),
      lengths,
      fc.constantFrom(4 as const, 5 as const),
      fc.constantFrom(0 as const, 1 as const, 2 as const),
      fc.boolean(),
      fc.boolean(),
      fc.integer({ min: 1, max: 0xffff }),
      (topic, length, level, qos, retain, dup, id) => {
        const payload = new Uint8Array(length).fill(0x5a);
        const head = publishHead(topic, length, publishVariant(level, qos, retain));
        const tag = qos === 0 ? null : id;
        const joined = concat(
          [head.bytes, payload],
          tag === null ? [] : [0, head.idOffset, tag, dup ? 1 : 0],
        );
        const theirs = mqtt.generate({
          cmd: "publish",
          topic,
          payload: Buffer.from(payload),
          qos,
          retain,
          dup: qos > 0 && dup,
          ...(tag === null ? {} : { messageId: tag }),
        } as mqtt.Packet, { protocolVersion: level });
        assert.ok(Buffer.from(joined).equals(theirs));
        // The same head again, from the cache, its identifier's place still 0 after the join.
        assert.equal(publishHead(topic, length, publishVariant(level, qos, retain)), head);
        if (tag !== null) {
          assert.deepEqual([...head.bytes.subarray(head.idOffset, head.idOffset + 2)], [0, 0]);
        }
      },
    ),
    { numRuns: 300 },
  );
  // Another length, level, QoS or RETAIN is another head.
  const a = publishHead("t", 10, publishVariant(4, 1, false));
  assert.notEqual(publishHead("t", 11, publishVariant(4, 1, false)), a);
  assert.notEqual(publishHead("t", 10, publishVariant(5, 1, false)), a);
  assert.notEqual(publishHead("t", 10, publishVariant(4, 2, false)), a);
  assert.notEqual(publishHead("t", 10, publishVariant(4, 1, true)), a);
});
