/**
 * `deno task bench`: MessageBroker's benchmark suite (issue 5). Each scenario starts a
 * broker as a child process (MessageBroker on a fresh data directory; with `--vs`, other
 * brokers too, alternating with it), pinned to one core with `taskset` when there is one,
 * loads it from raw sockets (JSON lines, or MQTT 3.1.1), and reports throughput, publish
 * → delivery latency, the broker's CPU per delivered message and its memory, the load
 * generator's own CPU per message, and a completeness check.
 *
 * Figures are printed, never judged: only a failed completeness check of MessageBroker
 * (a message missing, duplicated or out of order; QoS 0 loss is a figure) makes the exit
 * code non-zero. See bench/README.md for the scenarios, flags and what to install.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type BrokerUnderTest, startMessageBroker, which } from "./broker_process.ts";
import { type FsyncLoad, startFsyncLoad } from "./fsync_load.ts";
import { jsonlScenarios } from "./jsonl_scenarios.ts";
import { mqttScenarios } from "./mqtt_scenarios.ts";
import { CLOCK_TICKS_PER_SECOND } from "./proc_stats.ts";
import { failed, printComparison, printDetails, printTable } from "./report.ts";
import type { Scenario, ScenarioOptions, ScenarioResult } from "./scenario.ts";
import { installNotes, OTHER_BROKERS, type OtherBroker } from "./vs.ts";

const SCENARIOS: readonly Scenario[] = [...jsonlScenarios, ...mqttScenarios];

const HELP = `deno task bench [flags]        (bench/README.md has the details)

  --scenario LIST   all, jsonl, mqtt, or names separated by commas: ${
  SCENARIOS.map((s) => s.name).join(", ")
}
                    (default all; with --vs, mqtt)
  --vs LIST         other brokers, separated by commas: ${Object.keys(OTHER_BROKERS).join(", ")}
  --rounds N        runs of each scenario per broker, alternating brokers (each round starts
                    with the next broker); each round runs every scenario (default 1)
  --pin CORE|none   core the brokers are pinned to with taskset (default 0)
  --timeout S       seconds after which a scenario's sockets are closed (default 60)
  --window N        QoS 1/2 messages in flight per publisher (default 100)
  --warmup N        MQTT: messages of an unmeasured 1 → 1 run before each scenario
                    (default 50000; 0 for none)
  --paced-warmup S  MQTT: seconds of an unmeasured run at a paced scenario's own rate after
                    that (mqtt-rate; default 3; 0 for none)
  --jsonl-warmup N  JSON-line: messages per publisher of an unmeasured run of the same
                    shape before each scenario (default 5000; 0 for none)
  --consumer-window N  JSON-line messages outstanding per consumer and topic, the SUB's
                    "window" (default 100; 1 is the seed's protocol)
  --pairs N  --fanout N  --duration S
  JSON-line: --messages N --rate MSG_PER_S
  MQTT: --qos0-messages N --qos1-messages N --qos2-messages N --mqtt-fanout-messages N
        --mqtt-pairs-messages N --mqtt-rate MSG_PER_S --idle-connections N
  --fsync-load N    with --vs: N disk flushes a second on the brokers' core while each
                    other broker runs (what MessageBroker's commits cost the machine; 0 = none)
  --install         print what each --vs broker needs, and whether it is found`;

// `deno task bench -- --vs x` passes the "--" on: drop it.
const args = Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args;
const { values } = parseArgs({
  args,
  options: {
    scenario: { type: "string", default: "all" },
    vs: { type: "string" },
    rounds: { type: "string", default: "1" },
    pin: { type: "string", default: "0" },
    pairs: { type: "string", default: "10" },
    // With 10 pairs, the sizes of mqtt-qos2 (150,000 measured, 50,000 warm-up), whose CPU
    // per delivery the pairs' is compared with.
    messages: { type: "string", default: "15000" },
    fanout: { type: "string", default: "50" },
    rate: { type: "string", default: "1000" },
    duration: { type: "string", default: "5" },
    window: { type: "string", default: "100" },
    "consumer-window": { type: "string", default: "100" },
    warmup: { type: "string", default: "50000" },
    "paced-warmup": { type: "string", default: "3" },
    "jsonl-warmup": { type: "string", default: "5000" },
    timeout: { type: "string", default: "60" },
    "qos0-messages": { type: "string", default: "300000" },
    "qos1-messages": { type: "string", default: "300000" },
    "qos2-messages": { type: "string", default: "150000" },
    "mqtt-fanout-messages": { type: "string", default: "10000" },
    "mqtt-pairs-messages": { type: "string", default: "30000" },
    "mqtt-rate": { type: "string", default: "10000" },
    "idle-connections": { type: "string", default: "10000" },
    "fsync-load": { type: "string", default: "0" },
    install: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
if (values.install) {
  console.log(await installNotes());
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
const int = (flag: keyof typeof values, max: number) =>
  Math.round(positive(flag, String(values[flag]), max));
const options: ScenarioOptions = {
  pairs: int("pairs", 1000),
  messages: int("messages", 1_000_000),
  fanout: int("fanout", 1000),
  rate: positive("rate", values.rate, 1_000_000),
  duration: positive("duration", values.duration, 600),
  window: int("window", 10_000),
  consumerWindow: int("consumer-window", 1024),
  warmup: values.warmup === "0" ? 0 : int("warmup", 10_000_000),
  pacedWarmup: values["paced-warmup"] === "0"
    ? 0
    : positive("paced-warmup", values["paced-warmup"], 600),
  jsonlWarmup: values["jsonl-warmup"] === "0" ? 0 : int("jsonl-warmup", 1_000_000),
  timeout: positive("timeout", values.timeout, 3600),
  qos0Messages: int("qos0-messages", 100_000_000),
  qos1Messages: int("qos1-messages", 100_000_000),
  qos2Messages: int("qos2-messages", 100_000_000),
  mqttFanoutMessages: int("mqtt-fanout-messages", 10_000_000),
  mqttPairsMessages: int("mqtt-pairs-messages", 10_000_000),
  mqttRate: positive("mqtt-rate", values["mqtt-rate"], 10_000_000),
  idleConnections: int("idle-connections", 1_000_000),
};
const rounds = int("rounds", 100);
const fsyncLoad = values["fsync-load"] === "0" ? 0 : int("fsync-load", 100_000);

/** A /proc or /sys file's text via `cat` (Deno reads /proc only with --allow-all); "" if none. */
async function cat(path: string): Promise<string> {
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped", stderr: "null" })
    .output().catch(() => undefined);
  return out?.success ? new TextDecoder().decode(out.stdout) : "";
}

