/**
 * A socket fuzzer: for a bounded time, many connections send random bytes, random JSON,
 * command-like lines, truncated lines, over-long lines and deep nesting to both ports,
 * while a well-behaved publisher and consumer run a QoS 2 stream beside them. Afterwards
 * the broker still answers, every message the well-behaved publisher completed was
 * delivered exactly once and in order, no connection is left behind, and the heap is
 * back near its baseline.
 *
 * Everything random comes from one seed, printed at the start: `FUZZ_SEED=n deno task
 * test tests/fuzz_test.ts` replays the same inputs (the interleaving of connections
 * still depends on timing).
 */
import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import {
  completeAll,
  LineClient,
  publish,
  receive,
  startTestBroker,
  subscriber,
  waitFor,
} from "./helpers.ts";
import { resetLogging, setupLogging } from "../src/log.ts";
import { prng } from "./prng.ts";

const FUZZ_MS = 4000;
const MAX_CONNECTIONS = 1500;
const CONCURRENT = 20;
const STREAM_MESSAGES = 200;
const MAX_LINE = 4096;
/** Longest a fuzz connection lives before the fuzzer closes it. */
const CONNECTION_MS = 1500;

const encoder = new TextEncoder();

/** What the fuzz connections did, for the summary line. */
const stats = { sent: 0, received: 0, closedByBroker: 0 };

/** Random choices drawn from one seeded PRNG. */
class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = prng(seed);
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)] as T;
  }
  bytes(n: number, newlines = 0.02): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.chance(newlines) ? 0x0a : this.int(0, 255);
    return out;
  }
  string(max: number): string {
    const alphabet = ["a", "b", "/", " ", "é", "€", "😀", "+", "#", "$", "\u0000", "\n", '"'];
    let s = "";
    const n = this.int(0, max);
    for (let i = 0; i < n; i++) {
      s += this.chance(0.7) ? this.pick(alphabet) : String.fromCharCode(this.int(0, 0xffff));
    }
    return s;
  }
  json(depth = 0): unknown {
    const k = this.int(0, depth > 3 ? 4 : 6);
    switch (k) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.pick([0, -1, 1.5, 1e300, 2 ** 53 + 1, this.int(-1e6, 1e6)]);
      case 3:
      case 4:
        return this.string(12);
      case 5:
        return Array.from({ length: this.int(0, 4) }, () => this.json(depth + 1));
      default:
        return Object.fromEntries(
          Array.from({ length: this.int(0, 4) }, () => [this.string(5), this.json(depth + 1)]),
        );
    }
  }
}

const TOPICS = ["fz-a", "fz-b", "fz/c", "fz-€", "", "$SYS", "a+b", "deadLetterChan"];
const TYPES = ["PUB", "PUBREL", "SUB", "UNSUB", "PUBREC", "PUBCOMP", "CONNECT", "pub", 7];

/** A line that looks like a command: mostly well-formed, with wrong values mixed in. */
function commandLine(r: Rng): string {
  const cmd: Record<string, unknown> = { type: r.pick(TYPES) };
  if (r.chance(0.9)) cmd.topic = r.chance(0.8) ? r.pick(TOPICS) : r.json();
  if (r.chance(0.7)) {
    cmd.msgId = r.chance(0.8) ? r.int(1, 600) : r.pick([0, -5, 1.5, "3", 2 ** 60, null]);
  }
  if (r.chance(0.8)) cmd.msg = r.json();
  let line = JSON.stringify(cmd);
  if (r.chance(0.05)) line = line.replace("{", '{"type":"SUB",'); // duplicate key
  return line;
}

