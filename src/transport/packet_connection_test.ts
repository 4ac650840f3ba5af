import assert from "node:assert/strict";
import { concat } from "./connection.ts";
import { Buffer } from "node:buffer";
import mqtt from "mqtt";
import { createPacketParser, encodePacket, type Packet, type PacketEvent } from "./mqtt_codec.ts";
import { PacketConnection, PacketServer, type PacketServerOptions } from "./packet_connection.ts";

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: true, sanitizeResources: true, fn });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const connect5: Packet = {
  cmd: "connect",
  protocolId: "MQTT",
  protocolVersion: 5,
  clean: true,
  clientId: "c5",
  keepalive: 0,
  properties: { sessionExpiryInterval: 60 },
};

/** A minimal broker: CONNACK, SUBACK, PINGRESP, and every PUBLISH sent back; reports the rest. */
async function answer(conn: PacketConnection, seen: PacketEvent[] = []): Promise<void> {
  for await (const item of conn.packets()) {
    seen.push(item);
    if (item.kind !== "packet") break;
    const packet = item.packet;
    if (packet.cmd === "connect") {
      conn.send(
        packet.protocolVersion === 5
          ? {
            cmd: "connack",
            sessionPresent: false,
            reasonCode: 0,
            properties: { receiveMaximum: 5 },
          }
          : { cmd: "connack", sessionPresent: false, returnCode: 0 },
      );
    } else if (packet.cmd === "subscribe") {
      const granted = packet.subscriptions.map((s) => s.qos);
      conn.send({ cmd: "suback", messageId: packet.messageId, granted });
      conn.send({
        cmd: "publish",
        topic: "greeting/hello",
        payload: new TextEncoder().encode("welcome"),
        qos: 0,
        retain: false,
        dup: false,
      });
    } else if (packet.cmd === "publish") conn.send(packet);
    else if (packet.cmd === "pingreq") conn.send({ cmd: "pingresp" });
    else if (packet.cmd === "disconnect") break;
  }
  conn.close("input ended");
}

/** A raw client over a real socket that parses what the server sends. */
class Client {
  readonly conn: Deno.TcpConn;
  readonly #parser;
  #pending: Packet[] = [];
  #closed = false;

  constructor(conn: Deno.TcpConn, protocolVersion: 4 | 5) {
    this.conn = conn;
    this.#parser = createPacketParser(protocolVersion, 1 << 24);
  }

