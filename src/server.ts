/**
 * Assembles a running broker from its configuration: the data directory and its store,
 * the core, and the two JSON-line servers (the top of the seed's supervision tree).
 *
 * @module
 */
import { loadAcl } from "./auth/acl.ts";
import { Authenticator } from "./auth/authenticator.ts";
import { type BrokerConfig, ConfigError, envOf, flagOf } from "./config.ts";
import { Broker } from "./core/broker.ts";
import type { TopicHooks } from "./core/topic.ts";
import { getLogger } from "./log.ts";
import type { JsonlContext, JsonlHooks } from "./protocols/jsonl/context.ts";
import { serveConsumer } from "./protocols/jsonl/consumer.ts";
import { servePublisher } from "./protocols/jsonl/publisher.ts";
import { type DataDir, openDataDir } from "./store/data_dir.ts";
import { roundMs } from "./store/commit_times.ts";
import { errorText, type RestartPolicy } from "./supervisor.ts";
import { ConnectionLimits } from "./transport/connection_limits.ts";
import { MemoryReducer } from "./memory_reducer.ts";
import { type LineConnection, LineServer, type TlsPem } from "./transport/tcp.ts";
import { readTlsFiles } from "./transport/tls.ts";
import { MqttClient, type MqttContext } from "./protocols/mqtt/client.ts";
import { RC } from "./protocols/mqtt/reason_codes.ts";
import { startSys } from "./protocols/mqtt/sys.ts";
import { PacketServer } from "./transport/packet_connection.ts";
import type { PacketLink } from "./transport/packet_link.ts";
import { MqttWsServer } from "./transport/websocket.ts";

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
  /**
   * Where consumers can speak TLS (undefined when TLS is off): `consumerPort` itself
   * when `--tls-consumer-port` is -1, else a port of its own beside the plain one.
   */
  readonly tlsConsumerPort?: number;
  /** Where publishers can speak TLS, as {@link tlsConsumerPort}. */
  readonly tlsPublisherPort?: number;
  /** The MQTT port (undefined when MQTT over TCP is off). */
  readonly mqttPort?: number;
  /** The MQTT over TLS port (undefined when it or TLS is off). */
  readonly mqttTlsPort?: number;
  /** The MQTT over WebSocket port (undefined when it is off). */
  readonly mqttWsPort?: number;
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
  // Read before the data directory is locked: a bad ACL file stops start-up with nothing to undo.
  const acl = config.aclFile === "" ? undefined : await loadAcl(config.aclFile);
  if (acl) {
    log.info("ACL loaded from {path}: {rules} rules", {
      path: config.aclFile,
      rules: acl.ruleCount,
    });
  }
  // A missing or malformed password file stops start-up before anything is opened.
  const auth = config.passwordFile === "" ? undefined : await Authenticator.load(
    config.passwordFile,
    { failureDelayMs: config.loginFailureDelay, failureLimit: config.loginFailureLimit },
  );
  // TLS files are read before anything is opened: a bad one leaves nothing to undo.
  const tls = await loadTls(config);
  const dir: DataDir = await openDataDir(config.dataDir, {
    delayMs: config.commitDelay,
    streamDelayMs: config.streamCommitDelay,
  });
  log.info("Store opened at {path}", { path: dir.path });
  let broker: Broker;
  try {
    broker = await Broker.start(dir.store, {
      retry: { retryIntervalMs: config.retryInterval, retryLimit: config.retryLimit },
      deadLetterMax: config.deadLetterMax,
      topicHooks: options.topicHooks,
      earlyDelivery: config.earlyDelivery === "on",
      supervisorPolicy: options.supervisorPolicy,
      retentionIntervalMs: options.retentionIntervalMs,
      maxTopicBytes: config.maxTopicBytes,
      maxTopicMessages: config.maxTopicMessages,
      maxSubscriptionsPerConsumer: config.maxSubscriptionsPerConsumer,
      maxStoreBytes: config.maxStoreBytes,
      maxRetained: config.mqttMaxRetained,
      maxSessionExpirySec: config.mqttMaxSessionExpiry,
      authorizer: acl,
    });
  } catch (err) {
    dir.close();
    throw err;
  }
  const ctx: JsonlContext = {
    broker,
    loginAttempts: config.loginAttempts,
    loginTimeout: config.loginTimeout,
    auth,
    maxMessageBytes: config.maxMessageBytes,
    maxPendingPerConnection: config.maxPendingPerConnection,
    maxJsonDepth: config.maxJsonDepth,
    hooks: options.jsonlHooks,
  };
  // Live connections and their handlers, so that a graceful stop can wait for them.
  const connections = new Map<LineConnection, Promise<void>>();
  // Every accepted socket until it is closed (a handler may end before its socket).
  const sockets = new Set<LineConnection>();
  // A crowd of connections leaving leaves garbage that a quiet broker would keep.
  const reducer = new MemoryReducer({ minPeak: 1000, quietMs: 2000 });
  const limits = new ConnectionLimits(
    config.maxConnections,
    config.maxConnectionsPerAddress,
    (total) => reducer.connections(total),
  );
  const serve = (kind: "consumer" | "publisher", port: number, pem?: TlsPem) => {
    const handler = kind === "consumer" ? serveConsumer : servePublisher;
    return new LineServer({
      hostname: config.hostname,
      port,
      tls: pem,
      maxLineBytes: config.maxLineBytes,
      writeBufferBytes: config.writeBufferBytes,
      idleTimeoutMs: config.idleTimeout,
      async onConnection(conn) {
        log.debug("{kind} connection {id} from {remote}", {
          kind,
          id: conn.id,
          remote: conn.remote,
        });
        // Tracked until its socket is closed, so that stop() leaves nothing behind.
        sockets.add(conn);
        conn.closed.then(() => sockets.delete(conn));
        const refused = limits.admit(conn.address);
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
          limits.release(conn.address);
        }
      },
      onHandshakeError(err, remote) {
        log.warning("{kind} TLS handshake with {remote}: {error}", {
          kind,
          remote: remote ?? "(any peer)",
          error: errorText(err),
        });
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
  // TLS: on the main port itself when its --tls-*-port is -1, else on that port beside
  // the plain one.
  const onMain = (tlsPort: number) => tlsPort === -1 ? tls : undefined;
  const beside = (kind: "consumer" | "publisher", tlsPort: number) =>
    tls && tlsPort >= 0 ? serve(kind, tlsPort, tls) : undefined;
  const consumers = serve("consumer", config.consumerPort, onMain(config.tlsConsumerPort));
  const publishers = serve("publisher", config.publisherPort, onMain(config.tlsPublisherPort));
  const tlsConsumers = beside("consumer", config.tlsConsumerPort);
  const tlsPublishers = beside("publisher", config.tlsPublisherPort);
  const ownTlsPorts = [tlsConsumers, tlsPublishers].filter((s) => s !== undefined);
  const servers: { start(): void; close(): Promise<void>; readonly port: number }[] = [
    consumers,
    publishers,
    ...ownTlsPorts,
  ];
  // --- MQTT
  const mqttCtx: MqttContext = {
    broker,
    auth,
    maxMessageBytes: config.maxMessageBytes,
    maxPacketBytes: config.mqttMaxPacketBytes,
    receiveMaximum: config.mqttReceiveMaximum,
    maxInflight: config.mqttMaxInflight,
    topicAliasMaximum: config.mqttTopicAliasMaximum,
    maxSessionExpirySec: config.mqttMaxSessionExpiry,
    maxKeepAliveSec: config.mqttMaxKeepalive,
    maxClientIdBytes: config.mqttMaxClientIdBytes,
    maxSubscriptions: config.maxSubscriptionsPerConsumer,
    writeBufferBytes: config.writeBufferBytes,
    clients: new Map<string, MqttClient>(),
    port: "mqtt",
    // TCP and TLS connections were admitted by `limits` when they were accepted.
    ended(client) {
      mqttClients.delete(client.link);
      limits.release(client.link.address);
      forgetWhenClosed(client.link);
    },
  };
  /** The clients being served, by connection. */
  const mqttClients = new Map<PacketLink, MqttClient>();
  /** Every MQTT connection until its socket has closed: a stop closes and awaits them. */
  const mqttSockets = new Set<PacketLink>();
  // Asked for only once the connection has ended (or was refused): an idle one keeps no
  // promise for it.
  const forgetWhenClosed = (conn: PacketLink) => conn.closed.then(() => mqttSockets.delete(conn));
  // No promise or closure per connection here: every one is a few dozen bytes for as long
  // as its connection lives (ten thousand idle clients). A client's end is told through
  // its context's `ended`.
  const serveLink = (conn: PacketLink, ctx: MqttContext): void => {
    const client = new MqttClient(conn, ctx);
    client.run(); // its end is told no sooner than a microtask from now
    mqttClients.set(conn, client);
  };
  // Keep Alive timeout: a v5 client is told why (DISCONNECT 0x8D) before the close, but
  // only after its CONNACK, v5 [MQTT-3.14.0-1].
  const onIdle = (conn: PacketLink) => {
    if (conn.protocolVersion === 5 && mqttClients.get(conn)?.connected) {
      conn.send({ cmd: "disconnect", reasonCode: RC.keepAliveTimeout });
    }
  };
  const mqttServer = (port: number, pem: TlsPem | undefined, ctx: MqttContext) =>
    new PacketServer({
      hostname: config.hostname,
      port: Math.max(0, port),
      tls: pem,
      maxPacketBytes: config.mqttMaxPacketBytes,
      writeBufferBytes: config.writeBufferBytes,
      // Until the CONNECT: the time allowed to connect; then the client's keep-alive.
      idleTimeoutMs: config.loginTimeout,
      onIdle,
      onConnection(conn) {
        mqttSockets.add(conn);
        const refused = limits.admit(conn.address);
        if (refused) {
          log.warning("Refused MQTT connection from {remote}: {reason}", {
            remote: conn.remote,
            reason: refused,
          });
          conn.close(refused);
          forgetWhenClosed(conn);
          return;
        }
        try {
          serveLink(conn, ctx);
        } catch (err) {
          limits.release(conn.address);
          forgetWhenClosed(conn);
          throw err;
        }
      },
      onHandshakeError(err, remote) {
        log.warning("MQTT TLS handshake with {remote}: {error}", {
          remote: remote ?? "(any peer)",
          error: errorText(err),
        });
      },
      onError(err, conn) {
        log.error("MQTT connection {id} failed: {error}", {
          id: conn?.id,
          remote: conn?.remote,
          error: errorText(err),
        });
      },
    });
  const mqtt = config.mqttPort === 0 ? undefined : mqttServer(config.mqttPort, undefined, mqttCtx);
  // MQTT over TLS (conventionally 8883) when the broker has a certificate.
  const mqttTls = tls && config.mqttTlsPort !== 0
    ? mqttServer(config.mqttTlsPort, tls, { ...mqttCtx, port: "mqtt-tls" })
    : undefined;
  if (mqttTls) servers.push(mqttTls);
  if (mqtt) servers.push(mqtt);
  // WebSocket connections are admitted and released by their server.
  const wsCtx: MqttContext = {
    ...mqttCtx,
    port: "mqtt-ws",
    ended(client) {
      mqttClients.delete(client.link);
      forgetWhenClosed(client.link);
    },
  };
  const mqttWs = config.mqttWsPort === 0 ? undefined : new MqttWsServer({
    hostname: config.hostname,
    port: Math.max(0, config.mqttWsPort),
    path: config.mqttWsPath,
    maxPacketBytes: config.mqttMaxPacketBytes,
    writeBufferBytes: config.writeBufferBytes,
    idleTimeoutMs: config.loginTimeout,
    onIdle,
    // Admitted before the upgrade (503 when refused), released when it closes.
    limits,
    onConnection(conn) {
      mqttSockets.add(conn);
      try {
        serveLink(conn, wsCtx);
      } catch (err) {
        forgetWhenClosed(conn);
        throw err;
      }
    },
    onRefused(remote, reason) {
      log.warning("Refused MQTT WebSocket connection from {remote}: {reason}", { remote, reason });
    },
    onError(err, conn) {
      log.error("MQTT WebSocket connection {id} failed: {error}", {
        id: conn?.id,
        remote: conn?.remote,
        error: errorText(err),
      });
    },
  });
  if (mqttWs) servers.push(mqttWs);
  try {
    for (const s of servers) s.start();
  } catch (err) {
    await Promise.all(servers.map((s) => s.close().catch(() => {})));
    await broker.close();
    dir.close();
    throw err;
  }
  log.info("ConsumerSupervisor is running...");
  log.info("PublisherSupervisor is running...");
  const announce = (kind: string, server: LineServer | undefined, secure: boolean) => {
    if (!server) return;
    const what = secure ? "TLS connections" : "connections";
    log.info(`Server {kind} accepting ${what} on {hostname}:{port}`, {
      kind,
      hostname: config.hostname,
      port: server.port,
    });
  };
  announce("publisher", publishers, onMain(config.tlsPublisherPort) !== undefined);
  announce("consumer", consumers, onMain(config.tlsConsumerPort) !== undefined);
  announce("publisher", tlsPublishers, true);
  announce("consumer", tlsConsumers, true);
  if (mqtt) {
    log.info("Server mqtt accepting MQTT 3.1.1 and 5.0 connections on {hostname}:{port}", {
      hostname: config.hostname,
      port: mqtt.port,
    });
  }
  if (mqttTls) {
    log.info("Server mqtt-tls accepting MQTT TLS connections on {hostname}:{port}", {
      hostname: config.hostname,
      port: mqttTls.port,
    });
  }
  if (mqttWs) {
    log.info("Server mqtt-ws accepting MQTT over WebSocket on ws://{hostname}:{port}{path}", {
      hostname: config.hostname,
      port: mqttWs.port,
      path: config.mqttWsPath,
    });
  }
  const sys = startSys(broker, config.mqttSysInterval, () => mqttClients.size, dir.store);

  let stopping: Promise<void> | null = null;
  const stop = async () => {
    log.info("Stopping: no new connections");
    reducer.stop();
    await sys.stop();
    await Promise.all(servers.map((s) => s.close()));
    for (const c of mqttClients.keys()) c.stopReading();
    // Read no new line, but answer every line already taken: a PUB stored during the
    // stop must get its PUBREC, or its publisher could never release it.
    for (const c of connections.keys()) c.stopReading();
    await settleWithin(
      [...connections.values(), ...[...mqttClients.values()].map((c) => c.finished)],
      config.shutdownTimeout,
    );
    for (const c of sockets) c.close("broker stopping");
    for (const c of mqttSockets) c.close("broker stopping");
    await Promise.all([...sockets, ...mqttSockets].map((c) => c.closed));
    await Promise.allSettled([...mqttClients.values()].map((c) => c.finished));
    await broker.close();
    const c = dir.store.commitStats;
    const t = dir.store.commitTimes;
    dir.close();
    log.info(
      "Stopped; store closed after {atomics} commits of {operations} operations and {mutations} keys written; " +
        "commit time p50 {p50} ms, p99 {p99} ms, max {max} ms; {slow} slow",
      {
        ...c,
        p50: roundMs(t.percentile(0.5)),
        p99: roundMs(t.percentile(0.99)),
        max: roundMs(t.maxMs),
      },
    );
  };
  return {
    broker,
    consumerPort: consumers.port,
    publisherPort: publishers.port,
    tlsConsumerPort: tls ? (tlsConsumers ?? consumers).port : undefined,
    tlsPublisherPort: tls ? (tlsPublishers ?? publishers).port : undefined,
    mqttPort: mqtt?.port,
    mqttWsPort: mqttWs?.port,
    mqttTlsPort: mqttTls?.port,
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

/**
 * The TLS certificate and key when TLS is on (both --tls-cert and --tls-key set), read
 * once at start-up; undefined when it is off.
 *
 * @throws {ConfigError} if only one of the two is set, or a TLS port is set without them
 * @throws {Error} naming the file that cannot be read or holds no PEM block
 */
async function loadTls(config: BrokerConfig): Promise<TlsPem | undefined> {
  const option = (name: "tlsCert" | "tlsKey" | "tlsConsumerPort" | "tlsPublisherPort") =>
    `--${flagOf(name)} (${envOf(name)})`;
  if (config.tlsCert === "" && config.tlsKey === "") {
    for (const name of ["tlsConsumerPort", "tlsPublisherPort"] as const) {
      if (config[name] >= 0) {
        throw new ConfigError(
          `${option(name)} is set but TLS is off: set --tls-cert and --tls-key too`,
          name,
        );
      }
    }
    return undefined;
  }
  if (config.tlsCert === "" || config.tlsKey === "") {
    const missing = config.tlsCert === "" ? "tlsCert" : "tlsKey";
    const set = missing === "tlsCert" ? "tlsKey" : "tlsCert";
    throw new ConfigError(
      `${option(set)} is set but ${option(missing)} is not: TLS needs both`,
      missing,
    );
  }
  return await readTlsFiles(config.tlsCert, config.tlsKey);
}
