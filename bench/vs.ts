/**
 * `--vs BROKER[,BROKER…]`: the other brokers the MQTT scenarios run against, alternating
 * with MessageBroker in the same run. Each is a child process on a fresh configuration
 * (generated into a temporary directory), listening on 127.0.0.1 only. The bench never
 * installs anything: a broker that is missing is skipped with what to install.
 *
 * @module
 */
import { join } from "node:path";
import {
  type BrokerUnderTest,
  freePort,
  spawnBroker,
  type SpawnedBroker,
  type StartOptions,
  which,
} from "./broker_process.ts";

/** Another broker: how to find it, start it, and what it cannot do. */
export interface OtherBroker {
  /** Name in the report. */
  name: string;
  /** What to install, as exact commands. */
  install: string;
  /** Undefined when it can run here, else why not. */
  missing(): Promise<string | undefined>;
  start(o: StartOptions): Promise<BrokerUnderTest>;
  /** Scenarios it cannot run, with the reason printed in its column. */
  unsupported: Record<string, string>;
}

/** The aedes version the README and the install hint name (issue 5's reference). */
export const AEDES_VERSION = "1.2.0";
const AEDES_SERVER = join(import.meta.dirname ?? ".", "aedes_server.mjs");

/** Wraps a spawned process and its temporary directory as a broker under test. */
function underTest(
  name: string,
  child: SpawnedBroker,
  mqttPort: number,
  dir: string,
  pid = child.pid,
): BrokerUnderTest {
  return {
    name,
    pid,
    mqttPort,
    async stop() {
      const code = await child.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      if (code !== 0 && code !== 143) {
        console.error(`${name} exited with code ${code}; its output ends:\n${child.tail()}`);
      }
    },
  };
}

async function withDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    return await fn(dir);
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

const mosquitto: OtherBroker = {
  name: "Mosquitto",
  install: "apt-get install mosquitto   # Debian/Ubuntu; issue 5's figures are 2.0.11",
  missing() {
    return Promise.resolve(which("mosquitto") ? undefined : "mosquitto not found on PATH");
  },
  start: (o) =>
    withDir("mb-bench-mosquitto-", async (dir) => {
      const port = freePort();
      const conf = join(dir, "mosquitto.conf");
      // In memory (persistence false); no cap on messages in flight or queued: with the
      // default max_inflight_messages (20) QoS 2 at a window of 100 stalls.
      await Deno.writeTextFile(
        conf,
        [
          `listener ${port} 127.0.0.1`,
          "allow_anonymous true",
          "max_inflight_messages 0",
          "max_queued_messages 0",
          "persistence false",
          "log_dest stdout",
          "",
        ].join("\n"),
      );
      const child = await spawnBroker({
        name: "Mosquitto",
        command: which("mosquitto")!,
        args: ["-c", conf],
        pin: o.pin,
        probeMqttPort: port,
        startTimeoutMs: 10_000,
      });
      return underTest("Mosquitto", child, port, dir);
    }),
  unsupported: {},
};

