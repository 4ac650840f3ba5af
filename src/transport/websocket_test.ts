import assert from "node:assert/strict";
import { concat } from "./connection.ts";
import mqtt from "mqtt";
import { ConnectionLimits } from "./connection_limits.ts";
import { createPacketParser, encodePacket, type Packet } from "./mqtt_codec.ts";
import type { PacketLink } from "./packet_link.ts";
import { MqttWsServer, type MqttWsServerOptions, type WsPacketConnection } from "./websocket.ts";

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
  clientId: "ws5",
  keepalive: 0,
};

/**
 * A minimal broker over any {@link PacketLink}: CONNACK, SUBACK plus a greeting,
 * PINGRESP, and every PUBLISH sent back.
 */
async function answer(conn: PacketLink): Promise<void> {
  for await (const item of conn.packets()) {
    if (item.kind !== "packet") break;
    const packet = item.packet;
    if (packet.cmd === "connect") {
      conn.send(
        packet.protocolVersion === 5
          ? { cmd: "connack", sessionPresent: false, reasonCode: 0 }
          : { cmd: "connack", sessionPresent: false, returnCode: 0 },
      );
    } else if (packet.cmd === "subscribe") {
      conn.send({
        cmd: "suback",
        messageId: packet.messageId,
        granted: packet.subscriptions.map((s) => s.qos),
      });
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

/** A raw WebSocket client that parses the binary frames the server sends. */
class RawClient {
  readonly socket: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  /** Sizes of the binary frames received, in order. */
  readonly frames: number[] = [];
  readonly #parser = createPacketParser(5, 1 << 24);
  #pending: Packet[] = [];
  #ended = false;
  #wake: (() => void) | undefined;

  constructor(url: string, protocols: string | string[] = "mqtt") {
    this.socket = new WebSocket(url, protocols);
    this.socket.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.socket.onopen = () => resolve();
      this.socket.onerror = () => reject(new Error("WebSocket failed to open"));
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.socket.onclose = (event) => {
        this.#ended = true;
        this.#wake?.();
        resolve(event);
      };
    });
    this.socket.onmessage = (event) => {
      const bytes = new Uint8Array(event.data as ArrayBuffer);
      this.frames.push(bytes.length);
      for (const item of this.#parser.push(bytes)) {
        if (item.kind !== "packet") throw new Error(`server sent bad bytes: ${item.kind}`);
        this.#pending.push(item.packet);
      }
      this.#wake?.();
    };
  }

  /** The next packet from the server, or null once the socket closed. */
  async read(): Promise<Packet | null> {
    while (this.#pending.length === 0) {
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    return this.#pending.shift()!;
  }

  async close(): Promise<void> {
    this.socket.close();
    await this.closed;
  }
}

/** A running server plus every connection it accepted, for cleanup. */
class Harness {
  readonly server: MqttWsServer;
  readonly conns: WsPacketConnection[] = [];
  readonly #clients: RawClient[] = [];
  #waiters: ((conn: WsPacketConnection) => void)[] = [];
  /** Every connection handler's run: cleanup waits for them (and their timers). */
  readonly #handlers: Promise<void>[] = [];

  constructor(options: Partial<MqttWsServerOptions>) {
    const handler = options.onConnection ?? ((conn) => answer(conn));
    this.server = new MqttWsServer({
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
        const run = handler(conn);
        this.#handlers.push(Promise.resolve(run).catch(() => {}));
        return run;
      },
    });
    this.server.start();
  }

  get url(): string {
    return `ws://127.0.0.1:${this.server.port}/mqtt`;
  }

  firstConnection(): Promise<WsPacketConnection> {
    const conn = this.conns[0];
    if (conn) return Promise.resolve(conn);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async connect(protocols?: string | string[]): Promise<RawClient> {
    const client = new RawClient(this.url, protocols);
    this.#clients.push(client);
    await client.opened;
    return client;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.#clients.map((client) => client.close()));
    await this.server.close();
    await Promise.all(this.#handlers);
  }
}

/** Sends a raw HTTP/1.1 request and returns the status line and headers of the answer. */
async function rawRequest(port: number, head: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(`${head}\r\nHost: 127.0.0.1\r\n\r\n`));
    const buffer = new Uint8Array(4096);
    let received = "";
    while (!received.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      received += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return received.slice(0, received.indexOf("\r\n\r\n"));
  } finally {
    conn.close();
  }
}

const upgradeHead = (path: string, extra = "") =>
  `GET ${path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13${extra}`;

test("MQTT.js connects over WebSocket, subscribes and gets PUBLISHes at levels 4 and 5", async () => {
  const h = new Harness({});
  try {
    for (const protocolVersion of [4, 5] as const) {
      const client = await mqtt.connectAsync(h.url, {
        protocolVersion,
        clientId: `mqttjs-ws-${protocolVersion}`,
        reconnectPeriod: 0,
        keepalive: 0,
      });
      try {
        const messages: [string, string][] = [];
        const two = new Promise<void>((resolve) =>
          client.on("message", (topic, payload) => {
            messages.push([topic, payload.toString()]);
            if (messages.length === 2) resolve();
          })
        );
        const granted = await client.subscribeAsync("#", { qos: 1 });
        assert.deepEqual(granted.map((g) => [g.topic, g.qos]), [["#", 1]]);
        await client.publishAsync("a/b", `hi ${protocolVersion}`, { qos: 0 });
        await two;
        assert.deepEqual(messages, [["greeting/hello", "welcome"], [
          "a/b",
          `hi ${protocolVersion}`,
        ]]);
      } finally {
        await client.endAsync();
      }
    }
    assert.deepEqual(h.conns.map((c) => c.protocolVersion), [4, 5]);
    await Promise.all(h.conns.map((c) => c.closed));
  } finally {
    await h.cleanup();
  }
});

test("the mqtt sub-protocol is selected, and required when the client offers any", async () => {
  const h = new Harness({});
  try {
    const offered = await h.connect(["mqttv3.1", "mqtt"]);
    assert.equal(offered.socket.protocol, "mqtt");
    const none = await h.connect([]);
    assert.equal(none.socket.protocol, "");
    const refused = await rawRequest(
      h.server.port,
      upgradeHead("/mqtt", "\r\nSec-WebSocket-Protocol: chat, superchat"),
    );
    assert.match(refused, /^HTTP\/1\.1 400 /);
    const accepted = await rawRequest(
      h.server.port,
      upgradeHead("/mqtt", "\r\nSec-WebSocket-Protocol: mqtt"),
    );
    assert.match(accepted, /^HTTP\/1\.1 101 /);
    assert.match(accepted, /sec-websocket-protocol: mqtt/i);
  } finally {
    await h.cleanup();
  }
});

test("another path answers 404, a plain request on the path 426, a POST upgrade 405", async () => {
  const h = new Harness({});
  try {
    assert.match(await rawRequest(h.server.port, upgradeHead("/other")), /^HTTP\/1\.1 404 /);
    const plain = await rawRequest(h.server.port, "GET /mqtt HTTP/1.1");
    assert.match(plain, /^HTTP\/1\.1 426 /);
    assert.match(plain, /upgrade: websocket/i);
    const post = await rawRequest(h.server.port, upgradeHead("/mqtt").replace(/^GET/, "POST"));
    assert.match(post, /^HTTP\/1\.1 405 /);
    assert.equal(h.conns.length, 0, "no request was upgraded");
  } finally {
    await h.cleanup();
  }
});

test("a packet split across two binary frames and several in one frame arrive whole", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    const connect = encodePacket(connect5, 5);
    client.socket.send(connect.subarray(0, 5));
    await delay(20);
    client.socket.send(connect.subarray(5));
    assert.equal((await client.read())?.cmd, "connack");
    const pings = concat(Array.from({ length: 5 }, () => encodePacket({ cmd: "pingreq" }, 5)));
    client.socket.send(pings);
    for (let i = 0; i < 5; i++) assert.equal((await client.read())?.cmd, "pingresp");
    assert.equal((await h.firstConnection()).protocolVersion, 5);
  } finally {
    await h.cleanup();
  }
});

