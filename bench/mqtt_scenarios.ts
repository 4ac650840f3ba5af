/**
 * The MQTT scenarios of issue 5, at MQTT 3.1.1 (every broker compared speaks it), clean
 * sessions, 100-byte payloads: QoS 0, 1 and 2 1 → 1, QoS 1 fan-out 1 → N, QoS 1 N → N on
 * own topics, QoS 1 at a fixed rate (latency), and idle connections (memory). Each runs
 * against a freshly started broker; every subscriber is connected and subscribed (SUBACK
 * received) before the measured part starts, which ends when the last publisher and
 * subscriber are done (QoS 0: at the last delivery).
 *
 * Note for reading MessageBroker's figures: it stores every QoS 1/2 message in Deno KV
 * (committed) before it acknowledges it; the other brokers keep messages in memory (NATS
 * writes a file without fsync).
 *
 * @module
 */
import type { BrokerUnderTest } from "./broker_process.ts";
import {
  mqttPublish,
  type MqttPublisherPlan,
  type MqttPublisherResult,
  mqttSubscribe,
  Problems,
} from "./mqtt_load.ts";
import { MqttSocket } from "./mqtt_wire.ts";
import { PacedPublisher } from "./paced_publisher.ts";
import { collectGeneratorGarbage, cpuMicros, type Memory, memory } from "./proc_stats.ts";
import {
  brokerUsPerMessage,
  type IdleFigures,
  idleKbPerConnection,
  rateOf,
  type Scenario,
  type ScenarioOptions,
  type ScenarioResult,
} from "./scenario.ts";
import { completeness, Latencies, Stream } from "./stats.ts";

/** QoS 0 subscribers stop after this much silence once the publishers are done. */
const QOS0_QUIET_MS = 1000;

interface MqttPlan {
  description: string;
  qos: 0 | 1 | 2;
  subscribers: { clientId: string; topic: string; expected: number }[];
  publishers: MqttPublisherPlan[];
  notes?: (r: {
    pubs: MqttPublisherResult[];
    seconds: number;
    pacingLag?: Latencies;
    latencies: Latencies;
  }) => string[];
}

/**
 * A check that the broker is idle: below 10% of a core since the previous check (at least
 * 500 ms before; the first check only takes the baseline). Shared by a scenario's
 * subscribers, so /proc is read at most every 500 ms.
 */
function idleSampler(pid: number): () => Promise<boolean> {
  let last: { at: number; cpuUs: number } | undefined;
  let idle = false;
  let pending: Promise<boolean> | undefined;
  return () => {
    if (last && performance.now() - last.at < 500) return Promise.resolve(idle);
    pending ??= cpuMicros(pid).then((cpuUs) => {
      const at = performance.now();
      idle = last !== undefined && (cpuUs - last.cpuUs) / 1000 / (at - last.at) < 0.1;
      last = { at, cpuUs };
      pending = undefined;
      return idle;
    });
    return pending;
  };
}

