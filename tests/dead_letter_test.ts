/**
 * The dead letter channel `deadLetterChan`: a topic like any other, written by the
 * broker for rejected input and for deliveries that exhausted their retries.
 */
import assert from "node:assert/strict";
import {
  LineClient,
  loginConsumer,
  publish,
  receive,
  startTestBroker,
  subscriber,
  type TestBroker,
  waitFor,
} from "./helpers.ts";

const DLC = "deadLetterChan";
const REMOTE = /^127\.0\.0\.1:\d+$/;

/** Receives and completes one dead letter; returns its body after checking the PUB. */
async function deadLetter(c: LineClient): Promise<Record<string, unknown>> {
  const pub = await receive(c);
  assert.equal(pub.topic, DLC);
  assert.equal(typeof pub.msgId, "number");
  const msg = pub.msg as Record<string, unknown>;
  assert.ok(typeof msg === "object" && msg !== null && !Array.isArray(msg), "msg is an object");
  assert.equal(typeof msg.detail, "string");
  assert.ok(!Number.isNaN(Date.parse(msg.at as string)), `bad time ${msg.at}`);
  assert.match(msg.at as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  return msg;
}

/** Dead letters currently stored, oldest first. */
async function storedDeadLetters(b: TestBroker): Promise<Record<string, unknown>[]> {
  const log = await b.broker.store.readLog(DLC, 1, 1000);
  return log.map((m) => JSON.parse(new TextDecoder().decode(m.payload)));
}

Deno.test("invalid JSON is dead-lettered with reason, raw line, port, remote, user and time", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using watcher = await subscriber(b, "watcher", DLC);

  await using bob = await loginConsumer(b.consumerPort, "bob");
  await bob.send("{ not json");
  await bob.expect("INVALID JSON");
  const fromConsumer = await deadLetter(watcher);
  assert.equal(fromConsumer.reason, "invalid-json");
  assert.equal(fromConsumer.raw, "{ not json");
  assert.equal(fromConsumer.port, "consumer");
  assert.match(fromConsumer.remote as string, REMOTE);
  assert.equal(fromConsumer.user, "bob");

  await using p = await LineClient.connect(b.publisherPort);
  await p.send("log Irina");
  await p.expect("INVALID JSON");
  const fromPublisher = await deadLetter(watcher);
  assert.equal(fromPublisher.reason, "invalid-json");
  assert.equal(fromPublisher.raw, "log Irina");
  assert.equal(fromPublisher.port, "publisher");
  assert.match(fromPublisher.remote as string, REMOTE);
  assert.equal(fromPublisher.user, undefined);
  await watcher.expectSilence(200);
});

Deno.test("an unknown command is dead-lettered with reason unknown-command", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using watcher = await subscriber(b, "watcher", DLC);
  await using bob = await loginConsumer(b.consumerPort, "bob");
  await bob.send('{"type":"FETCH","topic":"t"}');
  await bob.expect("UNKNOWN COMMAND");
  const d = await deadLetter(watcher);
  assert.equal(d.reason, "unknown-command");
  assert.equal(d.raw, '{"type":"FETCH","topic":"t"}');
  assert.equal(d.port, "consumer");
  assert.equal(d.user, "bob");
  assert.match(d.remote as string, REMOTE);

  await using p = await LineClient.connect(b.publisherPort);
  await p.send("[1,2,3]");
  await p.expect("UNKNOWN COMMAND");
  const d2 = await deadLetter(watcher);
  assert.equal(d2.reason, "unknown-command");
  assert.equal(d2.raw, "[1,2,3]");
  assert.equal(d2.port, "publisher");
});

Deno.test("an invalid command is dead-lettered with reason invalid-command", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using watcher = await subscriber(b, "watcher", DLC);
  await using p = await LineClient.connect(b.publisherPort);
  await p.send('{"type":"PUBREL","msgId":"seven"}');
  await p.expect(/^ERROR: .*"msgId"/);
  const d = await deadLetter(watcher);
  assert.equal(d.reason, "invalid-command");
  assert.equal(d.raw, '{"type":"PUBREL","msgId":"seven"}');
  assert.match(d.detail as string, /msgId/);
  assert.equal(d.port, "publisher");
  assert.match(d.remote as string, REMOTE);
});

Deno.test("a delivery that exhausted its retries is dead-lettered with topic, msgId, subscriber and sends", async () => {
  await using b = await startTestBroker({ retryInterval: 80, retryLimit: 2 });
  await using watcher = await subscriber(b, "watcher", DLC);
  await using slow = await subscriber(b, "slow", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "ignored");
  const pub = `{"msg":"ignored","msgId":${id},"topic":"t","type":"PUB"}`;
  await slow.expect(pub);
  await slow.expect(pub);
  const d = await deadLetter(watcher);
  assert.equal(d.reason, "delivery-exhausted");
  assert.equal(d.topic, "t");
  assert.equal(d.msgId, id);
  assert.equal(d.subscriber, "slow");
  assert.equal(d.sends, 2);
  await slow.expectSilence(200);
});

Deno.test("the dead letter channel keeps only the newest deadLetterMax entries", async () => {
  await using b = await startTestBroker({ deadLetterMax: 3, retryInterval: 2000 }, {
    retentionIntervalMs: 50,
  });
  await using p = await LineClient.connect(b.publisherPort);
  for (let i = 1; i <= 7; i++) {
    await p.send(`bad ${i}`);
    await p.expect("INVALID JSON");
  }
  // Retention deletes the older ones in the background.
  await waitFor(async () => {
    const kept = await storedDeadLetters(b);
    return kept.length === 3 && kept[2]?.raw === "bad 7";
  }, "retention to keep the 3 newest dead letters");
  assert.deepEqual((await storedDeadLetters(b)).map((d) => d.raw), ["bad 5", "bad 6", "bad 7"]);

  await using watcher = await subscriber(b, "watcher", DLC);
  for (const raw of ["bad 5", "bad 6", "bad 7"]) assert.equal((await deadLetter(watcher)).raw, raw);
  await watcher.expectSilence(200);
});

Deno.test("a new subscriber of deadLetterChan receives the recent dead letters kept", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 });
  await using p = await LineClient.connect(b.publisherPort);
  await p.send("first bad line");
  await p.expect("INVALID JSON");
  await p.send('{"type":"NOPE"}');
  await p.expect("UNKNOWN COMMAND");
  await waitFor(async () => (await storedDeadLetters(b)).length === 2, "2 dead letters stored");

  await using watcher = await subscriber(b, "watcher", DLC);
  const first = await deadLetter(watcher);
  assert.equal(first.reason, "invalid-json");
  assert.equal(first.raw, "first bad line");
  const second = await deadLetter(watcher);
  assert.equal(second.reason, "unknown-command");
  // ...then the live ones as they come.
  await p.send("third bad line");
  await p.expect("INVALID JSON");
  assert.equal((await deadLetter(watcher)).raw, "third bad line");
  await watcher.expectSilence(200);
});