/** True when the CPU list `list` ("0-1", "0,2-3") holds `cpu`. */
function cpuListHas(list: string, cpu: number): boolean {
  return list.split(",").some((part) => {
    const [a, b] = part.split("-").map(Number);
    return b === undefined ? a === cpu : a! <= cpu && cpu <= b;
  });
}

// The machine's CPUs (navigator.hardwareConcurrency counts only those taskset allows us).
const online = (await cat("/sys/devices/system/cpu/online")).trim() ||
  `0-${navigator.hardwareConcurrency - 1}`;
let pin: number | undefined;
if (values.pin !== "none") {
  pin = Number(values.pin);
  if (!Number.isInteger(pin) || !cpuListHas(online, pin)) {
    console.error(`bench: --pin must be none or an online CPU (${online}), got "${values.pin}"`);
    Deno.exit(2);
  }
}

// --- which brokers
const others: [string, OtherBroker][] = [];
for (const key of (values.vs ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
  const b = OTHER_BROKERS[key];
  if (!b) {
    console.error(`bench: --vs takes ${Object.keys(OTHER_BROKERS).join(", ")}; got "${key}"`);
    Deno.exit(2);
  }
  const missing = await b.missing();
  if (missing) {
    console.log(`--vs ${key}: skipped, ${missing}.\n  To install: ${b.install}`);
    continue;
  }
  others.push([key, b]);
}
if (values.vs !== undefined && others.length === 0) {
  console.log("No --vs broker is available: running MessageBroker alone.");
}

// --- which scenarios
const wanted = values.scenario === "all" && values.vs !== undefined ? "mqtt" : values.scenario;
const chosen: Scenario[] = [];
for (const name of wanted.split(",").map((s) => s.trim())) {
  const picked = name === "all"
    ? SCENARIOS
    : name === "mqtt" || name === "jsonl"
    ? SCENARIOS.filter((s) => s.protocol === name)
    : SCENARIOS.filter((s) => s.name === name);
  if (picked.length === 0) {
    console.error(
      `bench: --scenario takes all, jsonl, mqtt or names from ${
        SCENARIOS.map((s) => s.name).join(", ")
      }; got "${name}"`,
    );
    Deno.exit(2);
  }
  for (const s of picked) if (!chosen.includes(s)) chosen.push(s);
}

// --- header
const selfCpus = /^Cpus_allowed_list:\s*(\S+)/m.exec(await cat(`/proc/${Deno.pid}/status`))?.[1];
const hasTaskset = which("taskset") !== undefined;
console.log(
  `MessageBroker bench: Deno ${Deno.version.deno}, CPUs ${online} online, ${Deno.build.os}; brokers in ` +
    `child processes, CPU from /proc (${CLOCK_TICKS_PER_SECOND} ticks/s, so ±${
      1000 / CLOCK_TICKS_PER_SECOND
    } ms per reading)`,
);
if (pin === undefined) console.log("Brokers not pinned (--pin none).");
else if (!hasTaskset) console.log("taskset not found: brokers not pinned (util-linux has it).");
else {
  console.log(
    `Brokers pinned to CPU ${pin} (taskset -c ${pin}); the generator may use CPUs ${
      selfCpus ?? "?"
    }.`,
  );
  if (selfCpus === undefined || cpuListHas(selfCpus, pin)) {
    console.log(
      `  The generator shares CPU ${pin} with the broker: run it pinned elsewhere, e.g. ` +
        `\`taskset -c ${pin === 0 ? 1 : 0} deno task bench ...\`.`,
    );
  }
}
/** Another broker's name in the report: with the flushes it paid, when it paid any. */
const labelOf = (b: OtherBroker) => fsyncLoad > 0 ? `${b.name} + ${fsyncLoad} fsyncs/s` : b.name;
if (fsyncLoad > 0 && others.length > 0) {
  console.log(
    `Beside each other broker, ${fsyncLoad} disk flushes a second (28 KiB written and fdatasync'd each) on ` +
      `its core, in a temporary directory, from its start to its stop (--fsync-load).`,
  );
}
console.log(
  `Brokers: MessageBroker${others.map(([, b]) => `, ${labelOf(b)}`).join("")}; scenarios: ${
    chosen.map((s) => s.name).join(", ")
  }; ${rounds} round(s)`,
);

// --- run: each round runs every scenario, each on every broker in turn.
// Rounds outermost: a figure compared across scenarios (JSON-line against MQTT QoS 2) is
// then taken within the same minute as the one it is compared with, not minutes apart,
// when the machine may run at another speed.
const results: ScenarioResult[] = [];
const skipped = new Map<string, string>();
let ourFailure = false;
const brokerNames = ["MessageBroker", ...others.map(([, b]) => labelOf(b))];
for (let round = 1; round <= rounds; round++) {
  for (const scenario of chosen) {
    const contenders: {
      name: string;
      start: () => Promise<BrokerUnderTest>;
      other?: OtherBroker;
    }[] = [
      { name: "MessageBroker", start: () => startMessageBroker({ pin }) },
    ];
    if (scenario.protocol === "mqtt") {
      for (const [, b] of others) {
        contenders.push({
          name: labelOf(b),
          start: () => b.start({ pin }),
          other: b,
        });
      }
    }
    // Each round starts with the next broker (A, B in round 1, B, A in round 2, ...), so
    // that none always runs first after a scenario's start, or always right after the same
    // other broker's shutdown.
    const shift = (round - 1) % contenders.length;
    for (const c of [...contenders.slice(shift), ...contenders.slice(0, shift)]) {
      const why = c.other?.unsupported[scenario.name];
      if (why) {
        skipped.set(`${scenario.name}|${c.name}`, why);
        if (round === 1) console.log(`\n${scenario.name} on ${c.name}: skipped (${why})`);
        continue;
      }
      let broker: BrokerUnderTest | undefined;
      let load: FsyncLoad | undefined;
      try {
        broker = await c.start();
        if (c.other !== undefined && fsyncLoad > 0) {
          load = await startFsyncLoad(
            fsyncLoad,
            hasTaskset ? pin : undefined,
            3 * options.timeout + 60,
          );
          broker = { ...broker, name: c.name };
        }
        const r = await scenario.run(broker, options);
        if (load) {
          const done = await load.stop();
          load = undefined;
          const cpu = done.cpuMicros === undefined
            ? ""
            : `; its CPU, start-up included, ${
              (done.cpuMicros / done.fsyncs).toFixed(0)
            } µs a flush`;
          r.notes.push(
            `fsync load beside it: ${done.fsyncs} flushes in ${done.seconds.toFixed(1)} s (${
              Math.round(done.fsyncs / done.seconds)
            }/s${cpu})`,
          );
        }
        printDetails(r);
        results.push(r);
        if (c.other === undefined && failed(r)) ourFailure = true;
      } catch (err) {
        if (c.other === undefined) ourFailure = true;
        skipped.set(`${scenario.name}|${c.name}`, "did not run");
        console.error(`\n!!! ${scenario.name} on ${c.name} could not run: ${err}`);
      } finally {
        await load?.stop().catch(() => {});
        await broker?.stop();
      }
    }
  }
}

printTable(results);
printComparison(chosen, options, brokerNames, results, skipped);
if (ourFailure) {
  console.error(
    "\n!!! MessageBroker FAILED a completeness check or a scenario: see the runs marked FAIL " +
      "above (exit code 1)",
  );
  Deno.exit(1);
}
