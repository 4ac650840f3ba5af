import assert from "node:assert/strict";
import { ackLine, decodeConsumer, type Decoded, decodePublisher, pubLine } from "./commands.ts";

/** Either port's decoder. */
type Decoder = (line: string) => Decoded<unknown>;
const BOTH_PORTS: Decoder[] = [decodeConsumer, decodePublisher];

/** The command of a line that must decode, or a failure showing what was answered. */
function command<C>(decoded: Decoded<C>): C {
  if (!decoded.ok) assert.fail(`expected a command, got reply ${JSON.stringify(decoded.reply)}`);
  return decoded.command;
}

/** The reply of a line that must be rejected. */
function rejected<C>(decoded: Decoded<C>): { reason: string; reply: string; detail: string } {
  if (decoded.ok) assert.fail(`expected an error, got ${JSON.stringify(decoded.command)}`);
  return decoded;
}

Deno.test("each consumer command decodes, also as the seed's telnet session writes it", () => {
  assert.deepEqual(command(decodeConsumer('{ "type": "SUB",  "topic": "meaw"  }')), {
    type: "SUB",
    topic: "meaw",
  });
  assert.deepEqual(command(decodeConsumer('{"type":"UNSUB","topic":"meaw"}')), {
    type: "UNSUB",
    topic: "meaw",
  });
  assert.deepEqual(command(decodeConsumer('{ "type": "PUBREC","msgId": 4, "topic": "meaw" }')), {
    type: "PUBREC",
    msgId: 4,
    topic: "meaw",
  });
  assert.deepEqual(command(decodeConsumer('{"type":"PUBCOMP","msgId":4,"topic":"meaw"}')), {
    type: "PUBCOMP",
    msgId: 4,
    topic: "meaw",
  });
  // The topic of an acknowledgement is optional: message ids are broker-wide.
  assert.deepEqual(command(decodeConsumer('{"type":"PUBREC","msgId":4}')), {
    type: "PUBREC",
    msgId: 4,
  });
  assert.deepEqual(command(decodeConsumer('{"type":"PUBCOMP","msgId":4}')), {
    type: "PUBCOMP",
    msgId: 4,
  });
});

Deno.test("each publisher command decodes, also as the seed's telnet session writes it", () => {
  assert.deepEqual(
    command(decodePublisher('{ "type": "PUB","topic": "meaw","msg": "Hi there!" } ')),
    {
      type: "PUB",
      topic: "meaw",
      msg: "Hi there!",
      msgJson: '"Hi there!"',
    },
  );
  assert.deepEqual(command(decodePublisher(' {"type": "PUBREL", "msgId": 4 } ')), {
    type: "PUBREL",
    msgId: 4,
  });
});

Deno.test("PUB accepts any JSON value as msg, null included", () => {
  for (const msg of [null, 0, false, "", [1, "a"], { a: { b: [1, 2] } }]) {
    const c = command(decodePublisher(JSON.stringify({ type: "PUB", topic: "t", msg })));
    assert.deepEqual(c, { type: "PUB", topic: "t", msg, msgJson: JSON.stringify(msg) });
  }
});

Deno.test("fields a command does not know are dropped", () => {
  assert.deepEqual(command(decodeConsumer('{"type":"SUB","topic":"t","extra":1}')), {
    type: "SUB",
    topic: "t",
  });
});

Deno.test("invalid JSON answers INVALID JSON", () => {
  for (const line of ["{bad", "", '{"type":"SUB"', "SUB t", "{'type':'SUB'}"]) {
    for (const decode of BOTH_PORTS) {
      const r = rejected(decode(line));
      assert.equal(r.reply, "INVALID JSON", line);
      assert.equal(r.reason, "invalid-json");
      assert.ok(r.detail.length > 0);
    }
  }
});

Deno.test("JSON that is not an object with a string type answers UNKNOWN COMMAND", () => {
  for (
    const line of ["42", '"SUB"', "null", "[1]", '[{"type":"SUB","topic":"t"}]', "{}", '{"type":5}']
  ) {
    const r = rejected(decodeConsumer(line));
    assert.equal(r.reply, "UNKNOWN COMMAND", line);
    assert.equal(r.reason, "unknown-command");
    assert.match(r.detail, /JSON object with a string "type"/);
  }
});

