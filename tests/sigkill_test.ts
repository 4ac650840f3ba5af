/**
 * Durability proven by killing a real broker process with SIGKILL (issue 2, point 3).
 *
 * A broker runs as a child process (`main.ts`) on a temporary data directory. Several
 * publishers stream messages (PUB, then PUBREL once the PUBREC arrives) while one
 * consumer completes them (PUBREC/PUBCOMP); after a random number of lines the broker
 * is killed with SIGKILL, restarted on the same directory, and the stream goes on.
 * The client side records what the broker acknowledged, and the rules are checked:
 *
 * - every message the broker answered PUBCOMP for is completed by the consumer exactly
 *   once overall: no gap, no message it already completed;
 * - every PUB answered PUBREC but not PUBCOMP can be PUBREL'd after the restart;
 * - the consumer resumes exactly after its last PUBCOMP (its durable subscription
 *   resumes on login, without SUB): the first delivery after a restart is the message
 *   it had in flight (PUB again, or PUBREL if its PUBREC was stored) or the next one;
 * - delivery follows release order.
 *
 * Everything is driven by line counts, never by sleeps; the retry interval is long so
 * that no retry interferes, and every read has a timeout.
 *
 * @module
 */
import assert from "node:assert/strict";
import { ChildBroker, LineClient, loginConsumer, publish, receive } from "./helpers.ts";

const TOPIC = "durable";
const CONSUMER = "durable-consumer";
/** Long enough that no retry happens during the test: every line is an answer. */
const BROKER_ARGS = ["--retry-interval", "10000", "--retry-limit", "5"];
const PUBLISHERS = 3;
/** PUBs a publisher may have awaiting their PUBREC (pipelining). */
const WINDOW = 4;
/** Upper bound of messages per publisher and phase (the kill normally comes much earlier). */
const MAX_PER_PUBLISHER = 300;
/** Messages per publisher in the last phase, which is not killed. */
const FINAL_PER_PUBLISHER = 15;
/** Bound on the wait for any one line. */
const LINE_TIMEOUT_MS = 5000;

/** A broken rule of the broker: always fails the test, even after a kill. */
class Violation extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Violation";
  }
}

/** What the publishers learnt from the broker, across all phases. */
class Ledger {
  /** Event counter: orders PUBREL sends and PUBCOMP receipts of all publishers. */
  clock = 0;
  /** msgId → the `msg` its PUB carried. */
  content = new Map<number, string>();
  /** Ids answered PUBREC. */
  recs = new Set<number>();
  /** Ids answered PUBCOMP. */
  comps = new Set<number>();
  /** Id → event of its first PUBREL send. */
  relSentAt = new Map<number, number>();
  /** Id → event of its first PUBCOMP receipt. */
  compAt = new Map<number, number>();
  /** Id → the publisher that sent it, and the order of its PUBREL on that publisher. */
  origin = new Map<number, { publisher: string; order: number }>();

  tick(): number {
    return ++this.clock;
  }

  /** Ids answered PUBREC but not yet PUBCOMP, in the order of their first PUBREL. */
  unreleased(): number[] {
    const ids = [...this.recs].filter((id) => !this.comps.has(id));
    const at = (id: number) => this.relSentAt.get(id) ?? Infinity;
    return ids.sort((a, b) => at(a) - at(b) || a - b);
  }
}

/** Kills the broker once the clients of a phase have read `threshold` lines. */
class Killer {
  killed = false;
  #lines = 0;
  readonly broker: ChildBroker;
  readonly threshold: number;

  constructor(broker: ChildBroker, threshold: number) {
    this.broker = broker;
    this.threshold = threshold;
  }

  get lines(): number {
    return this.#lines;
  }

  line(): void {
    if (++this.#lines >= this.threshold) this.kill();
  }

  kill(): void {
    if (this.killed) return;
    this.killed = true;
    try {
      this.broker.process.kill("SIGKILL");
    } catch {
      // already exited
    }
  }
}

type Stage = "pub" | "rec-sent" | "rec-ok" | "comp-sent";

/** The consumer's view: what it completed, and the message it has in flight. */
class ConsumerModel {
  readonly ledger: Ledger;
  /** Ids completed (PUBCOMP answered OK, or skipped by the broker after a restart), in order. */
  completed: number[] = [];
  completedSet = new Set<number>();
  inflight: { id: number; stage: Stage } | null = null;
  /** Commands sent on the current connection whose OK is still due, in order. */
  awaiting: { type: "PUBREC" | "PUBCOMP"; id: number }[] = [];
  /** Set on login after a restart: the next delivery is checked against the resume rules. */
  afterRestart = false;
  /** How the consumer resumed after each restart, for the report. */
  resumes: string[] = [];

