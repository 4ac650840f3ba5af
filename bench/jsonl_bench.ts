/**
 * The group-commit probe: JSON-line throughput of N publishers → N consumers on their own
 * topics, full QoS 2 handshakes both ways, against a broker in THIS process on a
 * temporary KV file, so that it can read the store's commit statistics. The benchmark
 * suite proper (`deno task bench`, bench/bench.ts) runs the broker as a child process.
 * Prints messages per second and how many operations each KV atomic carried (the group
 * commit factor). Bounded: a fixed number of messages, and a deadline.
 *
 *   deno run --unstable-kv --allow-net --allow-read --allow-write bench/jsonl_bench.ts \
 *     [--pairs 10] [--messages 2000]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { configFor } from "../src/config.ts";
import { startBroker } from "../src/server.ts";
import type { KvStore } from "../src/store/kv_store.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    pairs: { type: "string", default: "10" },
    messages: { type: "string", default: "2000" },
    "deadline-ms": { type: "string", default: "120000" },
  },
});
const PAIRS = Number(values.pairs);
const MESSAGES = Number(values.messages);
const DEADLINE = Date.now() + Number(values["deadline-ms"]);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A minimal raw-socket line client: the load generator must not be the bottleneck. */
class Client {
  conn: Deno.TcpConn;
  #rest = "";
  #buf = new Uint8Array(256 * 1024);
  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }
  static async connect(port: number) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new Client(conn);
  }
  async write(text: string) {
    const bytes = encoder.encode(text);
    let n = 0;
    while (n < bytes.length) n += await this.conn.write(bytes.subarray(n));
  }
  /** Reads whatever lines are available (at least one). */
  async lines(): Promise<string[]> {
    for (;;) {
      if (Date.now() > DEADLINE) throw new Error("deadline passed");
      const n = await this.conn.read(this.#buf);
      if (n === null) throw new Error("connection closed");
      this.#rest += decoder.decode(this.#buf.subarray(0, n), { stream: true });
      const parts = this.#rest.split("\r\n");
      this.#rest = parts.pop() ?? "";
      if (parts.length > 0) return parts;
    }
  }
}

async function publisher(port: number, topic: string): Promise<void> {
  const c = await Client.connect(port);
  const WINDOW = 100;
  let sent = 0;
  let done = 0;
  const pub = JSON.stringify({ type: "PUB", topic, msg: "x".repeat(100) }) + "\n";
  await c.write(pub.repeat(Math.min(WINDOW, MESSAGES)));
  sent = Math.min(WINDOW, MESSAGES);
  while (done < MESSAGES) {
    let out = "";
    for (const line of await c.lines()) {
      const m = JSON.parse(line);
      if (m.type === "PUBREC") out += `{"type":"PUBREL","msgId":${m.msgId}}\n`;
      else if (m.type === "PUBCOMP") {
        done++;
        if (sent < MESSAGES) {
          out += pub;
          sent++;
        }
      } else throw new Error(`publisher got ${line}`);
    }
    if (out) await c.write(out);
  }
  c.conn.close();
}

async function consumer(port: number, name: string, topic: string, ready: () => void) {
  const c = await Client.connect(port);
  await c.write(`log ${name}\n{"type":"SUB","topic":"${topic}"}\n`);
  let got = 0;
  let okSeen = false;
  while (got < MESSAGES) {
    let out = "";
    for (const line of await c.lines()) {
      if (line === "OK") {
        if (!okSeen) ready();
        okSeen = true;
        continue;
      }
      if (line === "Please login!" || line === "Successfully logged in!") continue;
      const m = JSON.parse(line);
      if (m.type === "PUB") out += `{"type":"PUBREC","msgId":${m.msgId}}\n`;
      else if (m.type === "PUBREL") {
        out += `{"type":"PUBCOMP","msgId":${m.msgId}}\n`;
        got++;
      }
    }
    if (out) await c.write(out);
  }
  c.conn.close();
}

const dataDir = await Deno.makeTempDir({ prefix: "mb-bench-" });
const running = await startBroker(
  configFor({ dataDir, hostname: "127.0.0.1", consumerPort: 0, publisherPort: 0 }),
);
try {
  const readies: Promise<void>[] = [];
  const consumers: Promise<void>[] = [];
  for (let i = 0; i < PAIRS; i++) {
    const { promise, resolve } = Promise.withResolvers<void>();
    readies.push(promise);
    consumers.push(consumer(running.consumerPort, `c${i}`, `bench${i}`, resolve));
  }
  await Promise.all(readies);
  const store = running.broker.store as KvStore;
  const before = { ...store.commitStats };
  const t0 = performance.now();
  await Promise.all([
    ...consumers,
    ...Array.from({ length: PAIRS }, (_, i) => publisher(running.publisherPort, `bench${i}`)),
  ]);
  const seconds = (performance.now() - t0) / 1000;
  const after = store.commitStats;
  const atomics = after.atomics - before.atomics;
  const ops = after.operations - before.operations;
  const total = PAIRS * MESSAGES;
  console.log(`JSON-line QoS 2, ${PAIRS} publishers -> ${PAIRS} consumers, ${MESSAGES} each`);
  console.log(`  delivered ${total} messages in ${seconds.toFixed(2)} s`);
  console.log(`  throughput ${(total / seconds).toFixed(0)} msg/s (end to end, both handshakes)`);
  console.log(
    `  KV atomics ${atomics} for ${ops} operations: ${(ops / atomics).toFixed(1)} per atomic`,
  );
} finally {
  await running.stop();
  await Deno.remove(dataDir, { recursive: true });
}
