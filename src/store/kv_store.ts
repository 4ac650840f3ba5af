/**
 * The broker's store on Deno KV.
 *
 * Key layout (schema version 6; `sid` is a session id, `mqtt:<client id>` or
 * `share:<group>/<filter>`):
 *
 * | key                              | value                | written when                      |
 * |----------------------------------|----------------------|-----------------------------------|
 * | ["meta", "schema"]               | number (6)           | first start; migration from 1-5   |
 * | ["meta", "owner"]                | {token, pid, at}     | every start (the fencing token)   |
 * | ["meta", "ids"]                  | number               | a block of ids is reserved        |
 * | ["topic", name]                  | TopicRecord          | topic created, log trimmed        |
 * | ["log", topic, seq]              | CompactMessage[]     | messages released to the topic    |
 * | ["pend", id]                     | CompactPending[]     | PUBs stored in one atomic (id of the first); rewritten without each one released, deleted when empty |
 * | ["pending", id]                  | PendingPublish       | versions 1–4: one PUB; deleted at its PUBREL |
 * | ["sub", topic, subscriber]       | SubscriptionRecord   | SUB, PUBREC, PUBCOMP; with append |
 * | ["subscriber", subscriber, topic]| number (created at)  | SUB, with append; deleted at UNSUB|
 * | ["session", sid]                 | SessionRecord        | CONNECT, disconnect               |
 * | ["filter", sid, filter]          | FilterRecord         | SUBSCRIBE; deleted at UNSUBSCRIBE |
 * | ["inflight", sid, tag]           | InflightRecord       | outbound QoS 2 send, PUBREC       |
 * | ["receipt", sid, tag]            | ReceiptRecord        | inbound QoS 2 append; PUBREL      |
 * | ["retained", topic]              | StoredMessage        | RETAIN append (empty one clears)  |
 * | ["will", sid]                    | WillRecord           | CONNECT with a will; published    |
 * | ["quarantine", ...key]           | the damaged value    | a read found the wrong shape      |
 *
 * A session's keys (`session`, `filter`, `inflight`, `receipt`, and its positions in
 * `sub` / `subscriber`) go together in {@link KvStore.deleteSession}; its `will` and the
 * `retained` messages outlive it.
 *
 * A topic's log is written in segments: the messages appended to one topic in one
 * atomic form one value, an array in sequence order, under the sequence number of its
 * last message (see {@link GroupCommitter}). The segment holding `seq` is therefore the
 * first key at or after `["log", topic, seq]`. Retention deletes the segments that end
 * below its floor and writes the one holding the floor again without what precedes it.
 *
 * Older stores are migrated by rewriting the schema number, because every change since
 * version 1 is additive: version 2 added optional fields to existing values and the
 * MQTT keys; version 3 writes segments where versions 1 and 2 wrote one message per
 * key, and a single message under `["log", topic, seq]` is read as a segment of one;
 * version 4 writes a segment's messages as arrays without field names or topic
 * ({@link CompactMessage}), and a segment of message objects (version 3) reads as
 * before; version 5 keeps pending PUBs many to a key (`["pend", id]`, a pool: see
 * {@link Pool}) and reads the single ones of older versions as pools of one; version 6
 * writes pending PUBs as arrays without field names ({@link CompactPending}) and a
 * subscription's received messages as one flat array (`pending`: seq, id, seq, id, …),
 * and reads the objects and pairs of version 5 as before. The number
 * still changes so that an older broker, which would take a new
 * value for a damaged one, refuses the store.
 *
 * Every write goes through the {@link GroupCommitter}, so it is fenced by the owner key
 * and batched with whatever else is being written at the same moment.
 *
 * @module
 */