  async write(bytes: Uint8Array): Promise<void> {
    while (bytes.length > 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  /** The next packet from the server, or null at end of input. */
  async read(): Promise<Packet | null> {
    const buffer = new Uint8Array(64 * 1024);
    while (this.#pending.length === 0) {
      const n = await this.conn.read(buffer);
      if (n === null) return null;
      for (const item of this.#parser.push(buffer.subarray(0, n))) {
        if (item.kind !== "packet") throw new Error(`server sent bad bytes: ${item.kind}`);
        this.#pending.push(item.packet);
      }
    }
    return this.#pending.shift()!;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.conn.close();
  }
}

/** A running server plus every connection it accepted, for cleanup. */
class Harness {
  readonly server: PacketServer;
  readonly conns: PacketConnection[] = [];
  readonly #clients: Client[] = [];
  #waiters: ((conn: PacketConnection) => void)[] = [];

  constructor(options: Partial<PacketServerOptions>) {
    const handler = options.onConnection ?? ((conn) => answer(conn));
    this.server = new PacketServer({
      hostname: "127.0.0.1",
      port: 0,
      maxPacketBytes: 4096,
      writeBufferBytes: 1 << 20,
      idleTimeoutMs: 0,
      ...options,
      onConnection: (conn) => {
        this.conns.push(conn);
        for (const wake of this.#waiters) wake(conn);
        this.#waiters = [];
        return handler(conn);
      },
    });
    this.server.start();
  }

  firstConnection(): Promise<PacketConnection> {
    const conn = this.conns[0];
    if (conn) return Promise.resolve(conn);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async connect(protocolVersion: 4 | 5 = 5): Promise<Client> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.server.port });
    const client = new Client(conn, protocolVersion);
    this.#clients.push(client);
    return client;
  }

  async cleanup(): Promise<void> {
    for (const client of this.#clients) client.close();
    for (const conn of this.conns) conn.close("test over");
    await Promise.all(this.conns.map((c) => c.closed));
    await this.server.close();
  }
}

test("CONNECT, SUBSCRIBE and PUBLISH at level 5 are answered at level 5", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect(5);
    await client.write(concat([
      encodePacket(connect5, 5),
      encodePacket(
        { cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "a/#", qos: 2 }] },
        5,
      ),
      encodePacket({
        cmd: "publish",
        topic: "a/b",
        payload: Buffer.from("hi"),
        qos: 1,
        messageId: 2,
        retain: false,
        dup: false,
        properties: { correlationData: Buffer.from("x") },
      }, 5),
    ]));
    const connack = await client.read();
    assert.equal(connack?.cmd, "connack");
    assert.equal(
      (connack as { properties?: { receiveMaximum?: number } }).properties?.receiveMaximum,
      5,
    );
    const suback = await client.read() as { cmd: string; messageId: number; granted: number[] };
    assert.deepEqual([suback.cmd, suback.messageId, suback.granted], ["suback", 1, [2]]);
    assert.equal((await client.read())?.cmd, "publish"); // the greeting
    const echoed = await client.read() as {
      topic: string;
      payload: Uint8Array;
      properties: { correlationData: Uint8Array };
    };
    assert.equal(echoed.topic, "a/b");
    assert.equal(new TextDecoder().decode(echoed.payload), "hi");
    assert.equal(new TextDecoder().decode(echoed.properties.correlationData), "x");
    assert.equal((await h.firstConnection()).protocolVersion, 5);
  } finally {
    await h.cleanup();
  }
});

test("a level 4 CONNECT keeps the connection at level 4", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect(4);
    await client.write(
      encodePacket({ ...connect5, protocolVersion: 4, properties: undefined } as Packet, 4),
    );
    const connack = await client.read() as { returnCode?: number };
    assert.equal(connack.returnCode, 0);
    assert.equal((await h.firstConnection()).protocolVersion, 4);
  } finally {
    await h.cleanup();
  }
});

test("packets written a few bytes at a time arrive whole and in order", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect(5);
    const pings = Array.from({ length: 20 }, () => encodePacket({ cmd: "pingreq" }, 5));
    const stream = concat([encodePacket(connect5, 5), ...pings]);
    for (let i = 0; i < stream.length; i += 3) {
      await client.write(stream.subarray(i, i + 3));
      await delay(0);
    }
    assert.equal((await client.read())?.cmd, "connack");
    for (let i = 0; i < 20; i++) assert.equal((await client.read())?.cmd, "pingresp");
  } finally {
    await h.cleanup();
  }
});

test("a malformed packet yields a malformed item and the connection closes cleanly", async () => {
  const seen: PacketEvent[] = [];
  const h = new Harness({ onConnection: (conn) => answer(conn, seen) });
  try {
    const client = await h.connect(5);
    const bad = encodePacket({ cmd: "pingreq" }, 5);
    bad[0] = 0xc1; // PINGREQ's reserved flags must be 0 (v5 [MQTT-2.1.3-1])
    await client.write(
      concat([encodePacket(connect5, 5), bad, encodePacket({ cmd: "pingreq" }, 5)]),
    );
    assert.equal((await client.read())?.cmd, "connack");
    assert.equal(await client.read(), null, "the server closes after the malformed packet");
    const conn = await h.firstConnection();
    await conn.closed;
    assert.deepEqual(seen.map((item) => item.kind), ["packet", "malformed"]);
    assert.equal(conn.closeReason, "input ended");
  } finally {
    await h.cleanup();
  }
});

