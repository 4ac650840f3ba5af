/**
 * `--fsync-load N`: disk flushes at N a second beside another broker, on its core, while it
 * runs a scenario. MessageBroker flushes its store before every acknowledgement (each Deno
 * KV commit ends with an `fsync`); Mosquitto and Aedes keep messages in memory and flush
 * nothing. On the virtual machines this project is measured on, a flush is not free for
 * the processes that do not make it either: the whole machine pauses around it. This load
 * lets another broker pay as many flushes as MessageBroker makes at the same rate (its
 * store line says how many), so that the comparison can separate what our code costs
 * from what the machine charges for durability.
 *
 * Run as a program (the bench starts it so, pinned with `taskset` like the brokers):
 * `deno run --allow-read=DIR --allow-write=DIR bench/fsync_load.ts DIR RATE MAX_SECONDS`
 * writes 28 KiB and `fdatasync`s them RATE times a second, on a schedule (after a
 * slow flush the next ones follow at once until it is kept again), until a file named
 * `stop` appears in DIR or MAX_SECONDS have passed, and prints `{"fsyncs": n, "seconds": s}`.
 *
 * @module
 */
import { join } from "node:path";
import { cpuMicros } from "./proc_stats.ts";

/**
 * Bytes written before each flush: 7 pages of 4 KiB, what one of MessageBroker's commits
 * adds to SQLite's write-ahead log at 10k msg/s (docs/performance.md).
 */
const WRITE = 7 * 4096;
const FILE = "flushes.bin";
/** Made by {@link FsyncLoad.stop}: the child stops at its next flush. */
const STOP = "stop";
/** Writes the file cycles through (~4 MiB), rewritten in place as a write-ahead log is. */
const SLOTS = 146;

/** A running load. */
export interface FsyncLoad {
  /** Stops it; what it did, and the CPU time it took (µs, undefined when unreadable). */
  stop(): Promise<{ fsyncs: number; seconds: number; cpuMicros?: number }>;
}

/**
 * Starts `rate` flushes a second in a child process, pinned to core `pin` with `taskset`
 * unless it is undefined, in a temporary directory (on the filesystem MessageBroker's data
 * directories are made on). It stops by itself after `maxSeconds`.
 */
export async function startFsyncLoad(
  rate: number,
  pin: number | undefined,
  maxSeconds: number,
): Promise<FsyncLoad> {
  const dir = await Deno.makeTempDir({ prefix: "mb-bench-fsync-" });
  const program = [
    Deno.execPath(),
    "run",
    `--allow-read=${dir}`,
    `--allow-write=${dir}`,
    import.meta.filename ?? new URL(import.meta.url).pathname,
    dir,
    String(rate),
    String(maxSeconds),
  ];
  const [command, ...args] = pin !== undefined
    ? ["taskset", "-c", String(pin), ...program]
    : program;
  const child = new Deno.Command(command as string, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  return {
    async stop() {
      const cpu = await cpuMicros(child.pid).catch(() => undefined);
      await Deno.writeTextFile(join(dir, STOP), "");
      const out = await output;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
      try {
        const r = JSON.parse(text) as { fsyncs: number; seconds: number };
        if (typeof r.fsyncs === "number" && typeof r.seconds === "number") {
          return { ...r, cpuMicros: cpu };
        }
      } catch {
        // reported below
      }
      throw new Error(
        `the fsync load printed no result (exit ${out.code}): ${
          new TextDecoder().decode(out.stderr).slice(-2000)
        }`,
      );
    },
  };
}

/**
 * The child: flushes on schedule until the stop file appears or `maxSeconds` have passed,
 * then reports. Synchronous calls and a blocking sleep, as a store's writer thread makes
 * them: asynchronous file calls would add a thread pool's hand-offs to each flush's CPU.
 */
function flush(dir: string, rate: number, maxSeconds: number): void {
  const file = Deno.openSync(join(dir, FILE), { write: true, create: true });
  const block = new Uint8Array(WRITE).fill(0x5a);
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const interval = 1000 / rate;
  const start = performance.now();
  let n = 0;
  while (performance.now() - start < maxSeconds * 1000 && !exists(join(dir, STOP))) {
    file.seekSync((n % SLOTS) * WRITE, Deno.SeekMode.Start);
    let written = 0;
    while (written < WRITE) written += file.writeSync(block.subarray(written));
    file.syncDataSync();
    n++;
    // The next one's due time: the schedule, not the time of the last flush.
    const wait = start + n * interval - performance.now();
    if (wait > 0) Atomics.wait(sleeper, 0, 0, wait);
  }
  const seconds = (performance.now() - start) / 1000;
  file.close();
  console.log(JSON.stringify({ fsyncs: n, seconds: Number(seconds.toFixed(3)) }));
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  const [dir, rate, maxSeconds] = Deno.args;
  const r = Number(rate);
  const s = Number(maxSeconds);
  if (!dir || !(r > 0) || !(s > 0)) {
    console.error("usage: fsync_load.ts DIR RATE MAX_SECONDS");
    Deno.exit(2);
  }
  flush(dir, r, s);
}
