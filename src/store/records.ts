/**
 * The shapes of stored values, checked on every read from Deno KV. A value of the
 * wrong shape (written by a bug, another program, or a damaged file) is reported with
 * its key and quarantined instead of being trusted, so it can never put the broker in
 * a crash loop.
 *
 * Fields added by schema version 2 are optional, so version 1 values parse as they are.
 *
 * @module
 */
import { z } from "zod";
import type {
  FilterRecord,
  InflightRecord,
  MessageProps,
  PendingPublish,
  ReceiptRecord,
  SessionRecord,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
  WillRecord,
} from "./store.ts";

const seq = z.number().int().nonnegative();
const id = z.number().int().positive();
const format = z.enum(["text", "json", "binary"]);
const qos = z.union([z.literal(0), z.literal(1), z.literal(2)]);
/** A packet identifier (MQTT: 1..65535; not narrowed, so no valid entry is ever quarantined). */
const tag = z.number().int().nonnegative();
const seconds = z.number().nonnegative();

/** A topic head. */
export const topicRecord: z.ZodType<TopicRecord> = z.object({
  name: z.string(),
  nextSeq: seq,
  createdAt: z.number(),
});

/** MQTT 5 PUBLISH properties carried with a message or a will. */
export const messageProps: z.ZodType<MessageProps> = z.object({
  payloadFormatIndicator: z.boolean().optional(),
  contentType: z.string().optional(),
  responseTopic: z.string().optional(),
  correlationData: z.instanceof(Uint8Array).optional(),
  userProperties: z.record(z.string(), z.union([z.string(), z.array(z.string())])).optional(),
});

/** A message of a topic's log (also a retained message, and one embedded in-flight). */
export const storedMessage: z.ZodType<StoredMessage> = z.object({
  id,
  seq,
  topic: z.string(),
  payload: z.instanceof(Uint8Array),
  format,
  publishedAt: z.number(),
  qos: qos.optional(),
  retain: z.boolean().optional(),
  from: z.string().optional(),
  expiresAt: z.number().optional(),
  props: messageProps.optional(),
});

/** A segment of a topic's log: messages in sequence order. */
export const logSegment: z.ZodType<StoredMessage[]> = z.array(storedMessage);

/**
 * A message as a log segment holds it since schema version 4: an array, without the
 * topic (the key names it) and without field names, which V8's serialisation would
 * otherwise write out for every message (a 100-byte message: 151 bytes instead of 224).
 * Positions: id, seq, publishedAt, payload, format (index in {@link COMPACT_FORMATS}),
 * then qos, retain, from, expiresAt, props, each `undefined` when absent, the absent
 * ones at the end left out.
 */
export type CompactMessage = unknown[];

/** The formats by their number in a {@link CompactMessage}. */
export const COMPACT_FORMATS = ["binary", "text", "json"] as const;

const FORMAT_NUMBER = { binary: 0, text: 1, json: 2 } as const;

/** `m` as a log segment stores it (see {@link CompactMessage}). */
export function compactMessage(m: StoredMessage): CompactMessage {
  // Each length as a literal of its own: no array made longer and cut (a hot path).
  const { id, seq, publishedAt: at, payload } = m;
  const f = FORMAT_NUMBER[m.format];
  if (m.props !== undefined) {
    return [id, seq, at, payload, f, m.qos, m.retain, m.from, m.expiresAt, m.props];
  }
  if (m.expiresAt !== undefined) {
    return [id, seq, at, payload, f, m.qos, m.retain, m.from, m.expiresAt];
  }
  if (m.from !== undefined) return [id, seq, at, payload, f, m.qos, m.retain, m.from];
  if (m.retain !== undefined) return [id, seq, at, payload, f, m.qos, m.retain];
  if (m.qos !== undefined) return [id, seq, at, payload, f, m.qos];
  return [id, seq, at, payload, f];
}

/**
 * The message a segment element of `topic` stands for: a {@link CompactMessage} made
 * back into a message object (checked afterwards like any, with {@link logSegment}: a
 * damaged element fails there), anything else (a message object, schema 3) as it is.
 */
export function segmentElement(topic: string, e: unknown): unknown {
  if (!Array.isArray(e)) return e;
  const m: Record<string, unknown> = {
    id: e[0],
    seq: e[1],
    topic,
    payload: e[3],
    // An element of the wrong length gets no format, so the check refuses it.
    format: e.length >= 5 && e.length <= 10 ? COMPACT_FORMATS[e[4] as number] : undefined,
    publishedAt: e[2],
  };
  if (e[5] !== undefined) m.qos = e[5];
  if (e[6] !== undefined) m.retain = e[6];
  if (e[7] !== undefined) m.from = e[7];
  if (e[8] !== undefined) m.expiresAt = e[8];
  if (e[9] !== undefined) m.props = e[9];
  return m;
}

