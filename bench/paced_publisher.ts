/**
 * A paced MQTT publisher run by a worker of its own on blocking system calls
 * (`paced_publisher_worker.ts`), so that its messages leave on their due times whatever
 * the generator's main thread is doing and whenever the broker answers. It sends the
 * same packets as {@link mqttPublish} and reports the same result; the subscribers stay
 * on the main thread.
 *
 * @module
 */
import type { MqttPublisherPlan, MqttPublisherResult, Problems } from "./mqtt_load.ts";
import type { PacedDone, PacedRequest } from "./paced_publisher_worker.ts";
import type { Latencies } from "./stats.ts";

type Reply =
  | { type: "connected" }
  | { type: "closed" }
  | PacedDone
  | { type: "failed"; message: string };

/** One connected publisher in its worker. */
export class PacedPublisher {
  readonly #worker: Worker;
  readonly #stop = new Int32Array(new SharedArrayBuffer(4));
  /** Requests awaiting their reply: the worker answers each in turn. */
  readonly #replies: PromiseWithResolvers<Reply>[] = [];
  #closed = false;

  private constructor() {
    this.#worker = new Worker(new URL("./paced_publisher_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker.onmessage = (e: MessageEvent<Reply>) => this.#replies.shift()?.resolve(e.data);
    this.#worker.onerror = (e) => {
      e.preventDefault();
      for (const r of this.#replies.splice(0)) r.resolve({ type: "failed", message: e.message });
    };
  }

  #ask(req: PacedRequest): Promise<Reply> {
    const reply = Promise.withResolvers<Reply>();
    this.#replies.push(reply);
    this.#worker.postMessage(req);
    return reply.promise;
  }

  /** Connects (CONNECT 3.1.1, clean session) from a new worker. */
  static async connect(port: number, clientId: string): Promise<PacedPublisher> {
    const p = new PacedPublisher();
    const reply = await p.#ask({ type: "connect", port, clientId, stop: p.#stop.buffer });
    if (reply.type !== "connected") {
      p.#worker.terminate();
      throw new Error(reply.type === "failed" ? reply.message : "unexpected reply");
    }
    return p;
  }

  /**
   * Publishes `plan.count` messages at `plan.rate` per second (QoS 1 or 2); each send
   * lag goes to `pacingLag`, in order, and what went wrong to `problems`.
   */
  async publish(
    plan: MqttPublisherPlan,
    problems: Problems,
    pacingLag?: Latencies,
  ): Promise<MqttPublisherResult> {
    const { qos, rate } = plan;
    if (rate === undefined || qos === 0) throw new RangeError("a paced QoS 1 or 2 plan only");
    const reply = await this.#ask({
      type: "publish",
      topic: plan.topic,
      qos,
      count: plan.count,
      window: plan.window,
      rate,
    });
    if (reply.type !== "done") {
      problems.add(`publisher ${plan.clientId}: ${reply.type === "failed" ? reply.message : "?"}`);
      const endedAt = performance.timeOrigin + performance.now();
      return { sent: 0, completed: 0, windowFull: 0, downgraded: 0, endedAt };
    }
    for (const text of reply.problems) problems.add(`publisher ${plan.clientId}: ${text}`);
    if (pacingLag) { for (let i = 0; i < reply.sent; i++) pacingLag.add(reply.lags[i]!); }
    return {
      sent: reply.sent,
      completed: reply.completed,
      windowFull: reply.windowFull,
      downgraded: reply.downgraded,
      endedAt: reply.endedAt,
    };
  }

  /**
   * Stops a run in progress (within 50 ms), disconnects, and ends the worker; resolves
   * once it has ended.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    Atomics.store(this.#stop, 0, 1);
    const reply = this.#ask({ type: "close" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise((r) => timer = setTimeout(r, 2000));
    await Promise.race([reply, late]);
    clearTimeout(timer);
    this.#worker.terminate();
  }
}
