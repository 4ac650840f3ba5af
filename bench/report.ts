/**
 * Printing: a block of details per scenario run as it finishes, the table of every run
 * at the end, and with `--vs` the comparison: one row per headline figure, a column per
 * broker, and MessageBroker's figure divided by each other broker's.
 *
 * @module
 */
import {
  brokerUsPerMessage,
  idleKbPerConnection,
  rateOf,
  type Scenario,
  type ScenarioOptions,
  type ScenarioResult,
} from "./scenario.ts";

const ms = (x: number) => (Number.isNaN(x) ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const mb = (kb: number) => (kb / 1024).toFixed(1);

/** True when the run is a failure: something missing (except QoS 0 loss), duplicated, late. */
export function failed(r: ScenarioResult): boolean {
  const c = r.completeness;
  if (r.timedOut) return true;
  if (r.lossAllowed) return c.duplicates + c.outOfOrder + c.unexpected > 0;
  return !c.ok;
}

function verdict(r: ScenarioResult): string {
  if (failed(r)) return "FAIL";
  if (r.lossAllowed && r.completeness.missing > 0) {
    return `ok, ${(100 * r.completeness.missing / Math.max(1, r.expected)).toFixed(1)}% lost`;
  }
  return "ok";
}

/** The details of one run; a failed completeness check is printed loudly. */
export function printDetails(r: ScenarioResult): void {
  const delivered = r.received;
  const perMsg = (us: number) => (us / Math.max(1, delivered)).toFixed(1);
  const core = (us: number) => (us / 1e4 / Math.max(1e-9, r.seconds)).toFixed(0);
  console.log(`\n${r.name} on ${r.broker}: ${r.description}`);
  if (r.idle) {
    console.log(`  broker CPU ${(r.brokerCpuUs / 1e6).toFixed(2)} s for the connects`);
  } else {
    console.log(
      `  ${r.published} published, ${delivered} of ${r.expected} deliveries in ${
        r.seconds.toFixed(2)
      } s: ${rateOf(r).toFixed(0)} deliveries/s`,
    );
    console.log(
      `  latency publish → delivery: p50 ${ms(r.latency.p50)} ms, p99 ${ms(r.latency.p99)} ms, ` +
        `p99.9 ${ms(r.latency.p999)} ms, max ${ms(r.latency.max)} ms`,
    );
    console.log(
      `  broker CPU ${(r.brokerCpuUs / 1e6).toFixed(2)} s: ${perMsg(r.brokerCpuUs)} µs per ` +
        `delivery (${core(r.brokerCpuUs)}% of a core)`,
    );
    console.log(
      `  generator CPU ${(r.generatorCpuUs / 1e6).toFixed(2)} s: ${perMsg(r.generatorCpuUs)} µs ` +
        `per delivery (${core(r.generatorCpuUs)}% of a core)${
          r.generatorCpuUs / 1e4 / r.seconds > 90 ? " — the generator may be the limit" : ""
        }`,
    );
    console.log(
      `  broker RSS ${mb(r.brokerIdleRssKb)} MiB idle → ${mb(r.brokerRssKb)} MiB after, ` +
        `peak ${mb(r.brokerPeakRssKb)} MiB`,
    );
  }
  for (const n of r.notes) console.log(`  note: ${n}`);
  const c = r.completeness;
  if (!failed(r)) {
    if (r.idle) console.log("  complete: every connection accepted");
    else if (r.lossAllowed) {
      console.log("  completeness: ok (no duplicate, in order; QoS 0 loss is a figure above)");
    } else console.log("  completeness: ok (nothing missing, no duplicate, in order per topic)");
  } else {
    console.error(
      `  !!! COMPLETENESS FAILED in ${r.name} on ${r.broker}${r.timedOut ? " (timed out)" : ""}:`,
    );
    console.error(
      `  !!! ${c.missing} missing, ${c.duplicates} duplicates, ${c.outOfOrder} out of order, ` +
        `${c.unexpected} unexpected`,
    );
    for (const p of c.problems) console.error(`  !!! ${p}`);
  }
  if (r.problems.count > 0) {
    console.error(`  ${r.problems.count} problems seen by the load generator:`);
    for (const p of r.problems.lines) console.error(`    ${p}`);
  }
}

/** Prints `rows` under `head` as a Markdown table; the first `left` columns left-aligned. */
export function printMarkdown(head: string[], rows: string[][], left = 1): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    "| " +
    cells.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ") +
    " |";
  console.log(line(head));
  console.log(
    "|" + widths.map((w, i) => "-".repeat(w + 1) + (i < left ? "-" : ":")).join("|") + "|",
  );
  for (const row of rows) console.log(line(row));
}