test("an oversize Remaining Length yields too-large from the header alone", async () => {
  const seen: PacketEvent[] = [];
  const h = new Harness({ maxPacketBytes: 1000, onConnection: (conn) => answer(conn, seen) });
  try {
    const client = await h.connect(5);
    // A PUBLISH that says 1,000,000 bytes follow; not one of them is sent.
    await client.write(new Uint8Array([0x30, 0xc0, 0x84, 0x3d]));
    assert.equal(await client.read(), null);
    assert.deepEqual(seen, [{ kind: "too-large", limit: 1000, size: 1_000_004 }]);
  } finally {
    await h.cleanup();
  }
});

test("everything sent in one turn leaves in one write", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const socket = await listener.accept();
  listener.close();
  const writes: number[] = [];
  const write = socket.write.bind(socket);
  socket.write = (bytes: Uint8Array) => {
    writes.push(bytes.length);
    return write(bytes);
  };
  const conn = new PacketConnection(socket, {
    maxPacketBytes: 1024,
    writeBufferBytes: 1 << 20,
    idleTimeoutMs: 0,
  });
  try {
    for (let i = 0; i < 100; i++) conn.send({ cmd: "pingresp" });
    const received = new Uint8Array(200);
    let got = 0;
    while (got < 200) got += (await client.read(received.subarray(got))) ?? 0;
    assert.deepEqual(writes, [200]);
    conn.send({ cmd: "pingresp" });
    conn.send({ cmd: "pingresp" });
    await delay(10);
    assert.deepEqual(writes, [200, 4]);
  } finally {
    client.close();
    conn.close("test over");
    await conn.closed;
  }
});

test("sendPublish: a shared head, the identifier, DUP and the payload leave as one PUBLISH, in order with the rest", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const socket = await listener.accept();
  listener.close();
  const conn = new PacketConnection(socket, {
    maxPacketBytes: 1024,
    writeBufferBytes: 1 << 20,
    idleTimeoutMs: 0,
  });
  try {
    const payload = new TextEncoder().encode("payload");
    const whole = (qos: 0 | 1, messageId: number | undefined, dup: boolean) =>
      encodePacket(
        { cmd: "publish", topic: "a/b", payload, qos, messageId, dup, retain: false },
        4,
      );
    // The head is the encoding up to the payload, its identifier zeroed.
    const full = whole(1, 0, false);
    const head = full.slice(0, full.length - payload.length);
    const idOffset = head.length - 2;
    const before = head.slice();
    conn.sendPublish(head, idOffset, 0x1234, false, payload);
    conn.send({ cmd: "pingresp" });
    conn.sendPublish(head, idOffset, 7, true, payload);
    const head0 = whole(0, undefined, false).subarray(0, -payload.length);
    conn.sendPublish(head0, 0, null, false, payload);
    const expected = concat([
      whole(1, 0x1234, false),
      encodePacket({ cmd: "pingresp" }, 4),
      whole(1, 7, true),
      whole(0, undefined, false),
    ]);
    const received = new Uint8Array(expected.length);
    let got = 0;
    while (got < received.length) got += (await client.read(received.subarray(got))) ?? 0;
    assert.deepEqual(received, expected);
    assert.deepEqual(head, before, "the shared head is left as it was");
  } finally {
    client.close();
    conn.close("test over");
    await conn.closed;
  }
});

test("sendPublish counts head and payload against writeBufferBytes, one packet larger than it still goes alone", async () => {
  let conn: PacketConnection | undefined;
  let closedAfterFirst: boolean | undefined;
  const h = new Harness({
    writeBufferBytes: 64 * 1024,
    onConnection(c) {
      conn = c;
      const head = new Uint8Array([0x30, 0x80, 0x80, 0x05, 0, 1, 0x74]); // topic "t"
      // One packet over the bound with nothing queued before it is sent; the next is not.
      c.sendPublish(head, 0, null, false, new Uint8Array(80 * 1024 - 3));
      closedAfterFirst = c.isClosed;
      c.sendPublish(head, 0, null, false, new Uint8Array(80 * 1024 - 3));
    },
  });
  try {
    await h.connect(5); // never reads
    await h.firstConnection();
    await conn!.closed;
    assert.equal(closedAfterFirst, false);
    assert.match(conn!.closeReason ?? "", /peer too slow: over 65536 bytes/);
  } finally {
    await h.cleanup();
  }
});

