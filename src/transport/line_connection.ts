/**
 * One TCP or TLS connection seen as decoded input lines and a bounded, coalescing queue
 * of output lines. It knows nothing of topics or protocols.
 *
 * @module
 */

import { type ConnectionOptions, SocketConnection } from "./connection.ts";
import { LineSplitStream, LineTooLongError } from "./lines.ts";

export { addressText, errorText } from "./connection.ts";

/** One item of {@link LineConnection.lines}. */
export type LineEvent =
  /** A complete input line, decoded as UTF-8, without its `\n` or `\r\n`. */
  | { kind: "line"; text: string }
  /** A line that is not valid UTF-8; the connection goes on with the next line. */
  | { kind: "invalid-utf8"; byteLength: number }
  /** A line passed `maxLineBytes`; always the last item, input is no longer read. */
  | { kind: "too-long"; limit: number };

/** Limits of one connection; {@link LineServer} passes its options on. */
export interface LineConnectionOptions extends ConnectionOptions {
  /** Longest input line in bytes; bounds what a peer can make us buffer. */
  maxLineBytes: number;
}

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
export class LineConnection extends SocketConnection {
  readonly #maxLineBytes: number;
  readonly #encoder = new TextEncoder();
  #linesCalled = false;

  /**
   * Wraps an accepted socket and starts its idle timer; {@link LineServer} calls this.
   *
   * @param conn an accepted socket (a TLS one after its handshake); this object now owns it
   * @param options the connection's limits
   */
  constructor(conn: Deno.TcpConn | Deno.TlsConn, options: LineConnectionOptions) {
    super(conn, options);
    this.#maxLineBytes = options.maxLineBytes;
  }

  /**
   * The input as {@link LineEvent}s, in order. Ends when the peer closes, a
   * read fails, the connection is closed, or after a `too-long` item. Empty
   * lines are yielded too. Input is read only as fast as the caller consumes
   * it, so a slow caller slows the peer down through TCP.
   *
   * @throws {Error} if called a second time: the input can be read once
   */
  lines(): AsyncIterableIterator<LineEvent> {
    if (this.#linesCalled) throw new Error(`lines() of connection ${this.id} was already called`);
    this.#linesCalled = true;
    return this.#readLines();
  }

  async *#readLines(): AsyncGenerator<LineEvent> {
    const reader = this.#source()
      .pipeThrough(new LineSplitStream({ maxLineBytes: this.#maxLineBytes }))
      .getReader();
    // fatal: a bad line must be reported, not silently turned into U+FFFD.
    const decoder = new TextDecoder("utf-8", { fatal: true });
    try {
      for (;;) {
        if (this.inputStopped) return;
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (err) {
          if (err instanceof LineTooLongError) yield { kind: "too-long", limit: err.limit };
          return; // a read error (reset, closed by us) just ends the input
        }
        if (result.done || this.inputStopped) return;
        this.noteInput();
        let text: string;
        try {
          text = decoder.decode(result.value);
        } catch {
          yield { kind: "invalid-utf8", byteLength: result.value.length };
          continue;
        }
        yield { kind: "line", text };
      }
    } finally {
      // Stops further reads but keeps the socket open, so replies can still go out.
      reader.cancel().catch(() => {});
    }
  }

  /** The socket's input as a stream; the line splitter keeps views of its chunks. */
  #source(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        let chunk: Uint8Array | null;
        try {
          chunk = await this.readChunk();
        } catch (err) {
          controller.error(err);
          return;
        }
        if (chunk === null) controller.close();
        else controller.enqueue(chunk);
      },
    }, { highWaterMark: 0 });
  }

  /**
   * Queues `line` followed by "\r\n". Never throws; ignored once the
   * connection is closed. Closes the connection if the output not yet
   * written passes `writeBufferBytes` (unless this line alone is all of it).
   */
  send(line: string): void {
    if (this.isClosed) return;
    this.sendBytes(this.#encoder.encode(`${line}\r\n`));
  }

  /** Tells the peer why, then closes. */
  protected override onIdle(limitMs: number): void {
    this.send(`ERROR: idle for more than ${limitMs} ms, closing`);
    this.close(`idle for more than ${limitMs} ms`);
  }
}
