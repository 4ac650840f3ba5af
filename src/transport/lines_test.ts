import assert from "node:assert/strict";
import { LineBatchStream, LineSplitStream, LineTooLongError } from "./lines.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Feeds `chunks` through a splitter and returns the lines as strings, or the error. */
async function split(
  chunks: (string | Uint8Array)[],
  maxLineBytes = 1024,
): Promise<{ lines: string[]; error?: unknown }> {
  const bytes = chunks.map((c) => typeof c === "string" ? encoder.encode(c) : c);
  const stream = ReadableStream.from(bytes).pipeThrough(new LineSplitStream({ maxLineBytes }));
  const lines: string[] = [];
  try {
    for await (const line of stream) lines.push(decoder.decode(line));
  } catch (error) {
    return { lines, error };
  }
  return { lines };
}

function test(name: string, fn: () => Promise<void> | void): void {
  Deno.test({ name, sanitizeOps: true, sanitizeResources: true, fn });
}

test("splits on LF and CRLF and strips only one trailing CR", async () => {
  const { lines, error } = await split(["a\nb\r\nc\r\r\nd\re\n"]);
  assert.equal(error, undefined);
  assert.deepEqual(lines, ["a", "b", "c\r", "d\re"]);
});

test("emits empty lines as empty arrays", async () => {
  const { lines } = await split(["\n\r\nx\n\n"]);
  assert.deepEqual(lines, ["", "", "x", ""]);
});

test("emits a final line without a newline at the end of the stream", async () => {
  assert.deepEqual((await split(["a\nlast"])).lines, ["a", "last"]);
  assert.deepEqual((await split(["a\n", "la", "st\r"])).lines, ["a", "last"]);
  assert.deepEqual((await split(["a\n"])).lines, ["a"]);
  assert.deepEqual((await split([])).lines, []);
});

test("gives the same lines wherever the chunk boundaries fall", async () => {
  const text = "ab\r\ncd\n\nef\r\n\r\ngh\r";
  const expected = ["ab", "cd", "", "ef", "", "gh"];
  for (let i = 0; i <= text.length; i++) {
    for (let j = i; j <= text.length; j++) {
      const chunks = [text.slice(0, i), text.slice(i, j), text.slice(j)];
      const { lines, error } = await split(chunks, 2);
      assert.equal(error, undefined, `split at ${i},${j}`);
      assert.deepEqual(lines, expected, `split at ${i},${j}`);
    }
  }
});

test("joins a line fed one byte at a time", async () => {
  const line = "x".repeat(10_000);
  const { lines } = await split([...`${line}\r\n${line}`], 10_000);
  assert.deepEqual(lines, [line, line]);
});

test("accepts a line of exactly maxLineBytes with any terminator", async () => {
  assert.deepEqual((await split(["abcd\n"], 4)).lines, ["abcd"]);
  assert.deepEqual((await split(["abcd\r\n"], 4)).lines, ["abcd"]);
  assert.deepEqual((await split(["abcd\r", "\n"], 4)).lines, ["abcd"]);
  assert.deepEqual((await split(["ab", "cd", "\r", "\n", "ab"], 4)).lines, ["abcd", "ab"]);
  assert.deepEqual((await split(["abcd"], 4)).lines, ["abcd"]);
  assert.deepEqual((await split(["abcd\r"], 4)).lines, ["abcd"]);
});

test("errors with LineTooLongError on a line one byte over the limit", async () => {
  for (const chunks of [["abcde\n"], ["abc", "de\n"], ["ok\nabcde\r\n"], ["abcd\r", "x\n"]]) {
    const { error } = await split(chunks, 4);
    assert.ok(error instanceof LineTooLongError, `chunks ${JSON.stringify(chunks)}`);
    assert.ok(error instanceof RangeError);
    assert.equal(error.limit, 4);
    assert.equal(error.message, "line longer than 4 bytes");
  }
});

test("emits the lines before an over-long line, then errors", async () => {
  const { lines, error } = await split(["a\nb\n", "toolong"], 4);
  assert.deepEqual(lines, ["a", "b"]);
  assert.ok(error instanceof LineTooLongError);
});

test("errors as soon as the limit is passed, without waiting for a newline", async () => {
  const stream = new LineSplitStream({ maxLineBytes: 4 });
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const read = reader.read();
  const written = writer.write(encoder.encode("abcde"));
  await assert.rejects(read, LineTooLongError);
  await assert.rejects(written, LineTooLongError);
  writer.releaseLock();
  reader.releaseLock();
});

test("splits a huge chunk holding many lines", async () => {
  const count = 100_000;
  const text = Array.from({ length: count }, (_, i) => `line ${i}\n`).join("");
  const stream = ReadableStream.from([encoder.encode(text)])
    .pipeThrough(new LineSplitStream({ maxLineBytes: 64 }));
  let n = 0;
  for await (const line of stream) {
    assert.equal(decoder.decode(line), `line ${n}`);
    n++;
  }
  assert.equal(n, count);
});

test("emitted lines stay valid after later chunks are processed", async () => {
  const stream = new LineSplitStream({ maxLineBytes: 16 });
  const writer = stream.writable.getWriter();
  const collected: Uint8Array[] = [];
  const reading = (async () => {
    for await (const line of stream.readable) collected.push(line);
  })();
  await writer.write(encoder.encode("one\ntw"));
  await writer.write(encoder.encode("o\nthree\n"));
  await writer.close();
  await reading;
  assert.deepEqual(collected.map((l) => decoder.decode(l)), ["one", "two", "three"]);
});

test("rejects a negative or fractional maxLineBytes", () => {
  assert.throws(() => new LineSplitStream({ maxLineBytes: -1 }), RangeError);
  assert.throws(() => new LineSplitStream({ maxLineBytes: 1.5 }), RangeError);
});

/** Feeds `chunks` through a batching splitter; each batch as strings, an error as "!N". */
async function batches(chunks: string[], maxLineBytes = 1024): Promise<string[][]> {
  const stream = ReadableStream.from(chunks.map((c) => encoder.encode(c)))
    .pipeThrough(new LineBatchStream({ maxLineBytes }));
  const out: string[][] = [];
  for await (const batch of stream) {
    out.push(
      batch.items().map((l) => l instanceof LineTooLongError ? `!${l.limit}` : decoder.decode(l)),
    );
  }
  return out;
}

test("LineBatchStream emits one batch per chunk that completes lines, the same lines as LineSplitStream", async () => {
  const chunks = ["a\nb\r\nc", "on", "tinued\n", "\nx\n", "last"];
  assert.deepEqual(await batches(chunks), [["a", "b"], ["continued"], ["", "x"], ["last"]]);
  assert.deepEqual((await batches(chunks)).flat(), (await split(chunks)).lines);
});

test("LineBatchStream ends with the too-long error after the lines before it, then closes", async () => {
  assert.deepEqual(await batches(["ok\n123456789", "\nnever\n"], 8), [["ok", "!8"]]);
  assert.deepEqual(await batches(["ok\n", "123456789\nnever\n"], 8), [["ok"], ["!8"]]);
});
