/**
 * The consumer port (4040): login, SUB/UNSUB, and the subscriber's half of QoS 2
 * (PUBREC, PUBCOMP), as in the seed's telnet transcript.
 *
 * Lines are handled one at a time, in order. A handler that throws is a session
 * failure: it is logged, the client gets an error line, and the session is rebuilt
 * from its durable subscriptions on the same connection (the connection's "restart");
 * too many failures in a short time close the connection instead.
 *
 * @module
 */
import { type Broker, BrokerError } from "../../core/broker.ts";
import type { ConsumerSession } from "../../core/consumer_session.ts";
import type { AckOutcome, DeliverySink } from "../../core/delivery.ts";
import { getLogger } from "../../log.ts";
import type { StoredMessage } from "../../store/store.ts";
import { errorText } from "../../supervisor.ts";
import type { LineConnection, LineEvent } from "../../transport/tcp.ts";
import {
  AckLineWriter,
  CommandReader,
  type ConsumerCommand,
  decodeConsumer,
  plainBody,
  pubLine,
  PubLineWriter,
} from "./commands.ts";
import { commandText, deadLetterInput, type JsonlContext, tooLongLine } from "./context.ts";
import { LOGGED_IN, LoginGate, PLEASE_LOGIN } from "./login.ts";
import { bodyJson } from "./payload.ts";
import { OrderedReplies, Ticket } from "../../ordered_replies.ts";

const log = getLogger("consumer");

/** Session failures tolerated within {@link FAILURE_WINDOW_MS} before disconnecting. */
const MAX_FAILURES = 5;
const FAILURE_WINDOW_MS = 10_000;

/** Puts deliveries on the wire as the seed's JSON lines. */
class JsonlSink implements DeliverySink {
  #conn: LineConnection;
  #metrics: Broker["metrics"];
  #pubLine = new PubLineWriter();
  #ackLine = new AckLineWriter();
  constructor(conn: LineConnection, metrics: Broker["metrics"]) {
    this.#conn = conn;
    this.#metrics = metrics;
  }
  sendMessage(m: StoredMessage): void {
    this.#metrics.messagesSent++;
    if (m.format === "text" && plainBody(m.payload)) {
      // Written from the stored bytes: no text made for the body or the line.
      const w = this.#pubLine.of(m.payload, m.id, m.topic);
      this.#metrics.bytesSent += this.#conn.sendWritten(w, w.maxBytes);
      return;
    }
    const line = pubLine(bodyJson(m), m.id, m.topic);
    this.#metrics.bytesSent += line.length;
    this.#conn.send(line);
  }
  sendRelease(id: number): void {
    this.#conn.sendWritten(this.#ackLine.of("PUBREL", id), AckLineWriter.MAX_BYTES);
  }
}

/** What the acknowledgement replies of one connection share. */
interface AckContext {
  /** Sends a reply line (nothing for null) and resumes reading if it waited for room. */
  send(line: string | null): void;
  /** The acknowledgement failed unexpectedly: the session restarts or the connection ends. */
  fail(command: AckCommand["type"], err: unknown): void;
}

/**
 * The reply to one PUBREC or PUBCOMP: its place among the connection's replies, and the
 * outcome the delivery tells it. One object per acknowledgement, no closures.
 */
class AckReply extends Ticket<string | null> implements AckOutcome {
  readonly #acks: AckContext;
  readonly #type: AckCommand["type"];
  constructor(acks: AckContext, type: AckCommand["type"]) {
    super();
    this.#acks = acks;
    this.#type = type;
  }
  accepted(): void {
    this.resolve("OK");
  }
  finished(error: string | null): void {
    // After `accepted` this changes nothing; a stopped delivery answers nothing (null).
    this.resolve(error === null ? null : `ERROR: ${error}`);
  }
  failed(err: unknown): void {
    this.reject(err);
  }
  override send(line: string | null): void {
    this.#acks.send(line);
  }
  override fail(err: unknown): void {
    this.#acks.fail(this.#type, err);
  }
}

/** Acknowledgements in progress per connection before reading pauses. */
const MAX_OUTSTANDING = 1024;

/**
 * Serves one consumer connection until it closes.
 *
 * PUBREC and PUBCOMP are pipelined: each is handled as soon as it arrives, so that the
 * acknowledgements of a window share one group commit, and their answers (OK or ERROR)
 * go out in the order of the lines. SUB and UNSUB wait until every earlier line is
 * answered, and are handled one at a time.
 */
