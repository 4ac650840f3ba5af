/**
 * MQTT QoS 2 exactly-once across SIGKILL (docs/mqtt.md, section 6).
 *
 * A broker runs as a child process (`main.ts`) on a temporary data directory. A
 * persistent QoS 2 subscriber and a persistent QoS 2 publisher (fixed client ids, clean
 * session 0 / Session Expiry 3600) stream numbered messages (payload = the number)
 * through one topic, as fast as their windows allow. After a random number of packets
 * (seeded: `MQTT_SIGKILL_SEED=n` repeats a run) the broker is killed with SIGKILL and
 * restarted on the same directory (on a new port), twice; the last run drains the
 * stream, and one more graceful restart checks that nothing is sent again.
 *
 * Both clients are raw MQTT over `Deno.connect` (our codec), not MQTT.js: the broker
 * comes back on a new port, so each restart needs a new connection, and MQTT.js keeps
 * its QoS 2 state (outgoing packet ids, the receiver's unreleased ids) in the client
 * object. Here that state lives in the test across connections, as a conforming
 * client keeps it across reconnects:
 *
 * - the publisher resends every unacknowledged PUBLISH with DUP and its original packet
 *   identifier, and every PUBREL it owes, in their original order, then goes on; a
 *   message whose PUBCOMP arrived is never sent again;
 * - the subscriber is the spec's receiver "Method B": a message goes to the application
 *   when its packet identifier is first seen, the identifier is remembered until its
 *   PUBREL, and a PUBLISH with a remembered identifier is answered PUBREC only.
 *
 * So the application sees each message exactly once, in order, if and only if the
 * broker keeps its side: a PUBLISH with a stored receipt is not stored again, and an
 * outbound message is resent after a crash only with its original packet identifier
 * (and never once its PUBREC was stored). Checked, on the fly and at the end: the
 * application gets 1..N, each once, in order; every PUBREC'd message arrives; a
 * remembered identifier only comes back as a DUP of the same message; both sessions
 * are present after each restart; nothing more arrives once everything is complete.
 *
 * The subscriber also sends its PUBCOMPs in shuffled small batches (their order is
 * free in MQTT), so that the broker completes messages above its position and stores
 * them as "done"; a last, scripted test kills the broker right where that matters for
 * packet identifiers.
 *
 * Every wait is bounded; no sleeps drive the protocol. `MQTT_SIGKILL_KILLS` and
 * `MQTT_SIGKILL_TOTAL` make a longer soak (e.g. 8 and 3000); `MQTT_SIGKILL_DEBUG=prefix`
 * writes each killed broker's log and its store (but the message log) to `prefix.*`.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  createPacketParser,
  encodePacket,
  type OutboundPacket,
  type Packet,
} from "../src/transport/mqtt_codec.ts";
import { ChildBroker } from "./helpers.ts";
import { prng } from "./prng.ts";

const TOPIC = "sigkill/stream";
/** Messages per run. */
const TOTAL = Number(Deno.env.get("MQTT_SIGKILL_TOTAL") ?? 1000);
/** PUBLISHes the publisher has awaiting PUBCOMP at most (pipelined). */
const PUBLISH_WINDOW = 16;
/** Receive Maximum of the v5 subscriber: the broker's outbound window for it. */
const SUBSCRIBER_WINDOW = 8;
/** Range of the packets both clients receive from a (re)start to the kill. */
const KILL_AFTER: [number, number] = [10, 700];
/** Kills per run. */
const KILLS = Number(Deno.env.get("MQTT_SIGKILL_KILLS") ?? 2);
/** Bound on every wait for progress. */
const WAIT_MS = 10_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A broken rule of the broker: fails the test even after a kill. */
class Violation extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Violation";
  }
}

/** What one run shares: the first failure, the kill switch of the current broker. */
class Run {
  failure: Error | null = null;
  killed = false;
  packets = 0;
  threshold = Infinity;
  broker: ChildBroker | null = null;

  /** `brokerArgs`: flags added to every start of the broker. */
  constructor(readonly seed: number, readonly brokerArgs: string[] = []) {}

  fail(err: Error): void {
    this.failure ??= err;
    this.kill();
  }