test("output past writeBufferBytes closes the connection and drops the backlog", async () => {
  let conn: PacketConnection | undefined;
  const h = new Harness({
    writeBufferBytes: 64 * 1024,
    onConnection(c) {
      conn = c;
      const payload = new Uint8Array(16 * 1024);
      // One turn: nothing is written before the bound is passed.
      for (let i = 0; i < 10 && !c.isClosed; i++) {
        c.send({ cmd: "publish", topic: "t", payload, qos: 0, retain: false, dup: false });
      }
    },
  });
  try {
    await h.connect(5); // never reads
    await h.firstConnection();
    await conn!.closed;
    assert.match(conn!.closeReason ?? "", /peer too slow: over 65536 bytes/);
  } finally {
    await h.cleanup();
  }
});

test("setKeepAlive closes a connection that sends nothing for that long, after onIdle", async () => {
  const idle: number[] = [];
  const h = new Harness({
    onIdle(conn, ms) {
      idle.push(ms);
      conn.send({ cmd: "disconnect", reasonCode: 0x8d });
    },
    onConnection: (conn) => {
      conn.setKeepAlive(150);
      return answer(conn);
    },
  });
  try {
    const client = await h.connect(5);
    await client.write(encodePacket(connect5, 5));
    assert.equal((await client.read())?.cmd, "connack");
    // Packets keep it open past the limit.
    for (let i = 0; i < 6; i++) {
      await delay(50);
      await client.write(encodePacket({ cmd: "pingreq" }, 5));
      assert.equal((await client.read())?.cmd, "pingresp");
    }
    const started = performance.now();
    const disconnect = await client.read() as { cmd: string; reasonCode?: number };
    assert.deepEqual([disconnect.cmd, disconnect.reasonCode], ["disconnect", 0x8d]);
    assert.equal(await client.read(), null);
    assert.ok(performance.now() - started >= 100);
    assert.deepEqual(idle, [150]);
    assert.match(
      (await h.firstConnection()).closeReason ?? "",
      /keep-alive: nothing received for 150 ms/,
    );
  } finally {
    await h.cleanup();
  }
});

test("setKeepAlive(0) turns the timer off", async () => {
  const h = new Harness({
    idleTimeoutMs: 60,
    onConnection: (conn) => {
      conn.setKeepAlive(0);
      return answer(conn);
    },
  });
  try {
    await h.connect(5);
    const conn = await h.firstConnection();
    await delay(150);
    assert.equal(conn.isClosed, false);
  } finally {
    await h.cleanup();
  }
});

