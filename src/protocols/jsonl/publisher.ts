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
import { BrokerError, type PublishSource } from "../../core/broker.ts";
import { getLogger } from "../../log.ts";
import { errorText } from "../../supervisor.ts";
import type { LineConnection } from "../../transport/tcp.ts";
import { ackLine, decodePublisher, type PublisherCommand } from "./commands.ts";
import { deadLetterInput, INVALID_UTF8, type JsonlContext, tooLongLine } from "./context.ts";
import { LOGGED_IN, LoginGate, PLEASE_LOGIN } from "./login.ts";
import { OrderedReplies } from "../../ordered_replies.ts";
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

  const enqueue = (reply: Promise<string> | string) => {
    const send = (line: string) => {
      conn.send(line);
      if (drained && replies.pending < MAX_OUTSTANDING) {
        drained();
        drained = null;
      }
    };
    if (typeof reply === "string") replies.add(null, () => send(reply));
    else replies.add(reply, send);
  };

  try {
    read: for await (const batch of conn.batches()) {
      for (const ev of batch) {
        if (!conn.reading) break read;
        if (ev.kind === "too-long") {
          await replies.settled();
          conn.send(tooLongLine(ev.limit));
          break read;
        }
        if (ev.kind === "invalid-utf8") {
          enqueue(INVALID_UTF8.reply);
          deadLetterInput(
            ctx,
            conn,
            "publisher",
            source.user ?? undefined,
            INVALID_UTF8,
            undefined,
          );
          continue;
        }
        const line = ev.text.trim();
        if (line === "") continue;
        if (gate && source.user === null) {
          // Nothing is outstanding before a login, so replies can go out directly.
          const step = await gate.offer(line);
          if (step.kind === "close") break read;
          if (step.kind === "in") {
            source.user = step.user;
            conn.send(LOGGED_IN);
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
        enqueue(handle(decoded.command, ctx, source, conn));
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

async function handle(
  c: PublisherCommand,
  ctx: JsonlContext,
  source: PublishSource,
  conn: LineConnection,
): Promise<string> {
  try {
    ctx.hooks?.beforeCommand?.("publisher", c.type);
    if (c.type === "PUB") {
      const { payload, format } = encodeBody(c.msg, c.msgJson);
      if (payload.byteLength > ctx.maxMessageBytes) {
        return `ERROR: message is ${payload.byteLength} bytes, the limit is ${ctx.maxMessageBytes}`;
      }
      const id = await ctx.broker.acceptPublish(c.topic, payload, format, source);
      return ackLine("PUBREC", id);
    }
    await ctx.broker.releasePublish(c.msgId);
    return ackLine("PUBCOMP", c.msgId);
  } catch (err) {
    if (err instanceof BrokerError) return `ERROR: ${err.message}`;
    log.error("Publisher {remote} failed on {command}: {error}", {
      remote: conn.remote,
      command: c.type,
      error: errorText(err),
    });
    return c.type === "PUB"
      ? `ERROR: could not store the message (${
        errorText(err)
      }); nothing was accepted, send PUB again`
      : `ERROR: could not release msgId ${c.msgId} (${errorText(err)}); send PUBREL again`;
  }
}
