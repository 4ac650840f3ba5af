/**
 * Process-level behaviour of `main.ts` (issue 2, points 1, 8 and 9): `--help`, refused
 * configurations, flags and `BROKER_*` variables, graceful stop on SIGTERM and SIGINT,
 * the data directory lock, the startup log, and `deno task start` passing flags through.
 *
 * Every broker here is a real child process; every wait is bounded, and every child is
 * killed and awaited even when a test fails.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { LineClient, loginConsumer, publish, receive, RUN_MAIN } from "./helpers.ts";

const ROOT = join(import.meta.dirname ?? ".", "..");
const RUN = RUN_MAIN;
/** Bound on a child's start-up or exit. */
const PROCESS_TIMEOUT_MS = 15_000;
const LISTENING = /Server (consumer|publisher) accepting connections on (.+):(\d+)$/;

/** Options of {@link Proc.spawn}. */
interface SpawnOptions {
  env?: Record<string, string>;
  cwd?: string;
}

/** The end of a child process. */
interface Exit {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** A child process whose stdout is read line by line as it comes. */
class Proc {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  #changed = Promise.withResolvers<void>();
  #ended = false;
  #exited = false;
  #readers: ReadableStreamDefaultReader<string>[] = [];
  #stdout: Promise<void>;
  #stderr: Promise<string>;

  private constructor(child: Deno.ChildProcess) {
    this.child = child;
    child.status.then(() => this.#exited = true);
    this.#stdout = this.#pump(this.#reader(child.stdout));
    this.#stderr = this.#collect(this.#reader(child.stderr));
  }

  /** Starts `deno` with `args`. */
  static spawn(args: string[], { env = {}, cwd = ROOT }: SpawnOptions = {}): Proc {
    return new Proc(
      new Deno.Command(Deno.execPath(), {
        args,
        cwd,
        env: { NO_COLOR: "1", ...env },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn(),
    );
  }

  /** Starts `main.ts` with `args`. */
  static main(args: string[], options?: SpawnOptions): Proc {
    return Proc.spawn([...RUN, ...args], options);
  }

  #reader(stream: ReadableStream<Uint8Array>): ReadableStreamDefaultReader<string> {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    this.#readers.push(reader);
    return reader;
  }

  async #pump(reader: ReadableStreamDefaultReader<string>): Promise<void> {
    let rest = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += value;
        let i: number;
        while ((i = rest.indexOf("\n")) >= 0) {
          this.lines.push(rest.slice(0, i).replace(/\r$/, ""));
          rest = rest.slice(i + 1);
        }
        this.#notify();
      }
    } catch {
      // cancelled
    }
    if (rest) this.lines.push(rest);
    this.#ended = true;
    this.#notify();
  }

