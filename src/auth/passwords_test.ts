import assert from "node:assert/strict";
import { join } from "node:path";
import {
  DEFAULT_ITERATIONS,
  deleteUser,
  formatLine,
  hashPassword,
  passwordError,
  PasswordFile,
  PasswordFileError,
  setPassword,
} from "./passwords.ts";

/** Tests hash with few iterations; the format and the code path are the same. */
const FAST = { iterations: 1000 };

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mb-passwords-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a new hash uses 210,000 iterations, a 16-byte salt and a 32-byte hash", async () => {
  const h = await hashPassword("correct horse");
  assert.equal(h.iterations, DEFAULT_ITERATIONS);
  assert.equal(DEFAULT_ITERATIONS, 210_000);
  assert.equal(h.salt.length, 16);
  assert.equal(h.hash.length, 32);
  assert.match(
    formatLine("alice", h),
    /^alice:\$pbkdf2-sha256\$210000\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/,
  );
});

Deno.test("PBKDF2-SHA-256 matches a published test vector", async () => {
  // RFC 7914 section 11: PBKDF2-HMAC-SHA-256, P="passwd", S="salt", c=1, first 32 bytes.
  const h = await hashPassword("passwd", { iterations: 1 }, new TextEncoder().encode("salt"));
  const hex = [...h.hash].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  assert.equal(
    hex,
    "55 ac 04 6e 56 e3 08 9f ec 16 91 c2 25 44 b6 05 f9 41 85 21 6d de 04 65 e6 8b 9d 57 c2 0d ac bc",
  );
});

Deno.test("two hashes of one password differ: each has its own random salt", async () => {
  const a = await hashPassword("same", FAST);
  const b = await hashPassword("same", FAST);
  assert.notDeepEqual(a.salt, b.salt);
  assert.notDeepEqual(a.hash, b.hash);
});

Deno.test("verify accepts the right password only, and never an unknown user", async () => {
  const text = formatLine("alice", await hashPassword("open sesame", FAST)) + "\n";
  const file = PasswordFile.parse(text);
  assert.deepEqual(file.users, ["alice"]);
  assert.equal(await file.verify("alice", "open sesame"), true);
  assert.equal(await file.verify("alice", "open sesamE"), false);
  assert.equal(await file.verify("alice", ""), false);
  assert.equal(await file.verify("bob", "open sesame"), false);
});

Deno.test("an unknown user is checked with the iterations of the strongest entry", async () => {
  // Timing must not tell unknown users apart: their (failing) check derives a key with as
  // many iterations as the slowest known hash. Checked by its parameters, not by a clock.
  const lines = [
    formatLine("alice", await hashPassword("pw", { iterations: 2_000 })),
    formatLine("bob", await hashPassword("pw", { iterations: 5_000 })),
  ];
  const file = PasswordFile.parse(lines.join("\n") + "\n");
  assert.equal(file.decoyIterations, 5_000);
  assert.equal(await file.verify("nobody", "pw"), false);
  assert.equal(await file.verify("bob", "pw"), true);
  // An empty file still makes unknown users pay the default work.
  assert.equal(PasswordFile.parse("# nobody yet\n").decoyIterations, 210_000);
});

Deno.test("comments and blank lines are allowed; CRLF line ends too", async () => {
  const line = formatLine("bob", await hashPassword("pw", FAST));
  const file = PasswordFile.parse(`# users\n\n${line}\r\n   \n`);
  assert.deepEqual(file.users, ["bob"]);
  assert.equal(await file.verify("bob", "pw"), true);
});