  /** Counts a packet received by a client; kills the broker at the threshold. */
  packet(): void {
    if (++this.packets >= this.threshold) this.kill();
  }

  kill(): void {
    if (this.killed || !this.broker) return;
    this.killed = true;
    try {
      this.broker.process.kill("SIGKILL");
    } catch {
      // already exited
    }
  }

  /** A new broker: packets are counted from 0 up to `threshold`. */
  started(broker: ChildBroker, threshold: number): void {
    this.broker = broker;
    this.killed = false;
    this.packets = 0;
    this.threshold = threshold;
  }

  /** Waits (bounded) until `cond` holds; fails at once on a recorded failure. */
  async until(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (this.failure) throw this.failure;
      if (cond()) return;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** One MQTT connection with raw packets; its owner handles every packet after CONNACK. */
class RawClient {
  readonly #conn: Deno.TcpConn;
  readonly #version: 4 | 5;
  readonly #parser;
  readonly #run: Run;
  readonly #name: string;
  readonly #onPacket: (p: Packet, client: RawClient) => void;
  #writing: Promise<void> = Promise.resolve();
  #connack = Promise.withResolvers<Packet & { cmd: "connack" }>();
  #closed = false;
  /** Set once the connection ended (end of stream or an error). */
  eof = false;
  readonly reading: Promise<void>;

  private constructor(
    conn: Deno.TcpConn,
    version: 4 | 5,
    run: Run,
    name: string,
    onPacket: (p: Packet, client: RawClient) => void,
  ) {
    this.#conn = conn;
    // Set before reading: packets may follow the CONNACK in the same read.
    this.#onPacket = onPacket;
    this.#version = version;
    this.#parser = createPacketParser(version, 1 << 20);
    this.#run = run;
    this.#name = name;
    this.reading = this.#read();
  }

  /** Connects with clean session 0 and returns the client and its Session Present flag. */
  static async connect(
    run: Run,
    port: number,
    version: 4 | 5,
    clientId: string,
    properties: Record<string, unknown>,
    onPacket: (p: Packet, client: RawClient) => void,
  ): Promise<{ client: RawClient; present: boolean }> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const client = new RawClient(conn, version, run, clientId, onPacket);
    const connect: Record<string, unknown> = {
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: version,
      clean: false,
      clientId,
      keepalive: 0,
    };
    if (version === 5) connect.properties = properties;
    client.send(connect as unknown as OutboundPacket);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) =>
      timer = setTimeout(() => reject(new Error(`no CONNACK for ${clientId}`)), WAIT_MS)
    );
    try {
      const connack = await Promise.race([client.#connack.promise, timeout]);
      const code = connack.reasonCode ?? connack.returnCode ?? 0;
      if (code !== 0) throw new Violation(`CONNACK ${code} for ${clientId}`);
      return { client, present: connack.sessionPresent };
    } catch (err) {
      await client.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        for (const item of this.#parser.push(buf.subarray(0, n))) {
          if (item.kind !== "packet") {
            throw new Violation(`${this.#name}: bad packet from the broker: ${item.kind}`);
          }
          const p = item.packet;
          if (p.cmd === "connack") {
            this.#connack.resolve(p);
            continue;
          }
          this.#run.packet();
          if (p.cmd === "disconnect") {
            throw new Violation(`${this.#name}: DISCONNECT ${p.reasonCode} from the broker`);
          }
          this.#onPacket(p, this);
        }
      }
    } catch (err) {
      if (err instanceof Violation) this.#run.fail(err);
      // Otherwise the socket broke: the broker was killed, or the test closed it.
    } finally {
      this.eof = true;
      this.#connack.reject(new Error(`${this.#name}: connection ended before CONNACK`));
      this.#connack.promise.catch(() => {});
      if (!this.#run.killed && !this.#closed && !this.#run.failure) {
        this.#run.fail(new Violation(`${this.#name}: the broker closed the connection`));
      }
    }
  }

  /** Queues `packet` after every earlier one; write errors (after a kill) are ignored. */
  send(packet: OutboundPacket): void {
    if (this.#closed || this.eof) return;
    const bytes = encodePacket(packet, this.#version);
    this.#writing = this.#writing.then(async () => {
      let n = 0;
      while (n < bytes.length) n += await this.#conn.write(bytes.subarray(n));
    }).catch(() => {});
  }

