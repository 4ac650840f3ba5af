/**
 * TLS over real sockets: the seed's flow on TLS-only ports and on TLS ports beside the
 * plain ones, clients speaking the wrong protocol, limits, and start-up errors. The
 * certificate is made by openssl for this run (see src/transport/test_certificate.ts).
 */
import assert from "node:assert/strict";
import mqtt from "mqtt";
import type { BrokerConfig } from "../src/config.ts";
import { testCertificate, writeTestCertificate } from "../src/transport/test_certificate.ts";
import { ChildBroker, LineClient, startTestBroker, type TestBroker } from "./helpers.ts";

const encoder = new TextEncoder();
const PUBREC = /^\{"msgId":\d+,"type":"PUBREC"\}$/;

/** A line client over TLS, trusting the test certificate. */
class TlsClient {
  readonly conn: Deno.TlsConn;
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #read: Promise<ReadableStreamReadResult<Uint8Array>> | null = null;
  #pending = "";
  #closed = false;

  private constructor(conn: Deno.TlsConn) {
    this.conn = conn;
    this.#reader = conn.readable.getReader();
  }

  static async connect(port: number, hostname = "localhost"): Promise<TlsClient> {
    const { cert } = await testCertificate();
    return new TlsClient(await Deno.connectTls({ hostname, port, caCerts: [cert] }));
  }

  async send(line: string): Promise<void> {
    let bytes = encoder.encode(`${line}\r\n`);
    while (bytes.length > 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  /** The next line, or null at the end of the stream; fails after `timeoutMs`. */
  async next(timeoutMs = 3000): Promise<string | null> {
    const decoder = new TextDecoder();
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const end = this.#pending.indexOf("\n");
      if (end !== -1) {
        const line = this.#pending.slice(0, end).replace(/\r$/, "");
        this.#pending = this.#pending.slice(end + 1);
        return line;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) =>
        timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - performance.now()))
      );
      // A read left pending by a timeout is taken up by the next call.
      this.#read ??= this.#reader.read();
      const result = await Promise.race([this.#read, timeout]).finally(() => clearTimeout(timer));
      if (result === "timeout") throw new Error(`no line within ${timeoutMs} ms`);
      this.#read = null;
      if (result.done) return null;
      this.#pending += decoder.decode(result.value);
    }
  }

