import assert from "node:assert/strict";
import { concat } from "./connection.ts";
import { Buffer } from "node:buffer";
import type * as MqttPacket from "mqtt-packet";
import * as mqtt from "mqtt-packet";
import fc from "fast-check";
import {
  blReads,
  createPacketParser,
  encodedTopic,
  encodePacket,
  MalformedPacketError,
  type OutboundPacket,
  type Packet,
  type PacketEvent,
} from "./mqtt_codec.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/** The packets of `items`, failing on anything else. */
function packetsOf(items: PacketEvent[]): Packet[] {
  return items.map((item) => {
    assert.equal(item.kind, "packet", `unexpected ${item.kind}`);
    return (item as { packet: Packet }).packet;
  });
}

/** The packet as plain JSON (Buffers as `{type, data}`), without its parsed length. */
function essence(packet: Packet): Record<string, unknown> {
  const { length: _length, ...rest } = packet as Packet & { length?: number };
  return JSON.parse(JSON.stringify(rest));
}

/** Every field of `expected` is in `actual` (the parser adds defaults such as `dup`). */
function assertCarries(actual: Packet, expected: Packet): void {
  const a = essence(actual);
  for (const [key, value] of Object.entries(essence(expected))) {
    assert.deepEqual(a[key], value, `field ${key} of ${expected.cmd}`);
  }
}

const connect4: Packet = {
  cmd: "connect",
  protocolId: "MQTT",
  protocolVersion: 4,
  clean: true,
  clientId: "client-4",
  keepalive: 30,
  username: "alice",
  password: Buffer.from("secret"),
  will: { topic: "wills/4", payload: Buffer.from("gone"), qos: 1, retain: false },
};

const connect5: Packet = {
  cmd: "connect",
  protocolId: "MQTT",
  protocolVersion: 5,
  clean: false,
  clientId: "client-5",
  keepalive: 60,
  properties: { sessionExpiryInterval: 3600, receiveMaximum: 10, maximumPacketSize: 4096 },
};

const publish5: Packet = {
  cmd: "publish",
  topic: "a/b",
  payload: Buffer.from("hello"),
  qos: 2,
  messageId: 7,
  retain: true,
  dup: false,
  properties: { contentType: "text/plain", userProperties: { k: "v" } },
};

const subscribe4: Packet = {
  cmd: "subscribe",
  messageId: 3,
  subscriptions: [{ topic: "a/+", qos: 1 }, { topic: "b/#", qos: 2 }],
};

Deno.test("CONNECT at level 4 and at level 5 round-trip through the codec", () => {
  for (const packet of [connect4, connect5]) {
    const parsed = packetsOf(createPacketParser(4, 65536).push(encodePacket(packet, 4)));
    assert.equal(parsed.length, 1);
    assertCarries(parsed[0]!, packet);
  }
});

Deno.test("after a level 5 CONNECT the parser reads level 5 properties; a level 4 one keeps 4", () => {
  const parser = createPacketParser(4, 65536);
  const items = parser.push(concat([encodePacket(connect5, 5), encodePacket(publish5, 5)]));
  assert.equal(parser.protocolVersion, 5);
  const [, publish] = packetsOf(items);
  assertCarries(publish!, publish5);

  const old = createPacketParser(4, 65536);
  old.push(encodePacket(connect4, 4));
  assert.equal(old.protocolVersion, 4);
});

Deno.test("PUBLISH with a Uint8Array payload and SUBSCRIBE round-trip at level 4", () => {
  const payload = new Uint8Array([0, 1, 2, 255]);
  const encoded = encodePacket(
    { cmd: "publish", topic: "t", payload, qos: 1, messageId: 9, retain: false, dup: false },
    4,
  );
  assert.ok(!Buffer.isBuffer(encoded), "a plain Uint8Array comes out");
  const [publish, subscribe] = packetsOf(
    createPacketParser(4, 65536).push(concat([encoded, encodePacket(subscribe4, 4)])),
  );
  assert.equal(publish!.cmd, "publish");
  assert.deepEqual(new Uint8Array((publish as { payload: Uint8Array }).payload), payload);
  assertCarries(subscribe!, subscribe4);
});

