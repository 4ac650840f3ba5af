/**
 * A topic: a durable, append-only log of messages, run as an actor.
 *
 * Appends go through the topic's mailbox, which hands out sequence numbers in arrival
 * order and submits each append to the store's group commit without waiting for it;
 * the commits land in submission order, and the appender is told only after the commit
 * that made its message durable. The newest messages stay in memory so that live
 * subscribers read them without touching the store.
 *
 * When a message becomes readable depends on its QoS. A QoS 2 message, and any append
 * that commits more than the message (a retained message, a will, a QoS 2 receipt, new
 * positions), is readable once its commit landed. With early delivery on
 * ({@link TopicOptions.earlyDelivery}) a plain QoS 0 or 1 message is readable as soon as
 * it has its sequence number and every message before it is readable: subscribers get
 * it while its commit is still in flight, as RabbitMQ's consumers get a message before
 * its publisher confirm. Nothing accepted can be lost that way, since the publisher is
 * acknowledged only after the commit; what a crash can do is make a subscriber see a
 * message the store never got, which a QoS 1 publisher, unacknowledged, sends again:
 * a duplicate, which "at least once" allows. Anything written because of such a message
 * (a subscriber's acknowledgement, its position past it) is submitted after its append,
 * so it lands in the same atomic or a later one; only a subscription record built from
 * its live state when an atomic starts can get ahead, and a position or acknowledgement
 * stored past a message a crash lost only moves the head past that number at start
 * ({@link Topic.start}), never onto another message. Retention never goes past the
 * messages committed so far.
 *
 * A QoS 0 message that no durable subscription needs is not written at all: QoS 0 is
 * "at most once", and only sessions that end with their connection would read it. It
 * takes the next sequence number and reaches the topic's memory in order with the
 * messages around it (after every earlier append has committed), but a reader that has
 * fallen behind the memory, or reads after a restart, finds a gap there. Any durable
 * subscriber on the topic (a JSON-line consumer, a persistent MQTT session or shared
 * group) puts QoS 0 messages through the log like any other.
 *
 * On failure the topic waits until every write it started has settled, reloads its head
 * from the store and carries on; appends posted meanwhile are held and replayed.
 *
 * @module
 */
import type { Restartable, Supervisor } from "../supervisor.ts";
import type {
  AppendEffects,
  BrokerStore,
  MessageProps,
  PayloadFormat,
  Qos,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
} from "../store/store.ts";
import { getLogger } from "../log.ts";
import { OrderedReplies, type Settle, Ticket } from "../ordered_replies.ts";
import { Mailbox } from "./mailbox.ts";

const log = getLogger("topic");

/** What an append needs; the topic adds the sequence number and time. */
export interface AppendInput {
  id: number;
  payload: Uint8Array;
  format: PayloadFormat;
  /** The pending PUB this append releases, removed in the same atomic. */
  releasedId?: number;
  qos?: Qos;
  retain?: boolean;
  from?: string;
  expiresAt?: number;
  props?: MessageProps;
  /** An inbound MQTT QoS 2 receipt to store with the message (its seq is filled in). */
  receipt?: { sid: string; tag: number };
  /** Publishing this session's will: its record is deleted in the same atomic. */
  willOf?: string;
  /**
   * The publisher has more messages in flight and sends on without waiting for this
   * one's acknowledgement: an early delivery's commit may then wait to share an atomic.
   */
  pipelined?: boolean;
}

/**
 * Subscribers whose topic filters reach a topic. The topic asks before each append and
 * gives every one that has no position yet a position at the appended message, in the
 * append's own atomic: a filter covers every message appended after it was registered,
 * also in topics that did not exist then.
 */
export interface Reach {
  /** Subscribers whose filters match `topic`; `durable` ones get a stored position. */
  subscribersOf(topic: string): readonly { sid: string; durable: boolean }[];
  /**
   * Called once `sids` have their new positions at `seq`: after the commit that stored
   * them, or, when none is stored and the message is delivered early, as it becomes
   * readable.
   */
  materialised(topic: Topic, sids: string[], seq: number): void;
  /**
   * Called after the commit of every append (retained messages, counters), in order;
   * `logged` is false for a QoS 0 message kept in memory only.
   */
  appended?(message: StoredMessage, logged: boolean): void;
}

