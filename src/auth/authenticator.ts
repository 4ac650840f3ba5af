/**
 * Login policy shared by every protocol: check a password, answer failures only after
 * a delay, and throttle addresses that fail too often. Protocols turn the result into
 * their own words (an error line, an MQTT reason code).
 *
 * @module
 */
import { getLogger } from "../log.ts";
import { PasswordFile } from "./passwords.ts";
import { LoginThrottle } from "./throttle.ts";

const log = getLogger("auth");

/** What checks passwords; {@link PasswordFile} is the real one. */
export interface PasswordVerifier {
  verify(user: string, password: string): Promise<boolean>;
}

/** Options of {@link Authenticator}. */
export interface AuthenticatorOptions {
  /** Delay before a failed login is answered: slows guessing on one connection. */
  failureDelayMs: number;
  /** Failed logins per address within `windowMs` before it is refused at once. */
  failureLimit: number;
  /** Throttle window; default one minute. */
  windowMs?: number;
  /** The throttle's clock; tests pass a fake one. */
  now?: () => number;
}

/** The outcome of {@link Authenticator.login}. */
export type LoginResult =
  | { ok: true }
  /** Wrong password or unknown user (never told apart), answered after the delay. */
  | { ok: false; reason: "wrong-credentials" }
  /** The address failed too often lately; refused at once without checking. */
  | { ok: false; reason: "throttled" };

/**
 * Checks logins against a password file.
 *
 * @example
 * ```ts
 * const auth = await Authenticator.load("./passwords", { failureDelayMs: 500, failureLimit: 10 });
 * const result = await auth.login("127.0.0.1", "alice", "s3cret pass");
 * ```
 */
export class Authenticator {
  readonly #verifier: PasswordVerifier;
  readonly #throttle: LoginThrottle;
  readonly #failureDelayMs: number;

  constructor(verifier: PasswordVerifier, options: AuthenticatorOptions) {
    this.#verifier = verifier;
    this.#failureDelayMs = options.failureDelayMs;
    this.#throttle = new LoginThrottle({
      limit: options.failureLimit,
      windowMs: options.windowMs,
      now: options.now,
    });
  }

  /**
   * Loads the password file at `path`.
   * @throws {PasswordFileError} if it is missing or malformed (the message names it).
   */
  static async load(path: string, options: AuthenticatorOptions): Promise<Authenticator> {
    const file = await PasswordFile.load(path);
    log.info("Authentication on: {count} users in {path}", { count: file.users.length, path });
    return new Authenticator(file, options);
  }

  /** Whether `address` is refused for now after too many failed logins. */
  isThrottled(address: string): boolean {
    return this.#throttle.isBlocked(address);
  }

  /**
   * Checks `user`'s `password` for a client at `address`. A failure is counted against
   * the address at once (so parallel connections cannot race past the limit) and
   * answered after the failure delay, or as soon as `cancelled` settles (the
   * connection went away), so no timer outlives its connection.
   */
  async login(
    address: string,
    user: string,
    password: string,
    cancelled?: Promise<unknown>,
  ): Promise<LoginResult> {
    if (this.#throttle.isBlocked(address)) {
      log.warning("Refused a login of {user} from {address}: too many failed logins", {
        user,
        address,
      });
      return { ok: false, reason: "throttled" };
    }
    if (await this.#verifier.verify(user, password)) return { ok: true };
    this.#throttle.recordFailure(address);
    log.warning("Failed login of {user} from {address}", { user, address });
    await delay(this.#failureDelayMs, cancelled);
    return { ok: false, reason: "wrong-credentials" };
  }
}

async function delay(ms: number, cancelled?: Promise<unknown>): Promise<void> {
  if (ms <= 0) return;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const elapsed = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  try {
    await Promise.race(cancelled ? [elapsed, cancelled] : [elapsed]);
  } finally {
    clearTimeout(timer);
  }
}