/** Runs `tasks` with at most `limit` at a time; results in order. */
async function limited<T>(limit: number, tasks: (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}

/**
 * With `BENCH_LATENCY_DUMP=DIR`, writes a scenario's latencies in arrival order to
 * `DIR/<scenario>-<broker>-<wall ms of its start>.txt`, one per line (the first line is the
 * wall-clock start), and a paced run's send lags (send − due time, in the order sent) to
 * `….send.txt`, to line bursts of late messages up with a broker's log.
 */
async function dumpLatencies(
  scenario: string,
  broker: string,
  startedAt: number,
  latencies: Latencies,
  sendLag?: Latencies,
): Promise<void> {
  const dir = Deno.env.get("BENCH_LATENCY_DUMP");
  if (!dir) return;
  await Deno.mkdir(dir, { recursive: true });
  const base = `${dir}/${scenario}-${broker.replace(/\W+/g, "_")}-${Math.round(startedAt)}`;
  const write = (file: string, l: Latencies) =>
    Deno.writeTextFile(
      file,
      [String(startedAt), ...Array.from(l.samples(), (ms) => ms.toFixed(3))].join("\n") + "\n",
    );
  await write(`${base}.txt`, latencies);
  if (sendLag) await write(`${base}.send.txt`, sendLag);
}

/** A paced publisher in its worker, any other on the generator's main thread. */
function publishWith(
  sock: MqttSocket | PacedPublisher,
  plan: MqttPublisherPlan,
  problems: Problems,
  pacingLag: Latencies | undefined,
): Promise<MqttPublisherResult> {
  return sock instanceof PacedPublisher
    ? sock.publish(plan, problems, pacingLag)
    : mqttPublish(sock, plan, problems);
}

async function runMqttPlan(
  name: string,
  broker: BrokerUnderTest,
  o: ScenarioOptions,
  plan: MqttPlan,
): Promise<ScenarioResult> {
  const port = broker.mqttPort;
  if (port === undefined) throw new Error(`${broker.name} has no MQTT port`);
  const problems = new Problems();
  const expected = plan.subscribers.reduce((n, s) => n + s.expected, 0);
  const latencies = new Latencies(expected * 2);
  const rate = plan.publishers.find((p) => p.rate !== undefined)?.rate;
  const pacingLag = rate !== undefined
    ? new Latencies(plan.publishers.reduce((n, p) => n + p.count, 0))
    : undefined;
  const perTopic = new Map(plan.publishers.map((p) => [p.topic, p.count]));
  const sockets: { close(): void }[] = [];
  const notes: string[] = [];
  // Each warm-up is bounded by the timeout of its own, the measured part by the one below.
  if (o.warmup > 0) await warmUp(broker, name, plan.qos, o.warmup, o.window, o.timeout);
  if (rate !== undefined && o.pacedWarmup > 0) {
    const count = Math.max(1, Math.round(rate * o.pacedWarmup));
    await warmUp(broker, `${name}-paced`, plan.qos, count, o.window, o.timeout, rate);
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    for (const s of sockets) s.close();
  }, o.timeout * 1000);
  try {
    collectGeneratorGarbage();
    const idle = await memory(broker.pid);
    const streams = plan.subscribers.map((s) =>
      new Stream(`${s.clientId} on ${s.topic}`, perTopic.get(s.topic) ?? 0)
    );
    const granted = new Set<number>();
    const subSockets = await limited(
      50,
      plan.subscribers.map((s) => async () => {
        const sock = await MqttSocket.connect(port, s.clientId);
        sockets.push(sock);
        const g = await sock.subscribe(s.topic, plan.qos);
        if (g === 0x80) throw new Error(`${broker.name} refused the subscription to ${s.topic}`);
        granted.add(g);
        return sock;
      }),
    );
    for (const g of granted) {
      if (g !== plan.qos) notes.push(`${broker.name} granted QoS ${g} for QoS ${plan.qos}`);
    }
    const pubSockets = await limited(
      50,
      plan.publishers.map((p) => async () => {
        const sock = p.rate !== undefined
          ? await PacedPublisher.connect(port, p.clientId)
          : await MqttSocket.connect(port, p.clientId);
        sockets.push(sock);
        return sock;
      }),
    );

    let publishersDone = false;
    const broker0 = await cpuMicros(broker.pid);
    const self0 = await cpuMicros("self");
    const t0 = performance.timeOrigin + performance.now();
    const publishing = Promise.all(
      plan.publishers.map((p, i) => publishWith(pubSockets[i]!, p, problems, pacingLag)),
    ).finally(() => publishersDone = true);
    const control = {
      publishersDone: () => publishersDone,
      quietMs: plan.qos === 0 ? QOS0_QUIET_MS : Infinity,
      brokerIdle: idleSampler(broker.pid),
    };
    const [pubs, subs] = await Promise.all([
      publishing,
      Promise.all(
        plan.subscribers.map((s, i) =>
          mqttSubscribe(
            subSockets[i]!,
            s.clientId,
            s.topic,
            s.expected,
            streams[i]!,
            latencies,
            problems,
            control,
          )
        ),
      ),
    ]);
    const t1 = Math.max(...pubs.map((p) => p.endedAt), ...subs.map((s) => s.endedAt));
    const seconds = (t1 - t0) / 1000;
    const brokerCpuUs = await cpuMicros(broker.pid) - broker0;
    const generatorCpuUs = await cpuMicros("self") - self0;
    const mem = await memory(broker.pid);
    const sent = pubs.reduce((n, p) => n + p.sent, 0);
    const summary = latencies.summary();
    await dumpLatencies(name, broker.name, t0, latencies, pacingLag);
    notes.push(...plan.notes?.({ pubs, seconds, pacingLag, latencies }) ?? []);
    const c = completeness(streams);
    if (plan.qos === 0) {
      notes.push(
        `QoS 0 loss: ${c.missing} of ${expected} deliveries (${
          (100 * c.missing / Math.max(1, expected)).toFixed(2)
        }%)`,
      );
    }
    return {
      name,
      broker: broker.name,
      description: plan.description,
      published: sent,
      expected,
      received: subs.reduce((n, s) => n + s.received, 0),
      seconds,
      latency: summary,
      brokerCpuUs,
      generatorCpuUs,
      brokerIdleRssKb: idle.rssKb,
      brokerRssKb: mem.rssKb,
      brokerPeakRssKb: mem.peakKb,
      timedOut,
      completeness: c,
      lossAllowed: plan.qos === 0,
      problems,
      notes,
    };
  } finally {
    clearTimeout(timer);
    for (const s of sockets) s.close();
  }
}

