/**
 * An actor's mailbox: messages are handled one at a time, in the order they were
 * posted. Handlers run synchronously; work they start asynchronously (a commit) goes on
 * outside the mailbox, so an actor keeps its order without waiting for the disk.
 *
 * @module
 */

/**
 * A FIFO of messages with one synchronous handler.
 *
 * @example
 * ```ts
 * const box = new Mailbox<string>((m) => console.log(m), (err) => console.error(err));
 * box.post("hello");
 * ```
 */
export class Mailbox<M> {
  #queue: M[] = [];
  #head = 0;
  #draining = false;
  #handle: (message: M) => void;
  #crash: (err: unknown, message: M) => void;

  /**
   * @param handle handles one message; a throw is an actor failure.
   * @param crash receives a handler's failure and the message that caused it.
   */
  constructor(handle: (message: M) => void, crash: (err: unknown, message: M) => void) {
    this.#handle = handle;
    this.#crash = crash;
  }

  /** Messages waiting. */
  get size(): number {
    return this.#queue.length - this.#head;
  }

  /** Queues a message; handles it now unless a handler is already running. */
  post(message: M): void {
    this.#queue.push(message);
    if (!this.#draining) this.#drain();
  }

  /** Removes and returns every waiting message (used when the actor stops). */
  takeAll(): M[] {
    const rest = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    return rest;
  }

  #drain(): void {
    this.#draining = true;
    try {
      while (this.#head < this.#queue.length) {
        const message = this.#queue[this.#head++] as M;
        try {
          this.#handle(message);
        } catch (err) {
          this.#crash(err, message);
        }
      }
      this.#queue = [];
      this.#head = 0;
    } finally {
      this.#draining = false;
    }
  }
}
