/**
 * Clients for the MQTT black-box tests (mqtt_test.ts, mqtt_session_test.ts,
 * mqtt_auth_test.ts, mqtt_retained_will_test.ts, mqtt_v5_test.ts: keep it): a thin
 * wrapper around MQTT.js that records what arrives, in order, and awaits it with a bound,
 * and a raw client that speaks packets over a plain TCP socket through the broker's own
 * codec, for what MQTT.js hides or will not do (withhold acknowledgements, send a
 * duplicate PUBLISH, send a CONNECT MQTT.js refuses to send).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import mqtt from "mqtt";
import type {
  IClientOptions,
  IClientPublishOptions,
  IClientSubscribeOptions,
  IConnackPacket,
  IDisconnectPacket,
  IPublishPacket,
  ISubscriptionMap,
  MqttClient,
} from "mqtt";
import {
  createPacketParser,
  encodePacket,
  type OutboundPacket,
  type Packet,
  type PacketParser,
} from "../src/transport/mqtt_codec.ts";
import { waitFor } from "./helpers.ts";

/** Both protocol levels: 4 = MQTT 3.1.1, 5 = MQTT 5.0. */
export const LEVELS = [4, 5] as const;
export type Level = (typeof LEVELS)[number];

type QoS = 0 | 1 | 2;

const decoder = new TextDecoder();

/** A bounded wait for `promise`, failing with `what` after `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) =>
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  );
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A pause: for checks that something does NOT happen, or to pace a client. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** MQTT over TCP on 127.0.0.1:`port`. */
export const tcpUrl = (port: number | undefined): string => `mqtt://127.0.0.1:${port}`;

/** MQTT over WebSocket on 127.0.0.1:`port`/mqtt. */
export const wsUrl = (port: number | undefined): string => `ws://127.0.0.1:${port}/mqtt`;

/** One PUBLISH as an MQTT.js client received it. */
export interface Received {
  topic: string;
  /** The payload as UTF-8 text (lossy). */
  text: string;
  payload: Uint8Array;
  packet: IPublishPacket;
}

/** Options for {@link Client.open}; `reconnectPeriod` is always 0. */
export type OpenOptions = Omit<IClientOptions, "protocolVersion" | "reconnectPeriod">;

/**
 * An MQTT.js client that keeps every message it receives, in order, with the CONNACK it
 * got and the DISCONNECTs the broker sent. A test either looks at `messages` (all of
 * them) or reads them one by one with {@link next}. Dispose it (or {@link end}) to close
 * it.
 */
export class Client implements AsyncDisposable {
  readonly mqtt: MqttClient;
  #connack: IConnackPacket | undefined;
  readonly messages: Received[] = [];
  /**
   * Every PUBLISH in the order it came off the wire. MQTT.js emits a QoS 2 message only
   * at its PUBREL, so `messages` may be out of wire order across QoS levels.
   */
  readonly wire: IPublishPacket[] = [];
  /** DISCONNECT packets sent by the broker (MQTT 5). */
  readonly disconnects: IDisconnectPacket[] = [];
  /** How many of `messages` {@link next} has returned. */
  #read = 0;
  #wake: (() => void) | null = null;
  #closed: Promise<void>;
  #isClosed = false;

