/**
 * An in-memory index of topic filter subscriptions: finds every subscription whose
 * filter matches a topic without scanning them all.
 *
 * Filters are stored in a trie keyed by level, so `match` visits only the branches a
 * topic can reach: the exact level, `+` and `#` at each depth. A shared filter
 * `$share/{group}/{filter}` sits under its inner filter; the caller decides which
 * member of the group receives a message.
 *
 * ```ts
 * import { FilterIndex } from "./filter_index.ts";
 *
 * const index = new FilterIndex<{ sid: string; filter: string }>();
 * index.add({ sid: "s1", filter: "sport/+" });
 * index.add({ sid: "s2", filter: "$share/g/sport/#" });
 * index.match("sport/tennis"); // both entries
 * ```
 *
 * @module
 */

import { DEAD_LETTER_TOPIC } from "./names.ts";
import { filterError, innerFilter } from "./filters.ts";

interface Node<E> {
  readonly parent: Node<E> | undefined;
  /** The level that leads from the parent to this node. */
  readonly level: string;
  readonly children: Map<string, Node<E>>;
  /** The entries whose (inner) filter ends at this node. */
  readonly slots: Set<Slot<E>>;
}

interface Slot<E> {
  entry: E;
  readonly node: Node<E>;
}

function newNode<E>(parent: Node<E> | undefined, level: string): Node<E> {
  return { parent, level, children: new Map(), slots: new Set() };
}

/**
 * Subscriptions by filter, at most one entry per (sid, filter) pair.
 * Filters must be valid (see `filterError`); `add` throws a TypeError otherwise.
 */
export class FilterIndex<E extends { sid: string; filter: string }> {
  #root: Node<E> = newNode(undefined, "");
  /** sid → filter → slot: finds an entry for removal without walking the trie. */
  #bySid = new Map<string, Map<string, Slot<E>>>();
  /** Shared filter (`$share/...`) → its slots: the members of a group. */
  #byShare = new Map<string, Set<Slot<E>>>();
  #size = 0;
  #version = 0;
  #nodes = 1;

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  /** Grows on every change, so that a cached `match` result can be revalidated. */
  get version(): number {
    return this.#version;
  }

  /** Number of trie nodes, the root included (for tests and monitoring: it shrinks on removal). */
  get nodeCount(): number {
    return this.#nodes;
  }

  /** Adds an entry, replacing the entry of the same sid and filter if there is one. */
  add(entry: E): void {
    // The length bound is the caller's to enforce; the index only needs the structure.
    const error = filterError(entry.filter, Number.POSITIVE_INFINITY);
    if (error !== null) {
      throw new TypeError(`invalid filter ${JSON.stringify(entry.filter)}: ${error}`);
    }
    this.#version++;
    let filters = this.#bySid.get(entry.sid);
    const existing = filters?.get(entry.filter);
    if (existing) {
      existing.entry = entry;
      return;
    }
    let node = this.#root;
    const inner = innerFilter(entry.filter);
    for (const level of inner.split("/")) {
      let child = node.children.get(level);
      if (!child) {
        child = newNode(node, level);
        node.children.set(level, child);
        this.#nodes++;
      }
      node = child;
    }
    const slot: Slot<E> = { entry, node };
    node.slots.add(slot);
    if (!filters) {
      filters = new Map();
      this.#bySid.set(entry.sid, filters);
    }
    filters.set(entry.filter, slot);
    if (inner !== entry.filter) {
      let members = this.#byShare.get(entry.filter);
      if (!members) {
        members = new Set();
        this.#byShare.set(entry.filter, members);
      }
      members.add(slot);
    }
    this.#size++;
  }

  /** The entries of every session subscribed to the shared filter `$share/...`. */
  sharing(filter: string): E[] {
    return [...(this.#byShare.get(filter) ?? [])].map((slot) => slot.entry);
  }

  /** Removes the entry of a sid and filter; returns it, or undefined if there was none. */
  remove(sid: string, filter: string): E | undefined {
    const filters = this.#bySid.get(sid);
    const slot = filters?.get(filter);
    if (!filters || !slot) return undefined;
    filters.delete(filter);
    if (filters.size === 0) this.#bySid.delete(sid);
    this.#detach(slot);
    return slot.entry;
  }

  /** Removes every entry of a sid; returns them. */
  removeSession(sid: string): E[] {
    const filters = this.#bySid.get(sid);
    if (!filters) return [];
    this.#bySid.delete(sid);
    const removed: E[] = [];
    for (const slot of filters.values()) {
      this.#detach(slot);
      removed.push(slot.entry);
    }
    return removed;
  }

  /** The entries of a sid. */
  entriesOf(sid: string): E[] {
    return [...(this.#bySid.get(sid)?.values() ?? [])].map((slot) => slot.entry);
  }

  /**
   * Every entry whose filter matches a concrete topic name, with the semantics of
   * `matches` in filters.ts; a shared entry matches when its inner filter does.
   */
  match(topic: string): E[] {
    const found: E[] = [];
    const levels = topic.split("/");
    // The dead letter topic is reached only by its exact name, never through a wildcard.
    const exactOnly = topic === DEAD_LETTER_TOPIC;
    const collect = (node: Node<E> | undefined) => {
      for (const slot of node?.slots ?? []) found.push(slot.entry);
    };
    const visit = (node: Node<E>, depth: number) => {
      // [MQTT-4.7.2-1]: a first-level wildcard does not match a topic starting with '$'.
      const wildcards = !exactOnly && !(depth === 0 && topic.startsWith("$"));
      if (depth === levels.length) {
        collect(node);
        // 'a/#' also matches 'a' itself.
        if (wildcards) collect(node.children.get("#"));
        return;
      }
      const exact = node.children.get(levels[depth]!);
      if (exact) visit(exact, depth + 1);
      if (!wildcards) return;
      const plus = node.children.get("+");
      if (plus) visit(plus, depth + 1);
      collect(node.children.get("#"));
    };
    visit(this.#root, 0);
    return found;
  }

  /** Takes a slot out of its node and drops the nodes left without entries or children. */
  #unshare(slot: Slot<E>): void {
    const members = this.#byShare.get(slot.entry.filter);
    if (!members) return;
    members.delete(slot);
    if (members.size === 0) this.#byShare.delete(slot.entry.filter);
  }

  #detach(slot: Slot<E>): void {
    this.#unshare(slot);
    slot.node.slots.delete(slot);
    this.#size--;
    this.#version++;
    let node = slot.node;
    while (node.parent && node.slots.size === 0 && node.children.size === 0) {
      node.parent.children.delete(node.level);
      this.#nodes--;
      node = node.parent;
    }
  }
}
