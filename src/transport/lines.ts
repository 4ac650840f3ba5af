/**
 * A capped byte-line splitter.
 *
 * `TextLineStream` from `@std/streams` has no bound on a line's length, so a
 * peer that never sends a newline could make a server buffer without limit.
 * {@link LineSplitStream} errors as soon as a line passes its cap, so it never
 * holds more than about `maxLineBytes` plus the chunk being scanned.
 *
 * @module
 */

const LF = 0x0a;
const CR = 0x0d;

/**
 * The error a {@link LineSplitStream} fails with when a line is longer than
 * its `maxLineBytes`.
 *
 * @example
 * ```ts
 * const err = new LineTooLongError(16);
 * err.message; // "line longer than 16 bytes"
 * err.limit; // 16
 * ```
 */
export class LineTooLongError extends RangeError {
  /** The `maxLineBytes` that was exceeded. */
  readonly limit: number;

  /**
   * Builds the error for a line over `limit` bytes.
   *
   * @param limit the `maxLineBytes` that was exceeded
   */
  constructor(limit: number) {
    super(`line longer than ${limit} bytes`);
    this.name = "LineTooLongError";
    this.limit = limit;
  }
}

/** Options of {@link LineSplitStream}. */
export interface LineSplitStreamOptions {
  /**
   * The most bytes a line may hold, not counting its `\n` or `\r\n`. Bounds
   * the memory one connection can make the server hold for a partial line.
   */
  maxLineBytes: number;
}

/**
 * Splits a byte stream into lines on `\n`, dropping one `\r` before it, so
 * both `\n` and `\r\n` end a line. Each output chunk is one line's bytes
 * without its terminator; empty lines are emitted as empty arrays (the caller
 * decides whether they matter). A final line without a terminator is emitted
 * when the input ends, if it holds any bytes.
 *
 * A line longer than `maxLineBytes` errors the stream with a
 * {@link LineTooLongError} as soon as the limit is passed, without waiting
 * for the newline.
 *
 * Lines that lie wholly inside one input chunk are emitted as views of that
 * chunk (no copy), so writers must not reuse a chunk's buffer after writing
 * it; a line spread over several chunks is joined once into a new array.
 *
 * @example
 * ```ts
 * const lines = ReadableStream.from([new TextEncoder().encode("a\r\nb\nc")])
 *   .pipeThrough(new LineSplitStream({ maxLineBytes: 1024 }));
 * for await (const line of lines) console.log(new TextDecoder().decode(line));
 * // a, b, c
 * ```
 */
export class LineSplitStream extends TransformStream<Uint8Array, Uint8Array> {
  /**
   * Builds a splitter that fails on lines over `options.maxLineBytes`.
   *
   * @param options see {@link LineSplitStreamOptions}
   * @throws {RangeError} if `maxLineBytes` is not a non-negative integer
   */
  constructor(options: LineSplitStreamOptions) {
    const splitter = new Splitter(checkedMax(options));
    super({
      transform: (chunk, controller) => splitter.push(chunk, controller),
      flush: (controller) => splitter.end(controller),
    });
  }
}

/**
 * The lines one input chunk completed, as {@link LineBatchStream} emits them: a line
 * begun in earlier chunks (joined into an array of its own), then the lines that lie
 * wholly in the chunk, as offsets into it rather than a view each, then the error of a
 * line that passed the cap.
 */
export class LineBatch {
  /** The input chunk the {@link spans} point into. */
  readonly chunk: Uint8Array;
  /** A line that began in earlier chunks and ended in this one (or at the input's end). */
  head: Uint8Array | null = null;
  /**
   * The other lines, in order: for each, its start offset in {@link chunk} and its end
   * (exclusive, before the `\r` of a `\r\n`).
   */
  readonly spans: number[] = [];
  /** Set when a line passed the cap: it follows every line here, and nothing follows it. */
  tooLong: LineTooLongError | null = null;

  /** An empty batch of `chunk`. */
  constructor(chunk: Uint8Array) {
    this.chunk = chunk;
  }

  /** True when the batch holds no line and no error. */
  get empty(): boolean {
    return this.head === null && this.spans.length === 0 && this.tooLong === null;
  }

  /** Every line as a view (the head as its own array), then the error if any. */
  items(): (Uint8Array | LineTooLongError)[] {
    const out: (Uint8Array | LineTooLongError)[] = [];
    if (this.head !== null) out.push(this.head);
    for (let i = 0; i < this.spans.length; i += 2) {
      out.push(this.chunk.subarray(this.spans[i], this.spans[i + 1]));
    }
    if (this.tooLong !== null) out.push(this.tooLong);
    return out;
  }
}

/**
 * {@link LineSplitStream} that emits, per input chunk, one {@link LineBatch} of the lines
 * it completed (none when it completed no line): a busy connection pays the stream's
 * per-chunk costs once per read instead of once per line, and no object per line. A line
 * over `maxLineBytes` ends the output with the batch's `tooLong`, after the lines before
 * it, and the stream closes.
 *
 * @example
 * ```ts
 * const batches = ReadableStream.from([new TextEncoder().encode("a\nb\nc")])
 *   .pipeThrough(new LineBatchStream({ maxLineBytes: 1024 }));
 * for await (const batch of batches) console.log(batch.items().length);
 * // 2 (a, b), then 1 (c, at the end of the input)
 * ```
 */
