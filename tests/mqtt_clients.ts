/**
 * Clients for tests/mqtt_test.ts and tests/mqtt_session_test.ts (used by both: keep it):
 * a thin wrapper around MQTT.js that records what arrives, and a raw client that speaks
 * packets over a plain TCP socket, for what MQTT.js will not do (withhold
 * acknowledgements, send a duplicate PUBLISH, send a CONNECT MQTT.js refuses to send).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import mqtt from "mqtt";
import type {
  IClientOptions,
  IClientPublishOptions,
  IConnackPacket,
  IDisconnectPacket,
  IPublishPacket,
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

const decoder = new TextDecoder();

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

/** An MQTT.js client that keeps every message it receives, in order. */
export class Client implements AsyncDisposable {
  readonly mqtt: MqttClient;
  readonly connack: IConnackPacket;
  readonly messages: Received[] = [];
  /**
   * Every PUBLISH in the order it came off the wire. MQTT.js emits a QoS 2 message only
   * at its PUBREL, so `messages` may be out of wire order across QoS levels.
   */
  readonly wire: IPublishPacket[] = [];
  /** The DISCONNECT the broker sent, if any (MQTT 5). */
  disconnect: IDisconnectPacket | null = null;
  /** Set once the socket closed. */
  closed = false;

  private constructor(client: MqttClient, connack: IConnackPacket) {
    this.mqtt = client;
    this.connack = connack;
    client.on("message", (topic, payload, packet) => {
      const bytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength).slice();
      this.messages.push({ topic, text: decoder.decode(bytes), payload: bytes, packet });
    });
    client.on("packetreceive", (packet) => {
      if (packet.cmd === "publish") this.wire.push(packet);
    });
    client.on("disconnect", (packet) => this.disconnect = packet);
    client.on("close", () => this.closed = true);
    // The outcome is what tests look at; an 'error' without a listener would throw.
    client.on("error", () => {});
  }

  /**
   * Connects to 127.0.0.1:`port` at `level` and waits for the CONNACK. A refused CONNECT
   * rejects with MQTT.js's error, whose `code` is the return or reason code.
   */
  static open(port: number | undefined, level: Level, options: OpenOptions = {}): Promise<Client> {
    assert.ok(port, "the broker has no MQTT port");
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      connectTimeout: 5000,
      ...options,
      protocolVersion: level,
      reconnectPeriod: 0,
    });
    return new Promise((resolve, reject) => {
      const onConnect = (connack: IConnackPacket) => {
        client.off("error", onError);
        resolve(new Client(client, connack));
      };
      const onError = (err: Error) => {
        client.off("connect", onConnect);
        client.end(true, () => reject(err));
      };
      client.once("connect", onConnect);
      client.once("error", onError);
    });
  }

  /** Subscribes and returns the granted QoS (or reason code) per filter. */
  async subscribe(filters: Record<string, 0 | 1 | 2>): Promise<number[]> {
    const map: Record<string, { qos: 0 | 1 | 2 }> = {};
    for (const [f, qos] of Object.entries(filters)) map[f] = { qos };
    const granted = await this.mqtt.subscribeAsync(map);
    return granted.map((g) => g.qos);
  }

  /** Publishes; resolves on PUBACK (QoS 1), PUBCOMP (QoS 2) or once written (QoS 0). */
  publish(
    topic: string,
    payload: string | Uint8Array,
    qos: 0 | 1 | 2 = 1,
    options: Omit<IClientPublishOptions, "qos"> = {},
  ): Promise<unknown> {
    const body = typeof payload === "string" ? payload : Buffer.from(payload);
    return this.mqtt.publishAsync(topic, body, { ...options, qos });
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

  /** Waits until the connection has closed. */
  async waitClosed(ms = 3000): Promise<void> {
    await waitFor(() => this.closed, "the connection to close", ms);
  }

  /** Ends with a DISCONNECT when still connected; releases everything. */
  async end(): Promise<void> {
    if (this.mqtt.connected && !this.closed) await this.mqtt.endAsync();
    else await this.mqtt.endAsync(true);
  }

  /** Drops the socket without a DISCONNECT (an abnormal end). */
  async drop(): Promise<void> {
    await this.mqtt.endAsync(true);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.end();
  }
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
 * and sent as they are; every packet received is queued for the test to inspect.
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

  private constructor(conn: Deno.TcpConn, level: Level) {
    this.#conn = conn;
    this.level = level;
    this.#parser = createPacketParser(level, 1 << 20);
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

  async send(packet: OutboundPacket): Promise<void> {
    await this.sendBytes(encodePacket(packet, this.level));
  }

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

/** A pause, only for checks that something does NOT happen. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
