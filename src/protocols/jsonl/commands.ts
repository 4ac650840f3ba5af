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
 * Where the body of a JSON string that starts at `from` ends (the index of its closing
 * quote), or -1 when a raw control character or the end of the line comes first. A
 * backslash and the character after it are passed over unread: JSON.parse decides later
 * whether the escapes are valid.
 */
function stringEnd(line: string, from: number): number {
  for (let i = from; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c === 0x22) return i;
    if (c < 0x20) return -1;
    if (c === 0x5c) i++;
  }
  return -1;
}

const PUBREC_HEAD = '{"type":"PUBREC","msgId":';
const PUBCOMP_HEAD = '{"type":"PUBCOMP","msgId":';
const PUBREL_HEAD = '{"type":"PUBREL","msgId":';
const TOPIC_KEY = ',"topic":"';

/**
 * An acknowledgement written the way clients that pipeline write it (`{"type":…,
 * "msgId":N}` with an optional `"topic"` after it, no spaces): the bulk of a busy
 * connection's lines. Read here character by character, without JSON.parse, the shape
 * check, the schema or a regular expression's match; anything else (spaces, another key
 * order, a leading zero, more than 15 digits) takes the general path, which decides the
 * same.
 */
function fastAck(line: string, schemas: Record<string, z.ZodType>): Decoded<unknown> | null {
  let type: "PUBREC" | "PUBCOMP" | "PUBREL";
  let p: number;
  if (line.startsWith(PUBREC_HEAD)) {
    type = "PUBREC";
    p = PUBREC_HEAD.length;
  } else if (line.startsWith(PUBCOMP_HEAD)) {
    type = "PUBCOMP";
    p = PUBCOMP_HEAD.length;
  } else if (line.startsWith(PUBREL_HEAD)) {
    type = "PUBREL";
    p = PUBREL_HEAD.length;
  } else return null;
  if (!Object.hasOwn(schemas, type)) return null; // the other port's: the general path says so
  let c = line.charCodeAt(p);
  if (!(c >= 0x31 && c <= 0x39)) return null; // 1-9: no leading zero, no sign
  let msgId = c - 0x30;
  const digitsEnd = Math.min(line.length, p + 15);
  for (p++; p < digitsEnd; p++) {
    c = line.charCodeAt(p);
    if (c < 0x30 || c > 0x39) break;
    msgId = msgId * 10 + (c - 0x30);
  }
  if (p === line.length - 1 && line.charCodeAt(p) === 0x7d) {
    return { ok: true, command: { type, msgId } };
  }
  if (type === "PUBREL" || !line.startsWith(TOPIC_KEY, p)) return null; // a PUBREL has no topic
  const from = p + TOPIC_KEY.length;
  const end = stringEnd(line, from);
  if (end !== line.length - 2 || line.charCodeAt(end + 1) !== 0x7d) return null;
  let topic = line.slice(from, end);
  if (topic.includes("\\")) {
    try {
      topic = JSON.parse(`"${topic}"`) as string;
    } catch {
      return null;
    }
  }
  return { ok: true, command: { type, msgId, topic } };
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
  const fast = line.startsWith('{"type":"PUB",') ? fastPub(line, schemas) : fastAck(line, schemas);
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
