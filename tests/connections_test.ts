/**
 * Many connections at once, each independent: concurrent topics, publishers and
 * subscribers; slow, dead, idle and misbehaving peers; graceful stop.
 */
import assert from "node:assert/strict";
import {
  completeAll,
  json,
  LineClient,
  loginConsumer,
  publish,
  receive,
  startTestBroker,
  subscriber,
  waitFor,
} from "./helpers.ts";

const encoder = new TextEncoder();

Deno.test("many publishers, topics and subscribers at once: each consumer completes every message of its topics once, in order", async () => {
  const PUBLISHERS = 5;
  const TOPICS = 5;
  const PER_PUBLISHER = 10;
  await using b = await startTestBroker({ retryInterval: 5000 });
  // Consumer i subscribes to topics i, i+1, i+2 (mod 5): 3 consumers per topic.
  const topicsOf = (i: number) => [0, 1, 2].map((k) => `topic-${(i + k) % TOPICS}`);
  const consumers = await Promise.all(
    Array.from({ length: TOPICS }, (_, i) => subscriber(b, `consumer-${i}`, ...topicsOf(i))),
  );
  const publishers = await Promise.all(
    Array.from({ length: PUBLISHERS }, () => LineClient.connect(b.publisherPort)),
  );
  try {
    // Publisher p sends message j to topic (p + j) mod 5: 10 messages per topic.
    const published = Promise.all(publishers.map(async (p, pi) => {
      for (let j = 0; j < PER_PUBLISHER; j++) {
        await publish(p, `topic-${(pi + j) % TOPICS}`, { p: pi, j });
      }
    }));
    const perConsumer = PER_PUBLISHER * PUBLISHERS * 3 / TOPICS;
    const received = await Promise.all(consumers.map((c) => completeAll(c, perConsumer)));
    await published;

    const orderOf = new Map<string, unknown[]>();
    for (const [i, pubs] of received.entries()) {
      const byTopic = new Map<string, Record<string, unknown>[]>();
      for (const m of pubs) {
        const list = byTopic.get(m.topic as string) ?? [];
        list.push(m);
        byTopic.set(m.topic as string, list);
      }
      assert.deepEqual([...byTopic.keys()].sort(), topicsOf(i).sort());
      for (const [topic, list] of byTopic) {
        assert.equal(list.length, PER_PUBLISHER * PUBLISHERS / TOPICS, `count on ${topic}`);
        // Each publisher's messages come in the order it published them...
        const last = new Map<number, number>();
        for (const m of list) {
          const { p, j } = m.msg as { p: number; j: number };
          assert.equal(`topic-${(p + j) % TOPICS}`, topic);
          assert.ok((last.get(p) ?? -1) < j, `publisher ${p} out of order on ${topic}`);
          last.set(p, j);
        }
        // ...and every consumer of a topic sees the topic in the same order.
        const ids = list.map((m) => m.msgId);
        const seen = orderOf.get(topic);
        if (seen) assert.deepEqual(ids, seen, `consumers disagree on the order of ${topic}`);
        else orderOf.set(topic, ids);
      }
    }
    for (const c of consumers) await c.expectSilence(50);
  } finally {
    for (const c of [...consumers, ...publishers]) await c.close();
  }
});

