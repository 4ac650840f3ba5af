/**
 * The ACL file (`--acl-file`): who may publish to and subscribe to which topics, in
 * the spirit of Mosquitto's `acl_file`. Without the option everyone may do
 * everything; with it, everything the file does not grant is denied.
 *
 * ```text
 * # A comment. Blank lines are ignored; a comment may also end a line.
 * topic read public/#           # before any "user" line: rules for every user
 * topic write inbox/+           #   (anonymous publishers included)
 * topic readwrite home/%u/#     # %u is the user's own name
 * user alice                    # rules for alice from here to the next "user" line
 * topic readwrite sensors/alice/#
 * topic write commands/+
 * user ops
 * topic read deadLetterChan     # only rules naming it exactly grant the dead letters
 * topic read "rooms/room 1"     # a pattern with spaces is written as a JSON string
 * ```
 *
 * - `topic [read|write|readwrite] PATTERN`: `read` allows SUB (and resuming a stored
 *   subscription at login), `write` allows PUB; no access word means `readwrite`.
 *   Rules only grant: anything no rule grants is denied.
 * - Rules before the first `user NAME` line form the general section and apply to
 *   every user, and to anonymous clients (publishers when authentication is off).
 *   Rules after `user NAME` apply to that user only, on top of the general ones. A
 *   user named twice has the rules of both sections.
 * - A PATTERN is an MQTT topic filter over `/`-separated levels: `+` matches exactly
 *   one level (possibly empty), `#` matches any number of levels, the parent level
 *   included (`a/#` matches `a`), and must be the last level; neither may appear
 *   inside a level (`a+`, `#b` are errors).
 * - `%u` anywhere in a pattern stands for the user's name (as in Mosquitto's
 *   `pattern` lines; here it works in `topic` lines of any section). A rule with
 *   `%u` never applies to an anonymous client. `%c` (client id) is not supported.
 * - `deadLetterChan` is never matched by a wildcard (like `$`-topics in MQTT,
 *   [MQTT-4.7.2-1]): only a rule whose pattern is exactly `deadLetterChan` grants it.
 *   Nobody can write to it whatever the ACL says (the broker alone writes it).
 * - A pattern is one word; a pattern with spaces (or starting with `"`) is written as
 *   a JSON string. A `#` after whitespace that follows a complete rule starts a comment.
 * - Keywords and access words are lower case. Anything else (an unknown keyword or
 *   access word, a missing or misplaced wildcard, an invalid user name, extra words)
 *   is an {@link AclError} naming the file and line, and the broker does not start.
 *
 * @module
 */
import type { Authorizer } from "../core/authorizer.ts";
import { parseShare } from "../core/filters.ts";
import { DEAD_LETTER_TOPIC, usernameError } from "../core/names.ts";

const READ = 1;
const WRITE = 2;

const ACCESS: Record<string, number> = { read: READ, write: WRITE, readwrite: READ | WRITE };

/** Users whose compiled rules are kept; past it the oldest entry is dropped. */
const MAX_CACHED_USERS = 10_000;

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A malformed or unreadable ACL file. The message names the file and, if any, the line. */
export class AclError extends Error {
  /** The ACL file's path (or the name given to {@link parseAcl}). */
  readonly file: string;
  /** The 1-based line at fault, or undefined when the file could not be read. */
  readonly line: number | undefined;

  /** Builds an error about `file` (and `line`) saying `what` was wrong. */
  constructor(file: string, line: number | undefined, what: string) {
    super(line === undefined ? `ACL file ${file}: ${what}` : `ACL file ${file}:${line}: ${what}`);
    this.name = "AclError";
    this.file = file;
    this.line = line;
  }
}

/** One `topic` line, checked by {@link parseAcl}. */
export interface AclRule {
  /** The pattern as written (after JSON-unquoting). */
  readonly pattern: string;
  /** Bit 1: read (SUB), bit 2: write (PUB). */
  readonly access: number;
  /** The pattern split at `/`. */
  readonly levels: readonly string[];
  /** Whether the pattern holds `%u`. */
  readonly perUser: boolean;
}

/** A node of a filter trie: one level of the patterns below it. */
class Node {
  readonly children = new Map<string, Node>();
  plus: Node | undefined;
  /** Access granted here by a `#` level: to this level and everything below. */
  hash = 0;
  /** Access granted to a topic that ends exactly here. */
  end = 0;
}