/**
 * Runs `count` messages of `qos` from one publisher to one subscriber on a topic of
 * their own, unmeasured, before a scenario: a broker that compiles its code as it runs
 * (V8's tiers) is then measured as it serves a steady load, not while it warms up.
 * Every broker gets the same warm-up; what it measures is thrown away. With `rate`, the
 * publisher is paced as a paced scenario's is: a paced load takes paths (timers, small
 * batches) that an unpaced one leaves cold, and V8 compiles them on a thread that shares
 * the broker's core. Bounded like a scenario: its sockets are closed after `timeoutS`,
 * and it then fails.
 */
async function warmUp(
  broker: BrokerUnderTest,
  name: string,
  qos: 0 | 1 | 2,
  count: number,
  window: number,
  timeoutS: number,
  rate?: number,
): Promise<void> {
  const port = broker.mqttPort as number;
  const plan = oneToOne(`${name}-warmup`, qos, count, window);
  const [sub, pub] = [plan.subscribers[0]!, { ...plan.publishers[0]!, rate }];
  const subSock = await MqttSocket.connect(port, sub.clientId);
  const pubSock = rate !== undefined
    ? await PacedPublisher.connect(port, pub.clientId)
    : await MqttSocket.connect(port, pub.clientId);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    subSock.close();
    pubSock.close();
  }, timeoutS * 1000);
  try {
    await subSock.subscribe(sub.topic, qos);
    const problems = new Problems();
    let done = false;
    await Promise.all([
      publishWith(pubSock, pub, problems, undefined).finally(() => done = true),
      mqttSubscribe(
        subSock,
        sub.clientId,
        sub.topic,
        count,
        new Stream("warm-up", count),
        new Latencies(count),
        problems,
        {
          publishersDone: () => done,
          quietMs: qos === 0 ? QOS0_QUIET_MS : Infinity,
          brokerIdle: idleSampler(broker.pid),
        },
      ),
    ]);
    if (timedOut) throw new Error(`${broker.name}: warm-up not done after ${timeoutS} s`);
    if (problems.count > 0 && qos > 0) {
      throw new Error(`${broker.name}: warm-up failed: ${problems.lines.join("; ")}`);
    }
  } finally {
    clearTimeout(timer);
    subSock.close();
    pubSock.close();
  }
}

const oneToOne = (name: string, qos: 0 | 1 | 2, count: number, window: number): MqttPlan => ({
  description: `QoS ${qos}, 1 → 1, ${count} msgs, window ${window}`,
  qos,
  subscribers: [{ clientId: `${name}-sub`, topic: `bench/${name}`, expected: count }],
  publishers: [{ clientId: `${name}-pub`, topic: `bench/${name}`, qos, count, window }],
});

/** QoS 0, one publisher → one subscriber. */
export const mqttQos0: Scenario = {
  name: "mqtt-qos0",
  protocol: "mqtt",
  headlines: () => [{ label: "QoS 0, 1 → 1", unit: "msg/s", better: "higher", value: rateOf }],
  run: (b, o) => runMqttPlan("mqtt-qos0", b, o, oneToOne("mqtt-qos0", 0, o.qos0Messages, o.window)),
};

/** QoS 1, one publisher → one subscriber. */
export const mqttQos1: Scenario = {
  name: "mqtt-qos1",
  protocol: "mqtt",
  headlines: () => [{ label: "QoS 1, 1 → 1", unit: "msg/s", better: "higher", value: rateOf }],
  run: (b, o) => runMqttPlan("mqtt-qos1", b, o, oneToOne("mqtt-qos1", 1, o.qos1Messages, o.window)),
};

