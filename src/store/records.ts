/**
 * The shapes of stored values, checked on every read from Deno KV. A value of the
 * wrong shape (written by a bug, another program, or a damaged file) is reported with
 * its key and quarantined instead of being trusted, so it can never put the broker in
 * a crash loop.
 *
 * @module
 */
import { z } from "zod";
import type {
  PendingPublish,
  ReleasedRecord,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
} from "./store.ts";

const seq = z.number().int().nonnegative();
const id = z.number().int().positive();
const format = z.enum(["text", "json", "binary"]);

/** A topic head. */
export const topicRecord: z.ZodType<TopicRecord> = z.object({
  name: z.string(),
  nextSeq: seq,
  createdAt: z.number(),
});

/** A message of a topic's log. */
export const storedMessage: z.ZodType<StoredMessage> = z.object({
  id,
  seq,
  topic: z.string(),
  payload: z.instanceof(Uint8Array),
  format,
  publishedAt: z.number(),
});

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
