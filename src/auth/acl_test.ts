import assert from "node:assert/strict";
import fc from "fast-check";
import { matches as filterMatches } from "../core/filters.ts";
import { DEAD_LETTER_TOPIC } from "../core/names.ts";
import { Acl, AclError, loadAcl, parseAcl } from "./acl.ts";

const FILE = `
# general rules: every user, anonymous included
topic read public/#            # a trailing comment
topic write inbox/+
topic readwrite home/%u/#

user alice
topic readwrite sensors/alice/#
topic write commands/+
topic read "rooms/room 1"

user ops
topic read deadLetterChan
topic read ops/%u-data

user root
topic read #
topic +/x
`;

const acl = parseAcl(FILE, "test.acl");

Deno.test("no access word means readwrite; read allows SUB only, write allows PUB only", () => {
  assert.ok(acl.canSubscribe("alice", "sensors/alice/t"));
  assert.ok(acl.canPublish("alice", "sensors/alice/t"));
  assert.ok(acl.canPublish("alice", "commands/stop"));
  assert.ok(!acl.canSubscribe("alice", "commands/stop"));
  assert.ok(acl.canSubscribe("alice", "public/news"));
  assert.ok(!acl.canPublish("alice", "public/news"));
  assert.ok(parseAcl("topic t").canPublish(null, "t"));
  assert.ok(parseAcl("topic t").canSubscribe(null, "t"));
});

Deno.test("general rules apply to every user and to anonymous clients", () => {
  for (const user of [null, "alice", "ops", "nobody-in-the-file"]) {
    assert.ok(acl.canSubscribe(user, "public/a/b"), String(user));
    assert.ok(acl.canPublish(user, "inbox/x"), String(user));
    assert.ok(!acl.canPublish(user, "public/a"), String(user));
  }
});

Deno.test("a user's section applies to that user only, never to others or anonymous", () => {
  for (const user of [null, "ops", "bob"]) {
    assert.ok(!acl.canPublish(user, "sensors/alice/t"), String(user));
    assert.ok(!acl.canSubscribe(user, "sensors/alice/t"), String(user));
    assert.ok(!acl.canPublish(user, "commands/stop"), String(user));
  }
});

Deno.test("everything no rule grants is denied", () => {
  assert.ok(!acl.canSubscribe("alice", "sensors/bob/t"));
  assert.ok(!acl.canPublish(null, "elsewhere"));
  assert.ok(!parseAcl("").canSubscribe("alice", "t"));
  assert.ok(!parseAcl("# only a comment\n").canPublish(null, "t"));
});

Deno.test("'+' matches exactly one level, an empty one included", () => {
  assert.ok(acl.canPublish(null, "inbox/a"));
  assert.ok(acl.canPublish(null, "inbox/"));
  assert.ok(!acl.canPublish(null, "inbox"));
  assert.ok(!acl.canPublish(null, "inbox/a/b"));
  assert.ok(acl.canPublish("root", "a/x"));
  assert.ok(!acl.canPublish("root", "a/b/x"));
});

Deno.test("'#' matches any number of levels, the parent level included", () => {
  assert.ok(acl.canSubscribe(null, "public"));
  assert.ok(acl.canSubscribe(null, "public/"));
  assert.ok(acl.canSubscribe(null, "public/a/b/c"));
  assert.ok(!acl.canSubscribe(null, "publicity"));
  assert.ok(acl.canSubscribe("root", "anything/at/all"));
  assert.ok(acl.canSubscribe("root", "x"));
});

Deno.test("%u stands for the user's name, anywhere in a level", () => {
  assert.ok(acl.canPublish("alice", "home/alice/lamp"));
  assert.ok(acl.canSubscribe("bob", "home/bob"));
  assert.ok(!acl.canPublish("alice", "home/bob/lamp"));
  assert.ok(!acl.canPublish("alice", "home/%u/lamp"));
  assert.ok(acl.canSubscribe("ops", "ops/ops-data"));
  assert.ok(!acl.canSubscribe("ops", "ops/alice-data"));
});

Deno.test("a rule with %u never applies to anonymous clients or to names with '/', '+', '#'", () => {
  assert.ok(!acl.canPublish(null, "home/null/x"));
  assert.ok(!acl.canPublish(null, "home//x"));
  const a = parseAcl("topic a/%u");
  assert.ok(!a.canPublish("x/y", "a/x/y"));
  assert.ok(!a.canPublish("+", "a/+"));
  assert.ok(!a.canPublish("+", "a/b"));
  assert.ok(a.canPublish("x", "a/x"));
});

