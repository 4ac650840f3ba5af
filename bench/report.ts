/**
 * Printing: a block of details per scenario as it finishes, and the table at the end.
 *
 * @module
 */
import type { ScenarioResult } from "./jsonl_scenarios.ts";

const ms = (x: number) => (Number.isNaN(x) ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const mb = (kb: number) => (kb / 1024).toFixed(1);

function verdict(r: ScenarioResult): string {
  if (r.completeness.ok && !r.timedOut) return "ok";
  return "FAIL";
}

/** The details of one scenario; a failed completeness check is printed loudly. */
export function printDetails(r: ScenarioResult): void {
  const delivered = r.received;
  console.log(`\n${r.name}: ${r.description}`);
  console.log(
    `  ${r.published} published, ${delivered} of ${r.expected} deliveries in ${
      r.seconds.toFixed(2)
    } s: ${(delivered / r.seconds).toFixed(0)} deliveries/s`,
  );
  console.log(
    `  latency publish → delivery: p50 ${ms(r.latency.p50)} ms, p99 ${ms(r.latency.p99)} ms, ` +
      `p99.9 ${ms(r.latency.p999)} ms, max ${ms(r.latency.max)} ms`,
  );
  console.log(
    `  broker CPU ${(r.brokerCpuUs / 1e6).toFixed(2)} s: ${
      (r.brokerCpuUs / Math.max(1, delivered)).toFixed(0)
    } µs per delivery (${(r.brokerCpuUs / 1e4 / r.seconds).toFixed(0)}% of a core)`,
  );
  console.log(
    `  generator CPU ${(r.generatorCpuUs / 1e6).toFixed(2)} s: ${
      (r.generatorCpuUs / Math.max(1, delivered)).toFixed(0)
    } µs per delivery (${(r.generatorCpuUs / 1e4 / r.seconds).toFixed(0)}% of a core)`,
  );
  console.log(
    `  broker RSS ${mb(r.brokerIdleRssKb)} MiB idle → ${mb(r.brokerRssKb)} MiB after, ` +
      `peak ${mb(r.brokerPeakRssKb)} MiB`,
  );
  for (const n of r.notes) console.log(`  note: ${n}`);
  const c = r.completeness;
  if (c.ok && !r.timedOut) {
    console.log("  completeness: ok (nothing missing, no duplicate, in order per topic)");
  } else {
    console.error(`  !!! COMPLETENESS FAILED in ${r.name}${r.timedOut ? " (timed out)" : ""}:`);
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

/** The summary table of every scenario run. */
export function printTable(results: ScenarioResult[]): void {
  const head = [
    "scenario",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "broker µs/msg",
    "gen µs/msg",
    "broker RSS MiB",
    "complete",
  ];
  const rows = results.map((r) => [
    r.name,
    (r.received / r.seconds).toFixed(0),
    ms(r.latency.p50),
    ms(r.latency.p99),
    ms(r.latency.p999),
    (r.brokerCpuUs / Math.max(1, r.received)).toFixed(0),
    (r.generatorCpuUs / Math.max(1, r.received)).toFixed(0),
    mb(r.brokerPeakRssKb),
    verdict(r),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    "| " + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join(" | ") +
    " |";
  console.log("\n" + line(head));
  console.log(
    "|" +
      widths.map((w, i) => "-".repeat(w + 1) + (i === 0 ? "-" : ":")).join("|") +
      "|",
  );
  for (const row of rows) console.log(line(row));
}