/** QoS 2, one publisher → one subscriber; also the broker's CPU per QoS 2 delivery. */
export const mqttQos2: Scenario = {
  name: "mqtt-qos2",
  protocol: "mqtt",
  headlines: () => [
    { label: "QoS 2, 1 → 1", unit: "msg/s", better: "higher", value: rateOf },
    {
      label: "broker CPU per QoS 2 delivery",
      unit: "µs",
      better: "lower",
      value: brokerUsPerMessage,
    },
  ],
  run: (b, o) => runMqttPlan("mqtt-qos2", b, o, oneToOne("mqtt-qos2", 2, o.qos2Messages, o.window)),
};

/** QoS 1, one publisher → `fanout` subscribers of one topic. */
export const mqttFanout: Scenario = {
  name: "mqtt-fanout",
  protocol: "mqtt",
  headlines: (o) => [{
    label: `QoS 1 fan-out 1 → ${o.fanout}`,
    unit: "deliveries/s",
    better: "higher",
    value: rateOf,
  }],
  run: (b, o) =>
    runMqttPlan("mqtt-fanout", b, o, {
      description: `QoS 1, 1 → ${o.fanout} on one topic, ${o.mqttFanoutMessages} msgs`,
      qos: 1,
      subscribers: Array.from({ length: o.fanout }, (_, i) => ({
        clientId: `mqtt-fanout-sub${i}`,
        topic: "bench/fanout",
        expected: o.mqttFanoutMessages,
      })),
      publishers: [{
        clientId: "mqtt-fanout-pub",
        topic: "bench/fanout",
        qos: 1,
        count: o.mqttFanoutMessages,
        window: o.window,
      }],
    }),
};

/** QoS 1, `pairs` publishers → `pairs` subscribers, each pair on its own topic. */
export const mqttPairs: Scenario = {
  name: "mqtt-pairs",
  protocol: "mqtt",
  headlines: (o) => [{
    label: `QoS 1, ${o.pairs} → ${o.pairs} on own topics`,
    unit: "msg/s",
    better: "higher",
    value: rateOf,
  }],
  run: (b, o) =>
    runMqttPlan("mqtt-pairs", b, o, {
      description: `QoS 1, ${o.pairs} → ${o.pairs} on own topics, ${o.mqttPairsMessages} msgs each`,
      qos: 1,
      subscribers: Array.from({ length: o.pairs }, (_, i) => ({
        clientId: `mqtt-pairs-sub${i}`,
        topic: `bench/pairs/${i}`,
        expected: o.mqttPairsMessages,
      })),
      publishers: Array.from({ length: o.pairs }, (_, i) => ({
        clientId: `mqtt-pairs-pub${i}`,
        topic: `bench/pairs/${i}`,
        qos: 1 as const,
        count: o.mqttPairsMessages,
        window: o.window,
      })),
    }),
};

/**
 * Each message's latency less its send lag, when the two line up: one publisher whose
 * messages all arrived once and in order (the run's completeness check says whether they
 * did), so that the n-th arrival is the n-th sent.
 * Splits a paced run's latency into the broker's part and the generator's (its timing,
 * and waits for PUBACKs when its window is full).
 */
function transitTimes(latencies: Latencies, sendLag: Latencies): Latencies | undefined {
  const l = latencies.samples();
  const s = sendLag.samples();
  if (l.length === 0 || l.length !== s.length) return undefined;
  const out = new Latencies(l.length);
  for (let i = 0; i < l.length; i++) out.add((l[i] as number) - (s[i] as number));
  return out;
}

/**
 * QoS 1 at a fixed rate, one publisher → one subscriber, for `duration` seconds: latency
 * from each message's due time, so a broker that falls behind shows as latency.
 */
