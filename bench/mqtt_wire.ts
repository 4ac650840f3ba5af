/**
 * The load generator's MQTT 3.1.1 wire: a raw TCP socket with a frame reader that never
 * allocates per packet, and hand-encoded hot packets (PUBLISH from a template with the
 * packet identifier, sequence number and timestamp patched in; the 4-byte
 * acknowledgements). CONNECT and SUBSCRIBE, sent once per connection, come from
 * `encodePacket` (npm:mqtt-packet, the broker's own codec); `mqtt_wire_test.ts` checks
 * the hand encoding and the frame reader against that codec.
 *
 * No client library: the generator's cost per message stays small and is measured (its
 * own CPU time from /proc) rather than assumed.
 *
 * @module
 */
import { encodePacket } from "../src/transport/mqtt_codec.ts";

/** MQTT control packet types (the high nibble of the first byte). */
export const CONNACK = 2;
export const PUBLISH = 3;
export const PUBACK = 4;
export const PUBREC = 5;
export const PUBREL = 6;
export const PUBCOMP = 7;
export const SUBACK = 9;
export const PINGRESP = 13;
export const DISCONNECT_TYPE = 14;

/** DISCONNECT, 3.1.1: no body. */
export const DISCONNECT: Uint8Array = Uint8Array.of(0xe0, 0x00);

/** First byte of each acknowledgement (PUBREL has the reserved flags 0b0010). */
const ACK_FIRST_BYTE: Record<number, number> = {
  [PUBACK]: 0x40,
  [PUBREC]: 0x50,
  [PUBREL]: 0x62,
  [PUBCOMP]: 0x70,
};

/** Bytes of an acknowledgement packet (PUBACK, PUBREC, PUBREL, PUBCOMP) in 3.1.1. */
export const ACK_BYTES = 4;

/** Writes the 4-byte acknowledgement `type` for packet identifier `id` at `out[at]`. */
export function writeAck(out: Uint8Array, at: number, type: number, id: number): void {
  out[at] = ACK_FIRST_BYTE[type]!;
  out[at + 1] = 2;
  out[at + 2] = id >> 8;
  out[at + 3] = id & 0xff;
}

/** CONNECT at 3.1.1 (level 4), no will, no credentials. */
export function connectPacket(clientId: string, clean = true, keepalive = 0): Uint8Array {
  return encodePacket(
    { cmd: "connect", protocolId: "MQTT", protocolVersion: 4, clean, clientId, keepalive },
    4,
  );
}

/** SUBSCRIBE to one filter at `qos`, packet identifier `id`. */
export function subscribePacket(id: number, topic: string, qos: 0 | 1 | 2): Uint8Array {
  return encodePacket({ cmd: "subscribe", messageId: id, subscriptions: [{ topic, qos }] }, 4);
}

/** Payload bytes of every benchmark message. */
export const PAYLOAD_BYTES = 100;
/** Payload layout: `SSSSSSSSSS TTTTTTTTTTTTTTTT xxx…` (ASCII). */
const SEQ_DIGITS = 10;
const TIME_DIGITS = 16;
const TIME_AT = SEQ_DIGITS + 1;

/** Writes `value` as `digits` decimal digits, zero-padded, at `out[at]`. */
function writeDigits(out: Uint8Array, at: number, digits: number, value: number): void {
  for (let i = at + digits - 1; i >= at; i--) {
    const q = Math.floor(value / 10);
    out[i] = 48 + value - q * 10;
    value = q;
  }
}

function readDigits(buf: Uint8Array, at: number, digits: number): number {
  let v = 0;
  for (let i = at; i < at + digits; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return NaN;
    v = v * 10 + d;
  }
  return v;
}

/** The payload of message `seq` sent (or due) at `timeMicros`: what PublishEncoder writes. */
export function payloadOf(seq: number, timeMicros: number): Uint8Array {
  const p = new Uint8Array(PAYLOAD_BYTES).fill(0x78); // "x"
  writeDigits(p, 0, SEQ_DIGITS, seq);
  p[SEQ_DIGITS] = 0x20;
  writeDigits(p, TIME_AT, TIME_DIGITS, timeMicros);
  p[TIME_AT + TIME_DIGITS] = 0x20;
  return p;
}