  async #collect(reader: ReadableStreamDefaultReader<string>): Promise<string> {
    let text = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        text += value;
      }
    } catch {
      return text; // cancelled
    }
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** The stdout read so far. */
  get stdout(): string {
    return this.lines.join("\n");
  }

  /** Waits for a stdout line matching `re`, searching from line `from`. */
  async waitFor(re: RegExp, from = 0, timeoutMs = PROCESS_TIMEOUT_MS): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (let i = from;;) {
      for (; i < this.lines.length; i++) {
        const m = re.exec(this.lines[i] as string);
        if (m) return m;
      }
      if (this.#ended) {
        throw new Error(`output ended without ${re}:\n${this.stdout}\n${await this.#stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${re} within ${timeoutMs} ms:\n${this.stdout}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        new Promise((r) => timer = setTimeout(r, left)),
      ]).finally(() => clearTimeout(timer));
    }
  }

  /** Waits for both "accepting connections" lines; returns the ports. */
  async listening(): Promise<{ consumer: number; publisher: number; hostname: string }> {
    let consumer = 0;
    let publisher = 0;
    let hostname = "";
    let from = 0;
    while (!(consumer && publisher)) {
      const m = await this.waitFor(LISTENING, from);
      from = this.lines.indexOf(m.input, from) + 1;
      hostname = m[2] as string;
      if (m[1] === "consumer") consumer = Number(m[3]);
      else publisher = Number(m[3]);
    }
    return { consumer, publisher, hostname };
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Sends `signal` if the process still runs. */
  kill(signal: Deno.Signal): void {
    if (this.#exited) return;
    try {
      this.child.kill(signal);
    } catch {
      // exited meanwhile
    }
  }

  /**
   * Waits for the output to end: at most `ms` after the exit, since a grandchild
   * that outlived the process would hold the pipes open.
   */
  async #drain(ms: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const ended = await Promise.race([
      Promise.all([this.#stdout, this.#stderr]).then(() => true),
      new Promise<false>((r) => timer = setTimeout(() => r(false), ms)),
    ]).finally(() => clearTimeout(timer));
    if (!ended) {
      for (const r of this.#readers) await r.cancel().catch(() => {});
      await Promise.all([this.#stdout, this.#stderr]);
    }
    return ended;
  }

  /** Waits for the exit (SIGKILL after `timeoutMs`, then fails) and all output. */
  async exit(timeoutMs = PROCESS_TIMEOUT_MS): Promise<Exit> {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.kill("SIGKILL");
    }, timeoutMs);
    const status = await this.child.status.finally(() => clearTimeout(timer));
    const ended = await this.#drain(2000);
    const stderr = await this.#stderr;
    if (timedOut) {
      throw new Error(`process did not exit within ${timeoutMs} ms:\n${this.stdout}\n${stderr}`);
    }
    if (!ended) {
      throw new Error(
        `the output stayed open after the exit (a process left behind?):\n${this.stdout}`,
      );
    }
    return { code: status.code, signal: status.signal, stdout: this.stdout, stderr };
  }

  /** Test cleanup: kill if still running, and wait for everything. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.kill("SIGKILL");
    await this.child.status;
    await this.#drain(2000);
  }
}

/** A temporary data directory, removed on dispose. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "mb-process-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
  };
}

/** Flags for a broker on free ports of 127.0.0.1 in `dir`, but none of those in `except`. */
function local(dir: string, except: string[] = []): string[] {
  const set = new Set(except.map((a) => /^--[a-z-]+/.exec(a)?.[0]));
  const flags: [string, string][] = [
    ["--data-dir", dir],
    ["--hostname", "127.0.0.1"],
    ["--consumer-port", "0"],
    ["--publisher-port", "0"],
  ];
  return flags.filter(([flag]) => !set.has(flag)).flat();
}

/** Two ports that were free a moment ago. */
function freePorts(): [number, number] {
  const a = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const b = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const ports: [number, number] = [a.addr.port, b.addr.port];
  a.close();
  b.close();
  return ports;
}

/** Runs `main.ts` with a configuration that must be refused; returns its exit. */
async function refused(args: string[], env: Record<string, string> = {}): Promise<Exit> {
  await using dir = await tempDir();
  await using proc = Proc.main([...local(dir.path, args), ...args], { env });
  const exit = await proc.exit();
  assert.notEqual(exit.code, 0, `${args.join(" ")} was accepted:\n${exit.stdout}`);
  assert.doesNotMatch(exit.stdout, /accepting connections/);
  return exit;
}

/** Counts the sends of one message to a subscriber that never acknowledges it. */
async function countSends(
  ports: { consumer: number; publisher: number },
  quietMs: number,
): Promise<number> {
  await using c = await loginConsumer(ports.consumer, "silent");
  await c.send(JSON.stringify({ type: "SUB", topic: "retries" }));
  await c.expect("OK");
  await using p = await LineClient.connect(ports.publisher);
  const id = await publish(p, "retries", "again?");
  const line = `{"msg":"again?","msgId":${id},"topic":"retries","type":"PUB"}`;
  let sends = 0;
  for (;;) {
    const next = await c.next(quietMs).catch((err) => {
      if (/^no line within/.test(err?.message)) return null; // quiet: no more sends
      throw err;
    });
    if (next === null) return sends;
    assert.equal(next, line, `send ${sends + 1}`);
    if (++sends > 50) assert.fail("more than 50 sends");
  }
}

/** Asserts that the peer closes `c` (after a few lines at most, such as a goodbye). */
async function closedByPeer(c: LineClient): Promise<void> {
  for (let i = 0; i < 5; i++) {
    const line = await c.next().catch((err) => {
      if (err instanceof Deno.errors.ConnectionReset) return null;
      throw err;
    });
    if (line === null) return;
  }
  assert.fail("the broker did not close the connection");
}

/** Runs `ps` with `args`; null when there is no `ps` (descendants cannot be listed). */
async function ps(args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command("ps", { args, stdout: "piped", stderr: "null" }).output();
    return new TextDecoder().decode(out.stdout);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** Pids of the live descendants of `pid` (reading /proc directly needs --allow-all). */
async function descendants(pid: number): Promise<number[]> {
  const table = await ps(["-e", "-o", "pid=,ppid="]);
  if (table === null) return [];
  const parent = new Map<number, number>();
  for (const row of table.trim().split("\n")) {
    const [child, pp] = row.trim().split(/\s+/).map(Number);
    if (child !== undefined && pp !== undefined) parent.set(child, pp);
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift() as number;
    for (const [child, pp] of parent) {
      if (pp === p) {
        found.push(child);
        queue.push(child);
      }
    }
  }
  return found;
}

/** SIGKILLs a process this test started, by its pid. */
function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // gone meanwhile
  }
}

/** Whether `pid` runs (a zombie has exited). */
async function alive(pid: number): Promise<boolean> {
  const stat = (await ps(["-o", "stat=", "-p", String(pid)]))?.trim() ?? "";
  return stat !== "" && !stat.startsWith("Z");
}

Deno.test("--help lists every option and exits 0", async () => {
  await using proc = Proc.main(["--help"]);
  const { code, stdout, stderr } = await proc.exit();
  assert.equal(code, 0, stderr);
  assert.match(stdout, /Usage:/);
  const settings = [
    "data-dir",
    "consumer-port",
    "publisher-port",
    "hostname",
    "retry-interval",
    "retry-limit",
    "log-level",
  ];
  for (const flag of settings) {
    assert.match(stdout, new RegExp(`--${flag}\\b`), `--help does not list --${flag}`);
    const env = `BROKER_${flag.replaceAll("-", "_").toUpperCase()}`;
    assert.match(stdout, new RegExp(`\\b${env}\\b`), `--help does not list ${env}`);
  }
  assert.doesNotMatch(stdout, /accepting connections/);
});

Deno.test("a bad flag value stops start-up with a message naming the setting", async () => {
  const cases: [string[], RegExp][] = [
    [["--consumer-port", "abc"], /--consumer-port\b.*abc/],
    [["--publisher-port", "70000"], /--publisher-port\b.*70000/],
    [["--retry-interval", "-5"], /--retry-interval\b/],
    [["--retry-interval=-5"], /--retry-interval\b.*-5/],
    [["--retry-limit", "0"], /--retry-limit\b/],
    [["--log-level", "loud"], /--log-level\b.*loud/],
  ];
  await Promise.all(cases.map(async ([args, message]) => {
    const { stderr, stdout } = await refused(args);
    assert.match(stderr + stdout, message, `${args.join(" ")}: ${stderr}`);
  }));
});

Deno.test("a bad BROKER_* variable stops start-up with a message naming it", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ BROKER_RETRY_LIMIT: "zero" }, /BROKER_RETRY_LIMIT\b.*zero/],
    [{ BROKER_CONSUMER_PORT: "4040x" }, /BROKER_CONSUMER_PORT\b/],
    [{ BROKER_LOG_LEVEL: "loud" }, /BROKER_LOG_LEVEL\b.*loud/],
  ];
  await Promise.all(cases.map(async ([env, message]) => {
    // A flag beats its variable: leave out the flag of the variable under test.
    const except = "BROKER_CONSUMER_PORT" in env ? ["--consumer-port"] : [];
    await using dir = await tempDir();
    await using proc = Proc.main(local(dir.path, except), { env });
    const exit = await proc.exit();
    assert.notEqual(exit.code, 0, `${JSON.stringify(env)} was accepted:\n${exit.stdout}`);
    assert.match(exit.stderr + exit.stdout, message);
  }));
});

Deno.test("an unknown flag or a stray argument is refused", async () => {
  const [unknown, stray] = await Promise.all([refused(["--bogus"]), refused(["extra"])]);
  assert.match(unknown.stderr, /unknown option --bogus/);
  assert.match(stray.stderr, /extra/);
});

Deno.test("BROKER_* variables configure the broker: BROKER_RETRY_LIMIT=2 sends a message twice", async () => {
  await using dir = await tempDir();
  await using proc = Proc.main([], {
    env: {
      BROKER_DATA_DIR: dir.path,
      BROKER_HOSTNAME: "127.0.0.1",
      BROKER_CONSUMER_PORT: "0",
      BROKER_PUBLISHER_PORT: "0",
      BROKER_RETRY_INTERVAL: "100",
      BROKER_RETRY_LIMIT: "2",
    },
  });
  const ports = await proc.listening();
  assert.equal(ports.hostname, "127.0.0.1");
  // The store lives in the configured directory.
  assert.ok((await Deno.stat(join(dir.path, "broker.kv"))).isFile);
  // Four retry intervals of silence after the last send.
  assert.equal(await countSends(ports, 400), 2);
  proc.kill("SIGTERM");
  assert.equal((await proc.exit()).code, 0);
});

Deno.test("a flag beats its BROKER_* variable: --retry-limit 3 over BROKER_RETRY_LIMIT=2", async () => {
  await using dir = await tempDir();
  await using proc = Proc.main([...local(dir.path), "--retry-limit", "3"], {
    env: { BROKER_RETRY_LIMIT: "2", BROKER_RETRY_INTERVAL: "100" },
  });
  const ports = await proc.listening();
  assert.equal(await countSends(ports, 400), 3);
  proc.kill("SIGTERM");
  assert.equal((await proc.exit()).code, 0);
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`${signal} stops gracefully with exit code 0, and a PUB awaiting PUBREL survives`, async () => {
    await using dir = await tempDir();
    let id: number;
    {
      await using proc = Proc.main(local(dir.path));
      const ports = await proc.listening();
      // Live connections on both ports while the signal arrives.
      await using c = await loginConsumer(ports.consumer, "watcher");
      await c.send(JSON.stringify({ type: "SUB", topic: "t" }));
      await c.expect("OK");
      await using p = await LineClient.connect(ports.publisher);
      await p.send(JSON.stringify({ type: "PUB", topic: "t", msg: "kept" }));
      const rec = await p.expectJson();
      assert.equal(rec.type, "PUBREC");
      id = rec.msgId as number;
      proc.kill(signal);
      const { code, stdout, stderr } = await proc.exit();
      assert.equal(code, 0, `${stdout}\n${stderr}`);
      assert.match(stdout, new RegExp(`Received ${signal}`));
      assert.match(stdout, /Stopped; store closed/);
      assert.doesNotMatch(stderr, /error|panic|uncaught/i);
      // The broker closed both connections.
      await closedByPeer(c);
      await closedByPeer(p);
      // Nothing listens on the ports any more.
      await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: ports.consumer }));
    }
    await using proc = Proc.main(local(dir.path));
    const ports = await proc.listening();
    await using p = await LineClient.connect(ports.publisher);
    await p.send(JSON.stringify({ type: "PUBREL", msgId: id }));
    await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
    await using c = await loginConsumer(ports.consumer, "watcher");
    const m = await receive(c);
    assert.deepEqual([m.msgId, m.msg], [id, "kept"]);
    proc.kill(signal);
    assert.equal((await proc.exit()).code, 0);
  });
}

Deno.test("a signal right after the start-up log still stops gracefully", async () => {
  // Whoever waits for "accepting connections" (a test, a supervisor, a container
  // runtime) may stop the broker at once: the signal must not hit the default action.
  await using dir = await tempDir();
  for (const signal of ["SIGTERM", "SIGINT", "SIGTERM", "SIGINT", "SIGTERM"] as const) {
    await using proc = Proc.main(local(dir.path));
    await proc.listening();
    proc.kill(signal);
    const { code, signal: killedBy, stdout } = await proc.exit();
    assert.equal(
      code,
      0,
      `${signal} right after start-up: exit code ${code} (signal ${killedBy}), expected a ` +
        `graceful stop with code 0:\n${stdout}`,
    );
    assert.match(stdout, /Stopped; store closed/);
  }
});

Deno.test("a second broker on the same data directory refuses to start; the first keeps serving", async () => {
  await using dir = await tempDir();
  await using first = Proc.main(local(dir.path));
  const ports = await first.listening();
  await using c = await loginConsumer(ports.consumer, "first");
  await c.send(JSON.stringify({ type: "SUB", topic: "t" }));
  await c.expect("OK");

  await using second = Proc.main(local(dir.path));
  const exit = await second.exit();
  assert.notEqual(exit.code, 0);
  const said = exit.stdout + exit.stderr;
  assert.match(said, /data director/i);
  assert.ok(said.includes(dir.path), said);
  assert.match(said, /lock|in use/i);
  assert.doesNotMatch(said, /accepting connections/);

  // The first broker still serves, connections made before and after.
  await using p = await LineClient.connect(ports.publisher);
  const id = await publish(p, "t", "still here");
  const m = await receive(c);
  assert.deepEqual([m.msgId, m.msg], [id, "still here"]);
  first.kill("SIGTERM");
  assert.equal((await first.exit()).code, 0);
});

Deno.test("the start-up log says what listens where and that the dead letter topic exists", async () => {
  await using dir = await tempDir();
  await using proc = Proc.main(local(dir.path));
  const ports = await proc.listening();
  const log = proc.stdout;
  assert.match(
    log,
    new RegExp(`Server consumer accepting connections on 127\\.0\\.0\\.1:${ports.consumer}`),
  );
  assert.match(
    log,
    new RegExp(`Server publisher accepting connections on 127\\.0\\.0\\.1:${ports.publisher}`),
  );
  assert.match(log, /ConsumerSupervisor is running/);
  assert.match(log, /PublisherSupervisor is running/);
  assert.match(log, /Topic "deadLetterChan" is created/);
  assert.ok(log.includes(join(dir.path, "broker.kv")), `the log does not name the store:\n${log}`);

  // The dead letter topic works: a rejected line arrives there.
  await using c = await loginConsumer(ports.consumer, "auditor");
  await c.send(JSON.stringify({ type: "SUB", topic: "deadLetterChan" }));
  await c.expect("OK");
  await using p = await LineClient.connect(ports.publisher);
  await p.send("this is no json");
  await p.expect("INVALID JSON");
  const dead = await c.expectJson();
  assert.equal(dead.type, "PUB");
  assert.equal(dead.topic, "deadLetterChan");
  assert.ok(JSON.stringify(dead.msg).includes("this is no json"), JSON.stringify(dead));
  proc.kill("SIGTERM");
  assert.equal((await proc.exit()).code, 0);
});

Deno.test("deno task start passes flags through, and SIGTERM leaves no process behind", async () => {
  await using dir = await tempDir();
  const [consumerPort, publisherPort] = freePorts();
  await using task = Proc.spawn([
    "task",
    "start",
    "--data-dir",
    dir.path,
    "--consumer-port",
    String(consumerPort),
    "--publisher-port",
    String(publisherPort),
    "--hostname",
    "127.0.0.1",
  ]);
  const spawned: number[] = [];
  try {
    const ports = await task.listening();
    assert.deepEqual([ports.consumer, ports.publisher, ports.hostname], [
      consumerPort,
      publisherPort,
      "127.0.0.1",
    ]);
    assert.ok((await Deno.stat(join(dir.path, "broker.kv"))).isFile);
    spawned.push(...await descendants(task.child.pid));
    assert.ok(spawned.length > 0, "deno task started no broker process");
    {
      await using c = await loginConsumer(consumerPort, "via-task");
      await c.send(JSON.stringify({ type: "SUB", topic: "t" }));
      await c.expect("OK");
      await using p = await LineClient.connect(publisherPort);
      const id = await publish(p, "t", "through the task");
      const m = await receive(c);
      assert.deepEqual([m.msgId, m.msg], [id, "through the task"]);
    }
    task.kill("SIGTERM");
    const { code, stdout } = await task.exit();
    assert.equal(code, 0, stdout);
    assert.match(stdout, /Received SIGTERM/);
    assert.match(stdout, /Stopped; store closed/);
  } finally {
    // No process may outlive the task: wait a little, then kill what is left (by pid).
    if (!task.exited) {
      // The test failed before the stop: end everything it started.
      spawned.push(...await descendants(task.child.pid));
      task.kill("SIGKILL");
      for (const pid of spawned) killPid(pid);
    }
    const deadline = Date.now() + 5000;
    let left: number[] = [];
    for (;;) {
      left = [];
      for (const pid of spawned) if (await alive(pid)) left.push(pid);
      if (left.length === 0 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const pid of left) killPid(pid);
    assert.deepEqual(left, [], "processes left running after the task stopped");
  }
  await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: consumerPort }));
  // The data directory's lock was released: a new broker can take it over.
  await using next = Proc.main(local(dir.path));
  const again = await next.listening();
  await (await loginConsumer(again.consumer, "via-task")).close();
  next.kill("SIGTERM");
  assert.equal((await next.exit()).code, 0);
});