import {
  type CommitPacing,
  DEFAULT_LIMITS,
  estimateSize,
  type Fence,
  FencedError,
  GroupCommitter,
  type Mutation,
  NO_PACING,
  type Pool,
  PoolSegment,
  PoolSlot,
  type SegmentObserver,
} from "./group_commit.ts";
import type { CommitTimes } from "./commit_times.ts";
import { SegmentIndex } from "./segment_index.ts";
import type { Settle } from "../ordered_replies.ts";
import type { z } from "zod";
import { getLogger } from "../log.ts";
import {
  compactMessage,
  type CompactPending,
  compactPending,
  filterRecord,
  inflightRecord,
  logSegment,
  pendingElement,
  pendingPublish,
  pendingSegment,
  receiptRecord,
  segmentElement,
  sessionRecord,
  storedMessage,
  subscriptionRecord,
  topicRecord,
  willRecord,
} from "./records.ts";
import type {
  AppendEffects,
  BrokerStore,
  FilterRecord,
  InflightRecord,
  PendingPublish,
  PositionSource,
  ReceiptRecord,
  SessionRecord,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
  WillRecord,
} from "./store.ts";

const log = getLogger("store");

/** The layout version this code writes and reads. */
export const SCHEMA_VERSION = 6;

/** Older layouts this code opens, each migrated by rewriting the schema number. */
const MIGRATES_FROM: readonly number[] = [1, 2, 3, 4, 5];

/** Mutations per operation when a session's keys are deleted. */
const DELETE_BATCH = 500;

/** Raised when the store was written by an incompatible layout. */
export class SchemaError extends Error {
  constructor(found: unknown) {
    super(
      `the store has schema version ${
        JSON.stringify(found)
      }, this broker reads version ${SCHEMA_VERSION}: refusing to open it`,
    );
    this.name = "SchemaError";
  }
}

/** Topics whose log key is kept for reuse (the map starts again past this). */
const LOG_KEYS_KEPT = 10_000;

/**
 * Log keys deleted per atomic by retention. Retention's atomics share the group
 * committer with every acknowledgement, so each is kept small and followed by a pause
 * ({@link TRIM_PAUSE_MS}): at a fixed 10k msg/s a pass deletes ~10,000 segments, and in
 * atomics of 500 back to back it held the messages committed meanwhile for tens of
 * milliseconds (the fixed-rate p99).
 */
const TRIM_BATCH = 100;
/** Pause between two of retention's atomics, so that the messages' commits run between. */
const TRIM_PAUSE_MS = 2;

/** A topic's log key prefix, and its estimated size, made once per topic. */
interface LogKey {
  key: Deno.KvKey;
  size: number;
}

/**
 * {@link BrokerStore} on a Deno KV database.
 *
 * @example
 * ```ts
 * const store = await KvStore.open(":memory:");
 * const first = await store.reserveIds(1000);
 * store.close();
 * ```
 */
