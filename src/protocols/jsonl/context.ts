/**
 * What the JSON-line front ends share: the core, their limits, and how rejected input
 * is answered and dead-lettered.
 *
 * @module
 */
import type { Authenticator } from "../../auth/authenticator.ts";
import type { Broker } from "../../core/broker.ts";
import type { DeadLetterReason } from "../../core/dead_letters.ts";
import type { LineConnection, LineEvent } from "../../transport/tcp.ts";

/** Test hooks for the connection handlers; production code passes none. */
export interface JsonlHooks {
  /** Called before each decoded command is handled; a throw is a handler failure. */
  beforeCommand?(port: "consumer" | "publisher", type: string): void;
}

/** Settings and collaborators of the JSON-line front ends. */
export interface JsonlContext {
  broker: Broker;
  /** Failed logins (or lines before a login) before a connection is disconnected. */
  loginAttempts: number;
  /**
   * Ms a connection may take to log in before it is closed (0 or absent = no limit):
   * on the consumer port always, on the publisher port when `auth` is set.
   */
  loginTimeout?: number;
  /** Password checks; when set, both ports require `log USER PASSWORD`. */
  auth?: Authenticator;
  /** Largest message body in UTF-8 bytes. */
  maxMessageBytes: number;
  /** PUBs awaiting PUBREL per publisher connection. */
  maxPendingPerConnection: number;
  /** Deepest nesting of arrays and objects in a line. */
  maxJsonDepth: number;
  hooks?: JsonlHooks;
}

/** Stores a rejected input line as a dead letter (the caller answers it). */
export function deadLetterInput(
  ctx: JsonlContext,
  conn: LineConnection,
  port: "consumer" | "publisher",
  user: string | undefined,
  rejected: { reason: DeadLetterReason; detail: string },
  raw: string | undefined,
): void {
  void ctx.broker.deadLetter({
    reason: rejected.reason,
    detail: rejected.detail,
    raw,
    port,
    remote: conn.remote,
    user,
  });
}

/** The answer to a line that is not valid UTF-8. */
export const INVALID_UTF8 = {
  reason: "invalid-utf8",
  reply: "ERROR: line is not valid UTF-8",
  detail: "line is not valid UTF-8",
} as const;

/** The line that closes a connection whose input line passed the limit. */
export function tooLongLine(limit: number): string {
  return `ERROR: line longer than ${limit} bytes, closing connection`;
}

/**
 * The text of an input event, trimmed, for a JSON-line server's loop: null when there is
 * no command in it (an empty line, as telnet users send; a line that is not UTF-8, which
 * is answered through `reply` and dead-lettered here), or the limit of a line that was
 * too long (the caller answers it, after the replies before it, and closes).
 */
export function commandText(
  ev: Exclude<LineEvent, { kind: "recognized" }>,
  ctx: JsonlContext,
  conn: LineConnection,
  port: "consumer" | "publisher",
  user: string | undefined,
  reply: (line: string) => void,
): string | null | { tooLong: number } {
  if (ev.kind === "too-long") return { tooLong: ev.limit };
  if (ev.kind === "invalid-utf8") {
    reply(INVALID_UTF8.reply);
    deadLetterInput(ctx, conn, port, user, INVALID_UTF8, undefined);
    return null;
  }
  const line = ev.text.trim();
  return line === "" ? null : line;
}
