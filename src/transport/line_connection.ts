/**
 * One TCP or TLS connection seen as decoded input lines and a bounded, coalescing queue
 * of output lines. It knows nothing of topics or protocols.
 *
 * @module
 */

import {
  addressText,
  type ConnectionOptions,
  errorText,
  withTimeout,
  writeStats,
} from "./connection.ts";
import { type LineBatch, LineBatchStream } from "./lines.ts";

/** One item of {@link LineConnection.lines}. */
export type LineEvent =
  /** A complete input line, decoded as UTF-8, without its `\n` or `\r\n`. */
  | { kind: "line"; text: string }
  /** A line the connection's recognizer ({@link LineConnection.recognize}) read as `value`. */
  | { kind: "recognized"; value: object }
  /** A line that is not valid UTF-8; the connection goes on with the next line. */
  | { kind: "invalid-utf8"; byteLength: number }
  /** A line passed `maxLineBytes`; always the last item, input is no longer read. */
  | { kind: "too-long"; limit: number };

/**
 * Reads the line `bytes[start..end)` (without its terminator) straight from the input's
 * bytes: what it stands for, or null to have it decoded as text. See
 * {@link LineConnection.recognize}.
 */
export type LineRecognizer = (bytes: Uint8Array, start: number, end: number) => object | null;

/**
 * Writes one output line's bytes (without its terminator) into `buf` from `at`, within
 * the length given with it; returns where the line ends. See
 * {@link LineConnection.sendWritten}.
 */
export interface LineWriter {
  writeLine(buf: Uint8Array, at: number): number;
}

/**
 * Limits of one connection; {@link LineServer} passes its options on. The idle timeout
 * counts from the last input line.
 */
export interface LineConnectionOptions extends ConnectionOptions {
  /** Longest input line in bytes; bounds what a peer can make us buffer. */
  maxLineBytes: number;
}

/**
 * Read buffer sizes. A pending read holds its buffer for as long as the peer is silent,
 * so an idle connection starts (and falls back) small; a connection whose reads fill the
 * buffer gets a bigger one, up to the largest.
 */
const MIN_READ_BUFFER_BYTES = 1024;
const MAX_READ_BUFFER_BYTES = 64 * 1024;
const DEFAULT_CLOSE_FLUSH_TIMEOUT_MS = 1000;

/**
 * Output buffers: a connection's first queued line takes one of at least this size (or
 * the line's), doubled as lines are added before the write; the buffer of a finished
 * write is reused by the next lines unless it grew past the largest kept.
 */
const MIN_OUTPUT_BUFFER_BYTES = 4096;
const MAX_SPARE_BYTES = 256 * 1024;

/**
 * Output buffers that connections let go when they had nothing left to write, taken by
 * the next connection that starts writing: a busy server reuses a few buffers instead of
 * allocating (and growing) one per burst, and an idle connection holds none. Only the
 * bytes a connection writes into one are ever sent.
 */
const freeOutputBuffers: Uint8Array[] = [];
const FREE_OUTPUT_BUFFERS = 16;
/** Lines up to this many characters are copied into the output character by character. */
const SHORT_LINE = 64;

let nextConnectionId = 1;

/**
 * One TCP or TLS connection seen as lines in ({@link lines}) and lines out
 * ({@link send}). Created by {@link LineServer} for each accepted socket (for TLS,
 * once its handshake has completed).
 *
 * Nothing closes a connection behind its owner's back except: a peer that
 * stops reading (queued output over `writeBufferBytes`), a failed write, and
 * the idle timeout. When {@link lines} ends (peer closed, read error, line too
 * long), the owner decides what to send and then calls {@link close}.
 *
 * @example
 * ```ts
 * for await (const item of conn.lines()) {
 *   if (item.kind === "line") conn.send(item.text.toUpperCase());
 *   else if (item.kind === "too-long") conn.send(`ERROR: line longer than ${item.limit} bytes`);
 * }
 * conn.close("peer closed");
 * await conn.closed;
 * ```
 */
export class LineConnection {
  /** Unique within this process; for logs and connection tables. */
  readonly id: number;
  /** The peer's address as "host:port" ("[::1]:port" for IPv6). */
  readonly remote: string;
  /** The peer's host alone ("127.0.0.1", "[::1]"): what per-address limits count. */
  readonly address: string;
  /** True for a TLS connection. */
  readonly tls: boolean;
  /** Resolves once the socket is closed and no read, write or timer of it is pending. */
  readonly closed: Promise<void>;

