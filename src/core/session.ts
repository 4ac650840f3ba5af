/**
 * A session with topic filters and a window of messages in flight: what an MQTT client
 * id is in the core. It knows packet identifiers ("tags") but no wire format.
 *
 * Each topic a filter of the session reaches is a stream with a durable position in
 * that topic's log (the same `["sub", topic, sid]` record a JSON-line consumer has).
 * The session reads the streams round robin and keeps at most `window` QoS 1/2 messages
 * in flight across all of them (MQTT Receive Maximum). Per topic, messages go out in
 * log order; acknowledgements may come in any order, and the position is the lowest
 * sequence number not yet completed.
 *
 * A persistent session (`durable`) writes each QoS 1/2 message's tag to the store
 * before it is sent (`["inflight", sid, tag]`, one atomic per batch), the PUBREC of a
 * QoS 2 message before its PUBREL goes out, and its position with each completion. So
 * after a reconnect, and after a broker restart too, unacknowledged messages are sent
 * again with DUP and their original packet identifiers, releases are sent again, and a
 * message completed is never sent again.
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type {
  FilterRecord,
  InflightRecord,
  Qos,
  StoredMessage,
  SubscriptionRecord,
} from "../store/store.ts";
import type { Broker } from "./broker.ts";
import { matches, parseShare } from "./filters.ts";
import type { Topic, Wakeable } from "./topic.ts";

const log = getLogger("session");

/** A filter of a session, as the broker's filter index holds it. */
export interface FilterEntry extends FilterRecord {
  /** Whether positions it creates are stored (the session is persistent). */
  durable: boolean;
}

/** A message as it is to be sent to this session. */
export interface Outbound {
  message: StoredMessage;
  qos: Qos;
  /** The RETAIN flag to send. */
  retain: boolean;
  /** Subscription identifiers of the matching filters (MQTT 5). */
  subscriptionIds: number[];
}

/** The protocol side of a session: how to put a message or a release on the wire. */
export interface SessionOutput {
  /** Sends `out`; `tag` is null for QoS 0; `dup` on a resend. */
  publish(out: Outbound, tag: number | null, dup: boolean): void;
  /** Sends the release (PUBREL) of `tag`. */
  release(tag: number): void;
  /** The session cannot go on with this connection (its progress could not be stored). */
  fail(reason: string): void;
  /**
   * False while the connection has much output not yet written: the session then
   * sends nothing more until `whenReady` resolves (messages wait in the log, so a
   * reader slower than its publishers is not disconnected, whatever the QoS).
   */
  ready?(): boolean;
  whenReady?(): Promise<void>;
  /** Bytes of messages that may be queued now; one pass of the pump stays within it. */
  budget?(): number;
}

interface Stream extends Wakeable {
  topic: Topic;
  /** Durable position: lowest sequence number not completed. */
  position: number;
  /** Next sequence number to read. */
  next: number;
  /** Sequence numbers read and sent, not yet completed, ascending. */
  outstanding: number[];
  /** Tags of completed messages above the position, whose entries are still stored. */
  doneTags: Map<number, number>;
  reading: boolean;
  /** Messages read ahead from the store (a page), not yet handled. */
  ahead: StoredMessage[];
  createdAt: number;
}

interface Inflight {
  tag: number;
  /** null for a retained message (not part of a stream). */
  topic: string | null;
  seq: number;
  qos: 1 | 2;
  phase: "sent" | "received";
  out: Outbound;
  /** Set once the tag is stored (persistent sessions); sends wait for it. */
  stored: boolean;
}

/** Messages one pass of the pump sends at most before it lets the output catch up. */
const PUMP_BATCH = 256;

/** Messages read from the store at once by a stream behind the topic's memory. */
const READ_PAGE = 256;

/** Largest MQTT packet identifier. */
const MAX_TAG = 65_535;

/**
 * The empty tag set sessions start with (most never lend or park a tag): never added
 * to, replaced by a set of their own on first use. An idle connection's session holds
 * no collection it does not need.
 */
const NO_TAGS: Set<number> = new Set();
/** The same for the streams and the messages in flight: never added to. */
const NO_STREAMS = new Map<string, never>();
const NO_INFLIGHT = new Map<number, never>();