  /**
   * Made before the CONNECT goes out: the broker may send queued messages in the same
   * segment as its CONNACK, and MQTT.js emits them at once, so the listeners must be in
   * place first or those messages are acknowledged and lost to the test.
   */
  private constructor(client: MqttClient) {
    this.mqtt = client;
    client.on("message", (topic, payload, packet) => {
      const bytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength).slice();
      this.messages.push({ topic, text: decoder.decode(bytes), payload: bytes, packet });
      this.#notify();
    });
    client.on("packetreceive", (packet) => {
      if (packet.cmd === "publish") this.wire.push(packet);
    });
    client.on("disconnect", (packet) => {
      this.disconnects.push(packet);
      this.#notify();
    });
    // The outcome is what tests look at; an 'error' without a listener would throw.
    client.on("error", () => {});
    this.#closed = new Promise((resolve) => {
      const done = () => {
        this.#isClosed = true;
        this.#notify();
        resolve();
      };
      if (client.stream?.destroyed) done();
      else client.once("close", done);
    });
  }

  /**
   * Connects to `url` with `reconnectPeriod: 0` and waits for the CONNACK. A refused
   * CONNECT rejects with MQTT.js's error, whose `code` is the return or reason code.
   */
  static async connect(url: string, options: IClientOptions): Promise<Client> {
    const client = mqtt.connect(url, { connectTimeout: 5000, ...options, reconnectPeriod: 0 });
    const c = new Client(client);
    try {
      const connack = await within(
        new Promise<IConnackPacket>((resolve, reject) => {
          client.once("connect", resolve);
          client.once("error", reject);
          client.once("close", () => reject(new Error("closed before CONNACK")));
        }),
        5000,
        `CONNACK for ${options.clientId}`,
      );
      c.#connack = connack;
      return c;
    } catch (err) {
      await closeQuietly(client);
      throw err;
    }
  }

  /** The broker's CONNACK. */
  get connack(): IConnackPacket {
    assert.ok(this.#connack, "not connected");
    return this.#connack;
  }

  /** {@link connect} over TCP to 127.0.0.1:`port` at `level`. */
  static open(port: number | undefined, level: Level, options: OpenOptions = {}): Promise<Client> {
    assert.ok(port, "the broker has no MQTT port");
    return Client.connect(tcpUrl(port), { ...options, protocolVersion: level });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Waits for a message, a DISCONNECT or the close, at most `ms`. */
  #more(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** True once the connection has closed. */
  get isClosed(): boolean {
    return this.#isClosed;
  }

  /**
   * Subscribes and returns the SUBACK's codes, refused ones included. `filters` is a
   * filter, a list of them, or each filter with its QoS; `options` go with every filter.
   */
  subscribe(
    filters: string | string[] | Record<string, QoS>,
    options: Partial<IClientSubscribeOptions> = {},
  ): Promise<number[]> {
    let topics: string | string[] | ISubscriptionMap;
    if (typeof filters === "string" || Array.isArray(filters)) topics = filters;
    else {
      topics = {};
      for (const [f, qos] of Object.entries(filters)) topics[f] = { ...options, qos };
    }
    return within(
      new Promise<number[]>((resolve, reject) => {
        this.mqtt.subscribe(topics, { qos: 0, ...options }, (err, granted, packet) => {
          if (packet) resolve(packet.granted as number[]);
          else if (err) reject(err);
          // MQTT.js sends nothing for filters it holds already at that QoS.
          else resolve((granted ?? []).map((g) => g.qos));
        });
      }),
      3000,
      `SUBACK for ${JSON.stringify(filters)}`,
    );
  }

  /** Publishes; resolves on PUBACK (QoS 1), PUBCOMP (QoS 2) or once written (QoS 0). */
  publish(
    topic: string,
    payload: string | Uint8Array,
    options: IClientPublishOptions = {},
  ): Promise<unknown> {
    const body = typeof payload === "string" ? payload : Buffer.from(payload);
    return within(this.mqtt.publishAsync(topic, body, options), 3000, `publish to ${topic}`);
  }

  /** Texts of the messages received on `topic`, in order. */
  textsOn(topic: string): string[] {
    return this.messages.filter((m) => m.topic === topic).map((m) => m.text);
  }

  /** Payload texts of the PUBLISHes received on `topic`, in wire order. */
  wireTextsOn(topic: string): string[] {
    return this.wire.filter((p) => p.topic === topic).map((p) =>
      decoder.decode(p.payload as Uint8Array)
    );
  }

  /** Waits until at least `count` messages arrived; returns them all. */
  async waitMessages(count: number, ms = 3000): Promise<Received[]> {
    await waitFor(
      () => this.messages.length >= count,
      `${count} messages (have ${this.messages.length})`,
      ms,
    );
    return this.messages;
  }

  /** The next message not yet returned, waiting up to `ms`. */
  async next(ms = 3000): Promise<Received> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.messages[this.#read];
      if (m) {
        this.#read++;
        return m;
      }
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no message within ${ms} ms`);
      await this.#more(left);
    }
  }

  /** {@link next} messages until (and including) the first on `topic` with payload `text`. */
  async until(topic: string, text: string, ms = 3000): Promise<Received[]> {
    const got: Received[] = [];
    const deadline = Date.now() + ms;
    for (;;) {
      const m = await this.next(Math.max(1, deadline - Date.now()));
      got.push(m);
      if (m.topic === topic && m.text === text) return got;
    }
  }

  /** Asserts that no message beyond those {@link next} returned arrives within `ms`. */
  async expectSilence(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.messages.length === this.#read && Date.now() < deadline) {
      await this.#more(deadline - Date.now());
    }
    const m = this.messages[this.#read];
    if (m) assert.fail(`expected no message, got ${m.topic} ${JSON.stringify(m.text)}`);
  }

  /** Waits until the connection has closed, at most `ms`. */
  async expectClosed(ms = 3000): Promise<void> {
    await within(this.#closed, ms, "the connection to close");
  }

  /** Drops the socket without a DISCONNECT (an abnormal end) and waits for the close. */
  async drop(): Promise<void> {
    this.mqtt.end(true);
    await this.expectClosed();
  }

  /**
   * Sends DISCONNECT (with `reasonCode` for v5, if given) when still connected and waits
   * for the close; releases everything either way.
   */
  async end(reasonCode?: number): Promise<void> {
    if (this.#isClosed) {
      await closeQuietly(this.mqtt);
      return;
    }
    await within(
      reasonCode === undefined ? this.mqtt.endAsync() : this.mqtt.endAsync(false, { reasonCode }),
      3000,
      "DISCONNECT",
    );
    await this.expectClosed();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.mqtt.disconnected && !this.#isClosed) {
      await this.end().catch(() => closeQuietly(this.mqtt));
    } else {
      await closeQuietly(this.mqtt);
    }
  }
}

/** Ends an MQTT.js client whatever its state, waiting for its transport to close. */
async function closeQuietly(client: MqttClient): Promise<void> {
  const closed = client.stream && !client.stream.destroyed
    ? new Promise<void>((r) => client.stream.once("close", () => r()))
    : Promise.resolve();
  await new Promise<void>((r) => client.end(true, {}, () => r()));
  await within(closed, 3000, "client transport close").catch(() => {});
}

/** The code of a refused CONNECT (3.1.1 return code or v5 reason code). */
export async function connectRefusal(url: string, options: IClientOptions): Promise<number> {
  try {
    const c = await Client.connect(url, options);
    await c.end();
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    assert.equal(typeof code, "number", `expected a CONNACK refusal, got ${err}`);
    return code as number;
  }
  return assert.fail("the CONNECT was accepted");
}

/** CONNECT options of a persistent session at `level` (v5: Session Expiry `expirySec`). */
export function persistent(level: Level, expirySec = 300): OpenOptions {
  return level === 5
    ? { clean: false, properties: { sessionExpiryInterval: expirySec } }
    : { clean: false };
}
/** CONNECT fields the raw client lets a test choose. */
export interface RawConnect {
  clientId: string;
  clean?: boolean;
  keepalive?: number;
  properties?: Record<string, unknown>;
}

/**
 * A CONNECT packet. mqtt-packet refuses to encode an empty client id without clean
 * session, which a test needs to send: it is encoded with a one-byte id, then the id is
 * cut out (the id is the last field here, and the packet is short, so the Remaining
 * Length is one byte).
 */
export function connectBytes(level: Level, c: RawConnect): Uint8Array {
  const empty = c.clientId === "";
  const bytes = encodePacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: level,
    clientId: empty ? "Z" : c.clientId,
    clean: c.clean ?? true,
    keepalive: c.keepalive ?? 0,
    ...(c.properties ? { properties: c.properties } : {}),
  } as OutboundPacket, level);
  if (!empty) return bytes;
  assert.ok(bytes[1] !== undefined && bytes[1] < 128 && bytes.at(-1) === 0x5a);
  const out = bytes.slice(0, -1);
  out[1] = (bytes[1] as number) - 1;
  out[out.length - 1] = 0; // the id's length: 0
  return out;
}

/**
 * An MQTT client over a plain TCP socket: packets are encoded with the broker's codec
 * and sent as they are; every packet received is read in the background and queued for
 * the test to inspect.
 */
export class RawClient implements AsyncDisposable {
  readonly level: Level;
  #conn: Deno.TcpConn;
  #parser: PacketParser;
  #queue: Packet[] = [];
  #wake: (() => void) | null = null;
  #eof = false;
  #problem: string | null = null;
  #reading: Promise<void>;
  #closed = false;
  /** performance.now() when the connection ended (closed by either side), else null. */
  closedAt: number | null = null;

  private constructor(conn: Deno.TcpConn, level: Level) {
    this.#conn = conn;
    this.level = level;
    this.#parser = createPacketParser(level, 1 << 24);
    this.#reading = this.#read();
  }

  static async connect(port: number | undefined, level: Level): Promise<RawClient> {
    assert.ok(port, "the broker has no MQTT port");
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }), level);
  }

  /** Opens a connection and sends CONNECT; returns the client and the CONNACK. */
  static async open(
    port: number | undefined,
    level: Level,
    connect: RawConnect,
  ): Promise<{ raw: RawClient; connack: IConnackPacket }> {
    const raw = await RawClient.connect(port, level);
    try {
      await raw.sendBytes(connectBytes(level, connect));
      const connack = await raw.expect("connack");
      return { raw, connack };
    } catch (err) {
      await raw.close();
      throw err;
    }
  }

  /** {@link open}, but the CONNECT must be accepted; returns the client. */
  static async accepted(
    port: number | undefined,
    level: Level,
    connect: RawConnect,
  ): Promise<RawClient> {
    const { raw, connack } = await RawClient.open(port, level, connect);
    const code = level === 5 ? connack.reasonCode : connack.returnCode;
    if (code !== 0) {
      await raw.close();
      assert.fail(`the CONNECT was refused: ${code}`);
    }
    return raw;
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        for (const item of this.#parser.push(buf.subarray(0, n))) {
          if (item.kind === "packet") this.#queue.push(item.packet);
          else this.#problem = JSON.stringify(item);
        }
        this.#notify();
      }
    } catch {
      // Closed here, or reset by the broker: the end of the stream either way.
    }
    this.#eof = true;
    this.closedAt = performance.now();
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Waits for more input or the end, at most `ms`. */
  async #more(ms: number): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#wake = resolve;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((r) => timer = setTimeout(r, ms));
    await Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  /** Encodes one packet at the client's level and writes it. */
  async send(packet: OutboundPacket): Promise<void> {
    await this.sendBytes(encodePacket(packet, this.level));
  }

  /** Writes bytes as they are. */
  async sendBytes(bytes: Uint8Array): Promise<void> {
    let n = 0;
    while (n < bytes.length) n += await this.#conn.write(bytes.subarray(n));
  }

  /** The next packet; fails on timeout or when the broker closed the connection. */
  async next(ms = 3000): Promise<Packet> {
    const deadline = Date.now() + ms;
    for (;;) {
      assert.equal(this.#problem, null, "the broker sent bytes the codec refused");
      const p = this.#queue.shift();
      if (p) return p;
      if (this.#eof) assert.fail("the broker closed the connection");
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no packet within ${ms} ms`);
      await this.#more(left);
    }
  }

  /** The next packet, which must be a `cmd`. */
  async expect<C extends Packet["cmd"]>(cmd: C, ms = 3000): Promise<Extract<Packet, { cmd: C }>> {
    const p = await this.next(ms);
    assert.equal(p.cmd, cmd, `expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Extract<Packet, { cmd: C }>;
  }

  /** Asserts that no packet arrives within `ms`. */
  async expectSilence(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    for (;;) {
      const p = this.#queue[0];
      if (p) assert.fail(`expected silence, got ${JSON.stringify(p)}`);
      const left = deadline - Date.now();
      if (left <= 0 || this.#eof) return;
      await this.#more(left);
    }
  }

  /** Waits until the broker closes the connection; returns the packets that came first. */
  async expectClosed(ms = 3000): Promise<Packet[]> {
    const deadline = Date.now() + ms;
    while (!this.#eof) {
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`the connection is still open after ${ms} ms`);
      await this.#more(left);
    }
    return this.#queue.splice(0);
  }

  /** True once the connection has ended. */
  get isClosed(): boolean {
    return this.#eof;
  }

  /** Closes the socket (no DISCONNECT) and waits for the reader to stop. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#conn.close();
      } catch {
        // closed already
      }
    }
    await this.#reading;
  }

  /** Sends DISCONNECT, then closes. */
  async disconnect(): Promise<void> {
    if (!this.#eof) await this.send({ cmd: "disconnect" }).catch(() => {});
    await this.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The session id the broker gives an MQTT client id. */
export const sidOf = (clientId: string): string => `mqtt:${clientId}`;

/** Runs `body` with a temporary data directory that is removed afterwards. */
export async function withDataDir(body: (dataDir: string) => Promise<void>): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-mqtt-" });
  try {
    await body(dataDir);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}
