/**
 * Outbound PUBLISH packets encoded once per message and shared by all its receivers (a
 * fan-out to 50 subscribers encodes once, not 50 times). Each receiver gets a copy with
 * its own packet identifier and DUP flag written in: both sit at fixed places of the
 * encoding (the identifier right after the topic name, 3.1.1 §3.3.2 and v5 §3.3.2; DUP
 * in bit 3 of the first byte, §3.3.1.1). The cache lives on the message object, so
 * nothing here needs expiring.
 *
 * @module
 */
import type { StoredMessage } from "../../store/store.ts";
import { encodePacket, type OutboundPacket } from "../../transport/mqtt_codec.ts";

interface Encoded {
  bytes: Uint8Array;
  /** Where the packet identifier starts (QoS 1 and 2 only). */
  idOffset: number;
}

/**
 * Where a message keeps its encodings, by variant: a symbol-keyed, non-enumerable
 * property, which Deno KV's serialisation, JSON and object spread all skip. It lives
 * exactly as long as the message, with neither a WeakMap entry nor a Map per message.
 */
const ENCODED = Symbol("encoded PUBLISH packets");

type WithEncodings = StoredMessage & { [ENCODED]?: (Encoded | undefined)[] };

/**
 * The variant of a receiver's PUBLISH: what depends on its subscription (level, QoS,
 * RETAIN), as a small number.
 */
export function publishVariant(protocolVersion: 4 | 5, qos: 0 | 1 | 2, retain: boolean): number {
  return (protocolVersion - 4) * 6 + qos * 2 + (retain ? 1 : 0);
}

/**
 * The PUBLISH for `message` with identifier `tag` (null at QoS 0) and `dup` if the
 * message's encoding of `variant` is made already (see {@link sharedPublish}), else
 * undefined. Costs no encoding and no closure: the common case of a fan-out.
 */
export function cachedPublish(
  message: StoredMessage,
  variant: number,
  tag: number | null,
  dup: boolean,
): Uint8Array | undefined {
  const e = (message as WithEncodings)[ENCODED]?.[variant];
  return e && forReceiver(e, tag, dup);
}

/**
 * The PUBLISH for `message` with identifier `tag` (null at QoS 0) and `dup`, from the
 * shared encoding of `packet` (which must not depend on the receiver: no alias, no
 * subscription identifier, no expiry countdown). `variant` ({@link publishVariant})
 * names what does depend on the receiver's subscription: level, QoS and RETAIN.
 */
export function sharedPublish(
  message: StoredMessage,
  variant: number,
  packet: () => OutboundPacket,
  protocolVersion: 4 | 5,
  tag: number | null,
  dup: boolean,
): Uint8Array {
  const m = message as WithEncodings;
  let variants = m[ENCODED];
  if (!variants) {
    // Not enumerable: a copy of the message (`{ ...message, topic }`) must not take
    // encodings that may no longer fit it.
    variants = [];
    Object.defineProperty(m, ENCODED, { value: variants });
  }
  let e = variants[variant];
  if (!e) {
    const bytes = encodePacket(packet(), protocolVersion);
    e = { bytes, idOffset: identifierOffset(bytes) };
    variants[variant] = e;
  }
  return forReceiver(e, tag, dup);
}

function forReceiver(e: Encoded, tag: number | null, dup: boolean): Uint8Array {
  if (tag === null && !dup) return e.bytes; // QoS 0: the shared bytes as they are
  const copy = e.bytes.slice();
  if (dup) copy[0] = copy[0]! | 0x08;
  if (tag !== null) {
    copy[e.idOffset] = tag >> 8;
    copy[e.idOffset + 1] = tag & 0xff;
  }
  return copy;
}

/** Offset of the packet identifier in an encoded PUBLISH: after the header and topic. */
export function identifierOffset(bytes: Uint8Array): number {
  let i = 1;
  while ((bytes[i]! & 0x80) !== 0) i++;
  i++; // past the last Remaining Length byte
  const topicLength = (bytes[i]! << 8) | bytes[i + 1]!;
  return i + 2 + topicLength;
}