  readonly #conn: Deno.TcpConn | Deno.TlsConn;
  readonly #opts: Required<LineConnectionOptions>;
  readonly #encoder = new TextEncoder();
  readonly #resolveClosed: () => void;

  #linesCalled = false;
  #inputStopped = false;
  /**
   * The reader of the input's line batches while it is read: {@link stopReading} cancels
   * it, which ends a read in progress at once. (Not a race of each read against a stop
   * promise: every race leaves a reaction on the stop promise until it settles, one per
   * read for as long as the connection lives.)
   */
  #reader: ReadableStreamDefaultReader<LineBatch> | undefined;
  #recognizer: LineRecognizer | null = null;
  #read: Promise<number | null> | undefined;
  #lastInput = performance.now();
  #idleTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Lines queued and not yet handed to a write, as the bytes that will be written: each
   * line encoded once, as it is sent, followed by "\r\n". Null when nothing is queued.
   */
  #out: Uint8Array | null = null;
  #outLength = 0;
  /**
   * The buffer of the last finished write, taken by the next lines while the connection
   * is busy; handed to the shared free list once nothing is left to write, so that an
   * idle connection holds no output buffer.
   */
  #spare: Uint8Array | null = null;
  /** What a slow peer makes us hold: the queued bytes plus those of the write under way. */
  #unwrittenBytes = 0;
  #writing: Promise<void> | undefined;

  #closing = false;
  #closeReason: string | undefined;

  /**
   * Wraps an accepted socket and starts its idle timer; {@link LineServer} calls this.
   *
   * @param conn an accepted socket (a TLS one after its handshake); this object now owns it
   * @param options the connection's limits
   */
  constructor(conn: Deno.TcpConn | Deno.TlsConn, options: LineConnectionOptions) {
    this.id = nextConnectionId++;
    this.#conn = conn;
    this.tls = "handshake" in conn;
    this.#opts = {
      maxLineBytes: options.maxLineBytes,
      writeBufferBytes: options.writeBufferBytes,
      idleTimeoutMs: options.idleTimeoutMs,
      closeFlushTimeoutMs: options.closeFlushTimeoutMs ?? DEFAULT_CLOSE_FLUSH_TIMEOUT_MS,
    };
    this.remote = addressText(conn.remoteAddr);
    this.address = this.remote.slice(0, this.remote.lastIndexOf(":"));
    const { promise, resolve } = Promise.withResolvers<void>();
    this.closed = promise;
    this.#resolveClosed = resolve;
    if (this.#opts.idleTimeoutMs > 0) this.#armIdleTimer(this.#opts.idleTimeoutMs);
  }

  /** True once {@link close} has begun (or the connection failed); sends are then ignored. */
  get isClosed(): boolean {
    return this.#closing;
  }

  /** Why the connection was closed, once it is: the `close` reason or what failed. */
  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  /**
   * The input as {@link LineEvent}s, in order. Ends when the peer closes, a
   * read fails, the connection is closed, or after a `too-long` item. Empty
   * lines are yielded too. Input is read only as fast as the caller consumes
   * it, so a slow caller slows the peer down through TCP.
   *
   * @throws {Error} if called a second time, or after {@link batches}: the input can be
   *   read once
   */
  lines(): AsyncIterableIterator<LineEvent> {
    return this.#eachLine(this.batches());
  }