export class LineBatchStream extends TransformStream<Uint8Array, LineBatch> {
  /**
   * Builds a batching splitter that ends at lines over `options.maxLineBytes`.
   *
   * @param options see {@link LineSplitStreamOptions}
   * @throws {RangeError} if `maxLineBytes` is not a non-negative integer
   */
  constructor(options: LineSplitStreamOptions) {
    const splitter = new Splitter(checkedMax(options));
    let ended = false;
    super({
      transform: (chunk, controller) => {
        if (ended) return;
        const batch = new LineBatch(chunk);
        try {
          splitter.collect(chunk, batch);
        } catch (err) {
          if (!(err instanceof LineTooLongError)) throw err;
          batch.tooLong = err;
          ended = true;
        }
        if (!batch.empty) controller.enqueue(batch);
        if (ended) controller.terminate();
      },
      flush: (controller) => {
        if (ended) return;
        const batch = new LineBatch(new Uint8Array(0));
        splitter.end({ enqueue: (line: Uint8Array) => batch.head = line });
        if (!batch.empty) controller.enqueue(batch);
      },
    });
  }
}

/** `options.maxLineBytes`, checked. @throws {RangeError} unless a non-negative integer */
function checkedMax(options: LineSplitStreamOptions): number {
  const { maxLineBytes } = options;
  if (!Number.isSafeInteger(maxLineBytes) || maxLineBytes < 0) {
    throw new RangeError(`maxLineBytes must be a non-negative integer, got ${maxLineBytes}`);
  }
  return maxLineBytes;
}

/** Where a {@link Splitter} puts the lines it completes. */
interface LineSink {
  enqueue(line: Uint8Array): void;
}

/** The splitting state, kept apart so the stream class has no extra surface. */
class Splitter {
  readonly #max: number;
  /** Pieces of the current unterminated line, joined once when it ends. */
  #parts: Uint8Array[] = [];
  #partsBytes = 0;

  constructor(max: number) {
    this.#max = max;
  }

  push(chunk: Uint8Array, out: LineSink): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(LF, start);
      if (nl === -1) {
        this.#hold(chunk.subarray(start));
        return;
      }
      const piece = chunk.subarray(start, nl);
      this.#check(piece);
      out.enqueue(stripCr(this.#take(piece)));
      start = nl + 1;
    }
  }

  /**
   * {@link push} for a {@link LineBatch}: a line that began in earlier chunks becomes its
   * head, the lines wholly in `chunk` its spans.
   */
  collect(chunk: Uint8Array, batch: LineBatch): void {
    let start = 0;
    if (chunk.length === 0) return;
    if (this.#parts.length > 0) {
      const nl = chunk.indexOf(LF);
      if (nl === -1) {
        this.#hold(chunk);
        return;
      }
      const piece = chunk.subarray(0, nl);
      this.#check(piece);
      batch.head = stripCr(this.#take(piece));
      start = nl + 1;
    }
    const spans = batch.spans;
    while (start < chunk.length) {
      const nl = chunk.indexOf(LF, start);
      if (nl === -1) {
        this.#hold(chunk.subarray(start));
        return;
      }
      const end = nl > start && chunk[nl - 1] === CR ? nl - 1 : nl;
      // Within one chunk nothing is pending: the line's length alone decides.
      if (end - start > this.#max) this.#check(chunk.subarray(start, nl));
      spans.push(start, end);
      start = nl + 1;
    }
  }

  /** Keeps `piece`, the beginning of a line that a later chunk ends. */
  #hold(piece: Uint8Array): void {
    this.#check(piece);
    this.#parts.push(piece);
    this.#partsBytes += piece.length;
  }

  end(out: LineSink): void {
    if (this.#partsBytes === 0) return;
    out.enqueue(stripCr(this.#take(new Uint8Array(0))));
  }

  /**
   * Fails once the pending line plus `piece` is longer than the limit. One
   * byte over is allowed while it is a `\r`, because a `\n` may follow in
   * the next chunk and make it part of the terminator.
   */
  #check(piece: Uint8Array): void {
    const total = this.#partsBytes + piece.length;
    if (total <= this.#max) return;
    if (total === this.#max + 1 && this.#lastByte(piece) === CR) return;
    this.#parts = [];
    this.#partsBytes = 0;
    throw new LineTooLongError(this.#max);
  }

  #lastByte(piece: Uint8Array): number | undefined {
    if (piece.length > 0) return piece[piece.length - 1];
    const last = this.#parts[this.#parts.length - 1];
    return last?.[last.length - 1];
  }

  /** The pending pieces plus `piece` as one array; resets the pending line. */
  #take(piece: Uint8Array): Uint8Array {
    if (this.#parts.length === 0) return piece;
    const line = new Uint8Array(this.#partsBytes + piece.length);
    let offset = 0;
    for (const part of this.#parts) {
      line.set(part, offset);
      offset += part.length;
    }
    line.set(piece, offset);
    this.#parts = [];
    this.#partsBytes = 0;
    return line;
  }
}

function stripCr(line: Uint8Array): Uint8Array {
  return line[line.length - 1] === CR ? line.subarray(0, line.length - 1) : line;
}
