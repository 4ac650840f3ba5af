/**
 * Outbound PUBLISH packets encoded once per message and shared by all its receivers (a
 * fan-out to 50 subscribers encodes once, not 50 times). Each receiver's packet is the
 * shared bytes with its own packet identifier and DUP flag written in by the output
 * queue as it joins a write (`sendPatched`): both sit at fixed places of the
 * encoding (the identifier right after the topic name, 3.1.1 §3.3.2 and v5 §3.3.2; DUP
 * in bit 3 of the first byte, §3.3.1.1). The cache lives on the message object, so
 * nothing here needs expiring.
 *
 * @module
 */
import type { StoredMessage } from "../../store/store.ts";
import {
  encodedTopic,
  remainingLengthBytes,
  writePublishStart,
} from "../../transport/mqtt_codec.ts";

/** One shared encoding of a PUBLISH. */
export interface Encoded {
  bytes: Uint8Array;
  /** Where the packet identifier starts (QoS 1 and 2 only). */
  idOffset: number;
}

/**
 * Where a message keeps its encodings, by variant: a symbol-keyed property, which Deno
 * KV's serialisation and JSON skip. It lives exactly as long as the message, with
 * neither a WeakMap entry nor a Map per message. It is set by plain assignment (a
 * non-enumerable `defineProperty` cost 0.4 µs per message), so a spread copy of a
 * message takes the encodings along: each set names the message it belongs to, and a
 * copy (whose topic may differ) finds them not its own.
 */
const ENCODED = Symbol("encoded PUBLISH packets");

/** A message's encodings, and the message they were made for. */
class Encodings {
  readonly byVariant: (Encoded | undefined)[] = [];
  constructor(readonly of: StoredMessage) {}
}

type WithEncodings = StoredMessage & { [ENCODED]?: Encodings };

/**
 * The variant of a receiver's PUBLISH: what depends on its subscription (level, QoS,
 * RETAIN), as a small number.
 */
export function publishVariant(protocolVersion: 4 | 5, qos: 0 | 1 | 2, retain: boolean): number {
  return (protocolVersion - 4) * 6 + qos * 2 + (retain ? 1 : 0);
}

/** The shared encoding of `message` for `variant`, if it was made already. */
export function cachedEncoding(message: StoredMessage, variant: number): Encoded | undefined {
  const variants = (message as WithEncodings)[ENCODED];
  return variants?.of === message ? variants.byVariant[variant] : undefined;
}

/**
 * Keeps `bytes` as the shared encoding of `message` for `variant` ({@link publishVariant}:
 * what depends on the receiver's subscription, level, QoS and RETAIN) and returns it. The
 * packet encoded must not depend on the receiver otherwise: no alias, no subscription
 * identifier, no expiry countdown, identifier 1 at QoS 1 and 2. Send it with the
 * receiver's identifier written at `idOffset` (a connection's `sendPatched`). Look with
 * {@link cachedEncoding} first.
 */
export function shareEncoding(message: StoredMessage, variant: number, bytes: Uint8Array): Encoded {
  const m = message as WithEncodings;
  let variants = m[ENCODED];
  if (variants?.of !== m) {
    variants = new Encodings(m);
    m[ENCODED] = variants;
  }
  const e: Encoded = { bytes, idOffset: identifierOffset(bytes) };
  variants.byVariant[variant] = e;
  return e;
}

/** Offset of the packet identifier in an encoded PUBLISH: after the header and topic. */
export function identifierOffset(bytes: Uint8Array): number {
  let i = 1;
  while ((bytes[i]! & 0x80) !== 0) i++;
  i++; // past the last Remaining Length byte
  const topicLength = (bytes[i]! << 8) | bytes[i + 1]!;
  return i + 2 + topicLength;
}

/**
 * The bytes of a PUBLISH before its payload, for a packet with no properties: fixed
 * header (§3.3.1), topic name and, at QoS 1 and 2, room for the identifier (§3.3.2),
 * and at level 5 a Property Length of 0 (v5 §3.3.2.3). Sent followed by the message's
 * own payload (a connection's `sendPublish`), the two are the PUBLISH; no array is made
 * for the whole packet. The head depends only on the topic, the payload's length and
 * the variant, so one serves every message of a steady stream.
 */
export type PublishHead = Encoded;

/** Heads by topic, then by payload length and variant; both levels bounded. */
const heads = new Map<string, Map<number, PublishHead>>();
const HEAD_TOPICS = 4096;
const HEADS_PER_TOPIC = 64;

/**
 * The head of a PUBLISH of `payloadLength` bytes on `topic` for `variant` (see
 * {@link publishVariant}), from a cache. The packet must carry no properties.
 */
export function publishHead(topic: string, payloadLength: number, variant: number): PublishHead {
  let byLength = heads.get(topic);
  if (byLength === undefined) {
    if (heads.size >= HEAD_TOPICS) heads.clear();
    byLength = new Map();
    heads.set(topic, byLength);
  }
  const key = payloadLength * 16 + variant;
  let head = byLength.get(key);
  if (head === undefined) {
    if (byLength.size >= HEADS_PER_TOPIC) byLength.clear();
    head = makeHead(encodedTopic(topic), payloadLength, variant);
    byLength.set(key, head);
  }
  return head;
}

function makeHead(topic: Uint8Array, payloadLength: number, variant: number): PublishHead {
  const v5 = variant >= 6;
  const qos = (variant % 6) >> 1;
  const retain = variant & 1;
  const afterLength = 2 + topic.length + (qos > 0 ? 2 : 0) + (v5 ? 1 : 0);
  const remaining = afterLength + payloadLength;
  const bytes = new Uint8Array(1 + remainingLengthBytes(remaining) + afterLength);
  // The identifier's place is left 0: written per receiver as the output is joined.
  const idOffset = writePublishStart(bytes, 0x30 | (qos << 1) | retain, remaining, topic);
  return { bytes, idOffset };
}