Deno.test("packets split at every byte, or fed one byte at a time, give the same packets", () => {
  const stream = concat([
    encodePacket(connect5, 5),
    encodePacket(publish5, 5),
    encodePacket({ cmd: "pingreq" }, 5),
    encodePacket({ ...publish5, payload: Buffer.alloc(300, 7), messageId: 8 }, 5),
  ]);
  const whole = packetsOf(createPacketParser(4, 65536).push(stream)).map(essence);
  assert.equal(whole.length, 4);
  for (let cut = 0; cut <= stream.length; cut++) {
    const parser = createPacketParser(4, 65536);
    const items = [
      ...parser.push(stream.subarray(0, cut)),
      ...parser.push(stream.subarray(cut)),
    ];
    assert.deepEqual(packetsOf(items).map(essence), whole, `cut at ${cut}`);
  }
  const parser = createPacketParser(4, 65536);
  const items: PacketEvent[] = [];
  for (let i = 0; i < stream.length; i++) items.push(...parser.push(stream.slice(i, i + 1)));
  assert.deepEqual(packetsOf(items).map(essence), whole);
});

Deno.test("many packets in one chunk come out in order", () => {
  const packets = Array.from(
    { length: 500 },
    (_, i) => encodePacket({ ...publish5, messageId: i + 1 }, 5),
  );
  const parser = createPacketParser(4, 65536);
  parser.push(encodePacket(connect5, 5));
  const ids = packetsOf(parser.push(concat(packets))).map((p) => p.messageId);
  assert.deepEqual(ids, packets.map((_, i) => i + 1));
});

Deno.test("reserved flag bits yield a malformed item and nothing after it", () => {
  const parser = createPacketParser(4, 65536);
  const good = encodePacket({ cmd: "pingreq" }, 4);
  const bad = encodePacket(subscribe4, 4);
  bad[0] = 0x80; // SUBSCRIBE must have flags 0b0010: 3.1.1 [MQTT-3.8.1-1]
  const items = parser.push(concat([good, bad, good]));
  assert.equal(items.length, 2);
  assert.equal(items[0]!.kind, "packet");
  assert.equal(items[1]!.kind, "malformed");
  assert.ok((items[1] as { error: Error }).error instanceof MalformedPacketError);
  assert.ok(parser.failed);
  assert.deepEqual(parser.push(good), []);
});

Deno.test("a Remaining Length of five bytes or not minimally encoded is malformed", () => {
  for (
    const header of [[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], [0xc0, 0x80, 0x00], [
      0x30,
      0x85,
      0x80,
      0x00,
    ]]
  ) {
    const items = createPacketParser(4, 1 << 28).push(new Uint8Array(header));
    assert.equal(items.length, 1, `header ${header}`);
    assert.equal(items[0]!.kind, "malformed", `header ${header}`);
  }
});

Deno.test("an oversize Remaining Length is refused from the header, before the body arrives", () => {
  const parser = createPacketParser(4, 1024);
  // The largest length MQTT allows: 268,435,455 bytes, none of them sent.
  const items = parser.push(new Uint8Array([0x30, 0xff, 0xff, 0xff, 0x7f]));
  assert.deepEqual(items, [{ kind: "too-large", limit: 1024, size: 268_435_460 }]);
  assert.deepEqual(parser.push(new Uint8Array(100)), []);
});

Deno.test("a packet of exactly maxPacketBytes passes, one byte more is too large", () => {
  const packet = encodePacket({ ...publish5, payload: Buffer.alloc(200) }, 4);
  assert.equal(packetsOf(createPacketParser(4, packet.length).push(packet)).length, 1);
  const [item] = createPacketParser(4, packet.length - 1).push(packet.subarray(0, 3));
  assert.deepEqual(item, { kind: "too-large", limit: packet.length - 1, size: packet.length });
});

