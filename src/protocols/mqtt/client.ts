/**
 * One MQTT connection (3.1.1 or 5.0): the state machine from CONNECT to the end, mapped
 * onto the core. Topics are the core's durable logs, a client id is a core
 * {@link Session}, PUBLISH is {@link Broker.submit}. Clause ids cite the OASIS
 * specifications: "v5 [MQTT-x]" for MQTT 5.0, "3.1.1 [MQTT-x]" for 3.1.1, a bare id
 * where both say the same.
 *
 * @module
 */
import type { Authenticator } from "../../auth/authenticator.ts";
import { type Broker, BrokerError } from "../../core/broker.ts";
import type { DeadLetterReason } from "../../core/dead_letters.ts";
import { filterError, hasWildcard, parseShare } from "../../core/filters.ts";
import { usernameError } from "../../core/names.ts";
import type { FilterEntry, Outbound, Session, SessionOutput } from "../../core/session.ts";
import { groupId, type GroupMember, type SharedGroup } from "../../core/shared.ts";
import { getLogger } from "../../log.ts";
import type {
  MessageProps,
  PayloadFormat,
  Qos,
  StoredMessage,
  WillRecord,
} from "../../store/store.ts";
import type {
  IConnectPacket,
  IPublishPacket,
  Packet,
  PacketEvent,
} from "../../transport/mqtt_codec.ts";
import type { OutboundPacket } from "../../transport/mqtt_codec.ts";
import { encodedTopic, encodePacket } from "../../transport/mqtt_codec.ts";
import type { PacketConsumer, PacketLink } from "../../transport/packet_link.ts";
import { OrderedReplies, Ticket } from "../../ordered_replies.ts";
import { cachedEncoding, publishHead, publishVariant, shareEncoding } from "./publish_cache.ts";
import { CONNACK_V4, RC, SUBACK_FAILURE_V4 } from "./reason_codes.ts";

/** The properties of a PUBLISH that has none (3.1.1, and most at 5.0); never written. */
const NO_PROPERTIES: NonNullable<IPublishPacket["properties"]> = Object.freeze({});

const log = getLogger("mqtt");

/** The connection surface the adapter needs: TCP, TLS or WebSocket. */
export type Link = PacketLink;

/** Settings and collaborators shared by every MQTT connection. */
export interface MqttContext {
  broker: Broker;
  auth?: Authenticator;
  /** Largest PUBLISH payload in bytes. */
  maxMessageBytes: number;
  /** Largest inbound packet (v5 Maximum Packet Size, sent in CONNACK). */
  maxPacketBytes: number;
  /** Inbound QoS 1/2 PUBLISHes unacknowledged per connection (v5 Receive Maximum). */
  receiveMaximum: number;
  /** Outbound QoS 1/2 messages in flight per session, at most. */
  maxInflight: number;
  /** Inbound topic aliases per connection (v5 Topic Alias Maximum). */
  topicAliasMaximum: number;
  /** Cap on the session expiry, seconds; also the expiry of 3.1.1 persistent sessions. */
  maxSessionExpirySec: number;
  /** When above 0, a larger or zero Keep Alive is replaced by it (v5 Server Keep Alive). */
  maxKeepAliveSec: number;
  maxClientIdBytes: number;
  /** Filters per session. */
  maxSubscriptions: number;
  /** Live connections by client id, for takeover. */
  clients: Map<string, MqttClient>;
  /** Output bytes queued to a connection before it is dropped as too slow. */
  writeBufferBytes: number;
  /** "mqtt" or "mqtt-ws", for dead letters and logs. */
  port: string;
  /**
   * Told once a connection of this port has ended (its session detached). One function
   * for every connection, so that an idle connection keeps no closure or promise for it.
   */
  ended?(client: MqttClient): void;
}

type State = "awaiting-connect" | "connecting" | "connected" | "closing";

const encoder = new TextEncoder();

/** Messages of one connection submitted and not yet committed before it stops reading. */
const MAX_UNCOMMITTED = 1000;
/**
 * A publisher that sent nothing for this long before its QoS 1 PUBLISHes were answered
 * waited for the answers: as many as it had in flight is its window (see #window).
 */
const STALL_MS = 1;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A closing of the connection with a reason, thrown from packet handlers. */
class Close extends Error {
  constructor(
    readonly reason: string,
    /** v5 DISCONNECT reason code (sent only after a CONNACK), undefined = just close. */
    readonly code?: number,
    readonly deadLetter?: DeadLetterReason,
  ) {
    super(reason);
  }
}

/** Serves one MQTT connection until it ends. */
export function serveMqtt(link: Link, ctx: MqttContext): Promise<void> {
  const client = new MqttClient(link, ctx);
  client.run();
  return client.finished;
}

