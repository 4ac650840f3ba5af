/**
 * The JSON-line protocol's codec: an input line becomes a typed command or a precise
 * error; replies are encoded here too (keys in the seed's order, which is alphabetical).
 *
 * @module
 */
import { z } from "zod";
import type { DeadLetterReason } from "../../core/dead_letters.ts";
import { MAX_WINDOW } from "../../core/delivery.ts";
import { checkJsonShape } from "./json_shape.ts";

const msgId = z.number({ error: "must be a positive integer" })
  .int({ error: "must be a positive integer" })
  .positive({ error: "must be a positive integer" })
  .max(Number.MAX_SAFE_INTEGER, { error: "is too large" });
const topic = z.string({ error: "must be a string" });

const window = z.number({ error: `must be an integer from 1 to ${MAX_WINDOW}` })
  .int({ error: `must be an integer from 1 to ${MAX_WINDOW}` })
  .min(1, { error: `must be an integer from 1 to ${MAX_WINDOW}` })
  .max(MAX_WINDOW, { error: `must be an integer from 1 to ${MAX_WINDOW}` });

const sub = z.object({ type: z.literal("SUB"), topic, window: window.optional() });
const unsub = z.object({ type: z.literal("UNSUB"), topic });
const pubrec = z.object({ type: z.literal("PUBREC"), msgId, topic: topic.optional() });
const pubcomp = z.object({ type: z.literal("PUBCOMP"), msgId, topic: topic.optional() });
const pub = z.object({ type: z.literal("PUB"), topic, msg: z.unknown() });
const pubrel = z.object({ type: z.literal("PUBREL"), msgId });

/** Commands of the consumer port (4040). */
export type ConsumerCommand =
  | z.infer<typeof sub>
  | z.infer<typeof unsub>
  | z.infer<typeof pubrec>
  | z.infer<typeof pubcomp>;

/**
 * Commands of the publisher port (4041). A PUB carries `msgJson`, the text of its `msg`
 * exactly as received, so that the body is relayed without re-serialising it.
 */
export type PublisherCommand = (z.infer<typeof pub> & { msgJson: string }) | z.infer<typeof pubrel>;

/** Default deepest nesting of arrays and objects in a line. */
export const MAX_JSON_DEPTH = 32;

/** A decoded line: a command, or what to answer and why it was rejected. */
export type Decoded<C> =
  | { ok: true; command: C }
  | { ok: false; reason: DeadLetterReason; reply: string; detail: string };

const CONSUMER_SCHEMAS: Record<string, z.ZodType> = {
  SUB: sub,
  UNSUB: unsub,
  PUBREC: pubrec,
  PUBCOMP: pubcomp,
};
const PUBLISHER_SCHEMAS: Record<string, z.ZodType> = { PUB: pub, PUBREL: pubrel };

/** Decodes a line received on the consumer port. */
export function decodeConsumer(
  line: string,
  maxDepth = MAX_JSON_DEPTH,
): Decoded<ConsumerCommand> {
  return decode(line, maxDepth, CONSUMER_SCHEMAS, PUBLISHER_SCHEMAS, "publisher") as Decoded<
    ConsumerCommand
  >;
}

/** Decodes a line received on the publisher port. */
export function decodePublisher(
  line: string,
  maxDepth = MAX_JSON_DEPTH,
): Decoded<PublisherCommand> {
  return decode(line, maxDepth, PUBLISHER_SCHEMAS, CONSUMER_SCHEMAS, "consumer") as Decoded<
    PublisherCommand
  >;
}

/**
 * The compact form of an acknowledgement: `{"type":…,"msgId":N}` with an optional
 * `"topic"` after the id, no spaces, an id of 1 to 15 digits without a leading zero. Its
 * compiled match is several times cheaper than comparing the line's head with each
 * type's prefix (`startsWith` costs about a tenth of a microsecond a call here).
 */
const ACK =
  // deno-lint-ignore no-control-regex -- raw control characters are not allowed in JSON strings
  /^\{"type":"PUB(?:REC|COMP|REL)","msgId":[1-9][0-9]{0,14}(?:,"topic":"(?:[^"\\\x00-\x1f]|\\.)*")?\}$/;

/** Where the digits of the id start: after `{"type":"`, the type, and `","msgId":`. */
const ID_AT = { PUBREC: 25, PUBCOMP: 26, PUBREL: 25 } as const;

