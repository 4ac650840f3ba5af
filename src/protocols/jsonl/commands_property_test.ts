/**
 * Property tests of the JSON-line codec: whatever line arrives, each port's decoder
 * answers a well-typed command or one of the documented rejections, never throws; valid
 * commands round-trip; a PUB's body is relayed as the exact text received; duplicate
 * keys and nesting past the limit are refused wherever they are.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ackLine,
  AckLineWriter,
  CommandReader,
  type ConsumerCommand,
  decodeConsumer,
  type Decoded,
  decodePublisher,
  plainBody,
  pubLine,
  PubLineWriter,
  type PublisherCommand,
} from "./commands.ts";
import { encodeBody } from "./payload.ts";
import { prng } from "../../../tests/prng.ts";

const CONSUMER_TYPES = ["SUB", "UNSUB", "PUBREC", "PUBCOMP"] as const;
const PUBLISHER_TYPES = ["PUB", "PUBREL"] as const;
const RUNS = { numRuns: 1000 };

// --- generators ---------------------------------------------------------------------

/** Any UTF-16 string, lone surrogates and control characters included. */
const anyString = fc.oneof(
  fc.string({ unit: "binary", maxLength: 30 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }),
  fc.string({ unit: fc.constantFrom("{", "}", "[", "]", '"', ":", ",", "\\", " ", "a", "1") }),
);

/** Keys that stress object handling as well as ordinary ones. */
const key = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 6 }) },
  { weight: 1, arbitrary: fc.constantFrom("__proto__", "constructor", "toString", "type", "msg") },
  { weight: 1, arbitrary: anyString },
);

/** A JSON value as a tree whose objects are entry lists (so any key, "__proto__" too). */
type Node =
  | { kind: "scalar"; value: null | boolean | number | string }
  | { kind: "array"; items: Node[] }
  | { kind: "object"; entries: [string, Node][] };

const scalar: fc.Arbitrary<Node> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  anyString,
).map((value) => ({ kind: "scalar", value }));

const { node } = fc.letrec<{ node: Node }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    scalar,
    fc.array(tie("node"), { maxLength: 4 }).map((items): Node => ({ kind: "array", items })),
    fc.uniqueArray(fc.tuple(key, tie("node")), { maxLength: 4, selector: ([k]) => k })
      .map((entries): Node => ({ kind: "object", entries })),
  ),
}));

/** Whitespace JSON allows between tokens. */
const WHITESPACE = ["", "", "", " ", "  ", "\t", "\r\n", "\n"];

/** Formats JSON text with random whitespace and some keys spelled with \u escapes. */
class Formatter {
  readonly #rand: () => number;
  constructor(seed: number) {
    this.#rand = prng(seed);
  }
  ws(): string {
    return WHITESPACE[Math.floor(this.#rand() * WHITESPACE.length)] as string;
  }
  key(k: string): string {
    if (this.#rand() < 0.8) return JSON.stringify(k);
    return `"${[...Array(k.length).keys()].map((i) => escapeUnit(k.charCodeAt(i))).join("")}"`;
  }
  value(n: Node): string {
    const w = () => this.ws();
    switch (n.kind) {
      case "scalar":
        return JSON.stringify(n.value);
      case "array":
        return `[${w()}${n.items.map((x) => this.value(x)).join(`${w()},${w()}`)}${w()}]`;
      case "object":
        return `{${w()}${
          n.entries.map(([k, x]) => `${this.key(k)}${w()}:${w()}${this.value(x)}`)
            .join(`${w()},${w()}`)
        }${w()}}`;
    }
  }
  /** A top-level object from raw member texts, in the given order. */
  object(members: [string, string][]): string {
    const w = () => this.ws();
    return `${w()}{${w()}${
      members.map(([k, text]) => `${this.key(k)}${w()}:${w()}${text}`).join(`${w()},${w()}`)
    }${w()}}${w()}`;
  }
}

function escapeUnit(c: number): string {
  return `\\u${c.toString(16).padStart(4, "0")}`;
}

/** msgId texts: valid ids, and every kind of number or value that is not one. */
const msgIdText = fc.oneof(
  fc.integer({ min: 1, max: 2 ** 31 }).map(String),
  fc.integer({ min: -5, max: 0 }).map(String),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
  fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map(String),
  fc.constantFrom(
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "1e400",
    "-1e400",
    "1.0",
    "1e0",
    "0.5e1",
    "4.000000000000001",
    "-0",
    '"4"',
    "null",
    "true",
    "[1]",
    '{"n":1}',
  ),
);

/** A member of a command-like object: a field name and its raw JSON text. */
function commandLike(types: readonly string[]) {
  return fc.record({
    seed: fc.integer(),
    type: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...types) },
      { weight: 1, arbitrary: fc.constantFrom("sub", "PUB ", "FOO", "") },
    ),
    topic: fc.option(fc.oneof({ weight: 4, arbitrary: anyString }, { weight: 1, arbitrary: node })),
    msgId: fc.option(msgIdText),
    msg: fc.option(node),
    extra: fc.option(fc.tuple(fc.constantFrom("extra", "qos", "retain"), node)),
    order: fc.integer({ min: 0, max: 119 }),
  });
}

