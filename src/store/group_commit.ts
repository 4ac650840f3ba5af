/**
 * Group commit for Deno KV.
 *
 * Every Deno KV commit is fsync'ed, so one commit per message caps the broker at a few
 * thousand commits per second, while one atomic of many mutations costs about the same
 * as an atomic of one. The {@link GroupCommitter} therefore gathers the mutations of
 * every operation submitted while the previous atomic is in flight, writes them as one
 * atomic (within Deno KV's per-atomic limits), and resolves each operation's promise
 * only after the atomic that carries it has committed. An operation is all-or-nothing:
 * its mutations never straddle two atomics.
 *
 * Every atomic carries one check on the owner key written at start-up (the fencing
 * token), so a second process that took the store over makes our commits fail instead
 * of interleaving with its own.
 *
 * By default an atomic starts as soon as the previous one has committed, whatever is
 * queued: latency first. With a commit delay ({@link CommitPacing}) a small queue waits
 * until the delay has passed since the previous atomic began, so that the operations
 * arriving meanwhile share its fsync: fewer commits and less CPU at moderate rates, for
 * up to the delay (plus a timer's lateness) of latency. A quiet committer, a queue of
 * {@link PACED_BATCH} operations or more, and {@link GroupCommitter.drain} never wait.
 * A queue of deferrable operations only (nobody waits for them but a client that goes
 * on meanwhile: see {@link GroupCommitter.submit}) waits the same way for the stream
 * delay, which is on by default; one operation that is not deferrable ends that wait.
 *
 * Appends to a log ({@link Mutation} `append`) are not written one key each: the
 * appends of one log that share an atomic become one value, a segment (an array of the
 * appended values in sequence order) under `[...log, seq of its last value]`, split
 * where a segment would pass {@link MAX_VALUE_BYTES}. Deno KV's cost is mostly per key
 * written, so a batch of a hundred messages to one topic costs about as much as one.
 * A reader finds the segment holding sequence number `n` as the first key at or after
 * `[...log, n]`; a value written alone under `[...log, n]` is a segment of one.
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type { Settle } from "../ordered_replies.ts";
import { CommitTimes } from "./commit_times.ts";

/** One write of an operation. */
export type Mutation =
  | { type: "set"; key: Deno.KvKey; value: unknown; expireIn?: number }
  | { type: "delete"; key: Deno.KvKey }
  | LatestMutation
  | PoolAddMutation
  | PoolRemoveMutation
  | AppendMutation;

/**
 * `slot`'s value added to `pool`: the values a pool gains in one atomic are written as one
 * key, a segment (see {@link PoolSegment}).
 */
export interface PoolAddMutation {
  type: "pool-add";
  pool: Pool;
  slot: PoolSlot;
}

/**
 * `slot`'s value removed from its pool: its segment is written again without it (and
 * without the others removed in the same atomic), or deleted when nothing is left.
 * Only for a slot whose addition has committed.
 */
export interface PoolRemoveMutation {
  type: "pool-remove";
  slot: PoolSlot;
}

/**
 * A set of values that are added and removed one by one but stored many to a key: the
 * pending PUBs of the JSON-line protocol, each removed by the atomic that releases it.
 * The pool names the keys of its segments and hears when values leave for good.
 */
export interface Pool {
  /** The key of a new segment whose first value is `first`'s; never used before. */
  newKey(first: PoolSlot): Deno.KvKey;
  /** Called once the atomic that removed `slot` committed. */
  removed?(slot: PoolSlot): void;
  /** Called when the atomic that was to add `slot` failed: it is in no segment. */
  unadded?(slot: PoolSlot): void;
}

/** A value in a {@link Pool}, and where it is stored. */
export class PoolSlot {
  readonly value: unknown;
  /** Its estimated size ({@link estimateSize}). */
  readonly size: number;
  /** The segment holding it: set when the atomic that added it commits. */
  segment: PoolSegment | null = null;

  constructor(value: unknown, size = estimateSize(value)) {
    this.value = value;
    this.size = size;
  }
}