export const mqttRate: Scenario = {
  name: "mqtt-rate",
  protocol: "mqtt",
  headlines: (o) => [{
    label: `QoS 1 at a fixed ${o.mqttRate} msg/s, p99 latency`,
    unit: "ms",
    better: "lower",
    value: (r) => r.latency.p99,
  }],
  run: (b, o) => {
    const count = Math.max(1, Math.round(o.mqttRate * o.duration));
    return runMqttPlan("mqtt-rate", b, o, {
      description: `QoS 1, 1 → 1 at ${o.mqttRate} msg/s for ${o.duration} s, window ${o.window}`,
      qos: 1,
      subscribers: [{ clientId: "mqtt-rate-sub", topic: "bench/rate", expected: count }],
      publishers: [{
        clientId: "mqtt-rate-pub",
        topic: "bench/rate",
        qos: 1,
        count,
        window: o.window,
        rate: o.mqttRate,
      }],
      notes: ({ pubs, seconds, pacingLag, latencies }) => {
        const windowFull = pubs.reduce((n, p) => n + p.windowFull, 0);
        const sent = pubs.reduce((n, p) => n + p.sent, 0);
        const lag = pacingLag?.summary();
        const transit = pacingLag && transitTimes(latencies, pacingLag)?.summary();
        const out = [
          `offered ${o.mqttRate} msg/s for ${o.duration} s: ${sent} sent, all delivered in ${
            seconds.toFixed(2)
          } s`,
        ];
        if (lag) {
          out.push(
            `send lag (send − due: the generator's timing, and waits for a full window): p50 ${
              lag.p50.toFixed(3)
            } ms, p99 ${lag.p99.toFixed(3)} ms (part of the latency)`,
          );
        }
        if (transit) {
          out.push(
            `transit (delivery − send: the broker's part): p50 ${transit.p50.toFixed(3)} ms, p99 ${
              transit.p99.toFixed(3)
            } ms`,
          );
        }
        const late = seconds > o.duration + 1;
        if (windowFull === 0 && !late) out.push("rate sustained: the window never filled");
        else {
          out.push(
            `rate NOT sustained: window (${o.window}) full ${windowFull} times` +
              (late ? `, ${seconds.toFixed(2)} s for ${o.duration} s of load` : ""),
          );
        }
        return out;
      },
    });
  },
};

/** How long `mqtt-idle` gives RSS to settle, with the clients and after they leave, at most. */
const IDLE_SETTLE_MS = 8000;
/**
 * And at least: MessageBroker collects its garbage 2 s after a crowd of connections has
 * arrived or left (src/memory_reducer.ts); a broker's RSS may stand still before such a
 * step.
 */
const IDLE_SETTLE_MIN_MS = 4000;

/**
 * A broker's memory once its RSS stops falling: polled every 0.5 s from `first`, for
 * {@link IDLE_SETTLE_MIN_MS} at least and {@link IDLE_SETTLE_MS} at most.
 */
async function settledMemory(pid: number, first: Memory): Promise<Memory> {
  let m = first;
  for (let waited = 0; waited < IDLE_SETTLE_MS; waited += 500) {
    await new Promise((r) => setTimeout(r, 500));
    const next = await memory(pid);
    const settled = next.rssKb >= m.rssKb - Math.max(256, m.rssKb / 100);
    m = next;
    if (settled && waited >= IDLE_SETTLE_MIN_MS) break;
  }
  return m;
}

/** Reads a process's open-file limit (soft) from /proc/PID/limits; undefined if unknown. */
async function openFileLimit(pid: number | "self"): Promise<number | undefined> {
  const path = `/proc/${pid === "self" ? Deno.pid : pid}/limits`;
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped", stderr: "null" })
    .output();
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(new TextDecoder().decode(out.stdout));
  if (!m) return undefined;
  return m[1] === "unlimited" ? Infinity : Number(m[1]);
}

/**
 * `idleConnections` clients CONNECT (3.1.1, clean, keep-alive 0) and stay idle: the
 * broker's RSS before, with them, per connection, and after they all DISCONNECT.
 */
