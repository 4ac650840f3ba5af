/**
 * Black-box test helpers: a line client over a real TCP socket with send/expect, a
 * broker started in this process on free ports and a temporary data directory, and a
 * broker started as a child process (for SIGKILL and signal tests).
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type BrokerConfig, configFor } from "../src/config.ts";
import { LIBC_PATHS } from "../src/memory_reducer.ts";
import { type RunningBroker, startBroker, type StartOptions } from "../src/server.ts";

const encoder = new TextEncoder();

/** A client that speaks lines over a real socket. */
export class LineClient {
  #conn: Deno.TcpConn;
  #reader: ReadableStreamDefaultReader<string>;
  #buffer: string[] = [];
  #pending: Promise<ReadableStreamReadResult<string>> | null = null;
  #closed = false;
  #eof = false;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reader = conn.readable
      .pipeThrough(new TextDecoderStream())
      .pipeThrough(splitLines())
      .getReader();
  }

  /** Connects to 127.0.0.1:`port`. */
  static async connect(port: number): Promise<LineClient> {
    return new LineClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Sends one line with "\r\n" (as telnet does); `raw` sends exactly the text given. */
  async send(line: string, { raw = false } = {}): Promise<void> {
    const bytes = encoder.encode(raw ? line : line + "\r\n");
    let n = 0;
    while (n < bytes.length) n += await this.#conn.write(bytes.subarray(n));
  }

  /** Sends raw bytes. */
  async sendBytes(bytes: Uint8Array): Promise<void> {
    let n = 0;
    while (n < bytes.length) n += await this.#conn.write(bytes.subarray(n));
  }

  /** The next line, or null at end of stream; fails after `timeoutMs`. */
  async next(timeoutMs = 3000): Promise<string | null> {
    const buffered = this.#buffer.shift();
    if (buffered !== undefined) return buffered;
    if (this.#eof) return null;
    this.#pending ??= this.#reader.read();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), timeoutMs)
    );
    const res = await Promise.race([this.#pending, timeout]).finally(() => clearTimeout(timer));
    if (res === "timeout") throw new Error(`no line within ${timeoutMs} ms`);
    this.#pending = null;
    if (res.done) {
      this.#eof = true;
      return null;
    }
    return res.value;
  }

  /** Asserts that the next line equals `expected` (or matches it). Returns the line. */
  async expect(expected: string | RegExp, timeoutMs = 3000): Promise<string> {
    const line = await this.next(timeoutMs);
    if (line === null) assert.fail(`expected ${expected}, got end of stream`);
    if (typeof expected === "string") assert.equal(line, expected);
    else assert.match(line, expected);
    return line;
  }

  /** Asserts that the next line is JSON and returns it parsed. */
  async expectJson(timeoutMs = 3000): Promise<Record<string, unknown>> {
    const line = await this.next(timeoutMs);
    assert.ok(line !== null, "expected a JSON line, got end of stream");
    return JSON.parse(line);
  }

  /** Asserts that no line arrives within `ms`. */
  async expectSilence(ms: number): Promise<void> {
    if (this.#buffer.length > 0) assert.fail(`unexpected line ${this.#buffer[0]}`);
    if (this.#eof) return;
    this.#pending ??= this.#reader.read();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const quiet = new Promise<"quiet">((r) => timer = setTimeout(() => r("quiet"), ms));
    const res = await Promise.race([this.#pending, quiet]).finally(() => clearTimeout(timer));
    if (res === "quiet") return;
    this.#pending = null;
    if (res.done) {
      this.#eof = true;
      return;
    }
    assert.fail(`expected silence, got ${res.value}`);
  }

  /** Asserts that the server closes the connection (after any lines still unread). */
  async expectClosed(timeoutMs = 3000): Promise<void> {
    const line = await this.next(timeoutMs);
    assert.equal(line, null, `expected the connection to close, got ${line}`);
  }

  /** Closes the socket and releases the reader. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Half-close first and give the server a moment to close its side: closing a socket
    // under a pending stream read leaves Deno's stream pull with a rejected read.
    if (!this.#eof) {
      try {
        await this.#conn.closeWrite();
        const drain = (async () => {
          while ((await this.next(1000).catch(() => null)) !== null) { /* discard */ }
        })();
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([drain, new Promise((r) => timer = setTimeout(r, 1000))]);
        clearTimeout(timer);
      } catch {
        // the peer is gone already
      }
    }
    try {
      this.#conn.close();
    } catch {
      // already closed by the peer
    }
    await this.#pending?.catch(() => {});
    await this.#reader.cancel().catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function splitLines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      rest += chunk;
      let i: number;
      while ((i = rest.indexOf("\n")) >= 0) {
        controller.enqueue(rest.slice(0, i).replace(/\r$/, ""));
        rest = rest.slice(i + 1);
      }
    },
    flush(controller) {
      if (rest) controller.enqueue(rest);
    },
  });
}

