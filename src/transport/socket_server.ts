/**
 * The accept loop shared by {@link LineServer} and {@link PacketServer}: `Deno.listen`
 * (or `Deno.listenTls`), bounded TLS handshakes, and one connection object per accepted
 * socket handed to the caller. It knows nothing of lines, packets or topics.
 *
 * @module
 */

import { addressText, errorText } from "./connection.ts";
import { closeQuietly, completeHandshake, type TlsPem } from "./tls.ts";

/** What a {@link SocketServer} needs of the connection objects it hands out. */
export interface AcceptedConnection {
  /** Identifies the connection in error reports. */
  readonly id: number;
  /** Closes the connection, saying why. */
  close(reason?: string): void;
}

/** Options of a {@link SocketServer}, whose connections are of type `C`. */
export interface SocketServerOptions<C extends AcceptedConnection> {
  /** Address to listen on, e.g. "127.0.0.1" or "0.0.0.0". */
  hostname: string;
  /** Port to listen on; 0 picks any free port (read it from {@link SocketServer.port}). */
  port: number;
  /**
   * Called once per accepted socket. Throwing or rejecting reports the error
   * to `onError` and closes that connection only.
   */
  onConnection(conn: C): Promise<void> | void;
  /**
   * Told about a failed `onConnection` (with its connection) or a failed
   * accept (without one). Defaults to `console.error`; the broker passes its logger.
   */
  onError?(err: unknown, conn?: C): void;
  /**
   * Serve TLS with this certificate and key instead of plain TCP. A connection is
   * handed to `onConnection` only once its handshake has completed. TLS sockets get
   * no TCP keepalive (Deno does not expose it on them): the idle timeout and failed
   * writes are what find their vanished peers.
   */
  tls?: TlsPem;
  /**
   * TLS only: handshakes in progress at once. At the limit the server stops accepting
   * (new peers wait in the kernel's backlog) until one completes or fails. Deno cannot
   * free a socket closed in mid-handshake (see `completeHandshake`), so refusing or
   * timing out a silent peer would leak its descriptor: pausing is what bounds them.
   * Default 1024.
   */
  maxPendingHandshakes?: number;
  /**
   * TLS only: a handshake not completed after this long is reported once to
   * `onHandshakeError` (a plain-text client waiting for a greeting looks like this).
   * It keeps its slot until the peer sends something or disconnects. Default 10000.
   */
  slowHandshakeMs?: number;
  /**
   * TLS only: told about a handshake that failed (its socket was closed, nothing
   * else), one that is slow, or the handshake limit being reached (then without
   * `remote`). `remote` is the peer's "host:port". Defaults to `console.warn`.
   */
  onHandshakeError?(err: unknown, remote?: string): void;
}

/** Pause after a failed accept (e.g. EMFILE) so the loop does not spin. */
const ACCEPT_RETRY_MS = 100;
const DEFAULT_SLOW_HANDSHAKE_MS = 10_000;
const DEFAULT_MAX_PENDING_HANDSHAKES = 1024;
const LIMIT_REPORT_INTERVAL_MS = 60_000;

type Conn = Deno.TcpConn | Deno.TlsConn;

/**
 * Accepts TCP (or, with `tls`, TLS) connections and hands each to `onConnection` as
 * the connection object that {@link wrap} makes of it. Tracking live connections is
 * the caller's job. Subclasses say what a connection is.
 */
export abstract class SocketServer<C extends AcceptedConnection> {
  readonly #opts: SocketServerOptions<C>;
  #listener: Deno.Listener<Conn, Deno.NetAddr> | undefined;
  #port: number | undefined;
  #acceptLoop: Promise<void> | undefined;
  #closing = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #wakeRetry: (() => void) | undefined;
  /** TLS sockets whose handshake is in progress, and the task of each. */
  readonly #handshaking = new Map<Deno.TlsConn, Promise<void>>();
  /** Wakes an accept loop paused at `maxPendingHandshakes`. */
  #wakeAccept: (() => void) | undefined;
  #limitReportedAt = -Infinity;

  /**
   * Builds a server; nothing listens until {@link start}.
   *
   * @param options see {@link SocketServerOptions}
   */
  constructor(options: SocketServerOptions<C>) {
    this.#opts = options;
  }

  /** Makes the connection object of an accepted socket (after its TLS handshake). */
  protected abstract wrap(conn: Deno.TcpConn | Deno.TlsConn): C;

  /** The server's kind in messages: "line server", "packet server". */
  protected abstract get label(): string;

  /**
   * The bound port, useful after listening on port 0.
   *
   * @throws {Error} before {@link start}
   */
  get port(): number {
    if (this.#port === undefined) {
      throw new Error(`${this.constructor.name}.port is unknown before start()`);
    }
    return this.#port;
  }

  /**
   * Listens and starts accepting connections.
   *
   * @throws {Deno.errors.AddrInUse} and other `Deno.listen` errors
   * @throws {Error} if called twice, or if `tls` holds an unusable certificate or key
   */
  start(): void {
    if (this.#listener || this.#closing) {
      throw new Error(`${this.constructor.name}.start() was already called`);
    }
    const { hostname, port, tls } = this.#opts;
    const listener = tls
      ? listenTls(hostname, port, tls)
      : Deno.listen({ hostname, port, transport: "tcp" });
    this.#listener = listener;
    this.#port = listener.addr.port;
    this.#acceptLoop = this.#accept(listener);
  }

