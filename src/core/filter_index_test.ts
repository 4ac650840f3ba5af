import assert from "node:assert/strict";
import fc from "fast-check";
import { FilterIndex } from "./filter_index.ts";
import { filterError, matches, parseShare } from "./filters.ts";
import { DEAD_LETTER_TOPIC } from "./names.ts";

interface Entry {
  sid: string;
  filter: string;
  qos?: number;
}

/** Entries as sorted "sid filter" strings, so that results compare regardless of order. */
function keys(entries: Entry[]): string[] {
  return entries.map((e) => `${e.sid} ${e.filter}`).sort();
}

function indexOf(...entries: Entry[]): FilterIndex<Entry> {
  const index = new FilterIndex<Entry>();
  for (const entry of entries) index.add(entry);
  return index;
}

Deno.test("match finds the specification's examples", () => {
  const index = indexOf(
    { sid: "a", filter: "sport/tennis/player1/#" },
    { sid: "b", filter: "sport/+" },
    { sid: "c", filter: "+/+" },
    { sid: "d", filter: "/+" },
    { sid: "e", filter: "#" },
    { sid: "f", filter: "$SYS/#" },
    { sid: "g", filter: "+/monitor/Clients" },
    { sid: "h", filter: "$SYS/monitor/+" },
  );
  assert.deepEqual(keys(index.match("sport/tennis/player1")), [
    "a sport/tennis/player1/#",
    "e #",
  ]);
  assert.deepEqual(keys(index.match("sport/tennis/player1/score/wimbledon")), [
    "a sport/tennis/player1/#",
    "e #",
  ]);
  assert.deepEqual(keys(index.match("sport")), ["e #"]);
  assert.deepEqual(keys(index.match("sport/")), ["b sport/+", "c +/+", "e #"]);
  assert.deepEqual(keys(index.match("/finance")), ["c +/+", "d /+", "e #"]);
  assert.deepEqual(keys(index.match("$SYS/monitor/Clients")), [
    "f $SYS/#",
    "h $SYS/monitor/+",
  ]);
  assert.deepEqual(keys(index.match("$SYS")), ["f $SYS/#"]);
  assert.deepEqual(keys(index.match("other/monitor/Clients")), [
    "e #",
    "g +/monitor/Clients",
  ]);
});

Deno.test("the dead letter topic is matched only by its exact filter", () => {
  const index = indexOf(
    { sid: "a", filter: "#" },
    { sid: "b", filter: "+" },
    { sid: "c", filter: DEAD_LETTER_TOPIC },
    { sid: "d", filter: `${DEAD_LETTER_TOPIC}/#` },
    { sid: "e", filter: `$share/g/${DEAD_LETTER_TOPIC}` },
  );
  assert.deepEqual(keys(index.match(DEAD_LETTER_TOPIC)), [
    `c ${DEAD_LETTER_TOPIC}`,
    `e $share/g/${DEAD_LETTER_TOPIC}`,
  ]);
  assert.deepEqual(keys(index.match(`${DEAD_LETTER_TOPIC}/x`)), [
    "a #",
    `d ${DEAD_LETTER_TOPIC}/#`,
  ]);
});

Deno.test("shared filters are matched by their inner filter", () => {
  const index = indexOf(
    { sid: "a", filter: "$share/g/jobs/+" },
    { sid: "b", filter: "$share/h/jobs/+" },
    { sid: "a", filter: "jobs/+" },
    { sid: "c", filter: "$share/g/#" },
  );
  assert.equal(index.size, 4);
  assert.deepEqual(keys(index.match("jobs/1")), [
    "a $share/g/jobs/+",
    "a jobs/+",
    "b $share/h/jobs/+",
    "c $share/g/#",
  ]);
  // Neither '$share' itself nor the group is a level of the topic.
  assert.deepEqual(keys(index.match("$share/g/jobs/1")), []);
  assert.deepEqual(keys(index.match("$x")), []);
});

Deno.test("add replaces the entry of the same sid and filter", () => {
  const index = new FilterIndex<Entry>();
  index.add({ sid: "a", filter: "x/+", qos: 0 });
  const v1 = index.version;
  index.add({ sid: "a", filter: "x/+", qos: 2 });
  assert.ok(index.version > v1);
  assert.equal(index.size, 1);
  assert.deepEqual(index.match("x/y"), [{ sid: "a", filter: "x/+", qos: 2 }]);
  assert.deepEqual(index.entriesOf("a"), [{ sid: "a", filter: "x/+", qos: 2 }]);
  // Another sid or another filter is another entry.
  index.add({ sid: "b", filter: "x/+" });
  index.add({ sid: "a", filter: "x/#" });
  assert.equal(index.size, 3);
  assert.equal(index.match("x/y").length, 3);
});

Deno.test("add refuses an invalid filter and leaves the index unchanged", () => {
  const index = new FilterIndex<Entry>();
  for (const filter of ["", "a/#/b", "a+", "$share//a", "a\u0000"]) {
    assert.throws(() => index.add({ sid: "a", filter }), TypeError, JSON.stringify(filter));
  }
  assert.equal(index.size, 0);
  assert.equal(index.version, 0);
  assert.equal(index.nodeCount, 1);
});

