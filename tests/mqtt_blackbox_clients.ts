/**
 * MQTT clients for black-box tests: MQTT.js wrapped so that every message is queued
 * and awaited with a bound, and a raw client that speaks packets over a plain TCP
 * socket (through the broker's own codec) for what MQTT.js hides or refuses to send.
 *
 * @module
 */
import assert from "node:assert/strict";
import mqtt from "mqtt";
import type {
  IClientOptions,
  IClientPublishOptions,
  IClientSubscribeOptions,
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
  type ProtocolVersion,
} from "../src/transport/mqtt_codec.ts";

const decoder = new TextDecoder();

/** One PUBLISH as a subscriber got it. */
export interface Received {
  topic: string;
  /** The payload decoded as UTF-8 (for comparisons). */
  text: string;
  bytes: Uint8Array;
  packet: IPublishPacket;
}

/** The levels every "both protocol levels" test runs at. */
export const LEVELS = [4, 5] as const;

/** A bounded wait for `promise`, failing with `what` after `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
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

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * An MQTT.js client whose messages are queued for {@link next}, with the CONNACK it
 * got and the server DISCONNECTs seen. Dispose it (or {@link end}) to close it.
 */
export class TestClient implements AsyncDisposable {
  readonly client: MqttClient;
  readonly connack: IConnackPacket;
  /** DISCONNECT packets sent by the server. */
  readonly disconnects: IDisconnectPacket[] = [];
  /** Resolves once the transport has closed. */
  readonly closed: Promise<void>;
  #queue: Received[] = [];
  #wake: (() => void) | null = null;
  #isClosed = false;

  private constructor(client: MqttClient, connack: IConnackPacket) {
    this.client = client;
    this.connack = connack;
    client.on("message", (topic, payload, packet) => {
      const bytes = new Uint8Array(payload);
      this.#queue.push({ topic, text: decoder.decode(bytes), bytes, packet });
      this.#notify();
    });
    client.on("disconnect", (packet) => {
      this.disconnects.push(packet);
      this.#notify();
    });
    // An error event without a listener would throw; the tests look at the outcome.
    client.on("error", () => {});
    this.closed = new Promise((resolve) => {
      const done = () => {
        this.#isClosed = true;
        this.#notify();
        resolve();
      };
      if (client.stream?.destroyed) done();
      else client.once("close", done);
    });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** True once the transport has closed. */
  get isClosed(): boolean {
    return this.#isClosed;
  }

  /**
   * Connects with `reconnectPeriod: 0` and waits for the CONNACK; a refused CONNECT
   * rejects with MQTT.js's error (its `code` is the return or reason code).
   */
  static async connect(url: string, options: IClientOptions): Promise<TestClient> {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
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
      return new TestClient(client, connack);
    } catch (err) {
      await closeQuietly(client);
      throw err;
    }
  }

  /** The next message, waiting up to `ms`. */
  async next(ms = 3000): Promise<Received> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.#queue.shift();
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no message within ${ms} ms`);
      await this.#waitForEvent(left);
    }
  }

  /** Messages until (and including) the first on `topic` with payload `text`. */
  async until(topic: string, text: string, ms = 3000): Promise<Received[]> {
    const got: Received[] = [];
    const deadline = Date.now() + ms;
    for (;;) {
      const m = await this.next(Math.max(1, deadline - Date.now()));
      got.push(m);
      if (m.topic === topic && m.text === text) return got;
    }
  }

  /** Asserts that no message arrives within `ms`. */
  async expectSilence(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.#queue.length === 0 && Date.now() < deadline) {
      await this.#waitForEvent(deadline - Date.now());
    }
    const m = this.#queue[0];
    if (m) assert.fail(`expected no message, got ${m.topic} ${JSON.stringify(m.text)}`);
  }

  /** Waits until the transport has closed, at most `ms`. */
  async expectClosed(ms = 3000): Promise<void> {
    await within(this.closed, ms, "the connection to close");
  }

  #waitForEvent(ms: number): Promise<void> {
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

  /** Subscribes and returns the SUBACK's codes, refused ones included. */
  subscribe(topic: string | string[], options: IClientSubscribeOptions): Promise<number[]> {
    return within(
      new Promise<number[]>((resolve, reject) => {
        this.client.subscribe(topic, options, (err, _granted, packet) => {
          if (packet) resolve(packet.granted as number[]);
          else reject(err ?? new Error("no SUBACK"));
        });
      }),
      3000,
      `SUBACK for ${topic}`,
    );
  }

  /** Publishes; resolves when acknowledged (QoS 1/2) or written (QoS 0). */
  publish(
    topic: string,
    payload: string | Uint8Array,
    options: IClientPublishOptions = {},
  ): Promise<unknown> {
    return within(
      this.client.publishAsync(topic, payload as string, options),
      3000,
      `publish to ${topic}`,
    );
  }

  /** Closes the socket without DISCONNECT (MQTT.js `end(true)` destroys the stream). */
  async drop(): Promise<void> {
    this.client.end(true);
    await this.expectClosed();
  }

  /** Sends DISCONNECT (with `reasonCode` for v5, if given) and waits for the close. */
  async end(reasonCode?: number): Promise<void> {
    if (this.#isClosed) {
      await closeQuietly(this.client);
      return;
    }
    await within(
      reasonCode === undefined
        ? this.client.endAsync()
        : this.client.endAsync(false, { reasonCode }),
      3000,
      "DISCONNECT",
    );
    await this.expectClosed();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.client.disconnected && !this.#isClosed) {
      await this.end().catch(() => closeQuietly(this.client));
    } else {
      await closeQuietly(this.client);
    }
  }
}

/** Ends a client whatever its state, waiting for its transport to close. */
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
    const c = await TestClient.connect(url, options);
    await c.end();
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    assert.equal(typeof code, "number", `expected a CONNACK refusal, got ${err}`);
    return code as number;
  }
  return assert.fail("the CONNECT was accepted");
}

/** MQTT over TCP on 127.0.0.1:`port`. */
export const tcpUrl = (port: number | undefined): string => `mqtt://127.0.0.1:${port}`;

/** MQTT over WebSocket on 127.0.0.1:`port`/mqtt. */
export const wsUrl = (port: number | undefined): string => `ws://127.0.0.1:${port}/mqtt`;

/**
 * A raw MQTT client: packets encoded and parsed by the broker's codec, over a plain TCP
 * socket, read in the background into a queue.
 */
export class RawClient implements AsyncDisposable {
  readonly #conn: Deno.TcpConn;
  readonly #parser;
  #queue: Packet[] = [];
  #eof = false;
  #wake: (() => void) | null = null;
  readonly #reading: Promise<void>;
  /** performance.now() when the socket was seen closed by the server. */
  closedAt: number | null = null;

