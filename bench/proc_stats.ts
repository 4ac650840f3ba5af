/**
 * CPU time and memory of a process, read from Linux's /proc: the broker's (a child
 * process) and the load generator's own (`/proc/self`), so each side's cost per message
 * can be reported separately.
 *
 * Deno lets a program read /proc only with `--allow-all`, so the files are read by
 * `cat` (two short-lived processes per reading, outside the measured work: the readings
 * are taken before and after it).
 *
 * @module
 */

async function readProc(pid: number | "self", file: string): Promise<string> {
  // "self" would be cat itself: name Deno's own pid instead.
  const path = `/proc/${pid === "self" ? Deno.pid : pid}/${file}`;
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`cannot read ${path}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * Clock ticks per second of the utime/stime fields of /proc/PID/stat (USER_HZ). It is
 * 100 on every mainstream Linux build; Deno has no sysconf to ask, so it is fixed here.
 */
export const CLOCK_TICKS_PER_SECOND = 100;

/**
 * User plus system CPU time of a process (all its threads) in microseconds, at a
 * resolution of one clock tick (10 ms). `pid` is a number or "self".
 *
 * @example
 * ```ts
 * const before = await cpuMicros("self");
 * ```
 */
export async function cpuMicros(pid: number | "self"): Promise<number> {
  const stat = await readProc(pid, "stat");
  // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the name: state is field 3, utime field 14, stime field 15 (proc(5)).
  const utime = Number(fields[14 - 3]);
  const stime = Number(fields[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`cannot read utime/stime from /proc/${pid}/stat: ${stat.slice(0, 200)}`);
  }
  return (utime + stime) * (1_000_000 / CLOCK_TICKS_PER_SECOND);
}

/** Resident and peak resident memory of a process, in KiB (/proc/PID/status). */
export interface Memory {
  /** VmRSS: resident now. */
  rssKb: number;
  /** VmHWM: the highest resident size since the process started. */
  peakKb: number;
  /**
   * RssAnon: the resident part that is the process's own memory (heap, stacks), without
   * file pages such as the executable's code, which the kernel pages in as code paths are
   * first run and may drop again at any time.
   */
  anonKb: number;
}

/** Reads VmRSS, VmHWM and RssAnon of `pid`. */
export async function memory(pid: number | "self"): Promise<Memory> {
  const status = await readProc(pid, "status");
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]);
  };
  return { rssKb: field("VmRSS"), peakKb: field("VmHWM"), anonKb: field("RssAnon") };
}

/**
 * Runs a full garbage collection of the load generator's heap, when V8 exposes one
 * (`--v8-flags=--expose-gc`, which `deno task bench` passes): called after a warm-up and
 * before a measured run, so that a collection of what earlier runs left (the generator's
 * old generation reaches V8's limit every few runs) does not fall inside the measured
 * window and hold the generator's sends and reads there. Every broker gets the same.
 * Without the flag it does nothing.
 */
export function collectGeneratorGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}
