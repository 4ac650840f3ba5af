import assert from "node:assert/strict";
import fc from "fast-check";
import { compactMessage, logSegment, segmentElement } from "./records.ts";
import type { StoredMessage } from "./store.ts";

Deno.test("a compact message reads back as the message, with every absent field left out at the end", () => {
  const message = fc.record({
    id: fc.integer({ min: 1, max: 2 ** 40 }),
    seq: fc.nat(),
    topic: fc.constant("a/b"),
    payload: fc.uint8Array({ maxLength: 50 }),
    format: fc.constantFrom("text" as const, "json" as const, "binary" as const),
    publishedAt: fc.nat(),
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    retain: fc.constant(true),
    from: fc.string({ maxLength: 10 }),
    expiresAt: fc.nat(),
    props: fc.record({ contentType: fc.string({ maxLength: 5 }) }, { requiredKeys: [] }),
  }, { requiredKeys: ["id", "seq", "topic", "payload", "format", "publishedAt"] });
  fc.assert(
    fc.property(message, (m) => {
      const c = compactMessage(m as StoredMessage);
      assert.ok(c.length >= 5 && c.length <= 10);
      assert.notEqual(c[c.length - 1], undefined, "no absent field at the end");
      const back = segmentElement("a/b", c);
      assert.deepEqual(back, { ...m }); // (fast-check makes records without a prototype)
      assert.ok(logSegment.safeParse([back]).success);
    }),
    { numRuns: 500 },
  );
});

Deno.test("a damaged compact message fails the segment's check; a message object passes through", () => {
  const good = [1, 2, 3, new Uint8Array([1]), 0];
  assert.ok(logSegment.safeParse([segmentElement("t", good)]).success);
  for (
    const bad of [[1, 2, 3, new Uint8Array([1]), 9], [1, 2, 3, "x", 0], [1, 2, 3], [
      ...good,
      1,
      true,
      "f",
      4,
      {},
      "extra",
    ]]
  ) {
    assert.equal(
      logSegment.safeParse([segmentElement("t", bad)]).success,
      false,
      JSON.stringify(bad),
    );
  }
  const object = {
    id: 1,
    seq: 2,
    topic: "t",
    payload: new Uint8Array(),
    format: "text",
    publishedAt: 3,
  };
  assert.equal(segmentElement("other", object), object);
});
