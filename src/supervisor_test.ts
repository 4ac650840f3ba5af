import assert from "node:assert/strict";
import { getLogger } from "./log.ts";
import { errorText, type Restartable, type RestartPolicy, Supervisor } from "./supervisor.ts";

const log = getLogger("supervisor", "test");

/** A child that records its restarts and can be made to fail while restarting. */
class Child implements Restartable {
  readonly name = "test child";
  restarts: number[] = [];
  givenUp: unknown[] = [];
  /** Errors thrown by the next restarts, in order. */
  failRestarts: unknown[] = [];
  /** Resolves the restart in progress; set while one is running. */
  #onRestart: (() => void) | null = null;
  /** When set, restart() waits for the test to call `finishRestart()`. */
  hold = false;
  #release: (() => void) | null = null;

  async restart(): Promise<void> {
    this.restarts.push(Date.now());
    this.#onRestart?.();
    if (this.hold) {
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#release = resolve;
      await promise;
    }
    const err = this.failRestarts.shift();
    if (err !== undefined) throw err;
  }

  giveUp(err: unknown): void {
    this.givenUp.push(err);
  }

  /** Resolves at the next call of restart(). */
  nextRestart(): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#onRestart = () => {
      this.#onRestart = null;
      resolve();
    };
    return promise;
  }

  finishRestart(): void {
    this.#release?.();
    this.#release = null;
  }
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits until `cond` holds, polling every few ms, failing after `timeoutMs`. */
async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await delay(2);
  }
}

function supervisor(policy: Partial<RestartPolicy>): Supervisor {
  return new Supervisor("test", log, policy);
}

Deno.test("a failed child is restarted after the backoff, which doubles with each restart", async () => {
  const sup = supervisor({ minBackoffMs: 20, maxBackoffMs: 1000, maxRestarts: 5 });
  const child = new Child();
  try {
    const t0 = Date.now();
    let restarted = child.nextRestart();
    sup.childFailed(child, new Error("boom"));
    assert.equal(child.restarts.length, 0, "the restart is not immediate");
    await restarted;
    assert.ok(Date.now() - t0 >= 18, `first restart after ${Date.now() - t0} ms`);
    await until(() => sup.restartCount === 1);

    const t1 = Date.now();
    restarted = child.nextRestart();
    sup.childFailed(child, new Error("boom again"));
    await restarted;
    assert.ok(Date.now() - t1 >= 38, `second restart after ${Date.now() - t1} ms`);
    await until(() => sup.restartCount === 2);
    assert.equal(child.givenUp.length, 0);
  } finally {
    sup.close();
  }
});

Deno.test("the backoff never exceeds maxBackoffMs", async () => {
  const sup = supervisor({ minBackoffMs: 5, maxBackoffMs: 10, maxRestarts: 10 });
  const child = new Child();
  try {
    for (let i = 0; i < 5; i++) {
      const restarted = child.nextRestart();
      const t = Date.now();
      sup.childFailed(child, new Error(`fail ${i}`));
      await restarted;
      assert.ok(Date.now() - t < 200, `restart ${i} took ${Date.now() - t} ms`);
      await until(() => sup.restartCount === i + 1);
    }
  } finally {
    sup.close();
  }
});

Deno.test("exceeding the restart intensity calls giveUp and restarts no more", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxBackoffMs: 2, maxRestarts: 2, periodMs: 10_000 });
  const child = new Child();
  try {
    for (let i = 1; i <= 2; i++) {
      sup.childFailed(child, new Error(`fail ${i}`));
      await until(() => sup.restartCount === i);
    }
    const last = new Error("fail 3");
    sup.childFailed(child, last);
    assert.deepEqual(child.givenUp, [last], "given up at once, with the last error");
    await delay(20);
    assert.equal(child.restarts.length, 2);
    assert.equal(sup.restartCount, 2);
  } finally {
    sup.close();
  }
});

Deno.test("failures older than periodMs do not count toward the restart intensity", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxBackoffMs: 1, maxRestarts: 1, periodMs: 30 });
  const child = new Child();
  try {
    sup.childFailed(child, new Error("first"));
    await until(() => sup.restartCount === 1);
    await delay(40);
    sup.childFailed(child, new Error("much later"));
    await until(() => sup.restartCount === 2);
    assert.equal(child.givenUp.length, 0);
  } finally {
    sup.close();
  }
});