Deno.test("deadLetterChan is granted only by a rule naming it exactly", () => {
  assert.ok(acl.canSubscribe("ops", "deadLetterChan"));
  assert.ok(!acl.canSubscribe("root", "deadLetterChan"), "'#' must not match it");
  assert.ok(!acl.canSubscribe("alice", "deadLetterChan"));
  assert.ok(!acl.canSubscribe(null, "deadLetterChan"));
  for (const pattern of ["+", "#", "deadLetterChan/#", "%u"]) {
    const a = parseAcl(`topic read ${pattern}`);
    assert.ok(!a.canSubscribe("deadLetterChan", "deadLetterChan"), pattern);
  }
  // Named in the general section, it is readable by everyone.
  const everyone = parseAcl("topic read deadLetterChan");
  assert.ok(everyone.canSubscribe(null, "deadLetterChan"));
  assert.ok(everyone.canSubscribe("bob", "deadLetterChan"));
  // Other topics under it are ordinary topics.
  assert.ok(acl.canSubscribe("root", "deadLetterChan/x"));
});

Deno.test("a quoted pattern may hold spaces and may look like an access word", () => {
  assert.ok(acl.canSubscribe("alice", "rooms/room 1"));
  assert.ok(!acl.canSubscribe("alice", "rooms/room"));
  const a = parseAcl('topic "read"\ntopic write "a \\"b\\"/#"');
  assert.ok(a.canSubscribe(null, "read"));
  assert.ok(a.canPublish(null, 'a "b"/c'));
});

Deno.test("a user named twice has the rules of both sections", () => {
  const a = parseAcl("user u\ntopic read a\nuser v\ntopic b\nuser u\ntopic write c\n");
  assert.ok(a.canSubscribe("u", "a"));
  assert.ok(a.canPublish("u", "c"));
  assert.ok(!a.canSubscribe("u", "b"));
  assert.deepEqual(a.users.sort(), ["u", "v"]);
  assert.equal(a.ruleCount, 3);
});

Deno.test("CRLF line endings, a byte order mark, indentation and tabs are accepted", () => {
  const a = parseAcl("\uFEFFtopic read a\r\n  user\tu \r\n\ttopic\twrite\tb\t# c\r\n");
  assert.ok(a.canSubscribe(null, "a"));
  assert.ok(a.canPublish("u", "b"));
});

/** Asserts that parsing `text` fails on `line` with a message matching `what`. */
function assertBad(text: string, line: number, what: RegExp): void {
  assert.throws(() => parseAcl(text, "conf/acl.txt"), (err: unknown) => {
    assert.ok(err instanceof AclError, String(err));
    assert.equal(err.file, "conf/acl.txt");
    assert.equal(err.line, line);
    assert.ok(err.message.startsWith(`ACL file conf/acl.txt:${line}: `), err.message);
    assert.match(err.message, what);
    return true;
  });
}

Deno.test("a malformed line is an error naming the file and the line", () => {
  assertBad("topic a\n\ntopc b\n", 3, /unknown keyword "topc"/);
  assertBad("topic reed a", 1, /unknown access "reed": use read, write or readwrite/);
  assertBad("topic deny a", 1, /unknown access "deny"/);
  assertBad("topic", 1, /"topic" needs a pattern/);
  assertBad("topic read", 1, /missing pattern after "read"/);
  assertBad("topic read  # nothing", 1, /unexpected "nothing" after the pattern/);
  assertBad("topic a/# b", 1, /unexpected "b" after the pattern/);
  assertBad("topic read a b", 1, /unexpected "b" after the pattern/);
  assertBad("# c\nuser", 2, /"user" needs a user name/);
  assertBad("user a b", 1, /unexpected "b" after the user name/);
  assertBad("user bad!name", 1, /invalid username "bad!name"/);
  assertBad("topic a/#/b", 1, /'#' must be the last level/);
  assertBad("topic a+/b", 1, /'\+' and '#' must fill a whole level/);
  assertBad("topic a/b#", 1, /'\+' and '#' must fill a whole level/);
  assertBad("topic c/%c", 1, /%c \(client id\) is not supported/);
  assertBad('topic ""', 1, /the pattern is empty/);
  assertBad('topic "a\\u0001"', 1, /control characters/);
  assertBad('topic "a b', 1, /unterminated quoted pattern/);
  assertBad('topic "\\q"', 1, /invalid quoted pattern/);
  assertBad("pattern read a/%u", 1, /write "topic" with %u/);
  assertBad("Topic a", 1, /unknown keyword "Topic"/);
});

