import assert from "node:assert/strict";
import { LoginThrottle } from "./throttle.ts";

function fakeClock() {
  let now = 1_000_000;
  return { now: () => now, advance: (ms: number) => now += ms };
}

Deno.test("an address is blocked after `limit` failures within the window", () => {
  const clock = fakeClock();
  const t = new LoginThrottle({ limit: 3, now: clock.now });
  for (let i = 0; i < 3; i++) {
    assert.equal(t.isBlocked("10.0.0.1"), false, `before failure ${i + 1}`);
    t.recordFailure("10.0.0.1");
    clock.advance(1000);
  }
  assert.equal(t.isBlocked("10.0.0.1"), true);
  assert.equal(t.isBlocked("10.0.0.2"), false, "other addresses are not affected");
});

Deno.test("the window slides: the block ends when the oldest failure is a minute old", () => {
  const clock = fakeClock();
  const t = new LoginThrottle({ limit: 2, now: clock.now });
  t.recordFailure("a"); // at 0
  clock.advance(30_000);
  t.recordFailure("a"); // at 30 s
  assert.equal(t.isBlocked("a"), true);
  clock.advance(29_999); // 59.999 s after the first failure
  assert.equal(t.isBlocked("a"), true);
  clock.advance(1); // the first one leaves the window
  assert.equal(t.isBlocked("a"), false);
  t.recordFailure("a");
  assert.equal(t.isBlocked("a"), true, "the second and third failures are within a minute");
  clock.advance(60_000);
  assert.equal(t.isBlocked("a"), false);
  assert.equal(t.size, 0, "expired addresses are forgotten");
});

Deno.test("failures older than the window do not count", () => {
  const clock = fakeClock();
  const t = new LoginThrottle({ limit: 2, windowMs: 10_000, now: clock.now });
  for (let i = 0; i < 10; i++) {
    t.recordFailure("a");
    clock.advance(10_000);
    assert.equal(t.isBlocked("a"), false);
  }
});

Deno.test("the number of tracked addresses is bounded; the longest-quiet one goes first", () => {
  const clock = fakeClock();
  const t = new LoginThrottle({ limit: 1, maxAddresses: 3, now: clock.now });
  for (const a of ["a", "b", "c"]) {
    t.recordFailure(a);
    clock.advance(1);
  }
  t.recordFailure("a"); // "a" is now the latest
  t.recordFailure("d");
  assert.equal(t.size, 3);
  assert.equal(t.isBlocked("b"), false, "b was forgotten");
  for (const a of ["a", "c", "d"]) assert.equal(t.isBlocked(a), true, a);
});

Deno.test("a limit below 1 is refused", () => {
  assert.throws(() => new LoginThrottle({ limit: 0 }), /limit must be a positive integer, got 0/);
});