  /** DISCONNECT, then waits (bounded) for the broker to close, then closes. */
  async disconnect(): Promise<void> {
    this.send({ cmd: "disconnect" } as OutboundPacket);
    await this.#writing;
    this.#closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.reading, new Promise((r) => timer = setTimeout(r, 2000))]);
    clearTimeout(timer);
    await this.close();
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#writing;
    try {
      this.#conn.close();
    } catch {
      // closed already
    }
    await this.reading;
  }
}

/** The publisher's QoS 2 state, kept across its connections. */
class Publisher {
  readonly clientId: string;
  /** Next number to publish for the first time. */
  next = 1;
  /** Packet id → message not yet completed, in the order first sent. */
  readonly inflight = new Map<number, { num: number; phase: "publish" | "pubrel" }>();
  /** Numbers answered PUBREC, and PUBCOMP. */
  readonly recs = new Set<number>();
  readonly comps = new Set<number>();
  resentPublishes = 0;
  resentReleases = 0;
  received = 0;
  #nextId = 1;
  #client: RawClient | null = null;
  readonly #run: Run;
  readonly #version: 4 | 5;

  constructor(run: Run, version: 4 | 5) {
    this.#run = run;
    this.#version = version;
    this.clientId = `sigkill-pub-v${version}`;
  }

  get done(): boolean {
    return this.comps.size === TOTAL && this.inflight.size === 0;
  }

  /** Connects; after a restart resends what it owes, then publishes on. */
  async connect(port: number, resumed: boolean): Promise<RawClient> {
    const { client, present } = await RawClient.connect(
      this.#run,
      port,
      this.#version,
      this.clientId,
      { sessionExpiryInterval: 3600 },
      (p, c) => this.#onPacket(p, c),
    );
    this.#client = client;
    if (present !== resumed) {
      await client.close();
      throw new Violation(`publisher: Session Present ${present}, expected ${resumed}`);
    }
    // Unacknowledged PUBLISHes again with DUP and their ids, owed PUBRELs again, in
    // their original order, v5 [MQTT-4.4.0-1], [MQTT-4.6.0-1], [MQTT-4.6.0-3].
    for (const [id, f] of this.inflight) {
      if (f.phase === "publish") {
        this.resentPublishes++;
        this.#publish(id, f.num, true);
      } else {
        this.resentReleases++;
        client.send({ cmd: "pubrel", messageId: id });
      }
    }
    this.#pump();
    return client;
  }

  #publish(id: number, num: number, dup: boolean): void {
    this.#client?.send({
      cmd: "publish",
      topic: TOPIC,
      payload: encoder.encode(String(num)),
      qos: 2,
      dup,
      retain: false,
      messageId: id,
    });
  }

  #pump(): void {
    while (!this.#run.killed && this.inflight.size < PUBLISH_WINDOW && this.next <= TOTAL) {
      const id = this.#nextId++;
      const num = this.next++;
      this.inflight.set(id, { num, phase: "publish" });
      this.#publish(id, num, false);
    }
  }

  /** Handles `p`; answers go to `client`, the connection it came on. */
  #onPacket(p: Packet, client: RawClient): void {
    this.received++;
    if (p.cmd !== "pubrec" && p.cmd !== "pubcomp") {
      throw new Violation(`publisher got ${p.cmd}`);
    }
    const id = p.messageId as number;
    const f = this.inflight.get(id);
    const code = p.reasonCode ?? 0;
    if (code >= 0x80) throw new Violation(`publisher: ${p.cmd} ${id} with reason code ${code}`);
    if (p.cmd === "pubrec") {
      if (!f || f.phase !== "publish") {
        throw new Violation(
          `publisher: PUBREC ${id} for ${f ? "a released message" : "no PUBLISH"}`,
        );
      }
      f.phase = "pubrel";
      this.recs.add(f.num);
      client.send({ cmd: "pubrel", messageId: id });
      return;
    }
    if (!f || f.phase !== "pubrel") {
      throw new Violation(
        `publisher: PUBCOMP ${id} for ${f ? "an unreleased message" : "nothing"}`,
      );
    }
    if (this.comps.has(f.num)) throw new Violation(`publisher: ${f.num} completed twice`);
    this.inflight.delete(id);
    this.comps.add(f.num);
    this.#pump();
  }
}