  async expect(expected: string | RegExp): Promise<string> {
    const line = await this.next();
    assert.ok(line !== null, `expected ${expected}, got the end of the stream`);
    if (typeof expected === "string") assert.equal(line, expected);
    else assert.match(line, expected);
    return line;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#reader.cancel().catch(() => {});
    try {
      this.conn.close();
    } catch {
      // already closed by the stream
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A temporary directory holding the test certificate, removed on dispose. */
async function certificateDir() {
  const dir = await Deno.makeTempDir({ prefix: "mb-tls-test-" });
  const files = await writeTestCertificate(dir);
  return {
    ...files,
    dir,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A broker serving TLS with the test certificate. */
async function startTlsBroker(
  files: { certFile: string; keyFile: string },
  config: Partial<BrokerConfig> = {},
): Promise<TestBroker> {
  return await startTestBroker({ tlsCert: files.certFile, tlsKey: files.keyFile, ...config });
}

type Client = TlsClient | LineClient;

/** The seed's QoS 2 flow: login, SUB, PUB/PUBREC/PUBREL/PUBCOMP, delivery, PUBREC/PUBCOMP. */
async function seedFlow(consumer: Client, publisher: Client, name: string, topic: string) {
  await consumer.expect("Please login!");
  await consumer.send(`log ${name}`);
  await consumer.expect("Successfully logged in!");
  await consumer.send(JSON.stringify({ type: "SUB", topic }));
  await consumer.expect("OK");

  await publisher.send(JSON.stringify({ type: "PUB", topic, msg: "Hi there!" }));
  const id = JSON.parse(await publisher.expect(PUBREC)).msgId as number;
  await publisher.send(JSON.stringify({ type: "PUBREL", msgId: id }));
  await publisher.expect(`{"msgId":${id},"type":"PUBCOMP"}`);

  await consumer.expect(`{"msg":"Hi there!","msgId":${id},"topic":"${topic}","type":"PUB"}`);
  await consumer.send(JSON.stringify({ type: "PUBREC", msgId: id, topic }));
  await consumer.expect("OK");
  await consumer.expect(`{"msgId":${id},"type":"PUBREL"}`);
  await consumer.send(JSON.stringify({ type: "PUBCOMP", msgId: id, topic }));
  await consumer.expect("OK");
}

/** Reads a raw socket until the server closes it (an end or a reset). */
async function readToClose(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(4096);
  try {
    while (await conn.read(buffer) !== null) {
      // discard: a TLS alert, if anything
    }
  } catch {
    // a reset is a close too
  }
}

Deno.test("the seed's flow works over TLS on both main ports (TLS port -1: TLS only)", async () => {
  await using files = await certificateDir();
  await using b = await startTlsBroker(files);
  assert.equal(b.tlsConsumerPort, b.consumerPort);
  assert.equal(b.tlsPublisherPort, b.publisherPort);
  await using consumer = await TlsClient.connect(b.consumerPort);
  await using publisher = await TlsClient.connect(b.publisherPort, "127.0.0.1");
  await seedFlow(consumer, publisher, "Irina", "meaw");
  assert.ok([...b.connections.keys()].every((c) => c.tls));
});

Deno.test("TLS on ports of their own serves the seed's flow, and plain TCP still works on the main ports", async () => {
  await using files = await certificateDir();
  await using b = await startTlsBroker(files, { tlsConsumerPort: 0, tlsPublisherPort: 0 });
  const ports = [b.consumerPort, b.publisherPort, b.tlsConsumerPort, b.tlsPublisherPort];
  assert.equal(new Set(ports).size, 4, `four distinct ports: ${ports}`);
  {
    await using consumer = await TlsClient.connect(b.tlsConsumerPort!);
    await using publisher = await TlsClient.connect(b.tlsPublisherPort!);
    await seedFlow(consumer, publisher, "tls-user", "over-tls");
  }
  {
    await using consumer = await LineClient.connect(b.consumerPort);
    await using publisher = await LineClient.connect(b.publisherPort);
    await seedFlow(consumer, publisher, "plain-user", "over-tcp");
  }
  {
    // Mixed: a plain publisher feeds a TLS consumer.
    await using consumer = await TlsClient.connect(b.tlsConsumerPort!);
    await using publisher = await LineClient.connect(b.publisherPort);
    await seedFlow(consumer, publisher, "mixed-user", "mixed");
  }
});

Deno.test("without TLS settings there are no TLS ports", async () => {
  await using b = await startTestBroker();
  assert.equal(b.tlsConsumerPort, undefined);
  assert.equal(b.tlsPublisherPort, undefined);
});

Deno.test("a plain-text client on a TLS port is disconnected and the broker keeps serving others", async () => {
  await using files = await certificateDir();
  await using b = await startTlsBroker(files, { tlsPublisherPort: 0 });
  for (const port of [b.consumerPort, b.tlsPublisherPort!]) {
    const plain = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await plain.write(encoder.encode("log Irina\r\n"));
      await readToClose(plain);
    } finally {
      plain.close();
    }
  }
  assert.equal(b.connections.size, 0);
  await using consumer = await TlsClient.connect(b.consumerPort);
  await using publisher = await TlsClient.connect(b.tlsPublisherPort!);
  await seedFlow(consumer, publisher, "after", "still-serving");
});

Deno.test("a TLS client on a plain port fails its handshake cleanly and plain clients are still served", async () => {
  await using files = await certificateDir();
  // The publisher port sends no greeting: the idle timeout ends what the handshake started.
  await using b = await startTlsBroker(files, {
    tlsConsumerPort: 0,
    tlsPublisherPort: 0,
    idleTimeout: 300,
  });
  const { cert } = await testCertificate();
  for (const port of [b.consumerPort, b.publisherPort]) {
    await assert.rejects(async () => {
      const conn = await Deno.connectTls({ hostname: "localhost", port, caCerts: [cert] });
      try {
        await conn.handshake();
      } finally {
        conn.close();
      }
    }, `port ${port}`);
  }
  await using consumer = await LineClient.connect(b.consumerPort);
  await using publisher = await LineClient.connect(b.publisherPort);
  await seedFlow(consumer, publisher, "plain", "still-plain");
});

Deno.test("connection limits count TLS connections too", async () => {
  await using files = await certificateDir();
  await using b = await startTlsBroker(files, { maxConnections: 1 });
  await using first = await TlsClient.connect(b.consumerPort);
  await first.expect("Please login!");
  await using second = await TlsClient.connect(b.publisherPort);
  await second.expect("ERROR: too many connections (limit 1)");
  assert.equal(await second.next(), null);
});

Deno.test("graceful stop closes TLS connections", async () => {
  await using files = await certificateDir();
  const b = await startTlsBroker(files, { tlsConsumerPort: 0 });
  try {
    await using consumer = await TlsClient.connect(b.tlsConsumerPort!);
    await consumer.expect("Please login!");
    await b.stop();
    assert.equal(await consumer.next(), null);
  } finally {
    await b[Symbol.asyncDispose]();
  }
});

Deno.test("a certificate path that cannot be read stops start-up with a message naming the file", async () => {
  await using files = await certificateDir();
  const dataDir = `${files.dir}/data`;
  const missing = `${files.dir}/no-such-cert.pem`;
  await assert.rejects(
    startTestBroker({ dataDir, tlsCert: missing, tlsKey: files.keyFile }),
    { message: new RegExp(`^cannot read the TLS certificate file "${missing}": `) },
  );
  await assert.rejects(
    startTestBroker({ dataDir, tlsCert: files.certFile, tlsKey: files.certFile }),
    { message: `the TLS private key file "${files.certFile}" holds no PEM private key` },
  );
  // Nothing was opened: the files are read before the data directory.
  await assert.rejects(Deno.stat(dataDir), Deno.errors.NotFound);
});

Deno.test("only one of --tls-cert and --tls-key, or a TLS port without them, is a configuration error", async () => {
  await using files = await certificateDir();
  const dataDir = `${files.dir}/data`;
  await assert.rejects(startTestBroker({ dataDir, tlsCert: files.certFile }), {
    name: "ConfigError",
    message:
      "--tls-cert (BROKER_TLS_CERT) is set but --tls-key (BROKER_TLS_KEY) is not: TLS needs both",
  });
  await assert.rejects(startTestBroker({ dataDir, tlsKey: files.keyFile }), {
    name: "ConfigError",
    message:
      "--tls-key (BROKER_TLS_KEY) is set but --tls-cert (BROKER_TLS_CERT) is not: TLS needs both",
  });
  await assert.rejects(startTestBroker({ dataDir, tlsConsumerPort: 4443 }), {
    name: "ConfigError",
    message:
      "--tls-consumer-port (BROKER_TLS_CONSUMER_PORT) is set but TLS is off: set --tls-cert and --tls-key too",
  });
});

Deno.test("the broker process refuses to start with an unreadable certificate and says which file", async () => {
  await using files = await certificateDir();
  const missing = `${files.dir}/missing.pem`;
  await assert.rejects(
    ChildBroker.start(`${files.dir}/data`, ["--tls-cert", missing, "--tls-key", files.keyFile]),
    (err: Error) => {
      assert.match(err.message, /broker did not start/);
      assert.ok(
        err.message.includes(`cannot read the TLS certificate file "${missing}"`),
        err.message,
      );
      return true;
    },
  );
});

Deno.test("the broker process logs where it accepts TLS connections and stops cleanly", async () => {
  await using files = await certificateDir();
  const child = await ChildBroker.start(`${files.dir}/data`, [
    "--tls-cert",
    files.certFile,
    "--tls-key",
    files.keyFile,
    "--tls-consumer-port",
    "0",
    "--tls-publisher-port",
    "0",
  ]);
  const { code, output } = await child.stop("SIGTERM");
  assert.equal(code, 0, output);
  assert.match(output, /Server consumer accepting TLS connections on 127\.0\.0\.1:\d+/);
  assert.match(output, /Server publisher accepting TLS connections on 127\.0\.0\.1:\d+/);
  assert.match(output, /Server consumer accepting connections on 127\.0\.0\.1:\d+/);
});

Deno.test("MQTT over TLS: a client verifying the certificate publishes and subscribes; a plain client is refused", async () => {
  await using files = await certificateDir();
  await using b = await startTlsBroker(files, { mqttPort: -1, mqttTlsPort: -1 });
  const { cert } = await testCertificate();
  const url = `mqtts://localhost:${b.mqttTlsPort}`;
  const sub = await mqtt.connectAsync(url, { ca: cert, clientId: "tls-sub", reconnectPeriod: 0 });
  const got = new Promise<string>((resolve) => sub.on("message", (_t, p) => resolve(String(p))));
  await sub.subscribeAsync("secure/t", { qos: 2 });
  // A plain MQTT client on the same broker meets the same topic.
  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${b.mqttPort}`, {
    clientId: "plain-pub",
    reconnectPeriod: 0,
  });
  await pub.publishAsync("secure/t", "over tls", { qos: 2 });
  assert.equal(await got, "over tls");
  // Plain MQTT on the TLS port gets no CONNACK.
  const raw = await Deno.connect({ hostname: "127.0.0.1", port: b.mqttTlsPort as number });
  await raw.write(new Uint8Array([0x10, 12, 0, 4, 77, 81, 84, 84, 4, 2, 0, 10, 0, 0]));
  const buf = new Uint8Array(16);
  const n = await raw.read(buf).catch(() => null);
  assert.ok(n === null || buf[0] !== 0x20, "no CONNACK in plain text");
  raw.close();
  await pub.endAsync();
  await sub.endAsync();
});
