/**
 * Logging in on the JSON-line ports: the `log USER` / `log USER PASSWORD` line, failed
 * attempts, and the login timeout.
 *
 * Without a password file (the seed's behaviour) a consumer logs in with `log USER`
 * and publishers do not log in. With one, both ports take `log USER PASSWORD`: the
 * password is everything after the white space that follows the user, so it may hold
 * spaces but cannot start or end with white space (the line is trimmed; `passwd`
 * refuses such passwords).
 *
 * @module
 */
import { usernameError } from "../../core/names.ts";
import { getLogger } from "../../log.ts";
import type { LineConnection } from "../../transport/tcp.ts";
import type { JsonlContext } from "./context.ts";

const log = getLogger("login");

const LOGIN = /^log(?:\s+(.*))?$/;

/** The greeting, and the answer to any other line before a login. */
export const PLEASE_LOGIN = "Please login!";
/** The answer to a successful login. */
export const LOGGED_IN = "Successfully logged in!";
/** The answer to a wrong password or an unknown user (never told apart). */
export const WRONG_CREDENTIALS = "ERROR: wrong username or password";
/** The answer to `log USER` when a password is required. */
export const PASSWORD_REQUIRED = "ERROR: password required: log USER PASSWORD";

/** What to do after a line offered to {@link LoginGate.offer}. */
export type LoginStep =
  /** `user` is logged in; the caller sends {@link LOGGED_IN} once its session is ready. */
  | { kind: "in"; user: string }
  /** Not logged in; the answer was sent, wait for the next line. */
  | { kind: "again" }
  /** The answer was sent; close the connection. */
  | { kind: "close" };

/**
 * The state of one connection before it logs in: failed attempts (up to
 * `ctx.loginAttempts`) and the login timer, which closes the connection if no login
 * comes within `ctx.loginTimeout` ms. Call {@link loggedIn} on success and
 * {@link dispose} when the connection ends, so the timer never outlives it.
 */
export class LoginGate {
  readonly #conn: LineConnection;
  readonly #ctx: JsonlContext;
  #attempts = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Starts the login timer. The consumer port makes a gate for every connection; the
   * publisher port only when a password is required (without one it has no login).
   */
  constructor(conn: LineConnection, ctx: JsonlContext) {
    this.#conn = conn;
    this.#ctx = ctx;
    const ms = ctx.loginTimeout ?? 0;
    if (ms > 0) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        log.info("No login from {remote} within {ms} ms, closing", { remote: conn.remote, ms });
        conn.send(`ERROR: no login within ${ms} ms, closing connection`);
        conn.close(`no login within ${ms} ms`);
      }, ms);
    }
  }

  /** Handles one line received before a login; sends every answer but the success. */
  async offer(line: string): Promise<LoginStep> {
    const rest = LOGIN.exec(line)?.[1]?.trim();
    const auth = this.#ctx.auth;
    if (!auth) {
      const bad = rest === undefined ? null : usernameError(rest);
      if (rest !== undefined && !bad) return this.#in(rest);
      return this.#fail(bad ? `ERROR: ${bad}` : PLEASE_LOGIN);
    }
    if (rest === undefined || rest === "") return this.#fail(PLEASE_LOGIN);
    const address = this.#conn.address;
    if (auth.isThrottled(address)) return this.#throttled(address);
    const space = rest.search(/\s/);
    const user = space < 0 ? rest : rest.slice(0, space);
    const password = space < 0 ? "" : rest.slice(space).trimStart();
    const bad = usernameError(user);
    if (bad) return this.#fail(`ERROR: ${bad}`);
    if (password === "") return this.#fail(PASSWORD_REQUIRED);
    const result = await auth.login(address, user, password, this.#conn.closed);
    if (this.#conn.isClosed) return { kind: "close" };
    if (result.ok) return this.#in(user);
    if (result.reason === "throttled") return this.#throttled(address);
    return this.#fail(WRONG_CREDENTIALS, { always: true });
  }

  /** Stops the login timer. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #in(user: string): LoginStep {
    this.dispose();
    return { kind: "in", user };
  }

  #throttled(address: string): LoginStep {
    this.#conn.send(`ERROR: too many failed logins from ${address}; try again later`);
    return { kind: "close" };
  }

  /**
   * Counts a failed attempt and answers it. The last allowed attempt is answered with
   * the closing line only, as in the seed, unless `always` (a wrong password is
   * reported before the connection closes).
   */
  #fail(reply: string, { always = false } = {}): LoginStep {
    if (++this.#attempts >= this.#ctx.loginAttempts) {
      if (always) this.#conn.send(reply);
      this.#conn.send(`ERROR: no login after ${this.#attempts} attempts, closing connection`);
      return { kind: "close" };
    }
    this.#conn.send(reply);
    return { kind: "again" };
  }
}
