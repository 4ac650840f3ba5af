/**
 * MQTT packets from and to bytes, over `npm:mqtt-packet` (3.1.1 and 5.0). We frame each
 * packet ourselves (first byte + Remaining Length) so that an oversize packet is refused
 * from its header, before its body is buffered, and hand mqtt-packet one whole frame at
 * a time. No packet codec is written here: field rules beyond what mqtt-packet checks
 * (UTF-8 strictness, packet identifier 0, ...) belong to the MQTT protocol adapter.
 *
 * Importing mqtt-packet reads the environment: `readable-stream` reads `READABLE_STREAM`;
 * `debug`'s Node build enumerates every variable, its browser build (chosen by
 * `process.browser`, set around the import below) reads only `DEBUG`. So the broker
 * needs `--allow-env=BROKER_*,READABLE_STREAM,DEBUG`.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import Module from "node:module";
import { joinBytes } from "./connection.ts";
import process from "node:process";
import type * as MqttPacket from "mqtt-packet";

export type {
  IConnackPacket,
  IConnectPacket,
  IDisconnectPacket,
  IPublishPacket,
  ISubackPacket,
  ISubscribePacket,
  Packet,
} from "mqtt-packet";

const mqtt: typeof MqttPacket = await importCodec();

/**
 * Loads mqtt-packet. Its parser and encoder call `debug` several times per packet; off,
 * each call still builds an argument array, and those were a fifth of everything the
 * broker allocated per QoS 1 message (V8 sampling heap profile). So unless `DEBUG` asks
 * for mqtt-packet's logs, the `debug` that mqtt-packet requires is a function that does
 * nothing (Node's `Module._load`, hooked for the duration of this import only). When the
 * real one loads, `process.browser` is set so that `debug` picks its browser build, which
 * reads `DEBUG` alone rather than listing the environment.
 */
async function importCodec(): Promise<typeof MqttPacket> {
  const loader = Module as unknown as { _load: (...args: unknown[]) => unknown };
  const load = loader._load;
  if (!wantsCodecDebug()) {
    loader._load = function (this: unknown, ...args: unknown[]) {
      const [request, parent] = args as [string, { filename?: string } | undefined];
      if (request === "debug" && parent?.filename?.includes("mqtt-packet")) return () => silent;
      return load.apply(this, args);
    };
  }
  const proc = process as { browser?: boolean };
  const before = proc.browser;
  proc.browser = true;
  try {
    const module = await import("mqtt-packet");
    return (module.default ?? module) as typeof MqttPacket;
  } finally {
    loader._load = load;
    if (before === undefined) delete proc.browser;
    else proc.browser = before;
  }
}

function silent(): void {}

/** True when `DEBUG` names mqtt-packet's logs (or all logs), as `debug` would read it. */
function wantsCodecDebug(): boolean {
  let value: string | undefined;
  try {
    value = Deno.env.get("DEBUG");
  } catch {
    return false; // no permission to read it: `debug` could not either
  }
  return value !== undefined && /(^|[\s,])(mqtt-packet|\*)/.test(value);
}

/** MQTT protocol levels: 3 (3.1, parsed only), 4 (3.1.1) and 5 (5.0). */
export type ProtocolVersion = 3 | 4 | 5;

/** A packet that breaks the framing or that mqtt-packet refused; the connection must close. */
export class MalformedPacketError extends Error {
  /** @param message what was wrong, as the codec said it */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MalformedPacketError";
  }
}

/** One item out of {@link PacketParser.push}. */
export type PacketEvent =
  /** A whole packet, decoded. */
  | { kind: "packet"; packet: MqttPacket.Packet }
  /** Bad framing or a packet the codec refused; always the last item. */
  | { kind: "malformed"; error: MalformedPacketError }
  /**
   * A packet whose declared size (fixed header + Remaining Length) passes the limit,
   * found from its header alone; always the last item.
   */
  | { kind: "too-large"; limit: number; size: number };

/** Largest Remaining Length a 4-byte varint can say (MQTT-1.5.5 / 2.2.3). */
const MAX_REMAINING_LENGTH = 268_435_455;

/**
 * Incremental MQTT input: push byte chunks as they arrive, get back whole packets.
 * Made by {@link createPacketParser}. After a `malformed` or `too-large` item it stays
 * failed: later pushes give nothing.
 */