// --- the model ----------------------------------------------------------------------

type Outcome = Decoded<ConsumerCommand> | Decoded<PublisherCommand>;

/** Checks what every decoding must satisfy, whatever the input. */
function checkOutcome(line: string, d: Outcome, types: readonly string[]): void {
  let parsed: unknown;
  let parses = true;
  try {
    parsed = JSON.parse(line);
  } catch {
    parses = false;
  }
  if (!d.ok) {
    assert.ok(!/[\r\n]/.test(d.reply), `a reply spans lines: ${JSON.stringify(d.reply)}`);
    if (d.reply === "INVALID JSON") assert.equal(d.reason, "invalid-json");
    else if (d.reply === "UNKNOWN COMMAND") assert.equal(d.reason, "unknown-command");
    else {
      assert.ok(d.reply.startsWith("ERROR: "), `unexpected reply ${JSON.stringify(d.reply)}`);
      assert.ok(["wrong-port", "invalid-command"].includes(d.reason), d.reason);
    }
    assert.equal(d.reply === "INVALID JSON", !parses, "INVALID JSON iff JSON.parse refuses");
    assert.equal(typeof d.detail, "string");
    return;
  }
  assert.ok(parses, "a command from text JSON.parse refuses");
  const c = d.command;
  assert.ok(types.includes(c.type), `a ${c.type} decoded on the wrong port`);
  assert.equal(c.type, (parsed as { type: unknown }).type);
  switch (c.type) {
    case "SUB":
    case "UNSUB":
      assert.equal(typeof c.topic, "string");
      break;
    case "PUBREC":
    case "PUBCOMP":
    case "PUBREL":
      assert.ok(Number.isSafeInteger(c.msgId) && c.msgId > 0, `msgId ${c.msgId}`);
      if ("topic" in c && c.topic !== undefined) assert.equal(typeof c.topic, "string");
      break;
    case "PUB":
      assert.equal(typeof c.topic, "string");
      assert.ok(c.msg !== undefined, "a PUB without msg");
      assert.equal(typeof c.msgJson, "string");
      assert.deepEqual(JSON.parse(c.msgJson), c.msg, "msgJson does not parse back to msg");
      assert.deepEqual(c.msg, (parsed as { msg: unknown }).msg);
      break;
  }
}

/** Whether a parsed object is a valid command of a port with `types` (the spec, restated). */
function isValid(v: Record<string, unknown>, types: readonly string[]): boolean {
  const type = v.type;
  if (typeof type !== "string" || !types.includes(type)) return false;
  const goodId = Number.isSafeInteger(v.msgId) && (v.msgId as number) > 0;
  switch (type) {
    case "SUB":
    case "UNSUB":
      return typeof v.topic === "string";
    case "PUBREC":
    case "PUBCOMP":
      return goodId && (!Object.hasOwn(v, "topic") || typeof v.topic === "string");
    case "PUB":
      return typeof v.topic === "string" && Object.hasOwn(v, "msg");
    case "PUBREL":
      return goodId;
  }
  return false;
}

/** The fields of a known command that break its schema. */
function wrongFields(v: Record<string, unknown>): Set<string> {
  const wrong = new Set<string>();
  const hasTopic = Object.hasOwn(v, "topic");
  const topicRequired = v.type === "SUB" || v.type === "UNSUB" || v.type === "PUB";
  if (hasTopic ? typeof v.topic !== "string" : topicRequired) wrong.add("topic");
  if (!(Number.isSafeInteger(v.msgId) && (v.msgId as number) > 0)) wrong.add("msgId");
  if (!Object.hasOwn(v, "msg")) wrong.add("msg");
  return wrong;
}

