/**
 * Rules for topic names and subscriber names, shared by every protocol.
 *
 * @module
 */

/** The topic that receives dead letters. */
export const DEAD_LETTER_TOPIC = "deadLetterChan";

/** Default longest topic name, in UTF-8 bytes (MQTT allows 65,535; keys stay small this way). */
export const MAX_TOPIC_BYTES = 256;

const encoder = new TextEncoder();
// C0, DEL and C1 control characters (MQTT 5.0 section 1.5.4 discourages all of them).
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Checks a topic name; returns null when it is valid, else what is wrong.
 * `+` and `#` are MQTT wildcards and a leading `$` marks system topics, so none of
 * them may appear in a name that messages are published to.
 */
export function topicError(name: string, maxBytes = MAX_TOPIC_BYTES): string | null {
  if (name.length === 0) return "topic must not be empty";
  // A lone surrogate has no UTF-8 form: the store would turn it into U+FFFD and two
  // different names into one.
  if (!name.isWellFormed()) return "topic must be valid Unicode (no lone surrogates)";
  if (encoder.encode(name).byteLength > maxBytes) {
    return `topic is longer than ${maxBytes} bytes`;
  }
  if (CONTROL.test(name)) return "topic must not contain control characters";
  if (name.includes("+") || name.includes("#")) {
    return "topic must not contain '+' or '#' (reserved for wildcards)";
  }
  if (name.startsWith("$")) return "topic must not start with '$' (reserved for system topics)";
  return null;
}

const USERNAME = /^[A-Za-z0-9_.@-]{1,64}$/;

/** Checks a subscriber (user) name; returns null when valid, else what is wrong. */
export function usernameError(name: string): string | null {
  return USERNAME.test(name)
    ? null
    : `invalid username ${
      JSON.stringify(name.slice(0, 80))
    }: use 1 to 64 letters, digits, '_', '-', '.' or '@'`;
}
