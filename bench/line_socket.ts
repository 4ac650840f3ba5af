/**
 * The load generator's JSON-line client: a raw TCP socket, reads split into lines by
 * hand, writes serialised so that two tasks (a paced sender and a reply reader) never
 * interleave partial writes. No client library, so its cost per message stays small
 * and is measured (the generator's own CPU time) rather than assumed.
 *
 * @module
 */
const encoder = new TextEncoder();

/** A line-oriented raw socket. */
export class LineSocket {
  #conn: Deno.TcpConn;
  #decoder = new TextDecoder();
  #buf = new Uint8Array(256 * 1024);
  #rest = "";
  #writing: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  /** Connects to 127.0.0.1:`port` with Nagle off (the broker answers line by line). */
  static async connect(port: number): Promise<LineSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new LineSocket(conn);
  }

  /** Queues `text` (whole lines, each ending in "\n") behind earlier writes. */
  send(text: string): Promise<void> {
    const bytes = encoder.encode(text);
    const conn = this.#conn;
    this.#writing = this.#writing.then(async () => {
      let n = 0;
      while (n < bytes.length) n += await conn.write(bytes.subarray(n));
    });
    return this.#writing;
  }

  /** Every complete line available (at least one, without "\r\n"), or null at end of stream. */
  async lines(): Promise<string[] | null> {
    for (;;) {
      const n = await this.#conn.read(this.#buf);
      if (n === null) return null;
      this.#rest += this.#decoder.decode(this.#buf.subarray(0, n), { stream: true });
      const end = this.#rest.lastIndexOf("\n");
      if (end < 0) continue;
      const parts = this.#rest.slice(0, end).split("\n");
      this.#rest = this.#rest.slice(end + 1);
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i] as string;
        if (p.endsWith("\r")) parts[i] = p.slice(0, -1);
      }
      return parts;
    }
  }

  /** Closes the socket (a pending read then fails or ends); safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }
}
