/**
 * A load test over MQTT: 2,000 concurrent connections from one address (1,000 QoS 1
 * subscribers on 100 topics, 1,000 publishers) connect, subscribe and exchange messages
 * on the MQTT transport. Every subscriber gets exactly the messages of its topic, in the
 * topic's order, and the connection past the per-address limit is refused.
 *
 * Needs about 4,100 file descriptors (both ends of every connection live in this
 * process); `ulimit -n` must allow that.
 */
import assert from "node:assert/strict";
import type { Packet } from "../src/transport/mqtt_codec.ts";
import { fdLimit, inBatches, startTestBroker } from "./helpers.ts";
import { RawClient } from "./mqtt_clients.ts";

const TOPICS = 100;
const SUBSCRIBERS = 1000;
const PUBLISHERS = 1000;
const LIMIT = SUBSCRIBERS + PUBLISHERS;
const PER_TOPIC = PUBLISHERS / TOPICS;

const topicOf = (i: number) => `mload/${i % TOPICS}`;

/** Receives `count` PUBLISHes, acknowledging each; returns their payload texts in order. */
async function receive(raw: RawClient, count: number): Promise<string[]> {
  const texts: string[] = [];
  while (texts.length < count) {
    const p = await raw.next(15_000) as Packet & { payload?: Uint8Array; messageId?: number };
    assert.equal(p.cmd, "publish", `unexpected ${p.cmd}`);
    texts.push(new TextDecoder().decode(p.payload));
    await raw.send({ cmd: "puback", messageId: p.messageId as number });
  }
  return texts;
}

Deno.test({
  name:
    "2,000 concurrent MQTT connections subscribe and exchange QoS 1 messages; the next one is refused",
  ignore: fdLimit() < 2 * LIMIT + 100,
  async fn() {
    const started = performance.now();
    await using b = await startTestBroker({ mqttPort: -1, maxConnectionsPerAddress: LIMIT });
    const port = b.mqttPort;
    const clients: RawClient[] = [];
    try {
      const subscribers = await inBatches(SUBSCRIBERS, async (i) => {
        const raw = await RawClient.accepted(port, 4, { clientId: `s-${i}` });
        clients.push(raw);
        await raw.send({
          cmd: "subscribe",
          messageId: 1,
          subscriptions: [{ topic: topicOf(i), qos: 1 }],
        });
        await raw.expect("suback", 15_000);
        return raw;
      });
      const publishers = await inBatches(PUBLISHERS, async (i) => {
        const raw = await RawClient.accepted(port, 4, { clientId: `p-${i}` });
        clients.push(raw);
        return raw;
      });

      // One more from the same address: closed without a CONNACK.
      const extra = await RawClient.connect(port, 4);
      await extra.expectClosed(10_000);
      await extra.close();

      const receiving = subscribers.map((s, i) =>
        receive(s, PER_TOPIC).then((t) => [i, t] as const)
      );
      await Promise.all(publishers.map(async (p, i) => {
        await p.send({
          cmd: "publish",
          topic: topicOf(i),
          payload: `from ${i}`,
          qos: 1,
          messageId: 1,
          retain: false,
          dup: false,
        });
        await p.expect("puback", 15_000);
      }));
      const exchanged = performance.now();
      const orderOf = new Map<string, string[]>();
      for (const [i, texts] of await Promise.all(receiving)) {
        const topic = topicOf(i);
        assert.equal(texts.length, PER_TOPIC);
        for (const t of texts) assert.equal(topicOf(Number(t.slice("from ".length))), topic);
        assert.equal(new Set(texts).size, PER_TOPIC, `subscriber ${i} got a duplicate`);
        const seen = orderOf.get(topic);
        if (seen) assert.deepEqual(texts, seen, `subscribers of ${topic} disagree on its order`);
        else orderOf.set(topic, texts);
      }
      assert.equal(orderOf.size, TOPICS);
      console.log(
        `${LIMIT} MQTT connections, ${SUBSCRIBERS * PER_TOPIC} QoS 1 deliveries in ` +
          `${Math.round(exchanged - started)} ms`,
      );
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  },
});