/** The bytes one fuzz connection sends, as segments of one or more kinds. */
function plan(r: Rng, consumerPort: boolean): { bytes: Uint8Array; silentMs: number } {
  const parts: Uint8Array[] = [];
  const text = (s: string) => parts.push(encoder.encode(s));
  const eol = () => r.pick(["\n", "\r\n", "\r\n", "\n\n"]);
  if (consumerPort && r.chance(0.7)) text(`log fz-${r.int(0, 30)}${eol()}`);
  let silentMs = 0;
  for (let s = r.int(1, 3); s > 0; s--) {
    switch (r.pick(["bytes", "json", "commands", "truncated", "long", "deep", "silent"])) {
      case "bytes":
        parts.push(r.bytes(r.int(1, 2048), r.pick([0, 0.01, 0.1])));
        break;
      case "json":
        for (let i = r.int(1, 20); i > 0; i--) text(JSON.stringify(r.json()) + eol());
        break;
      case "commands":
        for (let i = r.int(1, 30); i > 0; i--) text(commandLine(r) + eol());
        break;
      case "truncated":
        for (let i = r.int(1, 5); i > 0; i--) {
          const line = commandLine(r);
          text(line.slice(0, r.int(0, line.length - 1)) + (r.chance(0.8) ? eol() : ""));
        }
        break;
      case "long": {
        // Over the limit, with or without a newline: the broker closes the connection.
        const n = r.int(MAX_LINE + 1, 3 * MAX_LINE);
        const body = r.chance(0.5)
          ? encoder.encode(JSON.stringify({ type: "PUB", topic: "fz-a", msg: "x".repeat(n) }))
          : r.bytes(n, 0);
        parts.push(body);
        if (r.chance(0.5)) text(eol());
        break;
      }
      case "deep": {
        const d = r.int(20, 1500);
        text(`{"type":"PUB","topic":"fz-b","msg":${"[".repeat(d)}${"]".repeat(d)}}${eol()}`);
        break;
      }
      case "silent":
        silentMs = r.int(100, 1200);
        break;
    }
  }
  let total = 0;
  for (const p of parts) total += p.length;
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return { bytes, silentMs };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One fuzz connection: writes its plan in random chunks, maybe reading, then closes. */
async function fuzzConnection(port: number, consumerPort: boolean, r: Rng): Promise<void> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch {
    return; // refused under load: acceptable, counted by nobody
  }
  const { bytes, silentMs } = plan(r, consumerPort);
  let closed = false;
  // Some connections never read: their replies pile up in the kernel and the broker.
  const reads = r.chance(0.8);
  const reading = reads
    ? (async () => {
      const buf = new Uint8Array(16 * 1024);
      try {
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          stats.received += n;
        }
        if (!closed) stats.closedByBroker++;
      } catch { /* closed by either side */ }
    })()
    : Promise.resolve();
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch { /* already closed */ }
  };
  const killer = setTimeout(close, CONNECTION_MS);
  try {
    let at = 0;
    while (at < bytes.length && !closed) {
      const end = Math.min(bytes.length, at + r.int(1, r.pick([16, 512, 8192])));
      let n = at;
      while (n < end) n += await conn.write(bytes.subarray(n, end));
      stats.sent += end - at;
      at = end;
      if (r.chance(0.2)) await sleep(r.int(0, 20));
    }
    if (silentMs > 0 && !closed) await sleep(Math.min(silentMs, CONNECTION_MS));
    else if (r.chance(0.5) && !closed) await sleep(r.int(0, 100));
    if (r.chance(0.3) && !closed) await conn.closeWrite(); // half-close, then linger
  } catch {
    // Reset or closed by the broker (a long line, too many login attempts...): expected.
  } finally {
    if (!reads || r.chance(0.5)) close();
    else {
      // Wait (bounded) for the broker to close its side, as a polite client would.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([reading, new Promise((r) => timer = setTimeout(r, 200))]);
      clearTimeout(timer);
      close();
    }
    clearTimeout(killer);
    await reading;
  }
}

/** `gc()` of V8, exposed at run time (no command-line flag needed), or null. */
function exposeGc(): (() => void) | null {
  try {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc");
    return typeof gc === "function" ? gc : null;
  } catch {
    return null;
  }
}

async function heapAfterGc(gc: (() => void) | null): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc?.();
    await sleep(20);
  }
  // External memory holds ArrayBuffers (read buffers, queued output), not in heapUsed.
  const { heapUsed, external } = Deno.memoryUsage();
  return heapUsed + external;
}