export interface PacketParser {
  /**
   * Feeds `chunk` and returns the items it completes, in order. Each packet is copied
   * into a frame of its own (payloads are views of it), so `chunk` may be reused, unless
   * the parser was made with `chunksAreFresh`.
   */
  push(chunk: Uint8Array): PacketEvent[];
  /** The level packets are parsed at: the initial one until a CONNECT says its own. */
  readonly protocolVersion: ProtocolVersion;
  /** True after a `malformed` or `too-large` item. */
  readonly failed: boolean;
}

/**
 * Makes a {@link PacketParser}. A CONNECT of either level is parsed whatever
 * `protocolVersion` says, and its level is used for every later packet (mqtt-packet
 * takes the CONNECT's settings), so a server passes 4 and needs nothing more; a client
 * passes the level it connects with.
 *
 * @param protocolVersion level of packets before any CONNECT
 * @param maxPacketBytes largest whole packet accepted (fixed header included), as v5's
 *   Maximum Packet Size counts it; bounds what a peer can make us buffer
 * @param options.chunksAreFresh the caller leaves each chunk unchanged for as long as
 *   the packets parsed from it are in use (a fresh array per read, or a read buffer lent
 *   to a consumer that copies what it keeps before the next read): a packet that lies
 *   wholly in one chunk is then parsed from a view of it rather than from a copy, and its
 *   byte fields (payload, correlation data, a will's payload) stay views of the chunk, so
 *   a caller that keeps one must copy it. Nothing is kept across calls but copies (a
 *   packet split over chunks is framed in an array of its own). Without it every packet
 *   gets a frame of its own.
 * @example
 * ```ts
 * const parser = createPacketParser(4, 65536);
 * for (const item of parser.push(chunk)) {
 *   if (item.kind === "packet") console.log(item.packet.cmd);
 * }
 * ```
 */
export function createPacketParser(
  protocolVersion: ProtocolVersion,
  maxPacketBytes: number,
  options: { chunksAreFresh?: boolean } = {},
): PacketParser {
  return new FramingParser(protocolVersion, maxPacketBytes, options.chunksAreFresh ?? false);
}

/** mqtt-packet's parser; `settings` becomes the CONNECT packet once one is parsed. */
type CodecParser = MqttPacket.Parser & {
  settings: { protocolVersion?: ProtocolVersion };
  _resetState(): void;
  /**
   * Its read position in the packet. It is zeroed only when a packet is emitted, not
   * by `_resetState`, and it is read as the offset of the next Remaining Length: after
   * an error inside a packet, the next frame would be read from the wrong place.
   */
  _pos: number;
};

/** Where the shared parsers' output goes during one `parse` call. */
let receiver: FramingParser | null = null;

function sharedParser(protocolVersion: ProtocolVersion): CodecParser {
  const p = mqtt.parser({ protocolVersion }) as CodecParser;
  p.on("packet", (packet) => receiver?.take(packet));
  p.on("error", (err: unknown) => receiver?.reject(err));
  return p;
}

/** A bl buffer list (mqtt-packet's input buffer), as far as its fast reads need. */
interface BufferListLike {
  _bufs: Uint8Array[];
}

type ReadAt = (this: BufferListLike, offset?: number) => number;
type TextAt = (this: BufferListLike, encoding?: string, start?: number, end?: number) => string;

/** bl's own accessors, kept for reads that span buffers (and for the tests). */
export const blReads: {
  readUInt8: ReadAt;
  readUInt16BE: ReadAt;
  readUInt32BE: ReadAt;
  toString: TextAt;
} = (() => {
  const proto = Object.getPrototypeOf((mqtt.parser() as unknown as { _list: object })._list);
  const own = {
    readUInt8: proto.readUInt8 as ReadAt,
    readUInt16BE: proto.readUInt16BE as ReadAt,
    readUInt32BE: proto.readUInt32BE as ReadAt,
    toString: proto.toString as TextAt,
  };
  // bl reads every number by slicing a Buffer view of it first (a JS object per byte of
  // header, length, string length and packet identifier: about ten per PUBLISH). A frame
  // reaches mqtt-packet as one buffer, so the bytes are nearly always in the first one:
  // read them there, as the same big-endian unsigned numbers; anything else goes to bl.
  proto.readUInt8 = function (this: BufferListLike, offset = 0): number {
    const b = this._bufs[0];
    return b !== undefined && (offset >>> 0) === offset && offset < b.length
      ? b[offset]!
      : own.readUInt8.call(this, offset);
  };
  proto.readUInt16BE = function (this: BufferListLike, offset = 0): number {
    const b = this._bufs[0];
    return b !== undefined && (offset >>> 0) === offset && offset + 2 <= b.length
      ? (b[offset]! << 8) | b[offset + 1]!
      : own.readUInt16BE.call(this, offset);
  };
  proto.readUInt32BE = function (this: BufferListLike, offset = 0): number {
    const b = this._bufs[0];
    return b !== undefined && (offset >>> 0) === offset && offset + 4 <= b.length
      ? ((b[offset]! << 24) >>> 0) + ((b[offset + 1]! << 16) | (b[offset + 2]! << 8) |
        b[offset + 3]!)
      : own.readUInt32BE.call(this, offset);
  };
  // Strings (topics, client ids, properties) likewise, decoded in place.
  proto.toString = function (
    this: BufferListLike,
    encoding?: string,
    start?: number,
    end?: number,
  ): string {
    const b = this._bufs[0] as Buffer | undefined;
    return b !== undefined && start !== undefined && end !== undefined &&
        (start >>> 0) === start && (end >>> 0) === end && start <= end && end <= b.length
      ? b.toString(encoding as BufferEncoding, start, end)
      : own.toString.call(this, encoding, start, end);
  };
  return own;
})();