Deno.test("an unknown command type answers UNKNOWN COMMAND and names the type", () => {
  for (const type of ["FOO", "sub", "CONNECT", "__proto__", "toString", "constructor"]) {
    for (const decode of BOTH_PORTS) {
      const r = rejected(decode(JSON.stringify({ type, topic: "t" })));
      assert.equal(r.reply, "UNKNOWN COMMAND", type);
      assert.equal(r.reason, "unknown-command");
      assert.equal(r.detail, `unknown command type ${JSON.stringify(type)}`);
    }
  }
});

Deno.test("a command of the other port answers a wrong-port error", () => {
  for (const line of ['{"type":"PUB","topic":"t","msg":"x"}', '{"type":"PUBREL","msgId":1}']) {
    const r = rejected(decodeConsumer(line));
    assert.equal(r.reason, "wrong-port");
    assert.match(
      r.reply,
      /^ERROR: (PUB|PUBREL) is a publisher command: send it to the publisher port$/,
    );
  }
  for (const type of ["SUB", "UNSUB", "PUBREC", "PUBCOMP"]) {
    const r = rejected(decodePublisher(JSON.stringify({ type, topic: "t", msgId: 1 })));
    assert.equal(r.reason, "wrong-port");
    assert.equal(r.reply, `ERROR: ${type} is a consumer command: send it to the consumer port`);
  }
});

Deno.test("a missing field is answered with an error naming it", () => {
  const cases: [Decoder, string, string][] = [
    [decodeConsumer, '{"type":"SUB"}', 'ERROR: invalid SUB: "topic" is missing'],
    [decodeConsumer, '{"type":"UNSUB"}', 'ERROR: invalid UNSUB: "topic" is missing'],
    [decodeConsumer, '{"type":"PUBREC","topic":"t"}', 'ERROR: invalid PUBREC: "msgId" is missing'],
    [decodeConsumer, '{"type":"PUBCOMP"}', 'ERROR: invalid PUBCOMP: "msgId" is missing'],
    [decodePublisher, '{"type":"PUB","msg":"x"}', 'ERROR: invalid PUB: "topic" is missing'],
    [decodePublisher, '{"type":"PUB","topic":"t"}', 'ERROR: invalid PUB: "msg" is missing'],
    [decodePublisher, '{"type":"PUBREL"}', 'ERROR: invalid PUBREL: "msgId" is missing'],
  ];
  for (const [decode, line, reply] of cases) {
    const r = rejected(decode(line));
    assert.equal(r.reply, reply, line);
    assert.equal(r.reason, "invalid-command");
    assert.equal(`ERROR: ${r.detail}`, r.reply);
  }
});

Deno.test("a field of the wrong type is answered with an error naming it and the value", () => {
  const cases: [Decoder, string, string][] = [
    [
      decodeConsumer,
      '{"type":"SUB","topic":5}',
      'ERROR: invalid SUB: "topic" must be a string, got 5',
    ],
    [
      decodeConsumer,
      '{"type":"PUBREC","msgId":"4"}',
      'ERROR: invalid PUBREC: "msgId" must be a positive integer, got "4"',
    ],
    [
      decodeConsumer,
      '{"type":"PUBCOMP","msgId":1.5}',
      'ERROR: invalid PUBCOMP: "msgId" must be a positive integer, got 1.5',
    ],
    [
      decodeConsumer,
      '{"type":"PUBCOMP","msgId":4,"topic":null}',
      'ERROR: invalid PUBCOMP: "topic" must be a string, got null',
    ],
    [
      decodePublisher,
      '{"type":"PUBREL","msgId":0}',
      'ERROR: invalid PUBREL: "msgId" must be a positive integer, got 0',
    ],
    [
      decodePublisher,
      '{"type":"PUBREL","msgId":-3}',
      'ERROR: invalid PUBREL: "msgId" must be a positive integer, got -3',
    ],
    [
      decodePublisher,
      '{"type":"PUB","topic":["t"],"msg":"x"}',
      'ERROR: invalid PUB: "topic" must be a string, got ["t"]',
    ],
  ];
  for (const [decode, line, reply] of cases) {
    const r = rejected(decode(line));
    assert.equal(r.reply, reply, line);
    assert.equal(r.reason, "invalid-command");
  }
});

