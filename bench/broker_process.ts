/**
 * Brokers under test, each a child process (so that its CPU time and memory can be read
 * from /proc apart from the load generator's), pinned to one core with `taskset` when it
 * is installed. MessageBroker is started from this checkout on a temporary data
 * directory and free ports; the other brokers (Mosquitto, Aedes, NATS, RabbitMQ) are in
 * `vs.ts` and use the same launcher.
 *
 * @module
 */
import { RUN_MAIN } from "../tests/helpers.ts";
import { MqttSocket } from "./mqtt_wire.ts";

/** A running broker that a scenario can load and measure. */
export interface BrokerUnderTest {
  /** Name in the report, e.g. "MessageBroker". */
  readonly name: string;
  /** Process id, for /proc/PID/stat and /proc/PID/status. */
  readonly pid: number;
  /** JSON-line consumer port, if the broker speaks JSON lines. */
  readonly consumerPort?: number;
  /** JSON-line publisher port. */
  readonly publisherPort?: number;
  /** MQTT port (plain TCP), if it listens for MQTT. */
  readonly mqttPort?: number;
  /** Stops the broker and removes what it left behind; prints its output if it failed. */
  stop(): Promise<void>;
}

/** How to start brokers: the core to pin them to, or undefined for no pinning. */
export interface StartOptions {
  pin?: number;
}

/** True when an executable `name` is in a directory of PATH (or /usr/sbin, /sbin). */
export function which(name: string): string | undefined {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    if (!dir) continue;
    try {
      const info = Deno.statSync(`${dir}/${name}`);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return `${dir}/${name}`;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** A free TCP port on 127.0.0.1 (for brokers that cannot pick their own and say it). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** What {@link spawnBroker} needs to start a broker process. */
export interface SpawnSpec {
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string>;
  /** Core to pin the process (and its threads and children) to with `taskset -c`. */
  pin?: number;
  /** Called with each output line (stdout and stderr) until ready; true = ready. */
  readyLine?: (line: string) => boolean;
  /** Ready once an MQTT CONNECT on this port is accepted (instead of, or after, a line). */
  probeMqttPort?: number;
  /** Milliseconds allowed to become ready. */
  startTimeoutMs: number;
}

/** A started broker process. */
export interface SpawnedBroker {
  readonly process: Deno.ChildProcess;
  readonly pid: number;
  /** The last lines it printed. */
  tail(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number>;
}

const TAIL_LINES = 200;

/**
 * Starts a broker process and waits until it is ready: a log line says so, or an MQTT
 * CONNECT is accepted. Its output is drained all along (a full pipe would block it) and
 * its last lines kept for error reports.
 * @throws {Error} with its output if it exits or is not ready in time; it is then killed
 */
export async function spawnBroker(spec: SpawnSpec): Promise<SpawnedBroker> {
  const pinned = spec.pin !== undefined && which("taskset") !== undefined;
  const command = pinned ? "taskset" : spec.command;
  const args = pinned ? ["-c", String(spec.pin), spec.command, ...spec.args] : spec.args;
  const process = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...spec.env },
  }).spawn();
  const lines: string[] = [];
  let ready = spec.readyLine === undefined;
  const { promise: readyByLine, resolve: lineSaysReady } = Promise.withResolvers<void>();
  if (ready) lineSaysReady();
  const logFile = Deno.env.get("BENCH_BROKER_LOG");
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    let rest = "";
    const log = logFile ? await Deno.open(logFile, { append: true, create: true }) : null;
    const encoder = new TextEncoder();
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      let i: number;
      while ((i = rest.indexOf("\n")) >= 0) {
        const line = rest.slice(0, i).replace(/\r$/, "");
        rest = rest.slice(i + 1);
        lines.push(line);
        log?.writeSync(encoder.encode(`${spec.name}: ${line}\n`));
        if (lines.length > TAIL_LINES) lines.shift();
        if (!ready && spec.readyLine?.(line)) {
          ready = true;
          lineSaysReady();
        }
      }
    }
    if (rest) lines.push(rest);
    log?.close();
  };
  const drained = Promise.all([drain(process.stdout), drain(process.stderr)]).catch(() => {});
  let exited = false;
  const status = process.status.then((s) => {
    exited = true;
    return s;
  });
  const tail = () => lines.join("\n");
  const stop = async (graceMs = 10_000): Promise<number> => {
    if (!exited) {
      try {
        process.kill("SIGTERM");
      } catch { /* already gone */ }
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((r) =>
      timer = setTimeout(() => {
        try {
          process.kill("SIGKILL");
        } catch { /* already gone */ }
        r();
      }, graceMs)
    );
    const s = await Promise.race([status, killed.then(() => status)]);
    clearTimeout(timer);
    await drained;
    return s.code;
  };

  const deadline = Date.now() + spec.startTimeoutMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), spec.startTimeoutMs));
  const early = status.then(() => "exited" as const);
  const outcome = await Promise.race([readyByLine.then(() => "ready" as const), late, early]);
  clearTimeout(timer);
  let failure = outcome === "ready" ? undefined : outcome;
  if (!failure && spec.probeMqttPort !== undefined) {
    failure = await probeMqtt(spec.probeMqttPort, deadline, () => exited);
  }
  if (failure) {
    await stop(1000);
    throw new Error(
      `${spec.name} did not start (${
        failure === "late" ? `not ready within ${spec.startTimeoutMs} ms` : "it exited"
      }); \`${[command, ...args].join(" ")}\` printed:\n${tail().slice(-4000)}`,
    );
  }
  return { process, pid: process.pid, tail, stop };
}