/** One key of a pool: the values of the slots it still holds, in the order they came. */
export class PoolSegment {
  readonly key: Deno.KvKey;
  readonly pool: Pool | undefined;
  slots: PoolSlot[];
  /** The estimated size of its value. */
  bytes: number;
  /** The estimated size of its key. */
  readonly keySize: number;

  constructor(key: Deno.KvKey, slots: PoolSlot[], pool?: Pool) {
    this.key = key;
    this.keySize = estimateSize(key);
    this.pool = pool;
    this.slots = slots;
    let bytes = 4;
    for (const s of slots) bytes += s.size;
    this.bytes = bytes;
  }
}

/**
 * `key` set to whatever `source` holds when the atomic carrying it is built, not when it
 * was submitted. For state that many operations rewrite (a subscriber's position,
 * moved by every acknowledgement of a window): each operation submits the same source,
 * the atomic takes one snapshot for all of them, and an operation is settled only
 * after an atomic holding its change (or a later state) has committed.
 */
export interface LatestMutation {
  type: "latest";
  key: Deno.KvKey;
  source: Snapshot;
}

/** What a {@link LatestMutation} writes. */
export interface Snapshot {
  /**
   * The value to store now; called once for each atomic that carries the source, as that
   * atomic is built. Until the call, an operation already submitted for the source will
   * write every change made since: a source may let later changes wait on it.
   */
  snapshot(): unknown;
  /** An upper bound of {@link estimateSize} of any snapshot: checked at submission. */
  readonly maxSize: number;
}

/**
 * `value` appended to the log under the key prefix `log` with sequence number `seq`
 * (strictly increasing per log): written in a segment with the other appends of its
 * atomic to the same log (see the module's documentation).
 */
export interface AppendMutation {
  type: "append";
  log: Deno.KvKey;
  seq: number;
  value: unknown;
  /**
   * Estimated size of `value` (at least what {@link estimateSize} gives); computed by
   * {@link GroupCommitter.commit} when absent.
   */
  size?: number;
  /** Estimated size of `log` ({@link estimateSize}); computed when absent. */
  logSize?: number;
}

/** Deno KV's per-atomic limits (measured on Deno 2.9.6), with headroom. */
export interface BatchLimits {
  /** Mutations per atomic; Deno KV allows 1,000. */
  maxMutations: number;
  /** Estimated bytes of keys and values per atomic; Deno KV allows 819,200. */
  maxBytes: number;
  /** Estimated bytes of keys per atomic; Deno KV allows 81,920. */
  maxKeyBytes: number;
}

/** Limits that stay inside Deno KV's with room for estimation error. */
export const DEFAULT_LIMITS: BatchLimits = {
  maxMutations: 1000,
  maxBytes: 700_000,
  maxKeyBytes: 70_000,
};

/** Largest value accepted (estimated), under Deno KV's 65,536 bytes. */
export const MAX_VALUE_BYTES = 65_000;

/** Raised when the owner key changed: another process took this store over. */
export class FencedError extends Error {
  constructor() {
    super("the store's owner key changed: another broker process has taken over this data");
    this.name = "FencedError";
  }
}

/** How the committer spaces its atomics (PostgreSQL's `commit_delay` is the same idea). */
export interface CommitPacing {
  /**
   * Least milliseconds between the starts of two atomics while fewer than
   * {@link PACED_BATCH} operations wait; 0 starts each at once.
   */
  delayMs: number;
  /** The same while every queued operation is deferrable; 0 starts each at once. */
  streamDelayMs?: number;
}

/** No pacing: an atomic starts as soon as the previous one has committed. */
export const NO_PACING: CommitPacing = { delayMs: 0 };

/** A queue this long starts its atomic at once, paced or not: it already shares one. */
export const PACED_BATCH = 32;

/** The fencing token every atomic checks. */
export interface Fence {
  key: Deno.KvKey;
  versionstamp: string | null;
}