const PORTS = [
  { name: "consumer", decode: decodeConsumer, types: CONSUMER_TYPES, other: PUBLISHER_TYPES },
  { name: "publisher", decode: decodePublisher, types: PUBLISHER_TYPES, other: CONSUMER_TYPES },
] as const;

// --- properties ---------------------------------------------------------------------

Deno.test("any string gets a command or a documented rejection on either port, never a throw", () => {
  const line = fc.oneof(
    anyString,
    fc.json(),
    // JSON cut short or with a character dropped in: "almost" commands.
    fc.tuple(fc.json(), fc.nat(), anyString).map(([j, at, s]) =>
      j.slice(0, at % (j.length + 1)) + s
    ),
    fc.constantFrom(
      '{"type":"SUB","topic":"t"',
      '{"type":"PUB","topic":"t","msg":}',
      '{"type":"PUB","topic":"t","msg":"\u0000"}',
      '{"type":"PUB","topic":"t","msg":"a\u0000b"}',
      '{"type":"PUB","topic":"t","msg":"\\ud800"}',
      '{"type":"SUB","topic":"\\u0000"}',
    ),
  );
  fc.assert(
    fc.property(line, (l) => {
      for (const port of PORTS) checkOutcome(l, port.decode(l), port.types);
    }),
    { numRuns: 3000 },
  );
});

Deno.test("command-like objects decode exactly when valid, to the fields sent; otherwise the reply names the problem", () => {
  for (const port of PORTS) {
    fc.assert(
      fc.property(commandLike([...port.types, ...port.other]), (g) => {
        const f = new Formatter(g.seed);
        const members: [string, string][] = [["type", JSON.stringify(g.type)]];
        if (g.topic !== null) {
          members.push([
            "topic",
            typeof g.topic === "string" ? JSON.stringify(g.topic) : f.value(g.topic),
          ]);
        }
        if (g.msgId !== null) members.push(["msgId", g.msgId]);
        if (g.msg !== null) members.push(["msg", f.value(g.msg)]);
        if (g.extra !== null) members.push([g.extra[0], f.value(g.extra[1])]);
        // Any order of the members.
        const rest = [...members];
        const ordered: [string, string][] = [];
        let k = g.order;
        while (rest.length > 0) {
          ordered.push(rest.splice(k % rest.length, 1)[0] as [string, string]);
          k = Math.floor(k / 2) + 1;
        }
        const line = f.object(ordered);
        const d = port.decode(line, 1000);
        checkOutcome(line, d, port.types);
        const v = JSON.parse(line) as Record<string, unknown>;
        assert.equal(d.ok, isValid(v, port.types), `${port.name}: ${line}`);
        if (d.ok) {
          const expected: Record<string, unknown> = { type: v.type };
          if (v.type === "PUB") {
            expected.topic = v.topic;
            expected.msg = v.msg;
            // The body's exact text, as sent.
            expected.msgJson = ordered.find(([name]) => name === "msg")?.[1];
          } else {
            if (Object.hasOwn(v, "topic") && v.type !== "PUBREL") expected.topic = v.topic;
            if (v.type !== "SUB" && v.type !== "UNSUB") expected.msgId = v.msgId;
          }
          assert.deepEqual(d.command, expected);
          return;
        }
        const known: readonly string[] = [...port.types, ...port.other];
        if (typeof v.type !== "string" || !known.includes(v.type)) {
          assert.equal(d.reply, "UNKNOWN COMMAND");
        } else if (port.other.some((t) => t === v.type)) {
          assert.equal(d.reason, "wrong-port");
          assert.match(d.reply, new RegExp(`^ERROR: ${v.type} is a \\w+ command: send it to`));
        } else {
          assert.equal(d.reason, "invalid-command");
          // The reply names the command and the first field that is wrong.
          assert.match(d.reply, new RegExp(`^ERROR: invalid ${v.type}: "(topic|msgId|msg)" `));
          const field = /"(\w+)"/.exec(d.reply)?.[1] as string;
          assert.ok(wrongFields(v).has(field), `${d.reply} blames a good field`);
        }
      }),
      RUNS,
    );
  }
});

