/**
 * A logged-in consumer: its durable subscriptions and their live deliveries.
 *
 * Subscriptions belong to the consumer's name, not to a connection: they are stored
 * with it, and a new login resumes every one of them at its durable position (the step
 * past the seed that its notes 1 and 3 ask for). Only UNSUB removes a subscription. A
 * delivery that exhausts its retries is suspended for this session; subscribing again,
 * or logging in again, resumes it with the same message.
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type { SubscriptionRecord } from "../store/store.ts";
import type { Broker } from "./broker.ts";
import { type AckOutcome, Delivery, type DeliverySink, type Exhausted } from "./delivery.ts";
import type { Topic } from "./topic.ts";

/** How a session reaches its client: the protocol adapter's delivery methods. */
export type SessionSink = DeliverySink;

const log = getLogger("consumer");

/** The live state of one logged-in consumer. Created by {@link Broker.openSession}. */
export class ConsumerSession {
  readonly subscriber: string;
  #broker: Broker;
  #sink: SessionSink;
  #deliveries = new Map<string, Delivery>();
  #onClose: () => void;
  #closed = false;

  constructor(broker: Broker, subscriber: string, sink: SessionSink, onClose: () => void) {
    this.#broker = broker;
    this.subscriber = subscriber;
    this.#sink = sink;
    this.#onClose = onClose;
  }

  /** Starts a delivery for every stored subscription; returns their topics. */
  async resume(): Promise<string[]> {
    const store = this.#broker.store;
    // Acknowledgements of this consumer's previous connection may still be committing:
    // read the records after them, or this session would resume behind them and write
    // its older state over theirs.
    await store.barrier();
    const resumed: string[] = [];
    for (const name of await store.loadSubscriberTopics(this.subscriber)) {
      if (this.#closed) break;
      if (this.#deliveries.has(name)) continue;
      if (!this.#broker.authorizer.canSubscribe(this.subscriber, name)) {
        log.warning("Not resuming {user} on {topic}: the ACL no longer allows it", {
          user: this.subscriber,
          topic: name,
        });
        continue;
      }
      const topic = await this.#broker.topic(name);
      const rec = await store.loadSubscription(this.subscriber, name);
      if (!rec || this.#closed || this.#deliveries.has(name)) continue;
      this.#startDelivery(topic, rec);
      resumed.push(name);
    }
    return resumed;
  }

  /**
   * Subscribes durably, or resumes an existing (possibly suspended) subscription.
   * Calls `accepted` before the first message goes out; returns an error text or null.
   * `window`: messages outstanding at once (stored with the subscription); absent keeps
   * the subscription's window, or 1 for a new one, as in the seed.
   */
  async subscribe(name: string, accepted: () => void, window?: number): Promise<string | null> {
    const bad = this.#broker.topicError(name);
    if (bad) return bad;
    if (!this.#broker.authorizer.canSubscribe(this.subscriber, name)) {
      log.warning("Denied: {user} may not subscribe to {topic}", {
        user: this.subscriber,
        topic: name,
      });
      return `not authorised to subscribe to topic ${JSON.stringify(name)}`;
    }
    const live = this.#deliveries.get(name);
    if (live) {
      if (window !== undefined && window !== live.window) {
        live.setWindow(window);
        await live.save();
        accepted();
        live.wake();
        return null;
      }
    } else {
      const store = this.#broker.store;
      let rec = await store.loadSubscription(this.subscriber, name);
      if (!rec) {
        const max = this.#broker.options.maxSubscriptionsPerConsumer;
        if (
          max !== undefined && (await store.loadSubscriberTopics(this.subscriber)).length >= max
        ) {
          return `too many subscriptions (limit ${max}): UNSUB some first`;
        }
      }
      const topic = await this.#broker.topic(name);
      if (!rec) {
        rec = {
          subscriber: this.subscriber,
          topic: name,
          position: this.#broker.startPosition(topic),
          received: null,
          createdAt: Date.now(),
        };
        if (window !== undefined && window !== 1) rec.window = window;
        // Before the commit, so that retention keeps what this subscription will read.
        topic.trackPosition(this.subscriber, rec.position);
        await store.saveSubscription(rec);
      } else if (window !== undefined && window !== (rec.window ?? 1)) {
        rec = { ...rec, window };
        if (window === 1) delete rec.window;
        await store.saveSubscription(rec);
      }
      if (!this.#closed && !this.#deliveries.has(name)) {
        accepted();
        this.#startDelivery(topic, rec);
        return null;
      }
    }
    accepted();
    return null;
  }

  /** Removes a subscription for good; returns an error text or null. */
  async unsubscribe(name: string): Promise<string | null> {
    const d = this.#deliveries.get(name);
    const store = this.#broker.store;
    if (!d && !(await store.loadSubscription(this.subscriber, name))) {
      return `not subscribed to topic ${JSON.stringify(name)}`;
    }
    d?.stop();
    this.#deliveries.delete(name);
    await store.deleteSubscription(this.subscriber, name);
    (await this.#broker.topic(name)).untrackPosition(this.subscriber);
    return null;
  }

  /** PUBREC from the client. `topic` may be omitted: message ids are broker-wide. */
  received(topic: string | undefined, id: number, out: AckOutcome): void {
    const d = this.#find(topic, id);
    if (typeof d === "string") out.finished(d);
    else d.receivedWith(id, out);
  }

  /** PUBCOMP from the client. */
  completed(topic: string | undefined, id: number, out: AckOutcome): void {
    const d = this.#find(topic, id);
    if (typeof d === "string") out.finished(d);
    else d.completedWith(id, out);
  }

  #find(topic: string | undefined, id: number): Delivery | string {
    if (topic !== undefined) {
      return this.#deliveries.get(topic) ??
        `not subscribed to topic ${JSON.stringify(topic)} in this session`;
    }
    for (const d of this.#deliveries.values()) if (d.holds(id)) return d;
    return `no message with msgId ${id} is in flight to you`;
  }

  #startDelivery(topic: Topic, rec: SubscriptionRecord): void {
    const d = new Delivery(
      topic,
      rec,
      this.#broker.store,
      this.#sink,
      this.#broker.options.retry,
      (d, what) => this.#exhausted(d, what),
    );
    this.#deliveries.set(topic.topic, d);
    d.start();
  }

  #exhausted(d: Delivery, what: Exhausted): void {
    if (this.#deliveries.get(d.topic.topic) === d) this.#deliveries.delete(d.topic.topic);
    const expected = what.phase === "message" ? "PUBREC" : "PUBCOMP";
    log.warning(
      'No {expected} from {subscriber} for msgId {msgId} on "{topic}" after {sends} sends; subscription suspended',
      {
        expected,
        subscriber: this.subscriber,
        msgId: what.id,
        topic: d.topic.topic,
        sends: what.sends,
      },
    );
    void this.#broker.deadLetter({
      reason: "delivery-exhausted",
      detail: `no ${expected} after ${what.sends} sends; the subscription is suspended ` +
        "until the consumer subscribes or logs in again, and keeps its position",
      topic: d.topic.topic,
      msgId: what.id,
      subscriber: this.subscriber,
      sends: what.sends,
    });
  }

  /** Rebuilds the session from durable state after a failure in its handler. */
  async restart(): Promise<string[]> {
    for (const d of this.#deliveries.values()) d.stop();
    this.#deliveries.clear();
    // Positions the old deliveries were committing land before resume() reads them.
    return await this.resume();
  }

  /** Ends the session: deliveries stop, timers are cancelled, positions stay. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const d of this.#deliveries.values()) d.stop();
    this.#deliveries.clear();
    this.#onClose();
  }
}