/** Runs `node aedes_server.mjs --check`: the aedes version found, or why none. */
async function aedesCheck(): Promise<{ ok: boolean; text: string }> {
  const node = which("node");
  if (!node) return { ok: false, text: "node not found on PATH" };
  const out = await new Deno.Command(node, {
    args: [AEDES_SERVER, "--check"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.success ? out.stdout : out.stderr).trim();
  return { ok: out.success, text };
}

const aedes: OtherBroker = {
  name: "Aedes",
  install: `mkdir -p ~/aedes && (cd ~/aedes && npm install aedes@${AEDES_VERSION}) ` +
    "# then run with AEDES_DIR=~/aedes (needs Node.js 20+)",
  async missing() {
    const c = await aedesCheck();
    return c.ok ? undefined : c.text.split("\n")[0];
  },
  start: (o) =>
    withDir("mb-bench-aedes-", async (dir) => {
      const port = freePort();
      const child = await spawnBroker({
        name: "Aedes",
        command: which("node")!,
        args: [AEDES_SERVER, String(port)],
        pin: o.pin,
        probeMqttPort: port,
        startTimeoutMs: 15_000,
      });
      return underTest("Aedes", child, port, dir);
    }),
  unsupported: {},
};

const nats: OtherBroker = {
  name: "NATS",
  install: "apt-get install nats-server   # 2.2+ has the MQTT listener; issue 5 used 2.9.10",
  missing() {
    return Promise.resolve(which("nats-server") ? undefined : "nats-server not found on PATH");
  },
  start: (o) =>
    withDir("mb-bench-nats-", async (dir) => {
      const port = freePort();
      const conf = join(dir, "nats.conf");
      // MQTT needs JetStream (file store, NATS's default: no fsync per message) and a
      // server name.
      await Deno.writeTextFile(
        conf,
        [
          'listen: "127.0.0.1:-1"',
          'server_name: "mb-bench"',
          `jetstream { store_dir: ${JSON.stringify(join(dir, "js"))} }`,
          `mqtt { host: "127.0.0.1", port: ${port} }`,
          "",
        ].join("\n"),
      );
      const child = await spawnBroker({
        name: "NATS",
        command: which("nats-server")!,
        args: ["-c", conf],
        pin: o.pin,
        probeMqttPort: port,
        startTimeoutMs: 20_000,
      });
      return underTest("NATS", child, port, dir);
    }),
  unsupported: { "mqtt-qos2": "no QoS 2" },
};

/** The pid of the first `beam.smp` under `root` (RabbitMQ runs through shell wrappers). */
async function beamUnder(root: number): Promise<number | undefined> {
  const out = await new Deno.Command("ps", {
    args: ["-e", "-o", "pid=,ppid=,comm="],
    stdout: "piped",
    stderr: "null",
  }).output().catch(() => undefined);
  if (!out?.success) return undefined;
  const procs = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => {
    const [pid, ppid, comm] = l.trim().split(/\s+/);
    return { pid: Number(pid), ppid: Number(ppid), comm: comm ?? "" };
  });
  const queue = [root];
  while (queue.length > 0) {
    const p = queue.shift()!;
    for (const c of procs.filter((x) => x.ppid === p)) {
      if (c.comm.startsWith("beam")) return c.pid;
      queue.push(c.pid);
    }
  }
  return undefined;
}

const rabbitmq: OtherBroker = {
  name: "RabbitMQ",
  install: "apt-get install rabbitmq-server   # the bench enables rabbitmq_mqtt in its own " +
    "plugins file; issue 5 used 3.10.8",
  missing() {
    return Promise.resolve(
      which("rabbitmq-server") ? undefined : "rabbitmq-server not found on PATH",
    );
  },
  start: (o) =>
    withDir("mb-bench-rabbitmq-", async (dir) => {
      const port = freePort();
      const amqpPort = freePort();
      await Deno.writeTextFile(join(dir, "enabled_plugins"), "[rabbitmq_mqtt].\n");
      await Deno.writeTextFile(
        join(dir, "rabbitmq.conf"),
        [
          `listeners.tcp.default = 127.0.0.1:${amqpPort}`,
          `mqtt.listeners.tcp.default = 127.0.0.1:${port}`,
          "mqtt.allow_anonymous = true",
          "loopback_users = none",
          "",
        ].join("\n"),
      );
      const child = await spawnBroker({
        name: "RabbitMQ",
        command: which("rabbitmq-server")!,
        args: [],
        env: {
          RABBITMQ_NODENAME: `mb-bench-${Deno.pid}@localhost`,
          RABBITMQ_NODE_IP_ADDRESS: "127.0.0.1",
          RABBITMQ_NODE_PORT: String(amqpPort),
          RABBITMQ_DIST_PORT: String(freePort()),
          RABBITMQ_CONFIG_FILE: join(dir, "rabbitmq"),
          RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, "enabled_plugins"),
          RABBITMQ_MNESIA_BASE: join(dir, "mnesia"),
          RABBITMQ_LOG_BASE: join(dir, "log"),
        },
        pin: o.pin,
        probeMqttPort: port,
        startTimeoutMs: 60_000,
      });
      // Measure the Erlang VM, not the shell wrapper that started it.
      const pid = await beamUnder(child.pid) ?? child.pid;
      return underTest("RabbitMQ", child, port, dir, pid);
    }),
  unsupported: { "mqtt-qos2": "downgrades QoS 2 to 1" },
};

/** The brokers `--vs` knows, by the name given on the command line. */
export const OTHER_BROKERS: Readonly<Record<string, OtherBroker>> = {
  mosquitto,
  aedes,
  nats,
  rabbitmq,
};

/** What to install for every `--vs` broker, and whether it is found here. */
export async function installNotes(): Promise<string> {
  const lines = ["What each --vs broker needs (the bench never installs anything):"];
  for (const [key, b] of Object.entries(OTHER_BROKERS)) {
    const missing = await b.missing();
    lines.push(`  ${key.padEnd(10)} ${missing ? `MISSING (${missing})` : "found"}`);
    lines.push(`  ${"".padEnd(10)} ${b.install}`);
  }
  return lines.join("\n");
}
