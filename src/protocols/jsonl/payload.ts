/**
 * Message bodies of the JSON-line protocol: `msg` is any JSON value. A string travels
 * as its UTF-8 text (what MQTT subscribers will see as the payload); any other value
 * travels as its JSON text, flagged "json" so it goes out again as the same value.
 *
 * @module
 */
import type { PayloadFormat, StoredMessage } from "../../store/store.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const strict = new TextDecoder("utf-8", { fatal: true });

/**
 * The stored form of a `msg` value; `msgJson` is its text as received (kept as is for
 * anything but a string, so that numbers and formatting survive exactly).
 */
export function encodeBody(
  msg: unknown,
  msgJson = JSON.stringify(msg),
): { payload: Uint8Array; format: PayloadFormat } {
  // A string with a lone surrogate has no UTF-8 form; as JSON text it keeps its escape
  // and goes out unchanged.
  if (typeof msg === "string" && msg.isWellFormed()) {
    return { payload: encoder.encode(msg), format: "text" };
  }
  return { payload: encoder.encode(msgJson), format: "json" };
}

/**
 * One encoding per message, shared by every subscriber it fans out to: the subscribers
 * of a message send it at about the same time, so a small table indexed by message id
 * keeps it long enough. Not a WeakMap: an entry per message there is an ephemeron that
 * every garbage collection must trace.
 */
const CACHE_SLOTS = 1024;
const cachedFor: (StoredMessage | undefined)[] = new Array(CACHE_SLOTS).fill(undefined);
const cachedJson: string[] = new Array(CACHE_SLOTS).fill("");

/** The JSON text of a stored message's `msg` value. */
export function bodyJson(m: StoredMessage): string {
  const slot = m.id % CACHE_SLOTS;
  if (cachedFor[slot] === m) return cachedJson[slot] as string;
  const json = toJson(m.payload, m.format);
  cachedFor[slot] = m;
  cachedJson[slot] = json;
  return json;
}

function toJson(payload: Uint8Array, format: PayloadFormat): string {
  if (format === "json") return decoder.decode(payload);
  if (format === "text") return JSON.stringify(decoder.decode(payload));
  // Bytes from another protocol: text when they are valid UTF-8, else base64 in an
  // object, so that a JSON-line consumer never receives mangled data.
  try {
    return JSON.stringify(strict.decode(payload));
  } catch {
    let bin = "";
    for (const b of payload) bin += String.fromCharCode(b);
    return JSON.stringify({ base64: btoa(bin) });
  }
}
