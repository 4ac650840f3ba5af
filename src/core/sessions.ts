/**
 * The registry of filter sessions (MQTT client ids): which are live in memory, which
 * are stored and waiting for their client, when each expires, and the wills waiting for
 * their connection to end.
 *
 * A persistent session's record says when its last connection ended; one broker-wide
 * tick (no timer per session) ends sessions whose expiry passed and publishes wills
 * whose delay passed. A session found at start-up without an end time was live at a
 * crash: its clock starts at start-up.
 *
 * @module
 */
import { getLogger } from "../log.ts";
import type { FilterRecord, SessionRecord, WillRecord } from "../store/store.ts";
import type { Broker } from "./broker.ts";
import { parseShare } from "./filters.ts";
import { type FilterEntry, Session } from "./session.ts";

const log = getLogger("session");

/** How often expiries and will delays are checked. */
const TICK_MS = 1000;

/** What a CONNECT asks of the registry. */
export interface OpenOptions {
  /** Discard any stored state first (MQTT Clean Start / clean session). */
  clean: boolean;
  /** Seconds the session outlives its connection; 0 = ends with it. */
  expirySec: number;
  user: string | null;
  clientId: string;
  protocolVersion: 4 | 5;
}

/** The filter sessions of a broker. */
export class SessionRegistry {
  #broker: Broker;
  #live = new Map<string, Session>();
  /** Stored persistent sessions not in memory, by sid. */
  #stored = new Map<string, SessionRecord>();
  #wills = new Map<string, WillRecord>();
  #tick: ReturnType<typeof setInterval> | undefined;
  #ticking: Promise<void> | null = null;
  #startedAt = Date.now();

  constructor(broker: Broker) {
    this.#broker = broker;
  }

