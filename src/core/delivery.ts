/**
 * Delivery of one topic to one subscriber, QoS 2 outbound, with a window of messages
 * in flight (one, as in the seed, unless the subscription asks for more).
 *
 * The state machine, per message (seed diagrams "QoS2" and "QoS2Retrial"):
 *
 *   message sent ──PUBREC──► (stored as received) ──► release sent
 *   release sent ──PUBCOMP─► (stored as completed) ──► done
 *
 * The durable position is the lowest sequence number not completed. Up to `window`
 * messages from the position on are outstanding at once, each in its own phase;
 * acknowledgements may come in any order. A message completed while an older one is
 * still outstanding is stored as completed until the position passes it, so that after
 * a restart nothing completed is sent again and every received message gets its
 * release, not the message, again.
 *
 * Each send sets the message's due time; one timer per delivery sends again whatever is
 * overdue, every `retryIntervalMs`, `retryLimit` sends in all, after which the delivery
 * suspends itself: it stops, and the subscription keeps its durable state so that
 * subscribing again (or logging in again) resumes with the same messages.
 * Acknowledgements are answered only after the state they change is durable; the
 * acknowledgements of a window that share an atomic store one record (the delivery is
 * the record's {@link PositionSource}: the store takes its state when it writes).
 *
 * @module
 */
import type {
  BrokerStore,
  PositionSource,
  StoredMessage,
  SubscriptionRecord,
} from "../store/store.ts";
import type { Topic, Wakeable } from "./topic.ts";

/** The protocol side of a delivery: how to put a message or a release on the wire. */
export interface DeliverySink {
  /** Sends `message`; `attempt` counts sends of it from 1. */
  sendMessage(message: StoredMessage, attempt: number): void;
  /** Sends the release (PUBREL) of message `id` of `topic`. */
  sendRelease(id: number, topic: string, attempt: number): void;
}

/** Retry timing. */
export interface RetryOptions {
  /** Time between sends of an unacknowledged message or release. */
  retryIntervalMs: number;
  /** Sends in all before the delivery suspends itself. */
  retryLimit: number;
}

/** The largest window a subscription may ask for. */
export const MAX_WINDOW = 1024;

/** What the subscriber last received without completing it, for the exhaustion report. */
export interface Exhausted {
  id: number;
  seq: number;
  phase: "message" | "release";
  sends: number;
}

/**
 * One message from the position on. `receiving` and `completing` are the phases while
 * the acknowledgement's commit is under way; they are stored as the phase they lead to.
 */
interface InFlight {
  id: number;
  seq: number;
  /** Null for a release resumed after a restart whose message is no longer stored. */
  message: StoredMessage | null;
  phase: "message" | "receiving" | "release" | "completing" | "completed";
  sends: number;
  dueAt: number;
}

/** A message acknowledged before a restart, not reached yet by the resumed delivery. */
interface Resumed {
  seq: number;
  id: number;
  completed: boolean;
}

/**
 * How an acknowledgement ends, told by {@link Delivery.receivedWith} and
 * {@link Delivery.completedWith}: the callback form of {@link Delivery.received}, one
 * object per acknowledgement instead of a promise, its reactions and closures.
 */
export interface AckOutcome {
  /** Stored: answer the subscriber now, before anything the delivery sends next. */
  accepted(): void;
  /** Done: an error text to answer, or null (accepted already, or the delivery stopped). */
  finished(error: string | null): void;
  /** Failed unexpectedly (a bug): the caller's state may be inconsistent. */
  failed(err: unknown): void;
}

/** Which acknowledgement an entry of a save's waiting list is. */
const RECEIVED = 0;
const COMPLETED = 1;

/** Estimated bytes of a record without its lists, and of one list entry. */
const RECORD_BYTES = 400;
/** Entries that left the front of a window before the array is compacted (see `#advance`). */
const COMPACT_AFTER = 64;
const ENTRY_BYTES = 24;

/**
 * One subscriber's delivery from one topic.
 *
 * Acknowledgement methods return null on success (after calling `accepted`, so that
 * the protocol's reply goes out before anything the delivery sends next) or an error
 * text that says why the acknowledgement does not fit.
 */
