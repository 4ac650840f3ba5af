/**
 * The MQTT load (3.1.1 over raw sockets, see `mqtt_wire.ts`): publishers that keep a
 * window of QoS 1/2 PUBLISHes in flight (refilled as PUBACKs / PUBCOMPs arrive), blast
 * QoS 0 in window-sized writes (a paced publisher runs in a worker of its own:
 * `paced_publisher.ts`); subscribers that acknowledge
 * every delivery (PUBACK, or PUBREC then PUBCOMP on the PUBREL) and record each one's
 * sequence number and latency. Every loop ends by itself: after its count, at the end of
 * the stream, or when the scenario's deadline closes the socket.
 *
 * Payloads are 100 bytes, `"<seq> <µs> xxx…"`: a sequence number per topic (for the
 * completeness check) and the send time in µs since the epoch (`performance.timeOrigin +
 * performance.now()`), or in a paced run the time the message was *due*, so that a
 * broker that falls behind shows as latency (no coordinated omission).
 *
 * @module
 */
import { Problems } from "./jsonl_load.ts";
import {
  InFlight,
  type MqttSocket,
  OutBuffer,
  type PacketHandler,
  PAYLOAD_BYTES,
  payloadSeq,
  payloadTime,
  PINGRESP,
  PUBACK,
  PUBCOMP,
  PUBLISH,
  PublishEncoder,
  PUBREC,
  PUBREL,
} from "./mqtt_wire.ts";
import type { Latencies, Stream } from "./stats.ts";

export { Problems };

/** Wall-clock milliseconds, comparable across processes on one machine. */
export const now = (): number => performance.timeOrigin + performance.now();

/** How a publisher sends. */
export interface MqttPublisherPlan {
  clientId: string;
  topic: string;
  qos: 0 | 1 | 2;
  count: number;
  /** QoS 1/2 PUBLISHes not yet completed, at most; at QoS 0, PUBLISHes per write. */
  window: number;
  /** Messages per second for a paced run (QoS 1/2); undefined = as fast as the window allows. */
  rate?: number;
}

/** What a publisher did. */
export interface MqttPublisherResult {
  sent: number;
  /** PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received; at QoS 0, PUBLISHes written. */
  completed: number;
  /** Paced runs: times a due message found the window full (the rate was not sustained). */
  windowFull: number;
  /** QoS 2 PUBLISHes answered with a PUBACK (a broker that downgrades QoS 2). */
  downgraded: number;
  /** When the last completion arrived (ms, `now()`). */
  endedAt: number;
}

/**
 * Publishes `plan.count` messages on a connected `sock`. QoS 1/2: a window of PUBLISHes
 * in flight, packet identifiers `seq % 65535 + 1`; every acknowledgement is checked
 * against what is in flight. Not paced: a plan with a `rate` runs in `PacedPublisher`
 * (`paced_publisher.ts`). Ends with DISCONNECT and closes the socket.
 */
export async function mqttPublish(
  sock: MqttSocket,
  plan: MqttPublisherPlan,
  problems: Problems,
): Promise<MqttPublisherResult> {
  const { clientId, topic, qos, count, window } = plan;
  if (plan.rate !== undefined) throw new RangeError("a paced plan runs in PacedPublisher");
  const enc = new PublishEncoder(topic, qos);
  const r: MqttPublisherResult = {
    sent: 0,
    completed: 0,
    windowFull: 0,
    downgraded: 0,
    endedAt: now(),
  };
  const out = new OutBuffer(enc.size * Math.min(window, count) + 1024);
  const flush = () => out.length > 0 ? sock.sendOut(out) : Promise.resolve();

  try {
    if (qos === 0) {
      while (r.sent < count && !sock.writeFailed && !sock.closed) {
        const at = Math.round(now() * 1000);
        const n = Math.min(window, count - r.sent);
        for (let i = 0; i < n; i++) {
          out.length = enc.write(out.reserve(enc.size), out.length, 0, r.sent, at);
          r.sent++;
        }
        await flush();
      }
      if (sock.writeFailed) problems.add(`publisher ${clientId}: write failed after ${r.sent}`);
      r.completed = sock.writeFailed ? 0 : r.sent;
      r.endedAt = now();
      return r;
    }

    const flight = new InFlight(
      qos,
      (id) => out.ack(PUBREL, id),
      (text) => problems.add(`publisher ${clientId}: ${text}`),
    );
    const queue = (seq: number, atMicros: number) => {
      const id = flight.send(seq);
      out.length = enc.write(out.reserve(enc.size), out.length, id, seq, atMicros);
      r.sent++;
    };
    // Unpaced: the window is refilled once a tenth of it is free (or the rest fits), so
    // that a fast broker gets PUBLISHes in batches and the generator does fewer writes.
    const refillBatch = Math.max(1, Math.floor(window / 10));
    const refill = () => {
      const room = Math.min(window - (r.sent - r.completed), count - r.sent);
      if (room <= 0 || (room < refillBatch && r.sent + room < count)) return;
      const at = Math.round(now() * 1000);
      for (let i = 0; i < room; i++) queue(r.sent, at);
    };
    const onPacket: PacketHandler = (type, flags, buf, body) => {
      flight.onPacket(type, flags, buf, body);
      r.completed = flight.completed;
      r.downgraded = flight.downgraded;
    };

    const at = Math.round(now() * 1000);
    while (r.sent < Math.min(window, count)) queue(r.sent, at);
    await flush();
    while (r.completed < count) {
      const open = await sock.read(onPacket);
      if (!open) {
        problems.add(`publisher ${clientId}: connection closed after ${r.completed} acks`);
        break;
      }
      if (r.completed === count) r.endedAt = now();
      refill();
      flush();
    }
    await flush();
    if (r.downgraded > 0) {
      problems.add(`publisher ${clientId}: ${r.downgraded} QoS 2 PUBLISHes answered by PUBACK`);
    }
    return r;
  } catch (err) {
    problems.add(`publisher ${clientId}: ${err instanceof Error ? err.message : err}`);
    return r;
  } finally {
    await sock.disconnect();
  }
}

