/**
 * The publisher port (4041): the publisher's half of QoS 2 (PUB → PUBREC,
 * PUBREL → PUBCOMP), as in the seed's telnet transcript.
 *
 * A publisher may pipeline: each line is handled as soon as it arrives, so that the
 * writes of many lines share one group commit, while replies go out in the order of
 * the lines that caused them. At most {@link MAX_OUTSTANDING} lines are in progress per
 * connection; past that, reading waits, which pushes back on the client through TCP.
 *
 * @module
 */
import { BrokerError, type PublishSource, type ReleaseResult } from "../../core/broker.ts";
import { getLogger } from "../../log.ts";
import { errorText } from "../../supervisor.ts";
import type { LineConnection, LineEvent } from "../../transport/tcp.ts";
import {
  AckLineWriter,
  CommandReader,
  decodePublisher,
  type PubBytes,
  type PublisherCommand,
} from "./commands.ts";
import { commandText, deadLetterInput, type JsonlContext, tooLongLine } from "./context.ts";
import { LOGGED_IN, LoginGate, PLEASE_LOGIN } from "./login.ts";
import { OrderedReplies, Ticket } from "../../ordered_replies.ts";
import { encodeBody } from "./payload.ts";

const log = getLogger("publisher");

/** Lines in progress per connection before reading pauses. */
const MAX_OUTSTANDING = 1024;

/**
 * Serves one publisher connection until it closes. With authentication on, the
 * connection is greeted with "Please login!" and must log in (`log USER PASSWORD`)
 * before anything else; every other line before that is answered "Please login!" and
 * counted as a failed attempt, as on the consumer port. Without it, no login exists.
 */
export async function servePublisher(conn: LineConnection, ctx: JsonlContext): Promise<void> {
  const source: PublishSource = {
    origin: `publisher ${conn.remote}`,
    user: null,
    quota: { count: 0, max: ctx.maxPendingPerConnection },
  };
  // Only with authentication: without it, the port behaves as the seed's (no login).
  const gate = ctx.auth ? new LoginGate(conn, ctx) : null;
  if (gate) conn.send(PLEASE_LOGIN);
  // Replies in line order (handle() never rejects: errors are reply lines too).
  const replies = new OrderedReplies((err) => {
    log.error("Publisher {remote}: a reply failed: {error}", {
      remote: conn.remote,
      error: errorText(err),
    });
  });
  let drained: (() => void) | null = null;
  const resumeReading = () => {
    if (drained && replies.pending < MAX_OUTSTANDING) {
      drained();
      drained = null;
    }
  };
  const ack = new AckLineWriter();
  const out: ReplyOutput = {
    conn,
    send(line: string) {
      conn.send(line);
      resumeReading();
    },
    sendAck(type: "PUBREC" | "PUBCOMP", id: number) {
      conn.sendWritten(ack.of(type, id), AckLineWriter.MAX_BYTES);
      resumeReading();
    },
  };
  const enqueue = (line: string) => replies.enqueue(new Reply(out, null)).resolve(line);
  // PUBs and PUBRELs read from their bytes, once no login is awaited (lines before it
  // need their text).
  const reader = new CommandReader("publisher");
  const readCommands = () => conn.recognize((bytes, start, end) => reader.read(bytes, start, end));
  if (!gate) readCommands();

  try {
    read: for await (const batch of conn.batches()) {
      for (let i = 0; i < batch.length; i++) {
        const ev = batch[i] as LineEvent;
        if (!conn.reading) break read;
        if (ev.kind === "recognized") {
          const c = ev.value as PublisherCommand | PubBytes;
          handle(c, ctx, source, replies.enqueue(new Reply(out, c)));
          if (replies.pending >= MAX_OUTSTANDING) {
            await new Promise<void>((resolve) => drained = resolve);
          }
          continue;
        }
        const line = commandText(ev, ctx, conn, "publisher", source.user ?? undefined, enqueue);
        if (line === null) continue;
        if (typeof line !== "string") {
          await replies.settled();
          conn.send(tooLongLine(line.tooLong));
          break read;
        }
        if (gate && source.user === null) {
          // Nothing is outstanding before a login, so replies can go out directly.
          const step = await gate.offer(line);
          if (step.kind === "close") break read;
          if (step.kind === "in") {
            source.user = step.user;
            conn.send(LOGGED_IN);
            readCommands();
            log.info("Publisher {user} logged in from {remote}", {
              user: step.user,
              remote: conn.remote,
            });
          }
          continue;
        }
        const decoded = decodePublisher(line, ctx.maxJsonDepth);
        if (!decoded.ok) {
          enqueue(decoded.reply);
          deadLetterInput(ctx, conn, "publisher", source.user ?? undefined, decoded, line);
          continue;
        }
        handle(decoded.command, ctx, source, replies.enqueue(new Reply(out, decoded.command)));
        if (replies.pending >= MAX_OUTSTANDING) {
          await new Promise<void>((resolve) => drained = resolve);
        }
      }
    }
    await replies.settled();
  } finally {
    gate?.dispose();
    conn.close();
  }
}

