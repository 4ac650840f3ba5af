/**
 * Assembles a running broker from its configuration: the data directory and its store,
 * the core, and the two JSON-line servers (the top of the seed's supervision tree).
 *
 * @module
 */
import type { BrokerConfig } from "./config.ts";
import { Broker } from "./core/broker.ts";
import type { TopicHooks } from "./core/topic.ts";
import { getLogger } from "./log.ts";
import type { JsonlContext, JsonlHooks } from "./protocols/jsonl/context.ts";
import { serveConsumer } from "./protocols/jsonl/consumer.ts";
import { servePublisher } from "./protocols/jsonl/publisher.ts";
import { type DataDir, openDataDir } from "./store/data_dir.ts";
import { errorText, type RestartPolicy } from "./supervisor.ts";
import { type LineConnection, LineServer } from "./transport/tcp.ts";

/** Extras for tests: failure injection and faster timers. */
export interface StartOptions {
  topicHooks?: TopicHooks;
  jsonlHooks?: JsonlHooks;
  supervisorPolicy?: Partial<RestartPolicy>;
  retentionIntervalMs?: number;
}

/** A running broker. */
export interface RunningBroker {
  readonly broker: Broker;
  /** Actual ports (useful when configured as 0). */
  readonly consumerPort: number;
  readonly publisherPort: number;
  /** Live connections on both ports, with their handlers. */
  readonly connections: ReadonlyMap<LineConnection, Promise<void>>;
  /** Graceful stop: stop accepting, settle in-flight writes, close connections and store. */
  stop(): Promise<void>;
}

const log = getLogger("server");

/** Opens the data directory and starts serving. */
export async function startBroker(
  config: BrokerConfig,
  options: StartOptions = {},
): Promise<RunningBroker> {
  const dir: DataDir = await openDataDir(config.dataDir);
  log.info("Store opened at {path}", { path: dir.path });
  // The store's size on disk, sampled once a second for the --max-store-bytes limit.
  let storeBytes = await dir.sizeBytes();
  const sampler = setInterval(async () => {
    storeBytes = await dir.sizeBytes().catch(() => storeBytes);
  }, 1000);
  const storeFull = () =>
    config.maxStoreBytes > 0 && storeBytes > config.maxStoreBytes
      ? `the store is full (${storeBytes} bytes, limit ${config.maxStoreBytes}): new messages are refused until subscribers catch up`
      : null;
  let broker: Broker;
  try {
    broker = await Broker.start(dir.store, {
      retry: { retryIntervalMs: config.retryInterval, retryLimit: config.retryLimit },
      deadLetterMax: config.deadLetterMax,
      topicHooks: options.topicHooks,
      supervisorPolicy: options.supervisorPolicy,
      retentionIntervalMs: options.retentionIntervalMs,
      maxTopicBytes: config.maxTopicBytes,
      maxTopicMessages: config.maxTopicMessages,
      maxSubscriptionsPerConsumer: config.maxSubscriptionsPerConsumer,
      storeFull,
    });
  } catch (err) {
    clearInterval(sampler);
    dir.close();
    throw err;
  }
  const ctx: JsonlContext = {
    broker,
    loginAttempts: config.loginAttempts,
    maxMessageBytes: config.maxMessageBytes,
    maxPendingPerConnection: config.maxPendingPerConnection,
    maxJsonDepth: config.maxJsonDepth,
    hooks: options.jsonlHooks,
  };
  // Live connections and their handlers, so that a graceful stop can wait for them.
  const connections = new Map<LineConnection, Promise<void>>();
  // Connection limits, in all and per remote address: each connection holds buffers,
  // so their number is what bounds the memory a crowd of clients can take.
  const perAddress = new Map<string, number>();
  const addressOf = (c: LineConnection) => c.remote.slice(0, c.remote.lastIndexOf(":"));
  const admit = (c: LineConnection): string | null => {
    if (connections.size >= config.maxConnections) {
      return `too many connections (limit ${config.maxConnections})`;
    }
    const a = addressOf(c);
    const n = perAddress.get(a) ?? 0;
    if (n >= config.maxConnectionsPerAddress) {
      return `too many connections from ${a} (limit ${config.maxConnectionsPerAddress})`;
    }
    perAddress.set(a, n + 1);
    return null;
  };
  const release = (c: LineConnection) => {
    const a = addressOf(c);
    const n = (perAddress.get(a) ?? 1) - 1;
    if (n > 0) perAddress.set(a, n);
    else perAddress.delete(a);
  };
  const serve = (kind: "consumer" | "publisher", port: number) => {
    const handler = kind === "consumer" ? serveConsumer : servePublisher;
    return new LineServer({
      hostname: config.hostname,
      port,
      maxLineBytes: config.maxLineBytes,
      writeBufferBytes: config.writeBufferBytes,
      idleTimeoutMs: config.idleTimeout,
      async onConnection(conn) {
        log.debug("{kind} connection {id} from {remote}", {
          kind,
          id: conn.id,
          remote: conn.remote,
        });
        const refused = admit(conn);
        if (refused) {
          log.warning("Refused {kind} connection from {remote}: {reason}", {
            kind,
            remote: conn.remote,
            reason: refused,
          });
          conn.send(`ERROR: ${refused}`);
          conn.close(refused);
          return;
        }
        const handling = handler(conn, ctx);
        connections.set(conn, handling);
        try {
          await handling;
        } finally {
          connections.delete(conn);
          release(conn);
        }
      },
      onError(err, conn) {
        log.error("{kind} connection {id} failed: {error}", {
          kind,
          id: conn?.id,
          remote: conn?.remote,
          error: errorText(err),
        });
      },
    });
  };
  const consumers = serve("consumer", config.consumerPort);
  const publishers = serve("publisher", config.publisherPort);
  try {
    consumers.start();
    publishers.start();
  } catch (err) {
    await consumers.close().catch(() => {});
    await broker.close();
    clearInterval(sampler);
    dir.close();
    throw err;
  }
  log.info("ConsumerSupervisor is running...");
  log.info("PublisherSupervisor is running...");
  log.info("Server publisher accepting connections on {hostname}:{port}", {
    hostname: config.hostname,
    port: publishers.port,
  });
  log.info("Server consumer accepting connections on {hostname}:{port}", {
    hostname: config.hostname,
    port: consumers.port,
  });

  let stopping: Promise<void> | null = null;
  const stop = async () => {
    log.info("Stopping: no new connections");
    await Promise.all([consumers.close(), publishers.close()]);
    // Read no new line, but answer every line already taken: a PUB stored during the
    // stop must get its PUBREC, or its publisher could never release it.
    for (const c of connections.keys()) c.stopReading();
    await settleWithin([...connections.values()], config.shutdownTimeout);
    for (const c of connections.keys()) c.close("broker stopping");
    await Promise.all([...connections.keys()].map((c) => c.closed));
    await broker.close();
    clearInterval(sampler);
    dir.close();
    log.info("Stopped; store closed");
  };
  return {
    broker,
    consumerPort: consumers.port,
    publisherPort: publishers.port,
    connections,
    stop: () => stopping ??= stop(),
  };
}

/** Waits for `promises` to settle, or `ms` at most. */
async function settleWithin(promises: Promise<unknown>[], ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((r) => timer = setTimeout(r, ms));
  await Promise.race([Promise.allSettled(promises), timeout]);
  clearTimeout(timer);
}