interface Op {
  mutations: Mutation[];
  bytes: number;
  keyBytes: number;
  settle: Settle<void>;
  /** The pool segments its removals rewrite. */
  segments: PoolSegment[] | undefined;
  /** The sources of its `latest` mutations. */
  sources: Snapshot[] | undefined;
  deferrable: boolean;
}

/**
 * Told, after each commit, of every log segment it wrote: `values` in sequence order,
 * from `firstSeq` to `lastSeq` (the key's last part).
 */
export type SegmentObserver = (
  log: Deno.KvKey,
  firstSeq: number,
  lastSeq: number,
  values: unknown[],
) => void;

/** Statistics for benchmarks and the admin API. */
export interface CommitStats {
  atomics: number;
  operations: number;
  mutations: number;
  /** Atomics that took {@link GroupCommitter.slowCommitMs} or longer. */
  slow: number;
}

/**
 * A commit this long (ms) is logged as slow: every acknowledgement behind it waits for
 * the disk. A healthy local disk commits in about a millisecond.
 */
export const SLOW_COMMIT_MS = 200;

/** Least milliseconds between two warnings of slow commits; those between are counted. */
const SLOW_WARNING_INTERVAL_MS = 10_000;

const log = getLogger("store");

/**
 * Gathers operations into shared atomics.
 *
 * @example
 * ```ts
 * const kv = await Deno.openKv(":memory:");
 * const gc = new GroupCommitter(kv, { key: ["owner"], versionstamp: null });
 * await gc.commit([{ type: "set", key: ["a"], value: 1 }]);
 * kv.close();
 * ```
 */
export class GroupCommitter {
  #kv: Deno.Kv;
  #fence: Fence;
  #limits: BatchLimits;
  #queue: Op[] = [];
  #running: Promise<void> | null = null;
  #stats: CommitStats = { atomics: 0, operations: 0, mutations: 0, slow: 0 };
  #times = new CommitTimes();
  /** Slow commits since the last warning, and the longest of them. */
  #slowUnlogged = 0;
  #slowestUnlogged = 0;
  #lastSlowWarning = Number.NEGATIVE_INFINITY;
  /** See {@link SLOW_COMMIT_MS}. */
  slowCommitMs = SLOW_COMMIT_MS;
  #onSegment: SegmentObserver | undefined;
  #delayMs: number;
  #streamDelayMs: number;
  /** Queued operations that are not deferrable. */
  #urgent = 0;
  /** When the last atomic began (`performance.now()`), read only when paced. */
  #lastStart = Number.NEGATIVE_INFINITY;
  /** Starts the loop once a paced queue's wait is over. */
  #paceTimer: ReturnType<typeof setTimeout> | undefined;
  /** How many {@link drain} calls are running: while any is, nothing waits. */
  #draining = 0;

  constructor(
    kv: Deno.Kv,
    fence: Fence,
    limits: BatchLimits = DEFAULT_LIMITS,
    onSegment?: SegmentObserver,
    pacing: CommitPacing = NO_PACING,
  ) {
    this.#kv = kv;
    this.#fence = fence;
    this.#limits = limits;
    this.#onSegment = onSegment;
    this.#delayMs = pacing.delayMs;
    this.#streamDelayMs = pacing.streamDelayMs ?? 0;
  }

  /** Counters since start. */
  get stats(): Readonly<CommitStats> {
    return this.#stats;
  }

  /** How long each atomic took, from its start to Deno KV's answer (fsync included). */
  get times(): CommitTimes {
    return this.#times;
  }

  /**
   * Queues an operation; resolves once an atomic carrying all its mutations has
   * committed, rejects if that atomic failed (nothing of the operation was written).
   */
  commit(mutations: Mutation[]): Promise<void> {
    const settle = Promise.withResolvers<void>();
    this.submit(mutations, settle);
    return settle.promise;
  }

