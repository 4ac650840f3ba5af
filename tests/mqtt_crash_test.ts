/**
 * What a broker killed with SIGKILL owes MQTT clients after its restart: the wills of
 * connections that were live at the crash (they ended without DISCONNECT), and retained
 * messages, both from the store.
 */
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { ChildBroker } from "./helpers.ts";

Deno.test("after a SIGKILL, the will of a connection live at the crash is published, and retained messages remain", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-mqtt-crash-" });
  try {
    let broker = await ChildBroker.start(dataDir, ["--mqtt-port=-1"]);
    const url = () => `mqtt://127.0.0.1:${broker.mqttPort}`;
    const doomed = await mqtt.connectAsync(url(), {
      clientId: "doomed",
      reconnectPeriod: 0,
      will: { topic: "status/doomed", payload: "gone", qos: 1, retain: true },
    });
    const pub = await mqtt.connectAsync(url(), { clientId: "keeper", reconnectPeriod: 0 });
    await pub.publishAsync("config/x", "kept", { qos: 1, retain: true });
    await pub.endAsync(true);
    await broker.stop("SIGKILL");
    doomed.end(true);

    broker = await ChildBroker.start(dataDir, ["--mqtt-port=-1"]);
    const seen = new Map<string, string[]>();
    const watcher = mqtt.connect(url(), { clientId: "watcher", reconnectPeriod: 0 });
    watcher.on("message", (topic, payload) => {
      seen.set(topic, [...(seen.get(topic) ?? []), String(payload)]);
    });
    await new Promise((resolve) => watcher.once("connect", resolve));
    await watcher.subscribeAsync(["status/#", "config/#"], { qos: 1 });
    const deadline = Date.now() + 5000;
    while (!(seen.has("status/doomed") && seen.has("config/x")) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    // The will (published retained) and the retained message, each once to this subscriber.
    assert.deepEqual(seen.get("status/doomed"), ["gone"]);
    assert.deepEqual(seen.get("config/x"), ["kept"]);
    await watcher.endAsync();
    const { code } = await broker.stop("SIGTERM");
    assert.equal(code, 0);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
