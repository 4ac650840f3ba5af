import assert from "node:assert/strict";
import type { StoredMessage } from "../../store/store.ts";
import { encodePacket, type OutboundPacket } from "../../transport/mqtt_codec.ts";
import { sharedPublish } from "./publish_cache.ts";

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
          `${version}/${qos}`,
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
      `${version}/0`,
      () => packet(0, undefined, false),
      version,
      null,
      false,
    );
    assert.deepEqual(qos0, encodePacket(packet(0, undefined, false), version));
  }
});

Deno.test("receivers get their own copies: one's identifier does not leak into another's", () => {
  const a = sharedPublish(message, "4/1/x", () => packet(1, 1, false), 4, 7, false);
  const b = sharedPublish(message, "4/1/x", () => packet(1, 1, false), 4, 9, false);
  assert.notEqual(a, b);
  assert.deepEqual(a, encodePacket(packet(1, 7, false), 4));
  assert.deepEqual(b, encodePacket(packet(1, 9, false), 4));
});