  private constructor(conn: Deno.TcpConn, version: ProtocolVersion) {
    this.#conn = conn;
    this.#parser = createPacketParser(version, 1 << 24);
    this.#reading = this.#read();
  }

  static async connect(port: number | undefined, version: ProtocolVersion): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: port as number });
    return new RawClient(conn, version);
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(65_536);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        for (const item of this.#parser.push(buf.subarray(0, n))) {
          if (item.kind !== "packet") throw new Error(`bad packet from the server: ${item.kind}`);
          this.#queue.push(item.packet);
        }
        this.#notify();
      }
    } catch {
      // reset, or closed by us
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

  /** Encodes and writes one packet. */
  send(packet: OutboundPacket, version: ProtocolVersion): Promise<void> {
    return this.sendBytes(encodePacket(packet, version));
  }

  /** Writes bytes as they are. */
  async sendBytes(bytes: Uint8Array): Promise<void> {
    let n = 0;
    while (n < bytes.length) n += await this.#conn.write(bytes.subarray(n));
  }

  /** The next packet, or null once the server closed the connection; fails after `ms`. */
  async next(ms = 3000): Promise<Packet | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const p = this.#queue.shift();
      if (p) return p;
      if (this.#eof) return null;
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no packet within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The next packet, which must be of type `cmd`. */
  async expect<C extends Packet["cmd"]>(
    cmd: C,
    ms = 3000,
  ): Promise<Extract<Packet, { cmd: C }>> {
    const p = await this.next(ms);
    assert.ok(p !== null, `expected ${cmd}, the connection closed`);
    assert.equal(p.cmd, cmd, `expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Extract<Packet, { cmd: C }>;
  }

  /** Waits for the server to close the connection, skipping nothing: returns what came. */
  async closedWithin(ms: number): Promise<Packet[]> {
    const rest: Packet[] = [];
    const deadline = Date.now() + ms;
    for (;;) {
      const p = await this.next(Math.max(1, deadline - Date.now()));
      if (p === null) return rest;
      rest.push(p);
    }
  }

  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch {
      // closed already
    }
    await this.#reading;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A raw CONNECT then its CONNACK (which must accept). */
export async function rawConnect(
  port: number | undefined,
  version: 4 | 5,
  fields: { clientId: string; keepalive?: number; properties?: Record<string, unknown> },
): Promise<RawClient> {
  const c = await RawClient.connect(port, version);
  try {
    await c.send({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: version,
      clean: true,
      keepalive: fields.keepalive ?? 0,
      clientId: fields.clientId,
      ...(fields.properties ? { properties: fields.properties } : {}),
    } as OutboundPacket, version);
    const connack = await c.expect("connack");
    assert.equal(version === 5 ? connack.reasonCode : connack.returnCode, 0);
  } catch (err) {
    await c.close();
    throw err;
  }
  return c;
}
