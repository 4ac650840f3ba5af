/**
 * TLS for the line servers: the certificate and key as PEM text, read once at start-up,
 * and the server handshake of an accepted socket. Deno's TLS (rustls) does the
 * cryptography; this file only decides what a failure closes and what is reported.
 *
 * @module
 */

import { errorText } from "./connection.ts";

/** A certificate chain and its private key as PEM text, for {@link LineServer}'s `tls`. */
export interface TlsPem {
  /** The server's certificate, then any intermediates, PEM-encoded. */
  cert: string;
  /** The certificate's private key, PEM-encoded (PKCS#8, PKCS#1 or SEC1). */
  key: string;
}

/**
 * Reads a PEM certificate file and its key file. Each failure names the file, so an
 * operator sees at once which setting to fix; whether the key matches the certificate
 * is only known when a server listens with them (`LineServer.start`).
 *
 * @example
 * ```ts
 * const tls = await readTlsFiles("/etc/broker/cert.pem", "/etc/broker/key.pem");
 * ```
 * @throws {Error} if a file cannot be read or holds no PEM block of the expected kind
 */
export async function readTlsFiles(certFile: string, keyFile: string): Promise<TlsPem> {
  const cert = await readPem(certFile, "certificate", /-----BEGIN CERTIFICATE-----/);
  const key = await readPem(keyFile, "private key", /-----BEGIN [A-Z ]*PRIVATE KEY-----/);
  return { cert, key };
}

async function readPem(path: string, what: string, marker: RegExp): Promise<string> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new Error(`cannot read the TLS ${what} file "${path}": ${errorText(err)}`, {
      cause: err,
    });
  }
  if (!marker.test(text)) {
    throw new Error(`the TLS ${what} file "${path}" holds no PEM ${what}`);
  }
  return text;
}

/** A TLS handshake that failed; its socket is closed. */
export class TlsHandshakeError extends Error {
  /** Builds the error; `cause` is what the TLS layer reported, if anything. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TlsHandshakeError";
  }
}

/**
 * Runs the server side of the TLS handshake of an accepted socket. On failure (a peer
 * speaking plain text, a rejected certificate, a reset) it closes the socket and
 * rejects with a {@link TlsHandshakeError}. A handshake still not done after
 * `slowAfterMs` is reported once through `onSlow`, and waited for further.
 *
 * Why not close it then: Deno 2.9 cannot free the socket of a TLS connection closed in
 * mid-handshake. `close()` drops the JavaScript resource, but the runtime keeps the OS
 * socket open until the peer sends something or disconnects (rustls-tokio-stream
 * completes the handshake before it shuts down; measured: the peer sees no end, the
 * descriptor stays). Closing would hide a descriptor from every count; waiting keeps
 * it counted by the caller (see `LineServerOptions.maxPendingHandshakes`).
 *
 * @example
 * ```ts
 * const conn = await listener.accept();
 * try {
 *   await completeHandshake(conn, 10_000, () => console.warn("slow TLS handshake"));
 * } catch (err) {
 *   console.warn(err); // conn is already closed
 * }
 * ```
 */
export async function completeHandshake(
  conn: Deno.TlsConn,
  slowAfterMs: number,
  onSlow: () => void,
): Promise<void> {
  const timer = setTimeout(onSlow, slowAfterMs);
  try {
    await conn.handshake();
  } catch (err) {
    closeQuietly(conn);
    throw new TlsHandshakeError(`TLS handshake failed: ${errorText(err)}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}

/** Closes `conn`, ignoring a socket that is already closed. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed: nothing left to release.
  }
}