/** Something to wake when a message becomes readable (a delivery). */
export interface Wakeable {
  wake(): void;
  /** The lowest sequence number it has not completed: the topic keeps from there on. */
  readonly position: number;
}

/** Test and diagnostics hooks; production code passes none. */
export interface TopicHooks {
  /** Called in the mailbox before each append; a throw is a topic failure. */
  beforeAppend?(topic: string): void;
}

/** How a topic is run. */
export interface TopicOptions {
  hooks?: TopicHooks;
  /** Who subscribes to the topic through filters. */
  reach?: Reach;
  /**
   * Plain QoS 0 and 1 messages become readable before their commit (see the module's
   * documentation); off, every message waits for its commit. Default off.
   */
  earlyDelivery?: boolean;
}

/**
 * The highest sequence number a subscription's stored acknowledgements name (a PUBREC or
 * a completion above its position), or 0. Such a number may belong to a message that was
 * delivered early and never committed: handed out again, it would take the new message
 * for one already acknowledged (sent as PUBREL only, or skipped).
 */
function highestHeld(s: SubscriptionRecord): number {
  let high = s.received?.seq ?? 0;
  const pending = s.pending ?? [];
  for (let i = 0; i < pending.length; i += 2) high = Math.max(high, pending[i] as number);
  for (const seq of s.completed ?? []) high = Math.max(high, seq);
  return high;
}

/** Whether an append commits nothing but its message. */
function isEmpty(effects: AppendEffects): boolean {
  for (const _ in effects) return false;
  return true;
}

/** Shared result of `#materialise` when no subscriber got a new position; never added to. */
const NONE_REACHED: string[] = [];

/** Raised to callers of a topic that its supervisor gave up on. */
export class TopicUnavailableError extends Error {
  constructor(topic: string) {
    super(`topic "${topic}" is unavailable after repeated failures`);
    this.name = "TopicUnavailableError";
  }
}

interface AppendMsg {
  input: AppendInput;
  settle: Settle<StoredMessage>;
}

/**
 * The topic's memory keeps every message an attached subscriber has not completed yet
 * (up to {@link CACHE_BYTES} of payload and {@link CACHE_MAX_MESSAGES} messages), and at
 * least the newest CACHE_TAIL messages besides. Keeping no more than that matters for the
 * garbage collector: a message that is still referenced when the young generation is
 * collected gets copied, and promoted to the old generation if it survives twice, so a
 * memory of a thousand messages per topic made every collection copy them all and grew
 * the old generation by a message's worth for each one published.
 */
const CACHE_TAIL = 32;
/** ...trimmed once it holds this many more than it must (the floor costs a pass). */
const CACHE_SLACK = 32;
/** ...and how many payload bytes it keeps at most... */
const CACHE_BYTES = 8 * 1024 * 1024;
/**
 * ...and how many messages: a subscriber that stops acknowledging must not make the
 * topic keep everything published after it (up to CACHE_BYTES of small messages would be
 * hundreds of thousands of objects). Past this, it reads the log again when it resumes.
 */
const CACHE_MAX_MESSAGES = 16_384;