  constructor(ledger: Ledger) {
    this.ledger = ledger;
  }

  /** A new connection after a restart: nothing is awaited on it yet. */
  reconnected(afterRestart: boolean): void {
    this.awaiting = [];
    this.afterRestart = afterRestart;
  }

  #complete(id: number): void {
    if (this.completedSet.has(id)) throw new Violation(`msgId ${id} was completed twice`);
    this.completed.push(id);
    this.completedSet.add(id);
    this.inflight = null;
  }

  /** A PUB arrived: checks it against what was released and what is in flight. */
  onPub(id: number, topic: unknown, msg: unknown): void {
    if (topic !== TOPIC) throw new Violation(`PUB ${id} on topic ${topic}, expected ${TOPIC}`);
    const sent = this.ledger.content.get(id);
    if (sent === undefined) throw new Violation(`PUB of msgId ${id}, which no PUBREC announced`);
    if (msg !== sent) throw new Violation(`PUB ${id} carries ${msg}, its PUB carried ${sent}`);
    if (this.completedSet.has(id)) {
      throw new Violation(`msgId ${id} was delivered again after the consumer completed it`);
    }
    const f = this.inflight;
    if (this.afterRestart) {
      this.afterRestart = false;
      if (f && f.id === id) {
        // Its PUBREC was never stored (or never sent): the message comes again.
        if (f.stage !== "pub" && f.stage !== "rec-sent") {
          throw new Violation(
            `after the restart msgId ${id} was sent as PUB again, but its PUBREC had been ` +
              `answered OK (stage ${f.stage}): the broker should resume with its PUBREL`,
          );
        }
        this.resumes.push(`PUB ${id} again (was ${f.stage})`);
      } else if (f) {
        // Only a PUBCOMP the broker may have committed lets it move past the message.
        if (f.stage !== "comp-sent") {
          throw new Violation(
            `after the restart the broker skipped msgId ${f.id} (in flight, ${f.stage}) ` +
              `and sent ${id}`,
          );
        }
        this.resumes.push(`PUB ${id}: PUBCOMP of ${f.id} had committed`);
        this.#complete(f.id);
      } else {
        this.resumes.push(`PUB ${id} after the last completed`);
      }
    } else if (f) {
      throw new Violation(`PUB ${id} arrived while msgId ${f.id} is in flight (${f.stage})`);
    }
    this.inflight = { id, stage: "pub" };
  }

  /** A PUBREL arrived. */
  onRelease(id: number): void {
    if (this.completedSet.has(id)) {
      throw new Violation(`PUBREL of msgId ${id} after the consumer completed it`);
    }
    const f = this.inflight;
    if (!f || f.id !== id) {
      throw new Violation(`PUBREL of msgId ${id}, but ${f ? f.id : "nothing"} is in flight`);
    }
    if (this.afterRestart) {
      this.afterRestart = false;
      if (f.stage === "pub") {
        throw new Violation(`after the restart PUBREL ${id} came, but no PUBREC was ever sent`);
      }
      this.resumes.push(`PUBREL ${id} (was ${f.stage})`);
    } else if (f.stage !== "rec-sent" && f.stage !== "rec-ok") {
      throw new Violation(`PUBREL of msgId ${id} in stage ${f.stage}`);
    }
  }

  onOk(): void {
    const a = this.awaiting.shift();
    if (!a) throw new Violation("OK without a command awaiting it");
    const f = this.inflight;
    if (!f || f.id !== a.id) throw new Violation(`OK for ${a.type} ${a.id}, not in flight`);
    if (a.type === "PUBREC") {
      if (f.stage === "rec-sent") f.stage = "rec-ok";
    } else {
      this.#complete(a.id);
    }
  }
}

/**
 * One publisher: keeps up to {@link WINDOW} PUBs awaiting PUBREC, answers each PUBREC
 * with PUBREL, until `count` messages are complete or the broker is killed.
 */
