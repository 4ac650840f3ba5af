/**
 * A line server over `Deno.listen`: accepts TCP connections and hands each to the
 * caller as a {@link LineConnection}. It knows nothing of topics or protocols.
 *
 * @module
 */

import { errorText, LineConnection, type LineConnectionOptions } from "./line_connection.ts";

export { LineConnection } from "./line_connection.ts";
export type { LineConnectionOptions, LineEvent } from "./line_connection.ts";

/** Options of {@link LineServer}. */
export interface LineServerOptions extends LineConnectionOptions {
  /** Address to listen on, e.g. "127.0.0.1" or "0.0.0.0". */
  hostname: string;
  /** Port to listen on; 0 picks any free port (read it from {@link LineServer.port}). */
  port: number;
  /**
   * Called once per accepted socket. Throwing or rejecting reports the error
   * to `onError` and closes that connection only.
   */
  onConnection(conn: LineConnection): Promise<void> | void;
  /**
   * Told about a failed `onConnection` (with its connection) or a failed
   * accept (without one). Defaults to `console.error`; the broker passes its logger.
   */
  onError?(err: unknown, conn?: LineConnection): void;
}

/** Pause after a failed accept (e.g. EMFILE) so the loop does not spin. */
const ACCEPT_RETRY_MS = 100;

/**
 * Accepts TCP connections and hands each to `onConnection` as a
 * {@link LineConnection}. Tracking live connections is the caller's job.
 *
 * @example
 * ```ts
 * const server = new LineServer({
 *   hostname: "127.0.0.1", port: 0, maxLineBytes: 65536,
 *   writeBufferBytes: 1 << 20, idleTimeoutMs: 0,
 *   async onConnection(conn) {
 *     for await (const item of conn.lines()) {
 *       if (item.kind === "line") conn.send(item.text);
 *     }
 *     conn.close();
 *   },
 * });
 * server.start();
 * console.log(server.port);
 * await server.close();
 * ```
 */
export class LineServer {
  readonly #opts: LineServerOptions;
  #listener: Deno.TcpListener | undefined;
  #port: number | undefined;
  #acceptLoop: Promise<void> | undefined;
  #closing = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #wakeRetry: (() => void) | undefined;

  /**
   * Builds a server; nothing listens until {@link start}.
   *
   * @param options see {@link LineServerOptions}
   */
  constructor(options: LineServerOptions) {
    this.#opts = options;
  }

  /**
   * The bound port, useful after listening on port 0.
   *
   * @throws {Error} before {@link start}
   */
  get port(): number {
    if (this.#port === undefined) throw new Error("LineServer.port is unknown before start()");
    return this.#port;
  }

  /**
   * Listens and starts accepting connections.
   *
   * @throws {Deno.errors.AddrInUse} and other `Deno.listen` errors
   * @throws {Error} if called twice
   */
  start(): void {
    if (this.#listener || this.#closing) throw new Error("LineServer.start() was already called");
    const listener = Deno.listen({
      hostname: this.#opts.hostname,
      port: this.#opts.port,
      transport: "tcp",
    });
    this.#listener = listener;
    this.#port = listener.addr.port;
    this.#acceptLoop = this.#accept(listener);
  }

  /** Stops accepting and closes the listener; live connections stay open. */
  async close(): Promise<void> {
    if (this.#closing) return await this.#acceptLoop;
    this.#closing = true;
    try {
      this.#listener?.close();
    } catch {
      // Already closed.
    }
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#wakeRetry?.();
    await this.#acceptLoop;
  }

  async #accept(listener: Deno.TcpListener): Promise<void> {
    while (!this.#closing) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (this.#closing) return;
        this.#report(err);
        await this.#pause(ACCEPT_RETRY_MS);
        continue;
      }
      if (this.#closing) {
        conn.close();
        return;
      }
      this.#serve(conn);
    }
  }

  #serve(conn: Deno.TcpConn): void {
    try {
      conn.setNoDelay(true); // replies are small lines; do not wait to coalesce them
      conn.setKeepAlive(true); // lets the OS find peers that vanished without a FIN
    } catch {
      // The socket may already be reset; the connection will notice on its own.
    }
    let lineConn: LineConnection;
    try {
      lineConn = new LineConnection(conn, this.#opts);
    } catch (err) {
      // remoteAddr of a socket reset before we got to it can throw.
      this.#report(err);
      conn.close();
      return;
    }
    const fail = (err: unknown) => {
      this.#report(err, lineConn);
      lineConn.close(`connection handler failed: ${errorText(err)}`);
    };
    try {
      Promise.resolve(this.#opts.onConnection(lineConn)).catch(fail);
    } catch (err) {
      fail(err);
    }
  }

  #report(err: unknown, conn?: LineConnection): void {
    try {
      if (this.#opts.onError) this.#opts.onError(err, conn);
      else console.error(`line server: connection ${conn?.id ?? "(accept)"}:`, err);
    } catch {
      // A failing error reporter must not stop the accept loop.
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#wakeRetry = resolve;
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        resolve();
      }, ms);
    });
  }
}
