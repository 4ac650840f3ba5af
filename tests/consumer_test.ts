/**
 * Black-box tests of the consumer port (4040): login, SUB/UNSUB, and the subscriber's
 * half of QoS 2 (PUB → PUBREC → PUBREL → PUBCOMP), over real sockets.
 */
import assert from "node:assert/strict";
import {
  json,
  LineClient,
  loginConsumer,
  publish,
  receive,
  startTestBroker,
  subscriber,
} from "./helpers.ts";

/** Completes an already received PUB with PUBREC/PUBCOMP. */
async function complete(c: LineClient, pub: Record<string, unknown>): Promise<void> {
  await c.send(json({ type: "PUBREC", msgId: pub.msgId, topic: pub.topic }));
  await c.expect("OK");
  await c.expect(`{"msgId":${pub.msgId},"type":"PUBREL"}`);
  await c.send(json({ type: "PUBCOMP", msgId: pub.msgId, topic: pub.topic }));
  await c.expect("OK");
}

Deno.test("a new consumer connection is greeted with 'Please login!'", async () => {
  await using b = await startTestBroker();
  await using c = await LineClient.connect(b.consumerPort);
  await c.expect("Please login!");
  await c.expectSilence(100);
});

Deno.test("lines sent before logging in are answered 'Please login!'", async () => {
  await using b = await startTestBroker();
  await using c = await LineClient.connect(b.consumerPort);
  await c.expect("Please login!");
  await c.send(json({ type: "SUB", topic: "t" }));
  await c.expect("Please login!");
  await c.send("hello");
  await c.expect("Please login!");
  await c.send("log");
  await c.expect("Please login!");
  // Still allowed to log in afterwards.
  await c.send("log Ann");
  await c.expect("Successfully logged in!");
});

Deno.test("after 5 failed login attempts an error line is sent and the connection closes", async () => {
  await using b = await startTestBroker();
  assert.equal(b.config.loginAttempts, 5);
  await using c = await LineClient.connect(b.consumerPort);
  await c.expect("Please login!");
  for (let i = 1; i <= 4; i++) {
    await c.send(`attempt ${i}`);
    await c.expect("Please login!");
  }
  await c.send("attempt 5");
  await c.expect(/^ERROR: .*5 attempts/);
  await c.expectClosed();
});

Deno.test("the number of login attempts follows the loginAttempts setting", async () => {
  await using b = await startTestBroker({ loginAttempts: 2 });
  await using c = await LineClient.connect(b.consumerPort);
  await c.expect("Please login!");
  await c.send("nope");
  await c.expect("Please login!");
  await c.send("nope again");
  await c.expect(/^ERROR: .*2 attempts/);
  await c.expectClosed();
});

Deno.test("an invalid username is answered with an error line", async () => {
  await using b = await startTestBroker();
  await using c = await LineClient.connect(b.consumerPort);
  await c.expect("Please login!");
  await c.send("log bad name!");
  await c.expect(/^ERROR: invalid username "bad name!"/);
  await c.send(`log ${"x".repeat(65)}`);
  await c.expect(/^ERROR: invalid username/);
  // The connection stays usable for a valid login.
  await c.send("log good_name");
  await c.expect("Successfully logged in!");
});

Deno.test("a second live connection for the same username gets an error and is closed; the first keeps working", async () => {
  await using b = await startTestBroker();
  await using first = await subscriber(b, "alice", "t");
  await using second = await LineClient.connect(b.consumerPort);
  await second.expect("Please login!");
  await second.send("log alice");
  await second.expect(/^ERROR: .*alice.*already logged in/);
  await second.expectClosed();

  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "still here");
  const got = await receive(first);
  assert.equal(got.msgId, id);
  assert.equal(got.msg, "still here");
  assert.deepEqual(b.broker.sessionNames, ["alice"]);
});

Deno.test("SUB and UNSUB answer OK", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "ann");
  await c.send(json({ type: "SUB", topic: "news" }));
  await c.expect("OK");
  // Subscribing again to the same topic is harmless.
  await c.send(json({ type: "SUB", topic: "news" }));
  await c.expect("OK");
  await c.send(json({ type: "UNSUB", topic: "news" }));
  await c.expect("OK");
});

Deno.test("UNSUB of a topic not subscribed answers an error", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "ann");
  await c.send(json({ type: "UNSUB", topic: "never" }));
  await c.expect(/^ERROR: not subscribed to topic "never"/);
  // ...also after an UNSUB already removed it.
  await c.send(json({ type: "SUB", topic: "once" }));
  await c.expect("OK");
  await c.send(json({ type: "UNSUB", topic: "once" }));
  await c.expect("OK");
  await c.send(json({ type: "UNSUB", topic: "once" }));
  await c.expect(/^ERROR: not subscribed to topic "once"/);
});

Deno.test("SUB to an invalid topic name answers an error naming the problem", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "ann");
  const cases: [string, RegExp][] = [
    ["", /^ERROR: .*empty/],
    ["a/#", /^ERROR: .*'#'/],
    ["a/+/b", /^ERROR: .*'\+'/],
    ["$SYS", /^ERROR: .*start with '\$'/],
    ["a\u0001b", /^ERROR: .*control characters/],
    ["tab\there", /^ERROR: .*control characters/],
    ["x".repeat(257), /^ERROR: .*longer than 256 bytes/],
  ];
  for (const [topic, error] of cases) {
    await c.send(json({ type: "SUB", topic }));
    await c.expect(error);
  }
  await c.send(json({ type: "SUB" }));
  await c.expect(/^ERROR: .*"topic" is missing/);
  await c.send(json({ type: "SUB", topic: 5 }));
  await c.expect(/^ERROR: .*"topic"/);
  // None of them became a subscription.
  assert.deepEqual(await b.broker.store.loadSubscriberTopics("ann"), []);
});