  /**
   * {@link commit} told through `settle` instead of a promise (never synchronously,
   * also when the operation is refused at once). `deferrable`: no one waits for this
   * operation but a client that goes on meanwhile (a publisher with more messages in
   * flight, whose message its subscribers already have), so it may wait for the stream
   * delay ({@link CommitPacing.streamDelayMs}).
   */
  submit(mutations: Mutation[], settle: Settle<void>, deferrable = false): void {
    let bytes = 0;
    let keyBytes = 0;
    let segments: PoolSegment[] | undefined;
    let sources: Snapshot[] | undefined;
    // Indexed loops here and below: an iterator's result objects are allocated unless
    // the optimising compiler removes them, and this runs for every operation.
    for (let i = 0; i < mutations.length; i++) {
      const m = mutations[i] as Mutation;
      const k = m.type === "append"
        ? (m.logSize ?? estimateSize(m.log)) + 9
        : m.type === "pool-add"
        ? POOL_KEY_BYTES
        : m.type === "pool-remove"
        ? m.slot.segment?.keySize ?? 0
        : estimateSize(m.key);
      keyBytes += k;
      if (m.type === "delete") {
        bytes += k;
        continue;
      }
      if (m.type === "pool-remove") {
        // Its segment's rewrite is counted once per atomic, by #takeBatch.
        if (m.slot.segment === null) {
          refuseLater(settle, new Error("a pool value removed before its addition committed"));
          return;
        }
        (segments ??= []).push(m.slot.segment);
        continue;
      }
      if (m.type === "latest") {
        // Written once per atomic however many operations carry it: counted by #takeBatch.
        if (m.source.maxSize > MAX_VALUE_BYTES) {
          const err = new RangeError(`value too large for one key: ~${m.source.maxSize} bytes`);
          refuseLater(settle, err);
          return;
        }
        (sources ??= []).push(m.source);
        continue;
      }
      // An append may come with its size already estimated (see AppendMutation.size).
      const v = m.type === "append"
        ? (m.size ??= estimateSize(m.value))
        : m.type === "pool-add"
        ? m.slot.size
        : estimateSize(m.value);
      // Deno KV refuses values over 64 KiB, and one refused value fails the whole atomic:
      // refuse it here so that only its own operation fails.
      if (v > MAX_VALUE_BYTES) {
        refuseLater(settle, new RangeError(`value too large for one key: ~${v} bytes`));
        return;
      }
      bytes += k + v;
    }
    const l = this.#limits;
    if (mutations.length > l.maxMutations || bytes > l.maxBytes || keyBytes > l.maxKeyBytes) {
      refuseLater(
        settle,
        new RangeError(
          `operation too large for one atomic: ${mutations.length} mutations, ~${bytes} bytes`,
        ),
      );
      return;
    }
    this.#queue.push({ mutations, bytes, keyBytes, settle, segments, sources, deferrable });
    if (!deferrable) this.#urgent++;
    this.#start();
  }

  /**
   * Resolves when every operation submitted so far has been settled; a paced queue is
   * written at once.
   */
  async drain(): Promise<void> {
    this.#draining++;
    try {
      this.#start();
      while (this.#running) await this.#running;
    } finally {
      this.#draining--;
    }
  }

  /**
   * Starts the loop unless it runs (it takes what is queued): on a microtask, so that
   * everything submitted in the same turn joins the atomic, or, when paced, once the
   * wait is over.
   */
  #start(): void {
    if (this.#running || this.#queue.length === 0) return;
    const wait = this.#wait();
    if (wait > 0) {
      this.#paceTimer ??= setTimeout(() => {
        this.#paceTimer = undefined;
        this.#start();
      }, wait);
      return;
    }
    if (this.#paceTimer !== undefined) {
      clearTimeout(this.#paceTimer);
      this.#paceTimer = undefined;
    }
    this.#running = Promise.resolve().then(() => this.#run());
  }

