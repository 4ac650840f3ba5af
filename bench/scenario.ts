/**
 * What every scenario shares, whatever its protocol: the options (from command-line
 * flags), the result it reports, and the rows it adds to the comparison table.
 *
 * @module
 */
import type { BrokerUnderTest } from "./broker_process.ts";
import type { Completeness, Latencies } from "./stats.ts";

/** Knobs of the scenarios (all from command-line flags; see bench/README.md). */
export interface ScenarioOptions {
  // --- JSON-line
  /** Publisher/consumer pairs in `pairs`, `rate` and `mqtt-pairs`. */
  pairs: number;
  /** Messages per publisher in `pairs` and `fanout`. */
  messages: number;
  /** Consumers of the one topic in `fanout` and `mqtt-fanout`. */
  fanout: number;
  /** Messages per second in all, for `rate` (split evenly over the pairs). */
  rate: number;
  /** Seconds of the `rate` and `mqtt-rate` runs. */
  duration: number;
  /** Messages (JSON-line PUBs, MQTT QoS 1/2 PUBLISHes) in flight per publisher. */
  window: number;
  /** JSON-line messages outstanding per consumer and topic (the SUB's `window`). */
  consumerWindow: number;
  /** MQTT: messages of an unmeasured 1 → 1 run before each scenario (0: none). */
  warmup: number;
  /**
   * MQTT: seconds of an unmeasured run at a paced scenario's own rate, after the
   * {@link warmup} (0: none).
   */
  pacedWarmup: number;
  /** JSON-line: messages per publisher of an unmeasured run of the same shape first (0: none). */
  jsonlWarmup: number;
  /** Seconds after which a scenario's sockets are closed, whatever is left undelivered. */
  timeout: number;
  // --- MQTT
  /** Messages of `mqtt-qos0`. */
  qos0Messages: number;
  /** Messages of `mqtt-qos1`. */
  qos1Messages: number;
  /** Messages of `mqtt-qos2`. */
  qos2Messages: number;
  /** Messages of `mqtt-fanout` (each delivered `fanout` times). */
  mqttFanoutMessages: number;
  /** Messages per publisher of `mqtt-pairs`. */
  mqttPairsMessages: number;
  /** Messages per second of `mqtt-rate`. */
  mqttRate: number;
  /** Connections of `mqtt-idle`. */
  idleConnections: number;
}

/** What `mqtt-idle` measured. */
export interface IdleFigures {
  /** Connections asked for, and those that got a CONNACK accepting them. */
  wanted: number;
  connected: number;
  /** Seconds to open them all. */
  connectSeconds: number;
  /** RSS before the clients came, with them (settled), and after they left (settled). */
  rssBeforeKb: number;
  rssWithKb: number;
  rssAfterKb: number;
}

/**
 * KB of RSS per idle connection: what holding them adds to the broker without them,
 * before they came or after they left, whichever is lower (a collection may also free
 * what the broker held before they came).
 */
export const idleKbPerConnection = (idle: IdleFigures): number =>
  idle.connected > 0
    ? (idle.rssWithKb - Math.min(idle.rssBeforeKb, idle.rssAfterKb)) / idle.connected
    : NaN;

/** What a scenario measured against one broker. */
export interface ScenarioResult {
  name: string;
  /** The broker it ran against. */
  broker: string;
  description: string;
  published: number;
  /** Deliveries expected: messages × subscribers of their topic. */
  expected: number;
  /** Deliveries received (duplicates included). */
  received: number;
  seconds: number;
  latency: ReturnType<Latencies["summary"]>;
  /** Broker user+system CPU over the measured part, µs. */
  brokerCpuUs: number;
  /** The load generator's own CPU over the same part, µs. */
  generatorCpuUs: number;
  brokerIdleRssKb: number;
  brokerRssKb: number;
  brokerPeakRssKb: number;
  timedOut: boolean;
  completeness: Completeness;
  /** QoS 0: missing deliveries are loss, a figure, not a failure. */
  lossAllowed?: boolean;
  /** `mqtt-idle` only. */
  idle?: IdleFigures;
  problems: { count: number; lines: string[] };
  notes: string[];
}

/** One row of the comparison table: a figure a scenario yields, and which way is better. */
export interface Headline {
  label: string;
  unit: string;
  better: "higher" | "lower";
  value(r: ScenarioResult): number;
}

/** A scenario: builds its plan from the options and runs it against a started broker. */
export interface Scenario {
  name: string;
  protocol: "jsonl" | "mqtt";
  /** Rows of the comparison table (`--vs`), for these options. */
  headlines(o: ScenarioOptions): Headline[];
  run(broker: BrokerUnderTest, o: ScenarioOptions): Promise<ScenarioResult>;
}

/** Deliveries per second of a result. */
export const rateOf = (r: ScenarioResult): number => r.received / Math.max(1e-9, r.seconds);

/** Broker CPU µs per delivery of a result. */
export const brokerUsPerMessage = (r: ScenarioResult): number =>
  r.brokerCpuUs / Math.max(1, r.received);