Deno.test("remove returns the entry, bumps the version and drops empty nodes", () => {
  const index = indexOf({ sid: "a", filter: "x/y/z" }, { sid: "a", filter: "x/+" });
  const nodes = index.nodeCount;
  const version = index.version;
  assert.equal(index.remove("a", "x/y"), undefined, "no such filter");
  assert.equal(index.remove("b", "x/+"), undefined, "no such sid");
  assert.equal(index.version, version, "nothing changed");
  assert.deepEqual(index.remove("a", "x/y/z"), { sid: "a", filter: "x/y/z" });
  assert.ok(index.version > version);
  assert.equal(index.nodeCount, nodes - 2, "'y' and 'z' are gone, 'x' stays for 'x/+'");
  assert.deepEqual(index.match("x/y/z"), []);
  assert.deepEqual(keys(index.match("x/y")), ["a x/+"]);
  assert.equal(index.remove("a", "x/y/z"), undefined, "already removed");
  index.remove("a", "x/+");
  assert.equal(index.size, 0);
  assert.equal(index.nodeCount, 1);
  assert.deepEqual(index.entriesOf("a"), []);
});

Deno.test("a node shared by two filters stays until both are removed", () => {
  const index = indexOf({ sid: "a", filter: "x/y" }, { sid: "b", filter: "$share/g/x/y" });
  index.remove("a", "x/y");
  assert.deepEqual(keys(index.match("x/y")), ["b $share/g/x/y"]);
  index.remove("b", "$share/g/x/y");
  assert.equal(index.nodeCount, 1);
});

Deno.test("removeSession removes every entry of a sid and only those", () => {
  const index = indexOf(
    { sid: "a", filter: "x/+" },
    { sid: "a", filter: "#" },
    { sid: "a", filter: "$share/g/x/y" },
    { sid: "b", filter: "x/y" },
  );
  assert.deepEqual(keys(index.entriesOf("a")), ["a #", "a $share/g/x/y", "a x/+"]);
  const version = index.version;
  assert.deepEqual(keys(index.removeSession("a")), ["a #", "a $share/g/x/y", "a x/+"]);
  assert.ok(index.version > version);
  assert.equal(index.size, 1);
  assert.deepEqual(index.entriesOf("a"), []);
  assert.deepEqual(keys(index.match("x/y")), ["b x/y"]);
  const after = index.version;
  assert.deepEqual(index.removeSession("a"), []);
  assert.equal(index.version, after, "nothing changed");
  index.removeSession("b");
  assert.equal(index.nodeCount, 1);
});

Deno.test("version grows on every add and remove", () => {
  const index = new FilterIndex<Entry>();
  const seen = [index.version];
  index.add({ sid: "a", filter: "x" });
  seen.push(index.version);
  index.add({ sid: "a", filter: "x" });
  seen.push(index.version);
  index.add({ sid: "b", filter: "x" });
  seen.push(index.version);
  index.remove("a", "x");
  seen.push(index.version);
  index.removeSession("b");
  seen.push(index.version);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! > seen[i - 1]!, String(seen));
});

// Property: the trie agrees with a linear scan using `matches`, before and after removals.

const LEVELS = ["", "a", "b", "$x", DEAD_LETTER_TOPIC];
const level = fc.constantFrom(...LEVELS);
const topic = fc.array(level, { minLength: 1, maxLength: 4 }).map((l) => l.join("/"));
const filter = fc
  .tuple(
    fc.array(fc.constantFrom(...LEVELS, "+"), { minLength: 0, maxLength: 4 }),
    fc.boolean(),
    fc.constantFrom(null, "g", "h"),
  )
  .map(([levels, hash, group]) => {
    const inner = (hash ? [...levels, "#"] : levels).join("/");
    return group === null ? inner : `$share/${group}/${inner}`;
  })
  .filter((f) => filterError(f) === null);
const entry = fc.record({ sid: fc.constantFrom("s1", "s2", "s3"), filter });

function naive(entries: Map<string, Entry>, topic: string): string[] {
  const inner = (f: string) => parseShare(f)?.filter ?? f;
  return keys([...entries.values()].filter((e) => matches(inner(e.filter), topic)));
}

Deno.test("match equals a linear scan with matches, also after removals", () => {
  fc.assert(
    fc.property(
      fc.array(entry, { maxLength: 30 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      fc.option(fc.constantFrom("s1", "s2", "s3")),
      fc.array(topic, { minLength: 1, maxLength: 10 }),
      (adds, removals, dropped, topics) => {
        const index = new FilterIndex<Entry>();
        const model = new Map<string, Entry>();
        for (const e of adds) {
          index.add(e);
          model.set(`${e.sid} ${e.filter}`, e);
        }
        const check = () => {
          assert.equal(index.size, model.size);
          for (const t of topics) assert.deepEqual(keys(index.match(t)), naive(model, t), t);
        };
        check();
        for (const r of removals) {
          const all = [...model.values()];
          if (all.length === 0) break;
          const victim = all[r % all.length]!;
          assert.equal(index.remove(victim.sid, victim.filter), victim);
          model.delete(`${victim.sid} ${victim.filter}`);
        }
        check();
        if (dropped !== null) {
          const removed = index.removeSession(dropped);
          const expected = [...model.values()].filter((e) => e.sid === dropped);
          assert.deepEqual(keys(removed), keys(expected));
          for (const e of expected) model.delete(`${e.sid} ${e.filter}`);
          check();
        }
        for (const e of [...model.values()]) index.remove(e.sid, e.filter);
        assert.equal(index.size, 0);
        assert.equal(index.nodeCount, 1, "every node is dropped once the index is empty");
      },
    ),
    { numRuns: 500 },
  );
});