/**
 * An acknowledgement written the way clients that pipeline write it ({@link ACK}): the
 * bulk of a busy connection's lines, decoded without JSON.parse, the shape check or the
 * schema; anything else takes the general path, which decides the same.
 */
function fastAck(line: string, schemas: Record<string, z.ZodType>): Decoded<unknown> | null {
  if (!ACK.test(line)) return null;
  // `{"type":"PUB` is 12 characters; the 13th and 15th tell the three types apart.
  const type = line.charCodeAt(12) === 0x43
    ? "PUBCOMP"
    : line.charCodeAt(14) === 0x43
    ? "PUBREC"
    : "PUBREL";
  if (!Object.hasOwn(schemas, type)) return null; // the other port's: the general path says so
  let p = ID_AT[type];
  let msgId = 0;
  for (let c = line.charCodeAt(p); c >= 0x30 && c <= 0x39; c = line.charCodeAt(++p)) {
    msgId = msgId * 10 + (c - 0x30);
  }
  if (p === line.length - 1) return { ok: true, command: { type, msgId } };
  if (type === "PUBREL") return null; // a PUBREL has no topic: the general path says so
  let topic = line.slice(p + TOPIC_KEY_LENGTH, line.length - 2);
  if (topic.includes("\\")) {
    try {
      topic = JSON.parse(`"${topic}"`) as string;
    } catch {
      return null;
    }
  }
  return { ok: true, command: { type, msgId, topic } };
}

const TOPIC_KEY = ',"topic":"';
const TOPIC_KEY_LENGTH = TOPIC_KEY.length;

