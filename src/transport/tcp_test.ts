import assert from "node:assert/strict";
import { type LineConnection, type LineEvent, LineServer, type LineServerOptions } from "./tcp.ts";
import { prng } from "../../tests/prng.ts";
import v8 from "node:v8";
import vm from "node:vm";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: true, sanitizeResources: true, fn });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Sends every line back uppercased, reports the other events, closes when input ends. */
async function echo(conn: LineConnection): Promise<void> {
  for await (const item of conn.lines()) {
    if (item.kind === "line") conn.send(item.text.toUpperCase());
    else if (item.kind === "invalid-utf8") conn.send(`INVALID ${item.byteLength}`);
    else if (item.kind === "too-long") conn.send(`TOO LONG ${item.limit}`);
  }
  conn.close("input ended");
}

/** A test client over a real socket that reads CRLF-terminated lines. */
class Client {
  readonly conn: Deno.TcpConn;
  #pending = "";
  #closed = false;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  async write(data: string | Uint8Array): Promise<void> {
    let bytes = typeof data === "string" ? encoder.encode(data) : data;
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
      if (n === null) {
        assert.equal(this.#pending, "", "unterminated output before end of input");
        return null;
      }
      this.#pending += decoder.decode(buffer.subarray(0, n));
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.conn.close();
  }
}

/** A running server plus every connection it accepted, for cleanup. */
class Harness {
  readonly server: LineServer;
  readonly conns: LineConnection[] = [];
  readonly #clients: Client[] = [];
  #waiters: ((conn: LineConnection) => void)[] = [];

  constructor(options: Partial<LineServerOptions>) {
    const handler = options.onConnection ?? echo;
    this.server = new LineServer({
      hostname: "127.0.0.1",
      port: 0,
      maxLineBytes: 1024,
      writeBufferBytes: 1 << 20,
      idleTimeoutMs: 0,
      ...options,
      onConnection: (conn) => {
        this.conns.push(conn);
        for (const wake of this.#waiters) wake(conn);
        this.#waiters = [];
        return handler(conn);
      },
    });
    this.server.start();
  }

  /** The first connection the server accepted, once it has. */
  firstConnection(): Promise<LineConnection> {
    const conn = this.conns[0];
    if (conn) return Promise.resolve(conn);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async connect(): Promise<Client> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.server.port });
    const client = new Client(conn);
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

test("sends each line back through send() with a CRLF terminator", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    await client.write("hello\nworld\n");
    assert.equal(await client.readLine(), "HELLO");
    assert.equal(await client.readLine(), "WORLD");
    const conn = await h.firstConnection();
    assert.match(conn.remote, /^127\.0\.0\.1:\d+$/);
  } finally {
    await h.cleanup();
  }
});

test("yields many lines sent in one write, in order", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    const count = 2000;
    await client.write(Array.from({ length: count }, (_, i) => `line ${i}\n`).join(""));
    for (let i = 0; i < count; i++) assert.equal(await client.readLine(), `LINE ${i}`);
  } finally {
    await h.cleanup();
  }
});

/** The events a connection's lines() yield for what `write` sends before closing. */
async function eventsOf(write: (client: Client) => Promise<void>): Promise<LineEvent[]> {
  const events: LineEvent[] = [];
  const h = new Harness({
    async onConnection(conn) {
      for await (const item of conn.lines()) events.push(item);
      conn.close();
    },
  });
  try {
    const client = await h.connect();
    await write(client);
    client.close();
    await (await h.firstConnection()).closed;
    return events;
  } finally {
    await h.cleanup();
  }
}

test("accepts CRLF and LF line ends and yields empty lines", async () => {
  const events = await eventsOf((client) => client.write("a\r\nb\n\r\nc"));
  assert.deepEqual(events, [
    { kind: "line", text: "a" },
    { kind: "line", text: "b" },
    { kind: "line", text: "" },
    { kind: "line", text: "c" },
  ]);
});

