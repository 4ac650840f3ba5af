/**
 * MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): one upgraded WebSocket seen as MQTT
 * packets in and out, with the same surface as the TCP {@link PacketConnection} so the
 * MQTT protocol adapter serves both, and the HTTP server that upgrades requests on one
 * path. Framing, keep-alive and bounds follow the TCP transport; what WebSocket changes
 * is said where it matters.
 *
 * @module
 */

import { clearImmediate, setImmediate } from "node:timers";
import { addressText, concat, errorText, withTimeout } from "./connection.ts";
import type { ConnectionLimits } from "./connection_limits.ts";
import {
  createPacketParser,
  encodePacket,
  type OutboundPacket,
  type PacketEvent,
  type PacketParser,
  type ProtocolVersion,
} from "./mqtt_codec.ts";
import type { PacketConnectionOptions } from "./packet_connection.ts";
import type { PacketConsumer, PacketLink } from "./packet_link.ts";

/** The WebSocket sub-protocol MQTT registers (v5 [MQTT-6.0.0-3], [MQTT-6.0.0-4]). */
export const MQTT_SUBPROTOCOL = "mqtt";

/** Limits of one WebSocket connection; {@link MqttWsServer} passes its options on. */
export interface WsPacketConnectionOptions extends Omit<PacketConnectionOptions, "onIdle"> {
  /**
   * Most input bytes received but not yet taken from {@link WsPacketConnection.packets}
   * before the connection is closed. A WebSocket cannot be paused (every frame fires a
   * message event), so unlike TCP a slow handler cannot slow the peer down: this bound is
   * what keeps a fast sender from growing our memory. Default: the larger of
   * `writeBufferBytes` and `maxPacketBytes`.
   */
  inputBufferBytes?: number;
  /**
   * Told when nothing was received for the idle limit, just before the connection
   * closes: the place to send a v5 DISCONNECT 0x8D (Keep Alive timeout). A function
   * taking a {@link PacketLink} serves both this and the TCP option.
   */
  onIdle?(conn: WsPacketConnection, limitMs: number): void;
}

// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL = 1000;
const CLOSE_UNSUPPORTED_DATA = 1003;
const CLOSE_POLICY_VIOLATION = 1008;
const CLOSE_INTERNAL_ERROR = 1011;

let nextWsConnectionId = 1;

/** One queued input item and the input bytes it releases once taken. */
interface QueuedInput {
  event: PacketEvent;
  bytes: number;
}

/**
 * One server-side WebSocket seen as MQTT packets in ({@link packets}) and out
 * ({@link send}). Created by {@link MqttWsServer} for each upgraded request; it may be
 * used at once: output waits for the socket to open.
 *
 * Binary frames are one byte stream to the packet parser: a packet may span frames and
 * a frame may hold several (v5 [MQTT-6.0.0-2]). Packets are parsed as frames arrive, so
 * keep-alive counts what the peer sent even while the handler is busy.
 *
 * @example
 * ```ts
 * for await (const item of conn.packets()) {
 *   if (item.kind !== "packet") break;
 *   if (item.packet.cmd === "pingreq") conn.send({ cmd: "pingresp" });
 * }
 * conn.close("input ended");
 * await conn.closed;
 * ```
 */
export class WsPacketConnection implements PacketLink {
  readonly id: number;
  readonly remote: string;
  readonly address: string;
  /** False: {@link MqttWsServer} serves plain `ws:` (put a TLS proxy in front for `wss:`). */
  readonly tls = false;
  readonly closed: Promise<void>;

  readonly #socket: WebSocket;
  readonly #parser: PacketParser;
  readonly #onIdle: WsPacketConnectionOptions["onIdle"];
  readonly #writeBufferBytes: number;
  readonly #inputBufferBytes: number;
  readonly #resolveClosed: () => void;

  #input: QueuedInput[] = [];
  #inputBytes = 0;
  #inputEnded = false;
  #wakeReader: (() => void) | undefined;
  #packetsCalled = false;

