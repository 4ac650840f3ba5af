/**
 * Rules for MQTT topic filters: which filters are valid, how a shared subscription
 * (`$share/{group}/{filter}`) is taken apart, and which topic names a filter matches.
 *
 * Matching is by exact levels ([MQTT-4.7.3-4]: no normalisation, no case folding), so
 * `a//b` and `a/b` are different topics and `+` matches an empty level too.
 *
 * ```ts
 * import { filterError, matches } from "./filters.ts";
 *
 * filterError("sport/tennis/#"); // null
 * filterError("sport/tennis#"); // "'#' must be a whole level ..."
 * matches("sport/+", "sport/tennis"); // true
 * matches("#", "$SYS/uptime"); // false
 * ```
 *
 * @module
 */

import { DEAD_LETTER_TOPIC } from "./names.ts";

/** Default longest topic filter, in UTF-8 bytes (a shared filter's `$share/g/` prefix counts). */
export const MAX_FILTER_BYTES = 1024;

const SHARE_PREFIX = "$share/";
const encoder = new TextEncoder();
// C0, DEL and C1 control characters: the same rule as topic names in names.ts (MQTT 5.0
// section 1.5.4 discourages all of them), so that no filter matches a name that is refused.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Checks a topic filter; returns null when it is valid, else what is wrong.
 *
 * ```ts
 * filterError("a/+/c"); // null
 * filterError("$share/workers/jobs/#"); // null
 * filterError("a/#/b"); // "'#' is allowed only as the last level"
 * ```
 */
export function filterError(filter: string, maxBytes = MAX_FILTER_BYTES): string | null {
  // 3.1.1 [MQTT-4.7.3-1], v5 [MQTT-4.7.3-1]: a filter is at least one character.
  if (filter.length === 0) return "filter must not be empty";
  // A lone surrogate has no UTF-8 form: the store would turn two filters into one.
  if (!filter.isWellFormed()) return "filter must be valid Unicode (no lone surrogates)";
  // A UTF-16 code unit is at most 3 UTF-8 bytes, so short filters skip the encoding.
  if (filter.length * 3 > maxBytes && encoder.encode(filter).byteLength > maxBytes) {
    return `filter is longer than ${maxBytes} bytes`;
  }
  // [MQTT-4.7.3-2] forbids U+0000; our own rule refuses every other control character too.
  if (CONTROL.test(filter)) return "filter must not contain control characters";
  if (filter === "$share" || filter.startsWith(SHARE_PREFIX)) return sharedError(filter);
  return levelsError(filter);
}

/** The parts of a `$share/{group}/{filter}` filter, validated by filterError before. */
function sharedError(filter: string): string | null {
  const share = parseShare(filter);
  if (share === null) return "a shared filter must have the form $share/{group}/{filter}";
  // v5 [MQTT-4.8.2-1]: the share name is at least one character.
  if (share.group.length === 0) return "the share group of a shared filter must not be empty";
  // v5 [MQTT-4.8.2-2]: the share name holds no '/', '+' or '#' ('/' ends it by construction).
  if (share.group.includes("+") || share.group.includes("#")) {
    return "the share group of a shared filter must not contain '+' or '#'";
  }
  // v5 [MQTT-4.8.2-1]: a topic filter follows the share name.
  if (share.filter.length === 0) return "the filter after the share group must not be empty";
  return levelsError(share.filter);
}

/** Checks where the wildcards of a (non-shared) filter stand. */
function levelsError(filter: string): string | null {
  const levels = filter.split("/");
  for (const [i, level] of levels.entries()) {
    if (level.includes("#")) {
      // 3.1.1 [MQTT-4.7.1-2], v5 [MQTT-4.7.1-1]: '#' is a whole level and the last one.
      if (level !== "#") return "'#' must be a whole level (for example 'a/#', not 'a#')";
      if (i !== levels.length - 1) return "'#' is allowed only as the last level";
    }
    // 3.1.1 [MQTT-4.7.1-3], v5 [MQTT-4.7.1-2]: '+' occupies a whole level.
    if (level.includes("+") && level !== "+") {
      return "'+' must be a whole level (for example 'a/+/b', not 'a+')";
    }
  }
  return null;
}

/**
 * Splits a shared subscription `$share/{group}/{filter}` into its group and filter;
 * returns null for any other filter. It assumes a filter that filterError accepted.
 *
 * ```ts
 * parseShare("$share/workers/jobs/#"); // { group: "workers", filter: "jobs/#" }
 * parseShare("jobs/#"); // null
 * ```
 */
export function parseShare(filter: string): { group: string; filter: string } | null {
  if (!filter.startsWith(SHARE_PREFIX)) return null;
  const end = filter.indexOf("/", SHARE_PREFIX.length);
  if (end < 0) return null;
  return { group: filter.slice(SHARE_PREFIX.length, end), filter: filter.slice(end + 1) };
}

/**
 * Tells whether a (non-shared) filter matches a concrete topic name.
 *
 * `+` matches exactly one level, `#` the parent level and any number of child levels.
 * Topics that start with `$` are not matched by a filter whose first level is a
 * wildcard, and the dead letter topic is matched only by its own exact name.
 *
 * ```ts
 * matches("sport/tennis/player1/#", "sport/tennis/player1"); // true
 * matches("sport/+", "sport"); // false
 * matches("+/monitor/Clients", "$SYS/monitor/Clients"); // false
 * ```
 */
export function matches(filter: string, topic: string): boolean {
  // Dead letters are reached only on purpose, never through a wildcard (the ACL does the same).
  if (topic === DEAD_LETTER_TOPIC) return filter === DEAD_LETTER_TOPIC;
  const f = filter.split("/");
  const t = topic.split("/");
  // [MQTT-4.7.2-1]: '$' topics are hidden from filters that start with a wildcard.
  if (topic.startsWith("$") && (f[0] === "+" || f[0] === "#")) return false;
  for (const [i, level] of f.entries()) {
    // '#' is the last level: it covers the parent (i === t.length) and every child.
    if (level === "#") return true;
    if (i >= t.length) return false;
    if (level !== "+" && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/**
 * Tells whether a valid filter contains a wildcard (`+` or `#`), i.e. can match more
 * than one topic. A shared filter's group never holds one, so only its filter counts.
 */
export function hasWildcard(filter: string): boolean {
  return filter.includes("+") || filter.includes("#");
}

/** The filter a (possibly shared) subscription matches topics with. */
export function innerFilter(filter: string): string {
  return parseShare(filter)?.filter ?? filter;
}