test("the lines of one read decode as each line alone: CRs, empty lines, bad UTF-8, a line joined from two reads", async () => {
  // Random reads of random lines, each line's events compared with decoding it alone.
  const random = prng(7);
  const rand = (n: number) => Math.floor(random() * n);
  const pieces = ["a", "é", "\r", "\u{1F600}", "xyz", "", "\r\r"];
  const lines: Uint8Array[] = [];
  for (let i = 0; i < 300; i++) {
    let text = "";
    for (let k = rand(4); k > 0; k--) text += pieces[rand(pieces.length)];
    const bytes = encoder.encode(text);
    // One line in fifty is not UTF-8: a lone continuation byte in its middle.
    lines.push(rand(50) === 0 ? new Uint8Array([...bytes, 0x80, ...bytes]) : bytes);
  }
  const expected: LineEvent[] = lines.map((b) => {
    const line = b[b.length - 1] === 0x0d ? b.subarray(0, b.length - 1) : b;
    try {
      return { kind: "line", text: new TextDecoder("utf-8", { fatal: true }).decode(line) };
    } catch {
      return { kind: "invalid-utf8", byteLength: line.length };
    }
  });
  const stream = new Uint8Array(lines.reduce((n, l) => n + l.length + 1, 0));
  let at = 0;
  for (const l of lines) {
    stream.set(l, at);
    stream[at + l.length] = 0x0a;
    at += l.length + 1;
  }
  const events = await eventsOf(async (client) => {
    for (let from = 0; from < stream.length;) {
      const to = Math.min(stream.length, from + 1 + rand(400));
      await client.write(stream.subarray(from, to));
      await delay(1); // separate reads, so that lines straddle them
      from = to;
    }
  });
  assert.deepEqual(events, expected);
});

test("a recognizer reads the lines that lie in one read from their bytes; the others still decode, in order", async () => {
  // Lines "R<digits>" are read by the recognizer (when wholly inside one read); every other
  // line, and any "R" line joined from two reads, comes out as text.
  const random = prng(11);
  const rand = (n: number) => Math.floor(random() * n);
  const lines: string[] = [];
  for (let i = 0; i < 400; i++) lines.push(rand(2) === 0 ? `R${rand(100_000)}` : `text ${i} é`);
  const stream = encoder.encode(lines.map((l) => l + (rand(2) ? "\r\n" : "\n")).join(""));
  const events: LineEvent[] = [];
  const h = new Harness({
    async onConnection(conn) {
      conn.recognize((bytes, start, end) => {
        if (bytes[start] !== 0x52) return null;
        let n = 0;
        for (let i = start + 1; i < end; i++) n = n * 10 + (bytes[i] as number) - 0x30;
        return { n };
      });
      for await (const item of conn.lines()) events.push(item);
      conn.close();
    },
  });
  try {
    const client = await h.connect();
    for (let from = 0; from < stream.length;) {
      const to = Math.min(stream.length, from + 1 + rand(300));
      await client.write(stream.subarray(from, to));
      await delay(1);
      from = to;
    }
    client.close();
    await (await h.firstConnection()).closed;
  } finally {
    await h.cleanup();
  }
  assert.equal(events.length, lines.length);
  let recognized = 0;
  events.forEach((ev, i) => {
    const line = lines[i] as string;
    if (ev.kind === "recognized") {
      recognized++;
      assert.deepEqual(ev.value, { n: Number(line.slice(1)) }, line);
    } else assert.deepEqual(ev, { kind: "line", text: line });
  });
  assert.ok(recognized > 100, `only ${recognized} lines recognized`);
});

