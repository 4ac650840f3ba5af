/**
 * Malformed and out-of-place MQTT input, sent as raw bytes over a real socket. Each case
 * is named after the Mosquitto broker test that covers the same ground (`01-connect-*`,
 * `03-publish-*`, `13-malformed-*`). For every case the broker must:
 *
 * - close that connection (read until end of stream, bounded in time), sending a v5
 *   DISCONNECT with the expected reason code first when a CONNACK was sent;
 * - keep serving everyone else: an MQTT.js client connected before keeps publishing and
 *   receiving (3.1.1 [MQTT-4.8.0-1], v5 [MQTT-4.13.1-1]: an error closes that client only);
 * - leave one dead letter `mqtt-malformed` or `mqtt-protocol-error`, read by a JSON-line
 *   consumer of `deadLetterChan`.
 */
import assert from "node:assert/strict";
import mqtt, { type MqttClient } from "mqtt";
import {
  createPacketParser,
  encodePacket,
  type Packet,
  type PacketParser,
} from "../src/transport/mqtt_codec.ts";
import { type LineClient, receive, startTestBroker, subscriber } from "./helpers.ts";

const DLC = "deadLetterChan";
/** The inbound packet limit of every broker here (the smallest the config allows is 1024). */
const MAX_PACKET = 2048;
const TIME_BOUND_MS = 3000;

const TIMEOUT = Symbol("timeout");

