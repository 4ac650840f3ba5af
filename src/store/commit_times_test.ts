import assert from "node:assert/strict";
import { CommitTimes } from "./commit_times.ts";

/** The exact percentile of `values` by the nearest-rank rule. */
function exact(values: number[], q: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1] as number;
}

Deno.test("CommitTimes: percentiles within one bucket (19 %) above the exact ones", () => {
  const t = new CommitTimes();
  const values: number[] = [];
  // A skewed spread like a store's: most near a millisecond, a tail to a few hundred.
  let x = 12345;
  for (let i = 0; i < 5000; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const u = x / 2 ** 31;
    const ms = u < 0.98 ? 0.3 + u : 5 + 300 * (u - 0.98) * 50;
    values.push(ms);
    t.record(ms);
  }
  assert.equal(t.count, 5000);
  assert.equal(t.maxMs, Math.max(...values));
  for (const q of [0.5, 0.9, 0.99, 0.999, 1]) {
    const want = exact(values, q);
    const got = t.percentile(q);
    assert.ok(got >= want && got <= want * 1.19, `p${q * 100}: ${got} against ${want}`);
  }
});

Deno.test("CommitTimes: nothing recorded reads 0; the top never above the slowest", () => {
  const t = new CommitTimes();
  assert.equal(t.percentile(0.99), 0);
  assert.equal(t.maxMs, 0);
  t.record(3);
  assert.equal(t.percentile(0.5), 3);
  assert.equal(t.percentile(1), 3);
  t.record(0); // a commit measured at 0 (a coarse clock) counts in the lowest bucket
  t.record(Number.NaN); // ignored as a duration, still counted
  assert.equal(t.count, 3);
  assert.equal(t.percentile(0.34), 0.001);
});

Deno.test("CommitTimes: percentiles of the commits recorded since a snapshot", () => {
  const t = new CommitTimes();
  for (let i = 0; i < 100; i++) t.record(50);
  const mark = t.snapshot();
  assert.equal(t.percentile(0.5, mark), 0, "none since the snapshot");
  for (let i = 0; i < 100; i++) t.record(1);
  const p99 = t.percentile(0.99, mark);
  assert.ok(p99 >= 1 && p99 < 1.19, `the recent p99 ${p99}, not the earlier 50 ms`);
  assert.ok(t.percentile(0.99) >= 50, "over all of them the slow ones still count");
});
