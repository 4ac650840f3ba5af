/**
 * The durable state of the broker, as the core sees it. Protocol-agnostic: messages
 * carry bytes and a format flag, never protocol frames.
 *
 * @module
 */
import type { Settle } from "../ordered_replies.ts";
import type { Snapshot } from "./group_commit.ts";

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
  /** The QoS it was published with; absent means 2 (every JSON-line PUB is QoS 2). */
  qos?: Qos;
  /** Published with the RETAIN flag (MQTT). */
  retain?: boolean;
  /** The session that published it (`mqtt:<client id>`), for MQTT No Local. */
  from?: string;
  /** Milliseconds since the epoch after which it is not delivered (MQTT 5 Message Expiry). */
  expiresAt?: number;
  /** MQTT 5 properties carried through unaltered. */
  props?: MessageProps;
}

/** Quality of service: 0 at most once, 1 at least once, 2 exactly once. */
export type Qos = 0 | 1 | 2;

/** The MQTT 5 PUBLISH properties a broker forwards unaltered. */
export interface MessageProps {
  payloadFormatIndicator?: boolean;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Uint8Array;
  userProperties?: Record<string, string | string[]>;
}

/**
 * A session that outlives its connection (MQTT, Session Expiry Interval above 0, or
 * clean session 0). `sid` is `mqtt:<client id>`.
 */
export interface SessionRecord {
  sid: string;
  clientId: string;
  /** MQTT protocol level the client last connected with (4 = 3.1.1, 5 = 5.0). */
  protocolVersion: 4 | 5;
  /** Seconds the session is kept after its connection ends. */
  expirySec: number;
  user: string | null;
  createdAt: number;
  /** When its last connection ended; null while connected (or at a crash). */
  disconnectedAt: number | null;
}

/** One subscription filter of a session (MQTT SUBSCRIBE). */
export interface FilterRecord {
  sid: string;
  /** The filter as subscribed, `$share/group/...` included. */
  filter: string;
  qos: Qos;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: 0 | 1 | 2;
  subscriptionId?: number;
  createdAt: number;
}

/**
 * An outbound QoS 1 or 2 message sent to a session and not yet completed, under the
 * packet identifier (`tag`) it was sent with. `done` entries are completed but above
 * the topic position (completed out of order); they go when the position passes them.
 */
export interface InflightRecord {
  sid: string;
  tag: number;
  topic: string;
  seq: number;
  msgId: number;
  qos: 1 | 2;
  phase: "sent" | "received" | "done";
  /** The message itself when it is not in the topic log (a retained message). */
  message?: StoredMessage;
}

/**
 * An inbound MQTT QoS 2 PUBLISH stored in its topic and awaiting its PUBREL, keyed by
 * the client's packet identifier: a PUBLISH repeated with the same identifier is
 * answered without being stored again.
 */
export interface ReceiptRecord {
  sid: string;
  tag: number;
  msgId: number;
  topic: string;
  seq: number;
  at: number;
}

/** A last will, published when its connection ends without a normal DISCONNECT. */
export interface WillRecord {
  sid: string;
  topic: string;
  payload: Uint8Array;
  format: PayloadFormat;
  qos: Qos;
  retain: boolean;
  props?: MessageProps;
  expiryIntervalSec?: number;
  delaySec: number;
  user: string | null;
  /** When to publish it; null while its connection lives. */
  dueAt: number | null;
}

/** What commits in the same atomic as an appended message. */
export interface AppendEffects {
  /** The pending JSON-line PUB this append releases (removed, and its release remembered). */
  releasedId?: number;
  /** An MQTT QoS 2 receipt to store with the message. */
  receipt?: ReceiptRecord;
  /** Set or clear the topic's retained message. */
  retained?: "set" | "clear";
  /** Positions of subscriptions that start at this message (filters reaching a topic). */
  positions?: SubscriptionRecord[];
  /** The will of this session is being published: delete it. */
  willOf?: string;
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

/**
 * A topic's head record: its creation time, and a floor for the sequence number of its
 * next message. Appends do not rewrite it (the log's last entry is the live floor); it is
 * written when the topic is made and whenever messages are trimmed from its log, so that
 * together with the log and the stored positions it bounds every number ever handed out.
 */
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
 *
 * A subscription with a window above one (`window`) may have several messages past
 * `position` acknowledged: `pending` lists those whose PUBREC is stored ([seq, msgId],
 * their release is re-sent after a restart) and `completed` those whose PUBCOMP is
 * stored (never sent again). Both are absent when empty, and `received` is used instead
 * while a single PUBREC is all there is, so that a window of one is stored as before.
 */
export interface SubscriptionRecord {
  subscriber: string;
  topic: string;
  position: number;
  received: { seq: number; id: number } | null;
  createdAt: number;
  /** Messages past `position` that may be outstanding at once; absent means 1. */
  window?: number;
  /**
   * Messages past `position` received (PUBREC committed) and not completed, as
   * `[seq, id, seq, id, …]` in sequence order: flat, so that storing a window's worth is
   * one array of numbers rather than an array per message.
   */
  pending?: number[];
  completed?: number[];
}

/** A subscription stored from its live state when the atomic is built. */
export interface PositionSource extends Snapshot {
  snapshot(): SubscriptionRecord;
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
   * returns the payload bytes deleted. `head` (whose `nextSeq` must be at least `toSeq`)
   * is written with the first batch: once a message leaves the log, the head is what
   * keeps its sequence number from being handed out again.
   */
  trimLog(topic: string, fromSeq: number, toSeq: number, head: TopicRecord): Promise<number>;
  /** Payload bytes of every message held: topic logs and pending PUBs. */
  payloadBytes(): Promise<number>;