/** `promise`'s value, or {@link TIMEOUT} after `ms`; the timer never outlives the call. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof TIMEOUT>((r) => timer = setTimeout(() => r(TIMEOUT), ms));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- bytes by hand -------------------------------------------------------------------------

const encoder = new TextEncoder();

/** Remaining Length in the fewest bytes (MQTT-1.5.5 / 3.1.1 §2.2.3). */
function varint(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** A length-prefixed string field from text or from raw bytes (which may be ill-formed). */
function str(s: string | number[]): number[] {
  const bytes = typeof s === "string" ? [...encoder.encode(s)] : s;
  return [bytes.length >> 8, bytes.length & 0xff, ...bytes];
}

/** A whole packet: first byte, minimal Remaining Length, body. */
function frame(first: number, body: number[]): Uint8Array {
  return new Uint8Array([first, ...varint(body.length), ...body]);
}

/**
 * A PUBLISH with a free first byte (type 3 and its flags), so that QoS, DUP and RETAIN
 * can be anything, even QoS 3; `id` is written for QoS 1/2 bits (or when forced).
 */
function publishFrame(
  version: 4 | 5,
  first: number,
  topic: string | number[],
  payload: string,
  id?: number,
): Uint8Array {
  const qosBits = (first >> 1) & 3;
  const body = [...str(topic)];
  if (qosBits > 0) {
    const pid = id ?? 1;
    body.push(pid >> 8, pid & 0xff);
  }
  if (version === 5) body.push(0); // no properties
  body.push(...encoder.encode(payload));
  return frame(first, body);
}

/** A SUBSCRIBE whose first byte is given (0x82 is the only valid one). */
function subscribeFrame(version: 4 | 5, first: number, filters: string[]): Uint8Array {
  const body = [0x00, 0x07]; // packet identifier 7
  if (version === 5) body.push(0); // no properties
  for (const f of filters) body.push(...str(f), 0x01);
  return frame(first, body);
}

/** A CONNECT with an arbitrary protocol level (the name MQIsdp goes with level 3). */
function connectAtLevel(level: number, clientId: string): Uint8Array {
  const name = level === 3 ? "MQIsdp" : "MQTT";
  const body = [...str(name), level, 0x02, /* clean */ 0x00, 0x00 /* keep alive 0 */];
  if (level === 5) body.push(0); // no properties
  body.push(...str(clientId));
  return frame(0x10, body);
}

// --- the raw client -------------------------------------------------------------------------

/** A socket that writes bytes as given and parses what the broker sends back. */
class RawClient {
  readonly #conn: Deno.TcpConn;
  readonly #parser: PacketParser;
  readonly #buffer = new Uint8Array(64 * 1024);
  readonly #queue: Packet[] = [];
  #pending: Promise<number | null> | null = null;
  #eof = false;
  #closed = false;
  /** "127.0.0.1:port" of our end, as the broker sees it. */
  readonly local: string;

  private constructor(conn: Deno.TcpConn, version: 4 | 5) {
    this.#conn = conn;
    this.#parser = createPacketParser(version, 1 << 20);
    this.local = `${conn.localAddr.hostname}:${conn.localAddr.port}`;
  }

  static async connect(port: number, version: 4 | 5): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }), version);
  }

  async write(bytes: Uint8Array): Promise<void> {
    while (bytes.length > 0) bytes = bytes.subarray(await this.#conn.write(bytes));
  }

  /** CONNECT at `version` (clean, no keep-alive) and check the CONNACK says success. */
  async handshake(version: 4 | 5, clientId: string): Promise<void> {
    await this.write(encodePacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: version,
      clean: true,
      clientId,
      keepalive: 0,
    }, version));
    const connack = await this.next(TIME_BOUND_MS);
    assert.equal(connack?.cmd, "connack", `expected a CONNACK, got ${connack?.cmd ?? "the end"}`);
    const code = version === 5
      ? (connack as { reasonCode?: number }).reasonCode
      : (connack as { returnCode?: number }).returnCode;
    assert.equal(code, 0, "CONNECT accepted");
  }

  /** The next packet from the broker, null at end of stream; fails after `ms`. */
  async next(ms: number): Promise<Packet | null> {
    const deadline = Date.now() + ms;
    while (this.#queue.length === 0) {
      if (this.#eof) return null;
      // A reset after the broker closed is an end of stream too (what it sent before
      // was already read: nothing we send is left unread by these cases).
      this.#pending ??= this.#conn.read(this.#buffer).catch((err) => {
        if (err instanceof Deno.errors.ConnectionReset) return null;
        throw err;
      });
      const n = await within(this.#pending, Math.max(1, deadline - Date.now()));
      if (n === TIMEOUT) {
        assert.fail(`the broker neither sent a packet nor closed within ${ms} ms`);
      }
      this.#pending = null;
      if (n === null) {
        this.#eof = true;
        continue;
      }
      for (const item of this.#parser.push(this.#buffer.subarray(0, n))) {
        assert.equal(item.kind, "packet", "the broker sent a well-formed packet");
        if (item.kind === "packet") this.#queue.push(item.packet);
      }
    }
    return this.#queue.shift() as Packet;
  }

  /** Every packet until the broker closes the connection, which must happen within `ms`. */
  async untilClosed(ms = TIME_BOUND_MS): Promise<Packet[]> {
    const deadline = Date.now() + ms;
    const packets: Packet[] = [];
    for (;;) {
      const p = await this.next(Math.max(1, deadline - Date.now()));
      if (p === null) return packets;
      packets.push(p);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
    await this.#pending?.catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// --- the bystander --------------------------------------------------------------------------

/** An MQTT.js client connected before the bad one, subscribed to `ok/#`. */
class Bystander {
  readonly #client: MqttClient;
  readonly #socketClosed: Promise<unknown>;
  #closes = 0;

  private constructor(client: MqttClient) {
    this.#client = client;
    // MQTT.js resolves endAsync before its socket has emitted "close" (Node's streams
    // finish that on a later timer): wait for it, or the op sanitizer sees the timer.
    this.#socketClosed = new Promise((resolve) => client.stream.once("close", resolve));
    client.on("close", () => this.#closes++);
  }

  static async start(port: number, version: 4 | 5): Promise<Bystander> {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
      protocolVersion: version,
      clientId: `bystander-v${version}`,
      clean: true,
      reconnectPeriod: 0,
      keepalive: 0,
      connectTimeout: TIME_BOUND_MS,
    });
    const b = new Bystander(client);
    const granted = await client.subscribeAsync("ok/#", { qos: 1 });
    assert.deepEqual(granted.map((g) => g.qos), [1]);
    return b;
  }

  /** Publishes once at QoS 1 and receives it back through its own subscription. */
  async roundTrip(text: string): Promise<void> {
    assert.equal(this.#closes, 0, "the bystander's connection was not closed");
    assert.ok(this.#client.connected, "the bystander is still connected");
    let onMessage: ((topic: string, payload: Uint8Array) => void) | undefined;
    const got = new Promise<[string, string]>((resolve) => {
      onMessage = (topic, payload) => resolve([topic, new TextDecoder().decode(payload)]);
      this.#client.on("message", onMessage);
    });
    try {
      const acked = within(this.#client.publishAsync("ok/after", text, { qos: 1 }), TIME_BOUND_MS);
      assert.notEqual(await acked, TIMEOUT, "PUBACK for the bystander's PUBLISH");
      const message = await within(got, TIME_BOUND_MS);
      assert.notEqual(message, TIMEOUT, "the bystander receives its message");
      assert.deepEqual(message, ["ok/after", text]);
    } finally {
      if (onMessage) this.#client.off("message", onMessage);
    }
  }

  async end(): Promise<void> {
    // Bounded: MQTT.js's end never resolves for a client whose broker closed it mid-flight.
    if (await within(this.#client.endAsync(), TIME_BOUND_MS) === TIMEOUT) {
      await within(this.#client.endAsync(true), TIME_BOUND_MS);
    }
    await within(this.#socketClosed, TIME_BOUND_MS);
    await delay(1);
  }
}

// --- the scenario ---------------------------------------------------------------------------

type DeadLetterReason = "mqtt-malformed" | "mqtt-protocol-error";

interface Case {
  /** The level the raw client and the bystander speak. */
  version: 4 | 5;
  /** Send a CONNECT (and check the CONNACK) before the bad bytes. */
  connected: boolean;
  /** The bad input. */
  bytes: Uint8Array;
  /** Expected dead letter reason. */
  reason: DeadLetterReason;
  /**
   * v5 only, after a CONNACK: the DISCONNECT reason code expected before the close.
   * Omitted means nothing at all may be sent after the CONNACK.
   */
  disconnect?: number;
  /** A phrase the dead letter's detail must contain. */
  detail?: RegExp;
}

/** Receives one dead letter and returns its body. */
async function deadLetter(watcher: LineClient): Promise<Record<string, unknown>> {
  const pub = await receive(watcher, TIME_BOUND_MS);
  assert.equal(pub.topic, DLC);
  const msg = pub.msg as Record<string, unknown>;
  assert.ok(typeof msg === "object" && msg !== null, "a dead letter is a JSON object");
  return msg;
}

/**
 * Starts a broker, a dead letter watcher and a bystander; connects the raw client (and
 * CONNECTs it when asked); sends the bad bytes; then checks the close, what was sent
 * before it, the bystander, and the dead letter.
 */
async function runCase(c: Case): Promise<void> {
  await using b = await startTestBroker({ mqttPort: -1, mqttMaxPacketBytes: MAX_PACKET });
  const port = b.mqttPort as number;
  await using watcher = await subscriber(b, "watcher", DLC);
  const bystander = await Bystander.start(port, c.version);
  try {
    await using raw = await RawClient.connect(port, c.version);
    const clientId = `raw-v${c.version}`;
    if (c.connected) await raw.handshake(c.version, clientId);
    await raw.write(c.bytes);
    const before = await raw.untilClosed();
    const cmds = before.map((p) => p.cmd);
    if (c.version === 5 && c.connected && c.disconnect !== undefined) {
      assert.deepEqual(cmds, ["disconnect"], "only a DISCONNECT before the close");
      const d = before[0] as { reasonCode?: number; properties?: { reasonString?: string } };
      assert.equal(
        d.reasonCode,
        c.disconnect,
        `DISCONNECT reason 0x${(d.reasonCode ?? 0).toString(16)}, ` +
          `expected 0x${c.disconnect.toString(16)}`,
      );
    } else {
      assert.deepEqual(cmds, [], "nothing sent before the close");
    }

    await bystander.roundTrip(`after ${clientId}`);

    const dl = await deadLetter(watcher);
    assert.equal(dl.reason, c.reason);
    assert.equal(dl.port, "mqtt");
    assert.equal(dl.remote, raw.local);
    assert.equal(typeof dl.detail, "string");
    if (c.detail) assert.match(dl.detail as string, c.detail);
    if (c.connected) assert.equal(dl.subscriber, clientId);
    // One dead letter for the connection, none for the bystander.
    await watcher.expectSilence(100);
  } finally {
    await bystander.end();
  }
}

const MALFORMED = 0x81;
const PROTOCOL_ERROR = 0x82;
const TOPIC_NAME_INVALID = 0x90;
const PACKET_TOO_LARGE = 0x95;

/** Registers the case at each level given, named "<mosquitto name> [v5|3.1.1]: <what>". */
function malformed(
  name: string,
  versions: (4 | 5)[],
  make: (version: 4 | 5) => Omit<Case, "version">,
): void {
  for (const version of versions) {
    const level = version === 5 ? "v5" : "3.1.1";
    Deno.test(`${name} [${level}]`, () => runCase({ version, ...make(version) }));
  }
}

// Remaining Length: at most 4 bytes (MQTT-1.5.5 / 3.1.1 §2.2.3) and minimal (v5 [MQTT-1.5.5-1]).
malformed(
  "13-malformed-remaining-length: 5 length bytes",
  [4, 5],
  () => ({
    connected: true,
    bytes: new Uint8Array([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
    detail: /Remaining Length/,
  }),
);

malformed(
  "13-malformed-remaining-length: non-minimal encoding (PINGREQ with 0x80 0x00)",
  [4, 5],
  () => ({
    connected: true,
    bytes: new Uint8Array([0xc0, 0x80, 0x00]),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
    detail: /minimal/,
  }),
);

// A topic length past the packet's end: the codec's parsers are shared by all connections
// at a level, and the bystander's PUBLISH after it must still be read from its first byte.
malformed(
  "a PUBLISH whose topic length runs past the packet",
  [4, 5],
  () => ({
    connected: true,
    bytes: frame(0x32, [0x00, 0x0a, 0x61, 0x00, 0x01]), // a 10-byte topic of which 3 bytes come
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
  }),
);

// Reserved flag bits: 3.1.1 [MQTT-2.2.2-2], v5 [MQTT-2.1.3-1].
malformed(
  "13-malformed-subscribe: reserved flags 0 instead of 2",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: subscribeFrame(v, 0x80, ["a/b"]),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
  }),
);

malformed(
  "13-malformed-pubrel: reserved flags 0 instead of 2",
  [4, 5],
  () => ({
    connected: true,
    bytes: new Uint8Array([0x60, 0x02, 0x00, 0x01]),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
  }),
);

// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
malformed(
  "01-connect-duplicate: a second CONNECT",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: encodePacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: v,
      clean: true,
      clientId: `raw-v${v}`,
      keepalive: 0,
    }, v),
    reason: "mqtt-protocol-error",
    disconnect: PROTOCOL_ERROR,
    detail: /CONNECT/,
  }),
);

// [MQTT-3.1.0-1]: the first packet must be CONNECT.
malformed(
  "03-publish-before-connect: PUBLISH as the first packet",
  [4],
  (v) => ({
    connected: false,
    bytes: publishFrame(v, 0x30, "a/b", "too early"),
    reason: "mqtt-protocol-error",
    detail: /before CONNECT/,
  }),
);

// [MQTT-3.3.2-2]: no wildcards in a topic name; v5 answers DISCONNECT 0x90.
for (const topic of ["a/+", "a/#"]) {
  malformed(
    `13-malformed-publish: wildcard in the topic ${topic}`,
    [4, 5],
    (v) => ({
      connected: true,
      bytes: publishFrame(v, 0x30, topic, "wild"),
      reason: "mqtt-protocol-error",
      disconnect: TOPIC_NAME_INVALID,
      detail: /wildcard/,
    }),
  );
}

// A topic name is at least one character, 3.1.1 [MQTT-4.7.3-1]; v5 allows "" only with an alias.
malformed(
  "13-malformed-publish: zero-length topic without a topic alias",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: publishFrame(v, 0x30, "", "nowhere"),
    reason: "mqtt-protocol-error",
    disconnect: PROTOCOL_ERROR,
    detail: /empty topic/,
  }),
);

// Over the Maximum Packet Size: refused from the fixed header, the body is never sent.
malformed(
  "12-prop-maximum-packet-size-broker: declared length over the limit, header only",
  [4, 5],
  () => ({
    connected: true,
    bytes: new Uint8Array([0x30, ...varint(2 * MAX_PACKET)]),
    reason: "mqtt-malformed",
    disconnect: PACKET_TOO_LARGE,
    detail: /over the limit/,
  }),
);

// Packet identifiers are non-zero, 3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3].
malformed(
  "13-malformed-publish: packet identifier 0 on a QoS 1 PUBLISH",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: publishFrame(v, 0x32, "a/b", "id zero", 0),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
    detail: /identifier/,
  }),
);

