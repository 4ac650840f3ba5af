/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * The worker behind {@link PacedPublisher} (`paced_publisher.ts`): one MQTT publisher
 * whose socket is driven by blocking system calls through libc (`socket`, `connect`,
 * `send`, `recv`, `ppoll`), so that nothing it does waits on an event loop. Between two
 * due times it sleeps in `ppoll` on its socket, which wakes it at the next due time or
 * when an acknowledgement arrives, whichever comes first.
 *
 * Why not the event loop: a paced publisher on the generator's main thread, woken by a
 * ticker worker (`Atomics.waitAsync`), was measured to miss its ticks for 2–6 ms at a
 * time whenever no socket read woke its thread meanwhile (bench/README.md,
 * "Pacing"). A broker that acknowledges each message at once woke it every 0.1 ms;
 * one that acknowledges a group commit's messages together did not, and the messages
 * not sent meanwhile counted as its latency.
 *
 * Messages in: `{ type: "connect", port, clientId, stop }`, then `{ type: "publish", … }`,
 * then `{ type: "close" }`. Messages out: `{ type: "connected" }`, `{ type: "done", … }`,
 * `{ type: "closed" }`, `{ type: "failed", message }`. Slot 0 of the shared `stop` array,
 * once set, ends the publishing within 50 ms.
 *
 * @module
 */
import {
  ACK_BYTES,
  CONNACK,
  connectPacket,
  DISCONNECT,
  InFlight,
  type PacketHandler,
  PUBACK,
  PUBLISH,
  PublishEncoder,
  PUBREL,
  splitFrames,
  writeAck,
} from "./mqtt_wire.ts";
import { LIBC_PATHS } from "../src/memory_reducer.ts";

/** What the main thread asks for. */
export type PacedRequest =
  | { type: "connect"; port: number; clientId: string; stop: SharedArrayBuffer }
  | {
    type: "publish";
    topic: string;
    qos: 1 | 2;
    count: number;
    window: number;
    rate: number;
  }
  | { type: "close" };

/** What a publishing run did; `lags` is send time − due time per message, in order. */
export interface PacedDone {
  type: "done";
  sent: number;
  completed: number;
  windowFull: number;
  downgraded: number;
  endedAt: number;
  lags: Float64Array<ArrayBuffer>;
  problems: string[];
}