Deno.test("fuzzed input on both ports does not disturb a QoS 2 stream, the broker keeps answering and its memory returns near its baseline", async () => {
  const seed = Number(Deno.env.get("FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
  console.log(`fuzz seed ${seed} (repeat with FUZZ_SEED=${seed})`);
  const rng = new Rng(seed);
  const gc = exposeGc();
  // Errors the broker logs (a failed handler, a dead letter it could not store...) are
  // bugs whatever the input: capture them.
  const errors: string[] = [];
  await setupLogging({ level: "error", format: "json", write: (line) => errors.push(line) });
  try {
    await run(seed, rng, gc);
  } finally {
    await resetLogging();
  }
  assert.deepEqual(errors, [], "the broker logged errors");
});

async function run(seed: number, rng: Rng, gc: (() => void) | null): Promise<void> {
  await using b = await startTestBroker({
    maxLineBytes: MAX_LINE,
    retryInterval: 10_000,
    loginTimeout: 1000,
    deadLetterMax: 1000,
    writeBufferBytes: 64 * 1024,
    maxConnectionsPerAddress: 1000,
  });
  await using good = await subscriber(b, "good-consumer", "stream");
  await using pub = await LineClient.connect(b.publisherPort);

  /** Runs fuzz connections, CONCURRENT at a time, until `ms` pass or `max` have run. */
  const fuzz = async (ms: number, max: number): Promise<number> => {
    const until = performance.now() + ms;
    let started = 0;
    const running = new Set<Promise<void>>();
    while (performance.now() < until && started < max) {
      while (running.size < CONCURRENT && started < max) {
        const consumerPort = rng.chance(0.5);
        const task = fuzzConnection(
          consumerPort ? b.consumerPort : b.publisherPort,
          consumerPort,
          new Rng(seed + 7919 * ++started),
        );
        running.add(task);
        task.finally(() => running.delete(task));
      }
      await Promise.race(running);
    }
    await Promise.all(running);
    return started;
  };

  // A warm-up round, so that what is built once (code, caches, topics) is in the baseline.
  await fuzz(300, 40);
  await waitFor(() => b.connections.size === 2, "the warm-up connections to close", 5000);
  const baseline = await heapAfterGc(gc);

  // The well-behaved pair, paced to span the fuzzing.
  const started = performance.now();
  const ids: number[] = [];
  const publishing = (async () => {
    for (let i = 0; i < STREAM_MESSAGES; i++) {
      ids.push(await publish(pub, "stream", { seq: i }));
      await sleep(FUZZ_MS / STREAM_MESSAGES / 2);
    }
  })();
  const consuming = completeAll(good, STREAM_MESSAGES);
  const connections = await fuzz(FUZZ_MS, MAX_CONNECTIONS);
  await publishing;
  const delivered = await consuming;
  const elapsed = Math.round(performance.now() - started);

  // Exactly once, in order: the ids the publisher got back, each with its sequence.
  assert.deepEqual(delivered.map((m) => m.msgId), ids);
  assert.deepEqual(delivered.map((m) => (m.msg as { seq: number }).seq), [...ids.keys()]);
  await good.expectSilence(200);

  // Every fuzz connection is gone; the broker still answers a newcomer.
  await waitFor(() => b.connections.size === 2, "the fuzz connections to close", 5000);
  await waitFor(
    () => b.broker.sessionNames.join() === "good-consumer",
    "the fuzz sessions to end",
    5000,
  );
  await using fresh = await subscriber(b, "fresh", "after-fuzz");
  const id = await publish(pub, "after-fuzz", "still answering");
  assert.equal((await receive(fresh)).msgId, id);

  const after = await heapAfterGc(gc);
  const grown = after - baseline;
  const memory = `${mb(baseline)} → ${mb(after)} (${gc ? "after GC" : "no GC available"})`;
  console.log(
    `${connections} fuzz connections in ${elapsed} ms sent ${mb(stats.sent)}, read ` +
      `${mb(stats.received)}, ${stats.closedByBroker} closed by the broker; heap+external ` +
      `${memory}; ${b.broker.pendingCount} fuzz PUBs await PUBREL`,
  );
  assert.ok(connections >= 100, `only ${connections} fuzz connections ran`);
  // Accepted fuzz PUBs that were never released stay in memory by design (a PUBREL may
  // still come), but they are few and small. The bound still catches a leak of what each
  // connection holds (a 64 KiB read buffer, its streams and session: 20+ MB for 300+
  // connections). Without gc() the heap is only loosely comparable, hence a loose bound.
  const bound = gc ? 12 * 2 ** 20 : 96 * 2 ** 20;
  assert.ok(grown < bound, `heap grew by ${mb(grown)} (bound ${mb(bound)})`);
}

function mb(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MB`;
}
