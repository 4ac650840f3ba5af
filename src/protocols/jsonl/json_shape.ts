/**
 * Checks that JSON.parse does not make: nesting depth and duplicate keys (JSON.parse
 * keeps the last of two equal keys silently, so `{"type":"PUB","type":"SUB"}` would be
 * ambiguous). It also finds where each top-level value lies in the text, so that a
 * message body can be relayed exactly as sent (numbers beyond double precision
 * included) instead of re-serialised.
 *
 * Run it only on text that JSON.parse accepted: it relies on the text being valid.
 *
 * @module
 */

/** Where each top-level member's value lies in the text: `[start, end)`. */
export type Spans = Map<string, [number, number]>;

/** The outcome of {@link checkJsonShape}: an error text, or the top-level spans. */
export type ShapeResult = { error: string } | { error: null; spans: Spans };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** One pass over valid JSON text: depth, duplicate keys and top-level value spans. */
export function checkJsonShape(text: string, maxDepth: number): ShapeResult {
  // One entry per open container: the keys seen (objects) or null (arrays).
  const stack: (Set<string> | null)[] = [];
  const spans: Spans = new Map();
  let expectKey = false;
  let topKey: string | null = null;
  let valueStart = -1;
  const endTop = (i: number) => {
    if (topKey !== null && valueStart >= 0) {
      let end = i;
      while (end > valueStart && isSpace(text.charCodeAt(end - 1))) end--;
      spans.set(topKey, [valueStart, end]);
    }
    topKey = null;
    valueStart = -1;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (isSpace(c)) continue;
    if (stack.length === 1 && topKey !== null && valueStart < 0 && c !== 0x3a /* : */) {
      valueStart = i;
    }
    if (c === QUOTE) {
      let j = i + 1;
      let escaped = false;
      while (j < text.length) {
        const d = text.charCodeAt(j);
        if (d === BACKSLASH) {
          escaped = true;
          j += 2;
          continue;
        }
        if (d === QUOTE) break;
        j++;
      }
      if (expectKey) {
        const key = escaped ? JSON.parse(text.slice(i, j + 1)) as string : text.slice(i + 1, j);
        const keys = stack[stack.length - 1] as Set<string>;
        if (keys.has(key)) return { error: `duplicate key ${JSON.stringify(key)}` };
        keys.add(key);
        expectKey = false;
        if (stack.length === 1) topKey = key;
      }
      i = j;
      continue;
    }
    switch (c) {
      case 0x7b: // {
      case 0x5b: // [
        if (stack.length >= maxDepth) {
          return { error: `nested deeper than ${maxDepth} levels` };
        }
        stack.push(c === 0x7b ? new Set() : null);
        expectKey = c === 0x7b;
        break;
      case 0x7d: // }
      case 0x5d: // ]
        if (stack.length === 1) endTop(i);
        stack.pop();
        expectKey = false;
        break;
      case 0x2c: // ,
        if (stack.length === 1) endTop(i);
        expectKey = stack[stack.length - 1] instanceof Set;
        break;
    }
  }
  return { error: null, spans };
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}