  #lastInput = performance.now();
  #idleTimeoutMs: number;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;

  #output: Uint8Array[] = [];
  #outputBytes = 0;
  #flushTimer: ReturnType<typeof setImmediate> | undefined;

  #closing = false;
  #closeReason: string | undefined;
  /** Close code to send once the socket opens, when closed while still connecting. */
  #closeOnOpen: number | undefined;

  /**
   * Wraps a socket from `Deno.upgradeWebSocket` and starts its idle timer;
   * {@link MqttWsServer} calls this.
   *
   * @param socket the upgraded socket, still connecting or open; this object now owns it
   * @param remoteAddr the peer's address, from the request's `ServeHandlerInfo`
   * @param options the connection's limits
   */
  constructor(socket: WebSocket, remoteAddr: Deno.NetAddr, options: WsPacketConnectionOptions) {
    this.id = nextWsConnectionId++;
    this.remote = addressText(remoteAddr);
    this.address = this.remote.slice(0, this.remote.lastIndexOf(":"));
    this.#socket = socket;
    // Level 4 until the CONNECT: the codec parses a CONNECT of any level and takes its level.
    this.#parser = createPacketParser(4, options.maxPacketBytes);
    this.#onIdle = options.onIdle;
    this.#writeBufferBytes = options.writeBufferBytes;
    this.#inputBufferBytes = options.inputBufferBytes ??
      Math.max(options.writeBufferBytes, options.maxPacketBytes);
    this.#idleTimeoutMs = options.idleTimeoutMs;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.closed = promise;
    this.#resolveClosed = resolve;

    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => this.#onOpen());
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("error", (event) => {
      const message = event instanceof ErrorEvent ? event.message : "unknown error";
      this.#shutdown(`socket error: ${message}`, { flush: false, code: CLOSE_INTERNAL_ERROR });
    });
    // Deno may fire "close" twice for a reset peer; the first one counts.
    socket.addEventListener("close", (event) => this.#onClose(event), { once: true });
    if (this.#idleTimeoutMs > 0) this.#armIdleTimer(this.#idleTimeoutMs);
  }

  get isClosed(): boolean {
    return this.#closing;
  }

  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  get protocolVersion(): ProtocolVersion {
    return this.#parser.protocolVersion;
  }

  /**
   * The input as {@link PacketEvent}s, in order. Ends when the peer closes, the
   * connection is closed or stops reading, or after a `malformed` or `too-large` item.
   *
   * @throws {Error} if called a second time: the input can be read once
   */
  packets(): AsyncIterableIterator<PacketEvent> {
    this.#takeInput();
    return this.#readPackets();
  }

  /** {@link PacketLink.consume}, over {@link batches} (a WebSocket is not the hot path). */
  consume(consumer: PacketConsumer): void {
    const batches = this.batches();
    (async () => {
      for await (const batch of batches) {
        const waiting = consumer.packetsArrived(batch);
        if (waiting) await waiting;
        if (!this.reading) break;
      }
    })().then(() => consumer.inputEnded(null), (err) => consumer.inputEnded(err));
  }

  /** The input in batches: every item that arrived since the last batch was taken. */
  batches(): AsyncIterableIterator<PacketEvent[]> {
    this.#takeInput();
    return this.#readBatches();
  }

  get reading(): boolean {
    return !this.#inputEnded && !this.#closing;
  }

  #takeInput(): void {
    if (this.#packetsCalled) {
      throw new Error(`the input of WebSocket connection ${this.id} was already taken`);
    }
    this.#packetsCalled = true;
  }

  async *#readPackets(): AsyncGenerator<PacketEvent> {
    for (;;) {
      const next = this.#input.shift();
      if (next) {
        this.#inputBytes -= next.bytes;
        yield next.event;
        continue;
      }
      if (this.#inputEnded) return;
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
  }

  async *#readBatches(): AsyncGenerator<PacketEvent[]> {
    for (;;) {
      if (this.#input.length > 0) {
        const taken = this.#input;
        this.#input = [];
        for (const t of taken) this.#inputBytes -= t.bytes;
        yield taken.map((t) => t.event);
        continue;
      }
      if (this.#inputEnded) return;
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
  }

  /**
   * Encodes `packet` at {@link protocolVersion} and queues it; everything sent in one
   * turn leaves in one binary frame. Ignored once closed. Closes the connection if the
   * output not yet sent passes `writeBufferBytes`.
   *
   * @throws {TypeError} if the packet cannot be encoded (a bug in the caller)
   */
  send(packet: OutboundPacket): void {
    if (this.#closing) return;
    this.sendBytes(encodePacket(packet, this.protocolVersion));
  }

  /** As {@link sendBytes}, on a copy with the identifier (and DUP) written in. */
  sendPatched(bytes: Uint8Array, idOffset: number, id: number, dup: boolean): void {
    if (this.#closing) return;
    this.sendBytes(concat([bytes], [0, idOffset, id, dup ? 1 : 0]));
  }

  /** As {@link sendBytes}, on a copy of head and payload with the identifier written in. */
  sendPublish(
    head: Uint8Array,
    idOffset: number,
    id: number | null,
    dup: boolean,
    payload: Uint8Array,
  ): void {
    if (this.#closing) return;
    this.sendBytes(concat([head, payload], id === null ? [] : [0, idOffset, id, dup ? 1 : 0]));
  }

  /** Output queued here or in the socket, in bytes. */
  get bufferedBytes(): number {
    return this.#outputBytes + this.#socket.bufferedAmount;
  }

  /**
   * Resolves once the output is written (or the connection closed). WebSocket has no
   * drain event, so this looks again every few milliseconds.
   */
  async whenDrained(): Promise<void> {
    while (!this.#closing && this.bufferedBytes > 0) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /**
   * Queues `bytes`; they must not change afterwards. Never throws; ignored once closed.
   * Closes the connection if our queue plus what the socket has not yet written
   * (`bufferedAmount`) passes `writeBufferBytes`, unless these bytes alone are all of it.
   */
  sendBytes(bytes: Uint8Array): void {
    if (this.#closing) return;
    this.#output.push(bytes);
    this.#outputBytes += bytes.length;
    const backlog = this.#outputBytes + this.#socket.bufferedAmount;
    if (backlog > this.#writeBufferBytes && backlog > bytes.length) {
      this.#shutdown(`peer too slow: over ${this.#writeBufferBytes} bytes of output queued`, {
        flush: false,
        code: CLOSE_POLICY_VIOLATION,
      });
      return;
    }
    // After this task rather than on a microtask: it also gathers replies to the other
    // packets of the frame being handled, which the reader yields over several
    // microtasks. Not `setTimeout(…, 0)`: Deno fires that one to two milliseconds late,
    // which every reply would wait.
    this.#flushTimer ??= setImmediate(() => {
      this.#flushTimer = undefined;
      this.#flush();
    });
  }

  /**
   * Closes the connection when nothing is received for `ms` (0 turns it off), counted
   * from the last packet. The adapter passes 1.5 × the client's Keep Alive
   * ([MQTT-3.1.2-24] in 3.1.1, [MQTT-3.1.2-22] in v5).
   */
  setKeepAlive(ms: number): void {
    this.#idleTimeoutMs = ms;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (ms > 0 && !this.#closing) {
      this.#armIdleTimer(Math.max(0, ms - (performance.now() - this.#lastInput)));
    }
  }

  /**
   * Ends the input after the item being handled while output still goes out: frames
   * that arrive later are dropped.
   */
  stopReading(): void {
    this.#endInput();
  }

  /**
   * Sends what is queued, then closes the WebSocket with code 1000. Idempotent; await
   * {@link closed} to know when the peer has answered the close (Deno offers no way to
   * drop a socket whose peer never does: it is then freed when the peer goes away or
   * the server closes).
   *
   * @param reason kept in {@link closeReason} for logs
   */
  close(reason = "closed"): void {
    this.#shutdown(reason, { flush: true, code: CLOSE_NORMAL });
  }

  #onOpen(): void {
    this.#flush(); // what was sent while connecting
    if (this.#closeOnOpen !== undefined) this.#closeSocket(this.#closeOnOpen);
  }

  #onMessage(event: MessageEvent): void {
    if (this.#inputEnded) return;
    if (!(event.data instanceof ArrayBuffer)) {
      // [MQTT-6.0.0-1]: control packets travel in binary frames; any other closes.
      this.#shutdown("text frame received: MQTT is carried in binary frames only", {
        flush: false,
        code: CLOSE_UNSUPPORTED_DATA,
      });
      return;
    }
    const chunk = new Uint8Array(event.data);
    const events = this.#parser.push(chunk);
    if (events.length === 0) return; // a packet continues in a later frame
    for (const item of events) {
      // Keep Alive counts whole Control Packets received (3.1.1 §3.1.2.10, v5 §3.1.2.10).
      if (item.kind === "packet") this.#lastInput = performance.now();
      this.#input.push({ event: item, bytes: 0 });
    }
    // The frame's bytes are released with its last packet: the parser copied each
    // packet, so this is about what the queued packets hold.
    this.#input[this.#input.length - 1]!.bytes = chunk.length;
    const before = this.#inputBytes;
    this.#inputBytes += chunk.length;
    if (this.#parser.failed) this.#inputEnded = true; // the failure item is the last one
    this.#wakeReader?.();
    this.#wakeReader = undefined;
    if (this.#inputBytes > this.#inputBufferBytes && before > 0) {
      this.#shutdown(
        `peer too fast: over ${this.#inputBufferBytes} bytes of input waiting to be handled`,
        { flush: false, code: CLOSE_POLICY_VIOLATION },
      );
    }
  }

  #onClose(event: CloseEvent): void {
    if (!this.#closing) {
      this.#closing = true;
      this.#closeReason = `peer closed the WebSocket (code ${event.code})`;
    }
    this.#clearTimers();
    this.#output = [];
    this.#outputBytes = 0;
    this.#endInput();
    this.#resolveClosed();
  }

  /** Sends everything queued as one binary frame; output waits while connecting. */
  #flush(): void {
    if (this.#output.length === 0 || this.#socket.readyState !== WebSocket.OPEN) return;
    const batch = concat(this.#output);
    this.#output = [];
    this.#outputBytes = 0;
    try {
      this.#socket.send(batch);
    } catch (err) {
      this.#shutdown(`send failed: ${errorText(err)}`, {
        flush: false,
        code: CLOSE_INTERNAL_ERROR,
      });
    }
  }