/** The compiled rules of one user (or of anonymous clients). */
interface Grants {
  readonly root: Node;
  /** Access to {@link DEAD_LETTER_TOPIC}, from rules naming it exactly. */
  readonly deadLetters: number;
}

/**
 * A parsed ACL: an {@link Authorizer} for the broker core. Create it with
 * {@link parseAcl} or {@link loadAcl}.
 *
 * @example
 * ```ts
 * const acl = parseAcl("topic read public/#\nuser alice\ntopic sensors/alice/#\n");
 * acl.canSubscribe(null, "public/news"); // true
 * acl.canPublish("alice", "sensors/alice/t"); // true
 * acl.canPublish("bob", "sensors/alice/t"); // false
 * ```
 */
export class Acl implements Authorizer {
  #general: AclRule[];
  #users: Map<string, AclRule[]>;
  #anonymous: Grants;
  /** Whether a general rule uses %u, so that every user needs rules of its own. */
  #generalPerUser: boolean;
  #cache = new Map<string, Grants>();

  /** Builds an ACL from its general rules and the rules of each named user (see {@link parseAcl}). */
  constructor(general: AclRule[], users: Map<string, AclRule[]>) {
    this.#general = general;
    this.#users = users;
    this.#anonymous = compile(general, null);
    this.#generalPerUser = general.some((r) => r.perUser);
  }