test("sendWritten() puts a writer's bytes on the wire as a line, in order with send()", async () => {
  const writer = {
    n: 0,
    writeLine(buf: Uint8Array, at: number): number {
      const text = encoder.encode(`written ${this.n}`);
      buf.set(text, at);
      return at + text.length;
    },
  };
  const h = new Harness({
    async onConnection(conn) {
      for await (const item of conn.lines()) {
        if (item.kind !== "line") continue;
        // Many lines in one turn, so they share the output buffer (and outgrow its first size).
        for (let i = 0; i < 500; i++) {
          conn.send(`sent ${i} ${item.text}`);
          writer.n = i;
          assert.equal(conn.sendWritten(writer, 32), `written ${i}`.length);
        }
      }
      conn.close();
    },
  });
  try {
    const client = await h.connect();
    await client.write("go\n");
    for (let i = 0; i < 500; i++) {
      assert.equal(await client.readLine(), `sent ${i} go`);
      assert.equal(await client.readLine(), `written ${i}`);
    }
  } finally {
    await h.cleanup();
  }
});

test("a line over maxLineBytes ends lines() with a too-long item, replies still go out", async () => {
  const events: LineEvent[] = [];
  const h = new Harness({
    maxLineBytes: 16,
    async onConnection(conn) {
      for await (const item of conn.lines()) events.push(item);
      conn.send("ERROR: line too long");
      conn.close("line too long");
    },
  });
  try {
    const client = await h.connect();
    await client.write(`${"x".repeat(16)}\r\n${"y".repeat(17)}`);
    assert.equal(await client.readLine(), "ERROR: line too long");
    assert.equal(await client.readLine(), null);
    assert.deepEqual(events, [
      { kind: "line", text: "x".repeat(16) },
      { kind: "too-long", limit: 16 },
    ]);
  } finally {
    await h.cleanup();
  }
});

test("reports a line that is not valid UTF-8 and goes on with the next line", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    await client.write(new Uint8Array([0x61, 0xff, 0xfe, 0x0a]));
    await client.write("ok\n");
    assert.equal(await client.readLine(), "INVALID 3");
    assert.equal(await client.readLine(), "OK");
  } finally {
    await h.cleanup();
  }
});

test("ends lines() when the peer closes its side, and replies still reach it", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    await client.write("first\nlast");
    await client.conn.closeWrite();
    assert.equal(await client.readLine(), "FIRST");
    assert.equal(await client.readLine(), "LAST");
    assert.equal(await client.readLine(), null);
    const conn = await h.firstConnection();
    await conn.closed;
    assert.equal(conn.closeReason, "input ended");
  } finally {
    await h.cleanup();
  }
});

test("close() writes all queued output before closing the socket", async () => {
  const count = 5000;
  const h = new Harness({
    onConnection(conn) {
      for (let i = 0; i < count; i++) conn.send(`reply ${i}`);
      conn.close("done");
    },
  });
  try {
    const client = await h.connect();
    for (let i = 0; i < count; i++) assert.equal(await client.readLine(), `reply ${i}`);
    assert.equal(await client.readLine(), null);
  } finally {
    await h.cleanup();
  }
});

test("send() after close() is ignored and close() is idempotent", async () => {
  const h = new Harness({
    onConnection(conn) {
      conn.send("one");
      conn.close("first");
      conn.close("second");
      conn.send("two");
      assert.equal(conn.isClosed, true);
      assert.equal(conn.closeReason, "first");
    },
  });
  try {
    const client = await h.connect();
    assert.equal(await client.readLine(), "one");
    assert.equal(await client.readLine(), null);
  } finally {
    await h.cleanup();
  }
});

test("a peer that never reads is disconnected once writeBufferBytes of output is queued", async () => {
  const writeBufferBytes = 64 * 1024;
  let sent = 0;
  const h = new Harness({
    writeBufferBytes,
    async onConnection(conn) {
      const line = "x".repeat(1022);
      // Bounded: loopback socket buffers hold a few MiB before writes block.
      for (let i = 0; i < 200_000 && !conn.isClosed; i++) {
        conn.send(line);
        sent += 1024;
        if (i % 16 === 0) await delay(0); // let the writer run, as a real server would
      }
    },
  });
  try {
    await h.connect(); // never reads
    const conn = await h.firstConnection();
    await conn.closed;
    assert.match(conn.closeReason ?? "", /peer too slow: over 65536 bytes of output queued/);
    assert.ok(sent > writeBufferBytes, `sent ${sent} bytes`);
  } finally {
    await h.cleanup();
  }
});