  /** Milliseconds the queue should still wait before its atomic starts (≤ 0: none). */
  #wait(): number {
    if (this.#draining > 0 || this.#queue.length >= PACED_BATCH) return 0;
    const delay = this.#urgent > 0 ? this.#delayMs : Math.max(this.#delayMs, this.#streamDelayMs);
    return delay === 0 ? 0 : this.#lastStart + delay - performance.now();
  }

  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        if (this.#delayMs > 0 || this.#streamDelayMs > 0) {
          if (this.#wait() > 0) break; // started again by #start below
          this.#lastStart = performance.now();
        }
        const batch = this.#takeBatch();
        await this.#write(batch);
      }
    } finally {
      this.#running = null;
      this.#start();
    }
  }

  #takeBatch(): Op[] {
    const l = this.#limits;
    let count = 0;
    let bytes = 0;
    let keyBytes = 0;
    let n = 0;
    // A pool segment, or a `latest` source, is written once per atomic, however many of
    // the atomic's operations name it: its size counts once.
    let shared: Set<PoolSegment | Snapshot> | null = null;
    const queue = this.#queue;
    for (let i = 0; i < queue.length; i++) {
      const op = queue[i] as Op;
      let extra = 0;
      if (op.segments) {
        for (const seg of op.segments) if (!shared?.has(seg)) extra += seg.bytes;
      }
      if (op.sources) {
        for (const src of op.sources) if (!shared?.has(src)) extra += src.maxSize;
      }
      if (
        n > 0 &&
        (count + op.mutations.length > l.maxMutations || bytes + op.bytes + extra > l.maxBytes ||
          keyBytes + op.keyBytes > l.maxKeyBytes)
      ) break;
      if (op.segments) { for (const seg of op.segments) (shared ??= new Set()).add(seg); }
      if (op.sources) { for (const src of op.sources) (shared ??= new Set()).add(src); }
      count += op.mutations.length;
      bytes += op.bytes + extra;
      keyBytes += op.keyBytes;
      if (!op.deferrable) this.#urgent--;
      n++;
    }
    return this.#queue.splice(0, n);
  }

  async #write(batch: Op[]): Promise<void> {
    // Within one atomic only the last write of a key matters (positions are rewritten
    // by every acknowledgement), so later mutations replace earlier ones.
    const merged = new Map<string, Mutation>();
    let logs: Map<string, AppendMutation[]> | null = null;
    let written: Segment[] | null = null;
    let added: Map<Pool, PoolSlot[]> | null = null;
    let removed: Map<PoolSegment, Set<PoolSlot>> | null = null;
    for (let i = 0; i < batch.length; i++) {
      const mutations = (batch[i] as Op).mutations;
      for (let j = 0; j < mutations.length; j++) {
        const m = mutations[j] as Mutation;
        if (m.type === "pool-add") {
          added ??= new Map();
          const slots = added.get(m.pool);
          if (slots) slots.push(m.slot);
          else added.set(m.pool, [m.slot]);
          continue;
        }
        if (m.type === "pool-remove") {
          const seg = m.slot.segment as PoolSegment;
          removed ??= new Map();
          const gone = removed.get(seg);
          if (gone) gone.add(m.slot);
          else removed.set(seg, new Set([m.slot]));
          continue;
        }
        if (m.type === "append") {
          logs ??= new Map();
          const id = logId(m.log);
          const appends = logs.get(id);
          if (appends) appends.push(m);
          else logs.set(id, [m]);
          continue;
        }
        const id = keyId(m.key);
        merged.delete(id); // keep insertion order = order of the last write
        merged.set(id, m);
      }
    }
    if (logs) {
      written = [];
      for (const appends of logs.values()) {
        for (const s of segments(appends)) {
          const id = keyId(s.key);
          merged.delete(id);
          merged.set(id, s);
          written.push(s);
        }
      }
    }
    const created = added ? poolSegments(added, merged) : null;
    // Each rewritten segment's remaining slots, kept for after the commit.
    let kept: Map<PoolSegment, PoolSlot[]> | null = null;
    if (removed) {
      kept = new Map();
      for (const [seg, gone] of removed) {
        const id = keyId(seg.key);
        const left = seg.slots.filter((s) => !gone.has(s));
        kept.set(seg, left);
        merged.delete(id);
        merged.set(
          id,
          left.length > 0
            ? { type: "set", key: seg.key, value: left.map((s) => s.value) }
            : { type: "delete", key: seg.key },
        );
      }
    }
    const atomic = this.#kv.atomic().check(this.#fence);
    for (const m of merged.values()) {
      if (m.type === "set") {
        atomic.set(m.key, m.value, m.expireIn ? { expireIn: m.expireIn } : undefined);
      } else if (m.type === "latest") {
        atomic.set(m.key, m.source.snapshot());
      } else if (m.type === "delete") {
        atomic.delete(m.key);
      }
    }
    let error: unknown = null;
    const started = performance.now();
    try {
      const res = await atomic.commit();
      if (!res.ok) error = new FencedError();
    } catch (err) {
      error = err;
    }
    const took = performance.now() - started;
    this.#times.record(took);
    if (took >= this.slowCommitMs) this.#slow(took, merged.size);
    if (error) {
      if (added) { for (const [pool, slots] of added) for (const s of slots) pool.unadded?.(s); }
      for (const op of batch) op.settle.reject(error);
      return;
    }
    this.#stats.atomics++;
    this.#stats.operations += batch.length;
    this.#stats.mutations += merged.size;
    if (written && this.#onSegment) {
      for (const s of written) this.#onSegment(s.log, s.firstSeq, s.lastSeq, s.value);
    }
    if (created) { for (const seg of created) for (const slot of seg.slots) slot.segment = seg; }
    if (removed) {
      for (const [seg, gone] of removed) {
        seg.slots = kept?.get(seg) as PoolSlot[];
        for (const s of gone) {
          seg.bytes -= s.size;
          s.segment = null;
          seg.pool?.removed?.(s);
        }
      }
    }
    for (const op of batch) op.settle.resolve();
  }

  /** Counts a slow commit, and logs it unless a warning was logged in the last 10 s. */
  #slow(ms: number, keys: number): void {
    this.#stats.slow++;
    this.#slowUnlogged++;
    this.#slowestUnlogged = Math.max(this.#slowestUnlogged, ms);
    const now = performance.now();
    if (now - this.#lastSlowWarning < SLOW_WARNING_INTERVAL_MS) return;
    log.warning(
      "Store commit took {ms} ms ({keys} keys): acknowledgements wait for the disk; " +
        "{count} commit(s) of {threshold} ms or more since the last such warning, " +
        "the slowest {slowest} ms",
      {
        ms: Math.round(ms),
        keys,
        count: this.#slowUnlogged,
        threshold: this.slowCommitMs,
        slowest: Math.round(this.#slowestUnlogged),
      },
    );
    this.#lastSlowWarning = now;
    this.#slowUnlogged = 0;
    this.#slowestUnlogged = 0;
  }
}

