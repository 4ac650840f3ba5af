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
import type { DeliverySink } from "../../core/delivery.ts";
import { getLogger } from "../../log.ts";
import type { StoredMessage } from "../../store/store.ts";
import { errorText } from "../../supervisor.ts";
import type { LineConnection } from "../../transport/tcp.ts";
import { ackLine, type ConsumerCommand, decodeConsumer, pubLine } from "./commands.ts";
import { deadLetterInput, INVALID_UTF8, type JsonlContext, tooLongLine } from "./context.ts";
import { LOGGED_IN, LoginGate, PLEASE_LOGIN } from "./login.ts";
import { bodyJson } from "./payload.ts";

const log = getLogger("consumer");

/** Session failures tolerated within {@link FAILURE_WINDOW_MS} before disconnecting. */
const MAX_FAILURES = 5;
const FAILURE_WINDOW_MS = 10_000;

/** Puts deliveries on the wire as the seed's JSON lines. */
class JsonlSink implements DeliverySink {
  #conn: LineConnection;
  #metrics: Broker["metrics"];
  constructor(conn: LineConnection, metrics: Broker["metrics"]) {
    this.#conn = conn;
    this.#metrics = metrics;
  }
  sendMessage(m: StoredMessage): void {
    const line = pubLine(bodyJson(m), m.id, m.topic);
    this.#metrics.messagesSent++;
    this.#metrics.bytesSent += line.length;
    this.#conn.send(line);
  }
  sendRelease(id: number): void {
    this.#conn.send(ackLine("PUBREL", id));
  }
}

/** Serves one consumer connection until it closes. */
export async function serveConsumer(conn: LineConnection, ctx: JsonlContext): Promise<void> {
  let session: ConsumerSession | null = null;
  const gate = new LoginGate(conn, ctx);
  const failures: number[] = [];
  conn.send(PLEASE_LOGIN);
  try {
    for await (const ev of conn.lines()) {
      if (ev.kind === "too-long") {
        conn.send(tooLongLine(ev.limit));
        break;
      }
      if (ev.kind === "invalid-utf8") {
        conn.send(INVALID_UTF8.reply);
        deadLetterInput(ctx, conn, "consumer", session?.subscriber, INVALID_UTF8, undefined);
        continue;
      }
      const line = ev.text.trim();
      if (line === "") continue; // telnet users press enter; an empty line is no command

      if (!session) {
        const step = await gate.offer(line);
        if (step.kind === "close") break;
        if (step.kind === "in") {
          const name = step.user;
          session = ctx.broker.openSession(name, new JsonlSink(conn, ctx.broker.metrics));
          if (!session) {
            conn.send(`ERROR: user ${name} is already logged in on another connection`);
            break;
          }
          conn.send(LOGGED_IN);
          log.info("Consumer {user} logged in from {remote}", { user: name, remote: conn.remote });
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
        conn.send(decoded.reply);
        deadLetterInput(ctx, conn, "consumer", session.subscriber, decoded, line);
        continue;
      }
      try {
        ctx.hooks?.beforeCommand?.("consumer", decoded.command.type);
        await handle(session, decoded.command, conn);
      } catch (err) {
        if (err instanceof BrokerError) {
          conn.send(`ERROR: ${err.message}`);
          continue;
        }
        // The session's in-memory state may be inconsistent: rebuild it from the store.
        log.error("Consumer session {user} failed on {command}: {error}", {
          user: session.subscriber,
          remote: conn.remote,
          command: decoded.command.type,
          error: errorText(err),
        });
        const now = Date.now();
        failures.push(now);
        while (failures.length > 0 && now - (failures[0] as number) > FAILURE_WINDOW_MS) {
          failures.shift();
        }
        if (failures.length > MAX_FAILURES) {
          conn.send("ERROR: internal error, too many failures: closing connection");
          break;
        }
        conn.send(
          `ERROR: internal error while handling ${decoded.command.type}; ` +
            "session restarted from its stored subscriptions",
        );
        await session.restart();
        log.info("Consumer session {user} restarted", { user: session.subscriber });
      }
    }
  } finally {
    gate.dispose();
    session?.close();
    conn.close();
    if (session) log.info("Consumer {user} disconnected", { user: session.subscriber });
  }
}

async function handle(s: ConsumerSession, c: ConsumerCommand, conn: LineConnection) {
  const ok = () => conn.send("OK");
  let error: string | null;
  switch (c.type) {
    case "SUB":
      error = await s.subscribe(c.topic, ok);
      break;
    case "UNSUB":
      error = await s.unsubscribe(c.topic);
      if (!error) ok();
      break;
    case "PUBREC":
      error = await s.received(c.topic, c.msgId, ok);
      break;
    case "PUBCOMP":
      error = await s.completed(c.topic, c.msgId, ok);
      break;
  }
  if (error) conn.send(`ERROR: ${error}`);
}