async function runPublisher(
  c: LineClient,
  ledger: Ledger,
  killer: Killer,
  tag: string,
  count: number,
): Promise<void> {
  type Sent = { type: "PUB"; msg: string } | { type: "PUBREL"; id: number };
  const fifo: Sent[] = [];
  let next = 0;
  let pubs = 0;
  let releases = 0;
  try {
    while (next < count || fifo.length > 0) {
      while (!killer.killed && next < count && pubs < WINDOW) {
        const msg = `${tag}-${next++}`;
        fifo.push({ type: "PUB", msg });
        pubs++;
        await c.send(JSON.stringify({ type: "PUB", topic: TOPIC, msg }));
      }
      const line = await c.next(LINE_TIMEOUT_MS);
      if (line === null) {
        if (killer.killed) return;
        throw new Error(`publisher ${tag}: connection closed before the kill`);
      }
      killer.line();
      const head = fifo.shift();
      if (!head) throw new Violation(`publisher ${tag}: unexpected line ${line}`);
      const reply = JSON.parse(line);
      if (head.type === "PUB") {
        if (reply.type !== "PUBREC" || !Number.isInteger(reply.msgId)) {
          throw new Violation(`publisher ${tag}: PUB answered ${line}`);
        }
        const id = reply.msgId as number;
        if (ledger.content.has(id)) throw new Violation(`msgId ${id} was handed out twice`);
        ledger.content.set(id, head.msg);
        ledger.recs.add(id);
        pubs--;
        if (killer.killed) continue;
        ledger.relSentAt.set(id, ledger.tick());
        ledger.origin.set(id, { publisher: tag, order: releases++ });
        fifo.push({ type: "PUBREL", id });
        await c.send(JSON.stringify({ type: "PUBREL", msgId: id }));
      } else {
        if (line !== `{"msgId":${head.id},"type":"PUBCOMP"}`) {
          throw new Violation(`publisher ${tag}: PUBREL ${head.id} answered ${line}`);
        }
        ledger.comps.add(head.id);
        ledger.compAt.set(head.id, ledger.tick());
      }
    }
  } catch (err) {
    // After the kill a read or write fails, or the last line is cut: expected.
    if (err instanceof Violation || !killer.killed) throw err;
  }
}

/**
 * The consumer: answers each PUB with PUBREC and each PUBREL with PUBCOMP, until the
 * connection ends after the kill, or until `done()` holds.
 */
async function runConsumer(
  c: LineClient,
  model: ConsumerModel,
  killer: Killer,
  done: () => boolean = () => false,
): Promise<void> {
  // After the kill nothing is sent: the broker is gone.
  const answer = async (type: "PUBREC" | "PUBCOMP", id: number, stage: Stage) => {
    if (killer.killed) return;
    await c.send(JSON.stringify({ type, msgId: id, topic: TOPIC }));
    model.inflight = { id, stage };
    model.awaiting.push({ type, id });
  };
  try {
    while (!done()) {
      const line = await c.next(LINE_TIMEOUT_MS);
      if (line === null) {
        if (killer.killed) return;
        throw new Error("consumer: connection closed before the kill");
      }
      killer.line();
      if (line === "OK") {
        model.onOk();
        continue;
      }
      if (line.startsWith("ERROR")) throw new Violation(`consumer got ${line}`);
      const m = JSON.parse(line);
      const id = m.msgId as number;
      if (m.type === "PUB") {
        model.onPub(id, m.topic, m.msg);
        await answer("PUBREC", id, "rec-sent");
      } else if (m.type === "PUBREL" && Object.keys(m).length === 2) {
        model.onRelease(id);
        await answer("PUBCOMP", id, "comp-sent");
      } else {
        throw new Violation(`consumer got ${line}`);
      }
    }
  } catch (err) {
    if (err instanceof Violation || !killer.killed) throw err;
  }
}