/** How a subscriber ends. */
export interface SubscriberControl {
  /** QoS 0: true once every publisher has written everything. */
  publishersDone(): boolean;
  /** QoS 0: after the publishers are done, stop when nothing arrived for this long (ms)… */
  quietMs: number;
  /** …and the broker is idle (not still working through a backlog). */
  brokerIdle(): Promise<boolean>;
}

/** What a subscriber did. */
export interface MqttSubscriberResult {
  /** PUBLISHes received (duplicates included). */
  received: number;
  /** When it had everything it expected, or its last delivery (ms, `now()`). */
  endedAt: number;
}

/**
 * Takes deliveries on a connected and subscribed `sock` until `expected` distinct
 * messages arrived (and, at QoS 2, every PUBREL was answered), recording each in
 * `stream` and `latencies`. At QoS 0 it also stops once the publishers are done, nothing
 * arrived for `control.quietMs` and the broker is idle (what is missing is then loss). Acknowledges per
 * PUBLISH QoS, so a broker that grants less than asked is still served. Ends with
 * DISCONNECT and closes the socket.
 */
export async function mqttSubscribe(
  sock: MqttSocket,
  name: string,
  topic: string,
  expected: number,
  stream: Stream,
  latencies: Latencies,
  problems: Problems,
  control: SubscriberControl,
): Promise<MqttSubscriberResult> {
  const topicBytes = new TextEncoder().encode(topic);
  const out = new OutBuffer();
  const r: MqttSubscriberResult = { received: 0, endedAt: now() };
  let qos2 = 0;
  let released = 0;
  let batchAt = -1;
  let lastAt = now();
  let quiet = false;
  const sameTopic = (buf: Uint8Array, at: number, length: number) => {
    if (length !== topicBytes.length) return false;
    for (let i = 0; i < length; i++) if (buf[at + i] !== topicBytes[i]) return false;
    return true;
  };
  const onPacket = (type: number, flags: number, buf: Uint8Array, body: number, end: number) => {
    if (type === PUBLISH) {
      const qos = (flags >> 1) & 3;
      const topicLength = (buf[body]! << 8) | buf[body + 1]!;
      let p = body + 2 + topicLength;
      let id = 0;
      if (qos > 0) {
        id = (buf[p]! << 8) | buf[p + 1]!;
        p += 2;
      }
      if (batchAt < 0) batchAt = now();
      r.received++;
      if (!sameTopic(buf, body + 2, topicLength) || end - p !== PAYLOAD_BYTES) {
        stream.receive(-1); // counted as unexpected
        problems.add(`subscriber ${name}: a PUBLISH that is not ours (${end - p} bytes)`);
      } else {
        stream.receive(payloadSeq(buf, p));
        latencies.add(batchAt - payloadTime(buf, p) / 1000);
      }
      if (qos === 1) out.ack(PUBACK, id);
      else if (qos === 2) {
        qos2++;
        out.ack(PUBREC, id);
      }
    } else if (type === PUBREL) {
      out.ack(PUBCOMP, (buf[body]! << 8) | buf[body + 1]!);
      released++;
    } else if (type !== PINGRESP) {
      problems.add(`subscriber ${name}: unexpected packet type ${type}`);
    }
  };
  const done = () => stream.distinct >= expected && released >= qos2;
  // QoS 0 ends on silence once the publishers are done and the broker has gone idle: a
  // watchdog closes the socket.
  let asking = false;
  const watchdog = setInterval(() => {
    if (asking || !control.publishersDone() || now() - lastAt <= control.quietMs) return;
    asking = true;
    control.brokerIdle().then((idle) => {
      asking = false;
      if (idle && now() - lastAt > control.quietMs) {
        quiet = true;
        sock.close();
      }
    }, () => asking = false);
  }, 50);
  try {
    while (!done()) {
      batchAt = -1;
      const open = await sock.read(onPacket);
      if (!open) {
        if (!quiet) {
          problems.add(
            `subscriber ${name}: connection closed after ${stream.distinct}/${expected} messages`,
          );
        }
        break;
      }
      if (batchAt >= 0) lastAt = batchAt;
      if (out.length > 0) sock.sendOut(out);
    }
    r.endedAt = quiet ? lastAt : now();
  } catch (err) {
    problems.add(`subscriber ${name}: ${err instanceof Error ? err.message : err}`);
  } finally {
    clearInterval(watchdog);
    await sock.disconnect();
  }
  return r;
}