/** A PUB awaiting its PUBREL. */
export const pendingPublish: z.ZodType<PendingPublish> = z.object({
  id,
  topic: z.string(),
  payload: z.instanceof(Uint8Array),
  format,
  receivedAt: z.number(),
  origin: z.string(),
});

/** A segment of pending PUBs (schema 5 and later; see {@link pendingElement}). */
export const pendingSegment: z.ZodType<PendingPublish[]> = z.array(pendingPublish);

/**
 * A pending PUB as a segment holds it since schema version 6: an array without field
 * names, like a {@link CompactMessage} (the names were most of what V8's serialisation
 * wrote for a short message, and most of its time). Positions: id, topic, receivedAt,
 * payload, format (index in {@link COMPACT_FORMATS}), origin.
 */
export type CompactPending = [
  id: number,
  topic: string,
  receivedAt: number,
  payload: Uint8Array,
  format: number,
  origin: string,
];

/** `p` as a segment of pending PUBs stores it (see {@link CompactPending}). */
export function compactPending(p: PendingPublish): CompactPending {
  return [p.id, p.topic, p.receivedAt, p.payload, FORMAT_NUMBER[p.format], p.origin];
}

/**
 * The pending PUB a segment element stands for: a {@link CompactPending} made back into
 * an object (checked afterwards with {@link pendingSegment}: a damaged element fails
 * there), anything else (an object, schema 5) as it is.
 */
export function pendingElement(e: unknown): unknown {
  if (!Array.isArray(e)) return e;
  return {
    id: e[0],
    topic: e[1],
    payload: e[3],
    // An element of the wrong length gets no format, so the check refuses it.
    format: e.length === 6 ? COMPACT_FORMATS[e[4] as number] : undefined,
    receivedAt: e[2],
    origin: e[5],
  };
}

/** A subscription's durable position. */
export const subscriptionRecord: z.ZodType<SubscriptionRecord> = z.object({
  subscriber: z.string(),
  topic: z.string(),
  position: seq,
  received: z.object({ seq, id }).nullable(),
  createdAt: z.number(),
  window: z.number().int().min(1).optional(),
  // Schema 6 writes [seq, id, seq, id, …]; earlier versions wrote [seq, id] pairs.
  pending: z.union([
    z.array(seq).refine((a) => a.length % 2 === 0 && a.every((v, i) => i % 2 === 0 || v > 0), {
      message: "not [seq, id] in pairs",
    }),
    z.array(z.tuple([seq, id])).transform((pairs) => pairs.flat()),
  ]).optional(),
  completed: z.array(seq).optional(),
});

/** A persistent MQTT session. */
export const sessionRecord: z.ZodType<SessionRecord> = z.object({
  sid: z.string(),
  clientId: z.string(),
  protocolVersion: z.union([z.literal(4), z.literal(5)]),
  expirySec: seconds,
  user: z.string().nullable(),
  createdAt: z.number(),
  disconnectedAt: z.number().nullable(),
});

/** One subscription filter of a session. */
export const filterRecord: z.ZodType<FilterRecord> = z.object({
  sid: z.string(),
  filter: z.string(),
  qos,
  noLocal: z.boolean(),
  retainAsPublished: z.boolean(),
  retainHandling: z.union([z.literal(0), z.literal(1), z.literal(2)]),
  subscriptionId: z.number().int().positive().optional(),
  createdAt: z.number(),
});

/** An outbound QoS 1 or 2 message not yet completed. */
export const inflightRecord: z.ZodType<InflightRecord> = z.object({
  sid: z.string(),
  tag,
  topic: z.string(),
  seq,
  msgId: id,
  qos: z.union([z.literal(1), z.literal(2)]),
  phase: z.enum(["sent", "received", "done"]),
  message: storedMessage.optional(),
});

/** An inbound MQTT QoS 2 PUBLISH awaiting its PUBREL. */
export const receiptRecord: z.ZodType<ReceiptRecord> = z.object({
  sid: z.string(),
  tag,
  msgId: id,
  topic: z.string(),
  seq,
  at: z.number(),
});

/** A last will. */
export const willRecord: z.ZodType<WillRecord> = z.object({
  sid: z.string(),
  topic: z.string(),
  payload: z.instanceof(Uint8Array),
  format,
  qos,
  retain: z.boolean(),
  props: messageProps.optional(),
  expiryIntervalSec: seconds.optional(),
  delaySec: seconds,
  user: z.string().nullable(),
  dueAt: z.number().nullable(),
});