Deno.test("byte fields of CONNECT and v5 properties may be plain Uint8Arrays", () => {
  const packet = {
    ...connect5,
    username: "bob",
    password: bytes("pw"),
    will: { topic: "w", payload: bytes("bye"), qos: 0 as const, retain: false },
  } as unknown as Packet;
  const [parsed] = packetsOf(createPacketParser(5, 4096).push(encodePacket(packet, 5)));
  const connect = parsed as { password: Uint8Array; will: { payload: Uint8Array } };
  assert.equal(new TextDecoder().decode(connect.password), "pw");
  assert.equal(new TextDecoder().decode(connect.will.payload), "bye");
  const correlated = encodePacket({
    ...publish5,
    properties: { correlationData: bytes("id-1") as Buffer },
  }, 5);
  const parser = createPacketParser(5, 4096);
  const [publish] = packetsOf(parser.push(correlated));
  const data = (publish as { properties: { correlationData: Uint8Array } }).properties;
  assert.equal(new TextDecoder().decode(data.correlationData), "id-1");
});

Deno.test("a packet mqtt-packet cannot encode throws a TypeError naming its type", () => {
  assert.throws(
    () => encodePacket({ cmd: "subscribe", messageId: 1, subscriptions: [] } as Packet, 4),
    (err: unknown) => err instanceof TypeError && /subscribe/.test(err.message),
  );
});

Deno.test("a PUBLISH topic is checked strictly: U+FFFD itself passes, ill-formed UTF-8 and U+0000 do not", () => {
  const publishWithTopic = (topic: Uint8Array) =>
    concat([new Uint8Array([0x30, 2 + topic.length + 1, 0, topic.length]), topic, bytes("x")]);
  const ok = createPacketParser(4, 65536).push(publishWithTopic(bytes("a/\uFFFD")));
  assert.equal(ok[0]?.kind, "packet");
  assert.equal((ok[0] as { packet: { topic: string } }).packet.topic, "a/\uFFFD");
  for (const topic of [new Uint8Array([0x61, 0xc3, 0x28]), new Uint8Array([0x61, 0x00])]) {
    const items = createPacketParser(4, 65536).push(publishWithTopic(topic));
    assert.equal(items.length, 1);
    assert.equal(items[0]?.kind, "malformed");
  }
  // The last topic that passed is remembered, not trusted for other bytes: a good topic
  // twice, then one of the same length with an ill-formed byte, on one connection.
  const parser = createPacketParser(4, 65536);
  const good = publishWithTopic(bytes("a/bc"));
  const bad = publishWithTopic(new Uint8Array([0x61, 0x2f, 0xc3, 0x28]));
  const items = parser.push(concat([good, good, bad, good]));
  assert.deepEqual(items.map((item) => item.kind), ["packet", "packet", "malformed"]);
});

Deno.test("acknowledgements from templates are byte for byte what mqtt-packet generates", () => {
  const cmds = ["puback", "pubrec", "pubrel", "pubcomp"] as const;
  const ids = [1, 2, 0x7f, 0x80, 0xff, 0x100, 0x1234, 0x7fff, 0x8000, 0xfffe, 0xffff];
  for (const cmd of cmds) {
    for (const level of [4, 5] as const) {
      for (const reasonCode of level === 5 ? [undefined, 0, 0x10, 0x80, 0x92] : [undefined]) {
        for (const messageId of ids) {
          const packet = { cmd, messageId, ...(reasonCode === undefined ? {} : { reasonCode }) };
          const mine = encodePacket(packet as OutboundPacket, level);
          const theirs = mqtt.generate(packet as MqttPacket.Packet, { protocolVersion: level });
          assert.deepEqual(
            [...mine],
            [...theirs],
            `${cmd} ${messageId} v${level} rc ${reasonCode}`,
          );
        }
      }
    }
  }
  // With properties, mqtt-packet encodes it in full (no template applies).
  const withProps = {
    cmd: "puback",
    messageId: 9,
    reasonCode: 0x80,
    properties: { reasonString: "no" },
  } as unknown as OutboundPacket;
  assert.deepEqual(
    [...encodePacket(withProps, 5)],
    [...mqtt.generate(withProps as unknown as MqttPacket.Packet, { protocolVersion: 5 })],
  );
});

