/**
 * One TCP or TLS connection seen as MQTT packets in and out, and the server that
 * accepts them. It knows nothing of sessions or topics: the MQTT protocol adapter
 * decides what each packet means and when to close.
 *
 * @module
 */

import { type ConnectionOptions, SocketConnection, TO_SELF } from "./connection.ts";
import {
  ackTemplate,
  createPacketParser,
  encodePacket,
  type OutboundPacket,
  type PacketEvent,
  type PacketParser,
  type ProtocolVersion,
} from "./mqtt_codec.ts";
import type { PacketConsumer, PacketLink } from "./packet_link.ts";
import { SocketServer, type SocketServerOptions } from "./socket_server.ts";

export type { PacketEvent } from "./mqtt_codec.ts";

/** Limits of one packet connection; {@link PacketServer} passes its options on. */
export interface PacketConnectionOptions extends ConnectionOptions {
  /**
   * Largest whole input packet in bytes (v5 Maximum Packet Size); a larger one is
   * refused from its header, so it bounds what a peer can make us buffer.
   */
  maxPacketBytes: number;
  /**
   * Told when nothing was received for the idle limit (`idleTimeoutMs`, or
   * {@link PacketConnection.setKeepAlive}), just before the connection closes: the
   * place to send a v5 DISCONNECT 0x8D (Keep Alive timeout). Queued output is flushed.
   */
  onIdle?(conn: PacketConnection, limitMs: number): void;
}

/**
 * One TCP or TLS connection seen as MQTT packets in ({@link packets}) and out
 * ({@link send}). Created by {@link PacketServer} for each accepted socket. Until a
 * CONNECT arrives `idleTimeoutMs` applies (time allowed to connect); the adapter
 * then calls {@link setKeepAlive}.
 *
 * @example
 * ```ts
 * for await (const item of conn.packets()) {
 *   if (item.kind !== "packet") break; // malformed or too large: close
 *   if (item.packet.cmd === "pingreq") conn.send({ cmd: "pingresp" });
 * }
 * conn.close("input ended");
 * await conn.closed;
 * ```
 */
export class PacketConnection extends SocketConnection implements PacketLink {
  readonly #parser: PacketParser;
  readonly #onIdle: PacketConnectionOptions["onIdle"];
  #packetsCalled = false;
  #consumer: PacketConsumer | undefined;

  /**
   * Wraps an accepted socket and starts its idle timer; {@link PacketServer} calls this.
   *
   * @param conn an accepted socket (a TLS one after its handshake); this object now owns it
   * @param options the connection's limits
   */
  constructor(conn: Deno.TcpConn | Deno.TlsConn, options: PacketConnectionOptions) {
    super(conn, options);
    // Level 4 until the CONNECT: the codec parses a CONNECT of any level and takes its level.
    // Packets are parsed from views of each chunk: a fresh copy of a read for `packets()`
    // and `batches()`, a lent one for `consume()` (see PacketConsumer.packetsArrived).
    this.#parser = createPacketParser(4, options.maxPacketBytes, { chunksAreFresh: true });
    this.#onIdle = options.onIdle;
  }

  /** The level packets are parsed and sent at: 4 until a CONNECT says otherwise. */
  get protocolVersion(): ProtocolVersion {
    return this.#parser.protocolVersion;
  }

  /**
   * The input as {@link PacketEvent}s, in order. Ends when the peer closes, a read
   * fails, the connection is closed or stops reading, or after a `malformed` or
   * `too-large` item (input is then no longer read). Input is read only as fast as
   * the caller consumes it, so a slow caller slows the peer down through TCP.
   *
   * @throws {Error} if called a second time: the input can be read once
   */
  packets(): AsyncIterableIterator<PacketEvent> {
    this.#takeInput();
    return this.#readPackets();
  }

  batches(): AsyncIterableIterator<PacketEvent[]> {
    this.#takeInput();
    return this.#readBatches();
  }

  consume(consumer: PacketConsumer): void {
    this.#takeInput();
    this.#consumer = consumer;
    this.readNext(TO_SELF);
  }

  /** The chunks of {@link consume}'s reads: no closure per connection or read. */
  protected override chunkArrived(chunk: Uint8Array | null): void {
    const consumer = this.#consumer as PacketConsumer;
    if (chunk === null || this.inputStopped) return consumer.inputEnded(null);
    const items = this.#parse(chunk);
    let waiting: Promise<void> | void = undefined;
    if (items.length > 0) {
      try {
        waiting = consumer.packetsArrived(items);
      } catch (err) {
        return consumer.inputEnded(err);
      }
    }
    // After a malformed or too-large item the input is no longer read.
    const failed = this.#parser.failed;
    if (waiting) {
      waiting.then(
        () => failed ? consumer.inputEnded(null) : this.readNext(TO_SELF),
        (err) => consumer.inputEnded(err),
      );
    } else if (failed) consumer.inputEnded(null);
    else this.readNext(TO_SELF);
  }

