/**
 * Every limit proven by going one past it, over real sockets: the refused input gets a
 * clear error line, the connection is left in the documented state, other connections
 * are unaffected and nothing already accepted is lost.
 */
import assert from "node:assert/strict";
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
  waitFor,
} from "./helpers.ts";

const encoder = new TextEncoder();
const PUBREC = /^\{"msgId":\d+,"type":"PUBREC"\}$/;
const DLC = "deadLetterChan";

/**
 * A consumer and a publisher that have nothing to do with the limit under test: after
 * it was hit, `check` proves they are still served.
 */
class Bystander {
  #consumer: LineClient;
  #publisher: LineClient;
  private constructor(consumer: LineClient, publisher: LineClient) {
    this.#consumer = consumer;
    this.#publisher = publisher;
  }
  static async start(b: TestBroker): Promise<Bystander> {
    return new Bystander(
      await subscriber(b, "bystander", "calm"),
      await LineClient.connect(b.publisherPort),
    );
  }
  async check(text = "still served"): Promise<void> {
    const id = await publish(this.#publisher, "calm", text);
    assert.deepEqual(await receive(this.#consumer), {
      type: "PUB",
      topic: "calm",
      msg: text,
      msgId: id,
    });
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#consumer.close();
    await this.#publisher.close();
  }
}

/** Connects, expects exactly `reply` and then the end of the connection. */
async function expectRefused(port: number, reply: string | RegExp): Promise<void> {
  await using c = await LineClient.connect(port);
  await c.expect(reply);
  await c.expectClosed();
}

/** Sends raw bytes followed by CRLF. */
async function sendRaw(c: LineClient, bytes: number[] | Uint8Array): Promise<void> {
  await c.sendBytes(Uint8Array.from([...bytes, 0x0d, 0x0a]));
}

/** Reads one PUBREC and returns its id. */
async function pubrec(p: LineClient): Promise<number> {
  return JSON.parse(await p.expect(PUBREC)).msgId as number;
}

/** Completes one PUB on `c` whose raw line is returned (to check the exact text). */
async function receiveRaw(c: LineClient): Promise<{ line: string; msgId: number }> {
  const line = await c.next();
  assert.ok(line !== null, "connection closed");
  const { msgId, topic } = JSON.parse(line);
  await c.send(json({ type: "PUBREC", msgId, topic }));
  await c.expect("OK");
  await c.expect(`{"msgId":${msgId},"type":"PUBREL"}`);
  await c.send(json({ type: "PUBCOMP", msgId, topic }));
  await c.expect("OK");
  return { line, msgId };
}

/** Whether this machine can listen on IPv6 loopback (for a second remote address). */
function hasIpv6Loopback(): boolean {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
}

/** A raw connection from ::1 that sends one line and returns the first line it reads. */
async function firstLineFromIpv6(port: number, line: string | null): Promise<string> {
  const conn = await Deno.connect({ hostname: "::1", port });
  let closed = false;
  const close = () => {
    if (!closed) conn.close();
    closed = true;
  };
  const timer = setTimeout(close, 3000); // a read that never returns ends here
  try {
    if (line !== null) await conn.write(encoder.encode(line + "\r\n"));
    const buf = new Uint8Array(4096);
    let text = "";
    for (let i = 0; i < 100 && !text.includes("\n"); i++) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return text.split("\r\n")[0] ?? "";
  } finally {
    clearTimeout(timer);
    close();
  }
}

// --- connections --------------------------------------------------------------------

Deno.test("maxConnections: N connections over both ports are served, the next is refused with an error line on either port", async () => {
  await using b = await startTestBroker({ maxConnections: 4 });
  await using c = await subscriber(b, "ann", "t"); // 1
  await using p = await LineClient.connect(b.publisherPort); // 2
  await using spare = await loginConsumer(b.consumerPort, "bob"); // 3
  await using q = await LineClient.connect(b.publisherPort); // 4
  const pending = await pubOnly(q, "t", "accepted before the limit");
  await waitFor(() => b.connections.size === 4, "4 connections");

  await expectRefused(b.consumerPort, "ERROR: too many connections (limit 4)");
  await expectRefused(b.publisherPort, "ERROR: too many connections (limit 4)");
  assert.equal(b.connections.size, 4);

  // Those admitted are unaffected; what was accepted is delivered.
  await q.send(json({ type: "PUBREL", msgId: pending }));
  await q.expect(`{"msgId":${pending},"type":"PUBCOMP"}`);
  assert.equal((await receive(c)).msgId, pending);
  const id = await publish(p, "t", "after the refusals");
  assert.equal((await receive(c)).msgId, id);

  // A closed connection frees its slot.
  await spare.close();
  await waitFor(() => b.connections.size === 3, "the slot to be freed");
  await using again = await loginConsumer(b.consumerPort, "bob");
  await again.send(json({ type: "SUB", topic: "t" }));
  await again.expect("OK");
});

Deno.test("maxConnectionsPerAddress: N connections from one address are served, the next from it is refused, another address is not", async () => {
  const ipv6 = hasIpv6Loopback();
  // "::" accepts IPv4 (as mapped addresses) and IPv6, so ::1 is a second address.
  await using b = await startTestBroker({
    maxConnectionsPerAddress: 3,
    ...(ipv6 ? { hostname: "::" } : {}),
  });
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  await using spare = await LineClient.connect(b.publisherPort);
  await waitFor(() => b.connections.size === 3, "3 connections");
  const refused = /^ERROR: too many connections from \S*127\.0\.0\.1\S* \(limit 3\)$/;
  await expectRefused(b.consumerPort, refused);
  await expectRefused(b.publisherPort, refused);

  if (ipv6) {
    // Another address still gets in, on both ports.
    assert.equal(await firstLineFromIpv6(b.consumerPort, null), "Please login!");
    const reply = await firstLineFromIpv6(
      b.publisherPort,
      json({ type: "PUB", topic: "t", msg: "from ::1" }),
    );
    assert.match(reply, PUBREC);
    const v6id = JSON.parse(reply).msgId as number;
    await p.send(json({ type: "PUBREL", msgId: v6id }));
    await p.expect(`{"msgId":${v6id},"type":"PUBCOMP"}`);
    assert.equal((await receive(c)).msgId, v6id);
  }

  const id = await publish(p, "t", "still served");
  assert.equal((await receive(c)).msgId, id);
  await spare.close();
  await waitFor(() => b.connections.size === 2, "the slot to be freed");
  await using again = await LineClient.connect(b.publisherPort);
  await pubOnly(again, "t", "in again");
});

Deno.test("loginTimeout: a consumer connection that does not log in in time is closed with an error line; logged-in ones stay", async () => {
  await using b = await startTestBroker({ loginTimeout: 300, loginAttempts: 100 });
  await using by = await Bystander.start(b);
  await using silent = await LineClient.connect(b.consumerPort);
  await using chatty = await LineClient.connect(b.consumerPort);
  await using late = await LineClient.connect(b.consumerPort);
  const started = performance.now();
  await silent.expect("Please login!");
  await chatty.expect("Please login!");
  await late.expect("Please login!");
  // Lines that are not a login do not extend the deadline.
  for (let i = 0; i < 3; i++) {
    await chatty.send("hello?");
    await chatty.expect("Please login!");
  }
  // A login before the deadline keeps the connection past it.
  await new Promise((r) => setTimeout(r, 100));
  await late.send("log late");
  await late.expect("Successfully logged in!");

  await silent.expect("ERROR: no login within 300 ms, closing connection", 2000);
  await silent.expectClosed();
  await chatty.expect("ERROR: no login within 300 ms, closing connection", 2000);
  await chatty.expectClosed();
  assert.ok(performance.now() - started >= 250, "closed before the timeout");

  await late.expectSilence(300);
  await late.send(json({ type: "SUB", topic: "t" }));
  await late.expect("OK");
  await by.check();
});

Deno.test("idleTimeout: a connection without input is closed with an error line; its in-flight message is kept", async () => {
  await using b = await startTestBroker({ idleTimeout: 300, retryInterval: 60_000 });
  await using p = await LineClient.connect(b.publisherPort);
  // The publisher and the consumer `busy` send a line every 100 ms.
  await using busy = await subscriber(b, "busy", "b");
  await using sleepy = await subscriber(b, "sleepy", "t");
  const id = await publish(p, "t", "in flight when the consumer went idle");
  assert.equal((await sleepy.expectJson()).msgId, id);
  const started = performance.now();
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    await busy.send(json({ type: "SUB", topic: "b" }));
    await busy.expect("OK");
    await p.send(json({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  }
  await sleepy.expect("ERROR: idle for more than 300 ms, closing", 1000);
  await sleepy.expectClosed();
  assert.ok(performance.now() - started >= 200, "closed too early");
  await waitFor(() => !b.broker.sessionNames.includes("sleepy"), "the idle session to end");
  // Logging in again resumes the same message.
  await using back = await loginConsumer(b.consumerPort, "sleepy");
  assert.equal((await receive(back)).msgId, id);
  const next = await publish(p, "b", "busy still served");
  assert.equal((await receive(busy)).msgId, next);
});

// --- publishers and subscribers -----------------------------------------------------

Deno.test("maxPendingPerConnection: N PUBs without PUBREL are accepted, the next is refused, and a PUBREL makes room for one more", async () => {
  await using b = await startTestBroker({ maxPendingPerConnection: 3 });
  await using by = await Bystander.start(b);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await pubOnly(p, "t", `m${i}`));
  await p.send(json({ type: "PUB", topic: "t", msg: "one too many" }));
  await p.expect(
    "ERROR: too many PUBs awaiting PUBREL on this connection (limit 3): release some first",
  );
  assert.equal(b.broker.pendingCount, 3);
  // The quota is per connection: another publisher has its own.
  await using other = await LineClient.connect(b.publisherPort);
  const otherId = await pubOnly(other, "t", "other connection");

  await p.send(json({ type: "PUBREL", msgId: ids[0] }));
  await p.expect(`{"msgId":${ids[0]},"type":"PUBCOMP"}`);
  ids.push(await pubOnly(p, "t", "m3"));
  await p.send(json({ type: "PUB", topic: "t", msg: "again one too many" }));
  await p.expect(/^ERROR: too many PUBs awaiting PUBREL on this connection \(limit 3\)/);

  // Everything accepted is delivered once released, in order.
  for (const id of [...ids.slice(1), otherId]) {
    const from = id === otherId ? other : p;
    await from.send(json({ type: "PUBREL", msgId: id }));
    await from.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  }
  const got = await completeAll(c, 5);
  assert.deepEqual(got.map((m) => m.msg), ["m0", "m1", "m2", "m3", "other connection"]);
  await by.check();
});

Deno.test("maxSubscriptionsPerConsumer: N subscriptions are accepted, the next is refused; re-SUB and UNSUB work; the count survives a reconnect", async () => {
  await using b = await startTestBroker({ maxSubscriptionsPerConsumer: 3 });
  await using by = await Bystander.start(b);
  const c = await subscriber(b, "ann", "a", "b", "c");
  await c.send(json({ type: "SUB", topic: "d" }));
  await c.expect("ERROR: too many subscriptions (limit 3): UNSUB some first");
  // Subscribing again to a topic already held is no new subscription.
  await c.send(json({ type: "SUB", topic: "a" }));
  await c.expect("OK");
  await c.close();
  await waitFor(() => !b.broker.sessionNames.includes("ann"), "ann's session to end");

  // The stored subscriptions still count after a new login.
  await using again = await loginConsumer(b.consumerPort, "ann");
  await again.send(json({ type: "SUB", topic: "d" }));
  await again.expect("ERROR: too many subscriptions (limit 3): UNSUB some first");
  await again.send(json({ type: "UNSUB", topic: "c" }));
  await again.expect("OK");
  await again.send(json({ type: "SUB", topic: "d" }));
  await again.expect("OK");
  // Another consumer has its own count (subscriber() checks each OK).
  await using _other = await subscriber(b, "bob", "a", "b", "c");
  await using p = await LineClient.connect(b.publisherPort);
  const id = await publish(p, "d", "to d");
  assert.equal((await receive(again)).msgId, id);
  await by.check();
});

Deno.test("maxTopicMessages: a topic whose subscriber does not acknowledge fills up and refuses the next PUB; it accepts again once the subscriber catches up", async () => {
  await using b = await startTestBroker(
    { maxTopicMessages: 3, retryInterval: 60_000 },
    { retentionIntervalMs: 50 },
  );
  await using by = await Bystander.start(b);
  await using slow = await subscriber(b, "slow", "full");
  await using p = await LineClient.connect(b.publisherPort);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await publish(p, "full", `m${i}`));
  await p.send(json({ type: "PUB", topic: "full", msg: "m3" }));
  await p.expect(
    'ERROR: topic "full" is full (3 messages): new messages are refused until its subscribers catch up',
  );
  assert.equal(b.broker.pendingCount, 0, "the refused PUB was stored");
  // Other topics are not affected.
  await using other = await subscriber(b, "other", "roomy");
  const roomy = await publish(p, "roomy", "fine");
  assert.equal((await receive(other)).msgId, roomy);
  await by.check();

  // Nothing accepted is lost; once completed and deleted, the topic takes PUBs again.
  const got = await completeAll(slow, 3);
  assert.deepEqual(got.map((m) => m.msgId), ids);
  let accepted: number | null = null;
  await waitFor(
    async () => {
      await p.send(json({ type: "PUB", topic: "full", msg: "m3" }));
      const line = await p.expect(/^ERROR: topic "full" is full|"PUBREC"/);
      if (line.startsWith("ERROR")) return false;
      accepted = JSON.parse(line).msgId;
      return true;
    },
    "the full topic to accept again",
    5000,
  );
  await p.send(json({ type: "PUBREL", msgId: accepted }));
  await p.expect(`{"msgId":${accepted},"type":"PUBCOMP"}`);
  assert.equal((await receive(slow)).msg, "m3");
});

/** Publishes 4 KB messages to `topic` until the store is full; returns the accepted ids. */
async function fillStore(p: LineClient, topic: string): Promise<number[]> {
  const ids: number[] = [];
  const deadline = Date.now() + 15_000;
  for (let i = 0; i < 2000 && Date.now() < deadline; i++) {
    await p.send(json({ type: "PUB", topic, msg: `${i} ${"x".repeat(4000)}` }));
    const line = await p.expect(/^ERROR: |"PUBREC"/);
    if (line.startsWith("ERROR: ")) {
      assert.match(
        line,
        /^ERROR: the store is full \(\d+ payload bytes held, limit 300000\): new messages are refused until subscribers catch up$/,
      );
      return ids;
    }
    const id = JSON.parse(line).msgId as number;
    await p.send(json({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
    ids.push(id);
  }
  assert.fail(`the store was never full after ${ids.length} messages`);
}

Deno.test("maxStoreBytes: publishing until the store is full is refused with an error; what was accepted is released and delivered", async () => {
  await using b = await startTestBroker({ maxStoreBytes: 300_000, retryInterval: 60_000 });
  await using c = await subscriber(b, "ann", "big");
  await using p = await LineClient.connect(b.publisherPort);
  await using holder = await LineClient.connect(b.publisherPort);
  // Accepted before the store fills, released after.
  const held = await pubOnly(holder, "big", "held");
  const ids = await fillStore(p, "big");
  assert.ok(ids.length > 0, "nothing was accepted before the store was full");
  // A repeated PUB is refused the same way, and the connection stays open.
  await p.send(json({ type: "PUB", topic: "big", msg: "y".repeat(4000) }));
  await p.expect(/^ERROR: the store is full/);
  await holder.send(json({ type: "PUBREL", msgId: held }));
  await holder.expect(`{"msgId":${held},"type":"PUBCOMP"}`);
  // Reads go on: every accepted message is delivered once, in order.
  const got = await completeAll(c, ids.length + 1);
  // In the order of release: `held` was released last.
  assert.deepEqual(got.map((m) => m.msgId), [...ids, held]);
  // Subscribing needs no new message: it still works on a full store.
  await using _late = await subscriber(b, "late", "other");
  await c.expectSilence(100);
});

Deno.test("maxStoreBytes: once subscribers have caught up and their messages are deleted, new messages are accepted again", async () => {
  await using b = await startTestBroker(
    { maxStoreBytes: 300_000, retryInterval: 60_000 },
    { retentionIntervalMs: 50 },
  );
  await using c = await subscriber(b, "ann", "big");
  await using p = await LineClient.connect(b.publisherPort);
  const ids = await fillStore(p, "big");
  await completeAll(c, ids.length);
  // The error promises this: "refused until subscribers catch up".
  await waitFor(
    async () => {
      await p.send(json({ type: "PUB", topic: "big", msg: "after catching up" }));
      return !(await p.expect(/^ERROR: the store is full|"PUBREC"/)).startsWith("ERROR");
    },
    "the store to accept messages again after the subscriber caught up",
    8000,
  );
});

// --- what a line may hold -----------------------------------------------------------

Deno.test("maxTopicBytes: a topic of exactly the limit is accepted, one byte more is refused on both ports", async () => {
  await using b = await startTestBroker({ maxTopicBytes: 16 });
  await using by = await Bystander.start(b);
  await using c = await loginConsumer(b.consumerPort, "ann");
  await using p = await LineClient.connect(b.publisherPort);
  for (const topic of ["t".repeat(16), "é".repeat(8)]) {
    assert.equal(encoder.encode(topic).length, 16);
    await c.send(json({ type: "SUB", topic }));
    await c.expect("OK");
    const id = await publish(p, topic, "fits");
    assert.equal((await receive(c)).msgId, id);
  }
  for (const topic of ["t".repeat(17), "é".repeat(8) + "a", "€".repeat(6)]) {
    await c.send(json({ type: "SUB", topic }));
    await c.expect("ERROR: topic is longer than 16 bytes");
    await p.send(json({ type: "PUB", topic, msg: "too long a topic" }));
    await p.expect("ERROR: topic is longer than 16 bytes");
  }
  assert.equal(b.broker.pendingCount, 0);
  await by.check();
});

Deno.test("maxMessageBytes: a message of exactly the limit is delivered, one byte more is refused; strings count UTF-8, other values their JSON text", async () => {
  await using b = await startTestBroker({ maxMessageBytes: 100 });
  await using by = await Bystander.start(b);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const fits = ["x".repeat(100), "é".repeat(50), { k: "v".repeat(92) }];
  const over: [unknown, number][] = [["x".repeat(101), 101], ["é".repeat(50) + "!", 101], [
    { k: "v".repeat(93) },
    101,
  ], [[1, 2, 3, "z".repeat(93)], 103]];
  assert.equal(JSON.stringify(fits[2]).length, 100);
  for (const [msg, size] of over) {
    await p.send(json({ type: "PUB", topic: "t", msg }));
    await p.expect(`ERROR: message is ${size} bytes, the limit is 100`);
  }
  assert.equal(b.broker.pendingCount, 0);
  for (const msg of fits) {
    const id = await publish(p, "t", msg);
    assert.deepEqual(await receive(c), { type: "PUB", topic: "t", msg, msgId: id });
  }
  await by.check();
});

Deno.test("maxLineBytes: a longer line is answered with an error and closes that connection only; lines before it are answered", async () => {
  await using b = await startTestBroker({ maxLineBytes: 4096 });
  await using by = await Bystander.start(b);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  // A PUB and an over-long line in one write: the PUB is answered first.
  const pub = json({ type: "PUB", topic: "t", msg: "before the long line" });
  await p.send(`${pub}\r\n${"y".repeat(5000)}\r\n`, { raw: true });
  const id = await pubrec(p);
  await p.expect("ERROR: line longer than 4096 bytes, closing connection");
  await p.expectClosed();
  // What it accepted can be released from another connection.
  await using p2 = await LineClient.connect(b.publisherPort);
  await p2.send(json({ type: "PUBREL", msgId: id }));
  await p2.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  assert.equal((await receive(c)).msgId, id);

  // On the consumer port; a line of exactly 4096 bytes is still a line.
  const head = '{"type":"SUB","topic":"t","pad":"';
  const exact = head + "p".repeat(4096 - head.length - 2) + '"}';
  assert.equal(encoder.encode(exact).length, 4096);
  await c.send(exact);
  await c.expect("OK");
  await c.send("z".repeat(4097), { raw: true }); // no newline needed to be refused
  await c.expect("ERROR: line longer than 4096 bytes, closing connection");
  await c.expectClosed();
  await by.check();
});

Deno.test("maxJsonDepth: nesting up to the limit is accepted, one level more is refused with an error naming the limit", async () => {
  await using b = await startTestBroker({ maxJsonDepth: 4 });
  await using by = await Bystander.start(b);
  await using watcher = await subscriber(b, "watcher", DLC);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  // The command object is level 1: msg may add 3 more.
  const id = await publish(p, "t", [[{ a: 1 }]]);
  assert.deepEqual((await receive(c)).msg, [[{ a: 1 }]]);
  assert.equal(typeof id, "number");
  await p.send(json({ type: "PUB", topic: "t", msg: [[{ a: [] }]] }));
  await p.expect("ERROR: invalid PUB: nested deeper than 4 levels");
  await c.send(json({ type: "SUB", topic: "u", extra: [[[[1]]]] }));
  await c.expect("ERROR: invalid SUB: nested deeper than 4 levels");
  // Far deeper: the same answer, and the connections stay open.
  await p.send(`{"type":"PUB","topic":"t","msg":${"[".repeat(30_000)}${"]".repeat(30_000)}}`);
  await p.expect("ERROR: invalid PUB: nested deeper than 4 levels");
  assert.equal(b.broker.pendingCount, 0);
  for (let i = 0; i < 3; i++) {
    const dead = await receive(watcher);
    assert.equal((dead.msg as { reason: string }).reason, "invalid-command");
  }
  await by.check();
});

Deno.test("duplicate keys are refused with an error naming the key, at the top and inside msg", async () => {
  await using b = await startTestBroker();
  await using by = await Bystander.start(b);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  await p.send('{"type":"PUB","topic":"t","topic":"calm","msg":"which topic?"}');
  await p.expect('ERROR: invalid PUB: duplicate key "topic"');
  await p.send('{"type":"PUB","topic":"t","msg":{"a":1,"\\u0061":2}}');
  await p.expect('ERROR: invalid PUB: duplicate key "a"');
  await c.send('{"type":"SUB","topic":"u","topic":"t"}');
  await c.expect('ERROR: invalid SUB: duplicate key "topic"');
  assert.equal(b.broker.pendingCount, 0);
  const id = await publish(p, "t", { a: 1, b: { a: 2 } });
  assert.deepEqual((await receive(c)).msg, { a: 1, b: { a: 2 } });
  assert.equal(typeof id, "number");
  await by.check();
});

Deno.test("escaped NUL and lone surrogates inside a JSON string are data; raw invalid UTF-8, raw NUL and raw control characters are refused", async () => {
  await using b = await startTestBroker();
  await using by = await Bystander.start(b);
  await using watcher = await subscriber(b, "watcher", DLC);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);

  // Escapes in a JSON string: valid JSON; the same string arrives (a string with a lone
  // surrogate has no UTF-8 form and is relayed as the exact text sent).
  for (const body of ['"a\\u0000b"', '"\\ud800"', '"\\u001f\\u007f\\u0000"']) {
    await p.send(`{"type":"PUB","topic":"t","msg":${body}}`);
    const id = await pubrec(p);
    await p.send(json({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
    const { line } = await receiveRaw(c);
    assert.deepEqual(JSON.parse(line), {
      msg: JSON.parse(body),
      msgId: id,
      topic: "t",
      type: "PUB",
    });
    if (body === '"\\ud800"') {
      assert.equal(line, `{"msg":${body},"msgId":${id},"topic":"t","type":"PUB"}`);
    }
  }
  // An escaped NUL in a topic breaks the topic rule.
  await p.send('{"type":"PUB","topic":"a\\u0000b","msg":"x"}');
  await p.expect("ERROR: topic must not contain control characters");

  // Raw bytes: invalid UTF-8 first, then raw NUL / control characters (JSON forbids them).
  const prefix = [...encoder.encode('{"type":"PUB","topic":"t","msg":"')];
  const suffix = [...encoder.encode('"}')];
  const cases: [number[], string][] = [
    [[...prefix, 0xc3, 0x28, ...suffix], "ERROR: line is not valid UTF-8"],
    [[...prefix, 0xed, 0xa0, 0x80, ...suffix], "ERROR: line is not valid UTF-8"], // CESU surrogate
    [[...prefix, 0xff, ...suffix], "ERROR: line is not valid UTF-8"],
    [[...prefix, 0x00, ...suffix], "INVALID JSON"],
    [[...prefix, 0x01, ...suffix], "INVALID JSON"],
    [[...prefix, 0x09, ...suffix], "INVALID JSON"],
    [[...prefix, 0x1b, ...suffix], "INVALID JSON"],
    [[0x00, ...prefix, ...suffix], "INVALID JSON"],
  ];
  for (const [bytes, reply] of cases) {
    await sendRaw(p, bytes);
    await p.expect(reply);
  }
  await sendRaw(c, [...encoder.encode('{"type":"SUB","topic":"'), 0x00, ...encoder.encode('"}')]);
  await c.expect("INVALID JSON");
  await sendRaw(c, [0x80, 0x0d]);
  await c.expect("ERROR: line is not valid UTF-8");
  assert.equal(b.broker.pendingCount, 0);

  // Each refused line is a dead letter with the documented reason.
  const reasons = [];
  for (let i = 0; i < cases.length + 2; i++) {
    reasons.push(((await receive(watcher)).msg as { reason: string }).reason);
  }
  assert.deepEqual(reasons.toSorted(), [
    ...Array(6).fill("invalid-json"),
    ...Array(4).fill("invalid-utf8"),
  ]);
  // The connections are still open and served.
  const id = await publish(p, "t", "after the bad bytes");
  assert.equal((await receive(c)).msgId, id);
  await by.check();
});

Deno.test("a topic name holding a lone surrogate (no UTF-8 form) is refused on both ports", async () => {
  // Deno KV stores such a string as U+FFFD: "\ud800", "\udc00" and "\ufffd" would share
  // one topic's keys, so messages of one overwrite those of another.
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "ann");
  await using p = await LineClient.connect(b.publisherPort);
  for (const topic of ["\\ud800", "a\\udc00", "\\udfff\\ud800"]) {
    await c.send(`{"type":"SUB","topic":"${topic}"}`);
    await c.expect(/^ERROR: topic /);
    await p.send(`{"type":"PUB","topic":"${topic}","msg":"x"}`);
    await p.expect(/^ERROR: topic /);
  }
  assert.equal(b.broker.pendingCount, 0);
});

Deno.test("a msgId out of range is refused with an error naming msgId; a huge number in msg is relayed exactly", async () => {
  await using b = await startTestBroker();
  await using by = await Bystander.start(b);
  await using c = await subscriber(b, "ann", "t");
  await using p = await LineClient.connect(b.publisherPort);
  const bad = ["0", "-1", "1.5", "9007199254740992", "9007199254740993", "1e400", "-1e400"];
  for (const n of bad) {
    await p.send(`{"type":"PUBREL","msgId":${n}}`);
    await p.expect(/^ERROR: invalid PUBREL: "msgId" (must be a positive integer|is too large)/);
    await c.send(`{"type":"PUBREC","msgId":${n},"topic":"t"}`);
    await c.expect(/^ERROR: invalid PUBREC: "msgId" (must be a positive integer|is too large)/);
    await c.send(`{"type":"PUBCOMP","msgId":${n}}`);
    await c.expect(/^ERROR: invalid PUBCOMP: "msgId" /);
  }
  // The largest safe integer is a well-formed id, just not one the broker issued.
  await p.send('{"type":"PUBREL","msgId":9007199254740991}');
  await p.expect(
    "ERROR: unknown msgId 9007199254740991: no PUB with this id is awaiting PUBREL",
  );
  const body = '{"n":123456789012345678901234567890,"x":1e400,"y":-0.0}';
  await p.send(`{"type":"PUB","topic":"t","msg":${body}}`);
  const id = await pubrec(p);
  await p.send(json({ type: "PUBREL", msgId: id }));
  await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
  const { line } = await receiveRaw(c);
  assert.equal(line, `{"msg":${body},"msgId":${id},"topic":"t","type":"PUB"}`);
  await by.check();
});

// --- slow readers -------------------------------------------------------------------

Deno.test("writeBufferBytes: a consumer that stops reading is disconnected, its position kept; after reconnecting it resumes the same message", async () => {
  // Re-sends every 10 ms of a big unacknowledged message make the broker write a lot.
  await using b = await startTestBroker({
    retryInterval: 10,
    retryLimit: 1000,
    writeBufferBytes: 65_536,
  });
  await using by = await Bystander.start(b);
  const stalled = await subscriber(b, "stalled", "big");
  await using p = await LineClient.connect(b.publisherPort);
  const first = await publish(p, "big", "B".repeat(50_000));
  const second = await publish(p, "big", "small one after it");
  // `stalled` reads nothing more: the kernel buffers fill, then the broker's queue.
  await waitFor(
    () => !b.broker.sessionNames.includes("stalled"),
    "the stalled reader to be dropped",
    15_000,
  );
  await stalled.close();
  await by.check();

  // The position was kept: the same message comes first, then the next, once each.
  await using back = await loginConsumer(b.consumerPort, "stalled");
  const pubs: number[] = [];
  const completed = new Set<number>();
  for (let i = 0; i < 500 && completed.size < 2; i++) {
    const line = await back.next();
    assert.ok(line !== null, "closed again");
    if (line === "OK" || line.startsWith("ERROR: no message with msgId")) continue; // a re-send crossed our ack
    const m = JSON.parse(line);
    if (m.type === "PUB") {
      if (!pubs.includes(m.msgId)) pubs.push(m.msgId);
      await back.send(json({ type: "PUBREC", msgId: m.msgId, topic: "big" }));
    } else {
      assert.equal(m.type, "PUBREL", line);
      completed.add(m.msgId);
      await back.send(json({ type: "PUBCOMP", msgId: m.msgId, topic: "big" }));
    }
  }
  assert.deepEqual(pubs, [first, second]);
  assert.deepEqual([...completed], [first, second]);
});
