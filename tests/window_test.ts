/**
 * Consumer windows over real sockets: a SUB with `"window": N` has up to N messages
 * outstanding at once, acknowledged in any order; the window's state survives SIGKILL.
 */
import assert from "node:assert/strict";
import {
  ChildBroker,
  json,
  LineClient,
  loginConsumer,
  publish,
  startTestBroker,
} from "./helpers.ts";

/** Reads `n` lines, parsed when JSON ("OK" stays a string). */
async function lines(c: LineClient, n: number): Promise<(string | Record<string, unknown>)[]> {
  const out = [];
  for (let i = 0; i < n; i++) {
    const line = await c.next(5000);
    assert.ok(line !== null, `closed after ${i} of ${n} lines`);
    out.push(line.startsWith("{") ? JSON.parse(line) : line);
  }
  return out;
}

/** The wire as short words: `PUB 7`, `PUBREL 7`, `OK`. */
function words(ls: (string | Record<string, unknown>)[]): string[] {
  return ls.map((l) => typeof l === "string" ? l : `${l.type} ${l.msgId}`);
}

/** Sends several lines in one write, as a pipelining client does. */
async function sendAll(c: LineClient, commands: unknown[]): Promise<void> {
  await c.send(commands.map((x) => json(x)).join("\r\n") + "\r\n", { raw: true });
}

Deno.test("a SUB with a window gets that many PUBs at once; acknowledgements pipeline and complete in any order", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "wendy");
  await c.send(json({ type: "SUB", topic: "w", window: 4 }));
  await c.expect("OK");
  await using p = await LineClient.connect(b.publisherPort);
  const ids: number[] = [];
  for (let i = 0; i < 6; i++) ids.push(await publish(p, "w", `m${i}`));
  assert.deepEqual(words(await lines(c, 4)), ids.slice(0, 4).map((id) => `PUB ${id}`));
  await c.expectSilence(100);

  // Four PUBRECs in one write: four OKs in order, each message's PUBREL after its OK.
  await sendAll(c, ids.slice(0, 4).map((msgId) => ({ type: "PUBREC", msgId, topic: "w" })));
  const acked = words(await lines(c, 8));
  assert.deepEqual(acked.filter((w) => w === "OK").length, 4);
  for (const [k, id] of ids.slice(0, 4).entries()) {
    const at = acked.indexOf(`PUBREL ${id}`);
    assert.ok(at >= 0, `PUBREL ${id} in ${acked}`);
    assert.ok(acked.slice(0, at).filter((w) => w === "OK").length >= k + 1, acked.join(", "));
  }

  // The second and third complete first: the position waits for the first, so the
  // window (4 from the position) has no room yet.
  await sendAll(c, [ids[1], ids[2]].map((msgId) => ({ type: "PUBCOMP", msgId })));
  assert.deepEqual(words(await lines(c, 2)), ["OK", "OK"]);
  await c.expectSilence(100);
  // An acknowledgement out of turn is refused, in its place among the answers.
  await sendAll(c, [
    { type: "PUBCOMP", msgId: ids[1] },
    { type: "PUBCOMP", msgId: ids[0] },
  ]);
  const after = words(await lines(c, 4));
  assert.match(after[0]!, /^ERROR: no message with msgId \d+ is in flight to you/);
  assert.deepEqual(after.slice(1), ["OK", `PUB ${ids[4]}`, `PUB ${ids[5]}`]);
});

Deno.test("a SUB's window is checked: an integer from 1 to 1024", async () => {
  await using b = await startTestBroker();
  await using c = await loginConsumer(b.consumerPort, "vera");
  for (const window of [0, 1025, 2.5, "8", null]) {
    await c.send(json({ type: "SUB", topic: "t", window }));
    const line = await c.next();
    assert.match(line ?? "", /^ERROR: invalid SUB: "window" must be an integer from 1 to 1024/);
  }
  await c.send(json({ type: "SUB", topic: "t", window: 1024 }));
  await c.expect("OK");
});