export class Delivery implements Wakeable, PositionSource {
  readonly topic: Topic;
  readonly subscriber: string;
  #createdAt: number;
  #store: BrokerStore;
  #sink: DeliverySink;
  #retry: RetryOptions;
  #onExhausted: (d: Delivery, what: Exhausted) => void;
  #window: number;
  /**
   * Messages from the position up to `#nextSeq`, in sequence order, from `#head` on: the
   * entries before it have left the window (null), and are dropped in one go now and then
   * instead of shifting the array at every completion.
   */
  #flight: (InFlight | null)[] = [];
  #head = 0;
  /** The entries of `#flight` that await an acknowledgement, by message id. */
  #byId = new Map<number, InFlight>();
  /** Acknowledged before the restart this delivery resumed from, in sequence order. */
  #resumed: Resumed[];
  #position: number;
  /** The next sequence number to read. */
  #nextSeq: number;
  #reading = false;
  #wakeAgain = false;
  /** Retries a failed read of the topic. */
  #timer: ReturnType<typeof setTimeout> | undefined;
  /**
   * The resend timer: one per delivery, not one per message. A send moves the message's
   * `dueAt`; the timer, when it fires, sends again what is overdue and sets itself for
   * the earliest message still waiting (the idle-timer pattern).
   */
  #resendTimer: ReturnType<typeof setTimeout> | undefined;
  /** A save submitted and not yet built into an atomic: later acknowledgements share it. */
  #queuedSave: Promise<void> | null = null;
  /**
   * The acknowledgements waiting for `#queuedSave`, three entries each (the message, its
   * outcome, RECEIVED or COMPLETED): one reaction to the save for all of them.
   */
  #queuedAcks: unknown[] | null = null;
  #stopped = false;

  constructor(
    topic: Topic,
    record: SubscriptionRecord,
    store: BrokerStore,
    sink: DeliverySink,
    retry: RetryOptions,
    onExhausted: (d: Delivery, what: Exhausted) => void,
  ) {
    this.topic = topic;
    this.subscriber = record.subscriber;
    this.#createdAt = record.createdAt;
    this.#store = store;
    this.#sink = sink;
    this.#retry = retry;
    this.#onExhausted = onExhausted;
    this.#window = record.window ?? 1;
    this.#position = record.position;
    this.#nextSeq = record.position;
    this.#resumed = resumedOf(record);
  }

  /** The durable position: the lowest sequence number not yet completed. */
  get position(): number {
    return this.#position;
  }

  /** Messages from the position on that may be outstanding at once. */
  get window(): number {
    return this.#window;
  }

  /** The ids of the messages that await an acknowledgement, in sequence order. */
  get outstanding(): number[] {
    const ids: number[] = [];
    for (let i = this.#head; i < this.#flight.length; i++) {
      const f = this.#flight[i] as InFlight;
      if (f.phase !== "completed") ids.push(f.id);
    }
    return ids;
  }

  /** Whether message `id` awaits an acknowledgement from the subscriber. */
  holds(id: number): boolean {
    return this.#byId.has(id);
  }

  /**
   * Changes the window; the caller stores it ({@link save}) and then calls {@link wake}
   * to fill a larger one. A smaller window lets the messages already out finish, and
   * sends no more until they fit in it.
   */
  setWindow(window: number): void {
    this.#window = window;
  }

  /** Starts delivering: resumes what the stored state left outstanding, then reads on. */
  start(): void {
    this.topic.attach(this);
    this.wake();
  }

