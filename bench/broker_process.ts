/**
 * The broker under test, as a child process (`deno run main.ts`) on a temporary data
 * directory and free ports, so that its CPU time and memory can be read from /proc apart
 * from the load generator's. MQTT brokers (ours once it speaks MQTT, Mosquitto, Aedes,
 * NATS, RabbitMQ) will be further {@link BrokerUnderTest} implementations.
 *
 * @module
 */
import { ChildBroker } from "../tests/helpers.ts";

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
  /** Stops the broker and removes what it left behind; returns its output if it failed. */
  stop(): Promise<void>;
}

/**
 * Starts MessageBroker from this checkout. The retry interval is raised to a minute so
 * that no re-send happens inside a run: every PUB received twice is then a real duplicate.
 */
export async function startMessageBroker(): Promise<BrokerUnderTest> {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-bench-" });
  let child: ChildBroker;
  try {
    child = await ChildBroker.start(dataDir, ["--retry-interval", "60000"]);
  } catch (err) {
    await Deno.remove(dataDir, { recursive: true });
    throw err;
  }
  return {
    name: "MessageBroker",
    pid: child.process.pid,
    consumerPort: child.consumerPort,
    publisherPort: child.publisherPort,
    async stop() {
      const { code, output } = await child.stop("SIGTERM");
      await Deno.remove(dataDir, { recursive: true });
      if (code !== 0) {
        console.error(`broker exited with code ${code}; its output ends:\n${output.slice(-2000)}`);
      }
    },
  };
}
