/**
 * A line server over `Deno.listen` (or `Deno.listenTls`): accepts TCP or TLS
 * connections and hands each to the caller as a {@link LineConnection}. It knows
 * nothing of topics or protocols.
 *
 * @module
 */

import { LineConnection, type LineConnectionOptions } from "./line_connection.ts";
import { SocketServer, type SocketServerOptions } from "./socket_server.ts";

export { LineConnection } from "./line_connection.ts";
export type {
  LineConnectionOptions,
  LineEvent,
  LineRecognizer,
  LineWriter,
} from "./line_connection.ts";
export type { TlsPem } from "./tls.ts";

/** Options of {@link LineServer}. */
export interface LineServerOptions
  extends LineConnectionOptions, SocketServerOptions<LineConnection> {}

/**
 * Accepts TCP (or, with `tls`, TLS) connections and hands each to `onConnection` as
 * a {@link LineConnection}. Tracking live connections is the caller's job.
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
export class LineServer extends SocketServer<LineConnection> {
  readonly #options: LineServerOptions;

  /**
   * Builds a server; nothing listens until {@link start}.
   *
   * @param options see {@link LineServerOptions}
   */
  constructor(options: LineServerOptions) {
    super(options);
    this.#options = options;
  }

  protected override wrap(conn: Deno.TcpConn | Deno.TlsConn): LineConnection {
    return new LineConnection(conn, this.#options);
  }

  protected override get label(): string {
    return "line server";
  }
}