/** The subscriber: QoS 2 receiver "Method B", its state kept across connections. */
class Subscriber {
  readonly clientId: string;
  /** What the application got, in order. */
  readonly delivered: number[] = [];
  /** Packet ids answered PUBREC and not yet released → the payload they carried. */
  readonly unreleased = new Map<number, string>();
  /** PUBLISHes of a remembered id (resent by the broker, not for the application). */
  duplicates = 0;
  /** PUBLISHes arriving with DUP set, and PUBRELs of ids already released. */
  dupFlags = 0;
  staleReleases = 0;
  /** PUBCOMPs sent at another place than their PUBREL's in the order of arrival. */
  reordered = 0;
  received = 0;
  #client: RawClient | null = null;
  readonly #run: Run;
  readonly #version: 4 | 5;
  readonly #rand: () => number;
  /** Released ids whose PUBCOMP is held back, to be sent in a shuffled order. */
  #held: number[] = [];
  #batch = 1;

  constructor(run: Run, version: 4 | 5) {
    this.#run = run;
    this.#version = version;
    this.#rand = prng(run.seed ^ 0x5eed);
    this.clientId = `sigkill-sub-v${version}`;
  }

  get done(): boolean {
    return this.delivered.length === TOTAL && this.unreleased.size === 0;
  }

  async connect(port: number, resumed: boolean): Promise<RawClient> {
    // PUBCOMPs held on the old connection are owed again when the PUBRELs come again
    // (cleared first: they may follow the CONNACK in its read).
    this.#held = [];
    const { client, present } = await RawClient.connect(
      this.#run,
      port,
      this.#version,
      this.clientId,
      { sessionExpiryInterval: 3600, receiveMaximum: SUBSCRIBER_WINDOW },
      (p, c) => this.#onPacket(p, c),
    );
    this.#client = client;
    if (present !== resumed) {
      await client.close();
      throw new Violation(`subscriber: Session Present ${present}, expected ${resumed}`);
    }
    return client;
  }

  /** SUBSCRIBE at QoS 2 (first connection only: the session keeps it). */
  async subscribe(): Promise<void> {
    let granted: number[] | null = null;
    this.#suback = (g) => granted = g;
    this.#client?.send({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: TOPIC, qos: 2 }],
    });
    await this.#run.until(() => granted !== null, "SUBACK");
    assert.deepEqual(granted, [2]);
  }

  #suback: ((granted: number[]) => void) | null = null;

  /** Handles `p`; answers go to `client`, the connection it came on. */
  #onPacket(p: Packet, client: RawClient): void {
    this.received++;
    if (p.cmd === "suback" && this.#suback) {
      this.#suback(p.granted as number[]);
      this.#suback = null;
      return;
    }
    if (p.cmd === "pubrel") {
      const id = p.messageId as number;
      // Answered also for an unknown id (its PUBCOMP may have been lost in the kill).
      if (!this.unreleased.delete(id)) this.staleReleases++;
      this.#held.push(id);
      // PUBCOMPs may go in any order (MQTT orders PUBACK, PUBREC and PUBREL only,
      // [MQTT-4.6.0-2..4]): they are held in small batches and sent shuffled, so the
      // broker completes messages out of order. Nothing else can come while no PUBREL
      // is due, so then the batch goes at once.
      if (this.#held.length >= this.#batch || this.unreleased.size === 0) {
        const arrived = this.#held;
        const ids = [...arrived];
        this.#held = [];
        for (let i = ids.length - 1; i > 0; i--) {
          const j = Math.floor(this.#rand() * (i + 1));
          [ids[i], ids[j]] = [ids[j]!, ids[i]!];
        }
        this.reordered += ids.filter((held, i) => held !== arrived[i]).length;
        for (const held of ids) client.send({ cmd: "pubcomp", messageId: held });
        this.#batch = 1 + Math.floor(this.#rand() * 4);
      }
      return;
    }
    if (p.cmd !== "publish") throw new Violation(`subscriber got ${p.cmd}`);
    const id = p.messageId as number;
    if (p.qos !== 2 || !id) throw new Violation(`subscriber: PUBLISH at QoS ${p.qos}, id ${id}`);
    if (p.topic !== TOPIC) throw new Violation(`subscriber: PUBLISH on ${p.topic}`);
    const text = decoder.decode(p.payload as Uint8Array);
    if (p.dup) this.dupFlags++;
    const seen = this.unreleased.get(id);
    if (seen !== undefined) {
      // Method B: a remembered id is the same message again; not for the application.
      if (seen !== text) {
        throw new Violation(
          `subscriber: packet id ${id} carried ${seen} (not released yet) and now ${text}`,
        );
      }
      if (!p.dup) throw new Violation(`subscriber: ${text} sent again with id ${id} without DUP`);
      this.duplicates++;
      client.send({ cmd: "pubrec", messageId: id });
      return;
    }
    const num = Number(text);
    const last = this.delivered.at(-1) ?? 0;
    if (num <= last) {
      throw new Violation(
        `subscriber: ${num} delivered again (id ${id}, dup ${p.dup}) after ${last}`,
      );
    }
    if (num !== last + 1) throw new Violation(`subscriber: ${num} after ${last}: lost messages`);
    this.delivered.push(num);
    this.unreleased.set(id, text);
    client.send({ cmd: "pubrec", messageId: id });
  }
}

