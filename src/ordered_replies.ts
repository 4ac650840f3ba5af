/**
 * Replies sent in the order of the requests they answer, each once what it waits for
 * has settled. Both protocols need this: a publisher pipelines many PUBs (or MQTT
 * PUBLISHes) whose commits may settle in any order, and must get their answers in the
 * order it sent them.
 *
 * Not a chain of promises: a chain settles one link per microtask, so the answers to
 * one group commit would trickle out one per turn and each take a socket write of its
 * own. Here every reply that is ready goes out in one synchronous pass, and the
 * connection's output queue sends them in one write.
 *
 * The core uses it too: a topic releases its appends to readers in sequence order,
 * each once its commit landed (or at once when it is kept in memory only).
 *
 * @module
 */

/** Told once how an operation ended; `Promise.withResolvers()` gives one too. */
export interface Settle<T> {
  resolve(value: T): void;
  reject(err: unknown): void;
}

/**
 * A reply's place in the queue, settled by whoever does the work it waits for: the
 * callback form of {@link OrderedReplies.add}, which costs no promise and no reaction.
 * Only its first settlement counts. Made by {@link OrderedReplies.ticket} from two
 * functions, or a subclass that overrides {@link send} and {@link fail} (one object per
 * reply instead of two closures), queued with {@link OrderedReplies.enqueue}.
 */
export class Ticket<T = unknown> implements Settle<T> {
  state: "waiting" | "ready" | "failed" = "waiting";
  /** What it was resolved with, or the error. */
  value: unknown = undefined;
  readonly #send: ((value: T) => void) | undefined;
  readonly #fail: ((err: unknown) => void) | undefined;
  /** Set by the queue it joins: sends whatever has become ready. */
  flush: () => void = notQueued;

  constructor(send?: (value: T) => void, fail?: (err: unknown) => void) {
    this.#send = send;
    this.#fail = fail;
  }

  /** The reply, once resolved with `value` and every reply before it is out. */
  send(value: T): void {
    this.#send?.(value);
  }

  /** Instead of {@link send} when rejected; throws `err` (to the queue's `onError`) by default. */
  fail(err: unknown): void {
    if (!this.#fail) throw err;
    this.#fail(err);
  }

  resolve(value: T): void {
    if (this.state !== "waiting") return;
    this.state = "ready";
    this.value = value;
    this.flush();
  }

  reject(err: unknown): void {
    if (this.state !== "waiting") return;
    this.state = "failed";
    this.value = err;
    this.flush();
  }
}

function notQueued(): void {
  throw new Error("a ticket settled before it was queued");
}

/**
 * An ordered queue of replies.
 *
 * @example
 * ```ts
 * const replies = new OrderedReplies((err) => console.error(err));
 * const slow = new Promise<string>((r) => setTimeout(() => r("first"), 10));
 * replies.add(slow, (line) => console.log(line));
 * replies.add(null, () => console.log("second")); // printed after "first"
 * await replies.settled();
 * ```
 */
export class OrderedReplies {
  /**
   * Replies from `#head` to `#tail`; the slots are reused once all are out, so a steady
   * stream of replies does not grow (and reallocate) an array per pass.
   */
  #queue: (Ticket | undefined)[] = [];
  #head = 0;
  #tail = 0;
  #empty: PromiseWithResolvers<void> | null = null;
  #onError: (err: unknown) => void;
  readonly #flushing = () => this.#flush();
  #flushingNow = false;

  /**
   * @param onError called when a `send` throws, or a reply fails without a `fail`;
   *   later replies are still sent
   */
  constructor(onError: (err: unknown) => void) {
    this.#onError = onError;
  }

  /** Slots the queue's array holds (sent ones are reused): what it costs in memory. */
  get slots(): number {
    return this.#queue.length;
  }

  /** Replies queued and not yet sent. */
  get pending(): number {
    return this.#tail - this.#head;
  }

  /**
   * Queues a reply: `send(value)` runs once `after` (if any) resolves to `value` and
   * every reply queued before this one is out; `fail(err)` runs instead if it rejects.
   */
  add<T>(after: Promise<T> | null, send: (value: T) => void, fail?: (err: unknown) => void): void {
    const t = this.ticket(send, fail);
    if (!after) t.resolve(undefined as T);
    else after.then((value) => t.resolve(value), (err) => t.reject(err));
  }

  /**
   * Queues a reply that waits for its ticket: `send(value)` runs once the ticket is
   * resolved with `value` and every reply queued before this one is out; `fail(err)`
   * runs instead if it is rejected.
   */
  ticket<T>(send: (value: T) => void, fail?: (err: unknown) => void): Ticket<T> {
    return this.enqueue(new Ticket(send, fail));
  }

  /** Queues `ticket` (see {@link Ticket}) behind every reply queued so far; returns it. */
  enqueue<K extends Ticket<never>>(ticket: K): K {
    ticket.flush = this.#flushing;
    this.#queue[this.#tail++] = ticket as unknown as Ticket;
    return ticket;
  }

  /** Resolves once every reply queued so far has been sent (or has failed). */
  settled(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    this.#empty ??= Promise.withResolvers<void>();
    return this.#empty.promise;
  }

  #flush(): void {
    // A reply settled by a `send` of this pass is taken by this pass's loop.
    if (this.#flushingNow) return;
    this.#flushingNow = true;
    try {
      const q = this.#queue;
      while (this.#head < this.#tail) {
        const r = q[this.#head] as Ticket;
        if (r.state === "waiting") break;
        q[this.#head++] = undefined; // let it go
        try {
          if (r.state === "ready") r.send(r.value);
          else r.fail(r.value);
        } catch (err) {
          this.#onError(err);
        }
      }
      if (this.#head === this.#tail) {
        this.#head = 0;
        this.#tail = 0;
        // A burst's worth of slots is kept for the next; a rare huge one is let go.
        if (q.length > 4096) this.#queue = [];
        this.#empty?.resolve();
        this.#empty = null;
      } else if (this.#head >= 1024 && this.#head * 2 >= this.#tail) {
        // Never empty (a steady stream): the replies still waiting move to the front,
        // so the slots already sent are reused instead of the array growing for ever.
        q.copyWithin(0, this.#head, this.#tail);
        q.fill(undefined, this.#tail - this.#head, this.#tail);
        this.#tail -= this.#head;
        this.#head = 0;
      }
    } finally {
      this.#flushingNow = false;
    }
  }
}
