import assert from "node:assert/strict";
import { Authenticator, type PasswordVerifier } from "./authenticator.ts";

const verifier: PasswordVerifier = {
  verify: (user, password) => Promise.resolve(user === "alice" && password === "right"),
};

Deno.test("a right password logs in at once", async () => {
  const auth = new Authenticator(verifier, { failureDelayMs: 10_000, failureLimit: 3 });
  assert.deepEqual(await auth.login("10.0.0.1", "alice", "right"), { ok: true });
});

Deno.test("a wrong password and an unknown user fail alike, after the delay", async () => {
  const auth = new Authenticator(verifier, { failureDelayMs: 50, failureLimit: 10 });
  for (const [user, password] of [["alice", "wrong"], ["nobody", "right"]] as const) {
    const start = performance.now();
    const result = await auth.login("10.0.0.1", user, password);
    assert.deepEqual(result, { ok: false, reason: "wrong-credentials" });
    assert.ok(performance.now() - start >= 45, `${user} was answered too early`);
  }
});

Deno.test("the delay ends early when the connection goes away", async () => {
  const auth = new Authenticator(verifier, { failureDelayMs: 60_000, failureLimit: 10 });
  const result = await auth.login("10.0.0.1", "alice", "wrong", Promise.resolve());
  assert.deepEqual(result, { ok: false, reason: "wrong-credentials" });
});

Deno.test("after `failureLimit` failures an address is refused without a check", async () => {
  let now = 0;
  let checks = 0;
  const counting: PasswordVerifier = {
    verify: (u, p) => (checks++, verifier.verify(u, p)),
  };
  const auth = new Authenticator(counting, {
    failureDelayMs: 0,
    failureLimit: 2,
    now: () => now,
  });
  await auth.login("10.0.0.1", "alice", "x");
  assert.equal(auth.isThrottled("10.0.0.1"), false);
  await auth.login("10.0.0.1", "alice", "y");
  assert.equal(auth.isThrottled("10.0.0.1"), true);
  assert.deepEqual(await auth.login("10.0.0.1", "alice", "right"), {
    ok: false,
    reason: "throttled",
  });
  assert.equal(checks, 2, "a throttled login checks no password");
  assert.deepEqual(await auth.login("10.0.0.2", "alice", "right"), { ok: true });
  now += 60_000;
  assert.deepEqual(await auth.login("10.0.0.1", "alice", "right"), { ok: true });
});
