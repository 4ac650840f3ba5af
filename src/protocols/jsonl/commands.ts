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

/** `,"topic":"`. */
const TOPIC_KEY_LENGTH = 10;

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