  get reading(): boolean {
    return !this.inputStopped && !this.isClosed;
  }

  #takeInput(): void {
    if (this.#packetsCalled) {
      throw new Error(`the input of connection ${this.id} was already taken`);
    }
    this.#packetsCalled = true;
  }

  async *#readPackets(): AsyncGenerator<PacketEvent> {
    for await (const batch of this.#readBatches()) {
      for (const item of batch) {
        if (this.inputStopped) return;
        yield item;
      }
    }
  }

  /** The packets `chunk` completes; Keep Alive counts whole Control Packets received. */
  #parse(chunk: Uint8Array): PacketEvent[] {
    const items = this.#parser.push(chunk);
    // 3.1.1 §3.1.2.10, v5 §3.1.2.10.
    if (items.some((item) => item.kind === "packet")) this.noteInput();
    return items;
  }

  async *#readBatches(): AsyncGenerator<PacketEvent[]> {
    // `items` is cleared before the next read: a suspended generator keeps its
    // variables, and an idle connection would otherwise hold its last packets (the
    // CONNECT, with its strings) for as long as it lives.
    let items: PacketEvent[] | null = null;
    for (;;) {
      let chunk = await this.readChunk(); // null also after a read error: the input ends
      if (chunk === null || this.inputStopped) return;
      items = this.#parse(chunk);
      chunk = null;
      if (items.length > 0) yield items;
      items = null;
      if (this.#parser.failed) return;
    }
  }

  /**
   * Encodes `packet` at {@link protocolVersion} and queues it; everything sent in one
   * turn leaves in one write. Ignored once the connection is closed. Closes the
   * connection if the output not yet written passes `writeBufferBytes`.
   *
   * @throws {TypeError} if the packet cannot be encoded (a bug in the caller)
   */
  send(packet: OutboundPacket): void {
    if (this.isClosed) return;
    const template = ackTemplate(packet, this.protocolVersion);
    if (template) {
      // An acknowledgement: the shared template, with the identifier written in as the
      // output is joined.
      this.sendPatched(template, 2, (packet as { messageId: number }).messageId, false);
      return;
    }
    this.sendBytes(encodePacket(packet, this.protocolVersion));
  }

  /**
   * Closes the connection when nothing is received for `ms` (0 turns it off), counted
   * from the last packet. The adapter passes 1.5 × the client's Keep Alive
   * ([MQTT-3.1.2-24] in 3.1.1, [MQTT-3.1.2-22] in v5).
   */
  setKeepAlive(ms: number): void {
    this.setIdleTimeout(ms);
  }

  protected override onIdle(limitMs: number): void {
    try {
      this.#onIdle?.(this, limitMs);
    } finally {
      this.close(`keep-alive: nothing received for ${limitMs} ms`);
    }
  }
}

/** Options of {@link PacketServer}. */
export interface PacketServerOptions
  extends PacketConnectionOptions, SocketServerOptions<PacketConnection> {}

/**
 * Accepts TCP (or, with `tls`, TLS) connections and hands each to `onConnection` as
 * a {@link PacketConnection}. Tracking live connections is the caller's job.
 *
 * @example
 * ```ts
 * const server = new PacketServer({
 *   hostname: "127.0.0.1", port: 0, maxPacketBytes: 65536,
 *   writeBufferBytes: 1 << 20, idleTimeoutMs: 10_000,
 *   async onConnection(conn) {
 *     for await (const item of conn.packets()) {
 *       if (item.kind === "packet" && item.packet.cmd === "pingreq") conn.send({ cmd: "pingresp" });
 *     }
 *     conn.close();
 *   },
 * });
 * server.start();
 * await server.close();
 * ```
 */
export class PacketServer extends SocketServer<PacketConnection> {
  readonly #options: PacketServerOptions;

  /**
   * Builds a server; nothing listens until {@link start}.
   *
   * @param options see {@link PacketServerOptions}
   */
  constructor(options: PacketServerOptions) {
    super(options);
    this.#options = options;
  }

  protected override wrap(conn: Deno.TcpConn | Deno.TlsConn): PacketConnection {
    return new PacketConnection(conn, this.#options);
  }

  protected override get label(): string {
    return "packet server";
  }
}