/**
 * mqtt-packet parsers shared by every connection, one per level, and one for CONNECTs
 * (which set the level). They can be shared because each is handed one whole frame per
 * synchronous `parse` call, so none keeps anything of a connection between calls; a
 * parser per connection would cost each idle connection a few kilobytes of stream state.
 */
const parsers = {
  connect: sharedParser(4),
  3: sharedParser(3),
  4: sharedParser(4),
  5: sharedParser(5),
};

/** Shared empty result; never added to (`push` starts a fresh array). */
const NO_EVENTS: PacketEvent[] = [];

class FramingParser implements PacketParser {
  readonly #max: number;
  /** Frames wholly inside a chunk are views of it (`chunksAreFresh`). */
  readonly #views: boolean;
  #level: ProtocolVersion;
  /** What the `push` in progress completes; empty between pushes, so nothing is kept. */
  #out: PacketEvent[] = NO_EVENTS;
  /** First byte and Remaining Length bytes of the packet being framed. */
  readonly #header: number[] = [0, 0, 0, 0, 0];
  #headerBytes = 0;
  /** The frame being filled once its header is known. */
  #frame: Uint8Array | undefined;
  #filled = 0;
  #failed = false;
  /** Topic bytes of the last PUBLISH whose topic passed the UTF-8 check, and its name. */
  #checkedTopic: Uint8Array | undefined;
  #checkedName = "";

  constructor(protocolVersion: ProtocolVersion, maxPacketBytes: number, views: boolean) {
    this.#max = maxPacketBytes;
    this.#level = protocolVersion;
    this.#views = views;
  }

  get protocolVersion(): ProtocolVersion {
    return this.#level;
  }

  /** A packet from the shared parser. */
  take(packet: MqttPacket.Packet): void {
    if (packet.cmd === "connect") this.#level = packet.protocolVersion as ProtocolVersion;
    this.#out.push({ kind: "packet", packet });
  }

  /** An error from the shared parser. */
  reject(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    this.#fail({ kind: "malformed", error: new MalformedPacketError(message, { cause: err }) });
  }

  get failed(): boolean {
    return this.#failed;
  }