/** Starts the broker with MQTT on any free port (a new one after each restart). */
function startBroker(dataDir: string, args: string[] = []): Promise<ChildBroker> {
  return ChildBroker.start(dataDir, ["--mqtt-port=-1", ...args]);
}

/** With `MQTT_SIGKILL_DEBUG`: the killed broker's log, and its store but the message log. */
async function dumpForDebugging(
  run: Run,
  n: number,
  dataDir: string,
  output: string,
  pub: Publisher,
  sub: Subscriber,
): Promise<void> {
  const prefix = Deno.env.get("MQTT_SIGKILL_DEBUG");
  if (!prefix) return;
  await Deno.writeTextFile(`${prefix}.${run.seed}.${n}.log`, output);
  const kv = await Deno.openKv(`${dataDir}/broker.kv`);
  const lines: string[] = [];
  try {
    for await (const e of kv.list({ prefix: [] })) {
      if (e.key[0] !== "log") lines.push(`${JSON.stringify(e.key)} ${JSON.stringify(e.value)}`);
    }
  } finally {
    kv.close();
  }
  lines.push(`subscriber: ${sub.delivered.length} delivered, unreleased ids and payloads:`);
  lines.push(JSON.stringify([...sub.unreleased]));
  lines.push(`publisher: next ${pub.next}, in flight: ${JSON.stringify([...pub.inflight])}`);
  await Deno.writeTextFile(`${prefix}.${run.seed}.${n}.kv`, lines.join("\n"));
}

interface PhaseReport {
  threshold: number;
  packets: number;
  published: number;
  completed: number;
  delivered: number;
}

