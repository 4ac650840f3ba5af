/**
 * Shared subscriptions (MQTT 5 `$share/{group}/{filter}`): every message of the topics
 * the filter reaches goes to one member of the group.
 *
 * A group is a {@link Session} of its own, with the id `share:{group}/{filter}`: one
 * durable position per topic and one window of messages in flight, whatever the
 * number of members. Its output hands each message to the next member with room in its
 * own window (round robin); the member sends it under a packet identifier of its own
 * and reports the acknowledgements back. When a member's connection ends, the messages
 * it held and did not complete go to another member (with DUP), so nothing waits for a
 * member that may never come back. The group is persistent when a persistent session
 * subscribed to it, and ends (its positions deleted) when its last member leaves.
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type { Broker } from "./broker.ts";
import { innerFilter, matches, parseShare } from "./filters.ts";
import { type FilterEntry, type Outbound, Session, type SessionOutput } from "./session.ts";

const log = getLogger("shared");

/** A connection of a group member, as the group sees it (the protocol implements it). */
export interface GroupMember {
  /** The member's session id. */
  readonly sid: string;
  /** Messages it can take now (its window's free room). */
  room(): number;
  /** Sends a group message under a packet identifier of the member's own. */
  send(group: SharedGroup, out: Outbound, groupTag: number, dup: boolean): void;
  /** Sends the release of a group message it holds; false when it holds none. */
  release(group: SharedGroup, groupTag: number): boolean;
  /** Sends the release of a group message it never saw (its holder left). */
  releaseNew(group: SharedGroup, groupTag: number): void;
}

interface Pending {
  out: Outbound;
  tag: number;
  dup: boolean;
}

/** One shared subscription group: its session and its members. */
export class SharedGroup {
  readonly sid: string;
  readonly session: Session;
  #members: GroupMember[] = [];
  #next = 0;
  #queue: Pending[] = [];
  /** Which member holds each group tag it was sent. */
  #holders = new Map<number, GroupMember>();

  constructor(sid: string, session: Session) {
    this.sid = sid;
    this.session = session;
  }

  get memberCount(): number {
    return this.#members.length;
  }

  /** The session's output: messages wait here until a member has room. */
  readonly output: SessionOutput = {
    publish: (out, tag, dup) => {
      if (tag === null) {
        // QoS 0: to one member now, or dropped when none has room (at most once).
        const m = this.#pick();
        if (m) m.send(this, out, 0, false);
        return;
      }
      this.#queue.push({ out, tag, dup });
      this.drain();
    },
    release: (tag) => {
      const holder = this.#holders.get(tag);
      if (holder && this.#members.includes(holder) && holder.release(this, tag)) return;
      const m = this.#members[0];
      if (m) {
        this.#holders.set(tag, m);
        m.releaseNew(this, tag);
      }
    },
    fail: (reason) => log.warning("Shared group {sid}: {reason}", { sid: this.sid, reason }),
  };

  /** Hands queued messages to members with room. Call when room may have freed. */
  drain(): void {
    while (this.#queue.length > 0) {
      const m = this.#pick();
      if (!m) return;
      const p = this.#queue.shift() as Pending;
      this.#holders.set(p.tag, m);
      m.send(this, p.out, p.tag, p.dup);
    }
  }

  #pick(): GroupMember | undefined {
    const n = this.#members.length;
    for (let i = 0; i < n; i++) {
      const m = this.#members[(this.#next + i) % n] as GroupMember;
      if (m.room() > 0) {
        this.#next = (this.#next + i + 1) % n;
        return m;
      }
    }
    return undefined;
  }

  /** A member's connection joined: the group's messages flow again. */
  join(m: GroupMember, window: number): void {
    if (this.#members.includes(m)) return;
    this.#members.push(m);
    if (this.#members.length === 1) this.session.attach(this.output, window);
    this.drain();
  }

  /**
   * A member's connection ended: what it held and did not complete goes to the others
   * (resent with DUP), or waits for the next member.
   */
  leave(m: GroupMember): void {
    const i = this.#members.indexOf(m);
    if (i < 0) return;
    this.#members.splice(i, 1);
    const held: number[] = [];
    for (const [tag, holder] of this.#holders) {
      if (holder === m) {
        this.#holders.delete(tag);
        held.push(tag);
      }
    }
    if (this.#members.length === 0) {
      this.session.detach();
      this.#queue = [];
      return;
    }
    for (const tag of held) this.session.resend(tag);
    this.drain();
  }

  /** The member finished with a group tag (acknowledged or refused). */
  settled(tag: number): void {
    this.#holders.delete(tag);
  }
}

/** The shared subscription groups of a broker. */
export class SharedGroups {
  #broker: Broker;
  #groups = new Map<string, Promise<SharedGroup>>();
  #started = new Map<string, SharedGroup>();

  constructor(broker: Broker) {
    this.#broker = broker;
  }

  /** The group of a live id, if it is in memory. */
  get(sid: string): SharedGroup | undefined {
    return this.#started.get(sid);
  }

  /** The group of a `$share/...` filter, created (or loaded from the store) on first use. */
  group(filter: string): Promise<SharedGroup> {
    const sid = groupId(filter);
    let g = this.#groups.get(sid);
    if (!g) {
      g = this.#create(sid);
      this.#groups.set(sid, g);
      g.then((group) => this.#started.set(sid, group), () => this.#groups.delete(sid));
    }
    return g;
  }

  async #create(sid: string): Promise<SharedGroup> {
    const entries = this.#entries(sid);
    const durable = entries.some((e) => e.durable);
    const session = new Session(this.#broker, sid, {
      durable,
      user: null,
      expirySec: 0,
      // Each member's filter passed the ACL when it subscribed; a group has no user.
      checkAcl: false,
      filtersFor: (topic) =>
        this.#entries(sid).filter((e) => matches(innerFilter(e.filter), topic)),
    });
    if (durable) {
      await this.#broker.store.barrier();
      await session.load();
    }
    return new SharedGroup(sid, session);
  }

  /** Member filters of a group, from the broker's filter index. */
  #entries(sid: string): FilterEntry[] {
    return this.#broker.filterIndex.sharing(shareFilter(sid));
  }

  /**
   * Ends the group when no filter names it any more: its positions and messages in
   * flight are deleted.
   */
  async endIfUnused(filter: string): Promise<void> {
    const sid = groupId(filter);
    if (this.#entries(sid).length > 0) return;
    const g = await this.#groups.get(sid);
    this.#groups.delete(sid);
    this.#started.delete(sid);
    if (g) {
      for (const name of g.session.topics) {
        (await this.#broker.topic(name)).untrackPosition(sid);
      }
      g.session.end();
    }
    await this.#broker.store.deleteSession(sid);
  }
}

/** The group session id of a `$share/{group}/{filter}` filter. */
export function groupId(filter: string): string {
  const s = parseShare(filter);
  if (!s) throw new TypeError(`not a shared subscription: ${filter}`);
  return `share:${s.group}/${s.filter}`;
}

/** The `$share/...` filter of a group session id (inverse of {@link groupId}). */
function shareFilter(sid: string): string {
  return `$share/${sid.slice("share:".length)}`;
}
