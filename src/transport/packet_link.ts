/**
 * What the MQTT protocol adapter needs of a connection, whatever carries it: TCP or TLS
 * ({@link PacketConnection}) or WebSocket ({@link WsPacketConnection}).
 *
 * @module
 */

import type { OutboundPacket, PacketEvent, ProtocolVersion } from "./mqtt_codec.ts";

/** What {@link PacketLink.consume} hands the input to. */
export interface PacketConsumer {
  /**
   * The items of one read (or frame), in order; a promise holds the next read back. The
   * byte arrays in them (payloads, binary properties) may be views of a buffer that the
   * next read fills again: whatever is kept longer is copied before this returns, or
   * before the promise resolves.
   */
  packetsArrived(batch: PacketEvent[]): Promise<void> | void;
  /** Once, after the last batch: null at the end of input, else what went wrong. */
  inputEnded(error: unknown): void;
}

/**
 * One client connection seen as MQTT packets in ({@link packets}) and out
 * ({@link send}). Until a CONNECT arrives the connection's idle limit applies (time
 * allowed to connect); the adapter then calls {@link setKeepAlive}.
 *
 * Nothing closes a link behind its owner's back except a peer that stops reading
 * (output over the write buffer), a transport failure, a protocol error of the
 * transport itself (a WebSocket text frame), and the idle or keep-alive timer.
 *
 * @example
 * ```ts
 * async function serve(link: PacketLink): Promise<void> {
 *   for await (const item of link.packets()) {
 *     if (item.kind !== "packet") break; // malformed or too large: close
 *     if (item.packet.cmd === "pingreq") link.send({ cmd: "pingresp" });
 *   }
 *   link.close("input ended");
 *   await link.closed;
 * }
 * ```
 */
export interface PacketLink {
  /** Unique among connections of one kind in this process; for logs and tables. */
  readonly id: number;
  /** The peer's address as "host:port" ("[::1]:port" for IPv6). */
  readonly remote: string;
  /** The peer's host alone ("127.0.0.1", "[::1]"): what per-address limits count. */
  readonly address: string;
  /** True when the transport is encrypted (TLS). */
  readonly tls: boolean;
  /** Resolves once the transport is closed and nothing of it is pending. */
  readonly closed: Promise<void>;
  /** True once closing has begun (by us, the peer or a failure); sends are then ignored. */
  readonly isClosed: boolean;
  /** Why the connection was closed, once it is. */
  readonly closeReason: string | undefined;
  /** The level packets are parsed and sent at: 4 until a CONNECT says otherwise. */
  readonly protocolVersion: ProtocolVersion;
  /**
   * The input as {@link PacketEvent}s, in order. Ends when the peer closes, the
   * connection is closed or stops reading, or after a `malformed` or `too-large` item.
   *
   * @throws {Error} if called a second time: the input can be read once
   */
  packets(): AsyncIterableIterator<PacketEvent>;
  /**
   * The same input in batches: the items that arrived together (one read or frame), in
   * order, so that a caller can handle them without a turn of the event loop between
   * two (and what they cause leaves in one write). The caller checks {@link reading}
   * before each item: a batch may hold items that follow a stop. Either this or
   * {@link packets} may be called, once.
   *
   * @throws {Error} if the input was already taken
   */
  batches(): AsyncIterableIterator<PacketEvent[]>;
  /**
   * The same batches handed to `consumer.packetsArrived`, one at a time: the next is read
   * only once the promise it returns (if any) has resolved. `consumer.inputEnded` is
   * called once, after the last: with null when the input ends, as {@link batches}
   * would, or with what `packetsArrived` threw or rejected with (no more is read then).
   * A consumer that wants no more input calls {@link stopReading}. Instead of
   * {@link batches} or {@link packets}, once: it costs no async iteration per read, and
   * no promise or closure while the peer is silent.
   */
  consume(consumer: PacketConsumer): void;
  /** False once the input was stopped ({@link stopReading}, a close, a failure). */
  readonly reading: boolean;
  /**
   * Encodes `packet` at {@link protocolVersion} and queues it; everything sent in one
   * turn leaves together. Ignored once closed.
   *
   * @throws {TypeError} if the packet cannot be encoded (a bug in the caller)
   */
  send(packet: OutboundPacket): void;
  /**
   * Queues bytes already encoded (one encoding shared by many receivers); they must not
   * change afterwards. Never throws; ignored once closed.
   */
  sendBytes(bytes: Uint8Array): void;
  /**
   * Queues `bytes` (shared, left unchanged) with the 16-bit packet identifier `id`
   * written at `idOffset` and, with `dup`, bit 3 of the first byte set (a PUBLISH
   * encoded once for many receivers). Never throws; ignored once closed.
   */
  sendPatched(bytes: Uint8Array, idOffset: number, id: number, dup: boolean): void;
  /**
   * Queues a PUBLISH as a shared `head` (everything before the payload, see
   * `publishHead`, left unchanged) with the identifier `id` written at `idOffset` (none
   * at QoS 0) and, with `dup`, the DUP flag set, followed by `payload`. Never throws;
   * ignored once closed.
   */
  sendPublish(
    head: Uint8Array,
    idOffset: number,
    id: number | null,
    dup: boolean,
    payload: Uint8Array,
  ): void;
  /** Output queued and not yet written, in bytes. */
  readonly bufferedBytes: number;
  /** Resolves once everything queued so far is written (or the connection closed). */
  whenDrained(): Promise<void>;
  /**
   * Closes the connection when nothing is received for `ms` (0 turns it off), counted
   * from the last packet received.
   */
  setKeepAlive(ms: number): void;
  /** Ends the input after the item being handled; output still goes out until {@link close}. */
  stopReading(): void;
  /**
   * Sends what is queued, then closes. Idempotent; await {@link closed} for the end.
   *
   * @param reason kept in {@link closeReason} for logs
   */
  close(reason?: string): void;
}