/** The live state of one filter session. Created by the broker's session registry. */
export class Session {
  readonly sid: string;
  readonly durable: boolean;
  user: string | null;
  /** Seconds the session outlives its connection. */
  expirySec: number;
  /** When its last connection ended; null while one is attached. */
  disconnectedAt: number | null = null;
  #broker: Broker;
  #output: SessionOutput | null = null;
  #window = 1;
  // Shared empty maps until the session holds a stream or a message in flight (see
  // NO_STREAMS): most idle connections never do.
  #streams: Map<string, Stream> = NO_STREAMS;
  #inflight: Map<number, Inflight> = NO_INFLIGHT;
  #retainedQueue: Outbound[] = [];
  #nextTag = 1;
  #pumpScheduled = false;
  #waitingReady = false;
  /**
   * Sends waiting for their in-flight entries to commit, chained so that every batch
   * goes out in the order it was read (a QoS 0 message never overtakes a QoS 1/2 one
   * read before it on the same topic).
   */
  #sendChain: Promise<void> | null = null;
  #sendsWaiting = 0;
  #ended = false;
  #broken = false;
  /** A group's filters (its members'); a session's own are read from the filter index. */
  #filtersFor: ((topic: string) => FilterEntry[]) | undefined;
  #checkAcl: boolean;
  #filterCache: Map<string, { version: number; entries: FilterEntry[] }> | undefined;
  /**
   * Tags of completed messages still stored as `done` (above a position): not reused
   * until the position passes them and their entries are deleted.
   */
  #parked: Set<number> = NO_TAGS;
  /** Tags lent out for messages of shared groups this session is a member of. */
  #lent: Set<number> = NO_TAGS;
  #receipts: Set<number> | undefined;

  constructor(
    broker: Broker,
    sid: string,
    options: {
      durable: boolean;
      user: string | null;
      expirySec: number;
      /** The filters matching a topic; default: this session's own (a group's are its members'). */
      filtersFor?: (topic: string) => FilterEntry[];
      /** Check each topic against the ACL for `user` (default true; groups have no user). */
      checkAcl?: boolean;
    },
  ) {
    this.#broker = broker;
    this.sid = sid;
    this.durable = options.durable;
    this.user = options.user;
    this.expirySec = options.expirySec;
    this.#checkAcl = options.checkAcl ?? true;
    this.#filtersFor = options.filtersFor;
  }

