import assert from "node:assert/strict";
import { type LineConnection, LineServer, type LineServerOptions } from "./tcp.ts";
import { testCertificate } from "./test_certificate.ts";
import { readTlsFiles, TlsHandshakeError } from "./tls.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: true, sanitizeResources: true, fn });
}

/** Sends every line back uppercased and closes when input ends. */
async function echo(conn: LineConnection): Promise<void> {
  for await (const item of conn.lines()) {
    if (item.kind === "line") conn.send(item.text.toUpperCase());
  }
  conn.close("input ended");
}

/** A line client over any socket, plain or TLS. */
class Client {
  readonly conn: Deno.Conn;
  #pending = "";
  #closed = false;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  async write(data: string): Promise<void> {
    let bytes = encoder.encode(data);
    while (bytes.length > 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  /** The next line without its "\r\n", or null at end of input. */
  async readLine(): Promise<string | null> {
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const end = this.#pending.indexOf("\r\n");
      if (end !== -1) {
        const line = this.#pending.slice(0, end);
        this.#pending = this.#pending.slice(end + 2);
        return line;
      }
      const n = await this.conn.read(buffer);
      if (n === null) return null;
      this.#pending += decoder.decode(buffer.subarray(0, n));
    }
  }

  /** Reads and discards input until the server closes (an end or a reset); returns the bytes. */
  async readToClose(): Promise<number> {
    const buffer = new Uint8Array(4096);
    let total = 0;
    try {
      for (;;) {
        const n = await this.conn.read(buffer);
        if (n === null) return total;
        total += n;
      }
    } catch {
      return total; // a reset is a close too
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }
}

/** A running TLS (or plain) server, the connections it handed over, and its reports. */
class Harness {
  readonly server: LineServer;
  readonly conns: LineConnection[] = [];
  readonly handshakeErrors: { err: unknown; remote?: string }[] = [];
  readonly #clients: Client[] = [];

  constructor(options: Partial<LineServerOptions>) {
    const handler = options.onConnection ?? echo;
    this.server = new LineServer({
      hostname: "127.0.0.1",
      port: 0,
      maxLineBytes: 1024,
      writeBufferBytes: 1 << 20,
      idleTimeoutMs: 0,
      onHandshakeError: (err, remote) => this.handshakeErrors.push({ err, remote }),
      ...options,
      onConnection: (conn) => {
        this.conns.push(conn);
        return handler(conn);
      },
    });
    this.server.start();
  }

  static async tls(options: Partial<LineServerOptions> = {}): Promise<Harness> {
    return new Harness({ tls: await testCertificate(), ...options });
  }

  async connectTls(hostname = "localhost"): Promise<Client> {
    const { cert } = await testCertificate();
    const conn = await Deno.connectTls({ hostname, port: this.server.port, caCerts: [cert] });
    return this.#track(new Client(conn));
  }

  async connectPlain(): Promise<Client> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.server.port });
    return this.#track(new Client(conn));
  }

  #track(client: Client): Client {
    this.#clients.push(client);
    return client;
  }

  /** Closes clients and server connections, waits until all are gone, closes the server. */
  async cleanup(): Promise<void> {
    for (const client of this.#clients) client.close();
    for (const conn of this.conns) conn.close("test over");
    await Promise.all(this.conns.map((c) => c.closed));
    await this.server.close();
  }
}