  /**
   * {@link lines} as one array per read from the socket: what a busy peer sent at once.
   * A caller that handles many lines per read pays the iteration once per read. After
   * {@link stopReading}, a caller should not handle the rest of the batch in hand
   * (see {@link reading}).
   *
   * @throws {Error} if called a second time, or after {@link lines}
   */
  batches(): AsyncIterableIterator<LineEvent[]> {
    if (this.#linesCalled) throw new Error(`lines() of connection ${this.id} was already called`);
    this.#linesCalled = true;
    return this.#readBatches();
  }

  /**
   * From the next read on, offers each line that lies wholly in one read to `recognizer`
   * before decoding it: a line it reads comes out as a `recognized` event, without being
   * decoded as text. For the bulk of a busy connection's lines, which a protocol can read
   * from their bytes for less than their decoding costs; null turns it off.
   */
  recognize(recognizer: LineRecognizer | null): void {
    this.#recognizer = recognizer;
  }

  /** False once {@link stopReading} was called: lines not yet handled are left. */
  get reading(): boolean {
    return !this.#inputStopped;
  }

  async *#eachLine(batches: AsyncIterableIterator<LineEvent[]>): AsyncGenerator<LineEvent> {
    for await (const batch of batches) {
      for (const ev of batch) {
        if (this.#inputStopped) return;
        yield ev;
      }
    }
  }

  async *#readBatches(): AsyncGenerator<LineEvent[]> {
    const reader = this.#source()
      .pipeThrough(new LineBatchStream({ maxLineBytes: this.#opts.maxLineBytes }))
      .getReader();
    this.#reader = reader;
    // fatal: a bad line must be reported, not silently turned into U+FFFD.
    const decoder = new TextDecoder("utf-8", { fatal: true });
    try {
      for (;;) {
        if (this.#inputStopped) return;
        let result: ReadableStreamReadResult<LineBatch>;
        try {
          result = await reader.read();
        } catch {
          return; // a read error (reset, closed by us) just ends the input
        }
        if (result.done) return;
        this.#lastInput = performance.now();
        const batch = result.value;
        const events = batchEvents(batch, decoder, this.#recognizer);
        const tooLong = batch.tooLong !== null;
        yield events;
        if (tooLong) return;
      }
    } finally {
      // Stops further reads but keeps the socket open, so replies can still go out.
      this.#reader = undefined;
      reader.cancel().catch(() => {});
    }
  }

  /**
   * Ends {@link lines} (after the line being handled) while keeping the socket open for
   * output: a graceful stop reads nothing new but still answers what it accepted.
   */
  stopReading(): void {
    this.#inputStopped = true;
    this.#reader?.cancel().catch(() => {});
  }

  /**
   * The socket's input as a stream. Not `conn.readable`: that closes the
   * whole socket on EOF or cancel (so no error reply could follow), and it
   * hides its pending read, which `closed` must wait for.
   */
  #source(): ReadableStream<Uint8Array> {
    let buffer = new Uint8Array(MIN_READ_BUFFER_BYTES);
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        let n: number | null;
        try {
          if (this.#closing) throw new Error("connection closed");
          this.#read = this.#conn.read(buffer);
          n = await this.#read;
        } catch (err) {
          controller.error(err);
          return;
        } finally {
          this.#read = undefined;
        }
        // Copy: the buffer is reused by the next read, the line splitter keeps views.
        if (n === null) {
          controller.close();
          return;
        }
        controller.enqueue(buffer.slice(0, n));
        if (n === buffer.length && n < MAX_READ_BUFFER_BYTES) {
          buffer = new Uint8Array(n * 2);
        } else if (n < buffer.length / 8 && buffer.length > MIN_READ_BUFFER_BYTES) {
          buffer = new Uint8Array(buffer.length / 2);
        }
      },
    }, { highWaterMark: 0 });
  }

  /**
   * Queues `line` followed by "\r\n". Never throws; ignored once the
   * connection is closed. Closes the connection if the output not yet
   * written passes `writeBufferBytes` (unless this line alone is all of it).
   */
  send(line: string): void {
    if (this.#closing) return;
    const n = line.length;
    let buf: Uint8Array;
    let at: number;
    if (n <= SHORT_LINE) {
      // Short lines (acknowledgements, OK) copied a character at a time while ASCII: cheaper
      // than an encoder call each.
      buf = this.#room(n * 3 + 2);
      at = this.#outLength;
      let i = 0;
      for (; i < n; i++) {
        const c = line.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at + i] = c;
      }
      at = i === n ? at + n : at + this.#encoder.encodeInto(line, buf.subarray(at)).written;
    } else {
      const bytes = this.#encoder.encode(line);
      buf = this.#room(bytes.length + 2);
      at = this.#outLength;
      buf.set(bytes, at);
      at += bytes.length;
    }
    this.#queued(buf, at);
  }

  /**
   * Queues the line `writer` writes straight into the output (then "\r\n"), at most
   * `maxBytes` long: for a protocol that builds its busiest lines from bytes it already
   * holds (a stored payload), so they are never text. Like {@link send} otherwise.
   *
   * @returns the line's length in bytes (0 once the connection is closed: not written)
   */
  sendWritten(writer: LineWriter, maxBytes: number): number {
    if (this.#closing) return 0;
    const buf = this.#room(maxBytes + 2);
    const start = this.#outLength;
    const end = writer.writeLine(buf, start);
    this.#queued(buf, end);
    return end - start;
  }

  /** The output buffer, with room for `n` more bytes after what is queued. */
  #room(n: number): Uint8Array {
    const out = this.#out;
    if (out === null) {
      let spare = this.#spare ?? freeOutputBuffers.pop() ?? null;
      this.#spare = null;
      if (spare !== null && spare.length < n) spare = null;
      const buf = spare ?? new Uint8Array(Math.max(MIN_OUTPUT_BUFFER_BYTES, n));
      this.#out = buf;
      this.#outLength = 0;
      return buf;
    }
    if (this.#outLength + n <= out.length) return out;
    const bigger = new Uint8Array(Math.max(out.length * 2, this.#outLength + n));
    bigger.set(out.subarray(0, this.#outLength));
    this.#out = bigger;
    return bigger;
  }

  /** A line was written into `buf` (the output buffer) up to `end`: ends it and queues it. */
  #queued(buf: Uint8Array, end: number): void {
    buf[end] = 0x0d;
    buf[end + 1] = 0x0a;
    const size = end + 2 - this.#outLength;
    this.#outLength = end + 2;
    this.#unwrittenBytes += size;
    // The bound is on backlog: one line bigger than the buffer may still go out when
    // nothing else is waiting (a message may be larger than the buffer setting).
    if (this.#unwrittenBytes > this.#opts.writeBufferBytes && this.#unwrittenBytes > size) {
      this.#shutdown(`peer too slow: over ${this.#opts.writeBufferBytes} bytes of output queued`, {
        flush: false,
      });
      return;
    }
    this.#writing ??= this.#writeLoop();
  }

  /**
   * Closes the connection: stops reading, writes what is queued (waiting at
   * most `closeFlushTimeoutMs`), then closes the socket. Idempotent; await
   * {@link closed} to know when it is done.
   *
   * @param reason kept in {@link closeReason} for logs
   */
  close(reason = "closed"): void {
    this.#shutdown(reason, { flush: true });
  }

  /** One write at a time, each taking everything queued since the last one. */
  async #writeLoop(): Promise<void> {
    try {
      // Let the rest of this turn queue its lines too, so they leave in one write.
      await Promise.resolve();
      while (this.#outLength > 0) {
        const batch = this.#out as Uint8Array;
        const length = this.#outLength;
        this.#out = null;
        this.#outLength = 0;
        let written = 0;
        while (written < length) {
          writeStats.writes++;
          written += await this.#conn.write(batch.subarray(written, length));
        }
        writeStats.bytes += length;
        this.#unwrittenBytes -= length;
        if (batch.length <= MAX_SPARE_BYTES) this.#spare = batch;
      }
    } catch (err) {
      if (!this.#closing) this.#shutdown(`write failed: ${errorText(err)}`, { flush: false });
    } finally {
      this.#writing = undefined;
      const spare = this.#spare;
      this.#spare = null;
      if (spare !== null && freeOutputBuffers.length < FREE_OUTPUT_BUFFERS) {
        freeOutputBuffers.push(spare);
      }
    }
  }

  #armIdleTimer(delayMs: number): void {
    this.#idleTimer = setTimeout(() => this.#onIdleTimer(), delayMs);
  }

  /**
   * Re-armed only when it fires, for the time left since the last input,
   * so input lines cost a timestamp rather than a timer each.
   */
  #onIdleTimer(): void {
    this.#idleTimer = undefined;
    if (this.#closing) return;
    const limit = this.#opts.idleTimeoutMs;
    const idle = performance.now() - this.#lastInput;
    if (idle < limit) {
      this.#armIdleTimer(limit - idle);
      return;
    }
    this.send(`ERROR: idle for more than ${limit} ms, closing`);
    this.close(`idle for more than ${limit} ms`);
  }

  #shutdown(reason: string, { flush }: { flush: boolean }): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#closeReason = reason;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (!flush) this.#dropOutput();
    void this.#finish(flush);
  }

  /** Forgets the lines not yet handed to a write. */
  #dropOutput(): void {
    this.#out = null;
    this.#outLength = 0;
  }

  /** Half-closes (FIN) and reads input until the peer closes too. */
  async #linger(): Promise<void> {
    try {
      // On TLS this sends close_notify before the FIN, so the peer sees a clean end.
      await this.#conn.closeWrite();
      await this.#read;
      const scratch = new Uint8Array(16 * 1024);
      for (;;) {
        this.#read = this.#conn.read(scratch);
        const n = await this.#read;
        this.#read = undefined;
        if (n === null) return;
      }
    } catch {
      // The peer reset or the socket is gone: nothing left to drain.
    }
  }

