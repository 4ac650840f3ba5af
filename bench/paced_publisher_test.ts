/**
 * The paced publisher in its worker, against a real broker (MessageBroker in this
 * process, MQTT on a free port): every message sent on or after its due time, all of
 * them acknowledged and delivered in order, at QoS 1 and QoS 2; and a run stopped by
 * `close()` ends early.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startTestBroker } from "../tests/helpers.ts";
import { mqttSubscribe, Problems } from "./mqtt_load.ts";
import { MqttSocket } from "./mqtt_wire.ts";
import { PacedPublisher } from "./paced_publisher.ts";
import { completeness, Latencies, Stream } from "./stats.ts";

for (const qos of [1, 2] as const) {
  Deno.test(`paced publisher: QoS ${qos} at 4,000 msg/s, each message on time and delivered`, async () => {
    await using b = await startTestBroker({ mqttPort: -1 });
    const port = b.mqttPort as number;
    const count = 2_000;
    const topic = `paced/q${qos}`;
    const sub = await MqttSocket.connect(port, `paced-sub-${qos}`);
    assert.equal(await sub.subscribe(topic, qos), qos);
    const pub = await PacedPublisher.connect(port, `paced-pub-${qos}`);
    const problems = new Problems();
    const lags = new Latencies(count);
    const stream = new Stream(topic, count);
    const latencies = new Latencies(count * 2);
    const started = performance.now();
    let done = false;
    const [r] = await Promise.all([
      pub.publish({ clientId: "p", topic, qos, count, window: 100, rate: 4_000 }, problems, lags)
        .finally(() => done = true),
      mqttSubscribe(sub, "s", topic, count, stream, latencies, problems, {
        publishersDone: () => done,
        quietMs: Infinity,
        brokerIdle: () => Promise.resolve(true),
      }),
    ]);
    const seconds = (performance.now() - started) / 1000;
    await pub.close();
    assert.deepEqual(problems.lines, []);
    assert.equal(r.sent, count);
    assert.equal(r.completed, count);
    assert.equal(r.downgraded, 0);
    // Paced, not as fast as possible: 2,000 messages at 4,000/s take half a second.
    assert.ok(seconds >= 0.45, `took ${seconds} s`);
    const lag = lags.summary();
    assert.equal(lag.count, count);
    const samples = Array.from(lags.samples());
    assert.ok(samples.every((ms) => ms >= 0), "a message sent before it was due");
    const c = completeness([stream]);
    assert.ok(c.ok, c.problems.join("; "));
  });
}

Deno.test("paced publisher: close() stops a run in progress", async () => {
  await using b = await startTestBroker({ mqttPort: -1 });
  const pub = await PacedPublisher.connect(b.mqttPort as number, "paced-stop");
  const problems = new Problems();
  const run = pub.publish(
    { clientId: "p", topic: "paced/stop", qos: 1, count: 100_000, window: 100, rate: 1_000 },
    problems,
  );
  await new Promise((r) => setTimeout(r, 300));
  const closing = pub.close();
  const r = await run;
  await closing;
  // About 300 sent in 0.3 s, far from the 100 s the whole run would take.
  assert.ok(r.sent > 100 && r.sent < 2_000, `sent ${r.sent}`);
  assert.deepEqual(problems.lines, []);
});