Deno.test("a consumer that never acknowledges does not delay another consumer of the same topic", async () => {
  await using b = await startTestBroker({ retryInterval: 5000 });
  await using slow = await subscriber(b, "slow", "t");
  await using fast = await subscriber(b, "fast", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push(await publish(p, "t", `m${i}`));
  const started = performance.now();
  for (const id of ids) assert.equal((await receive(fast)).msgId, id);
  assert.ok(performance.now() - started < 2000, "fast consumer was held up");
  // The slow one still has its first message in flight and nothing else.
  assert.equal((await slow.expectJson()).msgId, ids[0]);
  await slow.expectSilence(200);
});

Deno.test("a consumer that disconnects mid-delivery is noticed: its session is freed and it can log in again", async () => {
  await using b = await startTestBroker({ retryInterval: 5000 });
  await using p = await LineClient.connect(b.publisherPort);
  const gone = await subscriber(b, "gone", "t");
  const before = b.connections.size;
  const id = await publish(p, "t", "half way");
  assert.equal((await gone.expectJson()).msgId, id);
  await gone.close(); // mid-delivery: no PUBREC ever comes
  await waitFor(() => !b.broker.sessionNames.includes("gone"), "the session to be freed");
  await waitFor(() => b.connections.size === before - 1, "the connection to be dropped");
  await using back = await loginConsumer(b.consumerPort, "gone");
  // The subscription resumes with the message that was in flight.
  assert.deepEqual(await receive(back), { type: "PUB", topic: "t", msg: "half way", msgId: id });
});

Deno.test("an idle connection is closed with an error line after idleTimeout", async () => {
  await using b = await startTestBroker({ idleTimeout: 300 });
  await using idle = await LineClient.connect(b.consumerPort);
  await using idlePub = await LineClient.connect(b.publisherPort);
  await using busy = await LineClient.connect(b.consumerPort);
  await idle.expect("Please login!");
  await busy.expect("Please login!");
  await busy.send("log busy");
  await busy.expect("Successfully logged in!");
  const started = performance.now();
  // `busy` sends a line every 100 ms and stays connected past the timeout.
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    await busy.send(json({ type: "SUB", topic: "t" }));
    await busy.expect("OK");
  }
  await idle.expect(/^ERROR: idle for more than 300 ms/, 1000);
  await idle.expectClosed();
  assert.ok(performance.now() - started >= 250, "closed too early");
  await idlePub.expect(/^ERROR: idle for more than 300 ms/, 1000);
  await idlePub.expectClosed();
  await busy.send(json({ type: "UNSUB", topic: "t" }));
  await busy.expect("OK");
});

Deno.test("a line longer than maxLineBytes closes the connection with an error line", async () => {
  await using b = await startTestBroker({ maxLineBytes: 256 });
  await using c = await loginConsumer(b.consumerPort, "ann");
  await c.send("x".repeat(300));
  await c.expect("ERROR: line longer than 256 bytes, closing connection");
  await c.expectClosed();

  await using p = await LineClient.connect(b.publisherPort);
  // Exactly 256 bytes is still a line.
  const head = '{"type":"PUB","topic":"t","msg":"';
  const fits = head + "y".repeat(256 - head.length - 2) + '"}';
  assert.equal(encoder.encode(fits).length, 256);
  await p.send(fits);
  await p.expect(/^\{"msgId":\d+,"type":"PUBREC"\}$/);
  // A long line without any newline is refused as soon as it passes the limit.
  await p.send("z".repeat(1000), { raw: true });
  await p.expect("ERROR: line longer than 256 bytes, closing connection");
  await p.expectClosed();
});

Deno.test("a line that is not valid UTF-8 is answered with an error and the connection goes on", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "ann");
  await c.sendBytes(new Uint8Array([0xff, 0xfe, 0x41, 0x0a]));
  await c.expect("ERROR: line is not valid UTF-8");
  await c.send(json({ type: "SUB", topic: "t" }));
  await c.expect("OK");

  await using p = await LineClient.connect(b.publisherPort);
  // A truncated multi-byte sequence ("é" cut in half) inside an otherwise fine line.
  await p.sendBytes(new Uint8Array([...encoder.encode('{"type":"PUB","msg":"'), 0xc3, 0x0a]));
  await p.expect("ERROR: line is not valid UTF-8");
  const id = await publish(p, "t", "é fine");
  assert.deepEqual(await receive(c), { type: "PUB", topic: "t", msg: "é fine", msgId: id });
});

