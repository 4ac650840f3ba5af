/**
 * Interoperability with Eclipse Mosquitto's command line clients (Debian package
 * `mosquitto-clients`): `mosquitto_pub` and `mosquitto_sub`, run as child processes
 * against a broker started by each test, at MQTT 3.1.1 and 5.0. Covers QoS 0/1/2 both
 * ways, retained messages, wills (the client killed without a DISCONNECT) and persistent
 * sessions (`-c -i id`).
 *
 * A publish waits until the broker holds the subscriber's filter, so it never races the
 * SUBSCRIBE; the clients' `-d` output then shows the QoS of each PUBLISH and its
 * acknowledgements.
 *
 * Without the binaries the tests are ignored with a message, except with `CI=true`, where
 * they fail: `.ci/run` installs the package.
 */
import assert from "node:assert/strict";
import { startTestBroker, type TestBroker, waitFor } from "./helpers.ts";

const CLIENTS = ["mosquitto_sub", "mosquitto_pub"] as const;
/** Seconds `mosquitto_sub -W` waits for its messages before giving up. */
const SUB_WAIT_S = 10;
/** Upper bound on the life of any child process, milliseconds. */
const PROCESS_BOUND_MS = (SUB_WAIT_S + 5) * 1000;

/** True when an executable `name` is in a directory of PATH. */
function onPath(name: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    try {
      const info = Deno.statSync(`${dir}/${name}`);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return true;
    } catch {
      // not there
    }
  }
  return false;
}

const missing = CLIENTS.filter((name) => !onPath(name));
const inCi = Deno.env.get("CI") === "true";
const ignore = missing.length > 0 && !inCi;
if (ignore) {
  console.warn(
    `%cmqtt_mosquitto_test: ${missing.join(" and ")} not found on PATH, so the Mosquitto ` +
      "interoperability tests are IGNORED. Install Debian's mosquitto-clients " +
      "(apt-get install mosquitto-clients) to run them; with CI=true they fail instead.",
    "color: yellow",
  );
}

/** Registers an interoperability test; see the module comment for missing binaries. */
function interop(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name: `mosquitto-clients: ${name}`,
    ignore,
    async fn() {
      if (missing.length > 0) {
        assert.fail(
          `${missing.join(" and ")} not found on PATH with CI=true: ` +
            ".ci/run installs Debian's mosquitto-clients",
        );
      }
      await fn();
    },
  });
}

const TIMEOUT = Symbol("timeout");

/** `promise`'s value, or {@link TIMEOUT} after `ms`; the timer never outlives the call. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof TIMEOUT>((r) => timer = setTimeout(() => r(TIMEOUT), ms));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Splits a text stream into lines (without their "\n"). */
function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      rest += chunk;
      for (let i = rest.indexOf("\n"); i >= 0; i = rest.indexOf("\n")) {
        controller.enqueue(rest.slice(0, i));
        rest = rest.slice(i + 1);
      }
    },
    flush(controller) {
      if (rest !== "") controller.enqueue(rest);
    },
  });
}

/** What a finished client printed, and how it ended. */
interface Finished {
  code: number;
  signal: Deno.Signal | null;
  lines: string[];
  stderr: string;
}

/**
 * A running mosquitto_sub or mosquitto_pub; its stdout is collected line by line. A pipe
 * makes stdout fully buffered in the client, so what it printed is known only once it
 * exits: progress while it runs is read from the broker instead ({@link subscribed}).
 */
class Client {
  readonly #label: string;
  readonly #child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly #status: Promise<Deno.CommandStatus>;
  readonly #stdout: Promise<void>;
  readonly #stderr: Promise<string>;
  #exited = false;

