/**
 * `--vs BROKER`: comparison against other brokers over MQTT. They come with
 * MessageBroker's MQTT front end (issue 4); until then this says so, and what to install.
 * The bench itself never installs anything.
 *
 * @module
 */

/** The brokers issue 5 compares against, and where each comes from. */
export const OTHER_BROKERS: Readonly<Record<string, { install: string; binary: string }>> = {
  mosquitto: { install: "apt-get install mosquitto", binary: "mosquitto" },
  nats: {
    install: "apt-get install nats-server (MQTT listener, JetStream)",
    binary: "nats-server",
  },
  rabbitmq: {
    install: "apt-get install rabbitmq-server (rabbitmq-plugins enable rabbitmq_mqtt)",
    binary: "rabbitmq-server",
  },
  aedes: { install: "npm install aedes (runs on Node.js)", binary: "node" },
};

function onPath(binary: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      if (Deno.statSync(`${dir}/${binary}`).isFile) return `${dir}/${binary}`;
    } catch {
      // not in this directory
    }
  }
  for (const dir of ["/usr/sbin", "/sbin"]) {
    try {
      if (Deno.statSync(`${dir}/${binary}`).isFile) return `${dir}/${binary}`;
    } catch {
      // not there either
    }
  }
  return undefined;
}

/** The text printed for `--vs NAME`. */
export function vsNote(name: string): string {
  const lines = [
    `--vs ${name}: not available yet.`,
    "The comparison runs MQTT scenarios (QoS 0/1/2 1 → 1, fan-out 1 → 50, 10 → 10, fixed-rate",
    "latency, idle connections) against MessageBroker and another broker in the same run,",
    "alternating them. Both the MQTT scenarios and the other brokers come with MessageBroker's",
    "MQTT front end (issue 4); the JSON-line scenarios run without --vs.",
    "",
    "What to install beforehand (the bench never installs anything):",
  ];
  for (const [key, b] of Object.entries(OTHER_BROKERS)) {
    const found = onPath(b.binary);
    const where = found ? `${b.binary} at ${found}` : `${b.binary} not found`;
    lines.push(`  ${key.padEnd(10)} ${b.install.padEnd(70)} ${where}`);
  }
  if (!(name in OTHER_BROKERS)) {
    lines.push("", `"${name}" is not one of: ${Object.keys(OTHER_BROKERS).join(", ")}`);
  }
  return lines.join("\n");
}