/** Estimated bytes of a pool segment's key. */
const POOL_KEY_BYTES = 64;

/**
 * The values added to each pool in one atomic as new segments (split where one would pass
 * {@link MAX_VALUE_BYTES}), put into `merged` as writes; the segments, for their slots
 * once the atomic commits.
 */
function poolSegments(
  added: Map<Pool, PoolSlot[]>,
  merged: Map<string, Mutation>,
): PoolSegment[] {
  const out: PoolSegment[] = [];
  for (const [pool, slots] of added) {
    let chunk: PoolSlot[] = [];
    let bytes = 4;
    const close = () => {
      const seg = new PoolSegment(pool.newKey(chunk[0] as PoolSlot), chunk, pool);
      merged.set(keyId(seg.key), {
        type: "set",
        key: seg.key,
        value: chunk.map((s) => s.value),
      });
      out.push(seg);
    };
    for (const slot of slots) {
      if (chunk.length > 0 && bytes + slot.size > MAX_VALUE_BYTES) {
        close();
        chunk = [];
        bytes = 4;
      }
      chunk.push(slot);
      bytes += slot.size;
    }
    close();
  }
  return out;
}

/**
 * One log's appends of an atomic as segment writes: in sequence order, each segment
 * under the sequence number of its last value and within {@link MAX_VALUE_BYTES}.
 */