Deno.test("a consumer that stops reading is disconnected past writeBufferBytes while others are served", async () => {
  // Short retries of big messages make the broker write a lot to a reader that stalls.
  await using b = await startTestBroker({
    retryInterval: 5,
    retryLimit: 1000,
    writeBufferBytes: 65_536,
  });
  const topics = ["big-0", "big-1", "big-2", "big-3"];
  await using _stalled = await subscriber(b, "stalled", ...topics);
  await using p = await LineClient.connect(b.publisherPort);
  const big = "B".repeat(50_000);
  const before = b.connections.size;
  for (const t of topics) await publish(p, t, big); // never read by `stalled`
  await waitFor(() => b.connections.size === before - 1, "the stalled connection to close", 10_000);
  await waitFor(
    () => !b.broker.sessionNames.includes("stalled"),
    "the stalled reader to be dropped",
    10_000,
  );

  // The broker keeps serving others.
  await using other = await subscriber(b, "other", "small");
  const id = await publish(p, "small", "hello");
  const pub = await other.expectJson();
  assert.deepEqual(pub, { type: "PUB", topic: "small", msg: "hello", msgId: id });
  // Retries are 5 ms apart: re-sent copies of the PUB and PUBREL are skipped.
  const release = `{"msgId":${id},"type":"PUBREL"}`;
  const resent = [`{"msg":"hello","msgId":${id},"topic":"small","type":"PUB"}`];
  const until = async (wanted: string, skip: string[]) => {
    for (let i = 0; i < 1000; i++) {
      const line = await other.next();
      if (line === wanted) return;
      assert.ok(line !== null && skip.includes(line), `unexpected line ${line}`);
    }
    assert.fail(`no ${wanted}`);
  };
  await other.send(json({ type: "PUBREC", msgId: id }));
  await until("OK", resent);
  await until(release, []);
  await other.send(json({ type: "PUBCOMP", msgId: id }));
  await until("OK", [release]);
  await other.expectSilence(100);
});

Deno.test("graceful stop with PUBs in flight: every PUBREC the publisher got is durable", async () => {
  const MAX_LINES = 20_000;
  const dataDir = await Deno.makeTempDir({ prefix: "mb-graceful-" });
  try {
    const ids: number[] = [];
    {
      await using b = await startTestBroker({ dataDir });
      await using p = await LineClient.connect(b.publisherPort);
      // A stream of PUBs that goes on until the stop closes the socket under the writer.
      const writing = (async () => {
        for (let n = 0; n < MAX_LINES; n += 100) {
          let lines = "";
          for (let i = n; i < n + 100; i++) {
            lines += json({ type: "PUB", topic: "t", msg: i }) + "\n";
          }
          await p.sendBytes(encoder.encode(lines));
        }
      })().catch(() => {});
      // Stop as soon as the first acknowledgement arrives, with lines still in flight.
      ids.push(JSON.parse(await p.expect(/PUBREC/)).msgId);
      const stopping = b.stop();
      for (let i = 0; i <= MAX_LINES; i++) {
        const line = await p.next();
        if (line === null) break;
        if (line.includes('"PUBREC"')) ids.push(JSON.parse(line).msgId);
      }
      await stopping;
      await writing;
    }
    {
      await using b = await startTestBroker({ dataDir });
      assert.ok(
        b.broker.pendingCount >= ids.length,
        `${b.broker.pendingCount} pending after restart, ${ids.length} acknowledged`,
      );
      await using p = await LineClient.connect(b.publisherPort);
      let releases = "";
      for (const id of ids) releases += json({ type: "PUBREL", msgId: id }) + "\n";
      await p.sendBytes(encoder.encode(releases));
      for (const id of ids) await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("graceful stop answers every PUB it stored: none is left pending without its PUBREC", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-graceful-" });
  try {
    let acknowledged = 0;
    {
      await using b = await startTestBroker({ dataDir });
      await using p = await LineClient.connect(b.publisherPort);
      let burst = "";
      for (let i = 0; i < 5000; i++) burst += json({ type: "PUB", topic: "t", msg: i }) + "\n";
      const writing = p.sendBytes(encoder.encode(burst)).catch(() => {});
      await p.expect(/PUBREC/);
      acknowledged++;
      const stopping = b.stop();
      for (let i = 0; i < 5000; i++) {
        const line = await p.next();
        if (line === null) break;
        if (line.includes('"PUBREC"')) acknowledged++;
      }
      await stopping;
      await writing;
    }
    {
      // A PUB stored without its PUBREC reaching the publisher can never be released:
      // the publisher does not know its id, so it would stay pending for good.
      await using b = await startTestBroker({ dataDir });
      assert.equal(
        b.broker.pendingCount,
        acknowledged,
        `${b.broker.pendingCount} PUBs stored, but only ${acknowledged} PUBRECs were sent`,
      );
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