export async function serveConsumer(conn: LineConnection, ctx: JsonlContext): Promise<void> {
  let session: ConsumerSession | null = null;
  const gate = new LoginGate(conn, ctx);
  const failures: number[] = [];
  let drained: (() => void) | null = null;
  const replies = new OrderedReplies((err) => {
    log.error("Consumer {remote}: a reply failed: {error}", {
      remote: conn.remote,
      error: errorText(err),
    });
  });
  const resumeReading = () => {
    if (drained && replies.pending < MAX_OUTSTANDING) {
      drained();
      drained = null;
    }
  };
  const send = (line: string | null) => {
    if (line !== null) conn.send(line);
    resumeReading();
  };

  /**
   * A command's handler threw: the session's in-memory state may be inconsistent, so it
   * is rebuilt from the store (the connection's "restart"). False when failures came
   * too often and the connection must close.
   */
  const failed = async (s: ConsumerSession, command: string, err: unknown) => {
    if (err instanceof BrokerError) {
      conn.send(`ERROR: ${err.message}`);
      return true;
    }
    log.error("Consumer session {user} failed on {command}: {error}", {
      user: s.subscriber,
      remote: conn.remote,
      command,
      error: errorText(err),
    });
    const now = Date.now();
    failures.push(now);
    while (failures.length > 0 && now - (failures[0] as number) > FAILURE_WINDOW_MS) {
      failures.shift();
    }
    if (failures.length > MAX_FAILURES) {
      conn.send("ERROR: internal error, too many failures: closing connection");
      return false;
    }
    conn.send(
      `ERROR: internal error while handling ${command}; ` +
        "session restarted from its stored subscriptions",
    );
    await s.restart();
    log.info("Consumer session {user} restarted", { user: s.subscriber });
    return true;
  };

  const acks: AckContext = {
    send,
    fail: (command, err) => {
      resumeReading();
      const s = session;
      if (!s) return; // acknowledgements come only after the login
      failed(s, command, err).then((goOn) => {
        if (!goOn) conn.close();
      }, (e) => {
        log.error("Consumer {remote}: restart failed: {error}", {
          remote: conn.remote,
          error: errorText(e),
        });
        conn.close();
      });
    },
  };

  /** PUBREC or PUBCOMP, answered in line order once its commit is done. */
  const acknowledge = (s: ConsumerSession, c: AckCommand) => {
    const reply = replies.enqueue(new AckReply(acks, c.type));
    try {
      ctx.hooks?.beforeCommand?.("consumer", c.type);
      if (c.type === "PUBREC") s.received(c.topic, c.msgId, reply);
      else s.completed(c.topic, c.msgId, reply);
    } catch (err) {
      reply.reject(err);
    }
  };

  const replyNow = (line: string) => replies.ticket(send).resolve(line);

  conn.send(PLEASE_LOGIN);
  try {
    read: for await (const batch of conn.batches()) {
      for (let i = 0; i < batch.length; i++) {
        const ev = batch[i] as LineEvent;
        if (!conn.reading) break read;
        if (ev.kind === "recognized") {
          // Only once logged in (see below): an acknowledgement read from its bytes.
          acknowledge(session as ConsumerSession, ev.value as AckCommand);
          if (replies.pending >= MAX_OUTSTANDING) {
            await new Promise<void>((resolve) => drained = resolve);
          }
          continue;
        }
        const line = commandText(ev, ctx, conn, "consumer", session?.subscriber, replyNow);
        if (line === null) continue;
        if (typeof line !== "string") {
          await replies.settled();
          conn.send(tooLongLine(line.tooLong));
          break read;
        }

        if (!session) {
          const step = await gate.offer(line);
          if (step.kind === "close") break read;
          if (step.kind === "in") {
            const name = step.user;
            session = ctx.broker.openSession(name, new JsonlSink(conn, ctx.broker.metrics));
            if (!session) {
              conn.send(`ERROR: user ${name} is already logged in on another connection`);
              break read;
            }
            conn.send(LOGGED_IN);
            const acks = new CommandReader("consumer");
            conn.recognize((bytes, start, end) => acks.read(bytes, start, end));
            log.info("Consumer {user} logged in from {remote}", {
              user: name,
              remote: conn.remote,
            });
            try {
              await session.resume();
            } catch (err) {
              log.error("Could not resume the subscriptions of {user}: {error}", {
                user: name,
                error: errorText(err),
              });
              conn.send("ERROR: internal error while resuming your subscriptions; SUB to retry");
            }
          }
          continue;
        }

        const decoded = decodeConsumer(line, ctx.maxJsonDepth);
        if (!decoded.ok) {
          replyNow(decoded.reply);
          deadLetterInput(ctx, conn, "consumer", session.subscriber, decoded, line);
          continue;
        }
        const c = decoded.command;
        if (c.type === "PUBREC" || c.type === "PUBCOMP") {
          acknowledge(session, c);
          if (replies.pending >= MAX_OUTSTANDING) {
            await new Promise<void>((resolve) => drained = resolve);
          }
          continue;
        }
        await replies.settled();
        try {
          ctx.hooks?.beforeCommand?.("consumer", c.type);
          await subscription(session, c, conn);
        } catch (err) {
          if (!(await failed(session, c.type, err))) break read;
        }
      }
    }
    await replies.settled();
  } finally {
    gate.dispose();
    session?.close();
    conn.close();
    if (session) log.info("Consumer {user} disconnected", { user: session.subscriber });
  }
}

type AckCommand = Extract<ConsumerCommand, { type: "PUBREC" | "PUBCOMP" }>;

/** SUB or UNSUB. */
async function subscription(
  s: ConsumerSession,
  c: Exclude<ConsumerCommand, AckCommand>,
  conn: LineConnection,
) {
  const ok = () => conn.send("OK");
  const error = c.type === "SUB"
    ? await s.subscribe(c.topic, ok, c.window)
    : await s.unsubscribe(c.topic);
  if (error) conn.send(`ERROR: ${error}`);
  else if (c.type === "UNSUB") ok();
}
