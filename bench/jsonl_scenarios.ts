/**
 * The JSON-line scenarios of issue 5: N publishers → N consumers on their own topics,
 * one topic fanned out to many consumers, and a fixed-rate run for latency. Each starts
 * a fresh broker (so memory and store start from the same place), connects and
 * subscribes every consumer, then measures only the publishing and delivery.
 *
 * @module
 */
import type { BrokerUnderTest } from "./broker_process.ts";
import { consume, type Consumer, Problems, publish, type PublisherPlan } from "./jsonl_load.ts";
import { LineSocket } from "./line_socket.ts";
import { collectGeneratorGarbage, cpuMicros, memory } from "./proc_stats.ts";
import {
  brokerUsPerMessage,
  rateOf,
  type Scenario,
  type ScenarioOptions,
  type ScenarioResult,
} from "./scenario.ts";
import { completeness, Latencies, Stream } from "./stats.ts";

interface Plan {
  description: string;
  /** Consumer name → the topics it subscribes and how many deliveries it expects. */
  consumers: { name: string; topics: string[]; expected: number }[];
  publishers: PublisherPlan[];
  notes?: (r: { windowFull: number; seconds: number; sent: number }) => string[];
}

async function runPlan(
  name: string,
  broker: BrokerUnderTest,
  o: ScenarioOptions,
  plan: Plan,
): Promise<ScenarioResult> {
  if (o.jsonlWarmup > 0) {
    // Unmeasured: the same shape on topics and consumers of its own, unpaced (see the
    // MQTT scenarios' warm-up).
    const count = o.jsonlWarmup;
    const warm = await runPlan(`${name}-warmup`, broker, { ...o, jsonlWarmup: 0 }, {
      description: "warm-up",
      consumers: plan.consumers.map((c) => ({
        name: `${c.name}-warmup`,
        topics: c.topics.map((t) => `${t}-warmup`),
        expected: count * c.topics.length,
      })),
      publishers: plan.publishers.map((p) => ({
        topic: `${p.topic}-warmup`,
        count,
        window: o.window,
      })),
    });
    if (warm.timedOut || warm.problems.count > 0) {
      throw new Error(`${broker.name}: warm-up failed: ${warm.problems.lines.join("; ")}`);
    }
  }
  const { consumerPort, publisherPort, pid } = broker;
  if (consumerPort === undefined || publisherPort === undefined) {
    throw new Error(`${broker.name} has no JSON-line ports`);
  }
  const problems = new Problems();
  const expected = plan.consumers.reduce((n, c) => n + c.expected, 0);
  const latencies = new Latencies(expected * 2);
  const streams: Stream[] = [];
  const perTopic = new Map(plan.publishers.map((p) => [p.topic, p.count]));
  const sockets: LineSocket[] = [];
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    for (const s of sockets) s.close();
  }, o.timeout * 1000);
  try {
    const idle = await memory(pid);
    const consumers: Consumer[] = [];
    for (const c of plan.consumers) {
      const own = new Map<string, Stream>();
      for (const topic of c.topics) {
        const s = new Stream(`${c.name} on ${topic}`, perTopic.get(topic) ?? 0);
        own.set(topic, s);
        streams.push(s);
      }
      const sock = await LineSocket.connect(consumerPort);
      sockets.push(sock);
      consumers.push(
        consume(sock, c.name, own, o.consumerWindow, c.expected, latencies, problems),
      );
    }
    await Promise.all(consumers.map((c) => c.ready));
    const pubSockets = await Promise.all(
      plan.publishers.map(() => LineSocket.connect(publisherPort)),
    );
    sockets.push(...pubSockets);

    collectGeneratorGarbage();
    const broker0 = await cpuMicros(pid);
    const self0 = await cpuMicros("self");
    const t0 = performance.now();
    const [pubs] = await Promise.all([
      Promise.all(plan.publishers.map((p, i) => publish(pubSockets[i]!, p, problems))),
      Promise.all(consumers.map((c) => c.done)),
    ]);
    const seconds = (performance.now() - t0) / 1000;
    const brokerCpuUs = await cpuMicros(pid) - broker0;
    const generatorCpuUs = await cpuMicros("self") - self0;
    const mem = await memory(pid);
    const sent = pubs.reduce((n, p) => n + p.sent, 0);
    const windowFull = pubs.reduce((n, p) => n + p.windowFull, 0);
    const summary = latencies.summary();
    return {
      name,
      broker: broker.name,
      description: plan.description,
      published: sent,
      expected,
      received: summary.count + latencies.dropped,
      seconds,
      latency: summary,
      brokerCpuUs,
      generatorCpuUs,
      brokerIdleRssKb: idle.rssKb,
      brokerRssKb: mem.rssKb,
      brokerPeakRssKb: mem.peakKb,
      timedOut,
      completeness: completeness(streams),
      problems,
      notes: plan.notes?.({ windowFull, seconds, sent }) ?? [],
    };
  } finally {
    clearTimeout(timer);
    for (const s of sockets) s.close();
  }
}

