/**
 * MQTT 5 shared subscriptions (`$share/{group}/{filter}`) with real MQTT.js clients:
 * each message goes to one member, members take turns, a member that leaves hands on
 * what it did not acknowledge, and a group of persistent sessions keeps its place
 * across a broker restart.
 */
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { startTestBroker, waitFor } from "./helpers.ts";

type Client = Awaited<ReturnType<typeof mqtt.connectAsync>>;

function connect(port: number, clientId: string, extra: Record<string, unknown> = {}) {
  return mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    protocolVersion: 5,
    clientId,
    reconnectPeriod: 0,
    ...extra,
  });
}

/** Collects the payloads each client receives. */
function collect(c: Client, into: string[]): void {
  c.on("message", (_topic, payload) => into.push(new TextDecoder().decode(payload)));
}

Deno.test("each message of a shared subscription goes to exactly one member, in turns", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  const got: string[][] = [[], [], []];
  const members: Client[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await connect(port, `member-${i}`);
    collect(c, got[i] as string[]);
    const granted = await c.subscribeAsync("$share/workers/jobs/+", { qos: 1 });
    assert.equal(granted[0]?.qos, 1);
    members.push(c);
  }
  const pub = await connect(port, "producer");
  for (let i = 0; i < 60; i++) await pub.publishAsync("jobs/a", `job ${i}`, { qos: 1 });
  await waitFor(() => got.flat().length >= 60, "60 jobs delivered");
  const all = got.flat().sort();
  assert.equal(all.length, 60);
  assert.equal(new Set(all).size, 60, "no job twice");
  for (const g of got) assert.ok(g.length >= 10, `every member got a share: ${g.length}`);
  await pub.endAsync();
  for (const c of members) await c.endAsync();
});

Deno.test("a shared subscription works beside a normal one and at protocol level 4", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  const shared: string[] = [];
  const plain: string[] = [];
  const m1 = await connect(port, "m1", { protocolVersion: 4 });
  const m2 = await connect(port, "m2", { protocolVersion: 4 });
  collect(m1, shared);
  collect(m2, shared);
  await m1.subscribeAsync("$share/g/news", { qos: 2 });
  await m2.subscribeAsync("$share/g/news", { qos: 2 });
  const watcher = await connect(port, "watcher");
  collect(watcher, plain);
  await watcher.subscribeAsync("news", { qos: 2 });
  const pub = await connect(port, "pub");
  for (let i = 0; i < 20; i++) await pub.publishAsync("news", `n${i}`, { qos: 2 });
  await waitFor(() => shared.length >= 20 && plain.length >= 20, "both views complete");
  assert.equal(new Set(shared).size, 20);
  assert.deepEqual(plain, Array.from({ length: 20 }, (_, i) => `n${i}`));
  for (const c of [pub, watcher, m1, m2]) await c.endAsync();
});

Deno.test("messages a departed member held go to the remaining member", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const port = b.mqttPort as number;
  // The first member never acknowledges: MQTT.js hands a PUBLISH to this hook and sends
  // no PUBACK (and reads no further packet) until `done` is called, which it never is.
  const silentGot: string[] = [];
  const silent = await connect(port, "silent", {
    customHandleAcks: (_t: string, m: Uint8Array, _p: unknown, _done: unknown) => {
      silentGot.push(new TextDecoder().decode(m));
    },
  });
  await silent.subscribeAsync("$share/g/t", { qos: 1 });
  const worker = await connect(port, "worker");
  const got: string[] = [];
  collect(worker, got);
  await worker.subscribeAsync("$share/g/t", { qos: 1 });
  const pub = await connect(port, "pub");
  for (let i = 0; i < 6; i++) await pub.publishAsync("t", `x${i}`, { qos: 1 });
  await waitFor(() => silentGot.length === 1, "the silent member got a message");
  assert.ok(got.length < 6, "the silent member holds some");
  // It leaves without acknowledging: what it held goes to the worker.
  silent.end(true);
  await waitFor(() => got.length >= 6, "every message reached the worker");
  assert.deepEqual([...new Set(got)].sort(), ["x0", "x1", "x2", "x3", "x4", "x5"]);
  await pub.endAsync();
  await worker.endAsync();
});

Deno.test("No Local on a shared subscription is a protocol error (v5 DISCONNECT 0x82)", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const c = await connect(b.mqttPort as number, "nl");
  const reason = new Promise<number | undefined>((resolve) => {
    c.on("disconnect", (p) => resolve(p.reasonCode));
    c.on("close", () => resolve(undefined));
  });
  c.subscribe("$share/g/t", { qos: 1, nl: true });
  assert.equal(await reason, 0x82);
  await c.endAsync(true);
});

Deno.test("a group of persistent members keeps its place across a broker restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-share-" });
  try {
    const opts = { clean: false, properties: { sessionExpiryInterval: 600 } };
    {
      await using b = await startTestBroker({ dataDir, mqttPort: -1 });
      const m = await connect(b.mqttPort as number, "keeper", opts);
      await m.subscribeAsync("$share/g/durable", { qos: 1 });
      await m.endAsync();
      const pub = await connect(b.mqttPort as number, "pub");
      for (let i = 0; i < 5; i++) await pub.publishAsync("durable", `d${i}`, { qos: 1 });
      await pub.endAsync();
    }
    await using b = await startTestBroker({ dataDir, mqttPort: -1 });
    const got: string[] = [];
    // Handlers first: queued messages may arrive right after the CONNACK.
    const m = mqtt.connect(`mqtt://127.0.0.1:${b.mqttPort}`, {
      protocolVersion: 5,
      clientId: "keeper",
      reconnectPeriod: 0,
      ...opts,
    });
    collect(m, got);
    await new Promise((resolve) => m.once("connect", resolve));
    await waitFor(() => got.length >= 5, "queued group messages after the restart");
    assert.deepEqual(got, ["d0", "d1", "d2", "d3", "d4"]);
    await m.endAsync();
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
