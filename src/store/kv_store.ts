/**
 * The broker's store on Deno KV.
 *
 * Key layout (schema version 1):
 *
 * | key                              | value                | written when                    |
 * |----------------------------------|----------------------|---------------------------------|
 * | ["meta", "schema"]               | number (1)           | first start                     |
 * | ["meta", "owner"]                | {token, pid, at}     | every start (the fencing token) |
 * | ["meta", "ids"]                  | number               | a block of ids is reserved      |
 * | ["topic", name]                  | TopicRecord          | topic created, message appended |
 * | ["log", topic, seq]              | StoredMessage        | message released to the topic   |
 * | ["pending", id]                  | PendingPublish       | PUB stored, deleted at PUBREL   |
 * | ["released", id]                 | ReleasedRecord       | PUBREL (expires after a week)   |
 * | ["sub", topic, subscriber]       | SubscriptionRecord   | SUB, PUBREC, PUBCOMP            |
 * | ["subscriber", subscriber, topic]| number (created at)  | SUB; deleted at UNSUB           |
 * | ["quarantine", ...key]           | the damaged value    | a read found the wrong shape    |
 *
 * Every write goes through the {@link GroupCommitter}, so it is fenced by the owner key
 * and batched with whatever else is being written at the same moment.
 *
 * @module
 */
import { type Fence, FencedError, GroupCommitter, type Mutation } from "./group_commit.ts";
import type { z } from "zod";
import { getLogger } from "../log.ts";
import {
  pendingPublish,
  releasedRecord,
  storedMessage,
  subscriptionRecord,
  topicRecord,
} from "./records.ts";
import type {
  BrokerStore,
  PendingPublish,
  ReleasedRecord,
  StoredMessage,
  SubscriptionRecord,
  TopicRecord,
} from "./store.ts";

const log = getLogger("store");

/** The layout version this code writes and reads. */
export const SCHEMA_VERSION = 1;

/** How long a release is remembered to answer a repeated PUBREL with PUBCOMP. */
export const RELEASED_TTL_MS = 7 * 24 * 3600 * 1000;

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

  private constructor(kv: Deno.Kv, fence: Fence) {
    this.#kv = kv;
    this.#fence = fence;
    this.#gc = new GroupCommitter(kv, fence);
  }

  /**
   * Opens (or creates) the store at `path` (a file path or ":memory:"), checks the
   * schema version and takes ownership by rewriting the owner key.
   */
  static async open(path: string): Promise<KvStore> {
    const kv = await Deno.openKv(path);
    try {
      const schema = await kv.get<number>(["meta", "schema"]);
      if (schema.value === null) {
        await kv.atomic().check(schema).set(["meta", "schema"], SCHEMA_VERSION).commit();
      } else if (schema.value !== SCHEMA_VERSION) {
        throw new SchemaError(schema.value);
      }
      const owner = { token: crypto.randomUUID(), pid: Deno.pid, at: Date.now() };
      const res = await kv.set(["meta", "owner"], owner);
      return new KvStore(kv, { key: ["meta", "owner"], versionstamp: res.versionstamp });
    } catch (err) {
      kv.close();
      throw err;
    }
  }

  /** Group-commit counters. */
  get commitStats() {
    return this.#gc.stats;
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
    return await this.#collect(
      this.#kv.list(
        { start: ["log", topic, fromSeq], end: ["log", topic, Number.MAX_SAFE_INTEGER] },
        { limit, batchSize: Math.min(limit, 1000) },
      ),
      storedMessage,
    );
  }

  async trimLog(topic: string, fromSeq: number, toSeq: number): Promise<number> {
    let bytes = 0;
    for (;;) {
      const keys: Mutation[] = [];
      for await (
        const e of this.#kv.list(
          { start: ["log", topic, fromSeq], end: ["log", topic, toSeq] },
          { limit: 500, batchSize: 500 },
        )
      ) {
        keys.push({ type: "delete", key: e.key });
        bytes += payloadSize(e.value);
      }
      if (keys.length === 0) return bytes;
      await this.#gc.commit(keys);
    }
  }

  async payloadBytes(): Promise<number> {
    let bytes = 0;
    for (const prefix of [["log"], ["pending"]]) {
      for await (const e of this.#kv.list({ prefix }, { batchSize: 1000 })) {
        bytes += payloadSize(e.value);
      }
    }
    return bytes;
  }

  savePending(p: PendingPublish): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["pending", p.id], value: p }]);
  }

  async loadPending(): Promise<PendingPublish[]> {
    return await this.#collect(this.#kv.list({ prefix: ["pending"] }), pendingPublish);
  }

  append(message: StoredMessage, head: TopicRecord, releasedId?: number): Promise<void> {
    const m: Mutation[] = [
      { type: "set", key: ["log", message.topic, message.seq], value: message },
      { type: "set", key: ["topic", head.name], value: head },
    ];
    if (releasedId !== undefined) {
      const released: ReleasedRecord = { id: releasedId, topic: message.topic, seq: message.seq };
      m.push({ type: "delete", key: ["pending", releasedId] });
      m.push({
        type: "set",
        key: ["released", releasedId],
        value: released,
        expireIn: RELEASED_TTL_MS,
      });
    }
    return this.#gc.commit(m);
  }

  async getReleased(id: number): Promise<ReleasedRecord | null> {
    return this.#checked(await this.#kv.get(["released", id]), releasedRecord);
  }

  saveSubscription(r: SubscriptionRecord): Promise<void> {
    return this.#gc.commit([
      { type: "set", key: ["sub", r.topic, r.subscriber], value: r },
      { type: "set", key: ["subscriber", r.subscriber, r.topic], value: r.createdAt },
    ]);
  }

  savePosition(r: SubscriptionRecord): Promise<void> {
    return this.#gc.commit([{ type: "set", key: ["sub", r.topic, r.subscriber], value: r }]);
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

  flush(): Promise<void> {
    return this.#gc.drain();
  }

  /**
   * The entry's value if it has the expected shape. Otherwise the value is reported
   * with its key and moved under ["quarantine", ...key] (kept for the operator, out of
   * the broker's way), and the read acts as if the entry did not exist.
   */
  #checked<T>(entry: Deno.KvEntryMaybe<unknown>, schema: z.ZodType<T>): T | null {
    if (entry.versionstamp === null) return null;
    const parsed = schema.safeParse(entry.value);
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

function payloadSize(value: unknown): number {
  const p = (value as { payload?: unknown } | null)?.payload;
  return p instanceof Uint8Array ? p.byteLength : 0;
}