async function waitUntil(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test("serves lines over TLS to clients that trust the certificate, by name and by IP", async () => {
  const h = await Harness.tls();
  try {
    for (const hostname of ["localhost", "127.0.0.1"]) {
      const client = await h.connectTls(hostname);
      await client.write(`hello ${hostname}\n`);
      assert.equal(await client.readLine(), `HELLO ${hostname.toUpperCase()}`);
    }
    assert.equal(h.conns.length, 2);
    assert.ok(h.conns.every((c) => c.tls));
    assert.match(h.conns[0]?.remote ?? "", /^127\.0\.0\.1:\d+$/);
    assert.deepEqual(h.handshakeErrors, []);
  } finally {
    await h.cleanup();
  }
});

test("a plain connection is not TLS", async () => {
  const h = new Harness({});
  try {
    const client = await h.connectPlain();
    await client.write("x\n");
    assert.equal(await client.readLine(), "X");
    assert.equal(h.conns[0]?.tls, false);
  } finally {
    await h.cleanup();
  }
});

test("a plain-text client on a TLS server is closed and reported; TLS clients are still served", async () => {
  const h = await Harness.tls();
  try {
    const plain = await h.connectPlain();
    await plain.write('{"type":"PUB","topic":"t","msg":"x"}\r\n');
    await plain.readToClose();
    await waitUntil(() => h.handshakeErrors.length === 1, "the handshake error");
    const [report] = h.handshakeErrors;
    assert.ok(report?.err instanceof TlsHandshakeError);
    assert.match(report.err.message, /^TLS handshake failed: /);
    assert.match(report.remote ?? "", /^127\.0\.0\.1:\d+$/);
    assert.equal(h.conns.length, 0, "the plain client never became a connection");

    const client = await h.connectTls();
    await client.write("still serving\n");
    assert.equal(await client.readLine(), "STILL SERVING");
  } finally {
    await h.cleanup();
  }
});

test("a slow handshake is reported once and keeps its slot until the peer leaves", async () => {
  const h = await Harness.tls({ slowHandshakeMs: 100 });
  try {
    const silent = await h.connectPlain(); // a plain client waiting for a greeting
    await waitUntil(() => h.handshakeErrors.length === 1, "the slow-handshake report");
    const [report] = h.handshakeErrors;
    assert.equal(
      (report?.err as Error).message,
      "TLS handshake not completed after 100 ms; waiting for the peer",
    );
    assert.match(report?.remote ?? "", /^127\.0\.0\.1:\d+$/);
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.equal(h.handshakeErrors.length, 1, "reported once");
    silent.close(); // its handshake now fails, and that is reported too
    await waitUntil(() => h.handshakeErrors.length === 2, "the failure");
    assert.match((h.handshakeErrors[1]?.err as Error).message, /^TLS handshake failed: /);
    assert.equal(h.conns.length, 0);
  } finally {
    await h.cleanup();
  }
});

test("at maxPendingHandshakes the server stops accepting until a handshake ends", async () => {
  const h = await Harness.tls({ maxPendingHandshakes: 1 });
  try {
    const holder = await h.connectPlain(); // says nothing: holds the only handshake slot
    await waitUntil(
      () => h.handshakeErrors.some((e) => e.remote === undefined),
      "the limit report",
    );
    assert.equal(
      (h.handshakeErrors[0]?.err as Error).message,
      "1 TLS handshakes in progress (the limit): not accepting until one ends",
    );
    // The next client waits in the kernel's backlog: its handshake cannot finish yet.
    const client = await h.connectTls();
    const handshake = (client.conn as Deno.TlsConn).handshake();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const early = await Promise.race([
      handshake.then(() => "done"),
      new Promise((resolve) => timer = setTimeout(() => resolve("waiting"), 200)),
    ]);
    clearTimeout(timer);
    assert.equal(early, "waiting");
    holder.close(); // its handshake fails, which frees the slot
    await handshake;
    await client.write("served\n");
    assert.equal(await client.readLine(), "SERVED");
  } finally {
    await h.cleanup();
  }
});

test("close() closes sockets still in their handshake without reporting them", async () => {
  const h = await Harness.tls();
  try {
    await h.connectPlain(); // says nothing
    await new Promise((resolve) => setTimeout(resolve, 50));
    await h.server.close(); // resolves with no handshake left pending (sanitizers check it)
    assert.deepEqual(h.handshakeErrors, []);
  } finally {
    await h.cleanup();
  }
});

test("close() over TLS writes all queued output, then the client reads a clean end", async () => {
  const count = 5000;
  const h = await Harness.tls({
    onConnection(conn) {
      for (let i = 0; i < count; i++) conn.send(`reply ${i}`);
      conn.close("done");
    },
  });
  try {
    const client = await h.connectTls();
    for (let i = 0; i < count; i++) assert.equal(await client.readLine(), `reply ${i}`);
    assert.equal(await client.readLine(), null);
  } finally {
    await h.cleanup();
  }
});

test("a TLS client ending its side ends lines(), and the replies still reach it", async () => {
  const h = await Harness.tls();
  try {
    const client = await h.connectTls();
    await client.write("first\nlast");
    await client.conn.closeWrite();
    assert.equal(await client.readLine(), "FIRST");
    assert.equal(await client.readLine(), "LAST");
    assert.equal(await client.readLine(), null);
    await h.conns[0]?.closed;
    assert.equal(h.conns[0]?.closeReason, "input ended");
  } finally {
    await h.cleanup();
  }
});

test("a TLS client on a plain server fails its handshake, and the server goes on", async () => {
  const h = new Harness({
    async onConnection(conn) {
      conn.send("Please login!"); // a greeting, as the consumer port sends
      await echo(conn);
    },
  });
  try {
    const { cert } = await testCertificate();
    await assert.rejects(async () => {
      const conn = await Deno.connectTls({
        hostname: "localhost",
        port: h.server.port,
        caCerts: [cert],
      });
      try {
        await conn.handshake();
      } finally {
        conn.close();
      }
    }, Deno.errors.InvalidData);
    const client = await h.connectPlain();
    assert.equal(await client.readLine(), "Please login!");
    await client.write("plain\n");
    assert.equal(await client.readLine(), "PLAIN");
  } finally {
    await h.cleanup();
  }
});

test("start() with an unusable certificate throws a clear error and listens on nothing", () => {
  const server = new LineServer({
    hostname: "127.0.0.1",
    port: 0,
    maxLineBytes: 1024,
    writeBufferBytes: 1024,
    idleTimeoutMs: 0,
    tls: { cert: "not a certificate", key: "not a key" },
    onConnection: () => {},
  });
  assert.throws(
    () => server.start(),
    /^Error: the TLS certificate and key cannot be used: No certificates found/,
  );
  return server.close();
});

test("readTlsFiles reads a certificate and its key", async () => {
  const pem = await testCertificate();
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.pem`, pem.cert);
    await Deno.writeTextFile(`${dir}/k.pem`, pem.key);
    assert.deepEqual(await readTlsFiles(`${dir}/c.pem`, `${dir}/k.pem`), pem);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("readTlsFiles names the file it cannot read or that holds no PEM block", async () => {
  const pem = await testCertificate();
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.pem`, pem.cert);
    await Deno.writeTextFile(`${dir}/k.pem`, pem.key);
    await assert.rejects(
      readTlsFiles(`${dir}/missing.pem`, `${dir}/k.pem`),
      new RegExp(`^Error: cannot read the TLS certificate file "${dir}/missing\\.pem": `),
    );
    await assert.rejects(
      readTlsFiles(`${dir}/c.pem`, `${dir}/nokey.pem`),
      new RegExp(`^Error: cannot read the TLS private key file "${dir}/nokey\\.pem": `),
    );
    await assert.rejects(
      readTlsFiles(`${dir}/k.pem`, `${dir}/k.pem`),
      { message: `the TLS certificate file "${dir}/k.pem" holds no PEM certificate` },
    );
    await assert.rejects(
      readTlsFiles(`${dir}/c.pem`, `${dir}/c.pem`),
      { message: `the TLS private key file "${dir}/c.pem" holds no PEM private key` },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