test("MQTT.js connects, subscribes and receives a PUBLISH at levels 4 and 5", async () => {
  const h = new Harness({});
  try {
    for (const protocolVersion of [4, 5] as const) {
      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${h.server.port}`, {
        protocolVersion,
        clientId: `mqttjs-${protocolVersion}`,
        reconnectPeriod: 0,
        keepalive: 0,
      });
      // MQTT.js resolves endAsync before its socket has emitted "close" (Node's streams
      // finish that on a later timer): wait for it, or the op sanitizer sees the timer.
      const socketClosed = new Promise((resolve) => client.stream.once("close", resolve));
      try {
        const message = new Promise<[string, string]>((resolve) =>
          client.once("message", (topic, payload) => resolve([topic, payload.toString()]))
        );
        const granted = await client.subscribeAsync("greeting/+", { qos: 1 });
        assert.deepEqual(granted.map((g) => [g.topic, g.qos]), [["greeting/+", 1]]);
        assert.deepEqual(await message, ["greeting/hello", "welcome"]);
      } finally {
        await client.endAsync(true);
        await socketClosed;
        await delay(1);
      }
    }
    assert.deepEqual(h.conns.map((c) => c.protocolVersion), [4, 5]);
  } finally {
    await h.cleanup();
  }
});

test("batches() hands over the packets of one read together; reading is false after stopReading", async () => {
  const batches: PacketEvent[][] = [];
  const stopped = Promise.withResolvers<boolean>();
  const h = new Harness({
    onConnection: async (conn) => {
      assert.equal(conn.reading, true);
      for await (const batch of conn.batches()) {
        batches.push(batch);
        if (batches.flat().length >= 20) {
          conn.stopReading();
          stopped.resolve(conn.reading);
        }
      }
      assert.throws(() => conn.packets(), /already taken/);
      conn.close("done");
    },
  });
  try {
    const client = await h.connect(4);
    const pings = Array.from({ length: 20 }, () => encodePacket({ cmd: "pingreq" }, 4));
    await client.write(concat(pings)); // one write of 20 packets
    assert.equal(await stopped.promise, false);
    // 20 packets of 2 bytes in one write: one read, so one batch (a slow socket may split it).
    assert.ok(batches.length <= 2, `${batches.length} batches`);
    assert.deepEqual(
      batches.flat().map((i) => i.kind === "packet" && i.packet.cmd),
      pings.map(() => "pingreq"),
    );
  } finally {
    await h.cleanup();
  }
});

test("consume() hands over batches one at a time, waits for the handler's promise, and ends on stopReading or when it throws", async () => {
  const seen: string[] = [];
  const outcome = Promise.withResolvers<string>();
  let release: () => void = () => {};
  const h = new Harness({
    onConnection: (conn) => {
      let slowDone = false;
      const consumed = Promise.withResolvers<void>();
      const packetsArrived = (batch: PacketEvent[]) => {
        for (const item of batch) {
          if (item.kind !== "packet") continue;
          const p = item.packet as { cmd: string; topic?: string };
          seen.push(p.cmd === "publish" ? p.topic! : p.cmd);
          if (p.topic === "slow") {
            // The next read waits for this promise: nothing after "slow" is seen before it.
            return new Promise<void>((resolve) => {
              release = () => {
                slowDone = true;
                resolve();
              };
            });
          }
          if (p.topic === "stop") {
            assert.ok(slowDone);
            conn.stopReading();
            return;
          }
        }
      };
      conn.consume({
        packetsArrived,
        inputEnded: (err) => err === null ? consumed.resolve() : consumed.reject(err),
      });
      assert.throws(() => conn.batches(), /already taken/);
      consumed.promise.then(
        () => outcome.resolve("ended"),
        (err) => outcome.resolve(`failed: ${err}`),
      );
      return consumed.promise.finally(() => conn.close("done"));
    },
  });
  try {
    const client = await h.connect(4);
    const publish = (topic: string) =>
      encodePacket({ cmd: "publish", topic, payload: "", qos: 0, retain: false, dup: false }, 4);
    await client.write(publish("slow"));
    await until(() => seen.length === 1);
    await client.write(concat([publish("a"), publish("b")]));
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen, ["slow"], "no read while the handler's promise is pending");
    release();
    await until(() => seen.length === 3);
    await client.write(concat([publish("stop"), publish("after")]));
    assert.equal(await outcome.promise, "ended");
    assert.deepEqual(seen, ["slow", "a", "b", "stop"]);
  } finally {
    await h.cleanup();
  }

  const failed = Promise.withResolvers<string>();
  const h2 = new Harness({
    onConnection: (conn) =>
      conn.consume({
        packetsArrived() {
          throw new Error("handler broke");
        },
        inputEnded(err) {
          failed.resolve(String(err));
          conn.close("done");
        },
      }),
  });
  try {
    const client = await h2.connect(4);
    await client.write(encodePacket({ cmd: "pingreq" }, 4));
    assert.match(await failed.promise, /handler broke/);
  } finally {
    await h2.cleanup();
  }
});

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for a condition");
    await new Promise((r) => setTimeout(r, 5));
  }
}
