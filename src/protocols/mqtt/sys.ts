/**
 * `$SYS/broker/...`: the broker's figures, published as retained QoS 0 messages every
 * interval, under the names Mosquitto uses. Clients cannot publish to `$` topics (the
 * topic name rules refuse them), and a filter starting with a wildcard never matches
 * them ([MQTT-4.7.2-1]): a client asks for `$SYS/#` by name.
 *
 * @module
 */
import type { Broker } from "../../core/broker.ts";
import { getLogger } from "../../log.ts";
import type { CommitStats } from "../../store/group_commit.ts";
import { type CommitTimes, roundMs } from "../../store/commit_times.ts";

const log = getLogger("sys");
const encoder = new TextEncoder();

/** The version reported in `$SYS/broker/version`. */
export const BROKER_VERSION = "MessageBroker 0.2.0";

/** The store's commit figures, when the broker has a store that keeps them. */
export interface CommitFigures {
  readonly commitStats: Readonly<CommitStats>;
  readonly commitTimes: CommitTimes;
}

/** Milliseconds to two decimals, as text. */
const ms = (value: number) => roundMs(value).toFixed(2);

/**
 * Starts the `$SYS` publisher; `intervalSec` 0 turns it off. With `store`, also the
 * store's commits (a commit's duration is what every acknowledgement behind it waits):
 * `store/commits/count` and `…/slow` since start, `…/latency/p50` and `…/latency/p99` over
 * the last interval, `…/latency/max` since start, in milliseconds.
 */
export function startSys(
  broker: Broker,
  intervalSec: number,
  connectedClients: () => number,
  store?: CommitFigures,
): { stop(): Promise<void>; publishNow(): Promise<void> } {
  const startedAt = Date.now();
  let timesMark = store?.commitTimes.snapshot();
  let running: Promise<void> | null = null;
  let stopped = false;
  const publishNow = async () => {
    const m = broker.metrics;
    const figures: Record<string, string | number> = {
      "version": BROKER_VERSION,
      "uptime": `${Math.floor((Date.now() - startedAt) / 1000)} seconds`,
      "clients/connected": connectedClients(),
      "clients/total": broker.sessions.count,
      "messages/received": m.messagesReceived,
      "messages/sent": m.messagesSent,
      "messages/stored": m.messagesStored,
      "store/messages/count": broker.storedMessages,
      "store/messages/bytes": broker.storedBytes,
      "bytes/received": m.bytesReceived,
      "bytes/sent": m.bytesSent,
      "retained messages/count": broker.retained.size,
      "subscriptions/count": broker.filterIndex.size,
    };
    if (store) {
      const times = store.commitTimes;
      figures["store/commits/count"] = store.commitStats.atomics;
      figures["store/commits/slow"] = store.commitStats.slow;
      figures["store/commits/latency/p50"] = ms(times.percentile(0.5, timesMark));
      figures["store/commits/latency/p99"] = ms(times.percentile(0.99, timesMark));
      figures["store/commits/latency/max"] = ms(times.maxMs);
      timesMark = times.snapshot();
    }
    for (const [name, value] of Object.entries(figures)) {
      if (stopped) return;
      await broker.publish({
        topic: `$SYS/broker/${name}`,
        payload: encoder.encode(String(value)),
        format: "text",
        qos: 0,
        retain: true,
      }, { origin: "$SYS", user: null, system: true });
    }
  };
  const timer = intervalSec > 0
    ? setInterval(() => {
      running ??= publishNow().catch((err) =>
        log.warning("$SYS publish failed: {error}", { error: String(err) })
      ).finally(() => running = null);
    }, intervalSec * 1000)
    : undefined;
  return {
    // Waits for a round in progress, which publishes nothing more: the store may close.
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running;
    },
    publishNow,
  };
}
