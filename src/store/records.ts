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
  ReleasedRecord,
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

/** A PUB awaiting its PUBREL. */
export const pendingPublish: z.ZodType<PendingPublish> = z.object({
  id,
  topic: z.string(),
  payload: z.instanceof(Uint8Array),
  format,
  receivedAt: z.number(),
  origin: z.string(),
});

/** A remembered release. */
export const releasedRecord: z.ZodType<ReleasedRecord> = z.object({
  id,
  topic: z.string(),
  seq,
});

/** A subscription's durable position. */
export const subscriptionRecord: z.ZodType<SubscriptionRecord> = z.object({
  subscriber: z.string(),
  topic: z.string(),
  position: seq,
  received: z.object({ seq, id }).nullable(),
  createdAt: z.number(),
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