Deno.test("loadAcl reads a file; a missing file is an error naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mb-acl-" });
  try {
    const path = `${dir}/acl`;
    await Deno.writeTextFile(path, "topic read t\n");
    const a = await loadAcl(path);
    assert.ok(a instanceof Acl);
    assert.ok(a.canSubscribe(null, "t"));
    await assert.rejects(loadAcl(`${dir}/missing`), (err: unknown) => {
      assert.ok(err instanceof AclError);
      assert.match(err.message, new RegExp(`^ACL file ${dir}/missing: cannot read it: `));
      return true;
    });
    await Deno.writeTextFile(path, "topic read t\nuser\n");
    await assert.rejects(loadAcl(path), new RegExp(`ACL file ${path}:2: "user" needs`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("answers stay right for more users than the per-user cache holds", () => {
  const a = parseAcl("topic read u/%u/#\nuser u7\ntopic write x\n");
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 10_050; i++) {
      const user = `u${i}`;
      assert.ok(a.canSubscribe(user, `u/${user}/t`));
      assert.ok(!a.canSubscribe(user, `u/u${i + 1}/t`));
      assert.equal(a.canPublish(user, "x"), i === 7);
    }
  }
});

/** MQTT topic matching written plainly, as the reference for the trie. */
function matches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

const level = fc.constantFrom("a", "b", "");
const topicName = fc.array(level, { minLength: 1, maxLength: 4 }).map((l) => l.join("/"))
  .filter((t) => t !== "");
const filter = fc.tuple(
  fc.array(fc.constantFrom("a", "b", "", "+"), { maxLength: 4 }),
  fc.boolean(),
).map(([levels, hash]) => (hash ? [...levels, "#"] : levels).join("/"))
  .filter((f) => f !== "");
const access = fc.constantFrom("read", "write", "readwrite");

Deno.test("matching agrees with plain MQTT filter matching for any set of rules", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(access, filter), { maxLength: 6 }), topicName, (rules, t) => {
      const a = parseAcl(rules.map(([x, f]) => `topic ${x} ${JSON.stringify(f)}`).join("\n"));
      const read = rules.some(([x, f]) => x !== "write" && matches(f, t));
      const write = rules.some(([x, f]) => x !== "read" && matches(f, t));
      assert.equal(a.canSubscribe(null, t), read);
      assert.equal(a.canPublish(null, t), write);
      assert.equal(a.canSubscribe("someone", t), read);
    }),
    { numRuns: 2000 },
  );
});

// --- canSubscribeFilter: does a filter overlap what the rules let a user read? ---------------

Deno.test("canSubscribeFilter: a filter is allowed when it can reach a topic the rules let the user read", () => {
  const a = parseAcl(`
topic read public/#
topic write inbox/+
topic read home/%u/#
user alice
topic read sensors/+/temp
topic read exact/one
topic read $SYS/#
topic read +/any
user ops
topic read deadLetterChan
`);
  // Wildcards in the filter that reach granted topics: granted (overlap, not cover).
  assert.ok(a.canSubscribeFilter(null, "#"));
  assert.ok(a.canSubscribeFilter(null, "+/news"));
  assert.ok(a.canSubscribeFilter(null, "public/+/x"));
  assert.ok(a.canSubscribeFilter(null, "public")); // public/# matches its parent level
  assert.ok(a.canSubscribeFilter("alice", "sensors/#"));
  assert.ok(a.canSubscribeFilter("alice", "sensors/kitchen/+"));
  assert.ok(a.canSubscribeFilter("alice", "+/+/temp"));
  assert.ok(a.canSubscribeFilter("alice", "exact/#")); // exact/# matches exact/one
  assert.ok(a.canSubscribeFilter("alice", "exact/+"));
  assert.ok(a.canSubscribeFilter("alice", "whatever/any")); // rule +/any
  assert.ok(a.canSubscribeFilter("bob", "home/bob/#"));
  assert.ok(a.canSubscribeFilter("bob", "home/+/lamp")); // home/bob/lamp
  // Nothing in common: denied.
  assert.ok(!a.canSubscribeFilter(null, "inbox/+")); // write only
  assert.ok(!a.canSubscribeFilter(null, "private/#"));
  assert.ok(!a.canSubscribeFilter(null, "publicity/#"));
  assert.ok(!a.canSubscribeFilter("alice", "sensors/kitchen/humidity"));
  assert.ok(a.canSubscribeFilter("alice", "sensors/+")); // sensors/any, by the rule +/any
  assert.ok(!a.canSubscribeFilter("alice", "sensors/+/+/+"));
  assert.ok(!a.canSubscribeFilter("alice", "exact/one/+"));
  assert.ok(!a.canSubscribeFilter("bob", "sensors/#")); // alice's section only
  assert.ok(!a.canSubscribeFilter(null, "home/+/lamp")); // %u never applies to anonymous
  assert.ok(!a.canSubscribeFilter("bob", "home/alice/#"));
});