/** (a) N publishers → N consumers, each pair on its own topic, as fast as the window allows. */
export const pairsScenario: Scenario = {
  name: "pairs",
  protocol: "jsonl",
  headlines: (o) => [
    {
      label: `JSON-line QoS 2, ${o.pairs} → ${o.pairs}`,
      unit: "msg/s",
      better: "higher",
      value: rateOf,
    },
    {
      label: `JSON-line QoS 2, ${o.pairs} → ${o.pairs}, broker CPU per delivery`,
      unit: "µs",
      better: "lower",
      value: brokerUsPerMessage,
    },
  ],
  run: (broker, o) =>
    runPlan("pairs", broker, o, {
      description: `QoS 2, ${o.pairs} → ${o.pairs} on own topics, ${o.messages} msgs each, ` +
        `consumer window ${o.consumerWindow}`,
      consumers: Array.from({ length: o.pairs }, (_, i) => ({
        name: `pairs-c${i}`,
        topics: [`pairs-${i}`],
        expected: o.messages,
      })),
      publishers: Array.from({ length: o.pairs }, (_, i) => ({
        topic: `pairs-${i}`,
        count: o.messages,
        window: o.window,
      })),
    }),
};

/** (b) One publisher, one topic, fanned out to `fanout` consumers. */
export const fanoutScenario: Scenario = {
  name: "fanout",
  protocol: "jsonl",
  headlines: (o) => [{
    label: `JSON-line QoS 2 fan-out 1 → ${o.fanout}`,
    unit: "deliveries/s",
    better: "higher",
    value: rateOf,
  }],
  run: (broker, o) =>
    runPlan("fanout", broker, o, {
      description: `QoS 2, 1 → ${o.fanout} on one topic, ${o.messages} msgs, ` +
        `consumer window ${o.consumerWindow}`,
      consumers: Array.from({ length: o.fanout }, (_, i) => ({
        name: `fanout-c${i}`,
        topics: ["fanout"],
        expected: o.messages,
      })),
      publishers: [{ topic: "fanout", count: o.messages, window: o.window }],
    }),
};

/**
 * (c) A fixed total rate for a fixed time, split over `pairs` topics: with a consumer
 * window of one (the seed's protocol), one topic's rate is bounded by the handshake
 * round trip and a single pair cannot show latency below saturation.
 */
export const rateScenario: Scenario = {
  name: "rate",
  protocol: "jsonl",
  headlines: (o) => [{
    label: `JSON-line QoS 2 at a fixed ${o.rate} msg/s, p99 latency`,
    unit: "ms",
    better: "lower",
    value: (r) => r.latency.p99,
  }],
  run: (broker, o) => {
    const per = Math.max(1, Math.round(o.rate * o.duration / o.pairs));
    return runPlan("rate", broker, o, {
      description: `QoS 2 at ${o.rate} msg/s for ${o.duration} s over ${o.pairs} pairs, ` +
        `consumer window ${o.consumerWindow}`,
      consumers: Array.from({ length: o.pairs }, (_, i) => ({
        name: `rate-c${i}`,
        topics: [`rate-${i}`],
        expected: per,
      })),
      publishers: Array.from({ length: o.pairs }, (_, i) => ({
        topic: `rate-${i}`,
        count: per,
        window: 10_000,
        rate: o.rate / o.pairs,
      })),
      notes: ({ windowFull, seconds, sent }) => {
        const achieved = sent / seconds;
        const out = [
          `offered ${o.rate} msg/s, published ${achieved.toFixed(0)} msg/s over ${
            seconds.toFixed(2)
          } s`,
        ];
        if (windowFull > 0) out.push(`the rate was not sustained: window full ${windowFull} times`);
        if (seconds > o.duration * 1.2) {
          out.push(
            `the broker fell behind: the run took ${
              seconds.toFixed(2)
            } s for ${o.duration} s of load`,
          );
        }
        return out;
      },
    });
  },
};

/** Every JSON-line scenario, in the order a default run takes them. */
export const jsonlScenarios: readonly Scenario[] = [pairsScenario, fanoutScenario, rateScenario];
