/**
 * The core's façade: what every protocol front end calls. It speaks in topics,
 * payloads, message ids and acknowledgements; it knows no wire format.
 *
 * Inbound QoS 2: {@link Broker.acceptPublish} stores a message as pending and returns
 * its id (the front end answers PUBREC); {@link Broker.releasePublish} appends it to its
 * topic, removing the pending entry in the same atomic, exactly once also after a
 * restart (the front end answers PUBCOMP).
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type { RestartPolicy } from "../supervisor.ts";
import { Supervisor } from "../supervisor.ts";
import type {
  BrokerStore,
  MessageProps,
  PayloadFormat,
  PendingPublish,
  Qos,
  StoredMessage,
} from "../store/store.ts";
import { FilterIndex } from "./filter_index.ts";
import { innerFilter, matches, parseShare } from "./filters.ts";
import type { FilterEntry } from "./session.ts";
import { SessionRegistry } from "./sessions.ts";
import { groupId, SharedGroups } from "./shared.ts";
import { type DeadLetter, deadLetterBody } from "./dead_letters.ts";
import { ALLOW_ALL, type Authorizer } from "./authorizer.ts";
import type { RetryOptions } from "./delivery.ts";
import { IdAllocator } from "./ids.ts";
import { DEAD_LETTER_TOPIC, topicError } from "./names.ts";
import { ConsumerSession, type SessionSink } from "./consumer_session.ts";
import { type AppendInput, type Reach, Topic, type TopicHooks } from "./topic.ts";
import type { Settle } from "../ordered_replies.ts";

/** Core settings. */
export interface BrokerOptions {
  retry: RetryOptions;
  /** Dead letters kept; older ones are deleted. */
  deadLetterMax: number;
  /** How often retention deletes messages every subscription is past. */
  retentionIntervalMs?: number;
  /** Test hooks for topics (failure injection). */
  topicHooks?: TopicHooks;
  /** Plain QoS 0/1 messages reach subscribers before their commit (TopicOptions). */
  earlyDelivery?: boolean;
  /** Restart policy of the topic supervisor. */
  supervisorPolicy?: Partial<RestartPolicy>;
  /** Who may publish and subscribe where; everyone everywhere if absent. */
  authorizer?: Authorizer;
  /** Longest topic name in UTF-8 bytes. */
  maxTopicBytes?: number;
  /** Messages a topic may hold; new PUBs to a fuller topic are refused. */
  maxTopicMessages?: number;
  /** Durable subscriptions one consumer may hold. */
  maxSubscriptionsPerConsumer?: number;
  /**
   * Payload bytes the store may hold (topic logs and pending PUBs; 0 = no limit). Past
   * it new PUBs are refused until retention frees space.
   */
  maxStoreBytes?: number;
  /** Longest a filter session may outlive its connection, in seconds. */
  maxSessionExpirySec?: number;
  /** Retained messages kept; a new retained topic past it is stored as a normal message. */
  maxRetained?: number;
}

/** A message published through {@link Broker.publish} (MQTT, wills). */
export interface PublishInput {
  topic: string;
  payload: Uint8Array;
  format: PayloadFormat;
  qos: Qos;
  retain: boolean;
  /** The publishing session, for No Local. */
  from?: string;
  expiresAt?: number;
  props?: MessageProps;
  /** Store an inbound QoS 2 receipt under this session and packet identifier. */
  receipt?: { sid: string; tag: number };
  /** See AppendInput.pipelined. */
  pipelined?: boolean;
  /** This is the will of that session: its record goes in the same atomic. */
  willOf?: string;
}

/**
 * Pending PUBs of one publisher connection: the core counts them up at PUB and down at
 * PUBREL (from whichever connection it comes), so that one connection cannot pile up
 * messages it never releases.
 */
export interface PendingQuota {
  count: number;
  readonly max: number;
}

/** Who sent a PUB. */
export interface PublishSource {
  /** For logs and dead letters, e.g. "publisher 127.0.0.1:5321". */
  origin: string;
  /** The logged-in user, or null when publishers do not log in. */
  user: string | null;
  quota?: PendingQuota;
  /** The broker itself (`$SYS`): topic rules and the ACL do not apply. */
  system?: boolean;
}

