/**
 * A CPU canary: repeats a fixed piece of work (~0.1 ms) on one core for some seconds and
 * reports the spells in which that work ran at least three times slower than its median
 * for 5 ms or more. Run it pinned, with nothing else on the core, and without V8's
 * compilers (whose tiers would change the work's cost as they go), to see whether the
 * machine itself slows a core down (a VM's vCPU sharing its host):
 *
 *   taskset -c 0 deno run --v8-flags=--jitless bench/cpu_canary.ts 30
 *
 * On this project's 2-core VM, idle otherwise, it finds clusters of such spells every
 * ~1.5 s, each spell 10–80 ms long with the work 5–9× slower: about 5 % of the time
 * (docs/performance.md, "What limits it now"). A broker that needs most of its core at a
 * fixed rate falls behind in each one.
 *
 * @module
 */

const seconds = Number(Deno.args[0] ?? 10);
if (!(seconds > 0 && seconds <= 600)) {
  console.error("usage: deno run bench/cpu_canary.ts [SECONDS (1-600), default 10]");
  Deno.exit(2);
}

/** The fixed work: some thousands of multiply-adds whose result is kept. */
function work(): number {
  let s = 0;
  for (let i = 0; i < 4_000; i++) s = (s + i * i) | 0;
  return s;
}

const starts: number[] = [];
const durations: number[] = [];
let sink = 0;
// One unrecorded second first, so that the compiler's work is not taken for a spell.
const warm = performance.now() + 1000;
while (performance.now() < warm) sink += work();
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  const t0 = performance.now();
  sink += work();
  starts.push(t0);
  durations.push(performance.now() - t0);
}

const sorted = [...durations].sort((a, b) => a - b);
const median = sorted[Math.floor(sorted.length / 2)] as number;
const spells: { at: number; ms: number; slowdown: number }[] = [];
let first = -1;
for (let i = 0; i <= durations.length; i++) {
  const slow = i < durations.length && (durations[i] as number) >= 3 * median;
  if (slow && first < 0) first = i;
  if (!slow && first >= 0) {
    const ms = (starts[i - 1] as number) + (durations[i - 1] as number) - (starts[first] as number);
    if (ms >= 5) {
      let sum = 0;
      for (let j = first; j < i; j++) sum += durations[j] as number;
      spells.push({
        at: (starts[first] as number) - (starts[0] as number),
        ms,
        slowdown: sum / (i - first) / median,
      });
    }
    first = -1;
  }
}
const q = (
  p: number,
) => (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number);
console.log(
  `${durations.length} chunks in ${seconds} s: median ${(median * 1000).toFixed(0)} µs, ` +
    `p99 ${(q(0.99) * 1000).toFixed(0)} µs, max ${q(1).toFixed(1)} ms (checksum ${sink % 10})`,
);
console.log(
  `spells of ≥ 5 ms at ≥ 3× the median: ${spells.length}` +
    (spells.length ? `, ${spells.reduce((n, s) => n + s.ms, 0).toFixed(0)} ms in all` : ""),
);
for (const s of spells) {
  console.log(
    `  at ${(s.at / 1000).toFixed(2)} s: ${s.ms.toFixed(1)} ms, ${s.slowdown.toFixed(1)}× slower`,
  );
}
