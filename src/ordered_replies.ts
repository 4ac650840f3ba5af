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

interface Pending {
  state: "waiting" | "ready" | "failed";
  /** What the awaited promise resolved to, or its error. */
  value: unknown;
  send: (value: unknown) => void;
  fail?: (err: unknown) => void;
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
  #queue: Pending[] = [];
  #head = 0;
  #empty: PromiseWithResolvers<void> | null = null;
  #onError: (err: unknown) => void;

  /**
   * @param onError called when a `send` throws, or `after` rejects without a `fail`;
   *   later replies are still sent
   */
  constructor(onError: (err: unknown) => void) {
    this.#onError = onError;
  }

  /** Replies queued and not yet sent. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * Queues a reply: `send(value)` runs once `after` (if any) resolves to `value` and
   * every reply queued before this one is out; `fail(err)` runs instead if it rejects.
   */
  add<T>(after: Promise<T> | null, send: (value: T) => void, fail?: (err: unknown) => void): void {
    const r: Pending = {
      state: after ? "waiting" : "ready",
      value: undefined,
      send: send as (value: unknown) => void,
      fail,
    };
    this.#queue.push(r);
    if (!after) {
      this.#flush();
      return;
    }
    after.then((value) => {
      r.state = "ready";
      r.value = value;
      this.#flush();
    }, (err) => {
      r.state = "failed";
      r.value = err;
      this.#flush();
    });
  }

  /** Resolves once every reply queued so far has been sent (or has failed). */
  settled(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    this.#empty ??= Promise.withResolvers<void>();
    return this.#empty.promise;
  }

  #flush(): void {
    const q = this.#queue;
    while (this.#head < q.length) {
      const r = q[this.#head] as Pending;
      if (r.state === "waiting") break;
      q[this.#head++] = undefined as unknown as Pending; // let it go
      try {
        if (r.state === "ready") r.send(r.value);
        else if (r.fail) r.fail(r.value);
        else throw r.value;
      } catch (err) {
        this.#onError(err);
      }
    }
    if (this.#head === q.length) {
      this.#queue = [];
      this.#head = 0;
      this.#empty?.resolve();
      this.#empty = null;
    }
  }
}