/** The ASCII bytes of `text`. */
function ascii(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** True when `b` holds `expected` from `at` on (from `expected[skip]`, if given). */
function bytesAt(b: Uint8Array, at: number, expected: Uint8Array, skip = 0): boolean {
  for (let i = skip; i < expected.length; i++) {
    if (b[at + i] !== expected[i]) return false;
  }
  return true;
}

/** `{"type":"PUB`: every compact acknowledgement starts so. */
const HEAD_BYTES = ascii('{"type":"PUB');
/** What follows {@link HEAD_BYTES} up to the id's digits, per type. */
const REC_BYTES = ascii('REC","msgId":');
const COMP_BYTES = ascii('COMP","msgId":');
const REL_BYTES = ascii('REL","msgId":');
const TOPIC_KEY_BYTES = ascii(TOPIC_KEY);
/** `{"type":"PUBREL","msgId":1}`: the shortest acknowledgement. */
const SHORTEST_ACK = 27;
/** Longer topics are left to the text path (their text is built from an argument list). */
const MAX_READ_TOPIC = 256;

/** What follows {@link HEAD_BYTES} in a compact PUB, up to the topic's text. */
const PUB_TOPIC_BYTES = ascii('","topic":"');
/** What follows the topic's text in a compact PUB, up to the body's. */
const PUB_MSG_BYTES = ascii('","msg":"');

/**
 * A PUB of a string read from its bytes ({@link CommandReader}): the body as the UTF-8
 * it arrived in, which is also how it is stored (format "text"), so it is never text.
 */
export interface PubBytes {
  type: "PUB";
  topic: string;
  payload: Uint8Array;
}

/**
 * Reads the compact acknowledgements of one port ({@link ACK}), and on the publisher
 * port the compact PUBs of a string ({@link PUB}), straight from a connection's input
 * bytes, so that they are never decoded as text: the same command {@link decodeConsumer}
 * or {@link decodePublisher} gives for the line (a PUB as {@link PubBytes}), or null for
 * any line it leaves to them (another command, another form, a topic or body that is not
 * printable ASCII or has an escape, the other port's acknowledgement). One per
 * connection: it keeps the last topic it read, whose text the next line usually repeats.
 */
export class CommandReader {
  readonly #received: boolean;
  readonly #released: boolean;
  #topicBytes = new Uint8Array(0);
  #topic = "";

  /** A reader of the consumer's PUBREC and PUBCOMP, or of the publisher's PUB and PUBREL. */
  constructor(port: "consumer" | "publisher") {
    this.#received = port === "consumer";
    this.#released = port === "publisher";
  }

  /** The command that `b[start..end)` holds, or null: see {@link CommandReader}. */
  read(
    b: Uint8Array,
    start: number,
    end: number,
  ): ConsumerCommand | PublisherCommand | PubBytes | null {
    if (end - start < SHORTEST_ACK || !bytesAt(b, start, HEAD_BYTES)) return null;
    let p = start + HEAD_BYTES.length;
    let type: "PUBREC" | "PUBCOMP" | "PUBREL";
    let rest: Uint8Array;
    if (b[p] === 0x22) return this.#released ? this.#pub(b, p, end) : null;
    if (b[p] === 0x43) { // C
      type = "PUBCOMP";
      rest = COMP_BYTES;
    } else if (b[p + 2] === 0x43) { // REC
      type = "PUBREC";
      rest = REC_BYTES;
    } else {
      type = "PUBREL";
      rest = REL_BYTES;
    }
    if (type === "PUBREL" ? !this.#released : !this.#received) return null;
    if (!bytesAt(b, p, rest)) return null;
    p += rest.length;
    let c = b[p] as number;
    if (!(c >= 0x31 && c <= 0x39)) return null; // 1-9: no leading zero, no sign
    let msgId = c - 0x30;
    const digitsEnd = Math.min(end, p + 15);
    for (p++; p < digitsEnd; p++) {
      c = b[p] as number;
      if (c < 0x30 || c > 0x39) break;
      msgId = msgId * 10 + (c - 0x30);
    }
    if (p === end - 1 && b[p] === 0x7d) return { type, msgId };
    if (type === "PUBREL") return null; // a PUBREL has no topic: the text path says so
    const from = p + TOPIC_KEY_BYTES.length;
    const to = end - 2;
    if (from > to || b[to] !== 0x22 || b[to + 1] !== 0x7d) return null;
    if (!bytesAt(b, p, TOPIC_KEY_BYTES)) return null;
    const topic = this.#topicOf(b, from, to);
    return topic === null ? null : { type, msgId, topic };
  }

  /** The PUB whose line ends at `end`, read from `p`, just after `{"type":"PUB`. */
  #pub(b: Uint8Array, p: number, end: number): PubBytes | null {
    if (!bytesAt(b, p, PUB_TOPIC_BYTES)) return null;
    const from = p + PUB_TOPIC_BYTES.length;
    const quote = b.indexOf(0x22, from);
    if (quote === -1 || quote + PUB_MSG_BYTES.length > end - 2) return null;
    if (!bytesAt(b, quote, PUB_MSG_BYTES, 1)) return null; // its first byte is `quote`
    const body = quote + PUB_MSG_BYTES.length;
    const to = end - 2;
    if (b[to] !== 0x22 || b[to + 1] !== 0x7d) return null;
    if (!plainRange(b, body, to)) return null;
    const topic = this.#topicOf(b, from, quote);
    return topic === null ? null : { type: "PUB", topic, payload: b.slice(body, to) };
  }

  /** `b[from..to)` as text when it is all printable ASCII other than `"` and `\`. */
  #topicOf(b: Uint8Array, from: number, to: number): string | null {
    if (to - from > MAX_READ_TOPIC) return null;
    const known = this.#topicBytes;
    let same = known.length === to - from;
    for (let i = from; i < to; i++) {
      const c = b[i] as number;
      if (PLAIN[c] === 0) return null;
      if (same && known[i - from] !== c) same = false;
    }
    if (same) return this.#topic;
    this.#topicBytes = b.slice(from, to);
    this.#topic = String.fromCharCode(...this.#topicBytes);
    return this.#topic;
  }
}

/**
 * A PUB of a string written the way publishing clients write it (`{"type":"PUB",
 * "topic":…,"msg":"…"}`, no spaces): a string body can hold neither nesting nor keys, so
 * it needs no shape check; anything else takes the general path. A regular expression
 * here: its compiled scan of a long body is twice as fast as one in JavaScript.
 */
const PUB =
  // deno-lint-ignore no-control-regex -- raw control characters are not allowed in JSON strings
  /^\{"type":"PUB","topic":"((?:[^"\\\x00-\x1f]|\\.)*)","msg":("(?:[^"\\\x00-\x1f]|\\.)*")\}$/;

function fastPub(line: string, schemas: Record<string, z.ZodType>): Decoded<unknown> | null {
  if (!Object.hasOwn(schemas, "PUB")) return null;
  const m = PUB.exec(line);
  if (m === null) return null;
  const topicText = m[1] as string;
  const msgJson = m[2] as string;
  let topic: string;
  let msg: string;
  try {
    topic = topicText.includes("\\") ? JSON.parse(`"${topicText}"`) as string : topicText;
    msg = msgJson.includes("\\") ? JSON.parse(msgJson) as string : msgJson.slice(1, -1);
  } catch {
    return null;
  }
  return { ok: true, command: { type: "PUB", topic, msg, msgJson } };
}