Deno.test("valid commands built from arbitraries round-trip through their port's decoder", () => {
  const topic = anyString;
  const id = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER });
  const consumerCommand: fc.Arbitrary<ConsumerCommand> = fc.oneof(
    fc.record({ type: fc.constantFrom("SUB" as const, "UNSUB" as const), topic }),
    fc.record({ type: fc.constantFrom("PUBREC" as const, "PUBCOMP" as const), msgId: id, topic }, {
      requiredKeys: ["type", "msgId"],
    }),
  );
  fc.assert(
    fc.property(consumerCommand, fc.integer(), (c, seed) => {
      const members = Object.entries(c).map(([k, v]): [string, string] => [k, JSON.stringify(v)]);
      const d = decodeConsumer(new Formatter(seed).object(members));
      assert.ok(d.ok, d.ok ? "" : d.reply);
      assert.deepEqual(d.command, { ...c });
    }),
    RUNS,
  );
  fc.assert(
    fc.property(id, fc.integer(), (msgId, seed) => {
      const d = decodePublisher(
        new Formatter(seed).object([["msgId", String(msgId)], ["type", '"PUBREL"']]),
      );
      assert.ok(d.ok);
      assert.deepEqual(d.command, { type: "PUBREL", msgId });
    }),
    RUNS,
  );
});

Deno.test("a PUB's msgJson is the body's exact text and parses back to msg, whatever the value and spacing", () => {
  fc.assert(
    fc.property(anyString, node, fc.integer(), fc.boolean(), (topic, msg, seed, msgFirst) => {
      const f = new Formatter(seed);
      const body = f.value(msg);
      const members: [string, string][] = [["type", '"PUB"'], ["topic", JSON.stringify(topic)]];
      if (msgFirst) members.unshift(["msg", body]);
      else members.push(["msg", body]);
      const line = f.object(members);
      const d = decodePublisher(line, 1000);
      if (!d.ok) assert.fail(`${d.reply} for ${line}`);
      assert.equal(d.command.type, "PUB");
      if (d.command.type !== "PUB") return;
      assert.equal(d.command.msgJson, body);
      assert.deepEqual(JSON.parse(d.command.msgJson), d.command.msg);
      assert.deepEqual(d.command.msg, JSON.parse(body));
      assert.equal(d.command.topic, topic);
    }),
    RUNS,
  );
  // fast-check's own JSON texts, as they are (no re-formatting).
  fc.assert(
    fc.property(fc.json(), (body) => {
      const d = decodePublisher(`{"type":"PUB","topic":"t","msg":${body}}`, 1000);
      if (!d.ok) assert.fail(d.reply);
      if (d.command.type !== "PUB") assert.fail("not a PUB");
      assert.equal(d.command.msgJson, body);
      assert.deepEqual(JSON.parse(d.command.msgJson), d.command.msg);
    }),
    RUNS,
  );
});

/** A node wrapped `depth` times in arrays or single-member objects. */
function wrap(inner: string, shape: boolean[]): string {
  let text = inner;
  for (const asArray of shape) text = asArray ? `[${text}]` : `{"w":${text}}`;
  return text;
}

Deno.test("a duplicate key is refused at any depth and in any spelling; equal keys in sibling objects are not", () => {
  fc.assert(
    fc.property(
      key,
      node,
      node,
      fc.array(fc.boolean(), { maxLength: 8 }),
      fc.integer(),
      fc.constantFrom(...PORTS),
      (k, a, b, shape, seed, port) => {
        const f = new Formatter(seed);
        const dup = `{${f.key(k)}:${f.value(a)},"other":1,${f.key(k)}:${f.value(b)}}`;
        const siblings = `[{${f.key(k)}:${f.value(a)}},{${f.key(k)}:${f.value(b)}}]`;
        const type = port.types[0];
        const carrier = (inner: string) =>
          type === "PUB"
            ? `{"type":"PUB","topic":"t","msg":${wrap(inner, shape)}}`
            : `{"type":"SUB","topic":"t","extra":${wrap(inner, shape)}}`;
        const d = port.decode(carrier(dup), 1000);
        assert.ok(!d.ok, "a duplicate key was accepted");
        assert.equal(d.reason, "invalid-command");
        assert.equal(d.reply, `ERROR: invalid ${type}: duplicate key ${JSON.stringify(k)}`);
        assert.ok(port.decode(carrier(siblings), 1000).ok, "sibling objects were refused");
      },
    ),
    RUNS,
  );
  // At the top level, where it would make the command itself ambiguous.
  fc.assert(
    fc.property(anyString, anyString, fc.integer(), (t1, t2, seed) => {
      const f = new Formatter(seed);
      const line = f.object([["type", '"SUB"'], ["topic", JSON.stringify(t1)], [
        "topic",
        JSON.stringify(t2),
      ]]);
      const d = decodeConsumer(line);
      assert.ok(!d.ok);
      assert.equal(d.reply, 'ERROR: invalid SUB: duplicate key "topic"');
    }),
    { numRuns: 300 },
  );
});