  /** Stores a PUB awaiting its PUBREL. */
  savePending(pending: PendingPublish): Promise<void>;
  /** {@link savePending} told through `settle` (never synchronously) instead of a promise. */
  savePendingWith(pending: PendingPublish, settle: Settle<void>): void;
  loadPending(): Promise<PendingPublish[]>;
  /**
   * Appends `message` to its topic's log, atomically with its `effects` (a pending PUB
   * released, a receipt, the retained message, new positions).
   */
  append(message: StoredMessage, effects?: AppendEffects): Promise<void>;
  /**
   * {@link append} told through `settle` (never synchronously) instead of a promise.
   * `deferrable`: nobody waits for this commit but a publisher that goes on meanwhile
   * (the message is delivered already), so it may wait to share a later atomic.
   */
  appendWith(
    message: StoredMessage,
    effects: AppendEffects | undefined,
    settle: Settle<void>,
    deferrable?: boolean,
  ): void;

  /** Creates or rewrites a subscription and the subscriber's index entry. */
  saveSubscription(record: SubscriptionRecord): Promise<void>;
  /** Rewrites the position of an existing subscription. */
  savePosition(record: SubscriptionRecord): Promise<void>;
  /**
   * Rewrites the position of an existing subscription from `source`'s state when the
   * atomic is built (the hot path of every ack: a window's acknowledgements that share
   * an atomic store one record).
   */
  savePositionFrom(topic: string, subscriber: string, source: PositionSource): Promise<void>;
  deleteSubscription(subscriber: string, topic: string): Promise<void>;
  loadSubscription(subscriber: string, topic: string): Promise<SubscriptionRecord | null>;
  /** Topics the subscriber holds durable subscriptions to. */
  loadSubscriberTopics(subscriber: string): Promise<string[]>;
  /** Every subscription to a topic (for retention). */
  loadTopicSubscriptions(topic: string): Promise<SubscriptionRecord[]>;

  // --- sessions (MQTT) ---------------------------------------------------------------

  saveSession(record: SessionRecord): Promise<void>;
  loadSession(sid: string): Promise<SessionRecord | null>;
  loadSessions(): Promise<SessionRecord[]>;
  /**
   * Deletes everything a session owns: its record, filters, positions (and their index
   * entries), in-flight entries and receipts; not its will. In as many atomics as needed.
   */
  deleteSession(sid: string): Promise<void>;

  saveFilter(record: FilterRecord): Promise<void>;
  deleteFilter(sid: string, filter: string): Promise<void>;
  /** Every filter of every session (to build the in-memory index at start-up). */
  loadFilters(): Promise<FilterRecord[]>;

  /**
   * Writes in-flight entries and deletes others, and rewrites a position if given, all
   * in one operation.
   */
  saveInflight(
    set: InflightRecord[],
    remove?: { sid: string; tag: number }[],
    position?: SubscriptionRecord,
  ): Promise<void>;
  loadInflight(sid: string): Promise<InflightRecord[]>;

  loadReceipt(sid: string, tag: number): Promise<ReceiptRecord | null>;
  /** Every receipt of a session. */
  loadReceipts(sid: string): Promise<ReceiptRecord[]>;
  deleteReceipt(sid: string, tag: number): Promise<void>;

  /** Every retained message (topic, payload, ...), one per topic. */
  loadRetained(): Promise<StoredMessage[]>;

  saveWill(record: WillRecord): Promise<void>;
  deleteWill(sid: string): Promise<void>;
  loadWills(): Promise<WillRecord[]>;

  /** Resolves once every write submitted so far has settled. */
  flush(): Promise<void>;
  /**
   * Resolves once every operation submitted before this call has been committed (or has
   * failed), without waiting for later ones: unlike {@link flush}, it ends under a load
   * that never lets the store go quiet.
   */
  barrier(): Promise<void>;
  close(): void;
}
