/**
 * Black-box tests of the publisher port (4041): the publisher's half of QoS 2
 * (PUB → PUBREC, PUBREL → PUBCOMP), over real sockets.
 */
import assert from "node:assert/strict";
import {
  json,
  LineClient,
  publish,
  pubOnly,
  receive,
  startTestBroker,
  subscriber,
} from "./helpers.ts";

const encoder = new TextEncoder();

Deno.test("each PUB gets a PUBREC with a fresh, increasing msgId", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  await using p2 = await LineClient.connect(b.publisherPort);
  const ids: number[] = [];
  for (let i = 0; i < 5; i++) {
    ids.push(await pubOnly(p, "t", `m${i}`));
    ids.push(await pubOnly(p2, "u", `n${i}`)); // ids are broker-wide, across connections
  }
  for (let i = 1; i < ids.length; i++) {
    assert.ok((ids[i] as number) > (ids[i - 1] as number), `ids not increasing: ${ids}`);
  }
  // The same message published twice is two messages with two ids.
  const a = await pubOnly(p, "t", "same");
  const c = await pubOnly(p, "t", "same");
  assert.notEqual(a, c);
});

Deno.test("PUBREL releases exactly once: a repeated PUBREL answers PUBCOMP again and delivers nothing more", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await pubOnly(p, "t", "once");
  for (let i = 0; i < 3; i++) {
    await p.send(json({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  }
  const got = await receive(c);
  assert.deepEqual(got, { type: "PUB", topic: "t", msg: "once", msgId: id });
  await c.expectSilence(300);
  // Pipelined repeats racing the first release are answered alike and publish once.
  const id2 = await pubOnly(p, "t", "raced");
  await p.send(`${json({ type: "PUBREL", msgId: id2 })}\n`.repeat(4), { raw: true });
  for (let i = 0; i < 4; i++) await p.expect(`{"msgId":${id2},"type":"PUBCOMP"}`);
  assert.equal((await receive(c)).msgId, id2);
  await c.expectSilence(300);
});

Deno.test("PUBREL for an unknown msgId answers an error", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "PUBREL", msgId: 424242 }));
  await p.expect(/^ERROR: .*unknown msgId 424242/);
  await p.send(json({ type: "PUBREL" }));
  await p.expect(/^ERROR: .*"msgId" is missing/);
  await p.send(json({ type: "PUBREL", msgId: "1" }));
  await p.expect(/^ERROR: .*"msgId"/);
});

Deno.test("200 pipelined PUB lines in one write get 200 PUBRECs in order with distinct ids", async () => {
  await using b = await startTestBroker();
  await using c = await subscriber(b, "ann", "burst");
  await using p = await LineClient.connect(b.publisherPort);
  let burst = "";
  for (let i = 0; i < 200; i++) burst += json({ type: "PUB", topic: "burst", msg: i }) + "\n";
  await p.sendBytes(encoder.encode(burst));
  const ids: number[] = [];
  for (let i = 0; i < 200; i++) {
    const line = await p.expect(/^\{"msgId":\d+,"type":"PUBREC"\}$/);
    ids.push(JSON.parse(line).msgId);
  }
  await p.expectSilence(100);
  assert.equal(new Set(ids).size, 200);
  for (let i = 1; i < ids.length; i++) {
    assert.ok((ids[i] as number) > (ids[i - 1] as number), `PUBRECs out of order at ${i}`);
  }
  assert.equal(b.broker.pendingCount, 200);
  // The i-th PUBREC belongs to the i-th line: releasing ids in reverse order makes the
  // subscriber see the bodies in reverse order.
  const last = ids.slice(-3).reverse();
  for (const id of last) {
    await p.send(json({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  }
  for (const [k, id] of last.entries()) {
    const got = await receive(c);
    assert.equal(got.msgId, id);
    assert.equal(got.msg, 199 - k);
  }
});

Deno.test("a message bigger than maxMessageBytes is refused with an error and not stored", async () => {
  await using b = await startTestBroker({ maxMessageBytes: 100 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "PUB", topic: "t", msg: "x".repeat(101) }));
  await p.expect(/^ERROR: .*101 bytes.*limit is 100/);
  // Multi-byte characters count in UTF-8 bytes: 34 × "€" is 102 bytes.
  await p.send(json({ type: "PUB", topic: "t", msg: "€".repeat(34) }));
  await p.expect(/^ERROR: .*102 bytes/);
  assert.equal(b.broker.pendingCount, 0);
  // Exactly at the limit is accepted.
  const id = await publish(p, "t", "y".repeat(100));
  const got = await receive(c);
  assert.equal(got.msgId, id);
  assert.equal(got.msg, "y".repeat(100));
  await c.expectSilence(200);
});

Deno.test("PUB to deadLetterChan is refused", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "PUB", topic: "deadLetterChan", msg: "forged" }));
  await p.expect(/^ERROR: .*deadLetterChan/);
  assert.equal(b.broker.pendingCount, 0);
});

Deno.test("PUB without msg answers an error naming msg", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "PUB", topic: "t" }));
  await p.expect(/^ERROR: .*"msg"/);
  await p.send(json({ type: "PUB", msg: "no topic" }));
  await p.expect(/^ERROR: .*"topic"/);
  assert.equal(b.broker.pendingCount, 0);
});

Deno.test("PUB to an invalid topic name answers an error naming the problem", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  const cases: [string, RegExp][] = [
    ["", /^ERROR: .*empty/],
    ["a/#", /^ERROR: .*'#'/],
    ["+", /^ERROR: .*'\+'/],
    ["$SYS/x", /^ERROR: .*'\$'/],
    ["bell\u0007", /^ERROR: .*control characters/],
  ];
  for (const [topic, error] of cases) {
    await p.send(json({ type: "PUB", topic, msg: "m" }));
    await p.expect(error);
  }
  assert.equal(b.broker.pendingCount, 0);
});

Deno.test("a PUBREL from another publisher connection than the PUB's releases the message", async () => {
  await using b = await startTestBroker();
  await using c = await subscriber(b, "ann", "t");
  const p1 = await LineClient.connect(b.publisherPort);
  const id = await pubOnly(p1, "t", "handed over");
  await p1.close(); // the PUB stays pending without its connection
  await using p2 = await LineClient.connect(b.publisherPort);
  await p2.send(json({ type: "PUBREL", msgId: id }));
  await p2.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  const got = await receive(c);
  assert.deepEqual(got, { type: "PUB", topic: "t", msg: "handed over", msgId: id });
});

Deno.test("a PUB not yet released is not delivered to subscribers", async () => {
  await using b = await startTestBroker();
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const held = await pubOnly(p, "t", "held");
  await c.expectSilence(300);
  // A later message released first is delivered first; the held one only once released.
  const later = await publish(p, "t", "later");
  assert.equal((await receive(c)).msgId, later);
  await c.expectSilence(200);
  await p.send(json({ type: "PUBREL", msgId: held }));
  await p.expect(`{"msgId":${held},"type":"PUBCOMP"}`);
  const got = await receive(c);
  assert.deepEqual(got, { type: "PUB", topic: "t", msg: "held", msgId: held });
});

Deno.test("consumer commands on the publisher port are answered with an error", async () => {
  await using b = await startTestBroker();
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "SUB", topic: "t" }));
  await p.expect(/^ERROR: .*consumer/);
  await p.send("not json");
  await p.expect("INVALID JSON");
  await p.send(json({ type: "HELLO" }));
  await p.expect("UNKNOWN COMMAND");
});