test("idle timeout sends an error line and closes the connection", async () => {
  const h = new Harness({ idleTimeoutMs: 100 });
  try {
    const client = await h.connect();
    const start = performance.now();
    assert.equal(await client.readLine(), "ERROR: idle for more than 100 ms, closing");
    assert.ok(performance.now() - start >= 90);
    assert.equal(await client.readLine(), null);
    const conn = await h.firstConnection();
    assert.equal(conn.closeReason, "idle for more than 100 ms");
  } finally {
    await h.cleanup();
  }
});

test("input lines keep an idle connection open", async () => {
  const h = new Harness({ idleTimeoutMs: 150 });
  try {
    const client = await h.connect();
    // 6 × 50 ms = 300 ms in all, twice the timeout, but never 150 ms without a line.
    for (let i = 0; i < 6; i++) {
      await delay(50);
      await client.write(`ping ${i}\n`);
      assert.equal(await client.readLine(), `PING ${i}`);
    }
    assert.equal(await client.readLine(), "ERROR: idle for more than 150 ms, closing");
  } finally {
    await h.cleanup();
  }
});

test("onConnection failing is reported to onError and closes only that connection", async () => {
  const errors: [unknown, LineConnection | undefined][] = [];
  let calls = 0;
  const h = new Harness({
    onError: (err, conn) => errors.push([err, conn]),
    onConnection(conn) {
      calls++;
      if (calls === 1) throw new Error("sync failure");
      if (calls === 2) return Promise.reject(new Error("async failure"));
      return echo(conn);
    },
  });
  try {
    const first = await h.connect();
    assert.equal(await first.readLine(), null);
    const second = await h.connect();
    assert.equal(await second.readLine(), null);
    const third = await h.connect();
    await third.write("still serving\n");
    assert.equal(await third.readLine(), "STILL SERVING");
    assert.deepEqual(errors.map(([err]) => (err as Error).message), [
      "sync failure",
      "async failure",
    ]);
    assert.equal(errors[0]?.[1], h.conns[0]);
    assert.match(h.conns[0]?.closeReason ?? "", /connection handler failed: sync failure/);
  } finally {
    await h.cleanup();
  }
});

test("server close() stops accepting and leaves live connections open", async () => {
  const h = new Harness({});
  try {
    const client = await h.connect();
    await client.write("before\n");
    assert.equal(await client.readLine(), "BEFORE");
    await h.server.close();
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: h.server.port }),
      Deno.errors.ConnectionRefused,
    );
    await client.write("after\n");
    assert.equal(await client.readLine(), "AFTER");
  } finally {
    await h.cleanup();
  }
});

test("connection ids are unique", async () => {
  const h = new Harness({});
  try {
    await h.connect();
    await h.connect();
    await h.connect();
    while (h.conns.length < 3) await delay(5);
    assert.equal(new Set(h.conns.map((c) => c.id)).size, 3);
  } finally {
    await h.cleanup();
  }
});

test("a long-lived connection keeps nothing per read: heap after 5,000 more reads within 300 KB", async () => {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  const h = new Harness({});
  try {
    const client = await h.connect();
    // Each line waits for its echo, so each is a read of its own on the server.
    const roundTrips = async (n: number) => {
      for (let i = 0; i < n; i++) {
        await client.write(`line ${i}\n`);
        assert.equal(await client.readLine(), `LINE ${i}`);
      }
    };
    await roundTrips(500); // compiled and warm
    gc();
    const before = Deno.memoryUsage().heapUsed;
    await roundTrips(5_000);
    gc();
    const grown = Deno.memoryUsage().heapUsed - before;
    // Racing each read against a stop promise left ~750 bytes per read on it (3.8 MB here).
    assert.ok(grown < 300_000, `heap grew ${grown} bytes over 5,000 reads`);
  } finally {
    await h.cleanup();
  }
});