export class KvStore implements BrokerStore {
  #kv: Deno.Kv;
  #gc: GroupCommitter;
  #fence: Fence;
  #quarantined = new Set<string>();
  /** Per topic, the log segments this process wrote (see SegmentIndex). */
  #segments = new Map<string, SegmentIndex>();
  /** Per topic, its log's key (frozen): one array for all its appends. */
  #logKeys = new Map<string, LogKey>();
  /** Pending PUBs by id, and where each is stored. */
  #pendingSlots = new Map<number, PoolSlot>();
  /**
   * The pool of pending PUBs: a segment under `["pend", id of its first PUB]` (ids are
   * never handed out twice, so neither is a key); released ones leave it (see Pool).
   */
  readonly #pendingPool: Pool = {
    newKey: (first) => ["pend", (first.value as CompactPending)[0]],
    removed: (slot) => this.#pendingSlots.delete((slot.value as CompactPending)[0]),
    unadded: (slot) => this.#pendingSlots.delete((slot.value as CompactPending)[0]),
  };

  private constructor(kv: Deno.Kv, fence: Fence, pacing: CommitPacing) {
    this.#kv = kv;
    this.#fence = fence;
    const onSegment: SegmentObserver = (log, first, last, values) => {
      const topic = log[1] as string;
      let index = this.#segments.get(topic);
      if (!index) this.#segments.set(topic, index = new SegmentIndex(first));
      index.add(last, payloadSize(values));
    };
    this.#gc = new GroupCommitter(kv, fence, DEFAULT_LIMITS, onSegment, pacing);
  }

  /**
   * Opens (or creates) the store at `path` (a file path or ":memory:"), checks the
   * schema version (migrating a version 1 store to version 2) and takes ownership by
   * rewriting the owner key.
   */
  static async open(path: string, pacing: CommitPacing = NO_PACING): Promise<KvStore> {
    const kv = await Deno.openKv(path);
    try {
      await KvStore.#settleSchema(kv);
      const owner = { token: crypto.randomUUID(), pid: Deno.pid, at: Date.now() };
      const res = await kv.set(["meta", "owner"], owner);
      return new KvStore(kv, { key: ["meta", "owner"], versionstamp: res.versionstamp }, pacing);
    } catch (err) {
      kv.close();
      throw err;
    }
  }

  /**
   * Leaves ["meta", "schema"] at {@link SCHEMA_VERSION}: writes it in a new store,
   * rewrites it in a store of a version this code migrates from (every change since is
   * additive), refuses anything else. Each write is checked against the value read.
   */
  static async #settleSchema(kv: Deno.Kv): Promise<void> {
    for (;;) {
      const schema = await kv.get<unknown>(["meta", "schema"]);
      const found = schema.value;
      if (found === SCHEMA_VERSION) return;
      if (found !== null && !MIGRATES_FROM.includes(found as number)) {
        throw new SchemaError(found);
      }
      const res = await kv.atomic().check(schema).set(["meta", "schema"], SCHEMA_VERSION)
        .commit();
      if (!res.ok) continue; // written meanwhile: look again
      if (found !== null) {
        log.info("Store migrated from schema version {from} to {to}", {
          from: found,
          to: SCHEMA_VERSION,
        });
      }
      return;
    }
  }

  /** Group-commit counters. */
  get commitStats() {
    return this.#gc.stats;
  }

  /** How long the store's commits took (see {@link GroupCommitter.times}). */
  get commitTimes(): CommitTimes {
    return this.#gc.times;
  }

  async reserveIds(count: number): Promise<number> {
    // Not group-committed: it needs its own check on the counter, and runs once per
    // block of ids.
    for (;;) {
      const cur = await this.#kv.get<number>(["meta", "ids"]);
      const first = cur.value ?? 1;
      const res = await this.#kv.atomic().check(this.#fence).check(cur)
        .set(["meta", "ids"], first + count).commit();
      if (res.ok) return first;
      await this.#checkOwner();
    }
  }

  async loadTopics(): Promise<TopicRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["topic"] }), topicRecord);
  }

  async loadTopic(name: string): Promise<TopicRecord | null> {
    return this.#checked(await this.#kv.get(["topic", name]), topicRecord);
  }

  async lastLogSeq(topic: string): Promise<number> {
    for await (const e of this.#kv.list({ prefix: ["log", topic] }, { reverse: true, limit: 1 })) {
      const seq = e.key[2];
      if (typeof seq === "number") return seq;
    }
    return 0;
  }

  async ensureTopic(record: TopicRecord): Promise<void> {
    // Checked against absence, so an existing head is never reset (that would hand out
    // sequence numbers again). Rare, so not group-committed.
    const key = ["topic", record.name];
    const res = await this.#kv.atomic().check(this.#fence).check({ key, versionstamp: null })
      .set(key, record).commit();
    if (!res.ok) await this.#checkOwner();
  }

  async #checkOwner(): Promise<void> {
    const owner = await this.#kv.get(this.#fence.key);
    if (owner.versionstamp !== this.#fence.versionstamp) throw new FencedError();
  }

  async readLog(topic: string, fromSeq: number, limit: number): Promise<StoredMessage[]> {
    const out: StoredMessage[] = [];
    if (limit <= 0) return out;
    // A segment holds many messages, so fetch few at a time; the first may begin
    // before `fromSeq`.
    const entries = this.#kv.list(
      { start: ["log", topic, fromSeq], end: ["log", topic, Number.MAX_SAFE_INTEGER] },
      { batchSize: Math.min(limit, 32) },
    );
    for await (const e of entries) {
      for (const m of this.#segment(e)) {
        if (m.seq < fromSeq) continue;
        out.push(m);
        if (out.length >= limit) return out;
      }
    }
    return out;
  }

  /**
   * Deletes the messages of a topic's log with `fromSeq <= seq < toSeq` and returns
   * their payload bytes: the segments that end in that range go, and the segment holding
   * `toSeq` (if it begins below it) is written again without its first messages. Messages
   * below `fromSeq` in a segment that ends in the range go with it (they were already
   * past).
   */
  async trimLog(
    topic: string,
    fromSeq: number,
    toSeq: number,
    head: TopicRecord,
  ): Promise<number> {
    if (head.nextSeq < toSeq) {
      throw new RangeError(`head ${head.nextSeq} below the trimmed range's end ${toSeq}`);
    }
    let bytes = 0;
    // The head goes with the first deletion, or with the rewrite if nothing else goes.
    let withHead: Mutation[] = [{ type: "set", key: ["topic", head.name], value: head }];
    const index = this.#segments.get(topic);
    // Segments written before this process started are found by listing them (once:
    // then they are gone); the ones it wrote, by the index, without reading them.
    const listedTo = Math.min(toSeq, index?.coveredFrom ?? toSeq);
    while (fromSeq < listedTo) {
      const keys: Mutation[] = [...withHead];
      for await (
        const e of this.#kv.list(
          { start: ["log", topic, fromSeq], end: ["log", topic, listedTo] },
          { limit: TRIM_BATCH, batchSize: TRIM_BATCH },
        )
      ) {
        keys.push({ type: "delete", key: e.key });
        bytes += payloadSize(e.value);
      }
      if (keys.length === withHead.length) break;
      await this.#gc.commit(keys);
      withHead = [];
      await pause(TRIM_PAUSE_MS);
    }
    while (index) {
      const gone = index.within(fromSeq, toSeq, TRIM_BATCH);
      if (gone.lastSeqs.length === 0) break;
      const keys: Mutation[] = [...withHead];
      for (const seq of gone.lastSeqs) keys.push({ type: "delete", key: ["log", topic, seq] });
      await this.#gc.commit(keys);
      withHead = [];
      // Forgotten only once deleted: a failed commit leaves them for the next pass.
      bytes += index.remove(gone.at, gone.lastSeqs.length);
      await pause(TRIM_PAUSE_MS);
    }
    for await (
      const e of this.#kv.list(
        { start: ["log", topic, toSeq], end: ["log", topic, Number.MAX_SAFE_INTEGER] },
        { limit: 1 },
      )
    ) {
      const messages = this.#segment(e);
      const rest = messages.filter((m) => m.seq >= toSeq);
      if (rest.length === messages.length || rest.length === 0) break;
      let trimmed = 0;
      for (const m of messages) if (m.seq < toSeq) trimmed += m.payload.byteLength;
      // Segments are never written again by appends (those take new keys), so this
      // rewrite races nothing.
      await this.#gc.commit([
        ...withHead,
        { type: "set", key: e.key, value: rest.map(compactMessage) },
      ]);
      bytes += trimmed;
      index?.shrank(e.key[2] as number, trimmed);
    }
    return bytes;
  }

  async payloadBytes(): Promise<number> {
    let bytes = 0;
    for (const prefix of [["log"], ["pend"], ["pending"], ["retained"], ["will"], ["inflight"]]) {
      for await (const e of this.#kv.list({ prefix }, { batchSize: 1000 })) {
        bytes += payloadSize(e.value);
      }
    }
    return bytes;
  }

  savePending(p: PendingPublish): Promise<void> {
    const settle = Promise.withResolvers<void>();
    this.savePendingWith(p, settle);
    return settle.promise;
  }

  savePendingWith(p: PendingPublish, settle: Settle<void>): void {
    // Pending PUBs are a pool: those of one atomic share a key (see #pendingPool).
    const slot = new PoolSlot(compactPending(p), pendingSize(p));
    this.#pendingSlots.set(p.id, slot);
    this.#gc.submit([{ type: "pool-add", pool: this.#pendingPool, slot }], settle);
  }

  async loadPending(): Promise<PendingPublish[]> {
    const out: PendingPublish[] = [];
    // Segments of pending PUBs (compact since version 6, objects in version 5), then the
    // single ones of older versions (each a segment of one: releasing it deletes its key).
    // A segment written again after a release is compact whatever it was.
    for await (const e of this.#kv.list({ prefix: ["pend"] })) {
      const elements = Array.isArray(e.value) ? e.value.map(pendingElement) : e.value;
      const values = this.#checked(e, pendingSegment, elements);
      if (values === null || values.length === 0) continue;
      const slots = values.map((p) => new PoolSlot(compactPending(p), pendingSize(p)));
      this.#adopt(new PoolSegment(e.key, slots, this.#pendingPool));
      out.push(...values);
    }
    for await (const e of this.#kv.list({ prefix: ["pending"] })) {
      const p = this.#checked(e, pendingPublish);
      if (p === null) continue;
      const slot = new PoolSlot(compactPending(p), pendingSize(p));
      this.#adopt(new PoolSegment(e.key, [slot], this.#pendingPool));
      out.push(p);
    }
    return out.sort((a, b) => a.id - b.id);
  }

  /** A stored segment of pending PUBs, loaded: its slots can be released. */
  #adopt(seg: PoolSegment): void {
    for (const slot of seg.slots) {
      slot.segment = seg;
      this.#pendingSlots.set((slot.value as CompactPending)[0], slot);
    }
  }

  /**
   * One operation for the message, its head and every effect. When that would exceed
   * the group committer's per-operation limits (many or long positions), the positions
   * are committed first, in operations of their own: a position at a message not yet
   * written is harmless (nothing is at or after it until the message is), whereas the
   * other order could let a subscription miss its first message. A rejected append may
   * then have written positions, but never the message or its other effects.
   */
  append(message: StoredMessage, effects?: AppendEffects): Promise<void> {
    const settle = Promise.withResolvers<void>();
    this.appendWith(message, effects, settle);
    return settle.promise;
  }

  appendWith(
    message: StoredMessage,
    effects: AppendEffects | undefined,
    settle: Settle<void>,
    deferrable = false,
  ): void {
    // No head record: the log's last entry is the topic's floor (see TopicRecord).
    const log = this.#logKey(message.topic);
    const m: Mutation[] = [
      {
        type: "append",
        log: log.key,
        seq: message.seq,
        value: compactMessage(message),
        size: messageSize(message),
        logSize: log.size,
      },
    ];
    const releasedId = effects?.releasedId;
    if (releasedId !== undefined) {
      const slot = this.#pendingSlots.get(releasedId);
      if (slot?.segment) m.push({ type: "pool-remove", slot });
    }
    const receipt = effects?.receipt;
    if (receipt) {
      m.push({ type: "set", key: ["receipt", receipt.sid, receipt.tag], value: receipt });
    }
    if (effects?.retained === "set") {
      m.push({ type: "set", key: ["retained", message.topic], value: message });
    } else if (effects?.retained === "clear") {
      m.push({ type: "delete", key: ["retained", message.topic] });
    }
    if (effects?.willOf !== undefined) m.push({ type: "delete", key: ["will", effects.willOf] });

    // The hot path (no new positions) hands the operation over without a promise.
    if (!effects?.positions?.length) {
      this.#gc.submit(m, settle, deferrable);
      return;
    }
    this.#appendWithPositions(effects.positions.map(subscriptionMutations), m).then(
      () => settle.resolve(),
      (err) => settle.reject(err),
    );
  }

  async #appendWithPositions(positions: Mutation[][], m: Mutation[]): Promise<void> {
    const all = [...positions.flat(), ...m];
    if (fits(measure(all), DEFAULT_LIMITS.maxMutations)) return await this.#gc.commit(all);
    await this.#commitInBatches(positions, DEFAULT_LIMITS.maxMutations);
    await this.#gc.commit(m);
  }

  #logKey(topic: string): LogKey {
    let log = this.#logKeys.get(topic);
    if (log === undefined) {
      if (this.#logKeys.size >= LOG_KEYS_KEPT) this.#logKeys.clear();
      const key = Object.freeze(["log", topic]);
      log = { key, size: estimateSize(key) };
      this.#logKeys.set(topic, log);
    }
    return log;
  }

  saveSubscription(r: SubscriptionRecord): Promise<void> {
    return this.#gc.commit(subscriptionMutations(r));
  }

  savePosition(r: SubscriptionRecord): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["sub", r.topic, r.subscriber], value: r }]);
  }

  savePositionFrom(topic: string, subscriber: string, source: PositionSource): Promise<void> {
    return this.#gc.commit([{ type: "latest", key: ["sub", topic, subscriber], source }]);
  }

  deleteSubscription(subscriber: string, topic: string): Promise<void> {
    return this.#gc.commit([
      { type: "delete", key: ["sub", topic, subscriber] },
      { type: "delete", key: ["subscriber", subscriber, topic] },
    ]);
  }

  async loadSubscription(subscriber: string, topic: string): Promise<SubscriptionRecord | null> {
    return this.#checked(await this.#kv.get(["sub", topic, subscriber]), subscriptionRecord);
  }

  async loadSubscriberTopics(subscriber: string): Promise<string[]> {
    const topics: string[] = [];
    for await (const e of this.#kv.list({ prefix: ["subscriber", subscriber] })) {
      if (typeof e.key[2] === "string") topics.push(e.key[2]);
    }
    return topics;
  }

  async loadTopicSubscriptions(topic: string): Promise<SubscriptionRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["sub", topic] }), subscriptionRecord);
  }

  // --- sessions ----------------------------------------------------------------------

  saveSession(r: SessionRecord): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["session", r.sid], value: r }]);
  }

  async loadSession(sid: string): Promise<SessionRecord | null> {
    return this.#checked(await this.#kv.get(["session", sid]), sessionRecord);
  }

  async loadSessions(): Promise<SessionRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["session"] }), sessionRecord);
  }

  /**
   * Deletes the session's filters, positions (found through its subscriber index),
   * in-flight entries and receipts in operations of at most {@link DELETE_BATCH}
   * mutations, one after the other, and its record in the last one: a session whose
   * deletion was interrupted still has its record, and deleting it again finishes the
   * job. Its will is left alone.
   */
  async deleteSession(sid: string): Promise<void> {
    const kv = this.#kv;
    async function* groups(): AsyncIterable<Mutation[]> {
      for (const prefix of [["filter", sid], ["inflight", sid], ["receipt", sid]]) {
        for await (const e of kv.list({ prefix }, { batchSize: DELETE_BATCH })) {
          yield [{ type: "delete", key: e.key }];
        }
      }
      for await (const e of kv.list({ prefix: ["subscriber", sid] }, { batchSize: DELETE_BATCH })) {
        const topic = e.key[2];
        const index: Mutation = { type: "delete", key: e.key };
        yield typeof topic === "string"
          ? [{ type: "delete", key: ["sub", topic, sid] }, index]
          : [index];
      }
      yield [{ type: "delete", key: ["session", sid] }];
    }
    await this.#commitInBatches(groups(), DELETE_BATCH);
  }

  saveFilter(r: FilterRecord): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["filter", r.sid, r.filter], value: r }]);
  }

  deleteFilter(sid: string, filter: string): Promise<void> {
    return this.#gc.commit([{ type: "delete", key: ["filter", sid, filter] }]);
  }

  async loadFilters(): Promise<FilterRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["filter"] }), filterRecord);
  }

  /** Deletions first, then the writes: a tag both removed and set ends up set. */
  saveInflight(
    set: InflightRecord[],
    remove: { sid: string; tag: number }[] = [],
    position?: SubscriptionRecord,
  ): Promise<void> {
    const m: Mutation[] = remove.map((r) => ({ type: "delete", key: ["inflight", r.sid, r.tag] }));
    for (const r of set) m.push({ type: "set", key: ["inflight", r.sid, r.tag], value: r });
    if (position) {
      m.push({ type: "set", key: ["sub", position.topic, position.subscriber], value: position });
    }
    return m.length === 0 ? Promise.resolve() : this.#gc.commit(m);
  }

  async loadInflight(sid: string): Promise<InflightRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["inflight", sid] }), inflightRecord);
  }

  async loadReceipt(sid: string, tag: number): Promise<ReceiptRecord | null> {
    return this.#checked(await this.#kv.get(["receipt", sid, tag]), receiptRecord);
  }

  async loadReceipts(sid: string): Promise<ReceiptRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["receipt", sid] }), receiptRecord);
  }

  deleteReceipt(sid: string, tag: number): Promise<void> {
    return this.#gc.commit([{ type: "delete", key: ["receipt", sid, tag] }]);
  }

  async loadRetained(): Promise<StoredMessage[]> {
    return await this.#collect(this.#kv.list({ prefix: ["retained"] }), storedMessage);
  }

  saveWill(r: WillRecord): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["will", r.sid], value: r }]);
  }

  deleteWill(sid: string): Promise<void> {
    return this.#gc.commit([{ type: "delete", key: ["will", sid] }]);
  }

  async loadWills(): Promise<WillRecord[]> {
    return await this.#collect(this.#kv.list({ prefix: ["will"] }), willRecord);
  }

  /**
   * Commits `groups` of mutations in consecutive operations of at most `maxMutations`
   * mutations (and within the group committer's byte limits), each awaited before the
   * next is built. A group is never split across operations.
   */
  async #commitInBatches(
    groups: Iterable<Mutation[]> | AsyncIterable<Mutation[]>,
    maxMutations: number,
  ): Promise<void> {
    let batch: Mutation[] = [];
    let size = ZERO;
    for await (const group of groups) {
      const next = plus(size, measure(group));
      if (batch.length > 0 && !fits(next, maxMutations)) {
        await this.#gc.commit(batch);
        batch = [...group];
        size = measure(group);
      } else {
        batch.push(...group);
        size = next;
      }
    }
    if (batch.length > 0) await this.#gc.commit(batch);
  }

  flush(): Promise<void> {
    return this.#gc.drain();
  }

  barrier(): Promise<void> {
    // Operations are written in the order they were submitted, so an empty one settles
    // after every one before it; its own failure is theirs, not the caller's.
    return this.#gc.commit([]).catch(() => {});
  }

  /**
   * The entry's value if it has the expected shape. Otherwise the value is reported
   * with its key and moved under ["quarantine", ...key] (kept for the operator, out of
   * the broker's way), and the read acts as if the entry did not exist.
   */
  #checked<T>(
    entry: Deno.KvEntryMaybe<unknown>,
    schema: z.ZodType<T>,
    value: unknown = entry.value,
  ): T | null {
    if (entry.versionstamp === null) return null;
    const parsed = schema.safeParse(value);
    if (parsed.success) return parsed.data;
    const id = JSON.stringify(entry.key, (_k, v) => typeof v === "bigint" ? String(v) : v);
    if (!this.#quarantined.has(id)) {
      this.#quarantined.add(id);
      log.error("Corrupt value at key {key} quarantined: {problem}", {
        key: id,
        problem: parsed.error.issues[0]?.message ?? "wrong shape",
      });
      this.#gc.commit([
        { type: "set", key: ["quarantine", ...entry.key], value: entry.value },
        { type: "delete", key: entry.key },
      ]).catch((err) =>
        log.error("Could not quarantine {key}: {error}", { key: id, error: String(err) })
      );
    }
    return null;
  }

  /**
   * The messages of one log entry: a segment (of compact messages, or of message objects
   * in schema 3), or a single message (schema 1 and 2). A damaged one is quarantined as
   * it was stored.
   */
  #segment(entry: Deno.KvEntry<unknown>): StoredMessage[] {
    if (Array.isArray(entry.value)) {
      const topic = entry.key[1] as string;
      const messages = entry.value.map((e) => segmentElement(topic, e));
      return this.#checked(entry, logSegment, messages) ?? [];
    }
    const m = this.#checked(entry, storedMessage);
    return m === null ? [] : [m];
  }

  async #collect<T>(iter: Deno.KvListIterator<unknown>, schema: z.ZodType<T>): Promise<T[]> {
    const out: T[] = [];
    for await (const e of iter) {
      const v = this.#checked(e, schema);
      if (v !== null) out.push(v);
    }
    return out;
  }

  close(): void {
    this.#kv.close();
  }
}

