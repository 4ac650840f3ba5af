/**
 * What goes to the dead letter channel, and in what shape.
 *
 * Dead letters are messages of the topic {@link DEAD_LETTER_TOPIC}, readable like any
 * other topic; each is a JSON object:
 *
 * - `reason`: `invalid-json`, `unknown-command`, `invalid-command`, `wrong-port`,
 *   `invalid-utf8` (rejected input lines) or `delivery-exhausted` (a subscriber did not
 *   acknowledge a message after every retry; the message stays queued for it),
 *   `mqtt-malformed` (an MQTT packet that breaks the framing or the codec, or is too
 *   large), `mqtt-protocol-error` (a packet out of place: before CONNECT, a second
 *   CONNECT, a wildcard or empty PUBLISH topic, a bad alias, Receive Maximum exceeded)
 *   and `mqtt-publish-denied` (a 3.1.1 PUBLISH the ACL refused, acknowledged and dropped);
 * - `detail`: a sentence saying what was wrong;
 * - `raw` (rejected input): the line as received, cut at {@link MAX_RAW_CHARS}
 *   characters (`rawTruncated: true` then);
 * - `port`, `remote`, `user`: where it came from; `topic`, `msgId`, `subscriber`,
 *   `sends` for delivery reports;
 * - `at`: ISO 8601 time.
 *
 * The channel keeps the newest `deadLetterMax` entries; older ones are deleted.
 *
 * @module
 */

export { DEAD_LETTER_TOPIC } from "./names.ts";

/** Longest raw line kept in a dead letter. */
export const MAX_RAW_CHARS = 4096;

/** Why something was dead-lettered. */
export type DeadLetterReason =
  | "invalid-json"
  | "unknown-command"
  | "invalid-command"
  | "wrong-port"
  | "invalid-utf8"
  | "delivery-exhausted"
  | "mqtt-malformed"
  | "mqtt-protocol-error"
  | "mqtt-publish-denied";

/** A dead letter before it is stored. */
export interface DeadLetter {
  reason: DeadLetterReason;
  detail: string;
  raw?: string;
  port?: string;
  remote?: string;
  user?: string;
  topic?: string;
  msgId?: number;
  subscriber?: string;
  sends?: number;
}

/** The JSON object stored for a dead letter. */
export function deadLetterBody(d: DeadLetter, now = Date.now()): Record<string, unknown> {
  const body: Record<string, unknown> = { ...d };
  if (d.raw !== undefined && d.raw.length > MAX_RAW_CHARS) {
    body.raw = d.raw.slice(0, MAX_RAW_CHARS);
    body.rawTruncated = true;
  }
  body.at = new Date(now).toISOString();
  return body;
}