function decode(
  line: string,
  maxDepth: number,
  schemas: Record<string, z.ZodType>,
  otherPort: Record<string, z.ZodType>,
  otherName: string,
): Decoded<unknown> {
  // `{"type":"PUB` then `"` for a PUB, `R` or `C` for an acknowledgement: both fast paths
  // check the whole line, this only picks which one to try.
  const c = line.length > 20 ? line.charCodeAt(12) : 0;
  const fast = c === 0x22
    ? fastPub(line, schemas)
    : c === 0x52 || c === 0x43
    ? fastAck(line, schemas)
    : null;
  if (fast !== null) return fast;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    return { ok: false, reason: "invalid-json", reply: "INVALID JSON", detail: String(err) };
  }
  const type = typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>).type
    : undefined;
  if (typeof type !== "string" || !Object.hasOwn(schemas, type)) {
    if (typeof type === "string" && Object.hasOwn(otherPort, type)) {
      const detail = `${type} is a ${otherName} command: send it to the ${otherName} port`;
      return { ok: false, reason: "wrong-port", reply: `ERROR: ${detail}`, detail };
    }
    const detail = typeof type === "string"
      ? `unknown command type ${JSON.stringify(type.slice(0, 40))}`
      : 'a command is a JSON object with a string "type"';
    return { ok: false, reason: "unknown-command", reply: "UNKNOWN COMMAND", detail };
  }
  const shape = checkJsonShape(line, maxDepth);
  if (shape.error !== null) {
    const detail = `invalid ${type}: ${shape.error}`;
    return { ok: false, reason: "invalid-command", reply: `ERROR: ${detail}`, detail };
  }
  const parsed = (schemas[type] as z.ZodType).safeParse(value, { reportInput: true });
  if (!parsed.success) {
    const detail = `invalid ${type}: ${describeIssue(parsed.error.issues[0])}`;
    return { ok: false, reason: "invalid-command", reply: `ERROR: ${detail}`, detail };
  }
  if (type === "PUB") {
    const span = shape.spans.get("msg");
    if (!span) {
      const detail = 'invalid PUB: "msg" is missing';
      return { ok: false, reason: "invalid-command", reply: `ERROR: ${detail}`, detail };
    }
    return { ok: true, command: { ...(parsed.data as object), msgJson: line.slice(...span) } };
  }
  return { ok: true, command: parsed.data };
}

function describeIssue(issue: z.core.$ZodIssue | undefined): string {
  if (!issue) return "invalid command";
  const field = JSON.stringify(issue.path.join("."));
  if (issue.code === "invalid_type" && issue.input === undefined) return `${field} is missing`;
  const got = issue.input === undefined ? "" : `, got ${preview(issue.input)}`;
  return `${field} ${issue.message}${got}`;
}

function preview(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? s.slice(0, 37) + "..." : s;
}

// --- replies --------------------------------------------------------------------------

/** `{"msgId":N,"type":"PUBREC"}`, `PUBCOMP` or `PUBREL`, as the seed writes them. */
export function ackLine(type: "PUBREC" | "PUBCOMP" | "PUBREL", id: number): string {
  return `{"msgId":${id},"type":"${type}"}`;
}

/**
 * A delivery line `{"msg":…,"msgId":N,"topic":"t","type":"PUB"}`; `msgJson` is the
 * already-encoded JSON of the message body.
 */
export function pubLine(msgJson: string, id: number, topicName: string): string {
  return `{"msg":${msgJson},"msgId":${id},"topic":${JSON.stringify(topicName)},"type":"PUB"}`;
}

const ACK_LINE_ID = ascii('{"msgId":');
const ACK_LINE_TYPE = {
  PUBREC: ascii(',"type":"PUBREC"}'),
  PUBCOMP: ascii(',"type":"PUBCOMP"}'),
  PUBREL: ascii(',"type":"PUBREL"}'),
} as const;

/**
 * Writes {@link ackLine} straight as bytes (an acknowledgement built as text would be a
 * rope of pieces, flattened again to be encoded). One per connection: set the line with
 * {@link of}, then hand it to the connection, which calls {@link writeLine} at once.
 */