Deno.test("a template acknowledgement is a fresh copy each time", () => {
  const a = encodePacket({ cmd: "puback", messageId: 1 } as OutboundPacket, 4);
  const b = encodePacket({ cmd: "puback", messageId: 2 } as OutboundPacket, 4);
  assert.deepEqual([...a], [0x40, 2, 0, 1]);
  assert.deepEqual([...b], [0x40, 2, 0, 2]);
});

Deno.test("encodePacket gives byte for byte what mqtt-packet's generate gives", () => {
  const topic = fc.stringMatching(/^[a-zé/+#0-9]{1,12}$/);
  const bytes = fc.uint8Array({ maxLength: 300 });
  const properties = fc.option(
    fc.record({
      payloadFormatIndicator: fc.boolean(),
      messageExpiryInterval: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      contentType: fc.string({ maxLength: 10 }),
      responseTopic: topic,
      correlationData: bytes,
      userProperties: fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 })),
      subscriptionIdentifier: fc.integer({ min: 1, max: 268_435_455 }),
    }, { requiredKeys: [] }),
    { nil: undefined },
  );
  const publish = fc.record({
    level: fc.constantFrom(4 as const, 5 as const),
    topic,
    payload: fc.oneof(bytes, bytes.map((b) => Buffer.from(b)), fc.string({ maxLength: 20 })),
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    messageId: fc.integer({ min: 0, max: 0xffff }),
    retain: fc.boolean(),
    dup: fc.boolean(),
    properties,
  });
  fc.assert(
    fc.property(publish, ({ level, properties, ...fields }) => {
      const packet = {
        cmd: "publish",
        ...fields,
        ...(level === 5 && properties ? { properties } : {}),
      } as OutboundPacket;
      const withBuffer = {
        ...packet,
        payload: Buffer.from(fields.payload),
        ...(level === 5 && properties?.correlationData
          ? {
            properties: { ...properties, correlationData: Buffer.from(properties.correlationData) },
          }
          : {}),
      };
      const theirs = mqtt.generate(withBuffer as MqttPacket.Packet, { protocolVersion: level });
      assert.deepEqual([...encodePacket(packet, level)], [...theirs]);
      // A second encoding of the same packet (the collector is reused) is the same again.
      assert.deepEqual([...encodePacket(packet, level)], [...theirs]);
    }),
    { numRuns: 300 },
  );
  // Remaining Lengths of 1 to 4 bytes, the topic as bytes, a missing payload.
  for (const size of [0, 100, 20_000, 2_100_000]) {
    for (const level of [4, 5] as const) {
      const packet = {
        cmd: "publish",
        topic: "t/é",
        qos: 1,
        messageId: 300,
        retain: true,
      } as const;
      const payload = size === 0 ? undefined : new Uint8Array(size).fill(7);
      const theirs = mqtt.generate(
        { ...packet, dup: false, payload: payload ? Buffer.from(payload) : Buffer.alloc(0) },
        { protocolVersion: level },
      );
      const mine = encodePacket(
        { ...packet, topic: encodedTopic(packet.topic), payload } as unknown as OutboundPacket,
        level,
      );
      assert.ok(Buffer.from(mine).equals(theirs), `${size} bytes at level ${level}`);
    }
  }
  const others = [
    { cmd: "connack", returnCode: 0, reasonCode: 0, sessionPresent: true },
    { cmd: "suback", messageId: 4, granted: [0, 1, 2] },
    { cmd: "unsuback", messageId: 5, granted: [0, 0x11] },
    { cmd: "pingresp" },
  ];
  for (const packet of others) {
    for (const level of [4, 5] as const) {
      const theirs = mqtt.generate(packet as MqttPacket.Packet, { protocolVersion: level });
      assert.deepEqual([...encodePacket(packet as OutboundPacket, level)], [...theirs]);
    }
  }
  const v5Only = [
    { cmd: "disconnect", reasonCode: 0x8e, properties: { reasonString: "taken over" } },
    {
      cmd: "connack",
      reasonCode: 0,
      sessionPresent: false,
      properties: { assignedClientIdentifier: "x", topicAliasMaximum: 10 },
    },
  ];
  for (const packet of v5Only) {
    const theirs = mqtt.generate(packet as MqttPacket.Packet, { protocolVersion: 5 });
    assert.deepEqual([...encodePacket(packet as unknown as OutboundPacket, 5)], [...theirs]);
  }
});

