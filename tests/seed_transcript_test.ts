/**
 * The seed README's telnet demo (steps 3-17), replayed line for line over real
 * sockets with telnet's "\r\n" line endings. The retry interval is shortened; the
 * number of sends (5) is the seed's.
 */
import { LineClient, startTestBroker } from "./helpers.ts";

Deno.test("the seed's telnet session works line for line", async () => {
  await using broker = await startTestBroker({ retryInterval: 150, retryLimit: 5 });

  // 3-4. connect as a consumer; a SUB before logging in is refused.
  await using consumer = await LineClient.connect(broker.consumerPort);
  await consumer.expect("Please login!");
  await consumer.send('  { "type": "SUB",  "topic": "meaw"  }');
  await consumer.expect("Please login!");

  // 5. log in and subscribe.
  await consumer.send("log Irina");
  await consumer.expect("Successfully logged in!");
  await consumer.send('{ "type": "SUB",  "topic": "meaw"  }');
  await consumer.expect("OK");

  // 7-11. a publisher publishes; PUBREC, then PUBREL gets PUBCOMP.
  await using publisher = await LineClient.connect(broker.publisherPort);
  await publisher.send('{ "type": "PUB","topic": "meaw","msg": "Hi there!" } ');
  const rec = await publisher.expect(/^\{"msgId":\d+,"type":"PUBREC"\}$/);
  const id = JSON.parse(rec).msgId as number;
  const pub = `{"msg":"Hi there!","msgId":${id},"topic":"meaw","type":"PUB"}`;
  // Only after PUBREL is the message released to the topic.
  await consumer.expectSilence(300);
  await publisher.send(` {"type": "PUBREL", "msgId": ${id} } `);
  await publisher.expect(`{"msgId":${id},"type":"PUBCOMP"}`);

  // 12. no PUBREC from the consumer: the message is sent 5 times in all, then the
  // consumer is unsubscribed (its position kept).
  for (let i = 0; i < 5; i++) await consumer.expect(pub);
  await consumer.expectSilence(500);

  // 13. the consumer subscribes again: the same message is sent again; "log" lines
  // after login are no JSON.
  await consumer.send("log");
  await consumer.expect("INVALID JSON");
  await consumer.send("log Irina");
  await consumer.expect("INVALID JSON");
  await consumer.send('{ "type": "SUB",  "topic": "meaw"  }');
  await consumer.expect("OK");
  await consumer.expect(pub);

  // 14-16. PUBREC answers OK and the broker sends PUBREL; PUBCOMP answers OK.
  await consumer.send(`{ "type": "PUBREC","msgId": ${id}, "topic": "meaw" }`);
  await consumer.expect("OK");
  await consumer.expect(`{"msgId":${id},"type":"PUBREL"}`);
  await consumer.send(`{"type": "PUBCOMP", "msgId": ${id},  "topic": "meaw"}`);
  await consumer.expect("OK");

  // 17. the position moved: nothing is re-sent, and the next message comes next.
  await consumer.expectSilence(400);
  await publisher.send('{"type":"PUB","topic":"meaw","msg":"second"}');
  const id2 = JSON.parse(await publisher.expect(/PUBREC/)).msgId as number;
  await publisher.send(`{"type":"PUBREL","msgId":${id2}}`);
  await publisher.expect(`{"msgId":${id2},"type":"PUBCOMP"}`);
  await consumer.expect(`{"msg":"second","msgId":${id2},"topic":"meaw","type":"PUB"}`);
});

Deno.test("plain \\n line endings work as well as \\r\\n", async () => {
  await using broker = await startTestBroker();
  await using consumer = await LineClient.connect(broker.consumerPort);
  await consumer.expect("Please login!");
  await consumer.send("log Ann\n", { raw: true });
  await consumer.expect("Successfully logged in!");
  await consumer.send('{"type":"SUB","topic":"t"}\n{"type":"UNSUB","topic":"t"}\n', { raw: true });
  await consumer.expect("OK");
  await consumer.expect("OK");
});