  async #finish(flush: boolean): Promise<void> {
    if (flush && this.#writing) await withTimeout(this.#writing, this.#opts.closeFlushTimeoutMs);
    this.#dropOutput();
    if (flush && !this.#writing) await withTimeout(this.#linger(), LINGER_MS);
    try {
      this.#conn.close();
    } catch {
      // Already closed: nothing left to release.
    }
    // Closing cancels a pending read and write; wait for them to settle so
    // nothing of this connection outlives `closed`.
    await this.#writing;
    await this.#read?.catch(() => {});
    this.#resolveClosed();
  }
}

/**
 * How long a closing connection keeps reading (and discarding) input after sending its
 * FIN. Closing a socket with unread input makes the kernel answer with a reset, which
 * can destroy replies the peer has not read yet; draining first lets them arrive.
 */
const LINGER_MS = 500;

/**
 * The events of one batch, in order. The lines `recognizer` does not read are decoded
 * with one call when they are plain ASCII (a busy connection's usual case); otherwise
 * each alone, so that a line that is not valid UTF-8 is told apart from the others.
 */
function batchEvents(
  batch: LineBatch,
  decoder: TextDecoder,
  recognizer: LineRecognizer | null,
): LineEvent[] {
  const events: LineEvent[] = [];
  if (batch.head !== null) events.push(decodeLine(decoder, batch.head));
  const { chunk, spans } = batch;
  if (spans.length > 0) {
    // Events of the lines left to decode are filled in below; their spans' indexes here.
    let left: number[] | null = null;
    for (let i = 0; i < spans.length; i += 2) {
      const value = recognizer === null
        ? null
        : recognizer(chunk, spans[i] as number, spans[i + 1] as number);
      if (value !== null) {
        events.push({ kind: "recognized", value });
      } else {
        (left ??= []).push(i, events.length);
        events.push(NOT_YET);
      }
    }
    if (left !== null) decodeSpans(chunk, spans, left, decoder, events);
  }
  if (batch.tooLong !== null) events.push({ kind: "too-long", limit: batch.tooLong.limit });
  return events;
}

/** The place of an event not decoded yet. */
const NOT_YET: LineEvent = { kind: "line", text: "" };

/**
 * Decodes the lines of `chunk` that `left` names (pairs of a span's index in `spans` and
 * its event's index in `events`) into their events.
 */
function decodeSpans(
  chunk: Uint8Array,
  spans: number[],
  left: number[],
  decoder: TextDecoder,
  events: LineEvent[],
): void {
  const from = spans[left[0] as number] as number;
  const to = spans[(left[left.length - 2] as number) + 1] as number;
  let text: string | null = null;
  if (left.length > 2) {
    try {
      text = decoder.decode(chunk.subarray(from, to));
    } catch {
      text = null; // some line is not UTF-8: each alone says which
    }
    // As many characters as bytes only when every byte is ASCII: offsets then carry over.
    if (text !== null && text.length !== to - from) text = null;
  }
  for (let k = 0; k < left.length; k += 2) {
    const i = left[k] as number;
    const start = spans[i] as number;
    const end = spans[i + 1] as number;
    events[left[k + 1] as number] = text !== null
      ? { kind: "line", text: text.slice(start - from, end - from) }
      : decodeLine(decoder, chunk.subarray(start, end));
  }
}

function decodeLine(decoder: TextDecoder, line: Uint8Array): LineEvent {
  try {
    return { kind: "line", text: decoder.decode(line) };
  } catch {
    return { kind: "invalid-utf8", byteLength: line.length };
  }
}