/** The state of one MQTT connection; its session sends through it. */
export class MqttClient implements SessionOutput, PacketConsumer {
  readonly link: Link;
  #ctx: MqttContext;
  #state: State = "awaiting-connect";
  #version: 4 | 5 = 4;
  #clientId = "";
  #sid = "";
  #user: string | null = null;
  #session: Session | null = null;
  #expirySec = 0;
  #normalDisconnect = false;
  #publishWill = false;
  #hasWill = false;
  /** The client's Maximum Packet Size (v5; 0 = none). */
  #clientMaxPacket = 0;
  /** The client's Topic Alias Maximum (v5): aliases we may give topics we send. */
  #clientAliasMax = 0;
  // The maps below are made on first use: most connections never need them, and an
  // empty map costs a few hundred bytes per idle connection.
  #outAliases: Map<string, number> | undefined;
  #inAliases: Map<number, string> | undefined;
  /** Inbound QoS 1/2 PUBLISHes not yet acknowledged. */
  #inboundPending = 0;
  /** When the last QoS 1 PUBLISH arrived (`performance.now()`). */
  #lastPublishAt = 0;
  /**
   * The most QoS 1 PUBLISHes this publisher was seen to have in flight while it waited for
   * their PUBACKs (its own window), 0 while unknown. A PUBLISH sent with others in flight
   * and fewer than that is pipelined: the publisher goes on without waiting for its
   * PUBACK, so the commit that answers it may wait to share an atomic (the stream delay).
   */
  #window = 0;
  /** Submissions in arrival order: each waits for the one before it. */
  #submitting: Promise<unknown> | null = null;
  #submitsWaiting = 0;
  #uncommitted = 0;
  #source: { origin: string; user: string | null } | undefined;
  /** Replies not yet sent, in the order of the packets they answer. */
  #replies = new OrderedReplies((err) => {
    log.warning("MQTT reply to {clientId} failed: {error}", {
      clientId: this.#clientId,
      error: String(err),
    });
    this.link.close("reply failed");
  });
  /** Shared groups this connection is a member of. */
  #groups: Map<string, SharedGroup> | undefined;
  /** Our packet identifiers lent to shared group messages → the group and its tag. */
  #lent: Map<number, { group: SharedGroup; groupTag: number; qos: Qos }> | undefined;
  /** `${group}:${groupTag}` → our packet identifier. */
  #lentBy: Map<string, number> | undefined;
  /** Made when someone waits for the end (a takeover, a stop), not per connection. */
  #finished: PromiseWithResolvers<void> | undefined;
  #ended = false;

  constructor(link: Link, ctx: MqttContext) {
    this.link = link;
    this.#ctx = ctx;
  }

  /** Resolves once the connection is fully ended (session detached). */
  get finished(): Promise<void> {
    if (this.#ended) return Promise.resolve();
    return (this.#finished ??= Promise.withResolvers<void>()).promise;
  }

  /** True from the accepting CONNACK until the connection starts closing. */
  get connected(): boolean {
    return this.#state === "connected";
  }

  /**
   * Serves the connection until it ends (see {@link finished}, and the context's `ended`);
   * a failure is logged and closes it.
   */
  run(): void {
    // One reaction on the input and nothing else while the connection is idle: no
    // suspended function of ours, no chain of promises, and a read costs no async
    // iteration. What follows the end is made when it comes.
    this.link.consume(this);
  }

  /** {@link PacketConsumer}: the packets of one read. */
  packetsArrived(batch: PacketEvent[]): Promise<void> | void {
    return this.#handle(batch, 0);
  }

  /** {@link PacketConsumer}: the input has ended (`error` null) or failed. */
  inputEnded(error: unknown): void {
    this.#finish(error);
  }

  async #finish(err: unknown): Promise<void> {
    if (err !== null) {
      log.error("MQTT connection {id} failed: {error}", {
        id: this.link.id,
        error: err instanceof Error ? err.stack ?? err.message : String(err),
      });
      this.link.close("handler failed");
    }
    try {
      // #end answers what was already accepted before the socket goes.
      await this.#end();
    } catch (e) {
      log.error("MQTT connection {id} did not end cleanly: {error}", {
        id: this.link.id,
        error: e instanceof Error ? e.stack ?? e.message : String(e),
      });
      this.link.close("handler failed");
    } finally {
      this.#ended = true;
      this.#finished?.resolve();
      this.#ctx.ended?.(this);
    }
  }

  /**
   * Handles the packets of one read from `from` on, in one go: those that need no waiting
   * (acknowledgements, most PUBLISHes) without a turn of the event loop between them.
   * Returns a promise when a packet must be waited for; the rest of the batch follows it.
   * Throws (or rejects with) anything but a {@link Close}: the connection failed.
   */
  #handle(batch: PacketEvent[], from: number): Promise<void> | void {
    for (let i = from; i < batch.length; i++) {
      if (this.#state === "closing" || !this.link.reading) {
        this.link.stopReading(); // no more input: the batch's rest and later reads
        return;
      }
      const item = batch[i]!;
      let waiting: Promise<void> | void;
      try {
        waiting = this.#handleItem(item);
      } catch (err) {
        this.#closeOn(err);
        return;
      }
      if (waiting) {
        return waiting.then(() => this.#handle(batch, i + 1), (err) => this.#closeOn(err));
      }
    }
  }

  #handleItem(item: PacketEvent): Promise<void> | void {
    if (item.kind === "too-large") {
      // v5 [MQTT-3.1.2-24] is the client's side; ours: Maximum Packet Size exceeded.
      throw new Close(
        `packet of ${item.size} bytes over the limit of ${item.limit}`,
        RC.packetTooLarge,
        "mqtt-malformed",
      );
    }
    if (item.kind === "malformed") {
      // A malformed packet closes the connection, 3.1.1 [MQTT-4.8.0-1], v5 [MQTT-4.13.1-1].
      throw new Close(
        `malformed packet: ${item.error.message}`,
        RC.malformedPacket,
        "mqtt-malformed",
      );
    }
    return this.#dispatch(item.packet);
  }

  /** A packet's handling failed: a {@link Close} refuses the connection, anything else is rethrown. */
  #closeOn(err: unknown): void {
    if (!(err instanceof Close)) throw err;
    this.#refuse(err); // stops reading
  }

  #refuse(c: Close): void {
    this.#state = "closing";
    log.warning("MQTT connection {id} from {remote} closed: {reason}", {
      id: this.link.id,
      remote: this.link.remote,
      clientId: this.#clientId,
      reason: c.reason,
    });
    if (c.deadLetter) {
      void this.#ctx.broker.deadLetter({
        reason: c.deadLetter,
        detail: c.reason,
        port: this.#ctx.port,
        remote: this.link.remote,
        user: this.#user ?? undefined,
        subscriber: this.#clientId || undefined,
      });
    }
    // v5 sends DISCONNECT with the reason, but only after a CONNACK, v5 [MQTT-3.14.0-1].
    if (this.#version === 5 && this.#session && c.code !== undefined) {
      this.link.send({
        cmd: "disconnect",
        reasonCode: c.code,
        properties: { reasonString: c.reason.slice(0, 200) },
      });
    }
    this.link.stopReading();
  }

  /** Handles one packet; returns a promise only when the next must wait for it. */
  #dispatch(p: Packet): Promise<void> | void {
    if (this.#state === "awaiting-connect") {
      // The first packet must be CONNECT, [MQTT-3.1.0-1].
      if (p.cmd !== "connect") {
        throw new Close(`${p.cmd} before CONNECT`, undefined, "mqtt-protocol-error");
      }
      return this.#connect(p);
    }
    switch (p.cmd) {
      case "connect":
        // A second CONNECT is a protocol violation, [MQTT-3.1.0-2].
        throw new Close("a second CONNECT", RC.protocolError, "mqtt-protocol-error");
      case "publish":
        return this.#publish(p);
      case "puback":
        this.#needId(p.messageId);
        if (this.#lent?.has(p.messageId as number)) {
          this.#groupAck(p.messageId as number, "puback", p.reasonCode ?? 0);
        } else if ((p.reasonCode ?? 0) >= 0x80) this.#session?.refused(p.messageId as number);
        else this.#session?.acknowledged(p.messageId as number);
        this.#drainGroups();
        return;
      case "pubrec":
        return this.#pubrec(p.messageId, p.reasonCode);
      case "pubrel":
        return this.#pubrel(p.messageId);
      case "pubcomp":
        this.#needId(p.messageId);
        if (this.#lent?.has(p.messageId as number)) {
          this.#groupAck(p.messageId as number, "pubcomp", p.reasonCode ?? 0);
        } else this.#session?.completed(p.messageId as number);
        this.#drainGroups();
        return;
      case "subscribe":
        return this.#subscribe(p);
      case "unsubscribe":
        return this.#unsubscribe(p);
      case "pingreq":
        // [MQTT-3.12.4-1]
        this.#replies.add(null, () => this.link.send({ cmd: "pingresp" }));
        return;
      case "disconnect":
        return this.#disconnect(p);
      case "auth":
        throw new Close("AUTH is not supported (no enhanced authentication)", RC.protocolError);
      default:
        // Server-to-client packets from a client are a protocol violation.
        throw new Close(
          `unexpected ${p.cmd} from a client`,
          RC.protocolError,
          "mqtt-protocol-error",
        );
    }
  }

  // --- CONNECT ---------------------------------------------------------------------------

  async #connect(p: IConnectPacket): Promise<void> {
    this.#state = "connecting";
    const version = p.protocolVersion;
    if (version !== 4 && version !== 5) {
      // 3.1.1 [MQTT-3.1.2-2]: unsupported level → CONNACK 0x01, then close.
      this.link.send({
        cmd: "connack",
        returnCode: CONNACK_V4.unacceptableProtocol,
        sessionPresent: false,
      });
      throw new Close(`protocol level ${version} is not supported`);
    }
    this.#version = version;
    const props = p.properties ?? {};
    const refuse = (v4: number, v5: number, why: string): never => {
      // A refused CONNECT is answered and the connection closed, 3.1.1 [MQTT-3.2.2-5],
      // v5 [MQTT-3.2.2-7].
      this.#sendConnack(v4, v5, false);
      throw new Close(`CONNECT refused: ${why}`);
    };
    if (containsBadText(p.clientId) || (p.username !== undefined && containsBadText(p.username))) {
      throw new Close("CONNECT strings are not well-formed UTF-8", undefined, "mqtt-malformed");
    }
    // --- identity
    let user: string | null = null;
    if (this.#ctx.auth) {
      const password = p.password === undefined ? undefined : decodeUtf8(p.password);
      if (p.username === undefined || password === undefined || usernameError(p.username)) {
        refuse(CONNACK_V4.badUserNameOrPassword, RC.badUserNameOrPassword, "credentials missing");
      }
      const result = await this.#ctx.auth.login(
        this.link.address,
        p.username as string,
        password as string,
        this.link.closed,
      );
      if (!result.ok) {
        if (result.reason === "throttled") {
          refuse(CONNACK_V4.notAuthorized, RC.notAuthorized, "too many failed logins");
        }
        refuse(CONNACK_V4.badUserNameOrPassword, RC.badUserNameOrPassword, "wrong credentials");
      }
      user = p.username as string;
    } else if (p.username !== undefined && !usernameError(p.username)) {
      user = p.username;
    }
    this.#user = user;
    // --- client id
    let clientId = p.clientId;
    let assigned = false;
    if (clientId === "") {
      // An empty id gets one of ours: v5 [MQTT-3.1.3-6]; 3.1.1 only with clean session,
      // else 0x02, 3.1.1 [MQTT-3.1.3-8].
      if (version === 4 && !p.clean) {
        refuse(
          CONNACK_V4.identifierRejected,
          RC.clientIdNotValid,
          "empty client id without clean session",
        );
      }
      clientId = `auto-${crypto.randomUUID()}`;
      assigned = true;
    }
    if (encoder.encode(clientId).byteLength > this.#ctx.maxClientIdBytes) {
      refuse(CONNACK_V4.identifierRejected, RC.clientIdNotValid, "client id too long");
    }
    this.#clientId = clientId;
    this.#sid = `mqtt:${clientId}`;
    // --- will
    if (p.will) {
      const topicProblem = this.#ctx.broker.topicError(p.will.topic) ??
        (hasWildcard(p.will.topic) ? "wildcards in the will topic" : null);
      if (topicProblem) refuse(CONNACK_V4.serverUnavailable, RC.topicNameInvalid, topicProblem);
      if (!this.#ctx.broker.authorizer.canPublish(user, p.will.topic)) {
        refuse(CONNACK_V4.notAuthorized, RC.notAuthorized, "will topic not allowed");
      }
    }
    // --- session
    const clean = p.clean ?? true;
    let expirySec: number;
    let expiryCapped = false;
    if (version === 5) {
      expirySec = props.sessionExpiryInterval ?? 0;
      if (expirySec > this.#ctx.maxSessionExpirySec) {
        expirySec = this.#ctx.maxSessionExpirySec;
        expiryCapped = true;
      }
    } else {
      // 3.1.1 has no expiry: a persistent session is kept for the configured maximum.
      expirySec = clean ? 0 : this.#ctx.maxSessionExpirySec;
    }
    // Takeover: the live connection of this client id is closed, v5 [MQTT-3.1.4-3],
    // 3.1.1 [MQTT-3.1.4-2].
    const previous = this.#ctx.clients.get(clientId);
    this.#ctx.clients.set(clientId, this);
    if (previous && previous !== this) await previous.takeOver();
    if (this.link.isClosed) throw new Close("connection closed during CONNECT");
    const { session, present } = await this.#ctx.broker.sessions.open(this.#sid, {
      clean,
      expirySec,
      user,
      clientId,
      protocolVersion: version,
    });
    this.#session = session;
    this.#expirySec = expirySec;
    if (p.will) {
      const wp = p.will.properties ?? {};
      const payload = typeof p.will.payload === "string"
        ? encoder.encode(p.will.payload)
        : new Uint8Array(p.will.payload);
      const will: WillRecord = {
        sid: this.#sid,
        topic: p.will.topic,
        payload,
        format: wp.payloadFormatIndicator ? "text" : "binary",
        qos: p.will.qos as Qos,
        retain: p.will.retain ?? false,
        delaySec: version === 5 ? (wp.willDelayInterval ?? 0) : 0,
        user,
        dueAt: null,
      };
      const wprops = messageProps(wp);
      if (wprops) will.props = wprops;
      if (wp.messageExpiryInterval !== undefined) will.expiryIntervalSec = wp.messageExpiryInterval;
      await this.#ctx.broker.sessions.setWill(will);
      this.#hasWill = true;
    }
    // --- keep alive, windows
    let keepAlive = p.keepalive ?? 0;
    let serverKeepAlive: number | undefined;
    const maxKeep = this.#ctx.maxKeepAliveSec;
    if (version === 5 && maxKeep > 0 && (keepAlive === 0 || keepAlive > maxKeep)) {
      keepAlive = maxKeep;
      serverKeepAlive = maxKeep; // v5 [MQTT-3.2.2-21]
    }
    // 1.5 × Keep Alive without a packet closes, 3.1.1 [MQTT-3.1.2-24], v5 [MQTT-3.1.2-22].
    this.link.setKeepAlive(keepAlive * 1500);
    const window = Math.min(props.receiveMaximum ?? 65_535, this.#ctx.maxInflight);
    this.#clientMaxPacket = props.maximumPacketSize ?? 0;
    this.#clientAliasMax = props.topicAliasMaximum ?? 0;
    const connackProps: Record<string, unknown> = {
      receiveMaximum: this.#ctx.receiveMaximum,
      maximumPacketSize: this.#ctx.maxPacketBytes,
      topicAliasMaximum: this.#ctx.topicAliasMaximum,
      retainAvailable: true,
      wildcardSubscriptionAvailable: true,
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: true,
    };
    if (assigned) connackProps.assignedClientIdentifier = clientId; // v5 [MQTT-3.2.2-16]
    if (expiryCapped) connackProps.sessionExpiryInterval = expirySec;
    if (serverKeepAlive !== undefined) connackProps.serverKeepAlive = serverKeepAlive;
    this.#state = "connected";
    // Session Present: v5 [MQTT-3.2.2-2], [MQTT-3.2.2-3]; 3.1.1 [MQTT-3.2.2-1..3].
    this.#sendConnack(CONNACK_V4.accepted, RC.success, present, connackProps);
    log.info("MQTT client {clientId} connected from {remote} (v{version}, {kind} session)", {
      clientId,
      remote: this.link.remote,
      version: version === 5 ? "5.0" : "3.1.1",
      kind: present ? "resumed" : session.durable ? "persistent" : "clean",
    });
    session.attach(this, window);
    for (const f of this.#ctx.broker.filterIndex.entriesOf(this.#sid)) {
      if (parseShare(f.filter)) await this.#joinGroup(f.filter);
    }
  }

  #sendConnack(v4: number, v5: number, present: boolean, props?: Record<string, unknown>): void {
    if (this.#version === 5) {
      const packet: Record<string, unknown> = {
        cmd: "connack",
        reasonCode: v5,
        sessionPresent: present,
      };
      if (props) packet.properties = props;
      this.link.send(packet as unknown as OutboundPacket);
    } else {
      this.link.send({ cmd: "connack", returnCode: v4, sessionPresent: present });
    }
  }

  /** Another connection took this client id: close this one, v5 with 0x8E. */
  async takeOver(): Promise<void> {
    if (this.#state === "connected" && this.#version === 5) {
      this.link.send({ cmd: "disconnect", reasonCode: RC.sessionTakenOver });
    }
    this.#state = "closing";
    this.link.stopReading();
    this.link.close("session taken over");
    await this.finished;
  }

  // --- PUBLISH (inbound) -------------------------------------------------------------------

  #publish(p: IPublishPacket): Promise<void> | void {
    const qos = p.qos as Qos;
    if (qos > 0) this.#needId(p.messageId);
    const props = p.properties ?? NO_PROPERTIES;
    let topic = p.topic;
    if (this.#version === 5 && props.topicAlias !== undefined) {
      const alias = props.topicAlias;
      // v5 [MQTT-3.3.2-8], [MQTT-3.3.2-9]: 0 and values above our maximum are errors.
      if (alias === 0 || alias > this.#ctx.topicAliasMaximum) {
        throw new Close(
          `topic alias ${alias} out of range`,
          RC.topicAliasInvalid,
          "mqtt-protocol-error",
        );
      }
      if (topic === "") {
        const known = this.#inAliases?.get(alias);
        if (known === undefined) {
          throw new Close(`unknown topic alias ${alias}`, RC.protocolError, "mqtt-protocol-error");
        }
        topic = known;
      } else {
        (this.#inAliases ??= new Map()).set(alias, topic);
      }
    }
    if (topic === "") {
      // A topic name is at least one character, 3.1.1 [MQTT-4.7.3-1]; v5 [MQTT-3.3.2-1].
      throw new Close(
        "PUBLISH with an empty topic and no alias",
        RC.protocolError,
        "mqtt-protocol-error",
      );
    }
    // Ill-formed UTF-8 and U+0000 in the topic bytes were refused by the framing
    // (mqtt_codec.ts) as a Malformed Packet, v5 [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    if (hasWildcard(topic)) {
      // No wildcards in a topic name, [MQTT-3.3.2-2].
      throw new Close(
        `wildcard in PUBLISH topic ${JSON.stringify(topic)}`,
        RC.topicNameInvalid,
        "mqtt-protocol-error",
      );
    }
    if (props.subscriptionIdentifier !== undefined) {
      // v5 [MQTT-3.3.4-6]
      throw new Close(
        "PUBLISH from a client with a Subscription Identifier",
        RC.protocolError,
        "mqtt-protocol-error",
      );
    }
    if (qos > 0 && ++this.#inboundPending > this.#ctx.receiveMaximum) {
      if (this.#version === 5) {
        // v5 [MQTT-3.3.4-9]: more than Receive Maximum unacknowledged.
        throw new Close(
          "Receive Maximum exceeded",
          RC.receiveMaximumExceeded,
          "mqtt-protocol-error",
        );
      }
    }
    const payload = new Uint8Array(p.payload as Uint8Array);
    const session = this.#session as Session;
    const tag = p.messageId as number;
    // A QoS 2 PUBLISH whose identifier has a receipt was stored already: answer it again
    // and store nothing, 3.1.1 [MQTT-4.3.3-2], v5 [MQTT-4.3.3-10].
    if (qos === 2 && session.receipts.has(tag)) {
      this.#replies.add(null, () => this.#ackPublish(qos, tag, RC.success));
      return;
    }
    const refusal = this.#checkPublish(topic, payload, props);
    if (refusal) {
      this.#replies.add(
        null,
        () => this.#refusePublish(refusal, qos, topic, (code) => this.#ackPublish(qos, tag, code)),
      );
      return;
    }
    if (qos === 2) session.receipts.add(tag);
    let pipelined = false;
    if (qos === 1) {
      const inFlight = this.#inboundPending;
      pipelined = inFlight > 1 && (this.#window === 0 || inFlight < this.#window);
      this.#lastPublishAt = performance.now();
    }
    const format: PayloadFormat = props.payloadFormatIndicator ? "text" : "binary";
    const input = {
      topic,
      payload,
      format,
      qos,
      retain: p.retain,
      from: this.#sid,
      expiresAt: props.messageExpiryInterval === undefined
        ? undefined
        : Date.now() + props.messageExpiryInterval * 1000,
      props: messageProps(props),
      receipt: qos === 2 && session.durable ? { sid: this.#sid, tag } : undefined,
      pipelined,
    };
    const source = this.#source ??= {
      origin: `mqtt ${this.#clientId} ${this.link.remote}`,
      user: this.#user,
    };
    // Inbound flow control: with too many of this connection's messages not yet
    // committed and answered (QoS 0 has no window), stop reading until the newest one
    // lands; TCP then slows the publisher down instead of the broker's memory growing.
    this.#uncommitted++;
    // The reply's place, settled by the topic once the message is durable (or refused).
    const reply = this.#replies.enqueue(new MqttClient.#PublishReply(this, qos, tag, topic));
    // Submissions keep the packets' order: straight to the topic when nothing is waiting
    // before this one (the usual case), else after the one before it.
    if (this.#submitsWaiting > 0 || !this.#ctx.broker.submitNowWith(input, source, reply)) {
      this.#submitsWaiting++;
      const before = this.#submitting ?? Promise.resolve();
      const submitted = before.then(() => this.#ctx.broker.submit(input, source));
      this.#submitting = submitted.catch(() => {}).finally(() => {
        // The last one lets the chain go: an idle connection keeps no promise.
        if (--this.#submitsWaiting === 0) this.#submitting = null;
      });
      submitted.then((s) => s.committed).then((m) => reply.resolve(m), (err) => reply.reject(err));
    }
    // Settled only after this returns, so the count is down when this resolves.
    if (this.#uncommitted >= MAX_UNCOMMITTED) {
      reply.landed = Promise.withResolvers<void>();
      return reply.landed.promise;
    }
  }

  /** PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound PUBLISH; nothing at QoS 0. */
  #ackPublish(qos: Qos, tag: number, code: number): void {
    if (qos === 0) return;
    if (
      // One in flight says nothing: a publisher that waits for each PUBACK is never held.
      qos === 1 && this.#inboundPending > Math.max(this.#window, 1) &&
      performance.now() - this.#lastPublishAt >= STALL_MS
    ) this.#window = this.#inboundPending;
    this.#inboundPending--;
    const packet: Record<string, unknown> = {
      cmd: qos === 1 ? "puback" : "pubrec",
      messageId: tag,
    };
    if (this.#version === 5 && code !== 0) packet.reasonCode = code;
    this.link.send(packet as unknown as OutboundPacket);
  }

  /**
   * The reply to one inbound PUBLISH, as one object (not a ticket and its closures): the
   * acknowledgement once the message is durable, the refusal if it is not. Nested here
   * so that it may use the client's private state.
   */
  static readonly #PublishReply = class PublishReply extends Ticket<StoredMessage> {
    /** Made when the connection's input waits for this message to land. */
    landed: PromiseWithResolvers<void> | undefined;

    constructor(
      readonly client: MqttClient,
      readonly qos: Qos,
      readonly tag: number,
      readonly topic: string,
    ) {
      super();
    }

    override send(): void {
      const c = this.client;
      c.#uncommitted--;
      c.#ackPublish(this.qos, this.tag, RC.success);
      this.landed?.resolve();
    }

    override fail(err: unknown): void {
      const c = this.client;
      const { qos, tag } = this;
      c.#uncommitted--;
      if (qos === 2) c.#session?.receipts.delete(tag);
      c.#refusePublish(err, qos, this.topic, (code) => c.#ackPublish(qos, tag, code));
      this.landed?.resolve();
    }
  };

  /** A reason not to store a PUBLISH that the protocol answers without closing. */
  #checkPublish(
    topic: string,
    payload: Uint8Array,
    props: { payloadFormatIndicator?: boolean },
  ): BrokerError | null {
    if (payload.byteLength > this.#ctx.maxMessageBytes) {
      return new BrokerError(
        `payload of ${payload.byteLength} bytes over the limit of ${this.#ctx.maxMessageBytes}`,
        "full",
      );
    }
    if (props.payloadFormatIndicator && decodeUtf8(payload) === undefined) {
      return new BrokerError("payload marked as UTF-8 is not", "invalid-payload" as never);
    }
    const bad = this.#ctx.broker.topicError(topic);
    if (bad) return new BrokerError(bad, "invalid-topic");
    return null;
  }

  #refusePublish(err: unknown, qos: Qos, topic: string, ack: (code: number) => void): void {
    const e = err instanceof BrokerError ? err : null;
    const why = err instanceof Error ? err.message : String(err);
    log.warning("MQTT PUBLISH from {clientId} to {topic} not stored: {error}", {
      clientId: this.#clientId,
      topic,
      error: why,
    });
    const code = !e
      ? RC.unspecified
      : e.code === "denied"
      ? RC.notAuthorized
      : e.code === "invalid-topic"
      ? RC.topicNameInvalid
      : e.code === "full"
      ? RC.quotaExceeded
      : (e.code as string) === "invalid-payload"
      ? RC.payloadFormatInvalid
      : RC.unspecified;
    if (this.#version === 5) {
      ack(code);
      return;
    }
    if (e?.code === "denied") {
      // 3.1.1 [MQTT-3.3.5-2]: acknowledge positively and drop, or close. We drop.
      void this.#ctx.broker.deadLetter({
        reason: "mqtt-publish-denied",
        detail: why,
        topic,
        port: this.#ctx.port,
        remote: this.link.remote,
        user: this.#user ?? undefined,
        subscriber: this.#clientId,
      });
      ack(RC.success);
      return;
    }
    if (qos === 0) return;
    // 3.1.1 has no negative acknowledgement: close, the client sends it again later.
    this.#state = "closing";
    this.link.stopReading();
    this.link.close(`PUBLISH refused: ${why}`);
  }

  // --- QoS acknowledgements ----------------------------------------------------------------

  #pubrec(id: number | undefined, reasonCode: number | undefined): void {
    this.#needId(id);
    const session = this.#session as Session;
    const tag = id as number;
    const lent = this.#lent?.get(tag);
    if (lent) {
      if ((reasonCode ?? 0) >= 0x80 || lent.qos !== 2) {
        this.#groupAck(tag, "pubrec", reasonCode ?? 0);
        return;
      }
      const received = lent.group.session.received(lent.groupTag);
      this.#replies.add(received, () => this.link.send({ cmd: "pubrel", messageId: tag }));
      return;
    }
    if ((reasonCode ?? 0) >= 0x80) {
      session.refused(tag);
      return;
    }
    const received = session.received(tag);
    this.#replies.add(received, (known) => {
      const packet: Record<string, unknown> = { cmd: "pubrel", messageId: tag };
      if (!known && this.#version === 5) packet.reasonCode = RC.packetIdNotFound;
      this.link.send(packet as unknown as OutboundPacket);
    });
  }

  #pubrel(id: number | undefined): void {
    this.#needId(id);
    const session = this.#session as Session;
    const tag = id as number;
    const had = session.receipts.delete(tag);
    const done = had && session.durable
      ? this.#ctx.broker.store.deleteReceipt(this.#sid, tag)
      : Promise.resolve();
    // PUBCOMP after the receipt is gone, v5 [MQTT-4.3.3-11]. An unknown identifier is
    // answered too: a lost PUBCOMP and a PUBREL repeated after it look the same.
    this.#replies.add(done, () => this.link.send({ cmd: "pubcomp", messageId: tag }));
  }

  // --- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

  async #subscribe(p: Extract<Packet, { cmd: "subscribe" }>): Promise<void> {
    this.#needId(p.messageId);
    if (p.subscriptions.length === 0) {
      // 3.1.1 [MQTT-3.8.3-3], v5 [MQTT-3.8.3-2]: at least one filter.
      throw new Close("SUBSCRIBE without filters", RC.protocolError, "mqtt-protocol-error");
    }
    const session = this.#session as Session;
    const subId = p.properties?.subscriptionIdentifier as number | undefined;
    const granted: number[] = [];
    const retained: { entry: FilterEntry; isNew: boolean }[] = [];
    for (const s of p.subscriptions) {
      const filter = s.topic;
      const problem = filterError(filter, this.#ctx.broker.options.maxTopicBytes);
      if (problem) {
        if (containsBadText(filter) || /[#+]/.test(filter)) {
          // Malformed filters close the connection, 3.1.1 [MQTT-4.7.1-2], v5 [MQTT-4.7.1-1].
          throw new Close(
            `bad topic filter: ${problem}`,
            RC.topicFilterInvalid,
            "mqtt-protocol-error",
          );
        }
        granted.push(this.#version === 5 ? RC.topicFilterInvalid : SUBACK_FAILURE_V4);
        continue;
      }
      const shared = parseShare(filter) !== null;
      if (shared && this.#version === 5 && s.nl) {
        // No Local on a shared subscription is a Protocol Error, v5 [MQTT-3.8.3-4].
        throw new Close(
          "No Local on a shared subscription",
          RC.protocolError,
          "mqtt-protocol-error",
        );
      }
      const az = this.#ctx.broker.authorizer;
      const allowed = az.canSubscribeFilter
        ? az.canSubscribeFilter(this.#user, filter)
        : az.canSubscribe(this.#user, filter);
      if (!allowed) {
        log.warning("Denied: {user} may not subscribe to {filter}", {
          user: this.#user ?? "(anonymous)",
          filter,
        });
        granted.push(this.#version === 5 ? RC.notAuthorized : SUBACK_FAILURE_V4);
        continue;
      }
      const mine = this.#ctx.broker.filterIndex.entriesOf(this.#sid);
      if (!mine.some((f) => f.filter === filter) && mine.length >= this.#ctx.maxSubscriptions) {
        granted.push(this.#version === 5 ? RC.quotaExceeded : SUBACK_FAILURE_V4);
        continue;
      }
      const qos = Math.min(s.qos, 2) as Qos;
      const entry: FilterEntry = {
        sid: this.#sid,
        filter,
        qos,
        noLocal: this.#version === 5 && (s.nl ?? false),
        retainAsPublished: this.#version === 5 && (s.rap ?? false),
        retainHandling: (this.#version === 5 ? (s.rh ?? 0) : 0) as 0 | 1 | 2,
        createdAt: Date.now(),
        durable: session.durable,
      };
      if (subId !== undefined) entry.subscriptionId = subId;
      try {
        const { existed } = await this.#ctx.broker.sessions.subscribe(session, entry);
        if (shared) {
          // Shared subscriptions get no retained messages (v5 §3.3.1.3 names non-shared ones).
          await this.#joinGroup(filter);
        } else {
          retained.push({ entry, isNew: !existed });
        }
        granted.push(qos);
      } catch (err) {
        log.warning("SUBSCRIBE of {clientId} to {filter} failed: {error}", {
          clientId: this.#clientId,
          filter,
          error: String(err),
        });
        granted.push(this.#version === 5 ? RC.unspecified : SUBACK_FAILURE_V4);
      }
    }
    this.#replies.add(null, () => {
      this.link.send({ cmd: "suback", messageId: p.messageId as number, granted });
      // Retained messages after the SUBACK: v5 Retain Handling 0 always, 1 for a new
      // subscription only, 2 never (v5 [MQTT-3.3.1-9..11]); 3.1.1 always [MQTT-3.3.1-6].
      for (const { entry, isNew } of retained) {
        if (entry.retainHandling === 2 || (entry.retainHandling === 1 && !isNew)) continue;
        session.sendRetained(this.#ctx.broker.retainedFor(entry.filter), entry);
      }
    });
  }

  async #unsubscribe(p: Extract<Packet, { cmd: "unsubscribe" }>): Promise<void> {
    this.#needId(p.messageId);
    if (p.unsubscriptions.length === 0) {
      // 3.1.1 [MQTT-3.10.3-2], v5 [MQTT-3.10.3-2]
      throw new Close("UNSUBSCRIBE without filters", RC.protocolError, "mqtt-protocol-error");
    }
    const session = this.#session as Session;
    const codes: number[] = [];
    for (const filter of p.unsubscriptions) {
      const removed = await this.#ctx.broker.sessions.unsubscribe(session, filter);
      codes.push(removed ? RC.success : RC.noSubscriptionExisted);
    }
    this.#replies.add(null, () => {
      const packet: Record<string, unknown> = { cmd: "unsuback", messageId: p.messageId };
      if (this.#version === 5) packet.granted = codes;
      this.link.send(packet as unknown as OutboundPacket);
    });
  }

  // --- DISCONNECT ----------------------------------------------------------------------------

  #disconnect(p: Extract<Packet, { cmd: "disconnect" }>): void {
    const code = p.reasonCode ?? 0;
    const expiry = p.properties?.sessionExpiryInterval;
    if (expiry !== undefined) {
      // Raising the expiry from 0 at DISCONNECT is a Protocol Error, v5 [MQTT-3.14.2-2].
      if (this.#expirySec === 0 && expiry > 0) {
        throw new Close(
          "Session Expiry raised from 0 at DISCONNECT",
          RC.protocolError,
          "mqtt-protocol-error",
        );
      }
      this.#expirySec = Math.min(expiry, this.#ctx.maxSessionExpirySec);
    }
    this.#normalDisconnect = true;
    // 0x04 asks for the will anyway; otherwise a DISCONNECT drops it, [MQTT-3.14.4-3] / v5 [MQTT-3.1.2-10].
    this.#publishWill = code === RC.disconnectWithWill;
    this.#state = "closing";
    this.link.stopReading();
  }

  // --- the end -------------------------------------------------------------------------------

  async #end(): Promise<void> {
    this.#state = "closing";
    await this.#replies.settled();
    const session = this.#session;
    if (this.#ctx.clients.get(this.#clientId) === this) this.#ctx.clients.delete(this.#clientId);
    // Leaving hands what this connection held to the other members (sent again, DUP).
    for (const g of this.#groups?.values() ?? []) g.leave(this.#member);
    this.#groups = undefined;
    for (const tag of this.#lent?.keys() ?? []) session?.returnTag(tag);
    this.#lent = undefined;
    this.#lentBy = undefined;
    try {
      if (session) {
        const sessions = this.#ctx.broker.sessions;
        if (this.#hasWill) {
          if (this.#normalDisconnect && !this.#publishWill) await sessions.dropWill(this.#sid);
          else sessions.willDue(this.#sid, this.#expirySec);
        }
        await sessions.disconnected(session, this.#expirySec);
      }
    } catch (err) {
      log.warning("Ending MQTT session {clientId}: {error}", {
        clientId: this.#clientId,
        error: String(err),
      });
    } finally {
      this.link.close(this.#normalDisconnect ? "client disconnected" : "connection ended");
    }
  }

  // --- output ----------------------------------------------------------------------------------

  // --- SessionOutput: the session sends through its client (no object of closures per
  // connection). The socket flushes what is queued before it closes, so a publish while
  // closing still goes out.

  /** {@link SessionOutput.publish} */
  publish(out: Outbound, tag: number | null, dup: boolean): void {
    this.#sendPublish(out, tag, dup);
  }

  /** {@link SessionOutput.release} */
  release(tag: number): void {
    this.link.send({ cmd: "pubrel", messageId: tag });
  }

  /** {@link SessionOutput.ready}: backpressure at half the write buffer unwritten. */
  ready(): boolean {
    return this.link.bufferedBytes < this.#ctx.writeBufferBytes / 2;
  }

  /** {@link SessionOutput.whenReady} */
  whenReady(): Promise<void> {
    return this.link.whenDrained();
  }

  /** {@link SessionOutput.budget} */
  budget(): number {
    return this.#ctx.writeBufferBytes / 2 - this.link.bufferedBytes;
  }

  /** {@link SessionOutput.fail} */
  fail(reason: string): void {
    this.#refuse(new Close(reason, RC.unspecified));
    this.link.close(reason);
  }

  #sendPublish(out: Outbound, tag: number | null, dup: boolean): void {
    const m = out.message;
    // Encoded once per message and shared by its receivers, unless something in it is
    // this receiver's own (subscription ids, the expiry countdown, topic aliases).
    const own = out.subscriptionIds.length > 0 || m.expiresAt !== undefined ||
      (this.#version === 5 && this.#clientAliasMax > 0);
    if (own) {
      const bytes = encodePacket(this.#publishPacket(out, tag, dup), this.#version);
      if (this.#fits(m, bytes.byteLength, tag)) this.link.sendBytes(bytes);
      return;
    }
    const variant = publishVariant(this.#version, out.qos, out.retain);
    if (this.#version === 4 || !hasPublishProperties(m)) {
      // No properties (nearly every message): a shared head, then the payload itself.
      const head = publishHead(m.topic, m.payload.length, variant);
      if (this.#fits(m, head.bytes.length + m.payload.length, tag)) {
        this.link.sendPublish(head.bytes, head.idOffset, tag, dup, m.payload);
      }
      return;
    }
    const shared = cachedEncoding(m, variant) ?? shareEncoding(
      m,
      variant,
      encodePacket(this.#publishPacket(out, tag === null ? null : 1, false), this.#version),
    );
    if (!this.#fits(m, shared.bytes.byteLength, tag)) return;
    // QoS 0 has no identifier and never DUP ([MQTT-3.3.1-2]): the shared bytes as they are.
    if (tag === null) this.link.sendBytes(shared.bytes);
    else this.link.sendPatched(shared.bytes, shared.idOffset, tag, dup);
  }

  /**
   * Whether a PUBLISH of `size` bytes may go to this client; counts it as sent when it
   * may. One larger than the client accepts is dropped as if sent, v5 [MQTT-3.1.2-25].
   */
  #fits(m: StoredMessage, size: number, tag: number | null): boolean {
    if (this.#clientMaxPacket > 0 && size > this.#clientMaxPacket) {
      log.warning("Message {msgId} on {topic} is larger than {clientId} accepts; not sent", {
        msgId: m.id,
        topic: m.topic,
        clientId: this.#clientId,
      });
      if (tag !== null) this.#session?.refused(tag);
      return false;
    }
    this.#ctx.broker.metrics.messagesSent++;
    this.#ctx.broker.metrics.bytesSent += size;
    return true;
  }
  /** The PUBLISH packet of `out` for this receiver (aliases are assigned here). */
  #publishPacket(out: Outbound, tag: number | null, dup: boolean): OutboundPacket {
    const m = out.message;
    const packet: Record<string, unknown> = {
      cmd: "publish",
      topic: encodedTopic(m.topic), // as bytes: the codec need not copy the packet for it
      payload: m.payload,
      qos: out.qos,
      dup,
      retain: out.retain,
    };
    if (tag !== null) packet.messageId = tag;
    if (this.#version === 5) {
      const props: Record<string, unknown> = {};
      const mp = m.props;
      if (m.format === "text" || m.format === "json") props.payloadFormatIndicator = true;
      if (m.format === "json" && !mp?.contentType) props.contentType = "application/json";
      if (mp) {
        if (mp.contentType !== undefined) props.contentType = mp.contentType;
        if (mp.responseTopic !== undefined) props.responseTopic = mp.responseTopic;
        if (mp.correlationData !== undefined) props.correlationData = mp.correlationData;
        if (mp.userProperties !== undefined) props.userProperties = mp.userProperties;
      }
      if (m.expiresAt !== undefined) {
        // The remaining lifetime, v5 [MQTT-3.3.2-6].
        props.messageExpiryInterval = Math.max(0, Math.ceil((m.expiresAt - Date.now()) / 1000));
      }
      if (out.subscriptionIds.length === 1) props.subscriptionIdentifier = out.subscriptionIds[0];
      else if (out.subscriptionIds.length > 1) props.subscriptionIdentifier = out.subscriptionIds;
      if (this.#clientAliasMax > 0) {
        // Aliases first come, first served, never reassigned, v5 [MQTT-3.3.2-11].
        const aliases = this.#outAliases ??= new Map();
        const known = aliases.get(m.topic);
        if (known !== undefined) {
          props.topicAlias = known;
          packet.topic = "";
        } else if (aliases.size < this.#clientAliasMax) {
          const alias = aliases.size + 1;
          aliases.set(m.topic, alias);
          props.topicAlias = alias;
        }
      }
      if (Object.keys(props).length > 0) packet.properties = props;
    }
    return packet as unknown as OutboundPacket;
  }

  // --- shared subscriptions ---------------------------------------------------------------------

  async #joinGroup(filter: string): Promise<void> {
    const group = await this.#ctx.broker.shared.group(filter);
    this.#groups ??= new Map();
    if (this.#state === "closing" || this.#groups.has(group.sid)) return;
    this.#groups.set(group.sid, group);
    group.join(this.#member, this.#ctx.maxInflight);
  }

  #drainGroups(): void {
    for (const g of this.#groups?.values() ?? []) g.drain();
  }

  /** A shared group message lent our identifier `tag` is finished with. */
  #groupAck(tag: number, kind: "puback" | "pubrec" | "pubcomp", code: number): void {
    const l = this.#lent?.get(tag);
    if (!l) return;
    const g = l.group.session;
    if (code >= 0x80) {
      // A refusal completes the message for the group, v5 [MQTT-4.8.2-6].
      g.refused(l.groupTag);
    } else if (kind === "pubcomp") {
      if (!g.completed(l.groupTag)) g.refused(l.groupTag);
    } else {
      // PUBACK, or PUBREC of a message the member's QoS turned into QoS 1.
      if (!g.acknowledged(l.groupTag)) g.refused(l.groupTag);
    }
    this.#lent?.delete(tag);
    this.#lentBy?.delete(`${l.group.sid}:${l.groupTag}`);
    this.#session?.returnTag(tag);
    l.group.settled(l.groupTag);
  }

  #memberObject: GroupMember | undefined;

  /** This connection as a member of shared groups (made when it first joins one). */
  get #member(): GroupMember {
    return this.#memberObject ??= this.#makeMember();
  }

  #makeMember(): GroupMember {
    return {
      sid: "",
      room: () => this.#state === "connected" ? (this.#session?.room() ?? 0) : 0,
      send: (group, out, groupTag, dup) => {
        const session = this.#session;
        if (!session) return;
        // The member's granted QoS bounds the message's, [MQTT-4.8.2-3].
        const entry = this.#ctx.broker.filterIndex.entriesOf(this.#sid)
          .find((f) => parseShare(f.filter) && groupId(f.filter) === group.sid);
        const qos = Math.min(out.qos, entry?.qos ?? out.qos) as Qos;
        const mine: Outbound = { ...out, qos };
        if (qos === 0) {
          this.#sendPublish(mine, null, false);
          if (out.qos > 0) {
            group.session.refused(groupTag);
            group.settled(groupTag);
          }
          return;
        }
        const tag = session.lendTag();
        (this.#lent ??= new Map()).set(tag, { group, groupTag, qos });
        (this.#lentBy ??= new Map()).set(`${group.sid}:${groupTag}`, tag);
        this.#sendPublish(mine, tag, dup);
      },
      release: (group, groupTag) => {
        const tag = this.#lentBy?.get(`${group.sid}:${groupTag}`);
        if (tag === undefined) return false;
        this.link.send({ cmd: "pubrel", messageId: tag });
        return true;
      },
      releaseNew: (group, groupTag) => {
        const session = this.#session;
        if (!session) return;
        const tag = session.lendTag();
        (this.#lent ??= new Map()).set(tag, { group, groupTag, qos: 2 });
        (this.#lentBy ??= new Map()).set(`${group.sid}:${groupTag}`, tag);
        this.link.send({ cmd: "pubrel", messageId: tag });
      },
    };
  }

  // --- helpers ---------------------------------------------------------------------------------

  /** Packet identifiers are non-zero, 3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]. */
  #needId(id: number | undefined): void {
    if (!id) {
      throw new Close("packet identifier 0 or missing", RC.malformedPacket, "mqtt-malformed");
    }
  }
}

/** True when a decoded string shows ill-formed UTF-8 (replaced by U+FFFD) or U+0000. */
function containsBadText(s: string): boolean {
  return s.includes("\uFFFD") || s.includes("\u0000");
}

/**
 * Whether a v5 PUBLISH of `m` carries properties of the message's own: those
 * {@link MqttClient}'s `#publishPacket` writes from the format and the publisher's
 * properties (the receiver's own, expiry, subscription ids and aliases, aside).
 */
function hasPublishProperties(m: StoredMessage): boolean {
  if (m.format === "text" || m.format === "json") return true;
  const mp = m.props;
  return mp !== undefined &&
    (mp.contentType !== undefined || mp.responseTopic !== undefined ||
      mp.correlationData !== undefined || mp.userProperties !== undefined);
}

function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** The forwarded MQTT 5 properties of a PUBLISH or will, or undefined when none. */
function messageProps(p: {
  contentType?: string;
  responseTopic?: string;
  correlationData?: Uint8Array;
  userProperties?: Record<string, string | string[]>;
}): MessageProps | undefined {
  if (
    p.contentType === undefined && p.responseTopic === undefined &&
    p.correlationData === undefined && p.userProperties === undefined
  ) return undefined; // nearly every PUBLISH: nothing made for it
  const out: MessageProps = {};
  if (p.contentType !== undefined) out.contentType = p.contentType;
  if (p.responseTopic !== undefined) out.responseTopic = p.responseTopic;
  if (p.correlationData !== undefined) out.correlationData = new Uint8Array(p.correlationData);
  if (p.userProperties !== undefined) out.userProperties = p.userProperties;
  return out;
}