interface Segment {
  type: "set";
  key: Deno.KvKey;
  value: unknown[];
  log: Deno.KvKey;
  firstSeq: number;
  lastSeq: number;
}

function segments(appends: AppendMutation[]): Segment[] {
  // Appends arrive in sequence order from the topic that owns the log; sorting only
  // guards against a caller that submits them otherwise.
  if (!isSorted(appends)) appends = appends.toSorted((a, b) => a.seq - b.seq);
  const out: Segment[] = [];
  const log = appends[0]!.log;
  let values: unknown[] = [];
  let bytes = 4;
  let first = 0;
  let last = 0;
  const close = () =>
    out.push({
      type: "set",
      key: [...log, last],
      value: values,
      log,
      firstSeq: first,
      lastSeq: last,
    });
  for (let i = 0; i < appends.length; i++) {
    const a = appends[i] as AppendMutation;
    const size = a.size ?? estimateSize(a.value);
    if (values.length > 0 && bytes + size > MAX_VALUE_BYTES) {
      close();
      values = [];
      bytes = 4;
    }
    if (values.length === 0) first = a.seq;
    values.push(a.value);
    bytes += size;
    last = a.seq;
  }
  close();
  return out;
}

function isSorted(appends: AppendMutation[]): boolean {
  for (let i = 1; i < appends.length; i++) {
    if (appends[i]!.seq <= appends[i - 1]!.seq) return false;
  }
  return true;
}

/** An unambiguous string for a key, to find repeated writes of one key in a batch. */
/**
 * {@link keyId} of a log's key, remembered per key array: a topic hands every append
 * the same array (see KvStore), so its id is computed once, not once per message.
 */
const logIds = new WeakMap<Deno.KvKey, string>();

function logId(log: Deno.KvKey): string {
  let id = logIds.get(log);
  if (id === undefined) {
    id = keyId(log);
    // Only a frozen array can be trusted to name the same log later.
    if (Object.isFrozen(log)) logIds.set(log, id);
  }
  return id;
}

function keyId(key: Deno.KvKey): string {
  // Strings and finite numbers only (nearly every key): JSON tells them apart.
  let plain = true;
  for (let i = 0; i < key.length; i++) {
    const part = key[i];
    if (typeof part !== "string" && (typeof part !== "number" || !Number.isFinite(part))) {
      plain = false;
      break;
    }
  }
  if (plain) return JSON.stringify(key);
  let s = "";
  for (const part of key) {
    // Strings are JSON-quoted (so no separator inside them is ambiguous); the other part
    // types carry a type letter and contain neither quotes nor separators.
    if (typeof part === "string") s += "s" + JSON.stringify(part);
    else if (part instanceof Uint8Array) s += "u" + part.join(",");
    else s += (typeof part)[0] + String(part);
    s += "|";
  }
  return s;
}

/**
 * A conservative estimate of a key's or value's serialised size: strings count two
 * bytes a character (V8 may store them as UTF-16), byte arrays their length.
 */
export function estimateSize(value: unknown): number {
  switch (typeof value) {
    case "string":
      return 4 + value.length * 2;
    case "number":
    case "bigint":
      return 9;
    case "boolean":
    case "undefined":
      return 1;
    case "object": {
      if (value === null) return 1;
      if (value instanceof Uint8Array) return 8 + value.byteLength;
      let n = 4;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) n += estimateSize(value[i]);
        return n;
      }
      const o = value as Record<string, unknown>;
      for (const k in o) {
        if (Object.hasOwn(o, k)) n += 4 + k.length * 2 + estimateSize(o[k]);
      }
      return n;
    }
    default:
      return 16;
  }
}

/** Rejects on a microtask: an operation is never settled inside the call that queued it. */
function refuseLater(settle: Settle<void>, err: Error): void {
  queueMicrotask(() => settle.reject(err));
}
