/**
 * Giving memory back after a crowd has arrived or left: the garbage collection frees the JavaScript
 * heap, and glibc's `malloc_trim` the native memory freed into the C allocator (see
 * src/memory_reducer.ts). Each case in a process of its own, with the permissions the
 * tasks grant or without them.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { LIBC_PATHS } from "../src/memory_reducer.ts";
import { ChildBroker, fdLimit, inBatches } from "./helpers.ts";

const PROBE = join(import.meta.dirname ?? ".", "trim_probe.ts");
const hasGlibc = Deno.build.os === "linux" &&
  LIBC_PATHS.some((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });

interface Probe {
  full: number;
  collected: number;
  released: boolean;
  after: number;
}

async function probe(...flags: string[]): Promise<Probe> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, PROBE],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return JSON.parse(text) as Probe;
}

Deno.test({
  name: "with the tasks' --allow-ffi, native memory freed by a collection goes back to the system",
  ignore: !hasGlibc,
  async fn() {
    const r = await probe(`--allow-ffi=${LIBC_PATHS.join(",")}`);
    assert.equal(r.released, true);
    // ~200 MB were freed into the C allocator: the collection alone leaves most resident.
    assert.ok(r.collected - r.after > 100_000, JSON.stringify(r));
  },
});

Deno.test("without --allow-ffi nothing is released", async () => {
  const r = await probe();
  assert.equal(r.released, false);
});

Deno.test({
  name:
    "a broker collects once 1,000 connections have arrived and gone quiet, and again once they have left",
  // The test's end of each connection, plus its own files.
  ignore: fdLimit() < 1_300,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "mb-reducer-" });
    const b = await ChildBroker.start(dir, ["--max-connections-per-address", "2000"]);
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let conns: Deno.TcpConn[] = [];
    let output = "";
    try {
      conns = await inBatches(
        1_000,
        () => Deno.connect({ hostname: "127.0.0.1", port: b.consumerPort }),
      );
      // The reducer waits for 2 s without a connection arriving or leaving.
      await sleep(3_000);
      for (const c of conns) c.close();
      conns = [];
      await sleep(3_000);
    } finally {
      for (const c of conns) c.close();
      output = (await b.stop()).output;
      await Deno.remove(dir, { recursive: true });
    }
    assert.match(output, /Connections went from 0 to 1000: collected garbage/);
    assert.match(output, /Connections went from 1000 to 0: collected garbage/);
  },
});
