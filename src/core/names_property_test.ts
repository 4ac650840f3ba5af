/**
 * Property tests of the naming rules: topicError and usernameError accept exactly the
 * names their documented rules allow (README, "Errors": a topic is 1 to maxTopicBytes
 * UTF-8 bytes, no control characters, no `+` or `#`, no leading `$`; a username is 1 to
 * 64 letters, digits, `_`, `-`, `.` or `@`).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { MAX_TOPIC_BYTES, topicError, usernameError } from "./names.ts";

const encoder = new TextEncoder();
const RUNS = { numRuns: 2000 };

/** C0 controls and DEL, which the names module refuses today. */
const C0_AND_DEL = (c: number) => c <= 0x1f || c === 0x7f;
/** C1 controls: Unicode's other control characters (general category Cc). */
const C1 = (c: number) => c >= 0x80 && c <= 0x9f;

/** Characters that decide the rules, plus ordinary ones of every UTF-8 length. */
const interesting = fc.constantFrom(
  "a",
  "Z",
  "/",
  " ",
  "+",
  "#",
  "$",
  "é",
  "€",
  "😀",
  "\u0000",
  "\u001f",
  "\t",
  "\u007f",
  "\u00a0",
  "\u2028",
  "\ufffd",
);

/** Names of well-formed UTF-16 without C1 controls: the cases the rule below covers. */
const wellFormedName = fc.string({
  unit: fc.oneof(
    { weight: 3, arbitrary: interesting },
    { weight: 2, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  ),
  maxLength: 40,
}).filter((s) => ![...s].some((ch) => C1(ch.codePointAt(0) as number)));

/** The topic rule, restated from the documentation. */
function topicAllowed(name: string, maxBytes: number): boolean {
  const bytes = encoder.encode(name).byteLength;
  if (bytes < 1 || bytes > maxBytes) return false;
  for (const ch of name) {
    const c = ch.codePointAt(0) as number;
    if (C0_AND_DEL(c) || C1(c)) return false;
  }
  if (name.includes("+") || name.includes("#")) return false;
  return !name.startsWith("$");
}

/** The error must name a rule the name really breaks. */
function checkTopicMessage(name: string, maxBytes: number, error: string): void {
  const rules: [RegExp, boolean][] = [
    [/^topic must not be empty$/, name.length === 0],
    [
      new RegExp(`^topic is longer than ${maxBytes} bytes$`),
      encoder.encode(name).byteLength > maxBytes,
    ],
    // deno-lint-ignore no-control-regex
    [/control characters/, /[\u0000-\u001f\u007f-\u009f]/.test(name)],
    [/'\+' or '#'/, /[+#]/.test(name)],
    [/start with '\$'/, name.startsWith("$")],
  ];
  const rule = rules.find(([pattern]) => pattern.test(error));
  assert.ok(rule, `an error no rule explains: ${error}`);
  assert.ok(rule[1], `${JSON.stringify(name)} was refused for a rule it keeps: ${error}`);
}

Deno.test("topicError is null exactly for names of 1..max UTF-8 bytes without control characters, '+', '#' or a leading '$'", () => {
  fc.assert(
    fc.property(wellFormedName, fc.integer({ min: 1, max: 48 }), (name, max) => {
      const error = topicError(name, max);
      assert.equal(error === null, topicAllowed(name, max), `${JSON.stringify(name)} max ${max}`);
      if (error !== null) checkTopicMessage(name, max, error);
    }),
    RUNS,
  );
});

Deno.test("the default topic limit is MAX_TOPIC_BYTES UTF-8 bytes, counted in bytes, not characters", () => {
  fc.assert(
    fc.property(fc.constantFrom("a", "é", "€", "😀"), fc.integer({ min: 0, max: 8 }), (ch, off) => {
      const size = encoder.encode(ch).byteLength;
      const fits = ch.repeat(Math.floor(MAX_TOPIC_BYTES / size));
      const over = fits + ch.repeat(1 + off);
      assert.equal(topicError(fits), null);
      assert.equal(topicError(over), `topic is longer than ${MAX_TOPIC_BYTES} bytes`);
    }),
    { numRuns: 50 },
  );
});

Deno.test("a topic with a C1 control character (U+0080..U+009F) is refused like any control character", () => {
  // Unicode's control characters (Cc) are C0, DEL and C1; MQTT 5 (1.5.4) names
  // U+007F..U+009F among the control characters topic data should not hold.
  fc.assert(
    fc.property(
      wellFormedName,
      fc.integer({ min: 0x80, max: 0x9f }),
      wellFormedName,
      (before, c, after) => {
        const name = `a${before}${String.fromCharCode(c)}${after}`;
        const error = topicError(name, 4096);
        assert.ok(error !== null, `${JSON.stringify(name)} was accepted`);
        checkTopicMessage(name, 4096, error);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("a topic holding a lone surrogate (no UTF-8 form) is refused", () => {
  // A JSON string may carry "\ud800"; such a name has no UTF-8 encoding and Deno KV
  // stores it as U+FFFD, so "\ud800", "\udc00" and "\ufffd" would share one topic's keys.
  fc.assert(
    fc.property(
      wellFormedName,
      fc.integer({ min: 0xd800, max: 0xdfff }),
      (before, unit) => {
        const name = `a${before}${String.fromCharCode(unit)}`;
        assert.ok(!name.isWellFormed());
        assert.notEqual(topicError(name, 4096), null, `${JSON.stringify(name)} was accepted`);
      },
    ),
    { numRuns: 200 },
  );
});

const USERNAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.@";

/** Usernames: mostly allowed characters, with any other one mixed in, around the 64 cap. */
const username = fc.oneof(
  fc.string({
    unit: fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom(...USERNAME_CHARS) },
      { weight: 1, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
      { weight: 1, arbitrary: fc.constantFrom(" ", "\n", "\t", "+", "/", "é", ":", "\ud800") },
    ),
    maxLength: 70,
  }),
  fc.integer({ min: 0, max: 3 }).map((extra) => "u".repeat(62 + extra)),
);

Deno.test("usernameError is null exactly for 1..64 letters, digits, '_', '-', '.' or '@'", () => {
  fc.assert(
    fc.property(username, (name) => {
      const allowed = name.length >= 1 && name.length <= 64 &&
        [...name].every((ch) => USERNAME_CHARS.includes(ch));
      const error = usernameError(name);
      assert.equal(error === null, allowed, JSON.stringify(name));
      if (error !== null) {
        assert.ok(
          error.startsWith(`invalid username ${JSON.stringify(name.slice(0, 80))}: `),
          error,
        );
        assert.ok(!/[\r\n]/.test(error), "the error spans lines");
      }
    }),
    RUNS,
  );
});
