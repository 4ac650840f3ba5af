/**
 * Delivery of one topic to one subscriber, QoS 2 outbound, one message in flight.
 *
 * The state machine, per message (seed diagrams "QoS2" and "QoS2Retrial"):
 *
 *   message sent ──PUBREC──► (position saved with `received`) ──► release sent
 *   release sent ──PUBCOMP─► (position saved past the message) ──► next message
 *
 * Each send arms one timer; without the expected acknowledgement the same packet is
 * sent again every `retryIntervalMs`, `retryLimit` sends in all, after which the
 * delivery suspends itself: it stops, and the subscription keeps its durable position
 * so that subscribing again (or logging in again) resumes with the same message.
 * Acknowledgements are answered only after the position they move is durable.
 *
 * @module
 */
import type { BrokerStore, StoredMessage, SubscriptionRecord } from "../store/store.ts";
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

/** What the subscriber last received without completing it, for the exhaustion report. */
export interface Exhausted {
  id: number;
  seq: number;
  phase: "message" | "release";
  sends: number;
}

interface InFlight {
  id: number;
  seq: number;
  /** Absent when resuming a release after a restart: only the id is needed then. */
  message: StoredMessage | null;
  phase: "message" | "receiving" | "release" | "completing";
  sends: number;
}

/**
 * One subscriber's delivery from one topic.
 *
 * Acknowledgement methods return null on success (after calling `accepted`, so that
 * the protocol's reply goes out before anything the delivery sends next) or an error
 * text that says why the acknowledgement does not fit.
 */