Deno.test("mqtt-packet's debug output is off, and comes back when DEBUG names it", async () => {
  const codec = new URL("./mqtt_codec.ts", import.meta.url).href;
  const script = `const { createPacketParser } = await import(${JSON.stringify(codec)});
    createPacketParser(4, 1024).push(new Uint8Array([0xc0, 0]));`;
  const run = async (debug: string | undefined) => {
    const env: Record<string, string> = { NO_COLOR: "1" };
    if (debug !== undefined) env.DEBUG = debug;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--config", new URL("../../deno.json", import.meta.url).pathname, script],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  };
  assert.doesNotMatch(await run(undefined), /mqtt-packet:parser/);
  assert.doesNotMatch(await run("other:*"), /mqtt-packet:parser/);
  assert.match(await run("mqtt-packet:*"), /mqtt-packet:parser/);
});

Deno.test("chunksAreFresh: a packet inside one chunk is parsed from a view of it, otherwise from a copy", () => {
  const publish = encodePacket({ ...publish5, qos: 1, messageId: 3 } as OutboundPacket, 5);
  const chunk = concat([publish, publish]);
  const payloadsOf = (items: PacketEvent[]) =>
    packetsOf(items).map((p) => (p as { payload: Uint8Array }).payload);

  const viewing = createPacketParser(5, 4096, { chunksAreFresh: true });
  const viewed = payloadsOf(viewing.push(chunk));
  assert.equal(viewed.length, 2);
  for (const payload of viewed) {
    assert.equal(payload.buffer, chunk.buffer);
    assert.equal(new TextDecoder().decode(payload), "hello");
  }
  // Split across chunks, a packet still gets a frame of its own.
  const [split] = payloadsOf(
    viewing.push(publish.subarray(0, 5)).concat(viewing.push(publish.subarray(5))),
  );
  assert.notEqual(split!.buffer, publish.buffer);
  assert.equal(new TextDecoder().decode(split), "hello");

  const copying = createPacketParser(5, 4096);
  for (const payload of payloadsOf(copying.push(chunk))) {
    assert.notEqual(payload.buffer, chunk.buffer);
  }
});

Deno.test("4-byte acknowledgements decoded from a learnt shape equal mqtt-packet's own decoding", () => {
  /** mqtt-packet's decoding of `frame` at `level`, through a parser of its own. */
  const theirs = (frame: Uint8Array, level: 4 | 5): Record<string, unknown> => {
    const parser = mqtt.parser({ protocolVersion: level });
    let out: Record<string, unknown> = {};
    parser.on("packet", (p) => out = { ...p });
    parser.parse(Buffer.from(frame));
    return out;
  };
  const connect = (level: 4 | 5) =>
    encodePacket(
      {
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: level,
        clean: true,
        clientId: "x",
        keepalive: 0,
      },
      level,
    );
  fc.assert(
    fc.property(
      fc.constantFrom(4 as const, 5 as const),
      fc.constantFrom(0x40, 0x50, 0x62, 0x70),
      fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 5 }),
      (level, first, ids) => {
        const parser = createPacketParser(4, 1024);
        parser.push(connect(level));
        for (const id of ids) {
          const frame = new Uint8Array([first, 2, id >> 8, id & 0xff]);
          const [item] = parser.push(frame);
          assert.equal(item?.kind, "packet");
          const mine = { ...(item as unknown as { packet: Record<string, unknown> }).packet };
          assert.deepEqual(mine, theirs(frame, level));
        }
      },
    ),
    { numRuns: 200 },
  );
  // A PUBREL with reserved flags wrong stays malformed, also after good ones were learnt.
  const parser = createPacketParser(4, 1024);
  parser.push(connect(4));
  assert.equal(parser.push(new Uint8Array([0x62, 2, 0, 1]))[0]?.kind, "packet");
  assert.equal(parser.push(new Uint8Array([0x60, 2, 0, 1]))[0]?.kind, "malformed");
});

