/**
 * Durability across a graceful restart: a broker is stopped with `stop()` and a new one
 * is started on the same data directory. (SIGKILL is covered elsewhere.)
 */
import assert from "node:assert/strict";
import type { BrokerConfig } from "../src/config.ts";
import {
  completeAll,
  json,
  LineClient,
  loginConsumer,
  publish,
  pubOnly,
  receive,
  startTestBroker,
  subscriber,
  type TestBroker,
} from "./helpers.ts";

/** Runs `body` with a fresh data directory that is removed afterwards. */
async function withDataDir(body: (dataDir: string) => Promise<void>): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-durability-" });
  try {
    await body(dataDir);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

/** Starts a broker on `dataDir` with a long retry interval unless told otherwise. */
function brokerOn(dataDir: string, config: Partial<BrokerConfig> = {}): Promise<TestBroker> {
  return startTestBroker({ retryInterval: 2000, ...config, dataDir });
}

/** Waits until `name` has no live session (the broker noticed the disconnect). */
async function sessionGone(b: TestBroker, name: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (b.broker.sessionNames.includes(name)) {
    if (Date.now() > deadline) assert.fail(`session ${name} still open after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test("a PUB accepted before a restart can be released after it and is delivered", async () => {
  await withDataDir(async (dataDir) => {
    let id: number;
    {
      await using b = await brokerOn(dataDir);
      await using c = await subscriber(b, "ann", "t");
      await using p = await LineClient.connect(b.publisherPort);
      id = await pubOnly(p, "t", "survives");
      await c.expectSilence(100);
    }
    {
      await using b = await brokerOn(dataDir);
      assert.equal(b.broker.pendingCount, 1);
      await using c = await loginConsumer(b.consumerPort, "ann");
      await using p = await LineClient.connect(b.publisherPort);
      await c.expectSilence(100);
      await p.send(json({ type: "PUBREL", msgId: id }));
      await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
      const got = await receive(c);
      assert.deepEqual(got, { type: "PUB", topic: "t", msg: "survives", msgId: id });
      // Fresh ids never reuse the one handed out before the restart.
      const next = await pubOnly(p, "t", "after");
      assert.ok(next > id, `id ${next} reused or went back (was ${id})`);
    }
    {
      // Released before this restart: a repeated PUBREL confirms and publishes nothing.
      await using b = await brokerOn(dataDir);
      await using c = await loginConsumer(b.consumerPort, "ann");
      await using p = await LineClient.connect(b.publisherPort);
      await p.send(json({ type: "PUBREL", msgId: id }));
      await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
      await c.expectSilence(300);
    }
  });
});

Deno.test("a consumer that completed messages 1..k resumes at k+1 after a restart", async () => {
  await withDataDir(async (dataDir) => {
    const ids: number[] = [];
    {
      await using b = await brokerOn(dataDir);
      await using c = await subscriber(b, "ann", "t");
      await using p = await LineClient.connect(b.publisherPort);
      for (let i = 1; i <= 6; i++) ids.push(await publish(p, "t", `m${i}`));
      for (let i = 1; i <= 3; i++) assert.equal((await receive(c)).msg, `m${i}`);
      // m4 is sent but never acknowledged before the stop.
      assert.equal((await c.expectJson()).msg, "m4");
    }
    {
      await using b = await brokerOn(dataDir);
      await using c = await loginConsumer(b.consumerPort, "ann");
      for (let i = 4; i <= 6; i++) {
        const got = await receive(c);
        assert.deepEqual(got, { type: "PUB", topic: "t", msg: `m${i}`, msgId: ids[i - 1] });
      }
      await c.expectSilence(300);
    }
  });
});

Deno.test("durable subscriptions resume after a reconnect and a restart without SUB", async () => {
  await withDataDir(async (dataDir) => {
    {
      await using b = await brokerOn(dataDir);
      {
        await using _c = await subscriber(b, "ann", "a", "b");
      }
      await sessionGone(b, "ann");
      // Reconnect on the same broker: both subscriptions are live again.
      await using c = await loginConsumer(b.consumerPort, "ann");
      await using p = await LineClient.connect(b.publisherPort);
      const ia = await publish(p, "a", "to a");
      const ib = await publish(p, "b", "to b");
      const got = (await completeAll(c, 2)).map((m) => m.msgId);
      assert.deepEqual(got.sort(), [ia, ib].sort());
    }
    {
      await using b = await brokerOn(dataDir);
      await using c = await loginConsumer(b.consumerPort, "ann");
      await using p = await LineClient.connect(b.publisherPort);
      const ia = await publish(p, "a", "again a");
      assert.deepEqual(await receive(c), { type: "PUB", topic: "a", msg: "again a", msgId: ia });
      const ib = await publish(p, "b", "again b");
      assert.deepEqual(await receive(c), { type: "PUB", topic: "b", msg: "again b", msgId: ib });
      await c.expectSilence(200);
    }
  });
});

Deno.test("UNSUB removes a durable subscription for good", async () => {
  await withDataDir(async (dataDir) => {
    {
      await using b = await brokerOn(dataDir);
      await using c = await subscriber(b, "ann", "gone", "kept");
      await c.send(json({ type: "UNSUB", topic: "gone" }));
      await c.expect("OK");
    }
    {
      await using b = await brokerOn(dataDir);
      await using c = await loginConsumer(b.consumerPort, "ann");
      await using p = await LineClient.connect(b.publisherPort);
      await publish(p, "gone", "not for ann");
      const kept = await publish(p, "kept", "for ann");
      assert.equal((await receive(c)).msgId, kept);
      await c.expectSilence(300);
      // UNSUB again: there is nothing left to remove.
      await c.send(json({ type: "UNSUB", topic: "gone" }));
      await c.expect(/^ERROR: not subscribed/);
    }
  });
});

Deno.test("a new subscription starts at the topic's end, also after a restart", async () => {
  await withDataDir(async (dataDir) => {
    {
      await using b = await brokerOn(dataDir);
      await using p = await LineClient.connect(b.publisherPort);
      await publish(p, "t", "before 1");
      await publish(p, "t", "before 2");
    }
    {
      await using b = await brokerOn(dataDir);
      await using p = await LineClient.connect(b.publisherPort);
      await publish(p, "t", "before 3");
      await using c = await subscriber(b, "ann", "t");
      await c.expectSilence(200);
      const id = await publish(p, "t", "after");
      assert.deepEqual(await receive(c), { type: "PUB", topic: "t", msg: "after", msgId: id });
      await c.expectSilence(200);
    }
  });
});

Deno.test("a consumer suspended by retry exhaustion gets the same message again after a new login", async () => {
  await withDataDir(async (dataDir) => {
    const config = { retryInterval: 80, retryLimit: 2 };
    let id: number;
    {
      await using b = await brokerOn(dataDir, config);
      {
        await using c = await subscriber(b, "ann", "t");
        await using p = await LineClient.connect(b.publisherPort);
        id = await publish(p, "t", "stubborn");
        const pub = `{"msg":"stubborn","msgId":${id},"topic":"t","type":"PUB"}`;
        await c.expect(pub);
        await c.expect(pub);
        await c.expectSilence(300); // suspended after 2 sends
      }
      await sessionGone(b, "ann");
      // A new connection resumes the suspended subscription with the same message.
      await using c = await loginConsumer(b.consumerPort, "ann");
      await c.expect(`{"msg":"stubborn","msgId":${id},"topic":"t","type":"PUB"}`);
    }
    {
      // ...and so does a login after a restart; this time it is completed.
      await using b = await brokerOn(dataDir, config);
      await using c = await loginConsumer(b.consumerPort, "ann");
      assert.deepEqual(await receive(c), { type: "PUB", topic: "t", msg: "stubborn", msgId: id });
      await c.expectSilence(300);
    }
  });
});

Deno.test("a message whose PUBREC was stored resumes with PUBREL, not the PUB, after a restart", async () => {
  await withDataDir(async (dataDir) => {
    let id: number;
    let next: number;
    {
      await using b = await brokerOn(dataDir);
      await using c = await subscriber(b, "ann", "t");
      await using p = await LineClient.connect(b.publisherPort);
      id = await publish(p, "t", "half done");
      next = await publish(p, "t", "next");
      assert.equal((await c.expectJson()).msgId, id);
      await c.send(json({ type: "PUBREC", msgId: id, topic: "t" }));
      await c.expect("OK");
      await c.expect(`{"msgId":${id},"type":"PUBREL"}`);
    }
    {
      await using b = await brokerOn(dataDir);
      await using c = await loginConsumer(b.consumerPort, "ann");
      await c.expect(`{"msgId":${id},"type":"PUBREL"}`);
      await c.expectSilence(100);
      await c.send(json({ type: "PUBCOMP", msgId: id, topic: "t" }));
      await c.expect("OK");
      assert.deepEqual(await receive(c), { type: "PUB", topic: "t", msg: "next", msgId: next });
      await c.expectSilence(200);
    }
  });
});

Deno.test("messages queued for an offline subscriber survive retention and a restart", async () => {
  await withDataDir(async (dataDir) => {
    const ids: number[] = [];
    {
      await using b = await startTestBroker({ retryInterval: 2000, dataDir }, {
        retentionIntervalMs: 20,
      });
      {
        await using _c = await subscriber(b, "offline", "t");
      }
      await sessionGone(b, "offline");
      await using p = await LineClient.connect(b.publisherPort);
      for (let i = 0; i < 3; i++) ids.push(await publish(p, "t", `queued ${i}`));
      await new Promise((r) => setTimeout(r, 150)); // several retention passes
      assert.equal((await b.broker.store.readLog("t", 1, 100)).length, 3);
    }
    {
      await using b = await startTestBroker({ retryInterval: 2000, dataDir }, {
        retentionIntervalMs: 20,
      });
      await using p = await LineClient.connect(b.publisherPort);
      ids.push(await publish(p, "t", "queued 3"));
      await new Promise((r) => setTimeout(r, 150));
      await using c = await loginConsumer(b.consumerPort, "offline");
      for (const [i, id] of ids.entries()) {
        assert.deepEqual(await receive(c), {
          type: "PUB",
          topic: "t",
          msg: `queued ${i}`,
          msgId: id,
        });
      }
      await c.expectSilence(200);
      // Once completed, retention may delete them.
      const deadline = Date.now() + 3000;
      while ((await b.broker.store.readLog("t", 1, 100)).length > 0) {
        assert.ok(Date.now() < deadline, "completed messages were never deleted");
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  });
});