/** One broker life: connect both clients, stream, and (unless last) kill at the threshold. */
async function phase(
  run: Run,
  dataDir: string,
  pub: Publisher,
  sub: Subscriber,
  n: number,
  last: boolean,
): Promise<PhaseReport> {
  const broker = await startBroker(dataDir, run.brokerArgs);
  const rand = prng(run.seed + n);
  const [lo, hi] = KILL_AFTER;
  const threshold = last ? Infinity : lo + Math.floor(rand() * (hi - lo));
  // The first run counts from its SUBACK on, later ones from their first packet: a
  // kill may come while the sessions are being resumed.
  run.started(broker, n === 1 ? Infinity : threshold);
  const before = { comps: pub.comps.size, delivered: sub.delivered.length, next: pub.next };
  const clients: RawClient[] = [];
  let stopped = false;
  /** Connects a client; false when the kill came first. */
  const connect = async (c: { connect(port: number, resumed: boolean): Promise<RawClient> }) => {
    try {
      clients.push(await c.connect(broker.mqttPort, n > 1));
      return true;
    } catch (err) {
      if (err instanceof Violation || !run.killed || run.failure) throw err;
      return false;
    }
  };
  try {
    if (await connect(sub)) {
      if (n === 1) {
        await sub.subscribe();
        run.threshold = threshold;
      }
      await connect(pub);
    }
    if (!last) {
      // Should the stream end first, the kill comes then.
      await run.until(() => run.killed || (pub.done && sub.done), `the kill of run ${n}`);
      run.kill();
      await run.until(() => clients.every((c) => c.eof), "the connections to end");
    } else {
      await run.until(() => pub.done && sub.done, "the end of the stream");
      // Nothing more may come once everything is complete.
      const received = sub.received;
      await new Promise((r) => setTimeout(r, 300));
      if (run.failure) throw run.failure;
      assert.equal(sub.received, received, "packets after the stream was complete");
      for (const c of clients) await c.disconnect();
      const { code, output } = await broker.stop("SIGTERM");
      stopped = true;
      assert.equal(code, 0, output);
    }
    return {
      threshold,
      packets: run.packets,
      published: pub.next - before.next,
      completed: pub.comps.size - before.comps,
      delivered: sub.delivered.length - before.delivered,
    };
  } finally {
    run.kill();
    for (const c of clients) await c.close();
    if (!stopped) {
      const { output } = await broker.stop("SIGKILL");
      await dumpForDebugging(run, n, dataDir, output, pub, sub);
    }
  }
}

/**
 * After the stream: one more (graceful) restart. Both sessions are still there, and
 * nothing is sent again: every completion was stored.
 */
async function quietAfterRestart(run: Run, dataDir: string, pub: Publisher, sub: Subscriber) {
  const broker = await startBroker(dataDir, run.brokerArgs);
  run.started(broker, Infinity);
  const clients: RawClient[] = [];
  let stopped = false;
  try {
    clients.push(await sub.connect(broker.mqttPort, true));
    clients.push(await pub.connect(broker.mqttPort, true));
    const received = sub.received + pub.received;
    await new Promise((r) => setTimeout(r, 300));
    if (run.failure) throw run.failure;
    assert.equal(sub.received + pub.received, received, "packets after a restart at the end");
    for (const c of clients) await c.disconnect();
    const { code, output } = await broker.stop("SIGTERM");
    stopped = true;
    assert.equal(code, 0, output);
  } finally {
    run.kill();
    for (const c of clients) await c.close();
    if (!stopped) await broker.stop("SIGKILL");
  }
}