  #armIdleTimer(delayMs: number): void {
    this.#idleTimer = setTimeout(() => this.#onIdleTimer(), delayMs);
  }

  /** Re-armed only when it fires, so packets cost a timestamp rather than a timer each. */
  #onIdleTimer(): void {
    this.#idleTimer = undefined;
    if (this.#closing) return;
    const limit = this.#idleTimeoutMs;
    const idle = performance.now() - this.#lastInput;
    if (idle < limit) {
      this.#armIdleTimer(limit - idle);
      return;
    }
    try {
      this.#onIdle?.(this, limit);
    } finally {
      this.close(`keep-alive: nothing received for ${limit} ms`);
    }
  }

  #endInput(): void {
    this.#inputEnded = true;
    this.#input = [];
    this.#inputBytes = 0;
    this.#wakeReader?.();
    this.#wakeReader = undefined;
  }

  #clearTimers(): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (this.#flushTimer !== undefined) clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
  }

  #shutdown(reason: string, { flush, code }: { flush: boolean; code: number }): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#closeReason = reason;
    this.#clearTimers();
    this.#endInput();
    if (flush) this.#flush(); // sent before the close frame, or on open
    else {
      this.#output = [];
      this.#outputBytes = 0;
    }
    if (this.#socket.readyState === WebSocket.CONNECTING) {
      // Deno ignores close() before the socket opens (it opens anyway): wait for it.
      this.#closeOnOpen = code;
    } else this.#closeSocket(code);
  }

  #closeSocket(code: number): void {
    try {
      this.#socket.close(code);
    } catch {
      // Already closing or closed: its close event resolves `closed`.
    }
  }
}

