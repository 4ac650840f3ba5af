import assert from "node:assert/strict";
import { join } from "node:path";
import { DataDirLockedError, openDataDir } from "./data_dir.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "data_dir_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Runs `openDataDir(dir)` in a separate Deno process (another broker) and returns what
 * happened: "opened" or the error's name. A separate process is what the lock guards
 * against, and it keeps the abandoned lock call out of this test's op sanitizer.
 */
async function openInChild(dir: string, scratch: string): Promise<string> {
  const script = join(scratch, "open_data_dir.ts");
  const module = new URL("./data_dir.ts", import.meta.url).href;
  await Deno.writeTextFile(
    script,
    `import { openDataDir } from ${JSON.stringify(module)};
try {
  const d = await openDataDir(Deno.args[0]);
  d.close();
  console.log("opened");
} catch (err) {
  console.log(err instanceof Error ? err.name + ": " + err.message : String(err));
}
Deno.exit(0);
`,
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      new URL("../../deno.json", import.meta.url).pathname,
      "--unstable-kv",
      "--allow-read",
      "--allow-write",
      script,
      dir,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return text;
}

Deno.test("openDataDir creates the directory with mode 0o700 and the KV file with 0o600", async () => {
  await withTempDir(async (tmp) => {
    const dir = join(tmp, "nested", "data");
    const d = await openDataDir(dir);
    try {
      assert.equal(d.path, join(dir, "broker.kv"));
      assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
      assert.equal((await Deno.stat(d.path)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(join(dir, "broker.lock"))).mode! & 0o777, 0o600);
      // The store works.
      assert.equal(typeof await d.store.reserveIds(1), "number");
    } finally {
      d.close();
    }
  });
});

Deno.test("a second broker process on an open data directory gets DataDirLockedError", async () => {
  await withTempDir(async (tmp) => {
    const dir = join(tmp, "data");
    const d = await openDataDir(dir);
    let closed = false;
    try {
      const answer = await openInChild(dir, tmp);
      assert.match(answer, /^DataDirLockedError: /);
      assert.ok(answer.includes(dir), `the message names the directory: ${answer}`);
      d.close();
      closed = true;
      assert.equal(await openInChild(dir, tmp), "opened");
    } finally {
      if (!closed) d.close();
    }
  });
});

Deno.test("a second openDataDir in the same process is refused while the first is open", async () => {
  await withTempDir(async (tmp) => {
    const dir = join(tmp, "data");
    const first = await openDataDir(dir);
    let closed = false;
    try {
      await assert.rejects(openDataDir(dir), DataDirLockedError);
      first.close();
      closed = true;
      const again = await openDataDir(dir);
      again.close();
    } finally {
      if (!closed) first.close();
    }
  });
});

Deno.test("after close() the data directory opens again and keeps its data", async () => {
  await withTempDir(async (tmp) => {
    const dir = join(tmp, "data");
    const first = await openDataDir(dir);
    await first.store.ensureTopic({ name: "kept", nextSeq: 1, createdAt: 1 });
    first.close();
    const second = await openDataDir(dir);
    try {
      assert.equal((await second.store.loadTopic("kept"))?.name, "kept");
    } finally {
      second.close();
    }
  });
});
