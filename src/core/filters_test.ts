import assert from "node:assert/strict";
import { filterError, hasWildcard, matches, MAX_FILTER_BYTES, parseShare } from "./filters.ts";
import { DEAD_LETTER_TOPIC } from "./names.ts";

Deno.test("the specification's example filters are valid", () => {
  for (
    const filter of [
      "sport/tennis/player1/#",
      "sport/#",
      "#",
      "sport/tennis/#",
      "+",
      "+/tennis/#",
      "sport/+/player1",
      "+/+",
      "/+",
      "/finance",
      "$SYS/#",
      "$SYS/monitor/+",
      "a//b",
      "/",
      "ünïcödé/+",
      DEAD_LETTER_TOPIC,
    ]
  ) {
    assert.equal(filterError(filter), null, filter);
  }
});

Deno.test("'#' must be a whole level and the last one", () => {
  assert.match(filterError("a/#/b") ?? "", /only as the last level/);
  assert.match(filterError("#/a") ?? "", /only as the last level/);
  assert.match(filterError("sport/tennis#") ?? "", /'#' must be a whole level/);
  assert.match(filterError("#a") ?? "", /'#' must be a whole level/);
  assert.match(filterError("a/##") ?? "", /'#' must be a whole level/);
});

Deno.test("'+' must be a whole level", () => {
  assert.match(filterError("a+") ?? "", /'\+' must be a whole level/);
  assert.match(filterError("sport+") ?? "", /'\+' must be a whole level/);
  assert.match(filterError("a/+b/c") ?? "", /'\+' must be a whole level/);
  assert.match(filterError("++") ?? "", /'\+' must be a whole level/);
});

Deno.test("an empty filter is refused", () => {
  assert.equal(filterError(""), "filter must not be empty");
});

Deno.test("a filter with NUL or another control character is refused", () => {
  for (const filter of ["a\u0000", "\u0000", "a/\nb", "\t#", "x\u007f", "x\u0085/+"]) {
    assert.match(filterError(filter) ?? "", /control characters/, JSON.stringify(filter));
  }
});

Deno.test("a filter with a lone surrogate is refused", () => {
  assert.match(filterError("a/\ud800") ?? "", /lone surrogates/);
});

Deno.test("a filter is limited in UTF-8 bytes, not characters", () => {
  assert.equal(filterError("a".repeat(MAX_FILTER_BYTES)), null);
  assert.match(filterError("a".repeat(MAX_FILTER_BYTES + 1)) ?? "", /longer than 1024 bytes/);
  assert.equal(filterError("é".repeat(5), 10), null);
  assert.match(filterError("é".repeat(6), 10) ?? "", /longer than 10 bytes/);
  assert.match(filterError("€/+", 4) ?? "", /longer than 4 bytes/);
  // The prefix of a shared filter counts.
  assert.match(filterError("$share/g/abc", 11) ?? "", /longer than 11 bytes/);
});

Deno.test("shared filters are valid with a group and a valid filter", () => {
  for (const filter of ["$share/g/a", "$share/group-1/sport/+/x", "$share/g/#", "$share/g//"]) {
    assert.equal(filterError(filter), null, filter);
  }
  // Not shared filters at all: '$sharex' is just another first level.
  assert.equal(filterError("$sharex/g/a"), null);
  assert.equal(filterError("$SHARE/g"), null);
});

Deno.test("shared filters without group or filter, or with a wildcard in the group, are refused", () => {
  assert.match(filterError("$share") ?? "", /form \$share\/\{group\}\/\{filter\}/);
  assert.match(filterError("$share/g") ?? "", /form \$share/);
  assert.match(filterError("$share//a") ?? "", /group .* must not be empty/);
  assert.match(filterError("$share/g/") ?? "", /filter after the share group must not be empty/);
  assert.match(filterError("$share/+/a") ?? "", /must not contain '\+' or '#'/);
  assert.match(filterError("$share/g+/a") ?? "", /must not contain '\+' or '#'/);
  assert.match(filterError("$share/#/a") ?? "", /must not contain '\+' or '#'/);
  assert.match(filterError("$share/g/a/#/b") ?? "", /only as the last level/);
  assert.match(filterError("$share/g/a+") ?? "", /'\+' must be a whole level/);
});