const AF_INET = 2;
const SOCK_STREAM = 1;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const POLLIN = 0x001;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const EINTR = 4;
const EAGAIN = 11;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  ppoll: { parameters: ["buffer", "u64", "buffer", "pointer"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  memcpy: { parameters: ["buffer", "pointer", "usize"], result: "pointer" },
} as const;

function openLibc(): Deno.DynamicLibrary<typeof SYMBOLS> {
  for (const path of LIBC_PATHS) {
    try {
      return Deno.dlopen(path, SYMBOLS);
    } catch {
      // the next path
    }
  }
  throw new Error(`libc not found at ${LIBC_PATHS.join(" or ")}`);
}

const libc = openLibc().symbols;
const errnoCell = new Int32Array(1);
/** The calling thread's errno (read through memcpy: a pointer view needs full FFI rights). */
function errno(): number {
  libc.memcpy(errnoCell, libc.__errno_location(), 4n);
  return errnoCell[0]!;
}
const wallMs = () => performance.timeOrigin + performance.now();

/** What {@link publish} needs of a connection. */
interface Wire {
  send(bytes: Uint8Array): boolean;
  wait(ms: number): boolean;
  drain(onPacket: PacketHandler): boolean;
}

/** A blocking TCP socket to 127.0.0.1 with a read buffer of whole and partial packets. */
class RawSocket implements Wire {
  readonly fd: number;
  #in = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  readonly #pollfd = new Uint8Array(8);
  readonly #timeout = new BigInt64Array(2);
  readonly #timeoutBytes = new Uint8Array(this.#timeout.buffer);

  constructor(port: number) {
    const fd = libc.socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw new Error("socket() failed");
    this.fd = fd;
    const addr = new Uint8Array(16);
    new DataView(addr.buffer).setUint16(0, AF_INET, true);
    new DataView(addr.buffer).setUint16(2, port, false);
    addr.set([127, 0, 0, 1], 4);
    if (libc.connect(fd, addr, addr.length) !== 0) {
      libc.close(fd);
      throw new Error(`connect to 127.0.0.1:${port} failed`);
    }
    libc.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, Int32Array.of(1), 4);
    const v = new DataView(this.#pollfd.buffer);
    v.setInt32(0, fd, true);
    v.setInt16(4, POLLIN, true);
  }

  /** Writes all of `bytes` (blocking); false once the peer is gone. */
  send(bytes: Uint8Array): boolean {
    let at = 0;
    while (at < bytes.length) {
      const n = Number(
        libc.send(this.fd, bytes.subarray(at), BigInt(bytes.length - at), MSG_NOSIGNAL),
      );
      if (n < 0) {
        if (errno() === EINTR) continue;
        return false;
      }
      at += n;
    }
    return true;
  }

  /** Sleeps until bytes can be read or `ms` passed; true if readable. */
  wait(ms: number): boolean {
    const ns = BigInt(Math.max(0, Math.round(ms * 1e6)));
    this.#timeout[0] = ns / 1_000_000_000n;
    this.#timeout[1] = ns % 1_000_000_000n;
    const r = libc.ppoll(this.#pollfd, 1n, this.#timeoutBytes, null);
    return r > 0;
  }

  /**
   * Reads what has arrived without blocking and calls `onPacket` for each whole packet.
   * Returns false once the peer closed the connection.
   */
  drain(onPacket: PacketHandler): boolean {
    for (;;) {
      if (this.#start === this.#end) this.#start = this.#end = 0;
      if (this.#end === this.#in.length) {
        const bigger = new Uint8Array(this.#in.length * 2);
        bigger.set(this.#in.subarray(this.#start, this.#end));
        this.#end -= this.#start;
        this.#start = 0;
        this.#in = bigger;
      }
      const room = this.#in.length - this.#end;
      const n = Number(
        libc.recv(this.fd, this.#in.subarray(this.#end), BigInt(room), MSG_DONTWAIT),
      );
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        return e === EAGAIN; // nothing more to read now; anything else is a failed connection
      }
      if (n === 0) return false;
      this.#end += n;
      this.#start = splitFrames(this.#in, this.#start, this.#end, onPacket);
      if (n < room) return true;
    }
  }

  close(): void {
    libc.close(this.fd);
  }
}

/** Slot 0 set: stop publishing (shared with the main thread once connected). */
let stop: Int32Array<ArrayBufferLike> = new Int32Array(1);

/**
 * A loopback that answers each PUBLISH with its PUBACK at once, for a run that only
 * compiles: the first real run then starts in optimised code instead of stalling for
 * about 13 ms (measured) while V8 compiles its loop.
 */
class Echo implements Wire {
  #acks = new Uint8Array(0);
  send(bytes: Uint8Array): boolean {
    const acks = new Uint8Array(bytes.length);
    let n = 0;
    splitFrames(bytes, 0, bytes.length, (type, _flags, buf, body) => {
      if (type !== PUBLISH) return;
      const idAt = body + 2 + ((buf[body]! << 8) | buf[body + 1]!);
      writeAck(acks, n, PUBACK, (buf[idAt]! << 8) | buf[idAt + 1]!);
      n += ACK_BYTES;
    });
    this.#acks = acks.subarray(0, n);
    return true;
  }
  wait(): boolean {
    return this.#acks.length > 0;
  }
  drain(onPacket: PacketHandler): boolean {
    const acks = this.#acks;
    this.#acks = new Uint8Array(0);
    splitFrames(acks, 0, acks.length, onPacket);
    return true;
  }
}

publish(new Echo(), {
  type: "publish",
  topic: "warm-up",
  qos: 1,
  count: 30_000,
  window: 100,
  rate: 1e7,
});

let sock: RawSocket | null = null;

self.onmessage = (e: MessageEvent<PacedRequest>) => {
  const req = e.data;
  try {
    if (req.type === "connect") {
      stop = new Int32Array(req.stop);
      sock = connect(req.port, req.clientId);
      self.postMessage({ type: "connected" });
    } else if (req.type === "publish") {
      const done = publish(sock as RawSocket, req);
      self.postMessage(done, [done.lags.buffer]);
    } else {
      if (sock) {
        sock.send(DISCONNECT);
        sock.close();
        sock = null;
      }
      self.postMessage({ type: "closed" });
    }
  } catch (err) {
    self.postMessage({ type: "failed", message: err instanceof Error ? err.message : String(err) });
  }
};

function connect(port: number, clientId: string): RawSocket {
  const s = new RawSocket(port);
  s.send(connectPacket(clientId));
  let code = -1;
  const deadline = wallMs() + 10_000;
  while (code < 0) {
    if (wallMs() > deadline) throw new Error("no CONNACK within 10 s");
    if (!s.wait(100)) continue;
    const open = s.drain((type, _flags, buf, body) => {
      code = type === CONNACK ? buf[body + 1]! : 256 + type;
    });
    if (!open && code < 0) throw new Error("connection closed before CONNACK");
  }
  if (code !== 0) {
    throw new Error(`CONNECT refused (${code >= 256 ? "packet type" : "code"} ${code % 256})`);
  }
  return s;
}

function publish(s: Wire, plan: Extract<PacedRequest, { type: "publish" }>): PacedDone {
  const { count, window, rate, qos } = plan;
  const enc = new PublishEncoder(plan.topic, qos);
  const interval = 1000 / rate;
  const lags = new Float64Array(count);
  const problems: string[] = [];
  const problem = (text: string) => {
    if (problems.length < 10) problems.push(text);
  };
  const out = new Uint8Array(enc.size * Math.min(window, count) + ACK_BYTES * window + 64);
  let length = 0;
  const flight = new InFlight(qos, (id) => {
    writeAck(out, length, PUBREL, id);
    length += ACK_BYTES;
  }, problem);
  const onPacket: PacketHandler = (type, flags, buf, body) =>
    flight.onPacket(type, flags, buf, body);
  let sent = 0;
  let windowFull = 0;
  let windowWasFull = false;
  let endedAt = wallMs();
  const start = wallMs();
  while (flight.completed < count && Atomics.load(stop, 0) === 0) {
    const t = wallMs();
    const due = Math.min(count, Math.floor((t - start) / interval) + 1);
    while (sent < due && sent - flight.completed < window) {
      const dueAt = start + sent * interval;
      lags[sent] = t - dueAt;
      const id = flight.send(sent);
      length = enc.write(out, length, id, sent, Math.round(dueAt * 1000));
      sent++;
    }
    const full = sent < due;
    if (full && !windowWasFull) windowFull++;
    windowWasFull = full;
    if (length > 0) {
      if (!s.send(out.subarray(0, length))) {
        problem(`write failed after ${sent} messages`);
        break;
      }
      length = 0;
    }
    // Until the next message falls due (or, with the window full, an acknowledgement).
    const next = sent < count && !full ? start + sent * interval - wallMs() : 50;
    if (next > 0 && !s.wait(Math.min(next, 50))) continue;
    const open = s.drain(onPacket);
    if (flight.completed === count) endedAt = wallMs();
    if (!open) {
      problem(`connection closed after ${flight.completed} acks`);
      break;
    }
  }
  if (length > 0) s.send(out.subarray(0, length));
  const { completed, downgraded } = flight;
  if (downgraded > 0) problem(`${downgraded} QoS 2 PUBLISHes answered by PUBACK`);
  return { type: "done", sent, completed, windowFull, downgraded, endedAt, lags, problems };
}