Deno.test("a malformed line is reported with the file and line number", async () => {
  const good = formatLine("bob", await hashPassword("pw", FAST));
  const carol = good.replace("bob", "carol");
  const cases: [string, RegExp][] = [
    ["alice:secret", /expected USER:\$pbkdf2-sha256\$ITERATIONS\$SALT\$HASH/],
    ["alice:$pbkdf2-sha512$1000$c2FsdHNhbHQ=$AAAA", /expected USER/],
    [good.replace("bob", "bad name"), /invalid username "bad name"/],
    [carol.replace("$1000$", "$0$"), /iterations must be from 1 to 10000000, got 0/],
    [carol.replace(/\$[^$]+\$([^$]+)$/, "$c2FsdA==$$$1"), /salt must be at least 8 bytes/],
    [carol.replace(/[^$]+$/, "AAAA"), /hash must be 32 bytes/],
    [good, /user bob is already on line 2/],
  ];
  for (const [bad, pattern] of cases) {
    const text = `# header\n${good}\n${bad}\n`;
    assert.throws(() => PasswordFile.parse(text, "/etc/mb/passwords"), (err) => {
      assert.ok(err instanceof PasswordFileError);
      assert.match(err.message, /^password file \/etc\/mb\/passwords, line 3: /);
      assert.match(err.message, pattern);
      return true;
    }, bad);
  }
});

Deno.test("load names the file when it cannot be read", async () => {
  await assert.rejects(
    PasswordFile.load("/nonexistent/passwords"),
    /cannot read password file \/nonexistent\/passwords: /,
  );
});

Deno.test("setPassword creates an owner-only file without the plain password", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "passwords");
    assert.equal(await setPassword(path, "alice", "s3cret words", FAST), true);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const text = await Deno.readTextFile(path);
    assert.ok(!text.includes("s3cret"), text);
    assert.match(text, /^alice:\$pbkdf2-sha256\$1000\$/);
    const file = await PasswordFile.load(path);
    assert.equal(await file.verify("alice", "s3cret words"), true);
  });
});

Deno.test("setPassword changes one user and keeps the other lines as they are", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "passwords");
    await Deno.writeTextFile(path, "# team\n", { mode: 0o644 });
    await setPassword(path, "alice", "one", FAST);
    await setPassword(path, "bob", "two", FAST);
    assert.equal(await setPassword(path, "alice", "three", FAST), false);
    const lines = (await Deno.readTextFile(path)).split("\n");
    assert.equal(lines[0], "# team");
    assert.match(lines[1] ?? "", /^alice:/);
    assert.match(lines[2] ?? "", /^bob:/);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600, "rewritten owner-only");
    const file = await PasswordFile.load(path);
    assert.equal(await file.verify("alice", "three"), true);
    assert.equal(await file.verify("alice", "one"), false);
    assert.equal(await file.verify("bob", "two"), true);
    // No temporary file is left behind.
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["passwords"]);
  });
});

Deno.test("setPassword refuses invalid users and passwords, and a malformed file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "passwords");
    await assert.rejects(setPassword(path, "a b", "pw", FAST), RangeError);
    await assert.rejects(setPassword(path, "alice", "", FAST), /must not be empty/);
    await Deno.writeTextFile(path, "garbage\n");
    await assert.rejects(setPassword(path, "alice", "pw", FAST), /line 1/);
    assert.equal(await Deno.readTextFile(path), "garbage\n", "left unchanged");
  });
});

Deno.test("deleteUser removes the user, and reports an absent one", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "passwords");
    await setPassword(path, "alice", "one", FAST);
    await setPassword(path, "bob", "two", FAST);
    assert.equal(await deleteUser(path, "alice"), true);
    assert.equal(await deleteUser(path, "alice"), false);
    assert.deepEqual((await PasswordFile.load(path)).users, ["bob"]);
    await assert.rejects(deleteUser(join(dir, "missing"), "bob"), /cannot read password file/);
  });
});

Deno.test("passwords may hold inner spaces but no control characters or outer white space", () => {
  assert.equal(passwordError("two words"), null);
  assert.equal(passwordError("ünïcödé"), null);
  assert.match(passwordError("") ?? "", /empty/);
  assert.match(passwordError(" lead") ?? "", /white space/);
  assert.match(passwordError("trail ") ?? "", /white space/);
  assert.match(passwordError("tab\there") ?? "", /control characters/);
  assert.match(passwordError("x".repeat(1025)) ?? "", /longer than 1024 bytes/);
});