/** Options of {@link MqttWsServer}. */
export interface MqttWsServerOptions extends WsPacketConnectionOptions {
  /** Address to listen on, e.g. "127.0.0.1" or "0.0.0.0". */
  hostname: string;
  /** Port to listen on; 0 picks any free port (read it from {@link MqttWsServer.port}). */
  port: number;
  /** The only path upgraded to MQTT; other paths answer 404. Default "/mqtt". */
  path?: string;
  /**
   * Counts each WebSocket connection from its upgrade until it is closed; share the
   * broker's instance so WebSocket and TCP clients count in the same limits. A refused
   * request answers 503 and is never upgraded. Leave it out when the caller admits
   * connections itself in `onConnection`.
   */
  limits?: ConnectionLimits;
  /**
   * Called once per upgraded request, before the socket has opened (output waits for
   * it). Throwing or rejecting reports the error to `onError` and closes that connection.
   */
  onConnection(conn: WsPacketConnection): Promise<void> | void;
  /** Told about a failed `onConnection`. Defaults to `console.error`. */
  onError?(err: unknown, conn: WsPacketConnection): void;
  /**
   * Told about a request refused because of `limits`, with the peer's "host:port".
   * Defaults to nothing: the HTTP answer says why.
   */
  onRefused?(remote: string, reason: string): void;
}