test("replies sent in one turn leave in one binary frame", async () => {
  const h = new Harness({
    onConnection(conn) {
      for (let i = 0; i < 100; i++) conn.send({ cmd: "pingresp" });
    },
  });
  try {
    const client = await h.connect();
    for (let i = 0; i < 100; i++) assert.equal((await client.read())?.cmd, "pingresp");
    assert.deepEqual(client.frames, [200]);
  } finally {
    await h.cleanup();
  }
});

test("a text frame closes the connection [MQTT-6.0.0-1]", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    client.socket.send(new Uint8Array(encodePacket(connect5, 5)));
    assert.equal((await client.read())?.cmd, "connack");
    client.socket.send("hello");
    const event = await client.closed;
    assert.equal(event.code, 1003);
    const conn = await h.firstConnection();
    await conn.closed;
    assert.match(conn.closeReason ?? "", /text frame/);
  } finally {
    await h.cleanup();
  }
});

test("close() sends what is queued, then closes with code 1000", async () => {
  const h = new Harness({
    onConnection(conn) {
      conn.send({ cmd: "pingresp" });
      conn.close("done");
    },
  });
  try {
    const client = await h.connect();
    assert.equal((await client.read())?.cmd, "pingresp");
    assert.equal((await client.closed).code, 1000);
    const conn = await h.firstConnection();
    await conn.closed;
    assert.equal(conn.closeReason, "done");
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
    onConnection(conn) {
      conn.setKeepAlive(150);
      return answer(conn);
    },
  });
  try {
    const client = await h.connect();
    client.socket.send(encodePacket(connect5, 5));
    assert.equal((await client.read())?.cmd, "connack");
    // Packets keep it open past the limit.
    for (let i = 0; i < 6; i++) {
      await delay(50);
      client.socket.send(encodePacket({ cmd: "pingreq" }, 5));
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

test("idleTimeoutMs closes a connection that never sends a CONNECT", async () => {
  const h = new Harness({ idleTimeoutMs: 80 });
  try {
    const client = await h.connect();
    assert.equal((await client.closed).code, 1000);
    assert.match((await h.firstConnection()).closeReason ?? "", /nothing received for 80 ms/);
  } finally {
    await h.cleanup();
  }
});

test("output past writeBufferBytes closes a peer that does not read", async () => {
  let conn: WsPacketConnection | undefined;
  const h = new Harness({
    writeBufferBytes: 256 * 1024,
    maxPacketBytes: 1 << 20,
    async onConnection(c) {
      conn = c;
      const payload = new Uint8Array(64 * 1024);
      // Over many turns: the socket's own backlog (bufferedAmount) counts too.
      while (!c.isClosed) {
        c.send({ cmd: "publish", topic: "t", payload, qos: 0, retain: false, dup: false });
        await delay(1);
      }
    },
  });
  // A client that completes the upgrade and then never reads.
  const socket = await Deno.connect({ hostname: "127.0.0.1", port: h.server.port });
  try {
    await socket.write(new TextEncoder().encode(`${upgradeHead("/mqtt")}\r\nHost: x\r\n\r\n`));
    await h.firstConnection();
    while (conn!.closeReason === undefined) await delay(5);
    assert.match(conn!.closeReason, /peer too slow: over 262144 bytes/);
  } finally {
    socket.close(); // frees the server's socket, stuck writing to us
    await conn?.closed;
    await h.cleanup();
  }
});

test("input past inputBufferBytes closes a peer that sends faster than it is handled", async () => {
  const release = Promise.withResolvers<void>();
  const h = new Harness({
    inputBufferBytes: 1000,
    async onConnection(conn) {
      await release.promise; // a handler stuck on something slow
      for await (const _ of conn.packets()) {
        // Only what was queued before the close.
      }
    },
  });
  try {
    const client = await h.connect();
    const ping = encodePacket({ cmd: "pingreq" }, 5);
    for (let i = 0; i < 300; i++) client.socket.send(concat([ping, ping]));
    await client.closed; // its close code varies: it is still sending when ours arrives
    assert.match((await h.firstConnection()).closeReason ?? "", /peer too fast: over 1000 bytes/);
  } finally {
    release.resolve();
    await h.cleanup();
  }
});

test("connections count in shared ConnectionLimits, refused ones answer 503", async () => {
  const limits = new ConnectionLimits(1, 1);
  const refusals: string[] = [];
  const h = new Harness({ limits, onRefused: (_remote, reason) => refusals.push(reason) });
  try {
    const first = await h.connect();
    assert.equal(limits.total, 1);
    assert.match(await rawRequest(h.server.port, upgradeHead("/mqtt")), /^HTTP\/1\.1 503 /);
    assert.deepEqual(refusals, ["too many connections (limit 1)"]);
    await first.close();
    await (await h.firstConnection()).closed;
    assert.equal(limits.total, 0);
    await h.connect();
    assert.equal(limits.total, 1);
  } finally {
    await h.cleanup();
  }
  assert.equal(limits.total, 0);
});

test("closing the server closes its clients and waits for their connections", async () => {
  const h = new Harness({});
  const raw = await h.connect();
  const client = await mqtt.connectAsync(h.url, {
    protocolVersion: 5,
    reconnectPeriod: 0,
    keepalive: 0,
  });
  const mqttClosed = new Promise<void>((resolve) => client.once("close", () => resolve()));
  await h.server.close();
  assert.equal((await raw.closed).code, 1000);
  await mqttClosed;
  await client.endAsync();
  assert.equal(h.conns.length, 2);
  for (const conn of h.conns) assert.equal(conn.closeReason, "server closing");
  await h.cleanup();
});