export class AckLineWriter {
  /** The most bytes a line takes: `{"msgId":` 16 digits `,"type":"PUBCOMP"}`. */
  static readonly MAX_BYTES = 48;
  #type: "PUBREC" | "PUBCOMP" | "PUBREL" = "PUBREC";
  #id = 0;

  /** This writer, set to write `{"msgId":id,"type":type}` next. */
  of(type: "PUBREC" | "PUBCOMP" | "PUBREL", id: number): this {
    this.#type = type;
    this.#id = id;
    return this;
  }

  writeLine(buf: Uint8Array, at: number): number {
    buf.set(ACK_LINE_ID, at);
    at = writeDigits(buf, at + ACK_LINE_ID.length, this.#id);
    const tail = ACK_LINE_TYPE[this.#type];
    buf.set(tail, at);
    return at + tail.length;
  }
}

const PUB_LINE_MSG = ascii('{"msg":"');
const NO_BODY = new Uint8Array(0);
const PUB_LINE_ID = ascii('","msgId":');
const PUB_LINE_TOPIC = ascii(',"topic":');
const PUB_LINE_END = ascii(',"type":"PUB"}');

/**
 * Writes {@link pubLine} for a body that is plain text (see {@link plainBody}) straight
 * from its bytes: the same line, never built as text. One per connection: set the line
 * with {@link of}, then hand it to the connection, which calls {@link writeLine} at once.
 */
export class PubLineWriter {
  #body: Uint8Array = NO_BODY;
  #id = 0;
  #topic = "";
  #topicJson: Uint8Array = ascii('""');

  /**
   * This writer, set to write the line of `body` (plain text), `id` and `topic` next; the
   * topic's JSON text is made once per change of topic.
   */
  of(body: Uint8Array, id: number, topic: string): this {
    this.#body = body;
    this.#id = id;
    if (topic !== this.#topic) {
      this.#topic = topic;
      this.#topicJson = new TextEncoder().encode(JSON.stringify(topic));
    }
    return this;
  }

  /** The most bytes the next line takes. */
  get maxBytes(): number {
    return this.#body.length + this.#topicJson.length + 64;
  }

  /** Writes the line, then lets its body go (the writer outlives the message). */
  writeLine(buf: Uint8Array, at: number): number {
    buf.set(PUB_LINE_MSG, at);
    at += PUB_LINE_MSG.length;
    buf.set(this.#body, at);
    at += this.#body.length;
    this.#body = NO_BODY;
    buf.set(PUB_LINE_ID, at);
    at += PUB_LINE_ID.length;
    at = writeDigits(buf, at, this.#id);
    buf.set(PUB_LINE_TOPIC, at);
    at += PUB_LINE_TOPIC.length;
    buf.set(this.#topicJson, at);
    at += this.#topicJson.length;
    buf.set(PUB_LINE_END, at);
    return at + PUB_LINE_END.length;
  }
}

/** Writes the decimal digits of `n` (a non-negative safe integer) from `at`; returns the end. */
function writeDigits(buf: Uint8Array, at: number, n: number): number {
  let digits = 1;
  for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
  let x = n;
  let i = at + digits - 1;
  // Above 2^31 in floating point; below it in 32-bit integers, which is cheaper.
  for (; x > 0x7fffffff; i--) {
    buf[i] = 0x30 + (x % 10);
    x = Math.floor(x / 10);
  }
  let small = x | 0;
  for (; i >= at; i--) {
    const q = (small / 10) | 0;
    buf[i] = 0x30 + (small - q * 10);
    small = q;
  }
  return at + digits;
}

/**
 * True when `payload` (a "text" body) is printable ASCII without `"` or `\`: its JSON
 * string is the same bytes between quotes, which {@link PubLineWriter} writes.
 */
export function plainBody(payload: Uint8Array): boolean {
  return plainRange(payload, 0, payload.length);
}

/** 1 for each byte a JSON string holds as it is: printable ASCII but `"` and `\`. */
const PLAIN = new Uint8Array(256);
for (let c = 0x20; c < 0x80; c++) PLAIN[c] = c === 0x22 || c === 0x5c ? 0 : 1;

/** True when every byte of `b[from..to)` is plain ({@link PLAIN}): one table read a byte. */
function plainRange(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    if (PLAIN[b[i] as number] === 0) return false;
  }
  return true;
}