  /**
   * The filters matching `topic`: a group's members', or a session's own (its shared ones
   * are served by their groups).
   */
  #filtersMatching(topic: string): FilterEntry[] {
    if (this.#filtersFor) return this.#filtersFor(topic);
    return this.#broker.filterIndex.entriesOf(this.sid).filter((f) =>
      !parseShare(f.filter) && matches(f.filter, topic)
    );
  }

  /** Messages sent and not yet acknowledged. */
  get inflightCount(): number {
    return this.#inflight.size;
  }

  /** Topics this session has a stream (a position) in. */
  get topics(): string[] {
    return [...this.#streams.keys()];
  }

  get ended(): boolean {
    return this.#ended;
  }

  /**
   * True when its memory may no longer match the store (a write failed): the registry
   * drops it and the next connection reloads the session from the store.
   */
  get broken(): boolean {
    return this.#broken;
  }

  get connected(): boolean {
    return this.#output !== null;
  }

  /** Inbound QoS 2 packet identifiers stored and awaiting PUBREL (made on first use). */
  get receipts(): Set<number> {
    return this.#receipts ??= new Set();
  }

  #ownStreams(): Map<string, Stream> {
    if (this.#streams === NO_STREAMS) this.#streams = new Map();
    return this.#streams;
  }

  #ownInflight(): Map<number, Inflight> {
    if (this.#inflight === NO_INFLIGHT) this.#inflight = new Map();
    return this.#inflight;
  }

  #park(tag: number): void {
    if (this.#parked === NO_TAGS) this.#parked = new Set();
    this.#parked.add(tag);
  }

  /**
   * Rebuilds a persistent session from the store: positions, messages in flight and
   * inbound receipts. Called once, before the first {@link attach}.
   */
  async load(): Promise<void> {
    const store = this.#broker.store;
    for (const r of await store.loadReceipts(this.sid)) this.receipts.add(r.tag);
    const entries = await store.loadInflight(this.sid);
    const byTopic = new Map<string, InflightRecord[]>();
    for (const e of entries) {
      const list = byTopic.get(e.topic) ?? [];
      list.push(e);
      byTopic.set(e.topic, list);
    }
    const stale: number[] = [];
    for (const name of await store.loadSubscriberTopics(this.sid)) {
      const rec = await store.loadSubscription(this.sid, name);
      if (!rec) continue;
      const topic = await this.#broker.topic(name);
      const stream = this.#addStream(topic, rec.position, rec.createdAt);
      const mine = (byTopic.get(name) ?? []).filter((e) => !e.message).sort((a, b) =>
        a.seq - b.seq
      );
      byTopic.delete(name);
      for (const e of mine) {
        if (e.seq < stream.position) {
          stale.push(e.tag); // completed; its deletion did not land
          continue;
        }
        stream.next = Math.max(stream.next, e.seq + 1);
        if (e.phase === "done") {
          stream.doneTags.set(e.seq, e.tag);
          this.#park(e.tag);
          continue;
        }
        const m = await topic.read(e.seq);
        if (!m || m.seq !== e.seq) {
          log.warning("Session {sid}: message {seq} of {topic} is gone; skipping it", {
            sid: this.sid,
            seq: e.seq,
            topic: name,
          });
          stream.doneTags.set(e.seq, e.tag);
          this.#park(e.tag);
          continue;
        }
        stream.outstanding.push(e.seq);
        this.#ownInflight().set(e.tag, {
          tag: e.tag,
          topic: name,
          seq: e.seq,
          qos: e.qos,
          phase: e.phase,
          out: this.#outbound(m, e.qos),
          stored: true,
        });
      }
    }
    // Retained messages in flight carry their message; entries of topics this session
    // no longer holds are sent again too, and forgotten once acknowledged.
    for (const list of byTopic.values()) {
      for (const e of list) {
        if (e.phase === "done") continue;
        const m = e.message ?? (await (await this.#broker.topic(e.topic)).read(e.seq));
        if (!m) continue;
        this.#ownInflight().set(e.tag, {
          tag: e.tag,
          topic: e.message ? null : e.topic,
          seq: e.seq,
          qos: e.qos,
          phase: e.phase,
          out: this.#outbound(m, e.qos, e.message !== undefined),
          stored: true,
        });
      }
    }
    for (const s of this.#streams.values()) this.#settlePosition(s);
    if (stale.length > 0) await this.#write([], stale);
  }

  /**
   * Attaches a connection: messages in flight are sent again (DUP) with their original
   * packet identifiers, releases again, then new messages flow. `window` is the most
   * QoS 1/2 messages in flight at once.
   */
  attach(output: SessionOutput, window: number): void {
    this.#output = output;
    this.#window = Math.max(1, window);
    this.disconnectedAt = null;
    for (const f of this.#inflight.values()) {
      if (!f.stored) continue;
      if (f.phase === "sent") output.publish(f.out, f.tag, true);
      else output.release(f.tag);
    }
    this.#schedule();
  }

  /** Detaches the connection; the session keeps everything for the next one. */
  detach(): void {
    this.#output = null;
    this.disconnectedAt = Date.now();
  }

  // --- subscriptions ------------------------------------------------------------------

  /** Topics reached by a filter of this session got a position at `seq`. */
  reached(topic: Topic, seq: number): void {
    if (this.#ended || this.#streams.has(topic.topic)) return;
    if (this.#checkAcl && !this.#broker.authorizer.canSubscribe(this.user, topic.topic)) {
      // The filter was allowed because it can reach allowed topics; this one is not.
      return;
    }
    this.#addStream(topic, seq, Date.now());
    this.#schedule();
  }

  /** Queues retained messages to send for a new subscription (before its log messages). */
  sendRetained(messages: StoredMessage[], entry: FilterEntry): void {
    for (const m of messages) {
      if (!this.#broker.authorizer.canSubscribe(this.user, m.topic)) continue;
      const qos = Math.min(m.qos ?? 2, entry.qos) as Qos;
      const out: Outbound = { message: m, qos, retain: true, subscriptionIds: [] };
      if (entry.subscriptionId !== undefined) out.subscriptionIds.push(entry.subscriptionId);
      this.#retainedQueue.push(out);
    }
    this.#schedule();
  }

  /**
   * Drops the streams of topics no remaining filter of the session matches (after an
   * UNSUBSCRIBE); their positions are deleted. Messages in flight stay until acknowledged.
   */
  async dropUnmatched(): Promise<void> {
    for (const [name, s] of [...this.#streams]) {
      if (this.#filtersMatching(name).length > 0) continue;
      this.#streams.delete(name);
      s.topic.detach(s);
      s.topic.untrackPosition(this.sid);
      if (this.durable) await this.#broker.store.deleteSubscription(this.sid, name);
    }
  }

  /** Free room in the window: messages that may be put in flight now. */
  room(): number {
    return this.#window - this.#inflight.size - this.#lent.size;
  }

  /** A packet identifier for a message of a shared group, counted in this window. */
  lendTag(): number {
    const tag = this.#allocateTag();
    if (this.#lent === NO_TAGS) this.#lent = new Set();
    this.#lent.add(tag);
    return tag;
  }

  /** Returns a lent identifier; `pump` is nudged, as room freed. */
  returnTag(tag: number): void {
    if (this.#lent.delete(tag)) this.#schedule();
  }

  /** Sends a message in flight again (its holder left a shared group). */
  resend(tag: number): void {
    const f = this.#inflight.get(tag);
    if (!f || !f.stored || !this.#output) return;
    if (f.phase === "sent") this.#output.publish(f.out, f.tag, true);
    else this.#output.release(f.tag);
  }

  // --- acknowledgements -----------------------------------------------------------------

  /** PUBACK: a QoS 1 message is complete. Returns false for an unknown tag. */
  acknowledged(tag: number): boolean {
    const f = this.#inflight.get(tag);
    if (!f || f.qos !== 1) return false;
    this.#inflight.delete(tag);
    this.#complete(f);
    return true;
  }

  /**
   * PUBREC: the client has a QoS 2 message. Resolves true when the release may be sent
   * (the acknowledgement is durable); false for an unknown tag.
   */
  async received(tag: number): Promise<boolean> {
    const f = this.#inflight.get(tag);
    if (!f || f.qos !== 2) return false;
    if (f.phase === "received") return true;
    f.phase = "received";
    if (this.durable) {
      await this.#broker.store.saveInflight([this.#record(f)]);
    }
    return true;
  }

  /** PUBCOMP: a QoS 2 exchange is complete. Returns false for an unknown tag. */
  completed(tag: number): boolean {
    const f = this.#inflight.get(tag);
    if (!f || f.qos !== 2 || f.phase !== "received") return false;
    this.#inflight.delete(tag);
    this.#complete(f);
    return true;
  }

  /**
   * A negative acknowledgement (MQTT 5 reason code ≥ 0x80): the message is complete and
   * is not sent again.
   */
  refused(tag: number): boolean {
    const f = this.#inflight.get(tag);
    if (!f) return false;
    this.#inflight.delete(tag);
    this.#complete(f);
    return true;
  }

  #complete(f: Inflight): void {
    if (f.topic === null) {
      if (this.durable) void this.#write([], [f.tag]);
      this.#schedule();
      return;
    }
    const s = this.#streams.get(f.topic);
    if (!s) {
      if (this.durable) void this.#write([], [f.tag]);
      this.#schedule();
      return;
    }
    this.#finish(s, f.seq, f);
    this.#schedule();
  }

  /** Marks `seq` of stream `s` complete and moves (and stores) its position. */
  #finish(s: Stream, seq: number, f: Inflight | null): void {
    const i = s.outstanding.indexOf(seq);
    if (i >= 0) s.outstanding.splice(i, 1);
    // The usual case: the lowest message in flight completes, the position moves past it
    // and its tag is free at once, with nothing to remember in between.
    if (f && i === 0 && this.#settlePosition(s, f.tag)) return;
    if (f) {
      s.doneTags.set(seq, f.tag);
      this.#park(f.tag);
    }
    if (!this.#settlePosition(s) && f && this.durable) {
      // Completed above the position (out of order): remembered durably as done, so
      // that a restart does not send it again.
      void this.#write([{ ...this.#record(f), phase: "done" }], []);
    }
  }

  /**
   * Moves the position to the lowest incomplete message; false when it did not move.
   * `freed` is the tag of a message below the new position that was never parked.
   */
  #settlePosition(s: Stream, freed?: number): boolean {
    const position = s.outstanding[0] ?? s.next;
    if (position <= s.position) return false;
    s.position = position;
    s.topic.trackPosition(this.sid, position, this.durable);
    const gone: number[] = freed === undefined ? [] : [freed];
    for (const [seq, tag] of s.doneTags) {
      if (seq < position) {
        gone.push(tag);
        s.doneTags.delete(seq);
      }
    }
    if (this.durable) {
      const rec: SubscriptionRecord = {
        subscriber: this.sid,
        topic: s.topic.topic,
        position,
        received: null,
        createdAt: s.createdAt,
      };
      void this.#write([], gone, rec);
    }
    for (const tag of gone) this.#parked.delete(tag);
    return true;
  }

  #write(set: InflightRecord[], remove: number[], position?: SubscriptionRecord): Promise<void> {
    const rm = remove.map((tag) => ({ sid: this.sid, tag }));
    return this.#broker.store.saveInflight(set, rm, position).catch((err) => {
      this.#broken = true;
      this.#output?.fail("the session's progress could not be stored");
      log.warning("Session {sid}: could not store its progress: {error}", {
        sid: this.sid,
        error: String(err),
      });
    });
  }

  // --- sending --------------------------------------------------------------------------

  #addStream(topic: Topic, position: number, createdAt: number): Stream {
    const s: Stream = {
      topic,
      position,
      next: position,
      outstanding: [],
      doneTags: new Map(),
      reading: false,
      ahead: [],
      createdAt,
      wake: () => this.#schedule(),
    };
    this.#ownStreams().set(topic.topic, s);
    topic.trackPosition(this.sid, position, this.durable);
    topic.attach(s);
    return s;
  }

  #schedule(): void {
    if (this.#pumpScheduled || this.#ended || !this.#output) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    const output = this.#output;
    if (!output || this.#ended) return;
    if (output.ready && !output.ready()) {
      if (!this.#waitingReady) {
        this.#waitingReady = true;
        void output.whenReady?.().then(() => {
          this.#waitingReady = false;
          this.#schedule();
        });
      }
      return;
    }
    const toStore: Inflight[] = [];
    // Everything to send, in the order read: QoS 0 included, so that per topic the log
    // order holds across QoS levels.
    const batch: (Inflight | Outbound)[] = [];
    const room = () => this.room() > 0;
    while (this.#retainedQueue.length > 0) {
      const out = this.#retainedQueue[0] as Outbound;
      if (out.qos > 0 && !room()) break;
      this.#retainedQueue.shift();
      if (out.qos === 0) batch.push(out);
      else batch.push(this.#track(out, null, out.message.seq));
    }
    let progress = true;
    let more = false;
    const budget = output.budget?.() ?? Number.POSITIVE_INFINITY;
    let bytes = 0;
    while (progress && this.#retainedQueue.length === 0) {
      progress = false;
      if (batch.length >= PUMP_BATCH || bytes >= budget) {
        // Enough for one turn: the rest after the output had a chance to go out.
        more = true;
        break;
      }
      for (const s of this.#streams.values()) {
        if (!room()) break;
        const m = this.#readNext(s);
        if (!m) continue;
        progress = true;
        s.next = m.seq + 1;
        bytes += m.payload.byteLength + m.topic.length + 16;
        const out = this.#deliverable(m);
        if (!out) {
          this.#finish(s, m.seq, null);
          continue;
        }
        if (out.qos === 0) {
          batch.push(out);
          this.#finish(s, m.seq, null);
          continue;
        }
        s.outstanding.push(m.seq);
        batch.push(this.#track(out, s.topic.topic, m.seq));
      }
    }
    if (more) setTimeout(() => this.#schedule(), 0);
    if (batch.length === 0) return;
    for (const x of batch) if ("tag" in x) toStore.push(x);
    const send = () => {
      for (const x of batch) {
        if ("tag" in x) this.#sendNew(x);
        else this.#output?.publish(x, null, false);
      }
    };
    const stored = this.durable && toStore.length > 0
      ? this.#broker.store.saveInflight(toStore.map((f) => this.#record(f)))
      : null;
    if (stored === null && this.#sendsWaiting === 0) {
      send();
      return;
    }
    // After the entries commit, and after any earlier batch still waiting for its own.
    this.#sendsWaiting++;
    this.#sendChain = (this.#sendChain ?? Promise.resolve()).then(() => stored).then(
      send,
      (err) => {
        // Not stored: nothing was sent, so these are not in flight. The positions stay;
        // the messages are read again on the next attach.
        log.warning("Session {sid}: could not store messages in flight: {error}", {
          sid: this.sid,
          error: String(err),
        });
        this.#broken = true;
        this.#output?.fail("the session's progress could not be stored");
      },
    ).finally(() => {
      // The last one lets the chain go: an idle session keeps no promise.
      if (--this.#sendsWaiting === 0) this.#sendChain = null;
    });
  }

  #sendNew(f: Inflight): void {
    f.stored = true;
    if (this.#inflight.get(f.tag) !== f || f.phase !== "sent") return;
    this.#output?.publish(f.out, f.tag, false);
  }

  #readNext(s: Stream): StoredMessage | null {
    while (s.ahead.length > 0) {
      const m = s.ahead.shift() as StoredMessage;
      if (m.seq >= s.next) return m;
    }
    if (s.reading) return null;
    const cached = s.topic.readCached(s.next);
    if (cached !== undefined) return cached;
    // Behind the topic's memory: read a page of the log at once.
    s.reading = true;
    s.topic.readPage(s.next, READ_PAGE).then((page) => {
      s.reading = false;
      if (this.#streams.get(s.topic.topic) !== s) return;
      s.ahead = page.filter((m) => m.seq >= s.next);
      if (s.ahead.length === 0 && s.next < s.topic.memoryFrom) {
        // Nothing stored from here on: what lay between was kept in memory only (QoS 0
        // nobody durable needed) and is gone for a reader this far behind.
        s.next = s.topic.memoryFrom;
      }
      if (s.ahead.length > 0 || s.next >= s.topic.memoryFrom) this.#schedule();
    }, (err) => {
      s.reading = false;
      log.warning("Session {sid}: reading {topic} failed: {error}", {
        sid: this.sid,
        topic: s.topic.topic,
        error: String(err),
      });
      setTimeout(() => this.#schedule(), 1000);
    });
    return null;
  }

  /** How `m` goes to this session, or null when it is not sent (No Local, expired). */
  #deliverable(m: StoredMessage): Outbound | null {
    if (m.expiresAt !== undefined && m.expiresAt <= Date.now()) return null;
    const entries = this.#filtersOf(m.topic);
    if (entries.length === 0) return null;
    const local = m.from === this.sid;
    let qos = -1;
    let retain = false;
    const subscriptionIds: number[] = [];
    for (const f of entries) {
      if (local && f.noLocal) continue; // v5 [MQTT-3.8.3-3]
      // Overlapping filters: one copy at the highest granted QoS, v5 [MQTT-3.3.4-2],
      // carrying every matching Subscription Identifier, v5 [MQTT-3.3.4-3].
      if (f.qos > qos) qos = f.qos;
      if (f.retainAsPublished && m.retain) retain = true; // v5 [MQTT-3.3.1-13]
      if (f.subscriptionId !== undefined) subscriptionIds.push(f.subscriptionId);
    }
    if (qos < 0) return null;
    return { message: m, qos: Math.min(qos, m.qos ?? 2) as Qos, retain, subscriptionIds };
  }

  /** The filters matching `topic`, cached until the filter index changes. */
  #filtersOf(topic: string): FilterEntry[] {
    const version = this.#broker.filterIndex.version;
    const cached = this.#filterCache?.get(topic);
    if (cached?.version === version) return cached.entries;
    const entries = this.#filtersMatching(topic);
    (this.#filterCache ??= new Map()).set(topic, { version, entries });
    return entries;
  }

  #outbound(m: StoredMessage, qos: Qos, retained = false): Outbound {
    const out = this.#deliverable(m);
    return {
      message: m,
      qos,
      retain: retained || (out?.retain ?? false),
      subscriptionIds: out?.subscriptionIds ?? [],
    };
  }

  #track(out: Outbound, topic: string | null, seq: number): Inflight {
    const f: Inflight = {
      tag: this.#allocateTag(),
      topic,
      seq,
      qos: out.qos as 1 | 2,
      phase: "sent",
      out,
      stored: !this.durable,
    };
    this.#ownInflight().set(f.tag, f);
    return f;
  }

  #record(f: Inflight): InflightRecord {
    const r: InflightRecord = {
      sid: this.sid,
      tag: f.tag,
      topic: f.out.message.topic,
      seq: f.seq,
      msgId: f.out.message.id,
      qos: f.qos,
      phase: f.phase,
    };
    if (f.topic === null) r.message = f.out.message;
    return r;
  }

  #allocateTag(): number {
    // The window is far below 65,535, so a free identifier is always near.
    for (;;) {
      const tag = this.#nextTag;
      this.#nextTag = tag === MAX_TAG ? 1 : tag + 1;
      if (!this.#inflight.has(tag) && !this.#lent.has(tag) && !this.#parked.has(tag)) return tag;
    }
  }

  /**
   * Ends the session for good: streams stop, tracked positions are released. The
   * registry deletes its stored state.
   */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#output = null;
    for (const s of this.#streams.values()) {
      s.topic.detach(s);
      s.topic.untrackPosition(this.sid);
    }
    this.#streams.clear();
    this.#inflight.clear();
    this.#retainedQueue = [];
  }
}