/** Why the core refused a request; protocols map it to their reason codes. */
export type BrokerErrorCode = "invalid-topic" | "denied" | "quota" | "full" | "unknown";

/** A request the core refuses, with a message fit to show the client. */
export class BrokerError extends Error {
  readonly code: BrokerErrorCode;
  constructor(message: string, code: BrokerErrorCode = "unknown") {
    super(message);
    this.name = "BrokerError";
    this.code = code;
  }
}

/** Result of a release: the first one publishes, repeats only confirm. */
export type ReleaseResult = "released" | "already-released";

const encoder = new TextEncoder();
const log = getLogger("core");
/** Valid topic names remembered, so that each is checked once. */
const VALID_NAMES_KEPT = 100_000;

/** The broker core. Create with {@link Broker.start}. */
export class Broker {
  readonly store: BrokerStore;
  readonly options: BrokerOptions;
  readonly topicSupervisor: Supervisor;
  #ids: IdAllocator;
  #topics = new Map<string, Promise<Topic>>();
  #started = new Map<string, Topic>();
  #pending = new Map<number, PendingPublish>();
  /** Quotas of the connections that sent the pending PUBs (not durable: a restart resets them). */
  #quotas = new Map<number, PendingQuota>();
  readonly authorizer: Authorizer;
  /** PUBRELs whose append is under way: a repeat waits for `done`. */
  #releasing = new Map<number, { done(): Promise<void> }>();
  #sessions = new Map<string, ConsumerSession>();
  /** Payload bytes held in the store, kept up to date for the store size limit. */
  #payloadBytes = 0;
  #retentionTimer: ReturnType<typeof setInterval> | undefined;
  #retentionRunning: Promise<void> | null = null;
  #closed = false;
  #validNames = new Set<string>();
  #deadLetterQueue: Promise<void> = Promise.resolve();
  /** Topic filters of every filter session (MQTT), durable ones loaded at start-up. */
  readonly filterIndex = new FilterIndex<FilterEntry>();
  #reachCache = new Map<string, { version: number; subs: { sid: string; durable: boolean }[] }>();
  /** Retained messages by topic. */
  readonly retained = new Map<string, StoredMessage>();
  /** Filter sessions (MQTT client ids). */
  readonly sessions: SessionRegistry;
  /** Shared subscription groups (MQTT 5 `$share/...`). */
  readonly shared: SharedGroups;
  /** Counters for `$SYS` and the admin API. */
  readonly metrics = {
    messagesReceived: 0,
    messagesStored: 0,
    bytesReceived: 0,
    messagesSent: 0,
    bytesSent: 0,
  };
  #reach: Reach;