export const mqttIdle: Scenario = {
  name: "mqtt-idle",
  protocol: "mqtt",
  headlines: (o) => [{
    label: `memory per idle connection (${o.idleConnections})`,
    unit: "KB",
    better: "lower",
    value: (r) => r.idle ? idleKbPerConnection(r.idle) : NaN,
  }],
  async run(broker, o) {
    const port = broker.mqttPort;
    if (port === undefined) throw new Error(`${broker.name} has no MQTT port`);
    const n = o.idleConnections;
    const problems = new Problems();
    const notes: string[] = [];
    // Each side holds one descriptor per connection (plus its own few dozen).
    for (const [who, pid] of [["the load generator", "self"], [broker.name, broker.pid]] as const) {
      const limit = await openFileLimit(pid);
      if (limit !== undefined && limit < n + 200) {
        throw new Error(
          `ulimit -n of ${who} is ${limit}, too low for ${n} connections: raise it ` +
            `(e.g. \`ulimit -n ${Math.max(20_000, n * 2)}\` in the shell that runs the bench) ` +
            `or pass --idle-connections ${Math.max(1, limit - 200)}`,
        );
      }
    }
    const sockets: MqttSocket[] = [];
    let timedOut = false;
    let stop = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stop = true;
      for (const s of sockets) s.close();
    }, o.timeout * 1000);
    try {
      const before = await memory(broker.pid);
      const broker0 = await cpuMicros(broker.pid);
      const self0 = await cpuMicros("self");
      const t0 = performance.now();
      let failed = 0;
      let next = 0;
      // 64 connects at a time keeps the listen backlog from overflowing (SYN retries).
      await Promise.all(Array.from({ length: Math.min(64, n) }, async () => {
        while (next < n && !stop) {
          const i = next++;
          try {
            sockets.push(await MqttSocket.connect(port, `idle-${i}`, true, 64));
          } catch (err) {
            failed++;
            problems.add(`idle-${i}: ${err instanceof Error ? err.message : err}`);
            if (failed >= 100) stop = true; // the broker refuses: no point in 10,000 tries
          }
        }
      }));
      const connectSeconds = (performance.now() - t0) / 1000;
      const connected = sockets.length;
      // Let the broker finish what the connects started (logs, sessions, GC) before reading.
      await new Promise((r) => setTimeout(r, 1000));
      const withThemSoon = await memory(broker.pid);
      const brokerCpuUs = await cpuMicros(broker.pid) - broker0;
      const generatorCpuUs = await cpuMicros("self") - self0;
      // The clients held idle: RSS settled, as after they leave (below).
      const withThem = await settledMemory(broker.pid, withThemSoon);
      await Promise.all(sockets.map((s) => s.disconnect()));
      sockets.length = 0;
      const after = await settledMemory(broker.pid, await memory(broker.pid));
      const idle: IdleFigures = {
        wanted: n,
        connected,
        connectSeconds,
        rssBeforeKb: before.rssKb,
        rssWithKb: withThem.rssKb,
        rssAfterKb: after.rssKb,
      };
      // Per connection as the headline counts it; also 1 s after the last CONNACK, and for
      // anonymous RSS.
      const perConn = idleKbPerConnection(idle);
      const perConnSoon = idleKbPerConnection({ ...idle, rssWithKb: withThemSoon.rssKb });
      const perConnAnon = idleKbPerConnection({
        ...idle,
        rssBeforeKb: before.anonKb,
        rssWithKb: withThem.anonKb,
        rssAfterKb: after.anonKb,
      });
      const mib = (kb: number) => (kb / 1024).toFixed(1);
      const over = (kb: number) => `${kb >= 0 ? "+" : ""}${mib(kb)} MiB over the start`;
      notes.push(
        `${connected} of ${n} connected in ${connectSeconds.toFixed(2)} s; RSS ${
          mib(before.rssKb)
        } MiB before → ${mib(withThemSoon.rssKb)} MiB 1 s after the last CONNACK (${
          perConnSoon.toFixed(2)
        } KB each) → ${mib(withThem.rssKb)} MiB settled with them (${
          perConn.toFixed(2)
        } KB each) → ${mib(after.rssKb)} MiB after they left (${over(after.rssKb - before.rssKb)})`,
        // The executable's code pages count in RSS once first run (accepting, closing):
        // its anonymous part says what the broker itself kept.
        `anonymous RSS (RssAnon, without file pages): ${mib(before.anonKb)} MiB before → ${
          mib(withThem.anonKb)
        } MiB settled with them (${connected > 0 ? perConnAnon.toFixed(2) : "-"} KB each) → ${
          mib(after.anonKb)
        } MiB after they left (${over(after.anonKb - before.anonKb)})`,
      );
      const missing = n - connected;
      return {
        name: "mqtt-idle",
        broker: broker.name,
        description: `${n} idle MQTT 3.1.1 connections (clean, keep-alive 0)`,
        published: 0,
        expected: n,
        received: connected,
        seconds: connectSeconds,
        latency: { p50: NaN, p99: NaN, p999: NaN, max: NaN, count: 0 },
        brokerCpuUs,
        generatorCpuUs,
        brokerIdleRssKb: before.rssKb,
        brokerRssKb: after.rssKb,
        brokerPeakRssKb: withThem.peakKb,
        timedOut,
        completeness: {
          ok: missing === 0,
          missing,
          duplicates: 0,
          outOfOrder: 0,
          unexpected: 0,
          problems: missing ? [`${missing} of ${n} connections not accepted`] : [],
        },
        idle,
        problems,
        notes,
      };
    } finally {
      clearTimeout(timer);
      for (const s of sockets) s.close();
    }
  },
};

/** Every MQTT scenario, in the order a default run takes them. */
export const mqttScenarios: readonly Scenario[] = [
  mqttQos0,
  mqttQos1,
  mqttQos2,
  mqttFanout,
  mqttPairs,
  mqttRate,
  mqttIdle,
];
