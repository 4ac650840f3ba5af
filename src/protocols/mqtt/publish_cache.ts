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