  push(chunk: Uint8Array): PacketEvent[] {
    this.#out = [];
    let offset = 0;
    while (offset < chunk.length && !this.#failed) {
      if (this.#frame === undefined) {
        const byte = chunk[offset++]!;
        this.#header[this.#headerBytes++] = byte;
        if (this.#headerBytes === 1 || (byte & 0x80) !== 0) {
          if (this.#headerBytes === 5) {
            this.#malformed("Remaining Length longer than 4 bytes (MQTT-1.5.5 / 2.2.3)");
          }
          continue;
        }
        const size = this.#frameSize();
        if (size < 0) continue; // failed
        const start = offset - this.#headerBytes; // negative: the header began in an earlier chunk
        if (start >= 0 && start + size <= chunk.length) {
          // The whole frame is in this chunk (the usual case): a view of it or one copy.
          offset = start + size;
          if (this.#views) this.#decode(chunk, start, offset);
          else this.#decode(chunk.slice(start, offset), 0, size);
          continue;
        }
        this.#startFrame(size);
        if (this.#frame === undefined) continue; // a frame with no body
      }
      const frame = this.#frame;
      const take = Math.min(frame.length - this.#filled, chunk.length - offset);
      frame.set(chunk.subarray(offset, offset + take), this.#filled);
      this.#filled += take;
      offset += take;
      if (this.#filled === frame.length) this.#decode(frame, 0, frame.length);
    }
    const out = this.#out;
    this.#out = NO_EVENTS;
    return out;
  }

  /** The header is complete: the frame's size, or -1 when it is refused (and failed). */
  #frameSize(): number {
    let remaining = 0;
    let multiplier = 1;
    for (let i = 1; i < this.#headerBytes; i++) {
      remaining += (this.#header[i]! & 0x7f) * multiplier;
      multiplier *= 128;
    }
    // [MQTT-1.5.5-1] (v5; 3.1.1 §2.2.3): the length takes the fewest bytes possible, so
    // a last byte of 0 after a first one is a non-minimal encoding.
    if (this.#headerBytes > 2 && this.#header[this.#headerBytes - 1] === 0) {
      this.#malformed("Remaining Length not minimally encoded (MQTT-1.5.5-1)");
      return -1;
    }
    const size = this.#headerBytes + remaining;
    if (remaining > MAX_REMAINING_LENGTH || size > this.#max) {
      this.#fail({ kind: "too-large", limit: this.#max, size });
      return -1;
    }
    return size;
  }

  /** Makes room for a frame of `size` bytes that arrives over several chunks. */
  #startFrame(size: number): void {
    const frame = new Uint8Array(size);
    for (let i = 0; i < this.#headerBytes; i++) frame[i] = this.#header[i]!;
    this.#filled = this.#headerBytes;
    if (size === this.#headerBytes) this.#decode(frame, 0, size);
    else this.#frame = frame;
  }

  /** Decodes the frame `buf[start, end)`, which nothing else changes from now on. */
  #decode(buf: Uint8Array, start: number, end: number): void {
    this.#frame = undefined;
    this.#headerBytes = 0;
    this.#filled = 0;
    const first = buf[start]!;
    if (first === 0x10) {
      const level = unknownConnectLevel(buf.subarray(start, end));
      if (level !== undefined) {
        // mqtt-packet refuses a level it does not know as malformed, but 3.1.1
        // [MQTT-3.1.2-2] wants CONNACK 0x01 and then the close: pass the name and level on.
        const packet = { cmd: "connect", protocolId: "MQTT", protocolVersion: level, clientId: "" };
        this.#out.push({ kind: "packet", packet: packet as unknown as MqttPacket.Packet });
        return;
      }
    }
    const shortAck = end - start === 4 && buf[start + 1] === 2;
    if (shortAck) {
      const shape = ackShapes.get(this.#level * 256 + first);
      if (shape) {
        const id = (buf[start + 2]! << 8) | buf[start + 3]!;
        this.#out.push({ kind: "packet", packet: shape(id) });
        return;
      }
    }
    if (first >> 4 === 3 && this.#plainPublish(buf, start, end)) return;
    const frame = buf.subarray(start, end);
    const isConnect = first >> 4 === 1;
    const codec = isConnect ? parsers.connect : parsers[this.#level];
    // Its CONNECT replaced the connect parser's settings: start each one from level 4.
    if (isConnect) codec.settings = { protocolVersion: 4 };
    receiver = this;
    codec._pos = 0; // each frame is parsed from its first byte, whatever came before
    let left: number;
    try {
      left = codec.parse(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength));
    } finally {
      receiver = null;
    }
    if (left !== 0) {
      codec._resetState(); // nothing of this frame may reach the next connection's
      if (!this.#failed) this.#malformed(`${left} bytes of the packet left over by the codec`);
      return;
    }
    if (shortAck) learnAck(frame, this.#level, this.#out);
  }

  /**
   * Checks the topic of the PUBLISH frame `buf[start, end)` (the UTF-8 rules below
   * {@link publishTopicName}) and decodes the frame when it is a plain one (see
   * {@link plainPublish}). True when it is done with the frame (decoded, or refused as
   * malformed); false leaves it to mqtt-packet.
   */
  #plainPublish(buf: Uint8Array, start: number, end: number): boolean {
    let at = start + 1;
    while (at < end && (buf[at]! & 0x80) !== 0) at++;
    at++; // the last Remaining Length byte
    if (at + 2 > end) return false;
    const length = (buf[at]! << 8) | buf[at + 1]!;
    const topicAt = at + 2;
    const topicEnd = topicAt + length;
    if (topicEnd > end) return false; // mqtt-packet refuses it
    // A publisher mostly repeats its topics: the last one that passed is not checked
    // (nor decoded) again.
    const checked = this.#checkedTopic;
    if (!(checked && checked.length === length && sameBytesAt(buf, topicAt, checked))) {
      const topic = buf.subarray(topicAt, topicEnd);
      const name = publishTopicName(topic);
      if (name === null) {
        this.#malformed(publishTopicProblem(topic));
        return true;
      }
      this.#checkedTopic = topic.slice();
      this.#checkedName = name;
    }
    const publish = plainPublish(buf, start, end, at, topicEnd, this.#checkedName, this.#level);
    if (!publish) return false;
    this.#out.push({ kind: "packet", packet: publish });
    return true;
  }

  #malformed(message: string): void {
    this.#fail({ kind: "malformed", error: new MalformedPacketError(message) });
  }

  #fail(event: PacketEvent): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#out.push(event);
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * mqtt-packet's decoding of the 4-byte acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP
 * with no reason code or properties: 3.1.1 §3.4-3.7, v5 §3.4.2.1), by level and first
 * byte, without the identifier. The mirror of {@link ackTemplate}: such a packet differs
 * from another of its kind only in bytes 2 and 3, its identifier, so once mqtt-packet has
 * decoded one, the next is a copy of that decoding with the identifier read from those
 * bytes. Every QoS 1 and 2 message brings one to three of them. Only a first byte
 * mqtt-packet accepted is learnt; anything else goes to mqtt-packet every time.
 */
const ackShapes = new Map<number, (messageId: number) => MqttPacket.Packet>();

/** Learns the shape of the acknowledgement mqtt-packet just decoded from `frame`. */
function learnAck(frame: Uint8Array, level: ProtocolVersion, out: PacketEvent[]): void {
  const last = out[out.length - 1];
  if (last?.kind !== "packet") return;
  const packet = last.packet as unknown as Record<string, unknown>;
  if (!ACK_TYPES.has(packet.cmd as string)) return;
  if (packet.messageId !== ((frame[2]! << 8) | frame[3]!)) return;
  const { messageId: _id, ...shape } = packet;
  ackShapes.set(
    level * 256 + frame[0]!,
    (messageId) => ({ ...shape, messageId }) as unknown as MqttPacket.Packet,
  );
}

/** Whether `buf` holds the bytes of `b` from `at` on (the caller checked the length). */
function sameBytesAt(buf: Uint8Array, at: number, b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (buf[at + i] !== b[i]) return false;
  return true;
}

/**
 * A PUBLISH topic's name, or null when its bytes are not one: mqtt-packet decodes
 * ill-formed UTF-8 lossily (as U+FFFD), but the topic must be well-formed UTF-8 without
 * U+0000, 3.1.1 [MQTT-1.5.3-1], [MQTT-1.5.3-2]; v5 [MQTT-1.5.4-1], [MQTT-1.5.4-2].
 */
function publishTopicName(bytes: Uint8Array): string | null {
  if (bytes.includes(0)) return null;
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

/** What is wrong with topic bytes {@link publishTopicName} refused. */
function publishTopicProblem(bytes: Uint8Array): string {
  return bytes.includes(0)
    ? "PUBLISH topic contains U+0000"
    : "PUBLISH topic is not well-formed UTF-8";
}

/**
 * Decodes the PUBLISH frames nearly every message is, without mqtt-packet: any QoS
 * (3.1.1 §3.3.1), and at level 5 only those with no properties (a Property Length of 0,
 * v5 §3.3.2.3). The frame is `buf[start, end)`, its variable header begins at `bodyAt`
 * (after the Remaining Length), its topic (checked) ends at `topicEnd` and reads `name`. The packet has the fields mqtt-packet's would have, the payload a
 * `Buffer` view of the frame as its is. Anything else (QoS 3, a frame too short for its
 * identifier, properties) is undefined and goes to mqtt-packet, which decodes or
 * refuses it.
 */
function plainPublish(
  buf: Uint8Array,
  start: number,
  end: number,
  bodyAt: number,
  topicEnd: number,
  name: string,
  level: ProtocolVersion,
): MqttPacket.Packet | undefined {
  const first = buf[start]!;
  const qos = (first >> 1) & 3;
  if (qos === 3) return undefined;
  let at = topicEnd;
  let messageId = 0;
  if (qos > 0) {
    if (at + 2 > end) return undefined;
    messageId = (buf[at]! << 8) | buf[at + 1]!;
    at += 2;
  }
  if (level === 5) {
    if (at >= end || buf[at] !== 0) return undefined;
    at++;
  }
  const length = end - bodyAt; // the Remaining Length
  const packet = qos === 0
    ? new PlainPublish(first, length, name)
    : new PlainPublishWithId(first, length, name, messageId);
  packet.payload = Buffer.from(buf.buffer, buf.byteOffset + at, end - at);
  return packet as unknown as MqttPacket.Packet;
}

/** The fields of mqtt-packet's PUBLISH, in its order (one hidden class for each QoS kind). */
class PlainPublish {
  readonly cmd = "publish";
  readonly retain: boolean;
  readonly qos: number;
  readonly dup: boolean;
  readonly length: number;
  readonly topic: string;
  payload: Buffer | null = null;

  constructor(first: number, length: number, topic: string) {
    this.retain = (first & 1) !== 0;
    this.qos = (first >> 1) & 3;
    this.dup = (first & 8) !== 0;
    this.length = length;
    this.topic = topic;
  }
}

class PlainPublishWithId extends PlainPublish {
  readonly messageId: number;

  constructor(first: number, length: number, topic: string, messageId: number) {
    super(first, length, topic);
    this.messageId = messageId;
  }
}

/**
 * The protocol level of a CONNECT frame naming "MQTT" or "MQIsdp" with a level other
 * than 3, 4 or 5 (bridge bit 0x80 aside, as mqtt-packet reads it); otherwise undefined.
 */
function unknownConnectLevel(frame: Uint8Array): number | undefined {
  if (frame[0] !== 0x10) return undefined;
  let i = 1;
  while (i < frame.length && (frame[i]! & 0x80) !== 0) i++;
  i++; // past the last Remaining Length byte
  const nameLength = ((frame[i] ?? 0) << 8) | (frame[i + 1] ?? 0);
  const levelAt = i + 2 + nameLength;
  if (levelAt >= frame.length) return undefined;
  const name = String.fromCharCode(...frame.subarray(i + 2, levelAt));
  if (name !== "MQTT" && name !== "MQIsdp") return undefined;
  const level = frame[levelAt]! & 0x7f;
  return level === 3 || level === 4 || level === 5 ? undefined : level;
}

/**
 * A packet to encode: as mqtt-packet's {@link Packet}, except that byte fields may be
 * plain `Uint8Array`s (converted to `Buffer` views here, without copying).
 */
export type OutboundPacket =
  | MqttPacket.Packet
  | (Omit<MqttPacket.IPublishPacket, "payload"> & { payload: string | Uint8Array });

/**
 * Encodes one packet at `protocolVersion`. Encode once and send the bytes to every
 * receiver that gets the same packet.
 *
 * @throws {TypeError} if mqtt-packet cannot encode the packet (a missing or invalid
 *   field): a bug in the caller, not the peer
 * @example
 * ```ts
 * const bytes = encodePacket({ cmd: "connack", returnCode: 0, sessionPresent: false }, 4);
 * ```
 */
export function encodePacket(packet: OutboundPacket, protocolVersion: ProtocolVersion): Uint8Array {
  if (packet.cmd === "publish") {
    return plainPublishBytes(packet, protocolVersion) ?? generate(packet, protocolVersion);
  }
  const template = ackTemplate(packet, protocolVersion);
  if (!template) return generate(packet, protocolVersion);
  const out = new Uint8Array(template.length);
  out.set(template);
  const id = (packet as { messageId: number }).messageId;
  out[2] = id >> 8;
  out[3] = id & 0xff;
  return out;
}

const NO_BYTES = new Uint8Array(0);

/**
 * Encodes the PUBLISH packets nearly every delivery is, without mqtt-packet: no
 * properties (at level 5 a Property Length of 0, v5 §3.3.2.3), the fixed header from
 * QoS, DUP and RETAIN (§3.3.1), the topic as a length-prefixed string, the identifier at
 * QoS 1 and 2 (§3.3.2.2), the payload. The bytes are mqtt-packet's own (tested against
 * `generate`). Anything else, and any field mqtt-packet would refuse, is undefined and
 * goes to mqtt-packet.
 */
function plainPublishBytes(
  packet: OutboundPacket,
  protocolVersion: ProtocolVersion,
): Uint8Array | undefined {
  const p = packet as unknown as Record<string, unknown>;
  if (p.properties !== undefined) return undefined;
  const qos = (p.qos || 0) as number;
  if (qos !== 0 && qos !== 1 && qos !== 2) return undefined;
  const id = p.messageId as number;
  if (qos > 0 && !(Number.isInteger(id) && id >= 0 && id <= 0xffff)) return undefined;
  const topic = typeof p.topic === "string" ? encodedTopic(p.topic) : p.topic;
  if (!(topic instanceof Uint8Array) || topic.length > 0xffff) return undefined;
  const payload = typeof p.payload === "string" ? utf8.encode(p.payload) : p.payload ?? NO_BYTES;
  if (!(payload instanceof Uint8Array)) return undefined;
  const remaining = 2 + topic.length + (qos > 0 ? 2 : 0) + (protocolVersion === 5 ? 1 : 0) +
    payload.length;
  if (remaining > MAX_REMAINING_LENGTH) return undefined;
  const out = new Uint8Array(1 + remainingLengthBytes(remaining) + remaining);
  const first = 0x30 | (qos << 1) | (p.dup ? 8 : 0) | (p.retain ? 1 : 0);
  let at = writePublishStart(out, first, remaining, topic);
  if (qos > 0) {
    out[at++] = id >> 8;
    out[at++] = id & 0xff;
  }
  if (protocolVersion === 5) out[at++] = 0;
  out.set(payload, at);
  return out;
}

/** How many bytes the Remaining Length `n` takes (§2.2.3; at most 268,435,455). */
export function remainingLengthBytes(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : 4;
}

/**
 * Writes the start of a PUBLISH into `out` (sized by the caller with
 * {@link remainingLengthBytes}): the first byte, the Remaining Length `remaining` and the
 * length-prefixed topic name (§3.3.1, §3.3.2.1). Returns the offset after the topic.
 */
export function writePublishStart(
  out: Uint8Array,
  first: number,
  remaining: number,
  topic: Uint8Array,
): number {
  const lengthBytes = remainingLengthBytes(remaining);
  out[0] = first;
  let at = 1;
  for (let n = remaining; at <= lengthBytes; at++, n = Math.floor(n / 0x80)) {
    out[at] = (n & 0x7f) | (at < lengthBytes ? 0x80 : 0);
  }
  out[at++] = topic.length >> 8;
  out[at++] = topic.length & 0xff;
  out.set(topic, at);
  return at + topic.length;
}

function generate(packet: OutboundPacket, protocolVersion: ProtocolVersion): Uint8Array {
  collector.reset();
  try {
    mqtt.writeToStream(
      withBuffers(packet),
      collector as unknown as Parameters<typeof mqtt.writeToStream>[1],
      {
        protocolVersion,
      },
    );
    return collector.join();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new TypeError(`cannot encode a ${packet.cmd} packet: ${message}`, { cause: err });
  } finally {
    collector.reset();
  }
}

const utf8 = new TextEncoder();

/**
 * The stream mqtt-packet's `writeToStream` encodes into: it writes a packet as a few
 * pieces (header, length, strings, payload), which are joined here with native copies
 * into one array. mqtt-packet's own `generate` does the same through Node's `Buffer`
 * (`Buffer.concat`, `copy`), which costs more under Deno; the bytes are the same
 * (tested against `generate`). One collector serves every call: encoding is synchronous.
 */
class Collector {
  #pieces: Uint8Array[] = [];

  write(piece: Uint8Array | string): boolean {
    this.#pieces.push(typeof piece === "string" ? utf8.encode(piece) : piece);
    return true;
  }

  /** mqtt-packet's way of saying a field is invalid. */
  destroy(err?: Error): void {
    if (err) throw err;
  }

  join(): Uint8Array {
    return joinBytes(this.#pieces);
  }

  reset(): void {
    this.#pieces.length = 0;
  }
}

const collector = new Collector();

// mqtt-packet builds its table of encoded 16-bit numbers (65,536 small Buffers, ~6.5 MB)
// on its first encoding: done here, at start-up, rather than on the first connection.
generate({ cmd: "pingresp" }, 4);

/** The acknowledgements that have a packet identifier right after a one-byte length. */
const ACK_TYPES: ReadonlyMap<string, number> = new Map([
  ["puback", 0],
  ["pubrec", 1],
  ["pubrel", 2],
  ["pubcomp", 3],
]);

/** Identifier written into a template, to check that it sits at bytes 2 and 3. */
const PROBE_ID = 0x1234;

/** mqtt-packet's encoding of each kind of plain acknowledgement; null: no template. */
const ackTemplates = new Map<number, Uint8Array | null>();

/**
 * For a PUBACK, PUBREC, PUBREL or PUBCOMP without properties: mqtt-packet's encoding of
 * the same packet with another identifier, shared (never to be changed). The identifier
 * is the first field of their variable header, at bytes 2 and 3 after a one-byte
 * Remaining Length (3.1.1 §3.4-3.7, v5 §3.4-3.7), so the packet is the template with
 * its identifier written there: one copy and two stores, or none when the output queue
 * writes them in (a connection's `sendPatched`), instead of a `generate` per
 * acknowledgement, which every QoS 1 and 2 message needs. Undefined for any other packet.
 */
export function ackTemplate(
  packet: OutboundPacket,
  protocolVersion: ProtocolVersion,
): Uint8Array | undefined {
  const type = ACK_TYPES.get(packet.cmd);
  if (type === undefined) return undefined;
  const p = packet as { messageId?: number; reasonCode?: number; properties?: unknown };
  const id = p.messageId;
  const code = p.reasonCode ?? 256;
  if (
    p.properties !== undefined || typeof id !== "number" || id < 1 || id > 0xffff ||
    !Number.isInteger(id) || !Number.isInteger(code) || code < 0 || code > 256
  ) {
    return undefined;
  }
  const key = (type * 8 + protocolVersion) * 512 + code;
  let template = ackTemplates.get(key);
  if (template === undefined) {
    const probe = generate({ ...packet, messageId: PROBE_ID } as OutboundPacket, protocolVersion);
    const fits = probe.length >= 4 && probe[1]! < 0x80 && probe[2] === PROBE_ID >> 8 &&
      probe[3] === (PROBE_ID & 0xff);
    template = fits ? probe.slice() : null;
    ackTemplates.set(key, template);
  }
  return template ?? undefined;
}

/**
 * mqtt-packet needs `Buffer`s where a field may be a string or bytes (it tells them
 * apart with `Buffer.isBuffer`). A PUBLISH payload is only measured and written, so a
 * plain Uint8Array does there.
 */
function withBuffers(packet: OutboundPacket): MqttPacket.Packet {
  const p = packet as unknown as Record<string, unknown>;
  if (p.cmd === "publish" && p.properties === undefined) {
    // The topic as bytes: mqtt-packet would measure the string twice and encode it.
    if (typeof p.topic !== "string") return p as unknown as MqttPacket.Packet;
    return { ...p, topic: encodedTopic(p.topic) } as unknown as MqttPacket.Packet;
  }
  let copy: Record<string, unknown> | undefined;
  const set = (key: string, value: unknown) => {
    copy ??= { ...p };
    copy[key] = value;
  };
  if (isPlainBytes(p.payload) && p.cmd !== "publish") set("payload", toBuffer(p.payload));
  if (isPlainBytes(p.password)) set("password", toBuffer(p.password));
  const will = p.will as Record<string, unknown> | undefined;
  if (will && isPlainBytes(will.payload)) set("will", { ...will, payload: toBuffer(will.payload) });
  const props = p.properties as Record<string, unknown> | undefined;
  if (props) {
    for (const key of ["correlationData", "authenticationData"]) {
      const value = props[key];
      if (isPlainBytes(value)) {
        const current = (copy?.properties ?? props) as Record<string, unknown>;
        set("properties", { ...current, [key]: toBuffer(value) });
      }
    }
  }
  return (copy ?? p) as unknown as MqttPacket.Packet;
}

/** Encoded topic names, as `Buffer`s (mqtt-packet takes a topic as a string or a Buffer). */
const topicCache = new Map<string, Buffer>();
const TOPIC_CACHE_SIZE = 4096;

/**
 * `topic` encoded in UTF-8 as a `Buffer`, from a cache: what a PUBLISH handed to
 * {@link encodePacket} may carry as its topic instead of the string.
 */
export function encodedTopic(topic: string): Buffer {
  let bytes = topicCache.get(topic);
  if (bytes === undefined) {
    if (topicCache.size >= TOPIC_CACHE_SIZE) topicCache.clear();
    bytes = Buffer.from(topic, "utf8");
    topicCache.set(topic, bytes);
  }
  return bytes;
}

function isPlainBytes(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array && !Buffer.isBuffer(value);
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
