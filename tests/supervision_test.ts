/**
 * Supervision: failures injected on purpose into a topic actor or a consumer's command
 * handler are caught, the actor is restarted from durable state, and everything else
 * keeps running.
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
  waitFor,
} from "./helpers.ts";

Deno.test("a topic that fails once is restarted: the failed PUBREL answers an error, a second one delivers the message once", async () => {
  let failures = 1;
  await using b = await startTestBroker({ retryInterval: 2000 }, {
    topicHooks: {
      beforeAppend(topic) {
        if (topic === "fragile" && failures > 0) {
          failures--;
          throw new Error("injected topic failure");
        }
      },
    },
    // A slow first restart leaves time to show that other topics work meanwhile.
    supervisorPolicy: { minBackoffMs: 300 },
  });
  const sup = b.broker.topicSupervisor;
  const restartsBefore = sup.restartCount;
  await using c = await subscriber(b, "ann", "fragile", "calm");
  await using p = await LineClient.connect(b.publisherPort);

  const id = await pubOnly(p, "fragile", "survivor");
  await p.send(json({ type: "PUBREL", msgId: id }));
  await p.expect(new RegExp(`^ERROR: .*msgId ${id}.*PUBREL again`));
  assert.equal(b.broker.pendingCount, 1, "the pending message is kept");

  // While "fragile" restarts, another topic keeps working.
  assert.equal(sup.restartCount, restartsBefore, "restart is still pending");
  const calmId = await publish(p, "calm", "unaffected");
  assert.deepEqual(await receive(c), {
    type: "PUB",
    topic: "calm",
    msg: "unaffected",
    msgId: calmId,
  });

  await waitFor(() => sup.restartCount > restartsBefore, "the topic restart");
  await p.send(json({ type: "PUBREL", msgId: id }));
  await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  assert.equal(b.broker.pendingCount, 0);
  assert.deepEqual(await receive(c), {
    type: "PUB",
    topic: "fragile",
    msg: "survivor",
    msgId: id,
  });
  await c.expectSilence(300);
  // The restarted topic goes on normally.
  const again = await publish(p, "fragile", "after restart");
  assert.equal((await receive(c)).msgId, again);
});

Deno.test("a PUBREL sent while its topic restarts is held and succeeds after the restart", async () => {
  let failures = 1;
  await using b = await startTestBroker({ retryInterval: 2000 }, {
    topicHooks: {
      beforeAppend(topic) {
        if (topic === "fragile" && failures-- > 0) throw new Error("injected topic failure");
      },
    },
    supervisorPolicy: { minBackoffMs: 200 },
  });
  await using c = await subscriber(b, "ann", "fragile");
  await using p = await LineClient.connect(b.publisherPort);
  const first = await pubOnly(p, "fragile", "first");
  const second = await pubOnly(p, "fragile", "second");
  await p.send(json({ type: "PUBREL", msgId: first }));
  await p.expect(/^ERROR: /);
  await p.send(json({ type: "PUBREL", msgId: second }));
  await p.expect(`{"msgId":${second},"type":"PUBCOMP"}`, 3000);
  await p.send(json({ type: "PUBREL", msgId: first }));
  await p.expect(`{"msgId":${first},"type":"PUBCOMP"}`);
  assert.equal((await receive(c)).msgId, second);
  assert.equal((await receive(c)).msgId, first);
  await c.expectSilence(200);
});

Deno.test("a topic that fails more often than the restart intensity is given up; other topics keep working", async () => {
  await using b = await startTestBroker({ retryInterval: 2000 }, {
    topicHooks: {
      beforeAppend(topic) {
        if (topic === "doomed") throw new Error("injected permanent failure");
      },
    },
    supervisorPolicy: { maxRestarts: 2, periodMs: 60_000, minBackoffMs: 5, maxBackoffMs: 20 },
  });
  await using c = await subscriber(b, "ann", "doomed", "fine");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await pubOnly(p, "doomed", "never");

  let reply = "";
  for (let attempt = 0; attempt < 20 && !/unavailable/.test(reply); attempt++) {
    await p.send(json({ type: "PUBREL", msgId: id }));
    reply = await p.expect(/^ERROR: /);
    await new Promise((r) => setTimeout(r, 30));
  }
  assert.match(reply, /topic "doomed" is unavailable/);
  // Given up for good: later PUBRELs are refused the same way, at once.
  await p.send(json({ type: "PUBREL", msgId: id }));
  await p.expect(/^ERROR: .*topic "doomed" is unavailable/);
  assert.equal(b.broker.pendingCount, 1, "the message is still pending, not lost");

  const ok = await publish(p, "fine", "still fine");
  assert.deepEqual(await receive(c), { type: "PUB", topic: "fine", msg: "still fine", msgId: ok });
  await c.expectSilence(200);
});

Deno.test("a consumer command handler that throws answers an internal error and the rebuilt session redelivers", async () => {
  let failures = 1;
  await using b = await startTestBroker({ retryInterval: 2000 }, {
    jsonlHooks: {
      beforeCommand(port, type) {
        if (port === "consumer" && type === "PUBREC" && failures > 0) {
          failures--;
          throw new Error("injected handler failure");
        }
      },
    },
  });
  await using victim = await subscriber(b, "victim", "t");
  await using other = await subscriber(b, "other", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "t", "m1");
  const pub = `{"msg":"m1","msgId":${id},"topic":"t","type":"PUB"}`;
  await victim.expect(pub);
  await other.expect(pub);

  await victim.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
  await victim.expect(/^ERROR: internal error/);
  // The session was rebuilt from its stored subscription: the message comes again.
  await victim.expect(pub);
  assert.deepEqual(b.broker.sessionNames.sort(), ["other", "victim"]);

  // The other connection was not affected.
  await other.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
  await other.expect("OK");
  await other.expect(`{"msgId":${id},"type":"PUBREL"}`);
  await other.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
  await other.expect("OK");

  // The connection stayed open and the redelivered message can be completed.
  await victim.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
  await victim.expect("OK");
  await victim.expect(`{"msgId":${id},"type":"PUBREL"}`);
  await victim.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
  await victim.expect("OK");
  await victim.expectSilence(200);

  const id2 = await publish(p, "t", "m2");
  assert.equal((await receive(victim)).msgId, id2);
  assert.equal((await receive(other)).msgId, id2);
});

Deno.test("a publisher command handler that throws answers an error and the connection goes on", async () => {
  let failures = 1;
  await using b = await startTestBroker({}, {
    jsonlHooks: {
      beforeCommand(port, type) {
        if (port === "publisher" && type === "PUB" && failures > 0) {
          failures--;
          throw new Error("injected handler failure");
        }
      },
    },
  });
  await using p = await LineClient.connect(b.publisherPort);
  await p.send(json({ type: "PUB", topic: "t", msg: "x" }));
  await p.expect(/^ERROR: .*send PUB again/);
  assert.equal(b.broker.pendingCount, 0);
  await using c = await subscriber(b, "ann", "t");
  const id = await publish(p, "t", "x");
  assert.equal((await receive(c)).msgId, id);
});