Deno.test("nesting is accepted up to maxJsonDepth levels and refused one past it, naming the limit", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 64 }),
      fc.integer({ min: 0, max: 80 }),
      fc.array(fc.boolean(), { minLength: 80, maxLength: 80 }),
      (max, msgDepth, shape) => {
        // The command object is one level; msg adds msgDepth more.
        const line = `{"type":"PUB","topic":"t","msg":${wrap("0", shape.slice(0, msgDepth))}}`;
        const d = decodePublisher(line, max);
        if (1 + msgDepth <= max) assert.ok(d.ok, `depth ${1 + msgDepth} refused at max ${max}`);
        else {
          assert.ok(!d.ok, `depth ${1 + msgDepth} accepted at max ${max}`);
          assert.equal(d.reply, `ERROR: invalid PUB: nested deeper than ${max} levels`);
        }
      },
    ),
    RUNS,
  );
  // Far past any limit: still an answer, on both ports.
  fc.assert(
    fc.property(fc.integer({ min: 1_000, max: 200_000 }), (n) => {
      for (const port of PORTS) {
        const line = `{"type":"${port.types[0]}","topic":"t","msg":${"[".repeat(n)}${
          "]".repeat(n)
        }}`;
        const d = port.decode(line);
        assert.ok(!d.ok);
        assert.equal(d.reply, `ERROR: invalid ${port.types[0]}: nested deeper than 32 levels`);
      }
    }),
    { numRuns: 20 },
  );
});

Deno.test("a msgId is accepted exactly when it is a positive safe integer; otherwise the error names msgId", () => {
  fc.assert(
    fc.property(msgIdText, fc.constantFrom("PUBREC", "PUBCOMP", "PUBREL"), (text, type) => {
      const decode = type === "PUBREL" ? decodePublisher : decodeConsumer;
      const d = decode(`{"type":"${type}","msgId":${text}}`);
      const value = JSON.parse(text);
      if (Number.isSafeInteger(value) && value > 0) {
        assert.ok(d.ok, text);
        assert.deepEqual(d.command, { type, msgId: value });
      } else {
        assert.ok(!d.ok, `msgId ${text} accepted`);
        assert.match(d.reply, new RegExp(`^ERROR: invalid ${type}: "msgId" `));
      }
    }),
    RUNS,
  );
});

/**
 * A line decodes on both ports as it does with a leading space, which keeps it off the
 * compact forms' fast paths: the same command, or the same reply.
 */
function assertGeneralPathAgrees(line: string): void {
  for (const decode of [decodeConsumer, decodePublisher]) {
    const fast = decode(line);
    const general = decode(" " + line);
    if (fast.ok || general.ok) assert.deepEqual(fast, general, line);
    else assert.equal(fast.reply, general.reply, line);
  }
}

Deno.test("acknowledgements in the compact form decode as the general path decodes them", () => {
  const ackType = fc.constantFrom("PUBREC", "PUBCOMP", "PUBREL", "SUB");
  const msgIdText = fc.oneof(
    fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }).map(String),
    fc.constantFrom("0", "01", "999999999999999", "9999999999999999", "1e3", "-1", "1.0"),
  );
  const topicText = fc.oneof(
    fc.string({ maxLength: 12 }).map((t) => JSON.stringify(t).slice(1, -1)),
    anyString.map((t) => JSON.stringify(t).slice(1, -1)),
    fc.string({
      unit: fc.constantFrom("a", "\\", '"', "u", "0", "n", "\t", "\x1f", " "),
      maxLength: 8,
    }),
  );
  fc.assert(
    fc.property(ackType, msgIdText, fc.option(topicText), (type, id, topic) => {
      const line = `{"type":"${type}","msgId":${id}${topic === null ? "" : `,"topic":"${topic}"`}}`;
      assertGeneralPathAgrees(line);
    }),
    RUNS,
  );
});

