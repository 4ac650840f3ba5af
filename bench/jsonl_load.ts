/**
 * The JSON-line load: a publisher that runs full QoS 2 handshakes (PUB → PUBREC →
 * PUBREL → PUBCOMP) with a window of PUBs in flight, either as fast as answers come or
 * at a fixed rate, and a consumer that completes every delivery (PUB → PUBREC → OK +
 * PUBREL → PUBCOMP → OK) and checks what it got. Every loop ends by itself: after a fixed
 * count, at end of stream, or when the scenario's deadline closes the socket.
 *
 * Payloads are 100-byte strings `"<seq> <ms> xxx…"`: a sequence number per topic (for
 * the completeness check) and the send time, `performance.timeOrigin +
 * performance.now()` in ms (for publish → delivery latency).
 *
 * @module
 */
import type { LineSocket } from "./line_socket.ts";
import type { Latencies, Stream } from "./stats.ts";

/** Bytes of each message payload (the `msg` string). */
export const PAYLOAD_BYTES = 100;

/** Wall-clock milliseconds, comparable across processes on one machine. */
export const now = (): number => performance.timeOrigin + performance.now();

function payload(seq: number, sentAt: number): string {
  const head = `${seq} ${sentAt.toFixed(3)} `;
  return head + "x".repeat(Math.max(0, PAYLOAD_BYTES - head.length));
}

/** Errors seen by the load generator (error lines from the broker, closed sockets). */
export class Problems {
  readonly lines: string[] = [];
  count = 0;
  add(text: string): void {
    this.count++;
    if (this.lines.length < 10) this.lines.push(text);
  }
}

/** How a publisher sends. */
export interface PublisherPlan {
  topic: string;
  count: number;
  /** PUBs sent and not yet completed by a PUBCOMP, at most. */
  window: number;
  /** Messages per second for a paced run; undefined sends as fast as the window allows. */
  rate?: number;
}

/** What a publisher did. */
export interface PublisherResult {
  sent: number;
  completed: number;
  /** Paced runs: send attempts that found the window full (the rate was not sustained). */
  windowFull: number;
}

/**
 * Publishes `plan.count` messages on `sock` with full QoS 2 handshakes. In a paced run a
 * message's timestamp is the time it was due, not the time it was sent, so a stalled
 * broker shows as latency (no coordinated omission).
 */
export async function publish(
  sock: LineSocket,
  plan: PublisherPlan,
  problems: Problems,
): Promise<PublisherResult> {
  const { topic, count, window, rate } = plan;
  const head = `{"type":"PUB","topic":${JSON.stringify(topic)},"msg":"`;
  const pub = (seq: number, at: number) => `${head}${payload(seq, at)}"}\n`;
  const r: PublisherResult = { sent: 0, completed: 0, windowFull: 0 };
  let stopped = false;

  const start = now();
  const pacer = rate === undefined ? Promise.resolve() : (async () => {
    const interval = 1000 / rate;
    while (r.sent < count && !stopped) {
      const due = Math.min(count, Math.floor((now() - start) / interval) + 1);
      let out = "";
      while (r.sent < due && r.sent - r.completed < window) {
        out += pub(r.sent, start + r.sent * interval);
        r.sent++;
      }
      if (r.sent < due) r.windowFull++;
      if (out) await sock.send(out).catch(() => stopped = true);
      await new Promise((res) => setTimeout(res, 1));
    }
  })();

  if (rate === undefined) {
    let out = "";
    const at = now();
    while (r.sent < Math.min(window, count)) out += pub(r.sent++, at);
    await sock.send(out);
  }
  try {
    while (r.completed < count) {
      const lines = await sock.lines();
      if (lines === null) {
        problems.add(`publisher ${topic}: connection closed after ${r.completed} PUBCOMPs`);
        break;
      }
      let out = "";
      for (const line of lines) {
        if (line.startsWith('{"msgId":')) {
          const m = JSON.parse(line) as { msgId: number; type: string };
          if (m.type === "PUBREC") out += `{"type":"PUBREL","msgId":${m.msgId}}\n`;
          else if (m.type === "PUBCOMP") {
            r.completed++;
            if (rate === undefined && r.sent < count) out += pub(r.sent++, now());
          } else problems.add(`publisher ${topic}: unexpected ${line}`);
        } else if (line !== "") problems.add(`publisher ${topic}: ${line}`);
      }
      if (out) await sock.send(out);
    }
  } catch (err) {
    problems.add(`publisher ${topic}: ${err instanceof Error ? err.message : err}`);
  } finally {
    stopped = true;
    await pacer;
    sock.close();
  }
  return r;
}

/** A consumer: `ready` once logged in and subscribed, `done` once everything is completed. */
export interface Consumer {
  ready: Promise<void>;
  done: Promise<void>;
}

/**
 * Logs in `name` on `sock`, subscribes it to the topics of `streams` with `window`
 * messages outstanding per topic (1 is the seed's protocol), and completes `expected`
 * deliveries, recording each in its topic's stream and its latency.
 */
export function consume(
  sock: LineSocket,
  name: string,
  streams: Map<string, Stream>,
  window: number,
  expected: number,
  latencies: Latencies,
  problems: Problems,
): Consumer {
  const ready = Promise.withResolvers<void>();
  const done = (async () => {
    let subscribed = 0;
    let completed = 0;
    let oks = 0;
    let setup = `log ${name}\n`;
    for (const topic of streams.keys()) {
      setup +=
        JSON.stringify(window === 1 ? { type: "SUB", topic } : { type: "SUB", topic, window }) +
        "\n";
    }
    try {
      await sock.send(setup);
      // Until subscribed: the greeting, the login answer, one OK per SUB.
      while (subscribed < streams.size) {
        const lines = await sock.lines();
        if (lines === null) throw new Error("closed before subscribing");
        for (const line of lines) {
          if (line === "OK") subscribed++;
          else if (line.startsWith("ERROR")) throw new Error(line);
        }
      }
      ready.resolve();
      while (completed < expected || oks < 2 * expected) {
        const lines = await sock.lines();
        if (lines === null) {
          problems.add(`consumer ${name}: connection closed after ${completed} deliveries`);
          break;
        }
        const at = now();
        let out = "";
        for (const line of lines) {
          if (line === "OK") {
            oks++;
          } else if (line.startsWith('{"msg":')) {
            const m = JSON.parse(line) as { msg: string; msgId: number; topic: string };
            const space = m.msg.indexOf(" ");
            const seq = Number(m.msg.slice(0, space));
            latencies.add(at - Number(m.msg.slice(space + 1, m.msg.indexOf(" ", space + 1))));
            const stream = streams.get(m.topic);
            if (stream) stream.receive(seq);
            else problems.add(`consumer ${name}: PUB on a topic it did not subscribe: ${line}`);
            out += `{"type":"PUBREC","msgId":${m.msgId},"topic":${JSON.stringify(m.topic)}}\n`;
          } else if (line.startsWith('{"msgId":')) {
            const m = JSON.parse(line) as { msgId: number; type: string };
            if (m.type !== "PUBREL") problems.add(`consumer ${name}: unexpected ${line}`);
            out += `{"type":"PUBCOMP","msgId":${m.msgId}}\n`;
            completed++;
          } else if (line !== "") problems.add(`consumer ${name}: ${line}`);
        }
        if (out) await sock.send(out);
      }
    } catch (err) {
      problems.add(`consumer ${name}: ${err instanceof Error ? err.message : err}`);
    } finally {
      ready.resolve();
      sock.close();
    }
  })();
  return { ready: ready.promise, done };
}