Deno.test("parseShare splits a shared filter and returns null for others", () => {
  assert.deepEqual(parseShare("$share/g/f"), { group: "g", filter: "f" });
  assert.deepEqual(parseShare("$share/workers/jobs/+/#"), {
    group: "workers",
    filter: "jobs/+/#",
  });
  assert.deepEqual(parseShare("$share/g//"), { group: "g", filter: "/" });
  for (const filter of ["f", "a/$share/g/f", "$sharex/g/f", "$share", "$share/g", "#"]) {
    assert.equal(parseShare(filter), null, filter);
  }
});

Deno.test("hasWildcard finds '+' and '#'", () => {
  for (const filter of ["+", "#", "a/+/b", "a/#", "$share/g/+"]) assert.ok(hasWildcard(filter));
  for (const filter of ["a", "a/b", "/", "$SYS/x", "$share/g/a"]) {
    assert.ok(!hasWildcard(filter), filter);
  }
});

Deno.test("'#' matches the parent level and every child level", () => {
  const filter = "sport/tennis/player1/#";
  for (
    const topic of [
      "sport/tennis/player1",
      "sport/tennis/player1/ranking",
      "sport/tennis/player1/score/wimbledon",
      "sport/tennis/player1/",
    ]
  ) {
    assert.ok(matches(filter, topic), topic);
  }
  for (const topic of ["sport/tennis", "sport/tennis/player2", "sport/tennis/player10"]) {
    assert.ok(!matches(filter, topic), topic);
  }
  assert.ok(matches("sport/#", "sport"));
  for (const topic of ["a", "a/b/c", "/", "/x", ""]) assert.ok(matches("#", topic), topic);
});

Deno.test("'+' matches exactly one level, an empty one included", () => {
  assert.ok(matches("sport/tennis/+", "sport/tennis/player1"));
  assert.ok(matches("sport/tennis/+", "sport/tennis/player2"));
  assert.ok(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
  assert.ok(!matches("sport/+", "sport"));
  assert.ok(matches("sport/+", "sport/"));
  assert.ok(matches("+", "sport"));
  assert.ok(!matches("+", "sport/"));
  assert.ok(matches("+/+", "/finance"));
  assert.ok(matches("/+", "/finance"));
  assert.ok(!matches("+", "/finance"));
  assert.ok(matches("+/tennis/#", "sport/tennis/player1"));
  assert.ok(matches("+/#", "sport"));
  assert.ok(matches("a/+/c", "a//c"));
});

Deno.test("levels match exactly, without normalisation", () => {
  assert.ok(matches("a/b", "a/b"));
  assert.ok(!matches("a/b", "a//b"));
  assert.ok(!matches("a/b", "a/b/"));
  assert.ok(!matches("a/b", "A/b"));
  assert.ok(!matches("a/b", "a/b "));
  assert.ok(!matches("a/b/c", "a/b"));
});

Deno.test("a filter starting with a wildcard does not match topics starting with '$'", () => {
  assert.ok(!matches("#", "$SYS/uptime"));
  assert.ok(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
  assert.ok(!matches("+", "$x"));
  assert.ok(!matches("+/#", "$x/a"));
  assert.ok(matches("$SYS/#", "$SYS/monitor/Clients"));
  assert.ok(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
  assert.ok(matches("$SYS/#", "$SYS"));
  // Only the first level of the topic counts.
  assert.ok(matches("#", "a/$x"));
  assert.ok(matches("a/+", "a/$x"));
});

Deno.test("the dead letter topic is matched only by its exact name", () => {
  assert.ok(matches(DEAD_LETTER_TOPIC, DEAD_LETTER_TOPIC));
  for (const filter of ["#", "+", `${DEAD_LETTER_TOPIC}/#`, "+/#"]) {
    assert.ok(!matches(filter, DEAD_LETTER_TOPIC), filter);
  }
  // Its children are ordinary topics.
  assert.ok(matches("#", `${DEAD_LETTER_TOPIC}/x`));
  assert.ok(matches(`${DEAD_LETTER_TOPIC}/#`, `${DEAD_LETTER_TOPIC}/x`));
});