/** Logs in a consumer and checks the greeting. */
export async function loginConsumer(port: number, name: string): Promise<LineClient> {
  const c = await LineClient.connect(port);
  await c.expect("Please login!");
  await c.send(`log ${name}`);
  await c.expect("Successfully logged in!");
  return c;
}

/** PUB then PUBREL; returns the message id after checking both answers. */
export async function publish(
  p: LineClient,
  topic: string,
  msg: unknown,
  timeoutMs = 3000,
): Promise<number> {
  await p.send(JSON.stringify({ type: "PUB", topic, msg }));
  const rec = await p.expectJson(timeoutMs);
  assert.equal(rec.type, "PUBREC");
  const id = rec.msgId as number;
  await p.send(JSON.stringify({ type: "PUBREL", msgId: id }));
  await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`, timeoutMs);
  return id;
}

/** Receives one PUB on `c`, then completes it with PUBREC/PUBCOMP; returns it. */
export async function receive(c: LineClient, timeoutMs = 3000): Promise<Record<string, unknown>> {
  const pub = await c.expectJson(timeoutMs);
  assert.equal(pub.type, "PUB");
  await c.send(JSON.stringify({ type: "PUBREC", msgId: pub.msgId, topic: pub.topic }));
  await c.expect("OK");
  await c.expect(`{"msgId":${pub.msgId},"type":"PUBREL"}`);
  await c.send(JSON.stringify({ type: "PUBCOMP", msgId: pub.msgId, topic: pub.topic }));
  await c.expect("OK");
  return pub;
}

/** JSON text of a value (a command line). */
export const json = (value: unknown): string => JSON.stringify(value);

/** Logs in `name` and subscribes it to `topics`. */
export async function subscriber(
  b: TestBroker,
  name: string,
  ...topics: string[]
): Promise<LineClient> {
  const c = await loginConsumer(b.consumerPort, name);
  for (const topic of topics) {
    await c.send(json({ type: "SUB", topic }));
    await c.expect("OK");
  }
  return c;
}

/** Sends a PUB and returns the id of its PUBREC, without releasing it. */
export async function pubOnly(p: LineClient, topic: string, msg: unknown): Promise<number> {
  await p.send(json({ type: "PUB", topic, msg }));
  const line = await p.expect(/^\{"msgId":\d+,"type":"PUBREC"\}$/);
  return JSON.parse(line).msgId as number;
}

/** Waits (bounded) until `cond` holds. */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Receives and completes `count` messages that may arrive interleaved from several
 * topics; returns the PUBs in arrival order. Fails on any message received twice.
 */
export async function completeAll(
  c: LineClient,
  count: number,
  lineTimeoutMs = 5000,
): Promise<Record<string, unknown>[]> {
  const pubs: Record<string, unknown>[] = [];
  const released = new Set<unknown>();
  let oks = 0;
  for (let guard = 0; released.size < count || oks < 2 * count; guard++) {
    assert.ok(guard < 10 * count, "too many lines");
    const line = await c.next(lineTimeoutMs);
    assert.ok(line !== null, "connection closed");
    if (line === "OK") {
      oks++;
      continue;
    }
    const m = JSON.parse(line);
    if (m.type === "PUB") {
      assert.ok(!pubs.some((p) => p.msgId === m.msgId), `PUB ${m.msgId} received twice`);
      pubs.push(m);
      await c.send(json({ type: "PUBREC", msgId: m.msgId, topic: m.topic }));
    } else {
      assert.equal(m.type, "PUBREL", `unexpected line ${line}`);
      assert.ok(!released.has(m.msgId), `PUBREL ${m.msgId} received twice`);
      released.add(m.msgId);
      await c.send(json({ type: "PUBCOMP", msgId: m.msgId }));
    }
  }
  return pubs;
}

/** A broker running in this test process. */
export interface TestBroker extends RunningBroker {
  dataDir: string;
  config: BrokerConfig;
  /** Stops the broker and removes its data directory. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a broker on free ports of 127.0.0.1 with a temporary data directory (or
 * `config.dataDir`), a short retry interval, and the given overrides.
 */
export async function startTestBroker(
  config: Partial<BrokerConfig> = {},
  options: StartOptions = {},
): Promise<TestBroker> {
  const ownDir = config.dataDir === undefined;
  const dataDir = config.dataDir ?? await Deno.makeTempDir({ prefix: "mb-test-" });
  const full = configFor({
    hostname: "127.0.0.1",
    consumerPort: 0,
    publisherPort: 0,
    // MQTT is off unless a test asks for it (-1 = any free port).
    mqttPort: 0,
    mqttWsPort: 0,
    mqttTlsPort: 0,
    mqttSysInterval: 0,
    retryInterval: 200,
    ...config,
    dataDir,
  });
  const running = await startBroker(full, options);
  return Object.assign(Object.create(null), {
    broker: running.broker,
    consumerPort: running.consumerPort,
    publisherPort: running.publisherPort,
    tlsConsumerPort: running.tlsConsumerPort,
    tlsPublisherPort: running.tlsPublisherPort,
    mqttPort: running.mqttPort,
    mqttWsPort: running.mqttWsPort,
    mqttTlsPort: running.mqttTlsPort,
    connections: running.connections,
    stop: running.stop,
    dataDir,
    config: full,
    async [Symbol.asyncDispose]() {
      await running.stop();
      if (ownDir) await Deno.remove(dataDir, { recursive: true });
    },
  });
}

/** `deno run` of main.ts with the permissions of the `start` task, for child processes. */
export const RUN_MAIN: readonly string[] = [
  "run",
  "--unstable-kv",
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env=BROKER_*,READABLE_STREAM,DEBUG",
  `--allow-ffi=${LIBC_PATHS.join(",")}`,
  join(import.meta.dirname ?? ".", "..", "main.ts"),
];

/** A broker in a child process (`deno run main.ts`), for kill and signal tests. */
export class ChildBroker {
  readonly process: Deno.ChildProcess;
  readonly consumerPort: number;
  readonly publisherPort: number;
  /** The MQTT port, when the child was started with `--mqtt-port` other than 0. */
  readonly mqttPort: number;
  #output: Promise<string>;

  private constructor(
    process: Deno.ChildProcess,
    ports: [number, number, number],
    output: Promise<string>,
  ) {
    this.process = process;
    this.consumerPort = ports[0];
    this.publisherPort = ports[1];
    this.mqttPort = ports[2];
    this.#output = output;
  }

  /**
   * Starts `main.ts` with `args` (ports default to 0) and waits until both servers
   * listen, reading their ports from the startup log.
   */
  static async start(dataDir: string, args: string[] = []): Promise<ChildBroker> {
    const process = new Deno.Command(Deno.execPath(), {
      args: [
        ...RUN_MAIN,
        "--hostname",
        "127.0.0.1",
        "--consumer-port",
        "0",
        "--publisher-port",
        "0",
        "--data-dir",
        dataDir,
        "--log-level",
        "info",
        "--mqtt-port",
        "0",
        "--mqtt-ws-port",
        "0",
        "--mqtt-tls-port",
        "0",
        "--mqtt-sys-interval",
        "0",
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const lines = process.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines());
    const reader = lines.getReader();
    let log = "";
    let consumer = 0;
    let publisher = 0;
    let mqtt = 0;
    // `--mqtt-port N` or `--mqtt-port=N` (a negative value needs the second form).
    const i = args.findLastIndex((a) => a === "--mqtt-port" || a.startsWith("--mqtt-port="));
    const value = i < 0 ? "0" : args[i]?.includes("=") ? args[i]?.split("=")[1] : args[i + 1];
    const wantMqtt = value !== "0";
    const deadline = Date.now() + 15_000;
    while (!(consumer && publisher && (mqtt || !wantMqtt))) {
      if (Date.now() > deadline) break;
      const { value, done } = await reader.read();
      if (done) break;
      log += value + "\n";
      const m = /Server (consumer|publisher) accepting connections on .*:(\d+)/.exec(value);
      if (m?.[1] === "consumer") consumer = Number(m[2]);
      if (m?.[1] === "publisher") publisher = Number(m[2]);
      const q = /Server mqtt accepting .* on .*:(\d+)/.exec(value);
      if (q) mqtt = Number(q[1]);
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    const rest = (async () => {
      let out = log;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return out;
        out += value + "\n";
      }
    })();
    const stderr = new Response(process.stderr).text();
    const output = Promise.all([rest, stderr]).then(([o, e]) => o + e);
    if (!(consumer && publisher && (mqtt || !wantMqtt))) {
      try {
        process.kill("SIGKILL");
      } catch { /* already gone */ }
      await process.status;
      throw new Error(`broker did not start:\n${await output}`);
    }
    return new ChildBroker(process, [consumer, publisher, mqtt], output);
  }

  /** Sends a signal and waits for the exit; returns the exit code and all output. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<{ code: number; output: string }> {
    try {
      this.process.kill(signal);
    } catch { /* already exited */ }
    const status = await this.process.status;
    return { code: status.code, output: await this.#output };
  }
}

/**
 * Runs `make(i)` for i in [0, n) with at most `batch` at a time, keeping the order (for
 * opening many connections: the listen backlog is finite).
 */
export async function inBatches<T>(
  n: number,
  make: (i: number) => Promise<T>,
  batch = 100,
): Promise<T[]> {
  const out: T[] = [];
  for (let start = 0; start < n; start += batch) {
    const size = Math.min(batch, n - start);
    out.push(...await Promise.all(Array.from({ length: size }, (_, k) => make(start + k))));
  }
  return out;
}

/** The soft limit on open files, from /proc (Linux); Infinity when unknown. */
export function fdLimit(): number {
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
    return soft === undefined ? Infinity : Number(soft);
  } catch {
    return Infinity;
  }
}