  /** Loads stored sessions and wills and starts the expiry tick. */
  async start(): Promise<void> {
    this.#startedAt = Date.now();
    for (const r of await this.#broker.store.loadSessions()) this.#stored.set(r.sid, r);
    for (const w of await this.#broker.store.loadWills()) {
      // A will whose connection was live at a crash is due now (or after its delay).
      if (w.dueAt === null) w.dueAt = this.#startedAt + w.delaySec * 1000;
      this.#wills.set(w.sid, w);
    }
    this.#tick = setInterval(() => this.#onTick(), TICK_MS);
  }

  /** The live session of `sid`, if it is in memory. */
  live(sid: string): Session | undefined {
    return this.#live.get(sid);
  }

  /** Sessions in memory and stored ones. */
  get count(): number {
    let n = this.#live.size;
    for (const sid of this.#stored.keys()) if (!this.#live.has(sid)) n++;
    return n;
  }

  /** Sessions with a connection attached. */
  get connectedCount(): number {
    let n = 0;
    for (const s of this.#live.values()) if (s.connected) n++;
    return n;
  }

  /**
   * Finds or creates the session for a CONNECT. `present` says whether an earlier
   * session was resumed (MQTT Session Present).
   */
  async open(sid: string, o: OpenOptions): Promise<{ session: Session; present: boolean }> {
    await this.#cancelWill(sid);
    let live = this.#live.get(sid);
    if (live?.broken) {
      this.#live.delete(sid);
      live = undefined;
    }
    if (o.clean) await this.end(sid);
    const durable = o.expirySec > 0;
    const stored = this.#stored.get(sid);
    let session = o.clean ? undefined : this.#live.get(sid);
    let present = session !== undefined;
    if (!session && !o.clean && stored) {
      await this.#broker.store.barrier();
      session = new Session(this.#broker, sid, { durable: true, user: o.user, expirySec: 0 });
      await session.load();
      present = true;
    }
    if (session && !session.durable && durable) {
      // A memory-only session taken over by a connection that wants it kept: it starts
      // again as a persistent one (rare: both connections must overlap).
      await this.end(sid);
      session = undefined;
      present = false;
    }
    session ??= new Session(this.#broker, sid, { durable, user: o.user, expirySec: o.expirySec });
    session.user = o.user;
    session.expirySec = o.expirySec;
    this.#live.set(sid, session);
    if (session.durable) {
      const rec: SessionRecord = {
        sid,
        clientId: o.clientId,
        protocolVersion: o.protocolVersion,
        expirySec: o.expirySec,
        user: o.user,
        createdAt: this.#stored.get(sid)?.createdAt ?? Date.now(),
        disconnectedAt: null,
      };
      await this.#broker.store.saveSession(rec);
      this.#stored.set(sid, rec);
    }
    return { session, present };
  }

  /** The connection of `session` ended; it expires after `expirySec` (0 = now). */
  async disconnected(session: Session, expirySec: number): Promise<void> {
    if (this.#live.get(session.sid) !== session) return;
    session.detach();
    session.expirySec = expirySec;
    if (expirySec === 0 || !session.durable) {
      await this.end(session.sid);
      return;
    }
    const rec = this.#stored.get(session.sid);
    if (rec) {
      const next = { ...rec, expirySec, disconnectedAt: session.disconnectedAt };
      this.#stored.set(session.sid, next);
      await this.#broker.store.saveSession(next).catch((err) =>
        log.warning("Could not store the end of session {sid}: {error}", {
          sid: session.sid,
          error: String(err),
        })
      );
    }
    if (session.broken) this.#live.delete(session.sid);
  }

  /** Ends a session for good: filters, positions, messages in flight, receipts go. */
  async end(sid: string): Promise<void> {
    const s = this.#live.get(sid);
    this.#live.delete(sid);
    s?.end();
    const removed = this.#broker.filterIndex.removeSession(sid);
    for (const name of s?.topics ?? []) {
      (await this.#broker.topic(name)).untrackPosition(sid);
    }
    if (this.#stored.has(sid) || s?.durable) {
      this.#stored.delete(sid);
      await this.#broker.store.deleteSession(sid);
    }
    for (const f of removed) {
      if (parseShare(f.filter)) await this.#broker.shared.endIfUnused(f.filter);
    }
  }

  // --- filters ---------------------------------------------------------------------------

  /** Adds or replaces a filter; stored first for a persistent session. */
  async subscribe(session: Session, entry: FilterEntry): Promise<{ existed: boolean }> {
    const existed = this.#broker.filterIndex.entriesOf(session.sid)
      .some((f) => f.filter === entry.filter);
    if (session.durable) await this.#broker.store.saveFilter(stripEntry(entry));
    this.#broker.filterIndex.add(entry);
    return { existed };
  }

  /** Removes a filter; false when the session had no such filter. */
  async unsubscribe(session: Session, filter: string): Promise<boolean> {
    const removed = this.#broker.filterIndex.remove(session.sid, filter);
    if (!removed) return false;
    if (session.durable) await this.#broker.store.deleteFilter(session.sid, filter);
    await session.dropUnmatched();
    if (parseShare(filter)) await this.#broker.shared.endIfUnused(filter);
    return true;
  }

  // --- wills ------------------------------------------------------------------------------

  /** Registers the will of a new connection (stored, so a crash still yields it). */
  async setWill(will: WillRecord): Promise<void> {
    await this.#broker.store.saveWill(will);
    this.#wills.set(will.sid, will);
  }

  /** The connection ended normally: its will is dropped unpublished. */
  async dropWill(sid: string): Promise<void> {
    await this.#cancelWill(sid);
  }

  /** The connection ended abnormally: its will is due after its delay. */
  willDue(sid: string, expirySec: number): void {
    const w = this.#wills.get(sid);
    if (!w) return;
    // Published at the earlier of the Will Delay and the session's end, v5 [MQTT-3.1.3-9].
    const delay = Math.min(w.delaySec, expirySec);
    w.dueAt = Date.now() + delay * 1000;
    if (delay === 0) void this.#publishWill(w);
  }

  async #cancelWill(sid: string): Promise<void> {
    if (!this.#wills.has(sid)) return;
    this.#wills.delete(sid);
    await this.#broker.store.deleteWill(sid);
  }

  async #publishWill(w: WillRecord): Promise<void> {
    if (this.#wills.get(w.sid) !== w) return;
    this.#wills.delete(w.sid);
    try {
      await this.#broker.publish({
        topic: w.topic,
        payload: w.payload,
        format: w.format,
        qos: w.qos,
        retain: w.retain,
        from: w.sid,
        props: w.props,
        expiresAt: w.expiryIntervalSec === undefined
          ? undefined
          : Date.now() + w.expiryIntervalSec * 1000,
        willOf: w.sid,
      }, { origin: `will of ${w.sid}`, user: w.user });
      log.info("Published the will of {sid} to {topic}", { sid: w.sid, topic: w.topic });
    } catch (err) {
      log.warning("Could not publish the will of {sid}: {error}", {
        sid: w.sid,
        error: String(err),
      });
      await this.#broker.store.deleteWill(w.sid).catch(() => {});
    }
  }

  // --- the tick ---------------------------------------------------------------------------

  #onTick(): void {
    this.#ticking ??= this.#expire().catch((err) =>
      log.warning("Session expiry failed: {error}", { error: String(err) })
    ).finally(() => this.#ticking = null);
  }

  async #expire(): Promise<void> {
    const now = Date.now();
    for (const w of [...this.#wills.values()]) {
      if (w.dueAt !== null && w.dueAt <= now) await this.#publishWill(w);
    }
    for (const [sid, rec] of [...this.#stored]) {
      const live = this.#live.get(sid);
      if (live?.connected) continue;
      const since = live?.disconnectedAt ?? rec.disconnectedAt ?? this.#startedAt;
      if (since + rec.expirySec * 1000 <= now) {
        log.info("Session {sid} expired", { sid });
        await this.end(sid);
      }
    }
  }

  /** Stops the tick; sessions stay as they are stored. */
  async close(): Promise<void> {
    clearInterval(this.#tick);
    await this.#ticking;
    for (const s of this.#live.values()) if (!s.durable) s.end();
  }
}

/** The stored part of a filter entry. */
function stripEntry(e: FilterEntry): FilterRecord {
  const { durable: _durable, ...rec } = e;
  return rec;
}
