import assert from "node:assert/strict";
import { DEAD_LETTER_TOPIC, MAX_TOPIC_BYTES, topicError, usernameError } from "./names.ts";

Deno.test("ordinary topic names are valid, the dead letter topic included", () => {
  for (const name of ["t", "meaw", "a/b/c", "sensors/room 1", "ünïcödé", "é".repeat(128)]) {
    assert.equal(topicError(name), null, name);
  }
  assert.equal(topicError(DEAD_LETTER_TOPIC), null);
});

Deno.test("an empty topic name is refused", () => {
  assert.equal(topicError(""), "topic must not be empty");
});

Deno.test("a topic name is limited in UTF-8 bytes, not characters", () => {
  assert.equal(topicError("a".repeat(MAX_TOPIC_BYTES)), null);
  assert.match(topicError("a".repeat(MAX_TOPIC_BYTES + 1)) ?? "", /longer than 256 bytes/);
  // 129 two-byte characters are 258 bytes.
  assert.match(topicError("é".repeat(129)) ?? "", /longer than 256 bytes/);
});

Deno.test("a topic name with control characters is refused", () => {
  for (const name of ["a\nb", "a\u0000", "\tx", "x\u007f", "a\rb"]) {
    assert.match(topicError(name) ?? "", /control characters/, JSON.stringify(name));
  }
});

Deno.test("MQTT wildcards and a leading '$' are refused in topic names", () => {
  for (const name of ["a/+/b", "#", "a/#", "+"]) {
    assert.match(topicError(name) ?? "", /'\+' or '#'/, name);
  }
  assert.match(topicError("$SYS/x") ?? "", /must not start with '\$'/);
  assert.equal(topicError("a$b"), null, "'$' elsewhere is allowed");
});

Deno.test("usernames of 1 to 64 letters, digits, '_', '-', '.' or '@' are valid", () => {
  for (const name of ["a", "user_1", "alice.smith", "bob@example.com", "A-Z", "x".repeat(64)]) {
    assert.equal(usernameError(name), null, name);
  }
});

Deno.test("other usernames are refused with a message that quotes the name", () => {
  for (const name of ["", "x".repeat(65), "has space", "tab\t", "ü", "a/b", "a:b", "név"]) {
    const error = usernameError(name);
    assert.ok(error, `${JSON.stringify(name)} should be refused`);
    assert.ok(error.startsWith(`invalid username ${JSON.stringify(name.slice(0, 80))}`), error);
    assert.match(error, /1 to 64/);
  }
  // A long name is quoted only in part.
  const long = usernameError("y".repeat(500)) ?? "";
  assert.ok(long.includes("y".repeat(80)) && !long.includes("y".repeat(81)));
});

Deno.test("a username with a trailing newline is refused", () => {
  assert.notEqual(usernameError("alice\n"), null);
});
