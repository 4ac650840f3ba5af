/**
 * Faults of the store itself: a disk that fills up, and values of the wrong shape in the
 * KV file. Both over real sockets against a real broker on a real Deno KV file.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  json,
  LineClient,
  loginConsumer,
  publish,
  pubOnly,
  receive,
  startTestBroker,
  subscriber,
  waitFor,
} from "./helpers.ts";

/** Mounts a small tmpfs (root only); returns its path, or null where that is not allowed. */
async function smallDisk(bytes: number): Promise<string | null> {
  const dir = await Deno.makeTempDir({ prefix: "mb-disk-" });
  const out = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${bytes}`, "tmpfs", dir],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => null);
  if (out?.success) return dir;
  await Deno.remove(dir);
  return null;
}

async function unmount(dir: string): Promise<void> {
  await new Deno.Command("umount", { args: [dir] }).output();
  await Deno.remove(dir, { recursive: true });
}

const canMount = await (async () => {
  const d = await smallDisk(64 * 1024);
  if (d) await unmount(d);
  return d !== null;
})();

Deno.test({
  name: "a full disk: PUBs are refused with an error, reads go on, writes recover by themselves",
  ignore: !canMount, // needs root to mount a small tmpfs
  async fn() {
    const disk = await smallDisk(4 * 1024 * 1024) as string;
    try {
      await using b = await startTestBroker({ dataDir: join(disk, "data"), retryInterval: 5000 });
      await using c = await subscriber(b, "ann", "t");
      await using p = await LineClient.connect(b.publisherPort);
      const first = await publish(p, "t", "before the disk filled");
      assert.equal((await receive(c)).msgId, first);

      // Fill the disk with a file of our own, leaving the store no room.
      const filler = join(disk, "filler");
      const f = await Deno.open(filler, { create: true, write: true });
      const block = new Uint8Array(64 * 1024);
      try {
        for (let i = 0; i < 100; i++) await f.write(block);
      } catch {
        // ENOSPC: the disk is full now
      } finally {
        f.close();
      }

      // Large messages make the store need pages it cannot get.
      const big = "x".repeat(50_000);
      let refused: string | null = null;
      const accepted: number[] = [];
      for (let i = 0; i < 200 && refused === null; i++) {
        await p.send(json({ type: "PUB", topic: "t", msg: big }));
        const line = await p.expect(/./);
        if (line.startsWith("ERROR: ")) refused = line;
        else accepted.push(JSON.parse(line).msgId);
      }
      assert.ok(refused, "the broker never refused a PUB on a full disk");
      assert.match(refused, /^ERROR: could not store the message .*send PUB again$/);

      // Reads still work: a new consumer logs in and its stored state is served.
      await using other = await loginConsumer(b.consumerPort, "bob");
      await other.send(json({ type: "UNSUB", topic: "nothing" }));
      await other.expect('ERROR: not subscribed to topic "nothing"');

      // Free the space: the next PUB is accepted without restarting anything.
      await Deno.remove(filler);
      let ok: number | null = null;
      await waitFor(
        async () => {
          await p.send(json({ type: "PUB", topic: "t", msg: "after" }));
          const line = await p.expect(/./);
          if (line.startsWith("ERROR: ")) return false;
          ok = JSON.parse(line).msgId;
          return true;
        },
        "writes to work again",
        5000,
      );
      assert.ok(ok !== null);
      // Everything acknowledged is there: release it all and receive it in order.
      for (const id of [...accepted, ok as number]) {
        await p.send(json({ type: "PUBREL", msgId: id }));
        await p.expect(`{"msgId":${id},"type":"PUBCOMP"}`);
      }
      for (const id of [...accepted, ok as number]) assert.equal((await receive(c)).msgId, id);
    } finally {
      await unmount(disk);
    }
  },
});

Deno.test("values of the wrong shape in the store are reported, quarantined and skipped", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "mb-corrupt-" });
  try {
    let kept: number;
    {
      await using b = await startTestBroker({ dataDir, retryInterval: 5000 });
      await using c = await subscriber(b, "ann", "t");
      await using p = await LineClient.connect(b.publisherPort);
      kept = await publish(p, "t", "good");
      await pubOnly(p, "t", "pending and fine");
      c.close();
      await waitFor(() => b.broker.sessionNames.length === 0, "the session to end");
    }
    // Damage the store the way a bug or another program could.
    const kv = await Deno.openKv(join(dataDir, "broker.kv"));
    await kv.set(["log", "t", 1_000], { bogus: true }); // a log entry of the wrong shape
    await kv.set(["pending", 999_999], 42); // a pending PUB that is a number
    await kv.set(["sub", "t", "mallory"], "garbage"); // a subscription that is a string
    await kv.set(["topic", "u"], { name: "u" }); // a topic head without nextSeq
    kv.close();

    {
      await using b = await startTestBroker({ dataDir, retryInterval: 5000 });
      // It started: the pending PUB of the right shape is there, the number is not.
      assert.equal(b.broker.pendingCount, 1);
      // The consumer resumes and gets the good message; the damaged entry is skipped.
      await using c = await loginConsumer(b.consumerPort, "ann");
      assert.equal((await receive(c)).msgId, kept);
      await c.expectSilence(200);
      // New messages get sequence numbers past the damaged entry, on both topics.
      await using p = await LineClient.connect(b.publisherPort);
      const next = await publish(p, "t", "after the damage");
      assert.equal((await receive(c)).msgId, next);
      await using d = await subscriber(b, "dan", "u");
      await publish(p, "u", "on the topic whose head was damaged");
      await receive(d);
    }
    // The damaged values were moved aside, not lost.
    const after = await Deno.openKv(join(dataDir, "broker.kv"));
    try {
      const q = [];
      for await (const e of after.list({ prefix: ["quarantine"] })) q.push(e.key);
      assert.ok(q.length >= 3, `quarantined: ${JSON.stringify(q)}`);
      assert.equal((await after.get(["log", "t", 1_000])).value, null);
    } finally {
      after.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
