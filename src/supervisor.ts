/**
 * Supervision in the manner of OTP: a child that fails is logged with its context and
 * restarted from its durable state after a backoff; a child that fails more than
 * `maxRestarts` times within `periodMs` is given up on (it stays down and answers
 * errors) instead of looping. A failure never propagates past its supervisor, so one
 * topic or one connection cannot take the process down.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";

/** When and how often a supervisor restarts a failed child. */
export interface RestartPolicy {
  /** Restarts allowed within `periodMs` (OTP's max_restarts). */
  maxRestarts: number;
  /** The sliding window for `maxRestarts` (OTP's max_seconds). */
  periodMs: number;
  /** Delay before the first restart; doubles with each restart in the window. */
  minBackoffMs: number;
  /** Upper bound of the delay. */
  maxBackoffMs: number;
}

/** Defaults: 5 restarts in 10 s, backoff from 10 ms to 1 s. */
export const DEFAULT_POLICY: RestartPolicy = {
  maxRestarts: 5,
  periodMs: 10_000,
  minBackoffMs: 10,
  maxBackoffMs: 1_000,
};

/** Something a supervisor can restart. */
export interface Restartable {
  /** Name for logs, e.g. `topic "meaw"`. */
  readonly name: string;
  /** Rebuilds the child's state from durable storage and resumes it. */
  restart(): Promise<void>;
  /** Called when the restart intensity is exceeded: the child must stop for good. */
  giveUp(err: unknown): void;
}

interface ChildState {
  restarts: number[];
  timer: ReturnType<typeof setTimeout> | undefined;
  restarting: boolean;
}

/**
 * Restarts failed children.
 *
 * @example
 * ```ts
 * const sup = new Supervisor("topics", logger);
 * sup.childFailed(topic, new Error("boom"), { topic: "meaw" });
 * ```
 */
export class Supervisor {
  readonly name: string;
  #log: Logger;
  #policy: RestartPolicy;
  #children = new Map<Restartable, ChildState>();
  #closed = false;
  #restartCount = 0;

  constructor(name: string, log: Logger, policy: Partial<RestartPolicy> = {}) {
    this.name = name;
    this.#log = log;
    this.#policy = { ...DEFAULT_POLICY, ...policy };
  }

  /** Restarts performed since start, for metrics and tests. */
  get restartCount(): number {
    return this.#restartCount;
  }

  /**
   * Reports that `child` failed. The supervisor logs it and schedules a restart, or
   * gives up on the child when it failed too often. Reports that arrive while a restart
   * is already scheduled are logged and merged into it.
   */
  childFailed(child: Restartable, err: unknown, context: Record<string, unknown> = {}): void {
    const state = this.#children.get(child) ??
      { restarts: [], timer: undefined, restarting: false };
    this.#children.set(child, state);
    this.#log.error("{child} failed: {error}", {
      supervisor: this.name,
      child: child.name,
      error: errorText(err),
      ...context,
    });
    if (this.#closed || state.timer !== undefined || state.restarting) return;

    const now = Date.now();
    state.restarts = state.restarts.filter((t) => now - t < this.#policy.periodMs);
    if (state.restarts.length >= this.#policy.maxRestarts) {
      this.#log.fatal(
        "{child} failed {count} times within {periodMs} ms; giving up on it",
        {
          supervisor: this.name,
          child: child.name,
          count: state.restarts.length + 1,
          periodMs: this.#policy.periodMs,
        },
      );
      this.#children.delete(child);
      child.giveUp(err);
      return;
    }
    state.restarts.push(now);
    const delay = Math.min(
      this.#policy.maxBackoffMs,
      this.#policy.minBackoffMs * 2 ** (state.restarts.length - 1),
    );
    state.timer = setTimeout(() => this.#restart(child, state), delay);
  }

  async #restart(child: Restartable, state: ChildState): Promise<void> {
    state.timer = undefined;
    if (this.#closed) return;
    state.restarting = true;
    try {
      await child.restart();
      this.#restartCount++;
      this.#log.info("{child} restarted", { supervisor: this.name, child: child.name });
    } catch (err) {
      state.restarting = false;
      this.childFailed(child, err, { during: "restart" });
      return;
    }
    state.restarting = false;
  }

  /** Forgets a child that stopped normally. */
  remove(child: Restartable): void {
    const state = this.#children.get(child);
    if (state?.timer !== undefined) clearTimeout(state.timer);
    this.#children.delete(child);
  }

  /** Cancels every scheduled restart; later failures are only logged. */
  close(): void {
    this.#closed = true;
    for (const state of this.#children.values()) {
      if (state.timer !== undefined) clearTimeout(state.timer);
    }
    this.#children.clear();
  }
}

/** A one-line description of a thrown value. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}
