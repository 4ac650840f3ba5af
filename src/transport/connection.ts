/**
 * The socket half shared by {@link LineConnection} and {@link PacketConnection}: reads
 * that `closed` can wait for, a bounded output queue written with one coalesced write
 * per turn, an idle timer, and a lingering close. It knows nothing of lines, packets or
 * topics.
 *
 * @module
 */

/** Limits every connection has, whatever it carries. */
export interface ConnectionOptions {
  /**
   * Most output bytes queued but not yet written before the connection is
   * closed, so a peer that stops reading cannot make us grow without bound.
   */
  writeBufferBytes: number;
  /** Close after this long without input; 0 turns it off. Frees dead peers' slots. */
  idleTimeoutMs: number;
  /**
   * How long `close()` waits for queued output to be written before it closes
   * the socket anyway (a peer may never read). Default 1000.
   */
  closeFlushTimeoutMs?: number;
}

/**
 * Read buffer sizes. A pending read holds its buffer for as long as the peer is silent,
 * so an idle connection starts (and falls back) small; a connection whose reads fill the
 * buffer gets a bigger one, up to the largest.
 */
const MIN_READ_BUFFER_BYTES = 256;
const MAX_READ_BUFFER_BYTES = 64 * 1024;
const DEFAULT_CLOSE_FLUSH_TIMEOUT_MS = 1000;

/**
 * How long a closing connection keeps reading (and discarding) input after sending its
 * FIN. Closing a socket with unread input makes the kernel answer with a reset, which
 * can destroy replies the peer has not read yet; draining first lets them arrive.
 */
const LINGER_MS = 500;

let nextConnectionId = 1;

/**
 * Output joined for one write goes into a scratch buffer lent from here and returned
 * once the write is over, rather than into a new array per write. In Deno every typed
 * array, however small, has its memory outside V8's heap: about 1 µs to make (measured
 * here; 20 ns for a small one in Node.js), and V8 frees them again on a worker thread
 * after each young-generation collection, which at 10k messages a second took ~2 ms of
 * the broker's core every ~370 ms, holding back the messages that arrived meanwhile.
 */
const SCRATCH_BYTES = 16 * 1024;
/** Buffers not lent out; as many as writes were ever in progress at once, at most. */
const scratchBuffers: Uint8Array[] = [];
/** Scratch buffers kept for reuse; more in flight at once are dropped when returned. */
const MAX_SCRATCH_BUFFERS = 64;

/**
 * A scratch buffer for joining `queue` (`patched`: with identifiers to write in), or
 * undefined when it needs none (one part, written as it is). Output larger than the
 * buffer gets a new array of its own from {@link joinBytes}.
 */
function takeScratch(queue: readonly Uint8Array[], patched: boolean): Uint8Array | undefined {
  if (queue.length === 1 && !patched) return undefined;
  return scratchBuffers.pop() ?? new Uint8Array(SCRATCH_BYTES);
}

/** `readNext(TO_SELF)`: the chunk goes to the connection's own `chunkArrived`. */
export const TO_SELF: unique symbol = Symbol("to self");

/**
 * Socket writes made by every connection of this process, and the bytes they carried:
 * how well output is coalesced (the benchmarks and tests read it).
 */
export const writeStats = { writes: 0, bytes: 0 };

/**
 * One accepted TCP or TLS socket with a bounded, coalescing output queue. Subclasses
 * turn its input into items ({@link readChunk}) and their items into bytes
 * ({@link sendBytes}).
 *
 * Nothing closes a connection behind its owner's back except: a peer that stops
 * reading (queued output over `writeBufferBytes`), a failed write, and the idle timer.
 */
export abstract class SocketConnection {
  /** Unique within this process; for logs and connection tables. */
  readonly id: number;
  /** The peer's address as "host:port" ("[::1]:port" for IPv6). */
  readonly remote: string;
  /** The peer's host alone ("127.0.0.1", "[::1]"): what per-address limits count. */
  readonly address: string;
  /** True for a TLS connection. */
  readonly tls: boolean;

  readonly #conn: Deno.TcpConn | Deno.TlsConn;
  readonly #writeBufferBytes: number;
  readonly #closeFlushTimeoutMs: number;
  /** Made when someone asks for {@link closed}: most connections never are asked. */
  #closed: PromiseWithResolvers<void> | undefined;
  #finished = false;
  #readBuffer = new Uint8Array(MIN_READ_BUFFER_BYTES);

  #inputStopped = false;
  #read: Promise<number | null> | undefined;
  /**
   * Who gets the chunk of the read in progress for {@link readNext}: a function, or
   * {@link chunkArrived} (a subclass that reads continuously needs no closure for it).
   */
  #waiting: ((chunk: Uint8Array | null) => void) | typeof TO_SELF | undefined;
  #lastInput = performance.now();
  #idleTimeoutMs: number;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;