Deno.test("failures reported while a restart is pending are merged into it", async () => {
  const sup = supervisor({ minBackoffMs: 10, maxRestarts: 2 });
  const child = new Child();
  try {
    for (let i = 0; i < 5; i++) sup.childFailed(child, new Error(`fail ${i}`));
    await until(() => sup.restartCount === 1);
    await delay(30);
    assert.equal(child.restarts.length, 1);
    assert.equal(child.givenUp.length, 0, "merged reports do not count as restarts");
  } finally {
    sup.close();
  }
});

Deno.test("failures reported while the child is restarting are merged into that restart", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxRestarts: 2 });
  const child = new Child();
  child.hold = true;
  try {
    const restarting = child.nextRestart();
    sup.childFailed(child, new Error("first"));
    await restarting;
    sup.childFailed(child, new Error("during restart"));
    sup.childFailed(child, new Error("during restart again"));
    child.finishRestart();
    await until(() => sup.restartCount === 1);
    await delay(20);
    assert.equal(child.restarts.length, 1);
    assert.equal(child.givenUp.length, 0);
  } finally {
    sup.close();
  }
});

Deno.test("a restart that throws counts as a failure and is retried", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxBackoffMs: 2, maxRestarts: 3 });
  const child = new Child();
  child.failRestarts = [new Error("store unavailable")];
  try {
    sup.childFailed(child, new Error("boom"));
    await until(() => sup.restartCount === 1);
    assert.equal(child.restarts.length, 2);
  } finally {
    sup.close();
  }
});

Deno.test("a child whose restarts keep throwing is given up on", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxBackoffMs: 2, maxRestarts: 3 });
  const child = new Child();
  const err = new Error("store unavailable");
  child.failRestarts = [err, err, err, err, err];
  try {
    sup.childFailed(child, new Error("boom"));
    await until(() => child.givenUp.length === 1);
    assert.equal(child.restarts.length, 3);
    assert.equal(sup.restartCount, 0);
    assert.equal(child.givenUp[0], err);
  } finally {
    sup.close();
  }
});

Deno.test("close() clears the backoff timers of pending restarts", () => {
  const sup = supervisor({ minBackoffMs: 60_000, maxBackoffMs: 60_000 });
  sup.childFailed(new Child(), new Error("boom"));
  sup.childFailed(new Child(), new Error("boom"));
  // The op sanitizer fails this test if a 60 s backoff timer outlives close().
  sup.close();
});

Deno.test("close() cancels pending restarts and later failures are only logged", async () => {
  const sup = supervisor({ minBackoffMs: 30 });
  const child = new Child();
  sup.childFailed(child, new Error("boom"));
  sup.close();
  sup.childFailed(child, new Error("after close"));
  await delay(50);
  assert.equal(child.restarts.length, 0);
  assert.equal(sup.restartCount, 0);
  assert.equal(child.givenUp.length, 0);
});

Deno.test("remove() cancels the pending restart of a child that stopped", async () => {
  const sup = supervisor({ minBackoffMs: 20 });
  const child = new Child();
  const other = new Child();
  try {
    sup.childFailed(child, new Error("boom"));
    sup.childFailed(other, new Error("boom"));
    sup.remove(child);
    await until(() => other.restarts.length === 1);
    await delay(20);
    assert.equal(child.restarts.length, 0);
  } finally {
    sup.close();
  }
});

Deno.test("one failing child does not hold back another's restart", async () => {
  const sup = supervisor({ minBackoffMs: 1, maxBackoffMs: 1, maxRestarts: 1 });
  const a = new Child();
  const b = new Child();
  try {
    sup.childFailed(a, new Error("a1"));
    await until(() => sup.restartCount === 1);
    sup.childFailed(a, new Error("a2")); // a is given up on
    sup.childFailed(b, new Error("b1")); // b has its own intensity
    await until(() => sup.restartCount === 2);
    assert.equal(a.givenUp.length, 1);
    assert.equal(b.restarts.length, 1);
    assert.equal(b.givenUp.length, 0);
  } finally {
    sup.close();
  }
});

Deno.test("errorText describes errors and other thrown values", () => {
  assert.equal(errorText(new TypeError("bad")), "TypeError: bad");
  assert.equal(errorText("plain"), "plain");
  assert.equal(errorText(42), "42");
});