Deno.test("canSubscribeFilter: '$' topics hide from leading wildcards; deadLetterChan only by name", () => {
  const a = parseAcl("user alice\ntopic read $SYS/#\nuser ops\ntopic read deadLetterChan\n");
  assert.ok(a.canSubscribeFilter("alice", "$SYS/#"));
  assert.ok(a.canSubscribeFilter("alice", "$SYS/broker/+"));
  // A filter whose first level is a wildcard matches no '$' topic, [MQTT-4.7.2-1].
  assert.ok(!a.canSubscribeFilter("alice", "#"));
  assert.ok(!a.canSubscribeFilter("alice", "+/broker/uptime"));
  assert.ok(a.canSubscribeFilter("ops", "deadLetterChan"));
  assert.ok(!a.canSubscribeFilter("ops", "#"));
  assert.ok(!a.canSubscribeFilter("ops", "+"));
  assert.ok(!a.canSubscribeFilter("alice", "deadLetterChan"));
  // A rule of '#' grants every reachable topic, but not the dead letters.
  const all = parseAcl("topic read #\n");
  assert.ok(all.canSubscribeFilter(null, "#"));
  assert.ok(all.canSubscribeFilter(null, "$SYS/#"));
  assert.ok(!all.canSubscribeFilter(null, "deadLetterChan"));
});

Deno.test("canSubscribeFilter: a shared subscription is judged by its filter", () => {
  const a = parseAcl("topic read jobs/+\n");
  assert.ok(a.canSubscribeFilter(null, "$share/workers/jobs/#"));
  assert.ok(a.canSubscribeFilter(null, "$share/workers/jobs/x"));
  assert.ok(!a.canSubscribeFilter(null, "$share/workers/other/#"));
});

/** Levels for filters and rules; "c" appears in topics only, as a level no pattern names. */
const patternLevel = fc.constantFrom("a", "b", "", "$s", "+");
const universe: string[] = (() => {
  const levels = ["a", "b", "", "$s", "c"];
  const out: string[] = [DEAD_LETTER_TOPIC];
  let frontier = [[] as string[]];
  for (let depth = 1; depth <= 4; depth++) {
    frontier = frontier.flatMap((p) => levels.map((l) => [...p, l]));
    for (const p of frontier) out.push(p.join("/"));
  }
  return out.filter((t) => t !== ""); // a topic name has at least one character
})();
const pattern = fc.oneof(
  { weight: 9, arbitrary: fc.tuple(fc.array(patternLevel, { maxLength: 3 }), fc.boolean()) },
  { weight: 1, arbitrary: fc.constant([[DEAD_LETTER_TOPIC], false] as [string[], boolean]) },
).map(([levels, hash]) => (hash ? [...levels, "#"] : levels).join("/")).filter((f) => f !== "");

Deno.test("canSubscribeFilter is true exactly when some topic matches the filter and may be read", () => {
  // Patterns have at most 4 levels, so a topic of at most 4 levels over the levels they
  // name (and one they do not) witnesses every overlap.
  fc.assert(
    fc.property(
      fc.array(fc.tuple(access, pattern), { maxLength: 5 }),
      fc.array(fc.tuple(access, pattern), { maxLength: 3 }),
      pattern,
      fc.constantFrom(null, "alice", "bob"),
      (general, own, f, user) => {
        const line = ([x, p]: [string, string]) => `topic ${x} ${JSON.stringify(p)}`;
        const a = parseAcl([...general.map(line), "user alice", ...own.map(line)].join("\n"));
        const expected = universe.some((t) => filterMatches(f, t) && a.canSubscribe(user, t));
        assert.equal(a.canSubscribeFilter(user, f), expected, `${user} ${f}`);
      },
    ),
    { numRuns: 1000 },
  );
});