/** The sequence number in a payload at `buf[at]`, NaN if it is not one of ours. */
export function payloadSeq(buf: Uint8Array, at: number): number {
  return readDigits(buf, at, SEQ_DIGITS);
}

/** The timestamp (µs since the epoch) in a payload at `buf[at]`, NaN if none. */
export function payloadTime(buf: Uint8Array, at: number): number {
  return readDigits(buf, at + TIME_AT, TIME_DIGITS);
}

/**
 * PUBLISH packets of one topic and QoS with 100-byte payloads, encoded once as a
 * template; {@link write} copies it and patches the packet identifier, the sequence
 * number and the timestamp.
 */
export class PublishEncoder {
  /** Bytes of each packet. */
  readonly size: number;
  readonly #template: Uint8Array;
  readonly #idAt: number;
  readonly #payloadAt: number;

  constructor(topic: string, readonly qos: 0 | 1 | 2) {
    const name = new TextEncoder().encode(topic);
    if (name.length > 65_535) throw new RangeError("a topic name has at most 65,535 bytes");
    const remaining = 2 + name.length + (qos > 0 ? 2 : 0) + PAYLOAD_BYTES;
    const lengthBytes: number[] = [];
    let x = remaining;
    do {
      let b = x % 128;
      x = Math.floor(x / 128);
      if (x > 0) b |= 0x80;
      lengthBytes.push(b);
    } while (x > 0);
    this.size = 1 + lengthBytes.length + remaining;
    const t = new Uint8Array(this.size);
    let at = 0;
    t[at++] = 0x30 | (qos << 1);
    for (const b of lengthBytes) t[at++] = b;
    t[at++] = name.length >> 8;
    t[at++] = name.length & 0xff;
    t.set(name, at);
    at += name.length;
    this.#idAt = qos > 0 ? at : -1;
    if (qos > 0) at += 2;
    this.#payloadAt = at;
    t.set(payloadOf(0, 0), at);
    this.#template = t;
  }