  /**
   * Stops accepting and closes the listener and the TLS sockets still in their
   * handshake (Deno keeps their OS sockets until the peer acts or the process ends);
   * live connections stay open.
   */
  async close(): Promise<void> {
    if (this.#closing) return await this.#closed();
    this.#closing = true;
    try {
      this.#listener?.close();
    } catch {
      // Already closed.
    }
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#wakeRetry?.();
    this.#wakeAccept?.();
    for (const conn of this.#handshaking.keys()) closeQuietly(conn);
    await this.#closed();
  }

  async #closed(): Promise<void> {
    await this.#acceptLoop;
    await Promise.all(this.#handshaking.values());
  }

  async #accept(listener: Deno.Listener<Conn, Deno.NetAddr>): Promise<void> {
    const maxHandshakes = this.#opts.maxPendingHandshakes ?? DEFAULT_MAX_PENDING_HANDSHAKES;
    while (!this.#closing) {
      if (this.#handshaking.size >= maxHandshakes) {
        // Once a minute at most: under a flood the loop pauses after every freed slot.
        if (performance.now() - this.#limitReportedAt > LIMIT_REPORT_INTERVAL_MS) {
          this.#limitReportedAt = performance.now();
          this.#reportHandshake(
            new Error(
              `${maxHandshakes} TLS handshakes in progress (the limit): not accepting until one ends`,
            ),
          );
        }
        await new Promise<void>((resolve) => this.#wakeAccept = resolve);
        this.#wakeAccept = undefined;
        continue;
      }
      let conn: Conn;
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
      if ("handshake" in conn) this.#startHandshake(conn);
      else this.#serve(conn);
    }
  }

  /** Handshakes in the background, so one slow peer never holds up the accept loop. */
  #startHandshake(conn: Deno.TlsConn): void {
    const slowMs = this.#opts.slowHandshakeMs ?? DEFAULT_SLOW_HANDSHAKE_MS;
    const onSlow = () =>
      this.#reportHandshake(
        new Error(`TLS handshake not completed after ${slowMs} ms; waiting for the peer`),
        conn,
      );
    const task = completeHandshake(conn, slowMs, onSlow).then(
      () => {
        if (this.#closing) closeQuietly(conn);
        else this.#serve(conn);
      },
      (err) => {
        // A stop closes pending handshakes on purpose: nothing to report then.
        if (!this.#closing) this.#reportHandshake(err, conn);
      },
    ).finally(() => {
      this.#handshaking.delete(conn);
      this.#wakeAccept?.();
    });
    this.#handshaking.set(conn, task);
  }

  #serve(conn: Conn): void {
    if ("setNoDelay" in conn) {
      try {
        conn.setNoDelay(true); // replies are small; do not wait to coalesce them
        conn.setKeepAlive(true); // lets the OS find peers that vanished without a FIN
      } catch {
        // The socket may already be reset; the connection will notice on its own.
      }
    }
    let wrapped: C;
    try {
      wrapped = this.wrap(conn);
    } catch (err) {
      // remoteAddr of a socket reset before we got to it can throw.
      this.#report(err);
      conn.close();
      return;
    }
    const fail = (err: unknown) => {
      this.#report(err, wrapped);
      wrapped.close(`connection handler failed: ${errorText(err)}`);
    };
    try {
      Promise.resolve(this.#opts.onConnection(wrapped)).catch(fail);
    } catch (err) {
      fail(err);
    }
  }

  #reportHandshake(err: unknown, conn?: Deno.TlsConn): void {
    try {
      let remote: string | undefined;
      try {
        if (conn) remote = addressText(conn.remoteAddr);
      } catch {
        remote = "(unknown peer)"; // a socket reset early may not know its peer any more
      }
      if (this.#opts.onHandshakeError) this.#opts.onHandshakeError(err, remote);
      else {console.warn(
          `${this.label}: TLS handshake with ${remote ?? "(all)"}: ${errorText(err)}`,
        );}
    } catch {
      // A failing error reporter must not stop the accept loop.
    }
  }

  #report(err: unknown, conn?: C): void {
    try {
      if (this.#opts.onError) this.#opts.onError(err, conn);
      else console.error(`${this.label}: connection ${conn?.id ?? "(accept)"}:`, err);
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

/**
 * `Deno.listenTls`, with the certificate or key errors it raises (rustls: "No
 * certificates found", "KeyMismatch", ...) said in the broker's terms.
 */
function listenTls(hostname: string, port: number, tls: TlsPem): Deno.TlsListener {
  try {
    return Deno.listenTls({ hostname, port, transport: "tcp", cert: tls.cert, key: tls.key });
  } catch (err) {
    // rustls's complaints arrive as InvalidData, a key mismatch as a plain Error.
    if (
      err instanceof Deno.errors.InvalidData || (err instanceof Error && err.constructor === Error)
    ) {
      throw new Error(`the TLS certificate and key cannot be used: ${errorText(err)}`, {
        cause: err,
      });
    }
    throw err;
  }
}