const DEFAULT_PATH = "/mqtt";
const DEFAULT_CLOSE_FLUSH_TIMEOUT_MS = 1000;

/**
 * Serves MQTT over WebSocket on one path with `Deno.serve`, handing each upgraded
 * request to `onConnection` as a {@link WsPacketConnection}. Only GET upgrade requests on
 * `path` are upgraded; a client that offers sub-protocols must offer `mqtt`, which is
 * then selected (v5 [MQTT-6.0.0-3], [MQTT-6.0.0-4]).
 *
 * @example
 * ```ts
 * const server = new MqttWsServer({
 *   hostname: "127.0.0.1", port: 0, maxPacketBytes: 65536,
 *   writeBufferBytes: 1 << 20, idleTimeoutMs: 10_000,
 *   async onConnection(conn) {
 *     for await (const item of conn.packets()) {
 *       if (item.kind === "packet" && item.packet.cmd === "pingreq") conn.send({ cmd: "pingresp" });
 *     }
 *     conn.close();
 *   },
 * });
 * server.start(); // ws://127.0.0.1:${server.port}/mqtt
 * await server.close();
 * ```
 */
export class MqttWsServer {
  readonly #options: MqttWsServerOptions;
  readonly #path: string;
  readonly #abort = new AbortController();
  readonly #connections = new Set<WsPacketConnection>();
  #server: Deno.HttpServer<Deno.NetAddr> | undefined;
  #closing: Promise<void> | undefined;

  /**
   * Builds a server; nothing listens until {@link start}.
   *
   * @param options see {@link MqttWsServerOptions}
   */
  constructor(options: MqttWsServerOptions) {
    this.#options = options;
    this.#path = options.path ?? DEFAULT_PATH;
  }