/** Tries MQTT CONNECTs on `port` until one is accepted; undefined when one was. */
async function probeMqtt(
  port: number,
  deadline: number,
  exited: () => boolean,
): Promise<"late" | "exited" | undefined> {
  for (let attempt = 0;; attempt++) {
    if (exited()) return "exited";
    try {
      const s = await MqttSocket.connect(port, `bench-probe-${attempt}`);
      await s.disconnect();
      return undefined;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) return "late";
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Starts MessageBroker from this checkout: JSON-line ports 0, MQTT on any free port
 * (`--mqtt-port=-1`), WebSocket, TLS and $SYS off, on a fresh temporary data directory.
 * The retry interval is raised to a minute so that no JSON-line re-send happens inside a
 * run (every PUB received twice is then a real duplicate), and the connection limits
 * (10,000 in all and 1,000 per address by default) are lifted so that `mqtt-idle` can
 * hold its connections from 127.0.0.1. Logs at info (it announces its ports there).
 */
/**
 * `deno run` flags with `--cpu-prof` added when `BENCH_CPU_PROF` names a directory (the
 * broker then writes a V8 CPU profile there when it stops; open it in Chrome DevTools),
 * `--v8-flags=` with `BENCH_V8_FLAGS` when it is set (e.g. `--trace-gc`), and the
 * `deno run` flags in `BENCH_DENO_FLAGS` (e.g. `--inspect=127.0.0.1:9229`).
 */
function withProfile(run: readonly string[]): string[] {
  const extra: string[] = [];
  const dir = Deno.env.get("BENCH_CPU_PROF");
  if (dir) extra.push("--cpu-prof", `--cpu-prof-dir=${dir}`);
  const v8 = Deno.env.get("BENCH_V8_FLAGS");
  if (v8) extra.push(`--v8-flags=${v8}`);
  const more = Deno.env.get("BENCH_DENO_FLAGS");
  if (more) extra.push(...more.split(" ").filter((flag) => flag !== ""));
  return [run[0] as string, ...extra, ...run.slice(1)];
}

export async function startMessageBroker(o: StartOptions = {}): Promise<BrokerUnderTest> {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-bench-" });
  const ports = { consumer: 0, publisher: 0, mqtt: 0 };
  let child: SpawnedBroker;
  try {
    child = await spawnBroker({
      name: "MessageBroker",
      command: Deno.execPath(),
      args: [
        ...withProfile(RUN_MAIN),
        ...["--hostname", "127.0.0.1", "--consumer-port", "0", "--publisher-port", "0"],
        ...["--data-dir", dataDir, "--log-level", "info", "--mqtt-port=-1"],
        ...["--mqtt-ws-port", "0", "--mqtt-tls-port", "0", "--mqtt-sys-interval", "0"],
        ...["--retry-interval", "60000"],
        ...["--max-connections", "1000000", "--max-connections-per-address", "1000000"],
      ],
      pin: o.pin,
      readyLine(line) {
        const m = /Server (consumer|publisher) accepting connections on .*:(\d+)/.exec(line);
        if (m) ports[m[1] as "consumer" | "publisher"] = Number(m[2]);
        const q = /Server mqtt accepting .* on .*:(\d+)/.exec(line);
        if (q) ports.mqtt = Number(q[1]);
        return ports.consumer > 0 && ports.publisher > 0 && ports.mqtt > 0;
      },
      startTimeoutMs: 30_000,
    });
  } catch (err) {
    await Deno.remove(dataDir, { recursive: true });
    throw err;
  }
  return {
    name: "MessageBroker",
    pid: child.pid,
    consumerPort: ports.consumer,
    publisherPort: ports.publisher,
    mqttPort: ports.mqtt,
    async stop() {
      const code = await child.stop();
      await Deno.remove(dataDir, { recursive: true });
      if (code !== 0) {
        console.error(`MessageBroker exited with code ${code}; its output ends:\n${child.tail()}`);
      } else {
        // The store's commit counters: how well group commit batched under this load.
        const stats = child.tail().split("\n").findLast((l) => l.includes("store closed after"));
        const m = stats?.match(/after (\d+) commits of (\d+) operations and (\d+) keys/);
        if (m && Number(m[1]) === 0) console.log("  store: no commit");
        else if (m) {
          const [atomics, ops, keys] = [Number(m[1]), Number(m[2]), Number(m[3])];
          // How long the commits took (the warm-up's included), which PUBACKs wait for.
          const t = stats?.match(/p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms; (\d+) slow/);
          const times = t ? `; commit time p50 ${t[1]} ms, p99 ${t[2]} ms, max ${t[3]} ms` : "";
          console.log(
            `  store: ${atomics} commits, ${(ops / atomics).toFixed(1)} operations and ` +
              `${(keys / atomics).toFixed(1)} keys per commit${times}`,
          );
        }
      }
    },
  };
}