Deno.test("the window is stored with the subscription: a new login resumes with it, a SUB changes it", async () => {
  await using b = await startTestBroker();
  const ids: number[] = [];
  {
    await using c = await loginConsumer(b.consumerPort, "sam");
    await c.send(json({ type: "SUB", topic: "s", window: 3 }));
    await c.expect("OK");
    await using p = await LineClient.connect(b.publisherPort);
    for (let i = 0; i < 5; i++) ids.push(await publish(p, "s", i));
    assert.deepEqual(words(await lines(c, 3)), ids.slice(0, 3).map((i) => `PUB ${i}`));
  }
  await using again = await loginConsumer(b.consumerPort, "sam");
  assert.deepEqual(words(await lines(again, 3)), ids.slice(0, 3).map((i) => `PUB ${i}`));
  await again.expectSilence(100);
  // A larger window on the live subscription sends the rest at once.
  await again.send(json({ type: "SUB", topic: "s", window: 5 }));
  assert.deepEqual(words(await lines(again, 3)), ["OK", `PUB ${ids[3]}`, `PUB ${ids[4]}`]);
});

Deno.test("SIGKILL mid-window: after the restart the received get their PUBREL, the completed nothing, the rest PUB again", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-window-" });
  const args = ["--retry-interval", "10000"];
  try {
    let broker = await ChildBroker.start(dataDir, args);
    const ids: number[] = [];
    try {
      await using c = await loginConsumer(broker.consumerPort, "kim");
      await c.send(json({ type: "SUB", topic: "k", window: 8 }));
      await c.expect("OK");
      await using p = await LineClient.connect(broker.publisherPort);
      for (let i = 0; i < 8; i++) ids.push(await publish(p, "k", `m${i}`));
      assert.deepEqual(words(await lines(c, 8)), ids.map((id) => `PUB ${id}`));
      // PUBREC for the first six, then PUBCOMP for the second and fourth (out of order).
      await sendAll(c, ids.slice(0, 6).map((msgId) => ({ type: "PUBREC", msgId })));
      assert.equal(words(await lines(c, 12)).filter((w) => w === "OK").length, 6);
      await sendAll(c, [ids[1], ids[3]].map((msgId) => ({ type: "PUBCOMP", msgId })));
      assert.deepEqual(words(await lines(c, 2)), ["OK", "OK"]);
    } finally {
      await broker.stop("SIGKILL");
    }
    broker = await ChildBroker.start(dataDir, args);
    try {
      await using c = await loginConsumer(broker.consumerPort, "kim");
      const resumed = words(await lines(c, 6));
      assert.deepEqual(resumed, [
        `PUBREL ${ids[0]}`,
        `PUBREL ${ids[2]}`,
        `PUBREL ${ids[4]}`,
        `PUBREL ${ids[5]}`,
        `PUB ${ids[6]}`,
        `PUB ${ids[7]}`,
      ]);
      await c.expectSilence(100);
      // Everything completes; a new message comes once, and nothing else.
      await sendAll(c, [
        ...[0, 2, 4, 5].map((i) => ({ type: "PUBCOMP", msgId: ids[i] })),
        ...[6, 7].map((i) => ({ type: "PUBREC", msgId: ids[i] })),
      ]);
      const done = words(await lines(c, 8));
      assert.equal(done.filter((w) => w === "OK").length, 6);
      await sendAll(c, [6, 7].map((i) => ({ type: "PUBCOMP", msgId: ids[i] })));
      assert.deepEqual(words(await lines(c, 2)), ["OK", "OK"]);
      await using p = await LineClient.connect(broker.publisherPort);
      const last = await publish(p, "k", "last");
      assert.deepEqual(words(await lines(c, 1)), [`PUB ${last}`]);
      await c.expectSilence(100);
    } finally {
      await broker.stop();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