/** The table of every run. */
export function printTable(results: ScenarioResult[]): void {
  const brokers = new Set(results.map((r) => r.broker));
  const withBroker = brokers.size > 1;
  const head = [
    "scenario",
    ...(withBroker ? ["broker"] : []),
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "broker µs/msg",
    "gen µs/msg",
    "broker RSS MiB",
    "complete",
  ];
  const rows = results.map((r) => {
    if (r.idle) {
      const per = r.idle.connected > 0 ? idleKbPerConnection(r.idle).toFixed(2) : "-";
      return [
        r.name,
        ...(withBroker ? [r.broker] : []),
        `${r.idle.connected} conns`,
        "-",
        "-",
        "-",
        "-",
        "-",
        `${mb(r.idle.rssBeforeKb)}→${mb(r.idle.rssWithKb)}→${mb(r.idle.rssAfterKb)} (${per} KB/c)`,
        verdict(r),
      ];
    }
    return [
      r.name,
      ...(withBroker ? [r.broker] : []),
      rateOf(r).toFixed(0),
      ms(r.latency.p50),
      ms(r.latency.p99),
      ms(r.latency.p999),
      brokerUsPerMessage(r).toFixed(1),
      (r.generatorCpuUs / Math.max(1, r.received)).toFixed(1),
      mb(r.brokerPeakRssKb),
      verdict(r),
    ];
  });
  console.log("");
  printMarkdown(head, rows, withBroker ? 2 : 1);
}

function median(xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function figure(x: number): string {
  if (Number.isNaN(x)) return "-";
  if (x >= 1000) return x.toFixed(0);
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/**
 * The comparison table: a row per headline of each scenario run, a column per broker
 * (the median over rounds), and MessageBroker / other for each other broker. A broker
 * that could not run a scenario shows why; a failed run is marked "FAIL".
 */
export function printComparison(
  scenarios: readonly Scenario[],
  options: ScenarioOptions,
  brokers: string[],
  results: ScenarioResult[],
  skipped: Map<string, string>,
): void {
  const [ours, ...others] = brokers;
  const head = [
    "figure",
    "better",
    ...brokers,
    ...others.map((b) => `${ours}/${b}`),
  ];
  const rows: string[][] = [];
  for (const s of scenarios) {
    const runs = results.filter((r) => r.name === s.name);
    if (runs.length === 0) continue;
    for (const h of s.headlines(options)) {
      const cells: string[] = [];
      const values: number[] = [];
      for (const b of brokers) {
        const mine = runs.filter((r) => r.broker === b);
        const why = skipped.get(`${s.name}|${b}`);
        const v = median(mine.filter((r) => !failed(r)).map((r) => h.value(r)));
        values.push(v);
        if (mine.length === 0) cells.push(why ?? "-");
        else if (mine.every(failed)) cells.push("FAIL");
        else cells.push(figure(v) + (mine.some(failed) ? " (some FAIL)" : ""));
      }
      const ratios = values.slice(1).map((v) =>
        Number.isNaN(v) || Number.isNaN(values[0]!) || v === 0
          ? "-"
          : `${(values[0]! / v).toFixed(2)}×`
      );
      rows.push([`${h.label} (${h.unit})`, h.better, ...cells, ...ratios]);
    }
  }
  // Issue 5's JSON-line target: MessageBroker's CPU per JSON-line QoS 2 delivery (10 → 10)
  // against each other broker's CPU per MQTT QoS 2 delivery, both measured in this run.
  const cpu = (name: string, broker: string) =>
    median(
      results.filter((r) => r.name === name && r.broker === broker && !failed(r))
        .map(brokerUsPerMessage),
    );
  const jsonl = cpu("pairs", ours!);
  if (!Number.isNaN(jsonl) && others.length > 0) {
    const theirs = others.map((b) => cpu("mqtt-qos2", b));
    if (theirs.some((v) => !Number.isNaN(v))) {
      rows.push([
        `JSON-line QoS 2 delivery (${ours}) against MQTT QoS 2 delivery (the others), broker CPU (µs)`,
        "lower",
        figure(jsonl),
        ...theirs.map((v) => Number.isNaN(v) ? "-" : figure(v)),
        ...theirs.map((v) => Number.isNaN(v) || v === 0 ? "-" : `${(jsonl / v).toFixed(2)}×`),
      ]);
    }
  }
  console.log("");
  printMarkdown(head, rows, 2);
}