Deno.test("PUBREC and PUBCOMP with an unknown msgId answer an error", async () => {
  await using b = await startTestBroker();
  await using c = await subscriber(b, "ann", "t");
  await c.send(json({ type: "PUBREC", msgId: 987654, topic: "t" }));
  await c.expect(/^ERROR: .*msgId 987654/);
  await c.send(json({ type: "PUBREC", msgId: 987654 }));
  await c.expect(/^ERROR: .*msgId 987654/);
  await c.send(json({ type: "PUBCOMP", msgId: 987654, topic: "t" }));
  await c.expect(/^ERROR: .*msgId 987654/);
  await c.send(json({ type: "PUBCOMP", msgId: 987654 }));
  await c.expect(/^ERROR: .*msgId 987654/);
});

Deno.test("PUBCOMP before PUBREC answers an error and the message stays in flight", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "m");
  const pub = await c.expectJson();
  assert.equal(pub.msgId, id);
  await c.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
  await c.expect(/^ERROR: .*msgId/);
  await complete(c, pub);
});

Deno.test("PUBREC with a missing or non-integer msgId answers an error naming msgId", async () => {
  await using b = await startTestBroker();
  await using c = await subscriber(b, "ann", "t");
  const bad: Record<string, unknown>[] = [
    { type: "PUBREC", topic: "t" },
    { type: "PUBREC", msgId: 1.5, topic: "t" },
    { type: "PUBREC", msgId: "4", topic: "t" },
    { type: "PUBREC", msgId: -3, topic: "t" },
    { type: "PUBREC", msgId: null },
    { type: "PUBCOMP", topic: "t" },
    { type: "PUBCOMP", msgId: 2.25 },
  ];
  for (const command of bad) {
    await c.send(json(command));
    await c.expect(/^ERROR: .*"msgId"/);
  }
  await c.send(json({ type: "PUBREC", topic: "t" }));
  await c.expect(/"msgId" is missing/);
});

Deno.test("delivery is in publish order with one message in flight per consumer and topic", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const ids = [];
  for (const msg of ["one", "two", "three"]) ids.push(await publish(p, "t", msg));

  for (const [i, msg] of ["one", "two", "three"].entries()) {
    const pub = await c.expectJson();
    assert.deepEqual(pub, { type: "PUB", topic: "t", msg, msgId: ids[i] });
    // Nothing else comes until this one is complete.
    await c.expectSilence(150);
    await complete(c, pub);
  }
  await c.expectSilence(150);
});

Deno.test("after PUBREC without PUBCOMP the broker re-sends PUBREL every retry interval", async () => {
  await using b = await startTestBroker({ retryInterval: 100, retryLimit: 5 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "m");
  const pub = await c.expectJson();
  await c.send(json({ type: "PUBREC", msgId: pub.msgId, topic: "t" }));
  await c.expect("OK");
  const release = `{"msgId":${id},"type":"PUBREL"}`;
  await c.expect(release);
  let last = performance.now();
  for (let i = 0; i < 2; i++) {
    await c.expect(release, 1000);
    const now = performance.now();
    assert.ok(now - last >= 70, `PUBREL re-sent after ${now - last} ms, expected ~100 ms`);
    last = now;
  }
  await c.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
  await c.expect("OK");
  await c.expectSilence(300);
});

Deno.test("a repeated PUBREC after the release was sent answers OK and re-sends PUBREL", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "m");
  await c.expectJson();
  const release = `{"msgId":${id},"type":"PUBREL"}`;
  await c.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
  await c.expect("OK");
  await c.expect(release);
  await c.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
  await c.expect("OK");
  await c.expect(release);
  await c.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
  await c.expect("OK");
  await c.expectSilence(200);
});

Deno.test("the topic can be omitted from PUBREC and PUBCOMP", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "a", "b");
  await using p = await LineClient.connect(b.publisherPort);
  const first = await publish(p, "b", "first");
  const second = await publish(p, "b", "second");
  const pub = await c.expectJson();
  assert.equal(pub.msgId, first);
  await c.send(json({ type: "PUBREC", msgId: first }));
  await c.expect("OK");
  await c.expect(`{"msgId":${first},"type":"PUBREL"}`);
  await c.send(json({ type: "PUBCOMP", msgId: first }));
  await c.expect("OK");
  // The completion moved the position: the next message of "b" follows.
  const next = await c.expectJson();
  assert.deepEqual(next, { type: "PUB", topic: "b", msg: "second", msgId: second });
});

Deno.test("a message sent as a JSON value arrives as the same JSON value", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const values: unknown[] = [
    { a: 1 },
    { nested: { list: [1, "two", true, null], n: -2.5 }, "é": "ü€😀" },
    [1, 2, 3],
    42,
    false,
    null,
    "",
    'line\nbreak "quoted"',
  ];
  for (const msg of values) {
    const id = await publish(p, "t", msg);
    const got = await receive(c);
    assert.equal(got.msgId, id);
    assert.deepEqual(got.msg, msg);
  }
});

Deno.test("a string msg with a lone surrogate escape is delivered unchanged or refused, never altered", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  // Valid JSON (RFC 8259 allows any \uXXXX escape) but not valid Unicode text.
  await p.send('{"type":"PUB","topic":"t","msg":"a\\ud800b"}');
  const reply = await p.expect(/^ERROR: |"PUBREC"/);
  if (reply.startsWith("ERROR: ")) return; // refused with an error line: acceptable
  const id = JSON.parse(reply).msgId as number;
  await p.send(json({ type: "PUBREL", msgId: id }));
  await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  const got = await c.expectJson();
  assert.equal(got.msg, "a\ud800b", "the message body was altered in transit");
});
