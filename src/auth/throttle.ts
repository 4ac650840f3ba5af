/**
 * Throttles password guessing per remote address: an address that failed `limit`
 * logins within the last `windowMs` (a sliding window) may not try again until the
 * oldest of those failures is older than the window.
 *
 * @module
 */

/** Options of {@link LoginThrottle}. */
export interface LoginThrottleOptions {
  /** Failed logins an address may have within the window; further logins are refused. */
  limit: number;
  /** Length of the sliding window; default one minute. */
  windowMs?: number;
  /**
   * Addresses tracked at most: past it, the one whose last failure is the oldest is
   * forgotten, so a crowd of addresses cannot grow memory without bound.
   */
  maxAddresses?: number;
  /** The clock, in ms; tests pass a fake one. Default `performance.now`. */
  now?: () => number;
}

/**
 * Failed logins per address in a sliding window.
 *
 * @example
 * ```ts
 * const throttle = new LoginThrottle({ limit: 10 });
 * if (throttle.isBlocked("203.0.113.9")) refuse();
 * else if (!(await verify())) throttle.recordFailure("203.0.113.9");
 * ```
 */
export class LoginThrottle {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #maxAddresses: number;
  readonly #now: () => number;
  /** Per address, the times of its recent failures, oldest first; at most `limit`. */
  readonly #failures = new Map<string, number[]>();

  constructor(options: LoginThrottleOptions) {
    if (!Number.isInteger(options.limit) || options.limit < 1) {
      throw new RangeError(`limit must be a positive integer, got ${options.limit}`);
    }
    this.#limit = options.limit;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#maxAddresses = options.maxAddresses ?? 100_000;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Whether `address` has used up its failed logins for now. */
  isBlocked(address: string): boolean {
    const times = this.#recent(address);
    return times !== undefined && times.length >= this.#limit;
  }

  /** Counts a failed login of `address`. */
  recordFailure(address: string): void {
    const times = this.#recent(address) ?? [];
    times.push(this.#now());
    if (times.length > this.#limit) times.shift();
    // Re-inserted, so the map's order is from the longest-quiet address to the latest.
    this.#failures.delete(address);
    this.#failures.set(address, times);
    if (this.#failures.size > this.#maxAddresses) this.#evict();
  }

  /** Addresses currently tracked (for tests and metrics). */
  get size(): number {
    return this.#failures.size;
  }

  /** The failures of `address` still in the window, dropping older ones. */
  #recent(address: string): number[] | undefined {
    const times = this.#failures.get(address);
    if (times === undefined) return undefined;
    const since = this.#now() - this.#windowMs;
    while (times.length > 0 && (times[0] as number) <= since) times.shift();
    if (times.length === 0) {
      this.#failures.delete(address);
      return undefined;
    }
    return times;
  }

  /**
   * Drops the address whose last failure is the oldest: the map is in that order, so
   * it is the first key (and any address with only expired failures comes before the rest).
   */
  #evict(): void {
    const oldest = this.#failures.keys().next().value;
    if (oldest !== undefined) this.#failures.delete(oldest);
  }
}