/**
 * An upper bound of {@link estimateSize} for a stored message, without walking it: the
 * hot path of every append. Field names, numbers, flags and the format come to at most
 * 300 bytes by that estimate; the variable parts are counted as it counts them.
 */
export function messageSize(m: StoredMessage): number {
  let n = 300 + m.topic.length * 2 + m.payload.byteLength;
  if (m.from !== undefined) n += m.from.length * 2;
  if (m.props !== undefined) n += estimateSize(m.props);
  return n;
}

/** A subscription record and its subscriber index entry. */
function subscriptionMutations(r: SubscriptionRecord): Mutation[] {
  return [
    { type: "set", key: ["sub", r.topic, r.subscriber], value: r },
    { type: "set", key: ["subscriber", r.subscriber, r.topic], value: r.createdAt },
  ];
}

/** An operation's size as the {@link GroupCommitter} estimates it. */
interface OpSize {
  count: number;
  bytes: number;
  keyBytes: number;
}

const ZERO: OpSize = { count: 0, bytes: 0, keyBytes: 0 };

function measure(mutations: Mutation[]): OpSize {
  let bytes = 0;
  let keyBytes = 0;
  for (const m of mutations) {
    if (m.type === "pool-add" || m.type === "pool-remove") {
      // As the group committer counts them: a new segment's share, or a whole rewrite.
      const k = m.type === "pool-add" ? 64 : m.slot.segment?.keySize ?? 0;
      keyBytes += k;
      bytes += k + (m.type === "pool-add" ? m.slot.size : m.slot.segment?.bytes ?? 0);
      continue;
    }
    const k = m.type === "append" ? estimateSize(m.log) + 9 : estimateSize(m.key);
    keyBytes += k;
    bytes += k +
      (m.type === "delete" ? 0 : m.type === "latest" ? m.source.maxSize : estimateSize(m.value));
  }
  return { count: mutations.length, bytes, keyBytes };
}