async function sigkillRun(version: 4 | 5, brokerArgs: string[] = []): Promise<void> {
  const seed = Number(Deno.env.get("MQTT_SIGKILL_SEED") ?? Math.floor(Math.random() * 2 ** 31));
  const run = new Run(seed, brokerArgs);
  const pub = new Publisher(run, version);
  const sub = new Subscriber(run, version);
  const dataDir = await Deno.makeTempDir({ prefix: "mb-mqtt-sigkill-" });
  const reports: PhaseReport[] = [];
  const context = () =>
    `seed ${seed} (repeat with MQTT_SIGKILL_SEED=${seed}): ` + JSON.stringify({
      reports,
      resentPublishes: pub.resentPublishes,
      resentReleases: pub.resentReleases,
      duplicates: sub.duplicates,
      dupFlags: sub.dupFlags,
      staleReleases: sub.staleReleases,
      reordered: sub.reordered,
    });
  try {
    try {
      for (let n = 1; n <= KILLS + 1; n++) {
        reports.push(await phase(run, dataDir, pub, sub, n, n === KILLS + 1));
      }
      await quietAfterRestart(run, dataDir, pub, sub);
    } catch (err) {
      if (err instanceof Error) err.message += `\n${context()}`;
      throw err;
    }
    const all = Array.from({ length: TOTAL }, (_, i) => i + 1);
    // Every message was acknowledged to the publisher in the end, once.
    assert.deepEqual([...pub.recs].sort((a, b) => a - b), all, context());
    assert.deepEqual([...pub.comps].sort((a, b) => a - b), all, context());
    // The application got each exactly once, in order (also checked on the fly).
    assert.deepEqual(sub.delivered, all, context());
    // The kills came mid-stream: the last run still had messages to carry.
    assert.ok(reports.at(-1)!.completed > 0, `the kills came after the stream: ${context()}`);
    console.log(`MQTT ${version === 5 ? "5.0" : "3.1.1"} SIGKILL: ${context()}`);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test({
  name:
    "MQTT 5.0 SIGKILL twice during a QoS 2 stream: every message reaches the subscriber exactly once, in order",
  fn: () => sigkillRun(5),
});

Deno.test({
  name:
    "MQTT 5.0 SIGKILL twice during a QoS 2 stream with a commit delay (--commit-delay 5): still exactly once, in order",
  fn: () => sigkillRun(5, ["--commit-delay", "5"]),
});

Deno.test({
  name:
    "MQTT 3.1.1 SIGKILL twice during a QoS 2 stream: every message reaches the subscriber exactly once, in order",
  fn: () => sigkillRun(4),
});

/** A raw client driven step by step: packets queue up and are awaited one at a time. */
class Scripted {
  readonly #queue: Packet[] = [];
  #waiter: (() => void) | null = null;
  client!: RawClient;

  private constructor(readonly name: string) {}

  static async connect(
    run: Run,
    port: number,
    clientId: string,
    properties: Record<string, unknown>,
  ): Promise<{ s: Scripted; present: boolean }> {
    const s = new Scripted(clientId);
    const { client, present } = await RawClient.connect(run, port, 5, clientId, properties, (p) => {
      s.#queue.push(p);
      s.#waiter?.();
    });
    s.client = client;
    return { s, present };
  }

  send(packet: OutboundPacket): void {
    this.client.send(packet);
  }

  /** The next packet (bounded wait). */
  async next(): Promise<Packet> {
    const deadline = Date.now() + WAIT_MS;
    while (this.#queue.length === 0) {
      if (this.client.eof) throw new Error(`${this.name}: connection ended`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no packet within ${WAIT_MS} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiter = r;
        timer = setTimeout(r, Math.min(left, 50));
      });
      clearTimeout(timer);
      this.#waiter = null;
    }
    return this.#queue.shift() as Packet;
  }

  /** The next packet, checked to be a `cmd` with these fields. */
  async expect(cmd: string, fields: Record<string, unknown> = {}): Promise<Packet> {
    const p = await this.next();
    const got = p as unknown as Record<string, unknown>;
    assert.equal(p.cmd, cmd, `${this.name}: expected ${cmd}, got ${JSON.stringify(essence(p))}`);
    for (const [k, v] of Object.entries(fields)) {
      assert.deepEqual(got[k], v, `${this.name}: ${k} of ${JSON.stringify(essence(p))}`);
    }
    return p;
  }

  /** A PUBLISH: its packet id and payload text. */
  async expectPublish(fields: Record<string, unknown> = {}): Promise<[number, string]> {
    const p = await this.expect("publish", fields) as Packet & { cmd: "publish" };
    return [p.messageId as number, decoder.decode(p.payload as Uint8Array)];
  }

  /** A whole QoS 2 exchange as the sender. */
  async publish(topic: string, id: number, text: string): Promise<void> {
    this.send({
      cmd: "publish",
      topic,
      payload: encoder.encode(text),
      qos: 2,
      dup: false,
      retain: false,
      messageId: id,
    });
    await this.expect("pubrec", { messageId: id });
    this.send({ cmd: "pubrel", messageId: id });
    await this.expect("pubcomp", { messageId: id });
  }

  /** Waits until the broker has handled everything sent before (PINGREQ/PINGRESP). */
  async ping(): Promise<void> {
    this.send({ cmd: "pingreq" });
    await this.expect("pingresp");
  }
}

/** A packet without its Buffers, for messages. */
function essence(p: Packet): Record<string, unknown> {
  const { payload, ...rest } = p as unknown as Record<string, unknown>;
  return payload instanceof Uint8Array ? { ...rest, payload: decoder.decode(payload) } : rest;
}

Deno.test("MQTT SIGKILL after out-of-order PUBCOMPs: a message sent after the restart keeps its packet id across the next kill", async () => {
  const run = new Run(0);
  const dataDir = await Deno.makeTempDir({ prefix: "mb-mqtt-sigkill-" });
  const subProps = { sessionExpiryInterval: 3600, receiveMaximum: 3 };
  const pubProps = { sessionExpiryInterval: 3600 };
  /** One broker life: `body` gets the broker's MQTT port, clients are closed after. */
  const life = async (body: (port: number, clients: Scripted[]) => Promise<void>) => {
    const broker = await startBroker(dataDir, run.brokerArgs);
    run.started(broker, Infinity);
    const clients: Scripted[] = [];
    try {
      await body(broker.mqttPort, clients);
      if (run.failure) throw run.failure;
    } finally {
      run.kill();
      for (const c of clients) await c.client.close();
      await broker.stop("SIGKILL");
    }
  };
  /** Makes sure every write the broker queued before is committed (one FIFO of commits). */
  const sync = async (pub: Scripted, sub: Scripted, id: number) => {
    await sub.ping();
    await pub.publish("sigkill/sync", id, "sync");
  };
  try {
    let tagB = 0;
    let tagC = 0;
    let tag4 = 0;
    let tag5 = 0;
    await life(async (port, clients) => {
      const { s: sub } = await Scripted.connect(run, port, "tags-sub", subProps);
      clients.push(sub);
      sub.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: TOPIC, qos: 2 }] });
      await sub.expect("suback", { granted: [2] });
      const { s: pub } = await Scripted.connect(run, port, "tags-pub", pubProps);
      clients.push(pub);
      for (const [i, m] of ["m1", "m2", "m3"].entries()) await pub.publish(TOPIC, i + 1, m);
      const tags: number[] = [];
      for (const m of ["m1", "m2", "m3"]) {
        const [tag, text] = await sub.expectPublish();
        assert.equal(text, m);
        tags.push(tag);
        sub.send({ cmd: "pubrec", messageId: tag });
      }
      for (const tag of tags) await sub.expect("pubrel", { messageId: tag });
      // m2 and m3 complete, m1 not: their entries stay, stored as done.
      [, tagB, tagC] = tags as [number, number, number];
      sub.send({ cmd: "pubcomp", messageId: tagB });
      sub.send({ cmd: "pubcomp", messageId: tagC });
      await sync(pub, sub, 10);
    });
    await life(async (port, clients) => {
      const { s: pub, present: pubPresent } = await Scripted.connect(
        run,
        port,
        "tags-pub",
        pubProps,
      );
      clients.push(pub);
      assert.ok(pubPresent);
      await pub.publish(TOPIC, 4, "m4");
      await pub.publish(TOPIC, 5, "m5");
      const { s: sub, present } = await Scripted.connect(run, port, "tags-sub", subProps);
      clients.push(sub);
      assert.ok(present);
      // m1's release again, then m4 and m5 fill the window of 3.
      const rel = await sub.expect("pubrel");
      [tag4] = await sub.expectPublish({ dup: false });
      [tag5] = await sub.expectPublish({ dup: false });
      // The application has m4 and m5 (Method B: their ids are remembered); their PUBRECs
      // are not sent before the kill. m1 completes: the position passes m2 and m3.
      sub.send({ cmd: "pubcomp", messageId: rel.messageId as number });
      await sync(pub, sub, 11);
    });
    await life(async (port, clients) => {
      const { s: sub, present } = await Scripted.connect(run, port, "tags-sub", subProps);
      clients.push(sub);
      assert.ok(present);
      // m4 and m5 again, as resends of the same packets: DUP and their ids. (Sent under
      // new ids, a Method B receiver would take them for new messages: duplicates.)
      const got = [await sub.expectPublish({ dup: true }), await sub.expectPublish({ dup: true })];
      assert.deepEqual(got, [[tag4, "m4"], [tag5, "m5"]], `ids of m2, m3: ${tagB}, ${tagC}`);
      for (const [tag] of got) {
        sub.send({ cmd: "pubrec", messageId: tag });
        await sub.expect("pubrel", { messageId: tag });
        sub.send({ cmd: "pubcomp", messageId: tag });
      }
      await sub.ping();
    });
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