  constructor(command: (typeof CLIENTS)[number], args: string[]) {
    this.#label = `${command} ${args.join(" ")}`;
    const child = new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#status = child.status.then((status) => {
      this.#exited = true;
      return status;
    });
    this.#stdout = (async () => {
      const text = child.stdout.pipeThrough(new TextDecoderStream());
      for await (const line of text.pipeThrough(lineSplitter())) {
        this.lines.push(line);
      }
    })();
    this.#stderr = new Response(child.stderr).text();
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Waits (bounded) for the exit and everything printed; kills the process if it overstays. */
  async finish(ms = PROCESS_BOUND_MS): Promise<Finished> {
    const status = await within(this.#status, ms);
    if (status === TIMEOUT) {
      await this.dispose();
      assert.fail(`${this.#label} still running after ${ms} ms:\n${await this.#output()}`);
    }
    await this.#stdout;
    return {
      code: status.code,
      signal: status.signal,
      lines: this.lines,
      stderr: await this.#stderr,
    };
  }

  /** Sends `signal` (the process may have exited already). */
  kill(signal: Deno.Signal): void {
    if (this.#exited) return;
    try {
      this.#child.kill(signal);
    } catch {
      // exited meanwhile
    }
  }

  /** Kills the process if it still runs and waits until it and its pipes are done. */
  async dispose(): Promise<void> {
    this.kill("SIGKILL");
    await this.#status;
    await this.#stdout.catch(() => {});
    await this.#stderr.catch(() => "");
  }

  async #output(): Promise<string> {
    const stderr = await within(this.#stderr.catch(() => ""), 1000);
    return `${this.lines.join("\n")}\n${stderr === TIMEOUT ? "" : stderr}`;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

const VERSIONS = [["mqttv311", "3.1.1"], ["mqttv5", "v5"]] as const;

/** Common arguments: the test broker, the protocol version, debug output. */
function base(port: number, version: string, clientId: string): string[] {
  return ["-h", "127.0.0.1", "-p", String(port), "-V", version, "-i", clientId, "-d"];
}

/**
 * Waits (bounded) until the broker holds `filter` for the MQTT client id `clientId`,
 * run by `client`; fails at once if that process exits first.
 */
async function subscribed(
  b: TestBroker,
  client: Client,
  clientId: string,
  filter: string,
): Promise<void> {
  await waitFor(
    () => {
      if (b.broker.filterIndex.entriesOf(`mqtt:${clientId}`).some((e) => e.filter === filter)) {
        return true;
      }
      if (client.exited) assert.fail(`${clientId} exited before subscribing to ${filter}`);
      return false;
    },
    `${clientId} subscribed to ${filter}`,
    PROCESS_BOUND_MS,
  );
}

/** Runs mosquitto_pub to completion and checks that it succeeded. */
async function publish(
  port: number,
  version: string,
  clientId: string,
  args: string[],
): Promise<string[]> {
  await using pub = new Client("mosquitto_pub", [...base(port, version, clientId), ...args]);
  const done = await pub.finish();
  assert.equal(done.code, 0, `mosquitto_pub failed:\n${done.lines.join("\n")}\n${done.stderr}`);
  return done.lines;
}

/** Asserts that `lines` has a line matching each of `patterns`, in that order. */
function assertInOrder(lines: string[], patterns: RegExp[]): void {
  let from = 0;
  for (const pattern of patterns) {
    const i = lines.findIndex((l, k) => k >= from && pattern.test(l));
    assert.ok(i >= 0, `no line matching ${pattern} (after line ${from}) in:\n${lines.join("\n")}`);
    from = i + 1;
  }
}

/** The message lines `-v` printed for `topic` ("topic payload"). */
function messages(lines: string[], topic: string): string[] {
  return lines.filter((l) => l.startsWith(`${topic} `));
}

/** What the publisher must have exchanged at each QoS, in order. */
const PUBLISHER_FLOW: Record<0 | 1 | 2, RegExp[]> = {
  0: [/received CONNACK \(0\)/, /sending PUBLISH \(d0, q0,/, /sending DISCONNECT/],
  1: [/received CONNACK \(0\)/, /sending PUBLISH \(d0, q1,/, /received PUBACK/],
  2: [/sending PUBLISH \(d0, q2,/, /received PUBREC/, /sending PUBREL/, /received PUBCOMP/],
};

/**
 * Checks that the subscriber received `count` PUBLISHes at `qos` and, for each (by its
 * packet identifier; the two may interleave), acknowledged it as that QoS wants.
 */
function assertReceivedAt(lines: string[], qos: 0 | 1 | 2, count: number): void {
  const received = new RegExp(`received PUBLISH \\(d0, q${qos}, r0, m(\\d+),`);
  const ids = lines.flatMap((l) => received.exec(l)?.[1] ?? []);
  assert.equal(ids.length, count, `${count} PUBLISHes at QoS ${qos} in:\n${lines.join("\n")}`);
  if (qos > 0) assert.equal(new Set(ids).size, count, "distinct packet identifiers");
  for (const id of ids) {
    const flow = qos === 0 ? [] : qos === 1 ? [new RegExp(`sending PUBACK \\(m${id},`)] : [
      new RegExp(`sending PUBREC \\(m${id},`),
      new RegExp(`received PUBREL \\(Mid: ${id}\\)`),
      new RegExp(`sending PUBCOMP \\(m${id}\\)`),
    ];
    assertInOrder(lines, [new RegExp(`received PUBLISH \\(d0, q${qos}, r0, m${id},`), ...flow]);
  }
}

for (const [version, label] of VERSIONS) {
  for (const qos of [0, 1, 2] as const) {
    interop(`publish and subscribe at QoS ${qos} [${label}]`, async () => {
      await using b = await startTestBroker({ mqttPort: -1 });
      const port = b.mqttPort as number;
      const topic = `interop/${version}/q${qos}`;
      await using sub = new Client("mosquitto_sub", [
        ...base(port, version, `sub-${version}-q${qos}`),
        ...["-t", topic, "-q", String(qos), "-C", "2", "-W", String(SUB_WAIT_S), "-v"],
      ]);
      await subscribed(b, sub, `sub-${version}-q${qos}`, topic);

      const sent = await publish(port, version, `pub-${version}-q${qos}`, [
        ...["-t", topic, "-q", String(qos), "-m", `hello at qos ${qos}`, "--repeat", "2"],
      ]);
      assertInOrder(sent, PUBLISHER_FLOW[qos]);

      const got = await sub.finish();
      assert.equal(got.code, 0, `mosquitto_sub failed:\n${got.lines.join("\n")}\n${got.stderr}`);
      assert.deepEqual(messages(got.lines, topic), [
        `${topic} hello at qos ${qos}`,
        `${topic} hello at qos ${qos}`,
      ]);
      // The broker granted the QoS asked for, then sent both messages at it.
      assertInOrder(got.lines, [
        /received SUBACK/,
        new RegExp(`^Subscribed \\(mid: \\d+\\): ${qos}$`),
        new RegExp(`received PUBLISH \\(d0, q${qos},`),
      ]);
      assertReceivedAt(got.lines, qos, 2);
    });
  }

  interop(`a retained message reaches a later subscriber [${label}]`, async () => {
    await using b = await startTestBroker({ mqttPort: -1 });
    const port = b.mqttPort as number;
    const topic = `interop/${version}/retained`;
    await publish(port, version, `pub-${version}-retain`, [
      ...["-t", topic, "-q", "1", "-r", "-m", "kept for later"],
    ]);
    // Subscribed only now: the message reaches it because it was retained.
    await using sub = new Client("mosquitto_sub", [
      ...base(port, version, `sub-${version}-retain`),
      ...["-t", topic, "-q", "1", "-C", "1", "-W", String(SUB_WAIT_S), "-v"],
    ]);
    const got = await sub.finish();
    assert.equal(got.code, 0, `mosquitto_sub failed:\n${got.lines.join("\n")}\n${got.stderr}`);
    assert.deepEqual(messages(got.lines, topic), [`${topic} kept for later`]);
    // Sent with RETAIN set, as a message kept before the subscription, [MQTT-3.3.1-8] / v5 [MQTT-3.3.1-9].
    assertInOrder(got.lines, [/received SUBACK/, /received PUBLISH \(d0, q1, r1,/]);
  });

  interop(`the will of a client killed without DISCONNECT is published [${label}]`, async () => {
    await using b = await startTestBroker({ mqttPort: -1 });
    const port = b.mqttPort as number;
    const willTopic = `interop/${version}/will`;
    await using watcher = new Client("mosquitto_sub", [
      ...base(port, version, `watcher-${version}`),
      ...["-t", willTopic, "-q", "1", "-C", "1", "-W", String(SUB_WAIT_S), "-v"],
    ]);
    await subscribed(b, watcher, `watcher-${version}`, willTopic);

    await using willer = new Client("mosquitto_sub", [
      ...base(port, version, `willer-${version}`),
      ...["-t", `interop/${version}/idle`, "-W", String(SUB_WAIT_S)],
      ...["--will-topic", willTopic, "--will-payload", "willer dropped", "--will-qos", "1"],
    ]);
    // Connected (its will registered at the CONNECT) and subscribed: now drop it
    // without a DISCONNECT.
    await subscribed(b, willer, `willer-${version}`, `interop/${version}/idle`);
    willer.kill("SIGKILL");
    const killed = await willer.finish();
    assert.equal(killed.signal, "SIGKILL");

    const got = await watcher.finish();
    assert.equal(got.code, 0, `watcher failed:\n${got.lines.join("\n")}\n${got.stderr}`);
    assert.deepEqual(messages(got.lines, willTopic), [`${willTopic} willer dropped`]);
    assertInOrder(got.lines, [/received PUBLISH \(d0, q1, r0,/]);
  });

  interop(
    `a persistent session (-c -i id) gets what was published while away [${label}]`,
    async () => {
      await using b = await startTestBroker({ mqttPort: -1 });
      const port = b.mqttPort as number;
      const topic = `interop/${version}/persistent`;
      const id = `persistent-${version}`;
      const subArgs = [...base(port, version, id), "-c", "-q", "1", "-t", topic];

      // Subscribe, then leave (-E: exit once the SUBACK is in, with a DISCONNECT).
      await using first = new Client("mosquitto_sub", [...subArgs, "-E", "-W", String(SUB_WAIT_S)]);
      const left = await first.finish();
      assert.equal(left.code, 0, `first mosquitto_sub failed:\n${left.lines.join("\n")}`);
      assertInOrder(left.lines, [/received SUBACK/, /sending DISCONNECT/]);

      await publish(port, version, `pub-${version}-away`, [
        ...["-t", topic, "-q", "1", "-m", "queued while away"],
      ]);

      // Back with the same id: the queued message arrives.
      await using second = new Client("mosquitto_sub", [
        ...subArgs,
        ...["-C", "1", "-W", String(SUB_WAIT_S), "-v"],
      ]);
      const got = await second.finish();
      assert.equal(got.code, 0, `second mosquitto_sub failed:\n${got.lines.join("\n")}`);
      assert.deepEqual(messages(got.lines, topic), [`${topic} queued while away`]);
      // DUP may be set if the broker had begun sending it to the leaving connection.
      assertInOrder(got.lines, [/received CONNACK \(0\)/, /received PUBLISH \(d[01], q1, r0,/]);
    },
  );
}