/** An upper bound of {@link estimateSize} of a pending PUB, without walking it. */
function pendingSize(p: PendingPublish): number {
  return 200 + 2 * (p.topic.length + p.origin.length) + p.payload.byteLength;
}

function plus(a: OpSize, b: OpSize): OpSize {
  return { count: a.count + b.count, bytes: a.bytes + b.bytes, keyBytes: a.keyBytes + b.keyBytes };
}

/** Whether the group committer accepts an operation of this size as one operation. */
function fits(size: OpSize, maxMutations: number): boolean {
  const l = DEFAULT_LIMITS;
  return size.count <= Math.min(maxMutations, l.maxMutations) && size.bytes <= l.maxBytes &&
    size.keyBytes <= l.maxKeyBytes;
}

/**
 * Payload bytes of a stored value: its own payload, that of the message it embeds, or
 * those of the messages of a log segment.
 */
function payloadSize(value: unknown): number {
  // A CompactMessage: its payload is the fourth element.
  if (Array.isArray(value) && typeof value[0] === "number") {
    return value[3] instanceof Uint8Array ? value[3].byteLength : 0;
  }
  if (Array.isArray(value)) {
    let n = 0;
    for (const v of value) n += payloadSize(v);
    return n;
  }
  const v = value as { payload?: unknown; message?: { payload?: unknown } | null } | null;
  const p = v?.payload ?? v?.message?.payload;
  return p instanceof Uint8Array ? p.byteLength : 0;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
