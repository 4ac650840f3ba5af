/**
 * `deno task bench`: MessageBroker's benchmark suite (issue 5). Each scenario starts the
 * broker as a child process on a fresh data directory, loads it from raw sockets, and
 * reports throughput, publish → delivery latency, the broker's CPU per delivered message
 * and memory, the load generator's own CPU per message, and a completeness check.
 *
 * Figures are printed, never judged: only a failed completeness check (a message
 * missing, duplicated or out of order) makes the exit code non-zero. See bench/README.md.
 *
 *   deno task bench [--scenario pairs|fanout|rate|all] [--pairs 10] [--messages 1000]
 *                   [--fanout 50] [--rate 1000] [--duration 5] [--window 100]
 *                   [--timeout 30] [--vs mosquitto]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type BrokerUnderTest, startMessageBroker } from "./broker_process.ts";
import { jsonlScenarios, type Scenario, type ScenarioOptions } from "./jsonl_scenarios.ts";
import { CLOCK_TICKS_PER_SECOND } from "./proc_stats.ts";
import { printDetails, printTable } from "./report.ts";
import { vsNote } from "./vs.ts";

/** Scenarios by protocol. MQTT scenarios join here with the MQTT front end (issue 4). */
const SCENARIOS: readonly Scenario[] = [...jsonlScenarios];

const { values } = parseArgs({
  args: Deno.args,
  options: {
    scenario: { type: "string", default: "all" },
    pairs: { type: "string", default: "10" },
    messages: { type: "string", default: "1000" },
    fanout: { type: "string", default: "50" },
    rate: { type: "string", default: "1000" },
    duration: { type: "string", default: "5" },
    window: { type: "string", default: "100" },
    timeout: { type: "string", default: "30" },
    vs: { type: "string" },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log(
    "deno task bench [--scenario pairs|fanout|rate|all] [--pairs N] [--messages N] [--fanout N]\n" +
      "                [--rate MSG_PER_S] [--duration S] [--window N] [--timeout S] [--vs BROKER]\n" +
      "See bench/README.md.",
  );
  Deno.exit(0);
}
if (values.vs !== undefined) {
  console.log(vsNote(values.vs));
  Deno.exit(0);
}

function positive(flag: string, text: string, max: number): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || n > max) {
    console.error(`bench: --${flag} must be a number in (0, ${max}], got "${text}"`);
    Deno.exit(2);
  }
  return n;
}
const options: ScenarioOptions = {
  pairs: Math.round(positive("pairs", values.pairs, 1000)),
  messages: Math.round(positive("messages", values.messages, 1_000_000)),
  fanout: Math.round(positive("fanout", values.fanout, 1000)),
  rate: positive("rate", values.rate, 1_000_000),
  duration: positive("duration", values.duration, 600),
  window: Math.round(positive("window", values.window, 10_000)),
  timeout: positive("timeout", values.timeout, 3600),
};
const chosen = values.scenario === "all"
  ? SCENARIOS
  : SCENARIOS.filter((s) => s.name === values.scenario);
if (chosen.length === 0) {
  console.error(
    `bench: --scenario must be all or one of ${SCENARIOS.map((s) => s.name).join(", ")}, ` +
      `got "${values.scenario}"`,
  );
  Deno.exit(2);
}

console.log(
  `MessageBroker bench: Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs, ` +
    `${Deno.build.os}; broker in a child process, CPU from /proc (${CLOCK_TICKS_PER_SECOND} ` +
    `ticks/s, so ±${1000 / CLOCK_TICKS_PER_SECOND} ms per reading)`,
);
const results = [];
let failed = false;
for (const scenario of chosen) {
  let broker: BrokerUnderTest | undefined;
  try {
    broker = await startMessageBroker();
    const r = await scenario.run(broker, options);
    printDetails(r);
    results.push(r);
    if (!r.completeness.ok || r.timedOut) failed = true;
  } catch (err) {
    failed = true;
    console.error(`\n!!! scenario ${scenario.name} could not run: ${err}`);
  } finally {
    await broker?.stop();
  }
}
printTable(results);
if (failed) {
  console.error(
    "\n!!! COMPLETENESS CHECK FAILED: see the scenarios marked FAIL above (exit code 1)",
  );
  Deno.exit(1);
}