Deno.test("PUBs of a string in the compact form decode as the general path decodes them", () => {
  const text = fc.oneof(
    fc.string({ maxLength: 12 }).map((t) => JSON.stringify(t).slice(1, -1)),
    anyString.map((t) => JSON.stringify(t).slice(1, -1)),
    fc.string({
      unit: fc.constantFrom("a", "\\", '"', "u", "0", "n", "\t", "\x1f", " ", "}"),
      maxLength: 8,
    }),
  );
  fc.assert(
    fc.property(text, text, (topic, msg) => {
      const line = `{"type":"PUB","topic":"${topic}","msg":"${msg}"}`;
      assertGeneralPathAgrees(line);
    }),
    RUNS,
  );
});

Deno.test("a command read from its bytes is the command its text decodes to, or left to the text", () => {
  const ackType = fc.constantFrom("PUBREC", "PUBCOMP", "PUBREL", "PUB", "PUBRE", "PUBCOMPX");
  const msgIdText = fc.oneof(
    fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }).map(String),
    fc.constantFrom("0", "01", "999999999999999", "9999999999999999", "1e3", "-1", "1.0", ""),
  );
  const topicText = fc.oneof(
    fc.constantFrom("t", "topic-1", "topic-2", ""),
    fc.string({ maxLength: 12 }).map((t) => JSON.stringify(t).slice(1, -1)),
    anyString.map((t) => JSON.stringify(t).slice(1, -1)),
  );
  const ack = fc.tuple(ackType, msgIdText, fc.option(topicText)).map(([type, id, topic]) =>
    `{"type":"${type}","msgId":${id}${topic === null ? "" : `,"topic":"${topic}"`}}`
  );
  const pub = fc.tuple(topicText, fc.oneof(topicText, fc.constantFrom("hello", '\\"', "é", "}")))
    .map(([topic, msg]) => `{"type":"PUB","topic":"${topic}","msg":"${msg}"}`);
  const line = fc.oneof(ack, pub);
  // A line, or the same with one character changed or cut off: near misses.
  const nearLine = fc.tuple(line, fc.nat(), fc.constantFrom("", "x", "}", '"', "\\", " ", "é"))
    .map(([l, at, c]) =>
      c === ""
        ? l.slice(0, at % (l.length + 1))
        : l.slice(0, at % l.length) + c + l.slice(at % l.length + 1)
    );
  const encoder = new TextEncoder();
  fc.assert(
    fc.property(fc.array(fc.oneof(line, nearLine), { minLength: 1, maxLength: 8 }), (lines) => {
      // The lines of one read, one after the other, each between two bytes it must not see.
      const readers = {
        consumer: new CommandReader("consumer"),
        publisher: new CommandReader("publisher"),
      };
      const bytes = lines.map((l) => encoder.encode(l));
      const chunk = new Uint8Array(bytes.reduce((n, b) => n + b.length + 2, 1));
      chunk.fill(0x7d);
      let at = 1;
      for (let i = 0; i < lines.length; i++) {
        const b = bytes[i] as Uint8Array;
        chunk.set(b, at);
        for (const port of ["consumer", "publisher"] as const) {
          const read = readers[port].read(chunk, at, at + b.length);
          if (read === null) continue;
          const decoded = (port === "consumer" ? decodeConsumer : decodePublisher)(
            lines[i] as string,
          );
          assert.ok(decoded.ok, `${port} read ${lines[i]}, which its text refuses`);
          if ("payload" in read) {
            const c = decoded.command as Extract<PublisherCommand, { type: "PUB" }>;
            assert.equal(read.topic, c.topic);
            assert.deepEqual(
              read.payload,
              encodeBody(c.msg, c.msgJson).payload,
              lines[i] as string,
            );
            assert.equal(encodeBody(c.msg, c.msgJson).format, "text");
          } else assert.deepEqual(read, decoded.command, lines[i] as string);
        }
        at += b.length + 2;
      }
    }),
    RUNS,
  );
});