  /** Messages in the window (sent, or completed behind one that is not). */
  get #inFlight(): number {
    return this.#flight.length - this.#head;
  }

  /** Called by the topic when a message became readable. */
  wake(): void {
    if (this.#stopped) return;
    if (this.#reading) {
      this.#wakeAgain = true;
      return;
    }
    while (this.#inFlight < this.#window && !this.#stopped) {
      const next = this.topic.readCached(this.#nextSeq);
      if (next === null) {
        this.#passResumed(Infinity);
        return;
      }
      if (next === undefined) {
        // Behind the topic's memory: one store read for the room left in the window.
        this.#reading = true;
        this.#wakeAgain = false;
        this.topic.readPage(this.#nextSeq, this.#window - this.#inFlight).then((ms) => {
          this.#reading = false;
          for (const m of ms) this.#admit(m);
          if (ms.length === 0) this.#passResumed(Infinity);
          if (ms.length > 0 || this.#wakeAgain) this.wake();
        }, () => {
          // A failed read is retried on the next wake or by the retry timer below.
          this.#reading = false;
          this.#timer ??= setTimeout(() => {
            this.#timer = undefined;
            this.wake();
          }, this.#retry.retryIntervalMs);
        });
        return;
      }
      this.#admit(next);
    }
  }

  /** Takes the next message of the topic into the window. */
  #admit(message: StoredMessage): void {
    if (this.#stopped || message.seq < this.#nextSeq) return;
    this.#passResumed(message.seq);
    this.#nextSeq = message.seq + 1;
    const r = this.#resumed[0];
    if (r?.seq === message.seq) {
      this.#resumed.shift();
      this.#enter(r.id, r.seq, message, r.completed ? "completed" : "release");
      return;
    }
    if (message.expiresAt !== undefined && message.expiresAt <= Date.now()) {
      // Expired (an MQTT 5 Message Expiry Interval) before its first send: it is gone
      // for every subscriber, so the position moves past it without a handshake.
      this.#enter(message.id, message.seq, message, "completed");
      if (this.#advance()) {
        this.save().catch(() => {
          // Not stored: after a restart the message is found expired again and skipped.
        });
      }
      return;
    }
    this.#enter(message.id, message.seq, message, "message");
  }

  /**
   * Takes the resumed acknowledgements below `seq` into the window without their
   * messages: the topic no longer holds them (the read went past them), but a received
   * one still gets its release.
   */
  #passResumed(seq: number): void {
    while (this.#resumed.length > 0 && (this.#resumed[0] as Resumed).seq < seq) {
      const r = this.#resumed.shift() as Resumed;
      if (r.seq < this.#nextSeq) continue;
      this.#nextSeq = r.seq + 1;
      this.#enter(r.id, r.seq, null, r.completed ? "completed" : "release");
    }
    this.#advance();
  }

  #enter(id: number, seq: number, message: StoredMessage | null, phase: InFlight["phase"]) {
    const f: InFlight = { id, seq, message, phase, sends: 0, dueAt: 0 };
    this.#flight.push(f);
    if (phase === "completed") return;
    this.#byId.set(id, f);
    this.#send(f);
  }

  #send(f: InFlight): void {
    if (this.#stopped) return;
    f.sends++;
    if (f.phase === "message") this.#sink.sendMessage(f.message as StoredMessage, f.sends);
    else this.#sink.sendRelease(f.id, this.topic.topic, f.sends);
    this.#arm(f);
  }

  #arm(f: InFlight): void {
    f.dueAt = sendClock() + this.#retry.retryIntervalMs;
    this.#resendTimer ??= setTimeout(() => this.#onTimeout(), this.#retry.retryIntervalMs);
  }

  #onTimeout(): void {
    this.#resendTimer = undefined;
    if (this.#stopped) return;
    const now = performance.now();
    let earliest = Infinity;
    for (let i = this.#head; i < this.#flight.length; i++) {
      const f = this.#flight[i] as InFlight;
      // A commit is under way (or the exchange ended): the next send sets the time again.
      if (f.phase !== "message" && f.phase !== "release") continue;
      if (f.dueAt > now) {
        if (f.dueAt < earliest) earliest = f.dueAt;
        continue;
      }
      if (f.sends >= this.#retry.retryLimit) {
        this.stop();
        this.#onExhausted(this, { id: f.id, seq: f.seq, phase: f.phase, sends: f.sends });
        return;
      }
      this.#send(f);
      if (f.dueAt < earliest) earliest = f.dueAt;
    }
    if (earliest !== Infinity && this.#resendTimer === undefined) {
      this.#resendTimer = setTimeout(() => this.#onTimeout(), Math.max(0, earliest - now));
    }
  }

  /**
   * Drops the completed messages at the front of the window; true when the position
   * moved (the topic is told, for retention).
   */
  #advance(): boolean {
    const flight = this.#flight;
    let head = this.#head;
    while (head < flight.length && (flight[head] as InFlight).phase === "completed") {
      flight[head++] = null;
    }
    if (head === this.#head) return false;
    // Not `shift()` per completion: it took 3 % of the JSON-line broker's main thread in a
    // profile (V8 does not always move an array's start in place); an index costs nothing.
    if (head === flight.length) {
      flight.length = 0;
      head = 0;
    } else if (head >= COMPACT_AFTER && head * 2 >= flight.length) {
      flight.copyWithin(0, head);
      flight.length -= head;
      head = 0;
    }
    this.#head = head;
    this.#position = head < flight.length ? (flight[head] as InFlight).seq : this.#nextSeq;
    this.topic.trackPosition(this.subscriber, this.#position);
    return true;
  }

  /**
   * Stores the subscription's state (see {@link snapshot}). Acknowledgements that come
   * before the atomic carrying a save is built share that save: it will write their state
   * too, so the window's acknowledgements of one atomic make one operation, not one each.
   */
  save(): Promise<void> {
    if (this.#queuedSave) return this.#queuedSave;
    const saving = this.#store.savePositionFrom(this.topic.topic, this.subscriber, this);
    this.#queuedSave = saving;
    // Refused without being built into an atomic: the next acknowledgement tries anew.
    saving.catch(() => {
      if (this.#queuedSave === saving) {
        this.#queuedSave = null;
        this.#queuedAcks = null;
      }
    });
    return saving;
  }

  /** PUBREC: the subscriber has the message. */
  received(id: number, accepted: () => void): Promise<string | null> {
    const { promise, resolve, reject } = Promise.withResolvers<string | null>();
    this.receivedWith(id, { accepted, finished: resolve, failed: reject });
    return promise;
  }

  /** PUBCOMP: the exchange of the message is complete. */
  completed(id: number, accepted: () => void): Promise<string | null> {
    const { promise, resolve, reject } = Promise.withResolvers<string | null>();
    this.completedWith(id, { accepted, finished: resolve, failed: reject });
    return promise;
  }

  /** {@link received} told through `out`. */
  receivedWith(id: number, out: AckOutcome): void {
    const f = this.#byId.get(id);
    if (f?.phase === "release") {
      // A repeated PUBREC: our release may have been lost, send it again.
      out.accepted();
      this.#send(f);
      out.finished(null);
      return;
    }
    if (f?.phase !== "message") {
      out.finished(
        `no message with msgId ${id} is awaiting PUBREC on topic "${this.topic.topic}"`,
      );
      return;
    }
    f.phase = "receiving"; // the resend timer, if it fires meanwhile, skips it
    this.#awaitSave(f, out, RECEIVED);
  }

  /** {@link completed} told through `out`. */
  completedWith(id: number, out: AckOutcome): void {
    const f = this.#byId.get(id);
    if (f?.phase !== "release") {
      out.finished(
        `no message with msgId ${id} is awaiting PUBCOMP on topic "${this.topic.topic}"`,
      );
      return;
    }
    f.phase = "completing";
    this.#awaitSave(f, out, COMPLETED);
  }

  /** Joins the acknowledgement to the queued save (one reaction per save, not per ack). */
  #awaitSave(f: InFlight, out: AckOutcome, kind: number): void {
    let acks = this.#queuedAcks;
    if (acks === null) {
      const saving = this.save();
      const waiting: unknown[] = [];
      acks = waiting;
      this.#queuedAcks = waiting;
      saving.then(
        () => this.#saved(waiting, true, null),
        (err) => this.#saved(waiting, false, err),
      );
    }
    acks.push(f, out, kind);
  }

  /** The save that `acks` waited for committed (`ok`) or failed with `err`. */
  #saved(acks: unknown[], ok: boolean, err: unknown): void {
    for (let i = 0; i < acks.length; i += 3) {
      const f = acks[i] as InFlight;
      const out = acks[i + 1] as AckOutcome;
      try {
        if (acks[i + 2] === RECEIVED) this.#receivedSaved(f, out, ok, err);
        else this.#completedSaved(f, out, ok, err);
      } catch (e) {
        out.failed(e);
      }
    }
  }

  #receivedSaved(f: InFlight, out: AckOutcome, ok: boolean, err: unknown): void {
    if (!ok) {
      f.phase = "message";
      if (!this.#stopped) this.#arm(f);
      out.finished(
        `could not store the acknowledgement (${errorMessage(err)}); send PUBREC again`,
      );
      return;
    }
    f.phase = "release";
    f.sends = 0;
    if (!this.#stopped) {
      out.accepted();
      this.#send(f);
    }
    out.finished(null);
  }

  #completedSaved(f: InFlight, out: AckOutcome, ok: boolean, err: unknown): void {
    if (!ok) {
      f.phase = "release";
      if (!this.#stopped) this.#arm(f);
      out.finished(
        `could not store the acknowledgement (${errorMessage(err)}); send PUBCOMP again`,
      );
      return;
    }
    f.phase = "completed";
    this.#byId.delete(f.id);
    this.#advance();
    if (!this.#stopped) {
      out.accepted();
      this.wake();
    }
    out.finished(null);
  }

  /**
   * The subscription record as it stands: acknowledgements whose commit is under way
   * count as done (each is the subscriber's own word; the store writes a state no older
   * than the one an acknowledgement waits for).
   */
  snapshot(): SubscriptionRecord {
    // The atomic that carries the queued save is being built: later changes need another.
    this.#queuedSave = null;
    this.#queuedAcks = null;
    let position = this.#nextSeq;
    const pending: number[] = []; // seq, id, seq, id, …
    const completed: number[] = [];
    let front = true;
    for (let i = this.#head; i < this.#flight.length; i++) {
      const f = this.#flight[i] as InFlight;
      const done = f.phase === "completed" || f.phase === "completing";
      if (front && !done) {
        front = false;
        position = f.seq;
      }
      if (front) continue;
      if (done) completed.push(f.seq);
      else if (f.phase !== "message") pending.push(f.seq, f.id);
    }
    for (const r of this.#resumed) {
      if (r.completed) completed.push(r.seq);
      else pending.push(r.seq, r.id);
    }
    const record: SubscriptionRecord = {
      subscriber: this.subscriber,
      topic: this.topic.topic,
      position,
      received: null,
      createdAt: this.#createdAt,
    };
    if (this.#window !== 1) record.window = this.#window;
    if (completed.length === 0 && pending.length <= 2) {
      if (pending.length === 2) {
        record.received = { seq: pending[0] as number, id: pending[1] as number };
      }
    } else {
      if (pending.length > 0) record.pending = pending;
      if (completed.length > 0) record.completed = completed;
    }
    return record;
  }

  /** An upper bound of the snapshot's estimated size. */
  get maxSize(): number {
    const entries = Math.max(this.#window, this.#inFlight) + this.#resumed.length;
    return RECORD_BYTES + 2 * (this.subscriber.length + this.topic.topic.length) +
      entries * ENTRY_BYTES;
  }

  /** Stops sending and cancels the timers; the durable state stays as it is. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    clearTimeout(this.#resendTimer);
    this.#resendTimer = undefined;
    this.topic.detach(this);
  }
}

/** The acknowledgements a stored record holds past its position, in sequence order. */
function resumedOf(r: SubscriptionRecord): Resumed[] {
  const out: Resumed[] = [];
  if (r.received && r.received.seq >= r.position) {
    out.push({ seq: r.received.seq, id: r.received.id, completed: false });
  }
  const pending = r.pending ?? [];
  for (let i = 0; i + 1 < pending.length; i += 2) {
    const seq = pending[i] as number;
    if (seq >= r.position) out.push({ seq, id: pending[i + 1] as number, completed: false });
  }
  for (const seq of r.completed ?? []) {
    if (seq >= r.position) out.push({ seq, id: 0, completed: true });
  }
  return out.sort((a, b) => a.seq - b.seq);
}

/** {@link sendClock}'s reading for the job under way; -1 once the job has ended. */
let jobNow = -1;
const endJob = () => {
  jobNow = -1;
};

/**
 * `performance.now()` as read at the first call in the current job (the synchronous run
 * until the microtask queue moves on): a window's sends, made in one burst, share one
 * reading instead of costing a clock read (~0.15 µs) each. A due time that is early by
 * the job's own length is nothing next to a retry interval.
 */
function sendClock(): number {
  if (jobNow < 0) {
    jobNow = performance.now();
    queueMicrotask(endJob);
  }
  return jobNow;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