  /** Writes one PUBLISH at `out[at]`; `id` is ignored at QoS 0. Returns the end offset. */
  write(out: Uint8Array, at: number, id: number, seq: number, timeMicros: number): number {
    out.set(this.#template, at);
    if (this.#idAt >= 0) {
      out[at + this.#idAt] = id >> 8;
      out[at + this.#idAt + 1] = id & 0xff;
    }
    const p = at + this.#payloadAt;
    writeDigits(out, p, SEQ_DIGITS, seq);
    writeDigits(out, p + TIME_AT, TIME_DIGITS, timeMicros);
    return at + this.size;
  }
}

/**
 * Called once per whole packet read: `type` and `flags` are the first byte's nibbles,
 * the body (variable header and payload) is `buf[body..end)`. `buf` is reused: copy what
 * must outlive the call.
 */
export type PacketHandler = (
  type: number,
  flags: number,
  buf: Uint8Array,
  body: number,
  end: number,
) => void;

/**
 * Calls `handler` for every whole packet in `buf[at..end)` and returns the offset of the
 * first one not all there yet (`end` when none is).
 * @throws {Error} on a Remaining Length of more than 4 bytes
 */
export function splitFrames(
  buf: Uint8Array,
  at: number,
  end: number,
  handler: PacketHandler,
): number {
  while (end - at >= 2) {
    const first = buf[at]!;
    let remaining = 0;
    let multiplier = 1;
    let i = at + 1;
    let complete = false;
    for (; i < end && i < at + 5; i++) {
      const b = buf[i]!;
      remaining += (b & 0x7f) * multiplier;
      multiplier *= 128;
      if ((b & 0x80) === 0) {
        complete = true;
        i++;
        break;
      }
    }
    if (!complete) {
      if (i >= at + 5) throw new Error("malformed Remaining Length from the broker");
      break;
    }
    const frameEnd = i + remaining;
    if (frameEnd > end) break;
    handler(first >> 4, first & 0x0f, buf, i, frameEnd);
    at = frameEnd;
  }
  return at;
}

/**
 * The messages one QoS 1/2 publisher has in flight, by packet identifier (`seq % 65535 +
 * 1`): every acknowledgement is checked against them. `release(id)` writes the PUBREL
 * that a PUBREC asks for; `problem` hears of anything out of place.
 */
export class InFlight {
  /** 0: free; 1: sent, awaiting PUBACK / PUBREC; 2: PUBREL sent, awaiting PUBCOMP. */
  readonly #state = new Uint8Array(65_536);
  /** PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received. */
  completed = 0;
  /** QoS 2 PUBLISHes answered by PUBACK. */
  downgraded = 0;

  constructor(
    readonly qos: 1 | 2,
    readonly release: (id: number) => void,
    readonly problem: (text: string) => void,
  ) {}

  /** Message `seq` goes out: its packet identifier, now in flight. */
  send(seq: number): number {
    const id = (seq % 65_535) + 1;
    if (this.#state[id] !== 0) this.problem(`packet id ${id} still in flight (window too big)`);
    this.#state[id] = 1;
    return id;
  }

  /** A packet from the broker (a {@link PacketHandler}). */
  onPacket(type: number, _flags: number, buf: Uint8Array, body: number): void {
    const id = (buf[body]! << 8) | buf[body + 1]!;
    const state = this.#state;
    if (type === PUBACK) {
      if (state[id] !== 1) this.problem(`PUBACK ${id} not in flight`);
      else {
        state[id] = 0;
        if (this.qos === 2) this.downgraded++;
        this.completed++;
      }
    } else if (type === PUBREC) {
      if (state[id] !== 1) this.problem(`PUBREC ${id} not in flight`);
      else {
        state[id] = 2;
        this.release(id);
      }
    } else if (type === PUBCOMP) {
      if (state[id] !== 2) this.problem(`PUBCOMP ${id} not released`);
      else {
        state[id] = 0;
        this.completed++;
      }
    } else if (type !== PINGRESP) {
      this.problem(`unexpected packet type ${type}`);
    }
  }
}

/** A growable output buffer for the packets answered to one read. */
export class OutBuffer {
  #buf: Uint8Array;
  length = 0;
  constructor(capacity = 4096) {
    this.#buf = new Uint8Array(capacity);
  }
  /** Room for `bytes` more; returns the buffer to write into at `length`. */
  reserve(bytes: number): Uint8Array {
    if (this.length + bytes > this.#buf.length) {
      const bigger = new Uint8Array(Math.max(this.#buf.length * 2, this.length + bytes));
      bigger.set(this.#buf.subarray(0, this.length));
      this.#buf = bigger;
    }
    return this.#buf;
  }
  ack(type: number, id: number): void {
    writeAck(this.reserve(ACK_BYTES), this.length, type, id);
    this.length += ACK_BYTES;
  }
  /** What was written, as a view that the next write into this buffer overwrites. */
  view(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

/** An MQTT connection for the load generator: raw frames in, bytes out. */
export class MqttSocket {
  readonly #conn: Deno.TcpConn;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  /** The write loop while it runs: it resolves once everything queued is written. */
  #writing: Promise<void> | null = null;
  /**
   * Bytes queued since the write in progress began, and the buffer that write is from
   * (free again once it is done): the two swap at each write, so that a steady load
   * allocates no array per write. Every array costs the generator's collector work on
   * its own core (see bench/README.md, "The load generator").
   */
  #queued = new Uint8Array(16 * 1024);
  #queuedLength = 0;
  #spare = new Uint8Array(16 * 1024);
  #closed = false;
  /** A write failed (the peer closed, or we did). */
  writeFailed = false;

  private constructor(conn: Deno.TcpConn, bufferBytes: number) {
    this.#conn = conn;
    this.#buf = new Uint8Array(bufferBytes);
  }

  /**
   * Opens a TCP connection to 127.0.0.1:`port` with Nagle off. `bufferBytes` is the
   * initial read buffer (it grows for larger packets): small for idle connections.
   */
  static async open(port: number, bufferBytes = 64 * 1024): Promise<MqttSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new MqttSocket(conn, Math.max(16, bufferBytes));
  }

  /**
   * Opens a connection, sends CONNECT (3.1.1, clean session unless said otherwise) and
   * waits for a CONNACK that accepts it.
   * @throws {Error} on a refusal, another packet first, or the end of the stream
   */
  static async connect(
    port: number,
    clientId: string,
    clean = true,
    bufferBytes?: number,
  ): Promise<MqttSocket> {
    const s = await MqttSocket.open(port, bufferBytes);
    try {
      await s.send(connectPacket(clientId, clean));
      let code = -1;
      let other = -1;
      while (code < 0 && other < 0) {
        const open = await s.read((type, _f, buf, body) => {
          if (type === CONNACK) code = buf[body + 1]!;
          else other = type;
        });
        if (!open) throw new Error(`${clientId}: connection closed before CONNACK`);
      }
      if (other >= 0) throw new Error(`${clientId}: packet type ${other} before CONNACK`);
      if (code !== 0) throw new Error(`${clientId}: CONNACK return code ${code}`);
      return s;
    } catch (err) {
      s.close();
      throw err;
    }
  }

  /** Subscribes to `topic` at `qos`; returns the granted QoS (0x80 = refused). */
  async subscribe(topic: string, qos: 0 | 1 | 2): Promise<number> {
    await this.send(subscribePacket(1, topic, qos));
    let granted = -1;
    while (granted < 0) {
      const open = await this.read((type, _f, buf, body, end) => {
        if (type === SUBACK && end - body >= 3) granted = buf[body + 2]!;
      });
      if (!open) throw new Error(`connection closed before SUBACK for ${topic}`);
    }
    return granted;
  }

  /**
   * Queues a copy of `bytes` behind earlier writes (the caller may reuse its array at
   * once); resolves once all are written. Whatever is queued while a write is in
   * progress leaves in one write after it, not one write each: a generator that fell
   * behind (a paced publisher after a stall, sending one or two messages per tick)
   * catches up at once instead of one event-loop turn per tick, which held messages
   * back for milliseconds after they were counted as sent.
   */
  send(bytes: Uint8Array): Promise<void> {
    const end = this.#queuedLength + bytes.length;
    if (end > this.#queued.length) {
      const bigger = new Uint8Array(Math.max(end, this.#queued.length * 2));
      bigger.set(this.#queued.subarray(0, this.#queuedLength));
      this.#queued = bigger;
    }
    this.#queued.set(bytes, this.#queuedLength);
    this.#queuedLength = end;
    return this.#writing ??= this.#writeLoop();
  }

  /** {@link send} of what `out` holds; `out` is emptied. */
  sendOut(out: OutBuffer): Promise<void> {
    const sent = this.send(out.view());
    out.length = 0;
    return sent;
  }

  async #writeLoop(): Promise<void> {
    try {
      // Everything sent in this turn joins the first write.
      await Promise.resolve();
      while (this.#queuedLength > 0) {
        const buf = this.#queued;
        const length = this.#queuedLength;
        this.#queued = this.#spare;
        this.#queuedLength = 0;
        this.#spare = buf; // written below; nothing is queued into it until then
        if (this.writeFailed) continue;
        try {
          let n = 0;
          while (n < length) {
            n += await this.#conn.write(buf.subarray(n, length));
          }
        } catch {
          this.writeFailed = true;
        }
      }
    } finally {
      this.#writing = null;
    }
  }

  /**
   * Reads once (waiting for at least one byte) and calls `handler` for every whole packet
   * now buffered. Returns false at the end of the stream or once closed.
   */
  async read(handler: PacketHandler): Promise<boolean> {
    if (this.#closed) return false;
    if (this.#end === this.#buf.length) this.#makeRoom();
    let n: number | null;
    try {
      // The whole buffer when it is empty (the usual case): no view made per read.
      n = await this.#conn.read(this.#end === 0 ? this.#buf : this.#buf.subarray(this.#end));
    } catch {
      return false;
    }
    if (n === null) return false;
    this.#end += n;
    this.#start = splitFrames(this.#buf, this.#start, this.#end, handler);
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return true;
  }

  /** Room at the end of a full buffer: what is read moved to its start, or a buffer twice as large. */
  #makeRoom(): void {
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
    } else {
      const bigger = new Uint8Array(this.#buf.length * 2);
      bigger.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = bigger;
    }
    this.#end -= this.#start;
    this.#start = 0;
  }

  /** Sends DISCONNECT (after queued writes), then closes. Never throws. */
  async disconnect(): Promise<void> {
    if (!this.#closed) await this.send(DISCONNECT);
    this.close();
  }

  /** Closes the socket (a pending read then returns false); safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  get closed(): boolean {
    return this.#closed;
  }
}