Deno.test("a msgId beyond the safe integers is refused", () => {
  const r = rejected(decodePublisher('{"type":"PUBREL","msgId":9007199254740993}'));
  assert.equal(r.reason, "invalid-command");
  assert.match(r.reply, /^ERROR: invalid PUBREL: "msgId" /);
});

Deno.test("a long wrong value is shortened in the error", () => {
  const r = rejected(decodeConsumer(JSON.stringify({ type: "SUB", topic: ["x".repeat(500)] })));
  assert.ok(r.reply.length < 120, r.reply);
  assert.match(r.reply, /\.\.\.$/);
});

Deno.test("reply encoders produce exactly the seed's lines", () => {
  assert.equal(ackLine("PUBREC", 4), '{"msgId":4,"type":"PUBREC"}');
  assert.equal(ackLine("PUBCOMP", 4), '{"msgId":4,"type":"PUBCOMP"}');
  assert.equal(ackLine("PUBREL", 4), '{"msgId":4,"type":"PUBREL"}');
  assert.equal(
    pubLine(JSON.stringify("Hi there!"), 4, "meaw"),
    '{"msg":"Hi there!","msgId":4,"topic":"meaw","type":"PUB"}',
  );
});

Deno.test("encoded replies are valid JSON that decodes to the same values", () => {
  const topic = 'we"ird\\topic\u2028';
  const line = pubLine('{"a":[1,2]}', 12, topic);
  assert.deepEqual(JSON.parse(line), { msg: { a: [1, 2] }, msgId: 12, topic, type: "PUB" });
  assert.deepEqual(JSON.parse(ackLine("PUBREL", 99)), { msgId: 99, type: "PUBREL" });
});

Deno.test("a PUB's msg is kept as the exact text received: big numbers and spacing survive", () => {
  const line = '{"type":"PUB","msg": {"n": 12345678901234567890, "x": [1e400 , 2]} ,"topic":"t"}';
  const c = command(decodePublisher(line));
  assert.equal(c.type, "PUB");
  assert.equal((c as { msgJson: string }).msgJson, '{"n": 12345678901234567890, "x": [1e400 , 2]}');
});

Deno.test("duplicate keys are refused, at any depth, also when spelled with escapes", () => {
  for (
    const line of [
      '{"type":"SUB","topic":"a","topic":"b"}',
      '{"type":"SUB","topic":"a","t\\u006fpic":"b"}',
    ]
  ) {
    const r = rejected(decodeConsumer(line));
    assert.equal(r.reason, "invalid-command");
    assert.match(r.reply, /^ERROR: invalid SUB: duplicate key "topic"$/);
  }
  const nested = rejected(
    decodePublisher('{"type":"PUB","topic":"t","msg":{"a":1,"b":{"c":1,"c":2}}}'),
  );
  assert.match(nested.reply, /duplicate key "c"/);
  // Equal keys in different objects are no duplicates.
  assert.equal(decodePublisher('{"type":"PUB","topic":"t","msg":[{"a":1},{"a":2}]}').ok, true);
});

Deno.test("nesting deeper than the limit is refused with an error naming the limit", () => {
  const deep = (n: number) => `{"type":"PUB","topic":"t","msg":${"[".repeat(n)}${"]".repeat(n)}}`;
  assert.equal(decodePublisher(deep(30), 32).ok, true);
  const r = rejected(decodePublisher(deep(40), 32));
  assert.equal(r.reply, "ERROR: invalid PUB: nested deeper than 32 levels");
  // Thousands of levels in one line still get an answer, not a crash.
  assert.equal(decodePublisher(deep(20_000), 32).ok, false);
});

Deno.test("a SUB may carry a window: an integer from 1 to 1024", () => {
  assert.deepEqual(command(decodeConsumer('{"type":"SUB","topic":"t","window":64}')), {
    type: "SUB",
    topic: "t",
    window: 64,
  });
  for (const w of ["0", "1025", "1.5", '"2"', "-1", "null"]) {
    const r = rejected(decodeConsumer(`{"type":"SUB","topic":"t","window":${w}}`));
    assert.match(r.reply, /^ERROR: invalid SUB: "window" must be an integer from 1 to 1024/, w);
  }
});