export class Delivery implements Wakeable {
  readonly topic: Topic;
  #record: SubscriptionRecord;
  #store: BrokerStore;
  #sink: DeliverySink;
  #retry: RetryOptions;
  #onExhausted: (d: Delivery, what: Exhausted) => void;
  #inflight: InFlight | null = null;
  #reading = false;
  #wakeAgain = false;
  /** Retries a failed read of the topic. */
  #timer: ReturnType<typeof setTimeout> | undefined;
  /**
   * The resend timer. It is not cleared at each acknowledgement nor set again at each
   * send: a send moves `#dueAt`, and the timer, when it fires, acts only if the message
   * is still awaiting its acknowledgement and `#dueAt` has passed, else sets itself for
   * what is left (the idle-timer pattern). One timer per delivery, not one per message.
   */
  #resendTimer: ReturnType<typeof setTimeout> | undefined;
  #dueAt = 0;
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
    this.#record = record;
    this.#store = store;
    this.#sink = sink;
    this.#retry = retry;
    this.#onExhausted = onExhausted;
  }

  /** The durable position: the lowest sequence number not yet completed. */
  get position(): number {
    return this.#record.position;
  }

  /** The message id in flight, if any. */
  get inflightId(): number | null {
    return this.#inflight?.id ?? null;
  }

  /** Starts delivering: resumes a pending release, or sends the next message. */
  start(): void {
    this.topic.attach(this);
    const r = this.#record.received;
    if (r) {
      this.#inflight = { id: r.id, seq: r.seq, message: null, phase: "release", sends: 0 };
      this.#send();
    } else {
      this.wake();
    }
  }

  /** Called by the topic when a message became readable. */
  wake(): void {
    if (this.#stopped || this.#inflight) return;
    if (this.#reading) {
      this.#wakeAgain = true;
      return;
    }
    const next = this.topic.read(this.#record.position);
    if (next === null || !(next instanceof Promise)) {
      this.#begin(next);
      return;
    }
    this.#reading = true;
    next.then((m) => {
      this.#reading = false;
      this.#begin(m);
    }, () => {
      // A failed read is retried on the next wake or by the retry timer below.
      this.#reading = false;
      this.#timer ??= setTimeout(() => {
        this.#timer = undefined;
        this.wake();
      }, this.#retry.retryIntervalMs);
    });
  }

  #begin(message: StoredMessage | null): void {
    if (this.#stopped || this.#inflight) return;
    if (!message) {
      if (this.#wakeAgain) {
        this.#wakeAgain = false;
        this.wake();
      }
      return;
    }
    this.#wakeAgain = false;
    if (message.expiresAt !== undefined && message.expiresAt <= Date.now()) {
      // Expired (an MQTT 5 Message Expiry Interval) before its first send: it is gone
      // for every subscriber, so the position moves past it without a handshake.
      const next = { ...this.#record, position: message.seq + 1, received: null };
      this.#record = next;
      this.topic.trackPosition(next.subscriber, next.position);
      this.#store.savePosition(next).catch(() => {
        // Not stored: after a restart the message is found expired again and skipped.
      });
      this.wake();
      return;
    }
    this.#inflight = { id: message.id, seq: message.seq, message, phase: "message", sends: 0 };
    this.#send();
  }

  #send(): void {
    const f = this.#inflight;
    if (!f || this.#stopped) return;
    f.sends++;
    if (f.phase === "message") this.#sink.sendMessage(f.message as StoredMessage, f.sends);
    else this.#sink.sendRelease(f.id, this.topic.topic, f.sends);
    this.#arm();
  }

  #arm(): void {
    this.#dueAt = performance.now() + this.#retry.retryIntervalMs;
    this.#resendTimer ??= setTimeout(() => this.#onTimeout(), this.#retry.retryIntervalMs);
  }

  #onTimeout(): void {
    this.#resendTimer = undefined;
    const f = this.#inflight;
    if (!f || this.#stopped) return;
    // A commit is under way (or the exchange ended): the next send sets the timer again.
    if (f.phase !== "message" && f.phase !== "release") return;
    const left = this.#dueAt - performance.now();
    if (left > 0) {
      // Sent again since this timer was set (a new message or phase): wait for the rest.
      this.#resendTimer = setTimeout(() => this.#onTimeout(), left);
      return;
    }
    if (f.sends >= this.#retry.retryLimit) {
      this.stop();
      this.#onExhausted(this, { id: f.id, seq: f.seq, phase: f.phase, sends: f.sends });
      return;
    }
    this.#send();
  }

  /** PUBREC: the subscriber has the message. */
  async received(id: number, accepted: () => void): Promise<string | null> {
    const f = this.#inflight;
    if (f?.id === id && f.phase === "release") {
      // A repeated PUBREC: our release may have been lost, send it again.
      accepted();
      this.#send();
      return null;
    }
    if (f?.id !== id || f.phase !== "message") {
      return `no message with msgId ${id} is awaiting PUBREC on topic "${this.topic.topic}"`;
    }
    f.phase = "receiving"; // the resend timer, if it fires meanwhile, does nothing
    const next = { ...this.#record, received: { seq: f.seq, id: f.id } };
    try {
      await this.#store.savePosition(next);
    } catch (err) {
      f.phase = "message";
      if (!this.#stopped) this.#arm();
      return `could not store the acknowledgement (${errorMessage(err)}); send PUBREC again`;
    }
    this.#record = next;
    if (this.#stopped) return null;
    accepted();
    f.phase = "release";
    f.sends = 0;
    this.#send();
    return null;
  }

  /** PUBCOMP: the exchange of the message is complete; move past it. */
  async completed(id: number, accepted: () => void): Promise<string | null> {
    const f = this.#inflight;
    if (f?.id !== id || f.phase !== "release") {
      return `no message with msgId ${id} is awaiting PUBCOMP on topic "${this.topic.topic}"`;
    }
    f.phase = "completing";
    const next = { ...this.#record, position: f.seq + 1, received: null };
    // Positions only move forward; this process owns them (the store's fence keeps
    // every other writer out), so checking here, before queueing, is the check.
    if (next.position <= this.#record.position) {
      throw new Error(
        `position of ${next.subscriber} on "${next.topic}" would move back from ${this.#record.position} to ${next.position}`,
      );
    }
    try {
      await this.#store.savePosition(next);
    } catch (err) {
      f.phase = "release";
      if (!this.#stopped) this.#arm();
      return `could not store the acknowledgement (${errorMessage(err)}); send PUBCOMP again`;
    }
    this.#record = next;
    this.#inflight = null;
    this.topic.trackPosition(next.subscriber, next.position);
    if (this.#stopped) return null;
    accepted();
    this.wake();
    return null;
  }

  /** Stops sending and cancels the timer; the durable position stays as it is. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    clearTimeout(this.#resendTimer);
    this.#resendTimer = undefined;
    this.topic.detach(this);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