/** One topic actor. Create with {@link Topic.start}. */
export class Topic implements Restartable {
  readonly topic: string;
  #store: BrokerStore;
  #supervisor: Supervisor;
  #hooks: TopicHooks;
  #reach: Reach | undefined;
  #earlyDelivery: boolean;
  #mailbox: Mailbox<AppendMsg>;
  #state: "running" | "restarting" | "down" | "stopped" = "running";
  #held: AppendMsg[] = [];
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #epoch = 0;
  #nextSeq = 1;
  #createdAt = 0;
  /** Messages in memory, ascending by seq (maybe with gaps), from index `#cacheHead`. */
  #cache: StoredMessage[] = [];
  #cacheHead = 0;
  #cacheBytes = 0;
  /** Cache length at which `#remember` next looks for messages to drop. */
  #cacheCheckAt = CACHE_TAIL + CACHE_SLACK;
  /** Every committed message with `seq >= #cacheFrom` is in the cache. */
  #cacheFrom = 1;
  #subscribers = new Set<Wakeable>();
  /** Durable positions of every subscription to this topic, for retention. */
  #positions = new Map<string, number>();
  /** The subscribers among {@link #positions} whose positions are stored. */
  #durable = new Set<string>();
  /** Appends become readable in sequence order, each once it committed (if logged). */
  #releases = new OrderedReplies((err) => {
    log.error('Topic "{topic}": releasing an append failed: {error}', {
      topic: this.topic,
      error: String(err),
    });
  });
  /** Log entries below this are deleted (by retention) or never existed. */
  trimmedTo = 0;
  /** Every message up to this one is readable (released, or early). */
  #readableTo = 0;
  /** Every append up to this one has committed (or was kept in memory only). */
  #settledTo = 0;

  private constructor(
    name: string,
    store: BrokerStore,
    supervisor: Supervisor,
    options: TopicOptions,
  ) {
    this.topic = name;
    this.#reach = options.reach;
    this.#store = store;
    this.#supervisor = supervisor;
    this.#hooks = options.hooks ?? {};
    this.#earlyDelivery = options.earlyDelivery ?? false;
    this.#mailbox = new Mailbox((m) => this.#handle(m), (err, m) => {
      m.settle.reject(err);
      this.#fail(err);
    });
  }

  /** Loads (or creates) the topic's durable state and starts its actor. */
  static async start(
    name: string,
    store: BrokerStore,
    supervisor: Supervisor,
    options: TopicOptions = {},
  ): Promise<Topic> {
    const t = new Topic(name, store, supervisor, options);
    await t.#load(true);
    return t;
  }

  /** Name for supervisor logs. */
  get name(): string {
    return `topic "${this.topic}"`;
  }

  /** The sequence number the next message will get. */
  get nextSeq(): number {
    return this.#nextSeq;
  }

  /** Every append up to this sequence number has committed (or was kept in memory only). */
  get settledTo(): number {
    return this.#settledTo;
  }

  /** Messages the topic holds (an upper bound: sequence numbers may have gaps). */
  get storedCount(): number {
    return this.#nextSeq - this.trimmedTo;
  }

  /** Live subscribers attached. */
  get subscriberCount(): number {
    return this.#subscribers.size;
  }

  async #load(create: boolean): Promise<void> {
    let rec = await this.#store.loadTopic(this.topic);
    if (!rec && create) {
      rec = { name: this.topic, nextSeq: 1, createdAt: Date.now() };
      await this.#store.ensureTopic(rec);
    }
    // The log's last entry bounds the head from below, also when the head record is
    // missing or damaged: a sequence number in use is never handed out again.
    this.#nextSeq = Math.max(rec?.nextSeq ?? 1, (await this.#store.lastLogSeq(this.topic)) + 1);
    this.#createdAt = rec?.createdAt ?? Date.now();
    this.#cache = [];
    this.#cacheHead = 0;
    this.#cacheBytes = 0;
    this.#cacheCheckAt = CACHE_TAIL + CACHE_SLACK;
    this.trimmedTo = (await this.#store.readLog(this.topic, 0, 1))[0]?.seq ?? this.#nextSeq;
    this.#positions.clear();
    this.#durable.clear();
    for (const s of await this.#store.loadTopicSubscriptions(this.topic)) {
      this.#positions.set(s.subscriber, s.position);
      this.#durable.add(s.subscriber);
      // Messages kept in memory only, and early deliveries whose commit a crash lost,
      // left no trace in the head: never hand out again a sequence number a stored
      // subscription has passed or holds an acknowledgement for.
      const passed = Math.max(s.position, highestHeld(s) + 1);
      if (passed > this.#nextSeq) this.#nextSeq = passed;
    }
    this.#cacheFrom = this.#nextSeq;
    this.#readableTo = this.#settledTo = this.#nextSeq - 1;
  }

  /** Appends a message; resolves with it once it is durable. */
  append(input: AppendInput): Promise<StoredMessage> {
    const settle = Promise.withResolvers<StoredMessage>();
    this.appendWith(input, settle);
    return settle.promise;
  }

  /**
   * {@link append} told through `settle` instead of a promise: resolved with the message
   * once it is durable, in sequence order; never inside this call.
   */
  appendWith(input: AppendInput, settle: Settle<StoredMessage>): void {
    if (this.#state === "down" || this.#state === "stopped") {
      const err = new TopicUnavailableError(this.topic);
      queueMicrotask(() => settle.reject(err));
      return;
    }
    this.#mailbox.post({ input, settle });
  }

  #handle(m: AppendMsg): void {
    if (this.#state === "restarting") {
      this.#held.push(m);
      return;
    }
    if (this.#state !== "running") {
      m.settle.reject(new TopicUnavailableError(this.topic));
      return;
    }
    this.#hooks.beforeAppend?.(this.topic);
    const input = m.input;
    const message: StoredMessage = {
      id: input.id,
      seq: this.#nextSeq++,
      topic: this.topic,
      payload: input.payload,
      format: input.format,
      publishedAt: Date.now(),
    };
    if (input.qos !== undefined && input.qos !== 2) message.qos = input.qos;
    if (input.retain) message.retain = true;
    if (input.from !== undefined) message.from = input.from;
    if (input.expiresAt !== undefined) message.expiresAt = input.expiresAt;
    if (input.props !== undefined) message.props = input.props;
    const effects: AppendEffects = {};
    if (input.releasedId !== undefined) effects.releasedId = input.releasedId;
    if (input.receipt) {
      effects.receipt = {
        ...input.receipt,
        msgId: message.id,
        topic: this.topic,
        seq: message.seq,
        at: message.publishedAt,
      };
    }
    if (input.retain) effects.retained = input.payload.byteLength === 0 ? "clear" : "set";
    if (input.willOf !== undefined) effects.willOf = input.willOf;
    const reached = this.#materialise(message.seq, effects);
    const memoryOnly = this.#inMemoryOnly(input, effects);
    const release = this.#releases.enqueue(
      new Topic.#Release(this, m.settle, message, reached, memoryOnly),
    );
    // A subscriber reached here for the first time may take the message early too when
    // its new position is kept in memory only (a durable one's is in `effects`).
    const early = this.#earlyDelivery && this.#readableTo === message.seq - 1 &&
      (input.qos === 0 || input.qos === 1) && !input.retain && isEmpty(effects);
    release.early = early;
    if (!memoryOnly) {
      // Its subscribers have it already: the commit only answers the publisher, which
      // waits for nothing at QoS 0 and, pipelining, goes on meanwhile.
      const deferrable = early && (input.qos === 0 || input.pipelined === true);
      this.#store.appendWith(message, effects, release, deferrable);
    }
    // Readable now only once the append is submitted: whatever a subscriber's answer
    // writes then goes into the store after it.
    if (early) {
      this.#readable(message);
      if (reached.length > 0) this.#reach?.materialised(this, reached, message.seq);
    }
    if (memoryOnly) release.resolve();
  }

  /** Makes `message`, the one after {@link #readableTo}, readable and wakes subscribers. */
  #readable(message: StoredMessage): void {
    this.#readableTo = message.seq;
    this.#remember(message);
    for (const s of this.#subscribers) s.wake();
  }

  /**
   * One append's place in the topic's releases, as one object (not a ticket and its
   * closures): once committed (or at once when kept in memory only) and every append
   * before it is out, the message becomes readable; if the store refused it, the topic
   * resynchronises. Nested here so that it may use the topic's private state.
   */
  static readonly #Release = class Release extends Ticket<void> {
    readonly epoch: number;
    /** Made readable before its commit. */
    early = false;

    constructor(
      readonly topic: Topic,
      readonly settle: Settle<StoredMessage>,
      readonly message: StoredMessage,
      readonly reached: string[],
      readonly memoryOnly: boolean,
    ) {
      super();
      this.epoch = topic.#epoch;
    }

    override send(): void {
      const t = this.topic;
      const message = this.message;
      this.settle.resolve(message);
      // Committed (or kept in memory) whatever happened since: counted and retained.
      t.#reach?.appended?.(message, !this.memoryOnly);
      if (this.epoch !== t.#epoch) return; // a restart reloaded the state since
      t.#settledTo = message.seq;
      if (this.early) return; // readable already, and its new subscribers have it
      t.#readableTo = message.seq;
      t.#remember(message);
      // New subscribers find the message in memory, then everyone is woken.
      if (this.reached.length > 0) t.#reach?.materialised(t, this.reached, message.seq);
      for (const s of t.#subscribers) s.wake();
    }

    override fail(err: unknown): void {
      // The store refused the write (disk full, read-only file...): not a fault of the
      // topic, so no restart counts against it. It resynchronises its head with the
      // store and goes on; the caller was told, and nothing of the append was written.
      this.settle.reject(err);
      this.topic.#resync(err);
    }
  };

  /**
   * Whether an append can skip the log: QoS 0, nothing else to commit with it, and no
   * subscription here (or reaching here through a filter) with a stored position.
   */
  #inMemoryOnly(input: AppendInput, effects: AppendEffects): boolean {
    return input.qos === 0 && !input.retain && this.#durable.size === 0 &&
      effects.positions === undefined && effects.releasedId === undefined &&
      effects.receipt === undefined && effects.willOf === undefined;
  }

  /** Gives filter subscribers without a position here one at `seq`; returns their ids. */
  #materialise(seq: number, effects: AppendEffects): string[] {
    const subs = this.#reach?.subscribersOf(this.topic);
    if (!subs || subs.length === 0) return NONE_REACHED;
    let reached = NONE_REACHED; // the usual case: every subscriber has its position already
    const now = Date.now();
    for (const { sid, durable } of subs) {
      if (this.#positions.has(sid)) continue;
      this.#positions.set(sid, seq);
      if (reached === NONE_REACHED) reached = [];
      reached.push(sid);
      if (durable) {
        this.#durable.add(sid);
        const rec: SubscriptionRecord = {
          subscriber: sid,
          topic: this.topic,
          position: seq,
          received: null,
          createdAt: now,
        };
        (effects.positions ??= []).push(rec);
      }
    }
    return reached;
  }

  /** True when `subscriber` has a position (durable or tracked) in this topic. */
  hasPosition(subscriber: string): boolean {
    return this.#positions.has(subscriber);
  }

  #remember(message: StoredMessage): void {
    this.#cache.push(message);
    this.#cacheBytes += message.payload.byteLength;
    if (this.#cache.length < this.#cacheCheckAt && this.#cacheBytes <= CACHE_BYTES) return;
    // Messages an attached subscriber has not completed stay (up to CACHE_BYTES): it will
    // read or resend them, and those kept in memory only exist nowhere else.
    const keepFrom = this.#attachedFloor();
    const cache = this.#cache;
    const tailFrom = cache.length - CACHE_TAIL;
    let head = this.#cacheHead;
    while (
      head < cache.length &&
      ((head < tailFrom && (cache[head] as StoredMessage).seq < keepFrom) ||
        this.#cacheBytes > CACHE_BYTES || cache.length - head > CACHE_MAX_MESSAGES)
    ) {
      const old = cache[head] as StoredMessage;
      cache[head++] = undefined as unknown as StoredMessage; // let it be collected now
      this.#cacheBytes -= old.payload.byteLength;
      this.#cacheFrom = old.seq + 1;
    }
    // The dropped head is cut off once it is most of the array: each message is moved
    // at most once on average, however many are dropped at a time.
    if (head > 64 && head * 2 > cache.length) {
      this.#cache = cache.slice(head);
      head = 0;
    }
    this.#cacheHead = head;
    this.#cacheCheckAt = this.#cache.length + CACHE_SLACK;
  }

  /** The lowest position (first message not completed) of the attached subscribers. */
  #attachedFloor(): number {
    let floor = Number.POSITIVE_INFINITY;
    for (const s of this.#subscribers) if (s.position < floor) floor = s.position;
    return floor;
  }

  /** The topic's head record as of now (see TopicRecord): what a trim writes. */
  headRecord(): TopicRecord {
    return { name: this.topic, nextSeq: this.#nextSeq, createdAt: this.#createdAt };
  }

  /** Every message with `seq >= memoryFrom` that has been released is in memory. */
  get memoryFrom(): number {
    return this.#cacheFrom;
  }

  /** The first committed message with `seq >= fromSeq`, or null if there is none yet. */
  read(fromSeq: number): StoredMessage | null | Promise<StoredMessage | null> {
    const cached = this.readCached(fromSeq);
    if (cached !== undefined) return cached;
    return this.#store.readLog(this.topic, fromSeq, 1).then((ms) => ms[0] ?? null);
  }

  /**
   * {@link read} from memory: the message, null when there is none yet, or undefined
   * when `fromSeq` is older than the messages kept in memory (then read the store).
   */
  readCached(fromSeq: number): StoredMessage | null | undefined {
    if (fromSeq < this.#cacheFrom) return undefined;
    if (fromSeq >= this.#nextSeq || this.#cache.length === this.#cacheHead) return null;
    // Binary search: the cache is sorted by seq but may have gaps.
    let lo = this.#cacheHead;
    let hi = this.#cache.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#cache[mid] as StoredMessage).seq < fromSeq) lo = mid + 1;
      else hi = mid;
    }
    return this.#cache[lo] ?? null;
  }

  /**
   * Up to `limit` committed messages with `seq >= fromSeq`, in order, for a reader
   * behind the topic's memory: one store read per page instead of one per message.
   */
  readPage(fromSeq: number, limit: number): Promise<StoredMessage[]> {
    return this.#store.readLog(this.topic, fromSeq, limit);
  }

  /** Registers a live subscriber to wake on new messages. */
  attach(s: Wakeable): void {
    this.#subscribers.add(s);
  }

  /** Unregisters a live subscriber. */
  detach(s: Wakeable): void {
    this.#subscribers.delete(s);
  }

  /**
   * Records a subscription's position, for retention. Called before the position is
   * committed, so retention never deletes what a new subscription needs. `durable`:
   * the position is stored (QoS 0 messages then go through the log too).
   */
  trackPosition(subscriber: string, position: number, durable = true): void {
    this.#positions.set(subscriber, position);
    if (durable) this.#durable.add(subscriber);
  }

  /** Forgets a removed subscription. */
  untrackPosition(subscriber: string): void {
    this.#positions.delete(subscriber);
    this.#durable.delete(subscriber);
  }

  /**
   * Messages below this sequence number can be deleted: no subscription needs them, and
   * their appends have committed (a deletion must not pass a write still in flight).
   */
  retentionFloor(): number {
    let floor = this.#settledTo + 1;
    for (const p of this.#positions.values()) if (p < floor) floor = p;
    return floor;
  }

  #fail(err: unknown): void {
    if (this.#state !== "running") return;
    this.#state = "restarting";
    this.#supervisor.childFailed(this, err, { topic: this.topic });
  }

  #resync(err: unknown): void {
    if (this.#state !== "running") return;
    this.#state = "restarting";
    log.warning('Topic "{topic}": a write failed ({error}); resynchronising with the store', {
      topic: this.topic,
      error: String(err),
    });
    const attempt = (delay: number) => {
      this.restart().catch((e) => {
        if (this.#state !== "restarting") return;
        log.warning('Topic "{topic}": resynchronising failed ({error}); retrying', {
          topic: this.topic,
          error: String(e),
        });
        this.#retryTimer = setTimeout(() => attempt(Math.min(delay * 2, 5000)), delay);
      });
    };
    attempt(50);
  }

  /** Supervisor callback: rebuild from the store once every write in flight settled. */
  async restart(): Promise<void> {
    this.#epoch++;
    const handedOut = this.#nextSeq;
    // Writes already submitted may still commit: read the head only after them, or a
    // sequence number could be handed out twice.
    await this.#store.barrier();
    await this.#load(false);
    // Messages kept in memory only are not in the stored head, and live subscribers
    // may be past them: carry on after every number handed out.
    if (handedOut > this.#nextSeq) {
      this.#nextSeq = handedOut;
      this.#cacheFrom = handedOut;
      this.#readableTo = this.#settledTo = handedOut - 1;
    }
    this.#state = "running";
    const held = this.#held;
    this.#held = [];
    for (const m of held) this.#mailbox.post(m);
    for (const s of this.#subscribers) s.wake();
  }

  /** Supervisor callback: the topic stays down; everything waiting is refused. */
  giveUp(_err: unknown): void {
    this.#state = "down";
    this.#rejectWaiting(new TopicUnavailableError(this.topic));
  }

  /** Stops the actor for shutdown; appends still waiting are refused. */
  stop(): void {
    this.#state = "stopped";
    clearTimeout(this.#retryTimer);
    this.#supervisor.remove(this);
    this.#rejectWaiting(new Error(`topic "${this.topic}" is stopping`));
    this.#subscribers.clear();
  }

  #rejectWaiting(err: Error): void {
    for (const m of [...this.#held, ...this.#mailbox.takeAll()]) m.settle.reject(err);
    this.#held = [];
  }
}