  #queue: Uint8Array[] = [];
  /**
   * Packet identifiers to write into shared bytes of the queue as the batch is joined:
   * part index, offset in the part, identifier, DUP (0/1); four numbers per patch.
   */
  #patches: number[] = [];
  /** Bytes queued plus bytes being written: the memory a slow peer holds. */
  #unwrittenBytes = 0;
  #writing: Promise<void> | undefined;
  #drained: PromiseWithResolvers<void> | undefined;

  #closing = false;
  #closeReason: string | undefined;

  /**
   * Wraps an accepted socket and starts its idle timer.
   *
   * @param conn an accepted socket (a TLS one after its handshake); this object now owns it
   * @param options the connection's limits
   */
  constructor(conn: Deno.TcpConn | Deno.TlsConn, options: ConnectionOptions) {
    this.id = nextConnectionId++;
    this.#conn = conn;
    this.tls = "handshake" in conn;
    this.#writeBufferBytes = options.writeBufferBytes;
    this.#closeFlushTimeoutMs = options.closeFlushTimeoutMs ?? DEFAULT_CLOSE_FLUSH_TIMEOUT_MS;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.remote = addressText(conn.remoteAddr);
    this.address = this.remote.slice(0, this.remote.lastIndexOf(":"));
    if (this.#idleTimeoutMs > 0) this.#armIdleTimer(this.#idleTimeoutMs);
  }

  /** True once `close` has begun (or the connection failed); sends are then ignored. */
  get isClosed(): boolean {
    return this.#closing;
  }

  /** Resolves once the socket is closed and no read, write or timer of it is pending. */
  get closed(): Promise<void> {
    if (this.#finished) return Promise.resolve();
    return (this.#closed ??= Promise.withResolvers<void>()).promise;
  }

  /** Why the connection was closed, once it is: the `close` reason or what failed. */
  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  /** True once {@link stopReading} was called: input readers should end. */
  protected get inputStopped(): boolean {
    return this.#inputStopped;
  }

  /**
   * Ends the input (after the item being handled) while keeping the socket open for
   * output: a graceful stop reads nothing new but still answers what it accepted.
   */
  stopReading(): void {
    this.#inputStopped = true;
    // A read in progress ends the input now, not when the peer next writes.
    const deliver = this.#waiting;
    if (deliver) {
      this.#waiting = undefined;
      queueMicrotask(() => deliver === TO_SELF ? this.chunkArrived(null) : deliver(null));
    }
  }

  /**
   * Reads the next chunk of input and calls `deliver` once with it (a fresh copy: callers
   * may keep views of it; with `TO_SELF`, a view of the read buffer lent until the next
   * `readNext`, see {@link chunkArrived}), or with null at the end of input: end of file,
   * a read error (reset, closed by us), a close, or {@link stopReading}, which answers a
   * pending read at once. One read at a time. Not `conn.readable`: that closes the whole
   * socket on EOF or cancel (so no error reply could follow), and it hides its pending
   * read, which `closed` must wait for. A callback rather than a promise: no promise per
   * read, and no race with the stop signal.
   */
  protected readNext(deliver: ((chunk: Uint8Array | null) => void) | typeof TO_SELF): void {
    if (this.#inputStopped || this.#closing) {
      if (deliver === TO_SELF) this.chunkArrived(null);
      else deliver(null);
      return;
    }
    const read = this.#conn.read(this.#readBuffer);
    this.#read = read; // `#finish` waits for it
    this.#waiting = deliver;
    read.then((n) => this.#delivered(read, n), () => this.#delivered(read, null));
  }

  #delivered(read: Promise<number | null>, n: number | null): void {
    if (this.#read === read) this.#read = undefined;
    const deliver = this.#waiting;
    this.#waiting = undefined;
    // None when stopReading already answered.
    if (deliver === TO_SELF) this.chunkArrived(this.#chunkOf(n, true));
    else deliver?.(this.#chunkOf(n, false));
  }

  /**
   * Gets the chunks of `readNext(TO_SELF)`; subclasses that read that way override it.
   * The chunk is lent, not given: a view of the read buffer, which the next `readNext`
   * reads into again, so whatever must outlive that is copied first. This spares an
   * array per read, and in Deno every typed array, however small, is allocated outside
   * V8's heap (about 1 µs) and freed again by the collector.
   */
  protected chunkArrived(_chunk: Uint8Array | null): void {
    throw new Error("readNext(TO_SELF) without chunkArrived");
  }

  /** {@link readNext} as a promise; never rejects. */
  protected readChunk(): Promise<Uint8Array | null> {
    return new Promise((resolve) => this.readNext(resolve));
  }

  /** The chunk a read of `n` bytes gave (null: end of input), sizing the next read. */
  #chunkOf(n: number | null, lend: boolean): Uint8Array | null {
    if (n === null || this.#inputStopped) return null;
    // A buffer replaced below stays with the lent view; the next read uses the new one.
    const chunk = lend ? this.#readBuffer.subarray(0, n) : this.#readBuffer.slice(0, n);
    const size = this.#readBuffer.length;
    if (n === size && size < MAX_READ_BUFFER_BYTES) {
      this.#readBuffer = new Uint8Array(size * 2);
    } else if (n < size / 8 && size > MIN_READ_BUFFER_BYTES) {
      this.#readBuffer = new Uint8Array(size / 2);
    }
    return chunk;
  }

  /** Records that an input item arrived: the idle timer counts from here. */
  protected noteInput(): void {
    this.#lastInput = performance.now();
  }

  /**
   * Changes the idle limit (0 turns it off), counted from the last input; a limit
   * already passed fires at once.
   */
  protected setIdleTimeout(ms: number): void {
    this.#idleTimeoutMs = ms;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (ms > 0 && !this.#closing) {
      this.#armIdleTimer(Math.max(0, ms - (performance.now() - this.#lastInput)));
    }
  }

  /** Called when nothing was received for `limitMs`; must close the connection. */
  protected abstract onIdle(limitMs: number): void;

  /**
   * Queues `bytes` for writing; they must not change afterwards. Never throws;
   * ignored once the connection is closed. Closes the connection if the output not
   * yet written passes `writeBufferBytes` (unless these bytes alone are all of it).
   */
  /** Output queued or being written, in bytes. */
  get bufferedBytes(): number {
    return this.#unwrittenBytes;
  }

  /** Resolves once everything queued so far is written (or the connection closed). */
  whenDrained(): Promise<void> {
    if (this.#unwrittenBytes === 0 || this.#closing) return Promise.resolve();
    this.#drained ??= Promise.withResolvers<void>();
    return this.#drained.promise;
  }

  /**
   * Queues `bytes` (shared, left unchanged) with a 16-bit packet identifier written at
   * `idOffset` and, with `dup`, bit 3 of the first byte set, as the output is joined for
   * writing: a PUBLISH encoded once for many receivers, or an acknowledgement template,
   * goes out without a copy of its own.
   */
  sendPatched(bytes: Uint8Array, idOffset: number, id: number, dup: boolean): void {
    if (this.#closing) return;
    this.#patches.push(this.#queue.length, idOffset, id, dup ? 1 : 0);
    this.sendBytes(bytes);
  }

  sendBytes(bytes: Uint8Array): void {
    if (this.#closing) return;
    this.#queue.push(bytes);
    this.#queued(bytes.length);
  }

  /**
   * Queues a PUBLISH as its `head` (shared, left unchanged: see `publishHead`) with the
   * identifier `id` written at `idOffset` (none at QoS 0) and, with `dup`, the DUP flag
   * set, followed by `payload`: one packet, joined with the rest of the output as it is
   * written, without an array of its own.
   */
  sendPublish(
    head: Uint8Array,
    idOffset: number,
    id: number | null,
    dup: boolean,
    payload: Uint8Array,
  ): void {
    if (this.#closing) return;
    if (id !== null) this.#patches.push(this.#queue.length, idOffset, id, dup ? 1 : 0);
    this.#queue.push(head, payload);
    this.#queued(head.length + payload.length);
  }

  /** Counts `size` more bytes of output queued, and starts writing them. */
  #queued(size: number): void {
    this.#unwrittenBytes += size;
    // The bound is on backlog: one item bigger than the buffer may still go out when
    // nothing else is waiting (a message may be larger than the buffer setting).
    if (this.#unwrittenBytes > this.#writeBufferBytes && this.#unwrittenBytes > size) {
      this.#shutdown(`peer too slow: over ${this.#writeBufferBytes} bytes of output queued`, {
        flush: false,
      });
      return;
    }
    this.#writing ??= this.#writeLoop();
  }

  /**
   * Closes the connection: stops reading, writes what is queued (waiting at
   * most `closeFlushTimeoutMs`), then closes the socket. Idempotent; await
   * {@link closed} to know when it is done.
   *
   * @param reason kept in {@link closeReason} for logs
   */
  close(reason = "closed"): void {
    this.#shutdown(reason, { flush: true });
  }

  /** One write at a time, each taking everything queued since the last one. */
  async #writeLoop(): Promise<void> {
    try {
      // Let the rest of this turn queue its output too, so it leaves in one write.
      await Promise.resolve();
      while (this.#queue.length > 0) {
        const scratch = takeScratch(this.#queue, this.#patches.length > 0);
        const batch = concat(this.#queue, this.#patches, scratch);
        this.#queue = [];
        if (this.#patches.length > 0) this.#patches = [];
        let written = 0;
        try {
          while (written < batch.length) {
            writeStats.writes++;
            written += await this.#conn.write(batch.subarray(written));
          }
        } finally {
          // Only once the write is over: until then the socket may still read from it.
          if (scratch && scratchBuffers.length < MAX_SCRATCH_BUFFERS) scratchBuffers.push(scratch);
        }
        writeStats.bytes += batch.length;
        this.#unwrittenBytes -= batch.length;
      }
      this.#drained?.resolve();
      this.#drained = undefined;
    } catch (err) {
      if (!this.#closing) this.#shutdown(`write failed: ${errorText(err)}`, { flush: false });
    } finally {
      this.#writing = undefined;
    }
  }

  #armIdleTimer(delayMs: number): void {
    this.#idleTimer = setTimeout(() => this.#onIdleTimer(), delayMs);
  }

  /**
   * Re-armed only when it fires, for the time left since the last input,
   * so input items cost a timestamp rather than a timer each.
   */
  #onIdleTimer(): void {
    this.#idleTimer = undefined;
    if (this.#closing) return;
    const limit = this.#idleTimeoutMs;
    const idle = performance.now() - this.#lastInput;
    if (idle < limit) {
      this.#armIdleTimer(limit - idle);
      return;
    }
    this.onIdle(limit);
    this.close(`idle for more than ${limit} ms`); // in case onIdle did not
  }

  #shutdown(reason: string, { flush }: { flush: boolean }): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#drained?.resolve(); // nothing waits for a drain that will not come
    this.#drained = undefined;
    this.#closeReason = reason;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (!flush) {
      this.#queue = [];
      this.#patches = [];
    }
    void this.#finish(flush);
  }

  /** Half-closes (FIN) and reads input until the peer closes too. */
  async #linger(): Promise<void> {
    try {
      // On TLS this sends close_notify before the FIN, so the peer sees a clean end.
      await this.#conn.closeWrite();
      await this.#read;
      const scratch = new Uint8Array(16 * 1024);
      for (;;) {
        this.#read = this.#conn.read(scratch);
        const n = await this.#read;
        this.#read = undefined;
        if (n === null) return;
      }
    } catch {
      // The peer reset or the socket is gone: nothing left to drain.
    }
  }

  async #finish(flush: boolean): Promise<void> {
    if (flush && this.#writing) await withTimeout(this.#writing, this.#closeFlushTimeoutMs);
    this.#queue = [];
    if (flush && !this.#writing) await withTimeout(this.#linger(), LINGER_MS);
    try {
      this.#conn.close();
    } catch {
      // Already closed: nothing left to release.
    }
    // Closing cancels a pending read and write; wait for them to settle so
    // nothing of this connection outlives `closed`.
    await this.#writing;
    await this.#read?.catch(() => {});
    this.#finished = true;
    this.#closed?.resolve();
  }
}

/**
 * Joins `parts` into one array so a whole batch goes out in one write, then applies
 * `patches` (see {@link SocketConnection.sendPatched}: part index, offset, 16-bit
 * value, DUP flag; four numbers each) to the joined copy, never to the parts.
 */
export function concat(
  parts: Uint8Array[],
  patches?: readonly number[],
  into?: Uint8Array,
): Uint8Array {
  if (patches === undefined || patches.length === 0) {
    return parts.length === 1 && parts[0] ? parts[0] : joinBytes(parts, into);
  }
  const out = joinBytes(parts, into);
  const starts: number[] = [];
  let offset = 0;
  for (const part of parts) {
    starts.push(offset);
    offset += part.length;
  }
  for (let k = 0; k < patches.length; k += 4) {
    const start = starts[patches[k]!]!;
    const at = start + patches[k + 1]!;
    const value = patches[k + 2]!;
    out[at] = value >> 8;
    out[at + 1] = value & 0xff;
    if (patches[k + 3]) out[start] = out[start]! | 0x08;
  }
  return out;
}

/**
 * `parts` one after the other in a new array (always a copy, even of one part), or at
 * the start of `into` when they fit in it: the view of it returned.
 */
export function joinBytes(parts: readonly Uint8Array[], into?: Uint8Array): Uint8Array {
  let total = 0;
  for (const part of parts) total += part.length;
  const out = into && total <= into.length ? into.subarray(0, total) : new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    const n = part.length;
    // Small parts (acknowledgements, headers, lengths) are copied faster by hand than by
    // `set`, whose call costs more than a few stores.
    if (n > 32) out.set(part, offset);
    else for (let i = 0; i < n; i++) out[offset + i] = part[i]!;
    offset += n;
  }
  return out;
}

/** Waits for `promise`, at most `ms`; the timer never outlives the call. */
export async function withTimeout(promise: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  try {
    await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A socket address as "host:port" ("[::1]:port" for IPv6), for logs and limits. */
export function addressText(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

/** The message of a thrown value, for close reasons and logs. */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
