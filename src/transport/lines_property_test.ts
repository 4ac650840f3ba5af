/**
 * Property tests of the capped line splitter: whatever the bytes and wherever the
 * chunk boundaries fall, it yields the lines of a plain reference split, never a line
 * over the cap, and fails with LineTooLongError exactly when some line is over it.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { LineBatchStream, LineSplitStream, LineTooLongError } from "./lines.ts";

const LF = 0x0a;
const CR = 0x0d;

/** Bytes rich in the ones that matter (LF, CR), with any other byte mixed in. */
const byte = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(LF, CR) },
  { weight: 4, arbitrary: fc.constantFrom(0x61, 0x62, 0x20) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 255 }) },
);
const bytes = fc.array(byte, { maxLength: 200 }).map((a) => Uint8Array.from(a));

/** Bytes and the positions at which they are cut into chunks (empty chunks included). */
const chunked = bytes.chain((b) =>
  fc.tuple(
    fc.constant(b),
    fc.array(fc.integer({ min: 0, max: b.length }), { maxLength: 12 }),
  )
);

/** Cuts `b` at `cuts` into fresh arrays: the splitter keeps views of its chunks. */
function cut(b: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [0, ...cuts.toSorted((x, y) => x - y), b.length];
  const chunks: Uint8Array[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    chunks.push(b.slice(points[i], points[i + 1]));
  }
  return chunks;
}

/**
 * The reference: split on LF; a final piece without LF is a line only when it holds
 * bytes; one trailing CR is dropped from each line.
 */
function referenceLines(b: Uint8Array): number[][] {
  const pieces: number[][] = [[]];
  for (const x of b) {
    if (x === LF) pieces.push([]);
    else (pieces[pieces.length - 1] as number[]).push(x);
  }
  const last = pieces.pop() as number[];
  if (last.length > 0) pieces.push(last);
  return pieces.map((l) => l[l.length - 1] === CR ? l.slice(0, -1) : l);
}

/** Runs the splitter over `chunks`: the lines it yielded, and its error if any. */
async function run(
  chunks: Uint8Array[],
  maxLineBytes: number,
): Promise<{ lines: number[][]; error: unknown }> {
  const stream = ReadableStream.from(chunks).pipeThrough(new LineSplitStream({ maxLineBytes }));
  const lines: number[][] = [];
  try {
    for await (const line of stream) lines.push([...line]);
  } catch (error) {
    return { lines, error };
  }
  return { lines, error: undefined };
}

const RUNS = { numRuns: 1500 };

/**
 * What a splitter gave against the reference lines and the cap: every line and no error
 * when none is over the cap; otherwise a LineTooLongError naming the cap after `before`
 * of the lines that precede the long one (all of them, or a prefix).
 */
function assertOutcome(
  expected: number[][],
  max: number,
  lines: number[][],
  error: unknown,
  before: "all" | "a prefix",
): void {
  const firstTooLong = expected.findIndex((l) => l.length > max);
  if (firstTooLong === -1) {
    assert.equal(error, undefined);
    assert.deepEqual(lines, expected);
    return;
  }
  assert.ok(error instanceof LineTooLongError, `expected LineTooLongError, got ${error}`);
  assert.equal(error.limit, max);
  const preceding = expected.slice(0, firstTooLong);
  assert.ok(lines.length <= preceding.length, "a line after the long one came out");
  assert.deepEqual(lines, before === "all" ? preceding : preceding.slice(0, lines.length));
}

/** Runs the batching splitter over `chunks`: its lines in order, its too-long error. */
async function runBatches(
  chunks: Uint8Array[],
  maxLineBytes: number,
): Promise<{ lines: number[][]; error: unknown; batches: number }> {
  const stream = ReadableStream.from(chunks).pipeThrough(new LineBatchStream({ maxLineBytes }));
  const lines: number[][] = [];
  let error: unknown = undefined;
  let batches = 0;
  for await (const batch of stream) {
    const items = batch.items();
    assert.ok(items.length > 0, "an empty batch");
    assert.equal(error, undefined, "a batch after the too-long error");
    batches++;
    for (const item of items) {
      if (item instanceof LineTooLongError) error = item;
      else {
        assert.equal(error, undefined, "a line after the too-long error");
        lines.push([...item]);
      }
    }
  }
  return { lines, error, batches };
}

Deno.test("the splitter yields the reference lines wherever the chunks are cut, or fails exactly when a line is over the cap", async () => {
  await fc.assert(
    fc.asyncProperty(chunked, fc.integer({ min: 0, max: 16 }), async ([b, cuts], max) => {
      const expected = referenceLines(b);
      const { lines, error } = await run(cut(b, cuts), max);
      for (const line of lines) {
        assert.ok(line.length <= max, `a line of ${line.length} bytes passed the cap ${max}`);
        assert.ok(!line.includes(LF), "a line holds a LF");
      }
      // Lines queued in the same chunk as the failure may be dropped with the stream's
      // queue, so what came out is a prefix of the lines before the long one.
      assertOutcome(expected, max, lines, error, "a prefix");
    }),
    RUNS,
  );
});

Deno.test("the batching splitter gives the lines the plain one gives, at most a batch per chunk, and its error after the same lines", async () => {
  await fc.assert(
    fc.asyncProperty(chunked, fc.integer({ min: 0, max: 16 }), async ([b, cuts], max) => {
      const chunks = cut(b, cuts);
      const expected = referenceLines(b);
      const { lines, error, batches } = await runBatches(chunks, max);
      assert.ok(batches <= chunks.length + 1, `${batches} batches from ${chunks.length} chunks`);
      assertOutcome(expected, max, lines, error, "all");
    }),
    RUNS,
  );
});

Deno.test("the same bytes give the same outcome however they are chunked", async () => {
  await fc.assert(
    fc.asyncProperty(chunked, fc.integer({ min: 0, max: 16 }), async ([b, cuts], max) => {
      const whole = await run([b.slice()], max);
      const parts = await run(cut(b, cuts), max);
      assert.equal(
        parts.error instanceof LineTooLongError,
        whole.error instanceof LineTooLongError,
      );
      if (whole.error === undefined) assert.deepEqual(parts.lines, whole.lines);
    }),
    RUNS,
  );
});

Deno.test("one byte at a time, a line of exactly the cap passes with any terminator and one more byte fails", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 64 }),
      fc.constantFrom("", "\n", "\r\n", "\r"),
      fc.boolean(),
      async (max, end, over) => {
        const body = new Uint8Array(max + (over ? 1 : 0)).fill(0x78);
        const b = Uint8Array.from([...body, ...[...end].map((c) => c.charCodeAt(0))]);
        const { lines, error } = await run([...b].map((x) => Uint8Array.of(x)), max);
        if (over) {
          assert.ok(error instanceof LineTooLongError);
          assert.deepEqual(lines, []);
        } else {
          assert.equal(error, undefined);
          assert.deepEqual(lines, max === 0 && end === "" ? [] : [[...body]]);
        }
      },
    ),
    { numRuns: 200 },
  );
});