/** Where a {@link Reply} goes: the connection, through the reading loop's back-pressure. */
interface ReplyOutput {
  conn: LineConnection;
  send(line: string): void;
  /** The acknowledgement line `{"msgId":id,"type":type}`, written as bytes. */
  sendAck(type: "PUBREC" | "PUBCOMP", id: number): void;
}

/**
 * The answer to one line, in line order: resolved with the PUB's new id, the PUBREL's
 * result, or a ready text (`command` null); a failure becomes an error line.
 */
class Reply extends Ticket<number | ReleaseResult | string> {
  readonly #out: ReplyOutput;
  readonly #command: PublisherCommand | PubBytes | null;

  constructor(out: ReplyOutput, command: PublisherCommand | PubBytes | null) {
    super();
    this.#out = out;
    this.#command = command;
  }

  override send(value: number | ReleaseResult | string): void {
    const c = this.#command;
    if (c === null) this.#out.send(value as string);
    else if (c.type === "PUB") this.#out.sendAck("PUBREC", value as number);
    else this.#out.sendAck("PUBCOMP", c.msgId);
  }

  override fail(err: unknown): void {
    const c = this.#command;
    if (err instanceof BrokerError) {
      this.#out.send(`ERROR: ${err.message}`);
      return;
    }
    if (c === null) throw err; // a ready text is never refused
    log.error("Publisher {remote} failed on {command}: {error}", {
      remote: this.#out.conn.remote,
      command: c.type,
      error: errorText(err),
    });
    this.#out.send(
      c.type === "PUB"
        ? `ERROR: could not store the message (${
          errorText(err)
        }); nothing was accepted, send PUB again`
        : `ERROR: could not release msgId ${c.msgId} (${errorText(err)}); send PUBREL again`,
    );
  }
}

/** Starts the work of a command; `reply` is settled with its outcome. */
function handle(
  c: PublisherCommand | PubBytes,
  ctx: JsonlContext,
  source: PublishSource,
  reply: Reply,
): void {
  try {
    ctx.hooks?.beforeCommand?.("publisher", c.type);
    if (c.type === "PUBREL") {
      ctx.broker.releasePublishWith(c.msgId, reply);
      return;
    }
    const { payload, format } = "payload" in c
      ? { payload: c.payload, format: "text" as const }
      : encodeBody(c.msg, c.msgJson);
    if (payload.byteLength > ctx.maxMessageBytes) {
      throw new BrokerError(
        `message is ${payload.byteLength} bytes, the limit is ${ctx.maxMessageBytes}`,
      );
    }
    if (!ctx.broker.acceptPublishWith(c.topic, payload, format, source, reply)) {
      ctx.broker.acceptPublish(c.topic, payload, format, source).then(
        (id) => reply.resolve(id),
        (err) => reply.reject(err),
      );
    }
  } catch (err) {
    reply.reject(err);
  }
}