  private constructor(store: BrokerStore, options: BrokerOptions) {
    this.store = store;
    this.options = options;
    this.#ids = new IdAllocator(store);
    this.authorizer = options.authorizer ?? ALLOW_ALL;
    this.topicSupervisor = new Supervisor(
      "TopicSupervisor",
      getLogger("supervisor"),
      options.supervisorPolicy,
    );
    this.sessions = new SessionRegistry(this);
    this.shared = new SharedGroups(this);
    this.#reach = {
      subscribersOf: (topic) => this.#subscribersOf(topic),
      materialised: (topic, sids, seq) => {
        for (const sid of sids) {
          (this.sessions.live(sid) ?? this.shared.get(sid)?.session)?.reached(topic, seq);
        }
      },
      appended: (m, logged) => this.#appended(m, logged),
    };
  }

  /** Loads durable state (pending PUBs, the dead letter topic) and starts the core. */
  static async start(store: BrokerStore, options: BrokerOptions): Promise<Broker> {
    const b = new Broker(store, options);
    for (const p of await store.loadPending()) b.#pending.set(p.id, p);
    if (options.maxStoreBytes) b.#payloadBytes = await store.payloadBytes();
    // Filters before any topic starts: the first append must see every filter.
    for (const f of await store.loadFilters()) b.filterIndex.add({ ...f, durable: true });
    for (const m of await store.loadRetained()) b.retained.set(m.topic, m);
    await b.sessions.start();
    await b.topic(DEAD_LETTER_TOPIC);
    const interval = options.retentionIntervalMs ?? 5_000;
    b.#retentionTimer = setInterval(() => b.#sweep(), interval);
    log.info("Broker core started: {pending} PUBs awaiting PUBREL", {
      pending: b.#pending.size,
    });
    return b;
  }

  /** Messages held in the logs of the topics started so far (an upper bound). */
  get storedMessages(): number {
    let n = 0;
    for (const t of this.#started.values()) n += t.storedCount;
    return n;
  }

  /** Payload bytes held in the store (tracked when a store size limit is set). */
  get storedBytes(): number {
    return this.#payloadBytes;
  }

  /** Number of PUBs awaiting PUBREL. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** The topic actor for `name`, started (and its topic created) on first use. */
  topic(name: string): Promise<Topic> {
    let t = this.#topics.get(name);
    if (!t) {
      t = Topic.start(name, this.store, this.topicSupervisor, {
        hooks: this.options.topicHooks,
        reach: this.#reach,
        earlyDelivery: this.options.earlyDelivery,
      });
      this.#topics.set(name, t);
      t.then((topic) => {
        this.#started.set(name, topic);
        log.info('Topic "{topic}" is created...', { topic: name });
      }, () => this.#topics.delete(name));
    }
    return t;
  }

  // --- publishers -------------------------------------------------------------------

  /** Checks a topic name against the naming rules and the configured length. */
  topicError(topic: string): string | null {
    // Most messages go to names seen before: remember the valid ones (bounded).
    if (this.#validNames.has(topic)) return null;
    const bad = topicError(topic, this.options.maxTopicBytes);
    if (bad === null && this.#validNames.size < VALID_NAMES_KEPT) this.#validNames.add(topic);
    return bad;
  }

  /**
   * Stores a message awaiting its release and returns its new id (QoS 2 step 1).
   * @throws BrokerError for a bad topic name, a denied topic, or a limit reached.
   */
  async acceptPublish(
    topic: string,
    payload: Uint8Array,
    format: PayloadFormat,
    source: PublishSource,
  ): Promise<number> {
    this.#checkPending(topic, payload, source);
    const t = await this.topic(topic);
    this.#checkTopicRoom(t);
    const q = source.quota;
    if (q) q.count++; // counted before the await, so concurrent PUBs cannot overshoot
    try {
      const pending = this.#pendingOf(await this.#ids.next(), topic, payload, format, source);
      await this.store.savePending(pending);
      this.#accepted(pending, q);
      return pending.id;
    } catch (err) {
      if (q) q.count--;
      throw err;
    }
  }

  /**
   * {@link acceptPublish} told through `settle` (never inside this call), taken when the
   * topic is started: false, with nothing done, when the caller must use
   * {@link acceptPublish}.
   */
  acceptPublishWith(
    topic: string,
    payload: Uint8Array,
    format: PayloadFormat,
    source: PublishSource,
    settle: Settle<number>,
  ): boolean {
    const t = this.#started.get(topic);
    if (!t) return false;
    try {
      this.#checkPending(topic, payload, source);
      this.#checkTopicRoom(t);
    } catch (err) {
      queueMicrotask(() => settle.reject(err));
      return true;
    }
    const q = source.quota;
    if (q) q.count++;
    const id = this.#ids.tryNext();
    if (id !== undefined) this.#savePending(id, topic, payload, format, source, settle);
    else {
      this.#ids.next().then(
        (id) => this.#savePending(id, topic, payload, format, source, settle),
        (err) => {
          if (q) q.count--;
          settle.reject(err);
        },
      );
    }
    return true;
  }

  /** Commits pending PUB `id`; `settle` hears its id once it is stored. */
  #savePending(
    id: number,
    topic: string,
    payload: Uint8Array,
    format: PayloadFormat,
    source: PublishSource,
    settle: Settle<number>,
  ): void {
    const pending = this.#pendingOf(id, topic, payload, format, source);
    this.store.savePendingWith(pending, new Broker.#Accept(this, pending, source.quota, settle));
  }

  /** The checks of a PUB before its topic is known. @throws BrokerError */
  #checkPending(topic: string, payload: Uint8Array, source: PublishSource): void {
    const bad = this.topicError(topic);
    if (bad) throw new BrokerError(bad);
    if (topic === DEAD_LETTER_TOPIC) {
      throw new BrokerError(`topic "${DEAD_LETTER_TOPIC}" is written by the broker only`);
    }
    if (!this.authorizer.canPublish(source.user, topic)) {
      log.warning("Denied: {user} may not publish to {topic}", {
        user: source.user ?? "(anonymous)",
        topic,
        origin: source.origin,
      });
      throw new BrokerError(`not authorised to publish to topic ${JSON.stringify(topic)}`);
    }
    const q = source.quota;
    if (q && q.count >= q.max) {
      throw new BrokerError(
        `too many PUBs awaiting PUBREL on this connection (limit ${q.max}): release some first`,
      );
    }
    const maxBytes = this.options.maxStoreBytes ?? 0;
    if (maxBytes > 0 && this.#payloadBytes + payload.byteLength > maxBytes) {
      throw new BrokerError(
        `the store is full (${this.#payloadBytes} payload bytes held, limit ${maxBytes}): ` +
          "new messages are refused until subscribers catch up",
      );
    }
  }

  /** @throws BrokerError when the topic holds `--max-topic-messages` already */
  #checkTopicRoom(t: Topic): void {
    const max = this.options.maxTopicMessages;
    if (max !== undefined && t.storedCount >= max) {
      throw new BrokerError(
        `topic ${JSON.stringify(t.topic)} is full (${max} messages): new messages are refused ` +
          "until its subscribers catch up",
      );
    }
  }

  #pendingOf(
    id: number,
    topic: string,
    payload: Uint8Array,
    format: PayloadFormat,
    source: PublishSource,
  ): PendingPublish {
    return { id, topic, payload, format, receivedAt: Date.now(), origin: source.origin };
  }

  /** A pending PUB is stored: it may be released from now on. */
  #accepted(p: PendingPublish, q: PendingQuota | undefined): void {
    this.#pending.set(p.id, p);
    this.#payloadBytes += p.payload.byteLength;
    if (q) this.#quotas.set(p.id, q);
  }

  /** The commit of a pending PUB, as one object (see {@link acceptPublishWith}). */
  static readonly #Accept = class Accept implements Settle<void> {
    readonly #broker: Broker;
    readonly #message: PendingPublish;
    readonly #quota: PendingQuota | undefined;
    readonly #settle: Settle<number>;
    constructor(b: Broker, p: PendingPublish, q: PendingQuota | undefined, settle: Settle<number>) {
      this.#broker = b;
      this.#message = p;
      this.#quota = q;
      this.#settle = settle;
    }
    resolve(): void {
      this.#broker.#accepted(this.#message, this.#quota);
      this.#settle.resolve(this.#message.id);
    }
    reject(err: unknown): void {
      if (this.#quota) this.#quota.count--;
      this.#settle.reject(err);
    }
  };

  /**
   * Releases a pending message to its topic (QoS 2 step 2). Repeating it answers
   * "already-released" without publishing again.
   * @throws BrokerError when no message with that id was accepted.
   */
  releasePublish(id: number): Promise<ReleaseResult> {
    const settle = Promise.withResolvers<ReleaseResult>();
    this.releasePublishWith(id, settle);
    return settle.promise;
  }

  /** {@link releasePublish} told through `settle` (never inside this call). */
  releasePublishWith(id: number, settle: Settle<ReleaseResult>): void {
    const p = this.#pending.get(id);
    if (p) {
      // Claimed synchronously, so a second PUBREL racing this one waits for it below.
      this.#pending.delete(id);
      const release = new Broker.#Release(this, p, settle);
      this.#releasing.set(id, release);
      const t = this.#started.get(p.topic);
      if (t) t.appendWith(release.input(), release);
      else {this.topic(p.topic).then((t) =>
          t.appendWith(release.input(), release), (err) =>
          release.reject(err));}
      return;
    }
    const inProgress = this.#releasing.get(id);
    // Not pending: released already (its PUBCOMP may have been lost), if the id was ever
    // handed out. No record per release is kept for this: ids only grow, and a pending
    // PUB stays pending until it is released.
    const known = inProgress
      ? inProgress.done().then(() => "already-released" as const)
      : this.#ids.mayHaveIssued(id).then((issued) => {
        if (issued) return "already-released" as const;
        throw new BrokerError(`unknown msgId ${id}: no PUB with this id is awaiting PUBREL`);
      });
    known.then((r) => settle.resolve(r), (err) => settle.reject(err));
  }

  /** The append of a released PUB, as one object (see {@link releasePublishWith}). */
  static readonly #Release = class Release implements Settle<StoredMessage> {
    readonly #broker: Broker;
    readonly #message: PendingPublish;
    readonly #settle: Settle<ReleaseResult>;
    /** For a PUBREL of the same id that arrives meanwhile; made when one does. */
    #done: PromiseWithResolvers<void> | null = null;
    constructor(b: Broker, p: PendingPublish, settle: Settle<ReleaseResult>) {
      this.#broker = b;
      this.#message = p;
      this.#settle = settle;
    }
    input(): AppendInput {
      const p = this.#message;
      return { id: p.id, payload: p.payload, format: p.format, releasedId: p.id };
    }
    /** Settles when this release has (as "released", or failed). */
    done(): Promise<void> {
      this.#done ??= Promise.withResolvers<void>();
      return this.#done.promise;
    }
    resolve(): void {
      const b = this.#broker;
      const id = this.#message.id;
      // Its bytes now count as the log's (see #appended), no longer as pending.
      b.#payloadBytes -= this.#message.payload.byteLength;
      const q = b.#quotas.get(id);
      if (q) q.count--;
      b.#quotas.delete(id);
      b.#releasing.delete(id);
      this.#done?.resolve();
      this.#settle.resolve("released");
    }
    reject(err: unknown): void {
      const b = this.#broker;
      b.#pending.set(this.#message.id, this.#message); // nothing was written: release again
      b.#releasing.delete(this.#message.id);
      this.#done?.reject(err);
      this.#settle.reject(err);
    }
  };

  /**
   * Publishes a message straight to its topic (MQTT PUBLISH, wills): resolves once it
   * is durable, with the stored message.
   * @throws BrokerError for a bad topic name, a denied topic, or a limit reached.
   */
  async publish(input: PublishInput, source: PublishSource): Promise<StoredMessage> {
    return await (await this.submit(input, source)).committed;
  }

  /**
   * Like {@link publish}, in two steps: resolves once the message has its place in its
   * topic's order (checks passed, append queued), with `committed` for its durability.
   * A connection that waits for each `submit` before the next keeps its messages in
   * order without waiting for their commits.
   */
  async submit(
    input: PublishInput,
    source: PublishSource,
  ): Promise<{ committed: Promise<StoredMessage> }> {
    const now = this.submitNow(input, source);
    if (now) return { committed: now };
    const t = await this.topic(input.topic);
    return { committed: t.append(this.#appendInput(t, input, await this.#ids.next())) };
  }

  /**
   * The synchronous path of {@link submit}, taken when the topic is started and a
   * message id is at hand: returns the commit promise with the append already queued,
   * or null when the caller must use {@link submit}.
   * @throws BrokerError as {@link submit} does
   */
  submitNow(input: PublishInput, source: PublishSource): Promise<StoredMessage> | null {
    const settle = Promise.withResolvers<StoredMessage>();
    return this.#appendNow(input, source, settle) ? settle.promise : null;
  }

  /**
   * {@link submitNow} told through `settle` instead of a promise (a connection's reply
   * ticket): false, with nothing done, when the caller must use {@link submit}; a
   * refusal goes to `settle`, never inside this call.
   */
  submitNowWith(
    input: PublishInput,
    source: PublishSource,
    settle: Settle<StoredMessage>,
  ): boolean {
    try {
      return this.#appendNow(input, source, settle);
    } catch (err) {
      queueMicrotask(() => settle.reject(err));
      return true;
    }
  }

  /**
   * Checks `input` and queues its append to `settle` when its topic is started and a
   * message id is at hand; false (nothing done) otherwise.
   * @throws BrokerError as {@link submit} does
   */
  #appendNow(input: PublishInput, source: PublishSource, settle: Settle<StoredMessage>): boolean {
    this.#check(input, source);
    const t = this.#started.get(input.topic);
    if (!t) return false;
    const id = this.#ids.tryNext();
    if (id === undefined) return false;
    t.appendWith(this.#appendInput(t, input, id), settle);
    return true;
  }

  #check(input: PublishInput, source: PublishSource): void {
    const { topic, payload } = input;
    const bad = source.system ? null : this.topicError(topic);
    if (bad) throw new BrokerError(bad, "invalid-topic");
    if (!source.system && topic === DEAD_LETTER_TOPIC) {
      throw new BrokerError(`topic "${DEAD_LETTER_TOPIC}" is written by the broker only`, "denied");
    }
    // $SYS figures are the broker's own: the ACL is for clients.
    if (!source.system && !this.authorizer.canPublish(source.user, topic)) {
      log.warning("Denied: {user} may not publish to {topic}", {
        user: source.user ?? "(anonymous)",
        topic,
        origin: source.origin,
      });
      throw new BrokerError(
        `not authorised to publish to topic ${JSON.stringify(topic)}`,
        "denied",
      );
    }
    const maxBytes = this.options.maxStoreBytes ?? 0;
    if (maxBytes > 0 && this.#payloadBytes + payload.byteLength > maxBytes) {
      throw new BrokerError(
        `the store is full (${this.#payloadBytes} payload bytes held, limit ${maxBytes})`,
        "full",
      );
    }
  }

  /** What the topic appends for `input` under message id `id`; counts it as received. */
  #appendInput(t: Topic, input: PublishInput, id: number): AppendInput {
    const { topic, payload } = input;
    const max = this.options.maxTopicMessages;
    if (max !== undefined && t.storedCount >= max) {
      throw new BrokerError(`topic ${JSON.stringify(topic)} is full (${max} messages)`, "full");
    }
    let retain = input.retain;
    const maxRetained = this.options.maxRetained;
    if (
      retain && payload.byteLength > 0 && maxRetained !== undefined &&
      !this.retained.has(topic) && this.retained.size >= maxRetained
    ) {
      log.warning("Retained message on {topic} kept as a normal message: {max} retained held", {
        topic,
        max: maxRetained,
      });
      retain = false;
    }
    this.metrics.messagesReceived++;
    this.metrics.bytesReceived += payload.byteLength;
    return {
      id,
      payload,
      format: input.format,
      qos: input.qos,
      retain,
      from: input.from,
      expiresAt: input.expiresAt,
      props: input.props,
      receipt: input.receipt,
      willOf: input.willOf,
      pipelined: input.pipelined,
    };
  }

  #subscribersOf(topic: string): { sid: string; durable: boolean }[] {
    const version = this.filterIndex.version;
    const cached = this.#reachCache.get(topic);
    if (cached?.version === version) return cached.subs;
    const bySid = new Map<string, boolean>();
    for (const e of this.filterIndex.match(topic)) {
      // A shared subscription has one position per group, whatever its members.
      const sid = parseShare(e.filter) ? groupId(e.filter) : e.sid;
      bySid.set(sid, (bySid.get(sid) ?? false) || e.durable);
    }
    const subs = [...bySid].map(([sid, durable]) => ({ sid, durable }));
    this.#reachCache.set(topic, { version, subs });
    return subs;
  }

  #appended(m: StoredMessage, logged: boolean): void {
    if (logged) {
      this.metrics.messagesStored++;
      this.#payloadBytes += m.payload.byteLength;
    }
    if (!m.retain) return;
    if (m.payload.byteLength === 0) this.retained.delete(m.topic);
    else this.retained.set(m.topic, m);
  }

  /** Retained messages whose topics `filter` matches. */
  retainedFor(filter: string): StoredMessage[] {
    const inner = innerFilter(filter);
    const out: StoredMessage[] = [];
    const now = Date.now();
    for (const m of this.retained.values()) {
      if (m.expiresAt !== undefined && m.expiresAt <= now) continue;
      if (matches(inner, m.topic)) out.push(m);
    }
    return out;
  }

  // --- dead letters -----------------------------------------------------------------

  /** Appends a dead letter to {@link DEAD_LETTER_TOPIC}; failures are only logged. */
  async deadLetter(d: DeadLetter): Promise<void> {
    try {
      const payload = encoder.encode(JSON.stringify(deadLetterBody(d)));
      // In the order they were reported: each waits until the one before it is queued
      // in the topic (the first may wait for a block of ids while a later one would not).
      const queued = this.#deadLetterQueue.then(async () => {
        const [id, topic] = await Promise.all([this.#ids.next(), this.topic(DEAD_LETTER_TOPIC)]);
        return { committed: topic.append({ id, payload, format: "json" }) };
      });
      this.#deadLetterQueue = queued.then(() => {}, () => {});
      await (await queued).committed; // its bytes are counted by #appended
    } catch (err) {
      log.error("Could not store a dead letter ({reason}): {error}", {
        reason: d.reason,
        error: String(err),
      });
    }
  }

  // --- consumers --------------------------------------------------------------------

  /**
   * Opens the session of a logged-in consumer, or returns null when that name already
   * has a live session (the first one keeps working).
   */
  openSession(subscriber: string, sink: SessionSink): ConsumerSession | null {
    if (this.#closed || this.#sessions.has(subscriber)) return null;
    const s = new ConsumerSession(this, subscriber, sink, () => {
      if (this.#sessions.get(subscriber) === s) this.#sessions.delete(subscriber);
    });
    this.#sessions.set(subscriber, s);
    return s;
  }

  /** Names of consumers with a live session. */
  get sessionNames(): string[] {
    return [...this.#sessions.keys()];
  }

  /**
   * Where a new subscription to `topic` starts: at the topic's end (seed behaviour),
   * except on the dead letter channel, which starts at its oldest kept entry.
   */
  startPosition(topic: Topic): number {
    if (topic.topic !== DEAD_LETTER_TOPIC) return topic.nextSeq;
    return Math.max(1, topic.nextSeq - this.options.deadLetterMax);
  }

  // --- retention --------------------------------------------------------------------

  #sweep(): void {
    this.#retentionRunning ??= this.#retain().catch((err) =>
      log.warning("Retention failed: {error}", { error: String(err) })
    ).finally(() => this.#retentionRunning = null);
  }

  /** Deletes messages that no subscription needs any more; runs on a timer. */
  async runRetention(): Promise<void> {
    for (const topic of this.#started.values()) {
      // Dead letters are kept by count, read or not, so that a new subscriber of the
      // channel finds the recent ones; other topics keep what a subscription needs.
      const floor = topic.topic === DEAD_LETTER_TOPIC
        ? Math.min(topic.nextSeq - this.options.deadLetterMax, topic.settledTo + 1)
        : topic.retentionFloor();
      if (floor > topic.trimmedTo) {
        this.#payloadBytes -= await this.store.trimLog(
          topic.topic,
          topic.trimmedTo,
          floor,
          topic.headRecord(),
        );
        topic.trimmedTo = floor;
      }
    }
  }

  async #retain(): Promise<void> {
    if (!this.#closed) await this.runRetention();
  }

  /** Stops the core: sessions end, timers stop, in-flight writes settle. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#retentionTimer);
    for (const s of [...this.#sessions.values()]) s.close();
    await this.sessions.close();
    await this.#retentionRunning;
    await Promise.allSettled(this.#releasing.values());
    await this.store.flush();
    this.topicSupervisor.close();
    for (const t of this.#started.values()) t.stop();
  }
}