  /** Users that have a section of their own. */
  get users(): string[] {
    return [...this.#users.keys()];
  }

  /** Number of `topic` rules in the file. */
  get ruleCount(): number {
    let n = this.#general.length;
    for (const rules of this.#users.values()) n += rules.length;
    return n;
  }

  /** Whether `user` (null: anonymous) may PUB to `topic`. */
  canPublish(user: string | null, topic: string): boolean {
    return this.#allows(user, topic, WRITE);
  }

  /** Whether `user` (null: anonymous) may SUB to `topic`, or resume a subscription to it. */
  canSubscribe(user: string | null, topic: string): boolean {
    return this.#allows(user, topic, READ);
  }

  /**
   * Whether `user` may subscribe to an MQTT topic filter: true when some rule granting
   * read overlaps it, that is, at least one topic matches both the filter and the rule.
   * Level by level, `+` or `#` on either side overlaps anything; a filter starting with
   * a wildcard reaches no `$` topic ([MQTT-4.7.2-1]) and no `deadLetterChan`, which only
   * the exact filter does. Each topic the filter reaches is still checked with
   * {@link canSubscribe}. A shared subscription (`$share/GROUP/FILTER`) is judged by
   * its FILTER.
   */
  canSubscribeFilter(user: string | null, filter: string): boolean {
    const inner = parseShare(filter)?.filter ?? filter;
    const g = this.#grants(user);
    if (inner === DEAD_LETTER_TOPIC) return (g.deadLetters & READ) !== 0;
    return overlaps(g.root, inner.split("/"), 0);
  }

  #allows(user: string | null, topic: string, want: number): boolean {
    const g = this.#grants(user);
    if (topic === DEAD_LETTER_TOPIC) return (g.deadLetters & want) !== 0;
    return (grant(g.root, topic.split("/"), 0, want) & want) !== 0;
  }

  #grants(user: string | null): Grants {
    if (user === null) return this.#anonymous;
    const own = this.#users.get(user);
    // Without %u in the general rules, a user without a section has the anonymous grants.
    if (own === undefined && !this.#generalPerUser) return this.#anonymous;
    let g = this.#cache.get(user);
    if (g === undefined) {
      g = compile(own ? [...this.#general, ...own] : this.#general, user);
      if (this.#cache.size >= MAX_CACHED_USERS) {
        const oldest = this.#cache.keys().next();
        if (!oldest.done) this.#cache.delete(oldest.value);
      }
      this.#cache.set(user, g);
    }
    return g;
  }
}

/** Builds the trie of `rules` as they apply to `user` (`%u` replaced by the name). */
function compile(rules: readonly AclRule[], user: string | null): Grants {
  const root = new Node();
  let deadLetters = 0;
  // A name that could add levels or wildcards never stands in for %u.
  const substitutable = user !== null && !/[/+#]/.test(user);
  for (const r of rules) {
    if (r.pattern === DEAD_LETTER_TOPIC) {
      deadLetters |= r.access;
      continue;
    }
    if (r.perUser && !substitutable) continue;
    let node = root;
    let multiLevel = false;
    for (const raw of r.levels) {
      if (raw === "#") {
        multiLevel = true;
        break;
      }
      if (raw === "+") {
        node = node.plus ??= new Node();
        continue;
      }
      const level = r.perUser ? raw.replaceAll("%u", user as string) : raw;
      let next = node.children.get(level);
      if (next === undefined) node.children.set(level, next = new Node());
      node = next;
    }
    if (multiLevel) node.hash |= r.access;
    else node.end |= r.access;
  }
  return { root, deadLetters };
}

/** The access the trie below `node` grants to `levels[i..]`; stops once `want` is met. */
function grant(node: Node, levels: readonly string[], i: number, want: number): number {
  let access = node.hash;
  if (i === levels.length) return access | node.end;
  if ((access & want) !== 0) return access;
  const child = node.children.get(levels[i] as string);
  if (child !== undefined) access |= grant(child, levels, i + 1, want);
  if ((access & want) === 0 && node.plus !== undefined) {
    access |= grant(node.plus, levels, i + 1, want);
  }
  return access;
}

/**
 * Whether some topic matched by the filter levels `filter[i..]` gets read access from
 * the trie below `node` (patterns and filter already agree on the levels before `i`).
 * `bare` says that those levels can only spell "", which is no topic name: the topic
 * must then go on.
 */
function overlaps(node: Node, filter: readonly string[], i: number, bare = false): boolean {
  const atEnd = i === filter.length;
  // A rule's `#` here matches every remaining level, the parent level included.
  if ((node.hash & READ) !== 0 && !(atEnd && bare)) return true;
  if (atEnd) return !bare && (node.end & READ) !== 0;
  const level = filter[i] as string;
  // A leading wildcard of the filter reaches no topic starting with `$`, [MQTT-4.7.2-1].
  const reachable = (name: string) => i > 0 || !name.startsWith("$");
  if (level === "#") {
    // Zero more levels (`a/#` matches `a`) or any number: any read grant below counts.
    if (!bare && (node.end & READ) !== 0) return true;
    for (const [name, child] of node.children) {
      if (reachable(name) && grantsBelow(child)) return true;
    }
    return node.plus !== undefined && grantsBelow(node.plus);
  }
  if (level === "+") {
    for (const [name, child] of node.children) {
      if (reachable(name) && overlaps(child, filter, i + 1, i === 0 && name === "")) return true;
    }
  } else {
    const child = node.children.get(level);
    if (child !== undefined && overlaps(child, filter, i + 1, i === 0 && level === "")) {
      return true;
    }
  }
  // A rule's `+` against the filter's `+` may take any level, a non-empty one included.
  return node.plus !== undefined && overlaps(node.plus, filter, i + 1, i === 0 && level === "");
}

/** Whether any pattern at or below `node` grants read. */
function grantsBelow(node: Node): boolean {
  if (((node.hash | node.end) & READ) !== 0) return true;
  for (const child of node.children.values()) if (grantsBelow(child)) return true;
  return node.plus !== undefined && grantsBelow(node.plus);
}

/**
 * Parses the text of an ACL file. `file` names it in error messages.
 *
 * @example
 * ```ts
 * const acl = parseAcl("user ops\ntopic read deadLetterChan\n", "acl.conf");
 * acl.canSubscribe("ops", "deadLetterChan"); // true
 * ```
 * @throws {AclError} on the first malformed line, naming `file` and the line number.
 */
export function parseAcl(text: string, file = "(acl)"): Acl {
  const general: AclRule[] = [];
  const users = new Map<string, AclRule[]>();
  let section = general;
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  lines.forEach((line, index) => {
    const fail = (what: string) => new AclError(file, index + 1, what);
    const words = new Words(line, fail);
    const keyword = words.next();
    if (keyword === null) return;
    if (keyword === "user") {
      const name = words.next();
      if (name === null) throw fail(`"user" needs a user name`);
      const bad = usernameError(name);
      if (bad) throw fail(bad);
      words.end("the user name");
      section = users.get(name) ?? [];
      users.set(name, section);
    } else if (keyword === "topic") {
      const first = words.next(true);
      if (first === null) {
        throw fail(`"topic" needs a pattern: topic [read|write|readwrite] PATTERN`);
      }
      let access = READ | WRITE;
      let pattern = first;
      const word = ACCESS[first];
      if (word !== undefined && !words.wasQuoted) {
        access = word;
        const p = words.next(true);
        if (p === null) throw fail(`missing pattern after "${first}"`);
        pattern = p;
      } else if (!words.atEnd && !words.wasQuoted && !/[/+#]/.test(first)) {
        throw fail(
          `unknown access ${JSON.stringify(first)}: use read, write or readwrite before ` +
            "the pattern (anything not granted is denied)",
        );
      }
      words.end("the pattern");
      section.push(rule(pattern, access, fail));
    } else if (keyword === "pattern") {
      throw fail(`"pattern" lines are not supported: write "topic" with %u in the pattern`);
    } else {
      throw fail(`unknown keyword ${JSON.stringify(keyword)}: expected "user" or "topic"`);
    }
  });
  return new Acl(general, users);
}

/** Checks a pattern and splits it into levels. */
function rule(pattern: string, access: number, fail: (what: string) => AclError): AclRule {
  const quoted = JSON.stringify(pattern);
  if (pattern === "") throw fail("the pattern is empty");
  if (CONTROL.test(pattern)) throw fail(`pattern ${quoted} contains control characters`);
  if (pattern.includes("%c")) throw fail(`pattern ${quoted}: %c (client id) is not supported`);
  const levels = pattern.split("/");
  levels.forEach((level, i) => {
    if (level === "#" && i !== levels.length - 1) {
      throw fail(`pattern ${quoted}: '#' must be the last level`);
    }
    if (level !== "#" && level !== "+" && /[+#]/.test(level)) {
      throw fail(`pattern ${quoted}: '+' and '#' must fill a whole level`);
    }
  });
  return { pattern, access, levels, perUser: pattern.includes("%u") };
}

/** Reads the words of one line: plain words or JSON strings, then an optional comment. */
class Words {
  #line: string;
  #pos = 0;
  #fail: (what: string) => AclError;
  /** Whether the last word read was a JSON string. */
  wasQuoted = false;

  constructor(line: string, fail: (what: string) => AclError) {
    this.#line = line;
    this.#fail = fail;
  }

  #skip(): void {
    while (this.#pos < this.#line.length && /\s/.test(this.#line[this.#pos] as string)) {
      this.#pos++;
    }
  }

  /** Whether only whitespace or a comment is left. */
  get atEnd(): boolean {
    this.#skip();
    return this.#pos >= this.#line.length || this.#line[this.#pos] === "#";
  }

  /**
   * The next word, or null at the end of the line or at a comment. A `pattern` word
   * may start with '#' (the wildcard), and may be a JSON string.
   */
  next(pattern = false): string | null {
    this.#skip();
    this.wasQuoted = false;
    const rest = this.#line.slice(this.#pos);
    if (rest === "" || (!pattern && rest.startsWith("#"))) return null;
    if (pattern && rest.startsWith('"')) {
      const m = /^"(?:[^"\\]|\\.)*"/.exec(rest);
      if (!m) throw this.#fail(`unterminated quoted pattern: ${rest}`);
      this.#pos += m[0].length;
      this.wasQuoted = true;
      try {
        return JSON.parse(m[0]) as string;
      } catch {
        throw this.#fail(`invalid quoted pattern ${m[0]}: write it as a JSON string`);
      }
    }
    const word = /^\S+/.exec(rest)?.[0] ?? "";
    this.#pos += word.length;
    return word;
  }

  /** Requires nothing but whitespace or a comment after `what`. */
  end(what: string): void {
    if (this.atEnd) return;
    const extra = /^\S+/.exec(this.#line.slice(this.#pos))?.[0] ?? "";
    throw this.#fail(
      `unexpected ${JSON.stringify(extra)} after ${what} (a comment starts with '#')`,
    );
  }
}

/**
 * Reads and parses the ACL file at `path`.
 *
 * @example
 * ```ts
 * const authorizer = await loadAcl("/etc/message_broker/acl.conf");
 * ```
 * @throws {AclError} when the file cannot be read or a line is malformed.
 */
export async function loadAcl(path: string): Promise<Acl> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new AclError(path, undefined, `cannot read it: ${why}`);
  }
  return parseAcl(text, path);
}