/** Waits for every promise, then rethrows the first failure (so nothing runs on). */
async function settleAll(promises: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/**
 * PUBRELs every message answered PUBREC but not PUBCOMP (before a kill), in the order
 * they were first released; each must be answered PUBCOMP.
 */
async function releaseLeftovers(port: number, ledger: Ledger): Promise<number> {
  const ids = ledger.unreleased();
  await using p = await LineClient.connect(port);
  for (const id of ids) {
    if (!ledger.relSentAt.has(id)) ledger.relSentAt.set(id, ledger.tick());
    await p.send(JSON.stringify({ type: "PUBREL", msgId: id }));
    const line = await p.next(LINE_TIMEOUT_MS);
    if (line !== `{"msgId":${id},"type":"PUBCOMP"}`) {
      throw new Violation(`PUBREL ${id} after the restart answered ${line}, expected PUBCOMP`);
    }
    ledger.comps.add(id);
    ledger.compAt.set(id, ledger.tick());
  }
  return ids.length;
}

interface PhaseReport {
  threshold: number;
  lines: number;
  released: number;
  completed: number;
  leftovers: number;
}

/**
 * One phase on a running broker: the consumer logs in (subscribing only the first
 * time), leftovers of the previous kill are released, publishers stream, and the broker
 * is killed after `threshold` lines (or when the publishers ran out of messages).
 */
async function killedPhase(
  broker: ChildBroker,
  model: ConsumerModel,
  ledger: Ledger,
  phase: number,
  threshold: number,
): Promise<PhaseReport> {
  const before = { released: ledger.comps.size, completed: model.completed.length };
  const killer = new Killer(broker, threshold);
  const clients: LineClient[] = [];
  try {
    const consumer = await loginConsumer(broker.consumerPort, CONSUMER);
    clients.push(consumer);
    if (phase === 1) {
      await consumer.send(JSON.stringify({ type: "SUB", topic: TOPIC }));
      await consumer.expect("OK");
    }
    model.reconnected(phase > 1);
    const leftovers = await releaseLeftovers(broker.publisherPort, ledger);
    for (let k = 0; k < PUBLISHERS; k++) {
      clients.push(await LineClient.connect(broker.publisherPort));
    }
    // A failure anywhere kills the broker, so that every other loop ends at once.
    const failFast = (err: unknown) => {
      killer.kill();
      throw err;
    };
    const publishers = clients.slice(1).map((c, k) =>
      runPublisher(c, ledger, killer, `p${phase}.${k}`, MAX_PER_PUBLISHER).catch(failFast)
    );
    const consuming = runConsumer(consumer, model, killer).catch(failFast);
    // The fallback kill, should the publishers run out of messages first.
    const streaming = settleAll(publishers).finally(() => killer.kill());
    await settleAll([streaming, consuming]);
    assert.ok(killer.killed);
    return {
      threshold,
      lines: killer.lines,
      released: ledger.comps.size - before.released,
      completed: model.completed.length - before.completed,
      leftovers,
    };
  } finally {
    killer.kill();
    for (const c of clients) await c.close();
    await broker.stop("SIGKILL");
  }
}

/** The last phase: release leftovers, publish a final batch, drain the consumer. */
async function finalPhase(broker: ChildBroker, model: ConsumerModel, ledger: Ledger) {
  const never = new Killer(broker, Infinity);
  const consumer = await loginConsumer(broker.consumerPort, CONSUMER);
  try {
    model.reconnected(true);
    const leftovers = await releaseLeftovers(broker.publisherPort, ledger);
    const publishers: LineClient[] = [];
    try {
      for (let k = 0; k < PUBLISHERS; k++) {
        publishers.push(await LineClient.connect(broker.publisherPort));
      }
      await settleAll(
        publishers.map((c, k) => runPublisher(c, ledger, never, `final.${k}`, FINAL_PER_PUBLISHER)),
      );
    } finally {
      for (const c of publishers) await c.close();
    }
    const allDone = () => [...ledger.comps].every((id) => model.completedSet.has(id));
    try {
      await runConsumer(consumer, model, never, allDone);
    } catch (err) {
      if (err instanceof Violation) throw err;
      const missing = [...ledger.comps].filter((id) => !model.completedSet.has(id));
      throw new Violation(
        `the consumer never received ${missing.length} released messages ` +
          `(${missing.slice(0, 20).join(", ")}): ${err}`,
      );
    }
    // Nothing more may come: every message is complete.
    await consumer.expectSilence(200);
    return leftovers;
  } finally {
    await consumer.close();
  }
}

/** Checks that completion order follows release order. */
function checkOrder(model: ConsumerModel, ledger: Ledger): void {
  // Across publishers: a message completed (PUBCOMP received) before another's PUBREL
  // was even sent must be delivered first.
  let maxRel = -Infinity;
  let maxRelId = 0;
  for (const id of model.completed) {
    const rel = ledger.relSentAt.get(id);
    assert.ok(rel !== undefined, `msgId ${id} was delivered but never released`);
    const comp = ledger.compAt.get(id);
    if (comp !== undefined && maxRel > comp) {
      assert.fail(
        `msgId ${id} was released (PUBCOMP) before msgId ${maxRelId} was sent PUBREL, ` +
          `but was delivered after it`,
      );
    }
    if (rel > maxRel) {
      maxRel = rel;
      maxRelId = id;
    }
  }
  // On one publisher connection, PUBRELs are released in the order they were sent.
  const last = new Map<string, { order: number; id: number }>();
  for (const id of model.completed) {
    const o = ledger.origin.get(id);
    if (!o) continue; // released only after a restart
    const prev = last.get(o.publisher);
    if (prev && prev.order > o.order) {
      assert.fail(
        `publisher ${o.publisher} released ${prev.id} after ${id}, ` +
          `but the consumer got ${prev.id} first`,
      );
    }
    last.set(o.publisher, { order: o.order, id });
  }
}

/**
 * Two SIGKILLs into a stream of publishes and acknowledgements, then a run to the end:
 * nothing acknowledged is lost and nothing completed comes again. `brokerArgs` are added
 * to every start.
 */
async function streamAcrossKills(brokerArgs: string[] = []): Promise<void> {
  const args = [...BROKER_ARGS, ...brokerArgs];
  const dataDir = await Deno.makeTempDir({ prefix: "mb-sigkill-" });
  const ledger = new Ledger();
  const model = new ConsumerModel(ledger);
  const reports: PhaseReport[] = [];
  try {
    for (let phase = 1; phase <= 2; phase++) {
      const broker = await ChildBroker.start(dataDir, args);
      // Some hundreds of lines into the stream, a different moment each run.
      const threshold = 200 + Math.floor(Math.random() * 400);
      reports.push(await killedPhase(broker, model, ledger, phase, threshold));
    }
    const broker = await ChildBroker.start(dataDir, args);
    let leftovers: number;
    try {
      leftovers = await finalPhase(broker, model, ledger);
    } finally {
      const { code, output } = await broker.stop("SIGTERM");
      assert.equal(code, 0, output);
    }
    const context = JSON.stringify({ reports, leftovers, resumes: model.resumes });

    // Each killed phase got well into the stream on both sides.
    for (const r of reports) {
      assert.ok(r.released > 0 && r.completed > 0, `a phase made no progress: ${context}`);
    }
    // Every PUBREC'd message was released in the end (after the restarts if needed).
    assert.deepEqual([...ledger.recs].filter((id) => !ledger.comps.has(id)), [], context);
    // Exactly once: no duplicates (also checked on the fly), none missing, nothing extra.
    assert.equal(new Set(model.completed).size, model.completed.length, context);
    assert.deepEqual(
      [...model.completedSet].sort((a, b) => a - b),
      [...ledger.comps].sort((a, b) => a - b),
      context,
    );
    // Both restarts were followed by a checked resume.
    assert.equal(model.resumes.length, 2, context);
    checkOrder(model, ledger);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test(
  "SIGKILL twice during a stream of publishes and acknowledgements: nothing acknowledged is lost, nothing completed comes again",
  () => streamAcrossKills(),
);

Deno.test(
  "SIGKILL twice during the stream with a commit delay (--commit-delay 5): nothing acknowledged is lost, nothing completed comes again",
  () => streamAcrossKills(["--commit-delay", "5"]),
);

Deno.test("SIGKILL right after a PUBREC: the PUBRELs after the restart release in their order", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-sigkill-" });
  try {
    let broker = await ChildBroker.start(dataDir, BROKER_ARGS);
    const ids: number[] = [];
    try {
      // A durable subscription, then the consumer goes away.
      {
        await using c = await loginConsumer(broker.consumerPort, "late");
        await c.send(JSON.stringify({ type: "SUB", topic: "t" }));
        await c.expect("OK");
      }
      await using p = await LineClient.connect(broker.publisherPort);
      for (const msg of ["a", "b", "c"]) {
        await p.send(JSON.stringify({ type: "PUB", topic: "t", msg }));
        const rec = await p.expectJson();
        assert.equal(rec.type, "PUBREC");
        ids.push(rec.msgId as number);
      }
      broker.process.kill("SIGKILL");
      await p.expectClosed();
    } finally {
      await broker.stop("SIGKILL");
    }

    broker = await ChildBroker.start(dataDir, BROKER_ARGS);
    try {
      const [a, b, c] = ids as [number, number, number];
      await using p = await LineClient.connect(broker.publisherPort);
      // Released in another order than published: delivered in release order.
      for (const id of [c, a, b]) {
        await p.send(JSON.stringify({ type: "PUBREL", msgId: id }));
        await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
      }
      // A repeated PUBREL is confirmed again and publishes nothing more.
      await p.send(JSON.stringify({ type: "PUBREL", msgId: a }));
      await p.expect(`{"msgId":${a},"type":"PUBCOMP"}`);
      // The subscription resumes on login, without SUB.
      await using consumer = await loginConsumer(broker.consumerPort, "late");
      const got = [];
      for (let i = 0; i < 3; i++) got.push(await receive(consumer));
      assert.deepEqual(got.map((m) => [m.msgId, m.msg]), [[c, "c"], [a, "a"], [b, "b"]]);
      await consumer.expectSilence(200);
    } finally {
      const { code, output } = await broker.stop("SIGTERM");
      assert.equal(code, 0, output);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("SIGKILL between a consumer's acknowledgements: it resumes exactly where they left it", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-sigkill-" });
  const pub = (id: number, msg: string) =>
    `{"msg":${JSON.stringify(msg)},"msgId":${id},"topic":"t","type":"PUB"}`;
  try {
    let broker = await ChildBroker.start(dataDir, BROKER_ARGS);
    const ids: number[] = [];
    try {
      await using c = await loginConsumer(broker.consumerPort, "careful");
      await c.send(JSON.stringify({ type: "SUB", topic: "t" }));
      await c.expect("OK");
      await using p = await LineClient.connect(broker.publisherPort);
      for (const msg of ["m1", "m2", "m3"]) ids.push(await publish(p, "t", msg));
      const [m1, m2] = ids as [number, number, number];
      // m1 completed; m2 received (PUBREC answered OK), its PUBCOMP never sent.
      await c.expect(pub(m1, "m1"));
      await c.send(JSON.stringify({ type: "PUBREC", msgId: m1, topic: "t" }));
      await c.expect("OK");
      await c.expect(`{"msgId":${m1},"type":"PUBREL"}`);
      await c.send(JSON.stringify({ type: "PUBCOMP", msgId: m1, topic: "t" }));
      await c.expect("OK");
      await c.expect(pub(m2, "m2"));
      await c.send(JSON.stringify({ type: "PUBREC", msgId: m2, topic: "t" }));
      await c.expect("OK");
      await c.expect(`{"msgId":${m2},"type":"PUBREL"}`);
      broker.process.kill("SIGKILL");
      await c.expectClosed();
    } finally {
      await broker.stop("SIGKILL");
    }

    const [, m2, m3] = ids as [number, number, number];
    broker = await ChildBroker.start(dataDir, BROKER_ARGS);
    try {
      // No SUB: the stored subscription resumes with the release of m2, then m3.
      await using c = await loginConsumer(broker.consumerPort, "careful");
      await c.expect(`{"msgId":${m2},"type":"PUBREL"}`);
      await c.send(JSON.stringify({ type: "PUBCOMP", msgId: m2, topic: "t" }));
      await c.expect("OK");
      await c.expect(pub(m3, "m3"));
      // Killed again before the PUBREC of m3 is sent: m3 comes again, nothing before it.
      broker.process.kill("SIGKILL");
      await c.expectClosed();
    } finally {
      await broker.stop("SIGKILL");
    }

    broker = await ChildBroker.start(dataDir, BROKER_ARGS);
    try {
      await using c = await loginConsumer(broker.consumerPort, "careful");
      const m = await receive(c);
      assert.deepEqual([m.msgId, m.msg], [m3, "m3"]);
      await c.expectSilence(200);
    } finally {
      const { code, output } = await broker.stop("SIGTERM");
      assert.equal(code, 0, output);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