Deno.test("the acknowledgements and PUBs clients send are read from their bytes, topic text kept between them", () => {
  const encoder = new TextEncoder();
  const consumer = new CommandReader("consumer");
  const publisher = new CommandReader("publisher");
  const read = (r: CommandReader, line: string) => {
    const b = encoder.encode(` ${line} `); // offsets, not the whole array
    return r.read(b, 1, b.length - 1);
  };
  const first = read(consumer, '{"type":"PUBREC","msgId":12,"topic":"orders"}');
  assert.deepEqual(first, { type: "PUBREC", msgId: 12, topic: "orders" });
  const again = read(consumer, '{"type":"PUBREC","msgId":13,"topic":"orders"}');
  assert.deepEqual(again, { type: "PUBREC", msgId: 13, topic: "orders" });
  assert.deepEqual(read(consumer, '{"type":"PUBREC","msgId":14,"topic":"orderz"}'), {
    type: "PUBREC",
    msgId: 14,
    topic: "orderz",
  });
  assert.deepEqual(read(consumer, '{"type":"PUBREC","msgId":15,"topic":"xrderz"}'), {
    type: "PUBREC",
    msgId: 15,
    topic: "xrderz",
  });
  assert.deepEqual(read(consumer, '{"type":"PUBCOMP","msgId":999999999999999}'), {
    type: "PUBCOMP",
    msgId: 999999999999999,
  });
  assert.deepEqual(read(publisher, '{"type":"PUBREL","msgId":7}'), { type: "PUBREL", msgId: 7 });
  assert.deepEqual(read(publisher, '{"type":"PUB","topic":"orders","msg":"n° 1"}'), null);
  assert.deepEqual(read(publisher, '{"type":"PUB","topic":"orders","msg":"no 1"}'), {
    type: "PUB",
    topic: "orders",
    payload: encoder.encode("no 1"),
  });
  assert.equal(read(consumer, '{"type":"PUB","topic":"orders","msg":"no 1"}'), null);
  assert.equal(read(publisher, '{"type":"PUB","topic":"orders","msg":"a\\"b"}'), null);
  assert.equal(read(publisher, '{"type":"PUB","topic":"orders","msg":{"a":1}}'), null);
  // Left to the text path: the other port's, escapes, non-ASCII, another form.
  assert.equal(read(consumer, '{"type":"PUBREL","msgId":7}'), null);
  assert.equal(read(publisher, '{"type":"PUBREC","msgId":7}'), null);
  assert.equal(read(consumer, '{"type":"PUBREC","msgId":7,"topic":"a\\u0041"}'), null);
  assert.equal(read(consumer, '{"type":"PUBREC","msgId":7,"topic":"é"}'), null);
  assert.equal(read(consumer, '{"type": "PUBREC","msgId":7}'), null);
  assert.equal(read(consumer, '{"type":"PUBREC","msgId":07}'), null);
  assert.equal(read(consumer, '{"type":"PUBREC","msgId":1234567890123456}'), null);
  assert.equal(read(publisher, '{"type":"PUBREL","msgId":7,"topic":"t"}'), null);
});

Deno.test("a delivery line written from a plain body's bytes is the line built as text", () => {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const writer = new PubLineWriter();
  const printable = fc.string({
    unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    maxLength: 120,
  });
  const id = fc.oneof(
    fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    fc.constantFrom(1, 9, 10, 99, 100, 1_000_000, Number.MAX_SAFE_INTEGER),
  );
  fc.assert(
    fc.property(
      fc.oneof(printable, anyString),
      id,
      fc.oneof(anyString, printable),
      (body, n, topic) => {
        const payload = encoder.encode(body);
        const plain = plainBody(payload);
        // Plain: printable ASCII without a quote or a backslash, the bytes JSON keeps as they are.
        assert.equal(plain, /^[\x20-\x7e]*$/.test(body) && !/["\\]/.test(body), body);
        if (!plain) return;
        const max = writer.of(payload, n, topic).maxBytes;
        const buf = new Uint8Array(max + 3).fill(0x21);
        const end = writer.writeLine(buf, 1);
        assert.ok(end <= 1 + max);
        assert.equal(decoder.decode(buf.subarray(1, end)), pubLine(JSON.stringify(body), n, topic));
      },
    ),
    RUNS,
  );
});

Deno.test("an acknowledgement line written as bytes is the line built as text", () => {
  const writer = new AckLineWriter();
  const decoder = new TextDecoder();
  fc.assert(
    fc.property(
      fc.constantFrom("PUBREC", "PUBCOMP", "PUBREL"),
      fc.oneof(
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        fc.constantFrom(1, 9, 10, 99, 100, Number.MAX_SAFE_INTEGER),
      ),
      (type, id) => {
        writer.of(type, id);
        const buf = new Uint8Array(AckLineWriter.MAX_BYTES + 2);
        const end = writer.writeLine(buf, 2);
        assert.equal(decoder.decode(buf.subarray(2, end)), ackLine(type, id));
      },
    ),
    RUNS,
  );
});
