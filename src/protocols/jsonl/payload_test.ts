import assert from "node:assert/strict";
import type { PayloadFormat, StoredMessage } from "../../store/store.ts";
import { pubLine } from "./commands.ts";
import { bodyJson, encodeBody } from "./payload.ts";

function stored(payload: Uint8Array, format: PayloadFormat): StoredMessage {
  return { id: 4, seq: 1, topic: "meaw", payload, format, publishedAt: 0 };
}

/** msg → stored form → the JSON text a consumer receives → the value it parses. */
function roundTrip(msg: unknown): { format: PayloadFormat; json: string; back: unknown } {
  const { payload, format } = encodeBody(msg);
  const json = bodyJson(stored(payload, format));
  return { format, json, back: JSON.parse(json) };
}

Deno.test("a string msg is stored as its UTF-8 text and comes back as the same string", () => {
  for (const s of ["Hi there!", "", 'line\nbreak "quoted" \\ back', "ünïcödé 🎉 中文", "\u0000"]) {
    const { payload, format } = encodeBody(s);
    assert.equal(format, "text");
    assert.deepEqual(payload, new TextEncoder().encode(s));
    const rt = roundTrip(s);
    assert.equal(rt.back, s);
  }
});

Deno.test("a JSON object msg is stored as JSON text and comes back as the same value", () => {
  for (const v of [{ a: 1, b: [true, null, "x"] }, [1, 2, 3], 42, -0.5, true, false, null, {}]) {
    const { format } = encodeBody(v);
    assert.equal(format, "json");
    const rt = roundTrip(v);
    assert.deepEqual(rt.back, v);
    assert.equal(rt.json, JSON.stringify(v));
  }
});

Deno.test("a delivered text message is the seed's line", () => {
  const { payload, format } = encodeBody("Hi there!");
  const line = pubLine(bodyJson(stored(payload, format)), 4, "meaw");
  assert.equal(line, '{"msg":"Hi there!","msgId":4,"topic":"meaw","type":"PUB"}');
});

Deno.test("binary payloads that are valid UTF-8 are delivered as text", () => {
  const bytes = new TextEncoder().encode("from mqtt ✓");
  assert.equal(bodyJson(stored(bytes, "binary")), JSON.stringify("from mqtt ✓"));
  assert.equal(bodyJson(stored(new Uint8Array(), "binary")), '""');
});

Deno.test("binary payloads that are not UTF-8 are delivered as base64 and decode to the same bytes", () => {
  const bytes = new Uint8Array([0xff, 0x00, 0xc3, 0x28, 0x80, 0xfe, 0x41]);
  const value = JSON.parse(bodyJson(stored(bytes, "binary")));
  assert.deepEqual(Object.keys(value), ["base64"]);
  const back = Uint8Array.from(atob(value.base64), (c) => c.charCodeAt(0));
  assert.deepEqual(back, bytes);
  // Every byte value survives.
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  const allBack = JSON.parse(bodyJson(stored(all, "binary")));
  assert.deepEqual(Uint8Array.from(atob(allBack.base64), (c) => c.charCodeAt(0)), all);
});

Deno.test("a message's JSON is computed once and shared by every subscriber", () => {
  const m = stored(new TextEncoder().encode("x"), "text");
  const first = bodyJson(m);
  // Were it encoded again per call, the changed bytes would show.
  m.payload[0] = "z".charCodeAt(0);
  assert.equal(bodyJson(m), first);
  assert.equal(first, '"x"');
  // Another message with the same bytes is encoded on its own.
  assert.equal(bodyJson(stored(new TextEncoder().encode("z"), "text")), '"z"');
});