Deno.test("PUBLISH frames decode to what mqtt-packet decodes, or are refused as it refuses them", () => {
  type Outcome = { packet: Record<string, unknown> } | { error: string };
  const theirs = (frame: Uint8Array, level: 3 | 4 | 5): Outcome => {
    const parser = mqtt.parser({ protocolVersion: level });
    let out: Outcome = { error: "nothing" };
    parser.on("packet", (p) => out = { packet: { ...p } });
    parser.on("error", (e) => out = { error: e.message });
    parser.parse(Buffer.from(frame));
    return out;
  };
  const mine = (frame: Uint8Array, level: 3 | 4 | 5): Outcome => {
    const items = createPacketParser(level, 1 << 20).push(frame);
    assert.equal(items.length, 1);
    const item = items[0]!;
    return item.kind === "packet"
      ? { packet: { ...(item.packet as unknown as Record<string, unknown>) } }
      : { error: item.kind };
  };
  /** A frame: the first byte, the Remaining Length, the body. */
  const frameOf = (first: number, body: Uint8Array) => {
    const length: number[] = [];
    let n = body.length;
    do {
      length.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
      n >>= 7;
    } while (n > 0);
    return new Uint8Array([first, ...length, ...body]);
  };
  const topic = fc.stringMatching(/^[a-zé/0-9]{1,12}$/);
  const generated = fc.record({
    level: fc.constantFrom(3 as const, 4 as const, 5 as const),
    topic,
    payload: fc.uint8Array({ maxLength: 200 }),
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    messageId: fc.integer({ min: 1, max: 0xffff }),
    retain: fc.boolean(),
    dup: fc.boolean(),
    properties: fc.option(
      fc.record({
        payloadFormatIndicator: fc.boolean(),
        messageExpiryInterval: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        contentType: fc.string({ maxLength: 10 }),
        topicAlias: fc.integer({ min: 1, max: 10 }),
      }, { requiredKeys: [] }),
      { nil: undefined },
    ),
    // Other flag bits (QoS 3 among them), or the frame cut short (its length fixed up).
    flags: fc.option(fc.integer({ min: 0, max: 15 }), { nil: undefined }),
    cut: fc.option(fc.nat(), { nil: undefined }),
  }).map(({ level, properties, payload, flags, cut, ...fields }) => {
    const packet = {
      cmd: "publish",
      ...fields,
      payload: Buffer.from(payload),
      ...(level === 5 && properties ? { properties } : {}),
    } as MqttPacket.Packet;
    const frame = new Uint8Array(mqtt.generate(packet, { protocolVersion: level }));
    const first = flags === undefined ? frame[0]! : 0x30 | flags;
    let bodyAt = 1;
    while (frame[bodyAt]! & 0x80) bodyAt++;
    let body = frame.subarray(bodyAt + 1);
    if (cut !== undefined) body = body.subarray(0, cut % (body.length + 1));
    return { level, frame: frameOf(first, body) };
  });
  const raw = fc.record({
    level: fc.constantFrom(3 as const, 4 as const, 5 as const),
    first: fc.integer({ min: 0x30, max: 0x3f }),
    topicLength: fc.integer({ min: 0, max: 6 }),
    rest: fc.uint8Array({ maxLength: 12 }),
  }).map(({ level, first, topicLength, rest }) => ({
    level,
    frame: frameOf(first, new Uint8Array([0, topicLength, ...rest])),
  }));
  fc.assert(
    fc.property(fc.oneof(generated, raw), ({ level, frame }) => {
      const expected = theirs(frame, level);
      const actual = mine(frame, level);
      if ("error" in expected) {
        assert.ok("error" in actual, `mqtt-packet refused it (${expected.error}), we did not`);
      } else if ("error" in actual) {
        // Only a topic that is not well-formed UTF-8, or holds U+0000, is refused here alone.
        const name = expected.packet.topic as string;
        assert.ok(
          name.includes("\uFFFD") || name.includes("\u0000"),
          `refused ${name}: ${JSON.stringify(actual)} ${[...frame]}`,
        );
      } else {
        assert.deepEqual(actual.packet, expected.packet);
      }
    }),
    { numRuns: 2000 },
  );
  // A PUBLISH of each QoS without properties is decoded here, one with them by mqtt-packet.
  const parser = createPacketParser(5, 1024);
  const { properties: _, ...plain } = publish5 as MqttPacket.IPublishPacket;
  for (const qos of [0, 1, 2] as const) {
    for (const properties of [undefined, { contentType: "x" }]) {
      const frame = encodePacket(
        { ...plain, qos, messageId: 7, ...(properties ? { properties } : {}) } as OutboundPacket,
        5,
      );
      const [item] = parser.push(frame);
      assert.equal(item?.kind, "packet");
      const decoded = (item as unknown as { packet: Record<string, unknown> }).packet;
      assert.deepEqual({ ...decoded }, (theirs(frame, 5) as { packet: unknown }).packet);
      // mqtt-packet's packets are instances of its class `Packet`.
      assert.equal(decoded.constructor.name === "Packet", properties !== undefined);
    }
  }
});

