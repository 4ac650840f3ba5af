import assert from "node:assert/strict";
import { join } from "node:path";
import { type PasswdIo, promptHidden, readFirstLine, runPasswd } from "./passwd_command.ts";
import { PasswordFile } from "./passwords.ts";

const encoder = new TextEncoder();

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  return ReadableStream.from(chunks.map((c) => encoder.encode(c)));
}

/** An io with `input` on stdin (and `terminal`, if any) that records what is written. */
function fakeIo(
  input: ReadableStream<Uint8Array> = streamOf(),
  terminal: PasswdIo["terminal"] = null,
) {
  const io = {
    stdin: input,
    terminal,
    stdout: "",
    stderr: "",
    out(text: string) {
      io.stdout += text;
    },
    err(text: string) {
      io.stderr += text;
    },
    hash: { iterations: 1000 },
  } satisfies PasswdIo & Record<string, unknown>;
  return io;
}

/** A terminal whose reads return `keys` one chunk at a time. */
function fakeTerminal(...keys: string[]) {
  const raw: boolean[] = [];
  const queue = keys.map((k) => encoder.encode(k));
  return {
    raw,
    setRaw: (on: boolean) => void raw.push(on),
    read(buffer: Uint8Array) {
      const next = queue.shift();
      if (next === undefined) return Promise.resolve(null);
      buffer.set(next);
      return Promise.resolve(next.length);
    },
  };
}

async function withFile(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mb-passwd-" });
  try {
    await fn(join(dir, "passwords"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("passwd FILE USER takes the first line of stdin as the password", async () => {
  await withFile(async (path) => {
    const io = fakeIo(streamOf("two ", "words\r\nignored\n"));
    assert.equal(await runPasswd([path, "alice"], io), 0, io.stderr);
    assert.equal(io.stdout, `Added user alice to ${path}\n`);
    const file = await PasswordFile.load(path);
    assert.equal(await file.verify("alice", "two words"), true);

    const again = fakeIo(streamOf("other"));
    assert.equal(await runPasswd([path, "alice"], again), 0, again.stderr);
    assert.equal(again.stdout, `Changed the password of alice in ${path}\n`);
  });
});

Deno.test("passwd -b takes the password from the command line; -D deletes", async () => {
  await withFile(async (path) => {
    const io = fakeIo();
    assert.equal(await runPasswd(["-b", path, "bob", "hunter 2"], io), 0, io.stderr);
    assert.equal(await (await PasswordFile.load(path)).verify("bob", "hunter 2"), true);
    assert.equal(await runPasswd(["-D", path, "bob"], io), 0, io.stderr);
    assert.match(io.stdout, /Deleted user bob from /);
    assert.deepEqual((await PasswordFile.load(path)).users, []);
    const missing = fakeIo();
    assert.equal(await runPasswd(["-D", path, "bob"], missing), 1);
    assert.equal(missing.stderr, `message_broker passwd: user bob is not in ${path}\n`);
  });
});

Deno.test("passwd refuses bad usage with exit code 2 and the usage text", async () => {
  for (
    const args of [[], ["file"], ["-x", "f", "u"], ["-b", "f", "u"], ["-b", "-D", "f", "u", "p"]]
  ) {
    const io = fakeIo();
    assert.equal(await runPasswd(args, io), 2, args.join(" "));
    assert.match(io.stderr, /^message_broker passwd: .*\n\nUsage: message_broker passwd/);
  }
  const help = fakeIo();
  assert.equal(await runPasswd(["--help"], help), 0);
  assert.match(help.stdout, /^Usage: message_broker passwd FILE USER/);
});

Deno.test("passwd refuses an invalid user, an empty password and empty input (exit 1)", async () => {
  await withFile(async (path) => {
    const cases: [string[], string, RegExp][] = [
      [[path, "bad name"], "pw\n", /invalid username "bad name"/],
      [[path, "alice"], "\n", /password must not be empty/],
      [[path, "alice"], "", /no password on standard input/],
      [[path, "alice"], " padded\n", /must not start or end with white space/],
      [[path, "alice"], "x".repeat(2000), /longer than 1024 bytes/],
    ];
    for (const [args, input, pattern] of cases) {
      const io = fakeIo(streamOf(input));
      assert.equal(await runPasswd(args, io), 1, JSON.stringify(input));
      assert.match(io.stderr, pattern);
    }
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound, "no file was created");
  });
});

Deno.test("passwd reports a malformed password file with its line, and changes nothing", async () => {
  await withFile(async (path) => {
    await Deno.writeTextFile(path, "alice:plain\n");
    const io = fakeIo(streamOf("pw\n"));
    assert.equal(await runPasswd([path, "bob"], io), 1);
    assert.match(io.stderr, new RegExp(`password file ${path}, line 1: expected USER:`));
    assert.equal(await Deno.readTextFile(path), "alice:plain\n");
  });
});

Deno.test("on a terminal the password is asked twice without echo, raw mode restored", async () => {
  await withFile(async (path) => {
    const terminal = fakeTerminal("se", "cret\r", "secret\r");
    const io = fakeIo(undefined, terminal);
    assert.equal(await runPasswd([path, "alice"], io), 0, io.stderr);
    assert.deepEqual(terminal.raw, [true, false, true, false]);
    assert.equal(await (await PasswordFile.load(path)).verify("alice", "secret"), true);
  });
});

Deno.test("on a terminal, different passwords change nothing", async () => {
  await withFile(async (path) => {
    const io = fakeIo(undefined, fakeTerminal("one\r", "two\r"));
    assert.equal(await runPasswd([path, "alice"], io), 1);
    assert.match(io.stderr, /the passwords do not match; nothing changed/);
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  });
});

Deno.test("the hidden prompt handles backspace over multi-byte characters, and Ctrl-C", async () => {
  const io = fakeIo(undefined, fakeTerminal("abé\x7f\x7fc\r"));
  assert.equal(await promptHidden(io, "Password: "), "ac");
  assert.equal(io.stderr, "Password: \n");
  const cancelled = fakeIo(undefined, fakeTerminal("ab\x03"));
  await assert.rejects(promptHidden(cancelled, "Password: "), /cancelled/);
});

Deno.test("readFirstLine reads up to the first line break across chunks", async () => {
  assert.equal(await readFirstLine(streamOf("ab", "c\r", "\nrest")), "abc");
  assert.equal(await readFirstLine(streamOf("no newline")), "no newline");
});