  /**
   * The bound port, useful after listening on port 0.
   *
   * @throws {Error} before {@link start}
   */
  get port(): number {
    if (this.#server === undefined) throw new Error("MqttWsServer.port is unknown before start()");
    return this.#server.addr.port;
  }

  /**
   * Listens and starts serving requests.
   *
   * @throws {Deno.errors.AddrInUse} and other listen errors
   * @throws {Error} if called twice or after {@link close}
   */
  start(): void {
    if (this.#server || this.#closing) throw new Error("MqttWsServer.start() was already called");
    const { hostname, port } = this.#options;
    this.#server = Deno.serve(
      { hostname, port, signal: this.#abort.signal, onListen: () => {} },
      (request, info) => this.#handle(request, info.remoteAddr),
    );
  }

  /**
   * Closes every WebSocket connection (queued output is sent first), waits up to
   * `closeFlushTimeoutMs` for their peers to answer, then stops listening, which also
   * drops the sockets of peers that did not. Resolves once all are closed.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    const all = [...this.#connections];
    for (const conn of all) conn.close("server closing");
    const closed = Promise.all(all.map((conn) => conn.closed)).then(() => {});
    await withTimeout(closed, this.#options.closeFlushTimeoutMs ?? DEFAULT_CLOSE_FLUSH_TIMEOUT_MS);
    // Stopping Deno.serve also ends its upgraded sockets: nothing of it outlives this.
    this.#abort.abort();
    await this.#server?.finished;
    await closed;
  }

  #handle(request: Request, remoteAddr: Deno.NetAddr): Response {
    const url = new URL(request.url);
    if (url.pathname !== this.#path) {
      return text(404, `not found: MQTT over WebSocket is served on ${this.#path}`);
    }
    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "this path serves MQTT over WebSocket only", { upgrade: "websocket" });
    }
    if (request.method !== "GET") {
      return text(405, `a WebSocket upgrade is a GET, not ${request.method}`, { allow: "GET" });
    }
    if (this.#closing) return text(503, "the server is closing");
    const offered = (request.headers.get("sec-websocket-protocol") ?? "")
      .split(",").map((name) => name.trim()).filter((name) => name !== "");
    if (offered.length > 0 && !offered.includes(MQTT_SUBPROTOCOL)) {
      // [MQTT-6.0.0-3] the client offers "mqtt"; we speak nothing else.
      return text(400, `sub-protocols offered (${offered.join(", ")}) do not include "mqtt"`);
    }
    const remote = addressText(remoteAddr);
    const address = remote.slice(0, remote.lastIndexOf(":"));
    const refused = this.#options.limits?.admit(address);
    if (refused) {
      this.#reportRefused(remote, refused);
      return text(503, refused);
    }
    let upgraded: { socket: WebSocket; response: Response };
    try {
      // [MQTT-6.0.0-4] the selected sub-protocol is "mqtt". A client that offered none
      // gets none back: naming one it did not offer would make it fail the handshake.
      upgraded = Deno.upgradeWebSocket(
        request,
        offered.length > 0 ? { protocol: MQTT_SUBPROTOCOL } : {},
      );
    } catch (err) {
      this.#options.limits?.release(address);
      return text(400, `bad WebSocket upgrade: ${errorText(err)}`);
    }
    const conn = new WsPacketConnection(upgraded.socket, remoteAddr, this.#options);
    this.#connections.add(conn);
    conn.closed.then(() => {
      this.#connections.delete(conn);
      this.#options.limits?.release(address);
    });
    const fail = (err: unknown) => {
      this.#report(err, conn);
      conn.close(`connection handler failed: ${errorText(err)}`);
    };
    try {
      Promise.resolve(this.#options.onConnection(conn)).catch(fail);
    } catch (err) {
      fail(err);
    }
    return upgraded.response;
  }

  #report(err: unknown, conn: WsPacketConnection): void {
    try {
      if (this.#options.onError) this.#options.onError(err, conn);
      else console.error(`MQTT WebSocket server: connection ${conn.id}:`, err);
    } catch {
      // A failing error reporter must not break the request handler.
    }
  }

  #reportRefused(remote: string, reason: string): void {
    try {
      this.#options.onRefused?.(remote, reason);
    } catch {
      // As above.
    }
  }
}

/** A short plain-text HTTP answer that says what was wrong. */
function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(`${body}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}