Deno.test("the buffer list's fast reads give what bl's own give, over any split of the bytes", () => {
  // Fresh lists from mqtt-packet's own parser: the prototype the codec changed.
  const list = (parts: Uint8Array[]) => {
    const l = (mqtt.parser() as unknown as { _list: { append(b: Buffer): void } })._list;
    for (const p of parts) l.append(Buffer.from(p));
    return l as unknown as Record<
      "readUInt8" | "readUInt16BE" | "readUInt32BE" | "toString",
      (...args: unknown[]) => unknown
    >;
  };
  const outcome = (f: () => unknown) => {
    try {
      return { value: f() };
    } catch (err) {
      return { error: (err as Error).name };
    }
  };
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 4 }),
      fc.oneof(fc.integer({ min: -2, max: 60 }), fc.constant(1.5)),
      fc.integer({ min: -2, max: 60 }),
      (parts, offset, end) => {
        const l = list(parts);
        for (const name of ["readUInt8", "readUInt16BE", "readUInt32BE"] as const) {
          assert.deepEqual(
            outcome(() => l[name](offset)),
            outcome(() => blReads[name].call(l as never, offset)),
            `${name}(${offset})`,
          );
        }
        for (const encoding of ["utf8", "latin1", undefined]) {
          assert.deepEqual(
            outcome(() => l.toString(encoding, offset, end)),
            outcome(() => blReads.toString.call(l as never, encoding, offset, end)),
            `toString(${encoding}, ${offset}, ${end})`,
          );
        }
      },
    ),
    { numRuns: 500 },
  );
});
