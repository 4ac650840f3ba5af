/**
 * The durable state of the broker, as the core sees it. Protocol-agnostic: messages
 * carry bytes and a format flag, never protocol frames.
 *
 * @module
 */

/** How a payload is meant to be read back: UTF-8 text, JSON text, or opaque bytes. */
export type PayloadFormat = "text" | "json" | "binary";

/** A message released to a topic: one entry of the topic's durable log. */
export interface StoredMessage {
  /** Broker-wide message id, never reused (the `msgId` clients see). */
  id: number;
  /** Position in its topic's log; strictly increasing per topic, may have gaps. */
  seq: number;
  topic: string;
  payload: Uint8Array;
  format: PayloadFormat;
  /** Milliseconds since the epoch when the message was released to the topic. */
  publishedAt: number;
}

/** An inbound QoS 2 message stored at PUB and released to its topic by PUBREL. */
export interface PendingPublish {
  id: number;
  topic: string;
  payload: Uint8Array;
  format: PayloadFormat;
  receivedAt: number;
  /** Who sent it, for logs and dead letters (e.g. "publisher 127.0.0.1:5321"). */
  origin: string;
}

/** A topic's head: the sequence number its next message will get. */
export interface TopicRecord {
  name: string;
  nextSeq: number;
  createdAt: number;
}

/**
 * One subscriber's durable position in one topic.
 *
 * `position` is the lowest sequence number not yet completed. When `received` is set,
 * the subscriber acknowledged (PUBREC) that message and only its PUBCOMP is missing,
 * so after a restart the broker re-sends the release, not the message.
 */
export interface SubscriptionRecord {
  subscriber: string;
  topic: string;
  position: number;
  received: { seq: number; id: number } | null;
  createdAt: number;
}

/** Where a released message went, kept for a while to answer a repeated PUBREL. */
export interface ReleasedRecord {
  id: number;
  topic: string;
  seq: number;
}

/**
 * The storage interface. Writes resolve only after they are durable; a write that
 * rejects wrote nothing. Implementations batch concurrent writes (group commit).
 */
export interface BrokerStore {
  /** Reserves `count` fresh message ids; returns the first. Ids are never handed out twice. */
  reserveIds(count: number): Promise<number>;

  loadTopics(): Promise<TopicRecord[]>;
  loadTopic(name: string): Promise<TopicRecord | null>;
  /** The highest sequence number in a topic's log, 0 if the log is empty. */
  lastLogSeq(topic: string): Promise<number>;
  /** Creates a topic's record if it has none. */
  ensureTopic(record: TopicRecord): Promise<void>;
  /** Up to `limit` messages of a topic with `seq >= fromSeq`, in order. */
  readLog(topic: string, fromSeq: number, limit: number): Promise<StoredMessage[]>;
  /**
   * Deletes the log entries of a topic with `fromSeq <= seq < toSeq`, in batches;
   * returns the payload bytes deleted.
   */
  trimLog(topic: string, fromSeq: number, toSeq: number): Promise<number>;
  /** Payload bytes of every message held: topic logs and pending PUBs. */
  payloadBytes(): Promise<number>;

  /** Stores a PUB awaiting its PUBREL. */
  savePending(pending: PendingPublish): Promise<void>;
  loadPending(): Promise<PendingPublish[]>;
  /**
   * Appends `message` to its topic and advances the topic's head, atomically with
   * removing the pending PUB `releasedId` (if given) and remembering its release.
   */
  append(message: StoredMessage, head: TopicRecord, releasedId?: number): Promise<void>;
  getReleased(id: number): Promise<ReleasedRecord | null>;

  /** Creates or rewrites a subscription and the subscriber's index entry. */
  saveSubscription(record: SubscriptionRecord): Promise<void>;
  /** Rewrites the position of an existing subscription (the hot path of every ack). */
  savePosition(record: SubscriptionRecord): Promise<void>;
  deleteSubscription(subscriber: string, topic: string): Promise<void>;
  loadSubscription(subscriber: string, topic: string): Promise<SubscriptionRecord | null>;
  /** Topics the subscriber holds durable subscriptions to. */
  loadSubscriberTopics(subscriber: string): Promise<string[]>;
  /** Every subscription to a topic (for retention). */
  loadTopicSubscriptions(topic: string): Promise<SubscriptionRecord[]>;

  /** Resolves once every write submitted so far has settled. */
  flush(): Promise<void>;
  close(): void;
}