// Ill-formed UTF-8 is a Malformed Packet, 3.1.1 [MQTT-1.5.3-1], v5 [MQTT-1.5.4-1].
malformed(
  "03-publish-invalid-utf8: topic bytes 0xC3 0x28",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: publishFrame(v, 0x30, [0x61, 0x2f, 0xc3, 0x28], "bad text"),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
    detail: /UTF-8/,
  }),
);

// Both QoS bits set, [MQTT-3.3.1-4].
malformed(
  "13-malformed-publish: QoS 3",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: publishFrame(v, 0x36, "a/b", "qos three", 5),
    reason: "mqtt-malformed",
    disconnect: MALFORMED,
    detail: /QoS/,
  }),
);

// At least one filter, 3.1.1 [MQTT-3.8.3-3], v5 [MQTT-3.8.3-2] (a Protocol Error in v5).
malformed(
  "13-malformed-subscribe: no topic filter",
  [4, 5],
  (v) => ({
    connected: true,
    bytes: subscribeFrame(v, 0x82, []),
    reason: "mqtt-protocol-error",
    disconnect: PROTOCOL_ERROR,
    detail: /without filters/,
  }),
);

// Packet types 0 and 15 are reserved in 3.1.1 (§2.2.1).
for (const type of [0, 15]) {
  malformed(
    `01-connect-bad-packet: reserved packet type ${type}`,
    [4],
    () => ({
      connected: true,
      bytes: new Uint8Array([type << 4, 0x00]),
      reason: "mqtt-malformed",
    }),
  );
}

// 3.1.1 [MQTT-3.1.2-2]: an unsupported level gets CONNACK 0x01, then the close.
for (const level of [3, 6]) {
  Deno.test(`01-connect-invalid-protonum: protocol level ${level} gets CONNACK 0x01`, async () => {
    await using b = await startTestBroker({ mqttPort: -1, mqttMaxPacketBytes: MAX_PACKET });
    const port = b.mqttPort as number;
    const bystander = await Bystander.start(port, 4);
    try {
      await using raw = await RawClient.connect(port, 4);
      await raw.write(connectAtLevel(level, `level-${level}`));
      const packets = await raw.untilClosed();
      assert.deepEqual(packets.map((p) => p.cmd), ["connack"]);
      const connack = packets[0] as { returnCode?: number; sessionPresent?: boolean };
      assert.equal(connack.returnCode, 0x01, "unacceptable protocol version");
      assert.equal(connack.sessionPresent, false);
      await bystander.roundTrip(`after level ${level}`);
    } finally {
      await bystander.end();
    }
  });
}
