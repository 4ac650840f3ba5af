import assert from "node:assert/strict";
import { join } from "node:path";
import { KvStore } from "../store/kv_store.ts";
import { IdAllocator } from "./ids.ts";

function assertStrictlyIncreasing(ids: number[]): void {
  for (let i = 1; i < ids.length; i++) {
    assert.ok(
      (ids[i] as number) > (ids[i - 1] as number),
      `id ${ids[i]} at ${i} follows ${ids[i - 1]}`,
    );
  }
}

Deno.test("ids are unique and increasing across concurrent next() calls spanning several blocks", async () => {
  const store = await KvStore.open(":memory:");
  try {
    const ids = new IdAllocator(store);
    // 3,500 callers at once need four blocks of 1,000.
    const first = await Promise.all(Array.from({ length: 3500 }, () => ids.next()));
    assert.equal(new Set(first).size, first.length);
    assertStrictlyIncreasing(first);
    // Callers in later turns, some while a refill is in flight, keep going up.
    const later: number[] = [];
    for (let round = 0; round < 10; round++) {
      later.push(...await Promise.all(Array.from({ length: 150 }, () => ids.next())));
    }
    // Id 5,000 emptied the fifth block; the next caller waits for the sixth, which the
    // low-water mark already asked for (and no reservation is left in flight).
    later.push(await ids.next());
    const all = [...first, ...later];
    assert.equal(all.length, 5001);
    assert.equal(new Set(all).size, all.length);
    assertStrictlyIncreasing(all);
  } finally {
    store.close();
  }
});

Deno.test("a new allocator on the same store never returns an id already handed out", async () => {
  const store = await KvStore.open(":memory:");
  try {
    const before = new IdAllocator(store);
    const handed = await Promise.all(Array.from({ length: 1200 }, () => before.next()));
    const max = Math.max(...handed);
    // A "restart": the old allocator's unused reserved ids are simply skipped.
    const after = new IdAllocator(store);
    const fresh = await Promise.all(Array.from({ length: 1200 }, () => after.next()));
    for (const id of fresh) assert.ok(id > max, `id ${id} was handed out before the restart`);
    assert.equal(new Set([...handed, ...fresh]).size, 2400);
    // Both allocators running side by side never collide either.
    const mixed = await Promise.all(
      Array.from({ length: 600 }, (_, i) => (i % 2 ? before : after).next()),
    );
    assert.equal(new Set([...handed, ...fresh, ...mixed]).size, 3000);
  } finally {
    store.close();
  }
});

Deno.test("ids survive closing and reopening a store file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ids_test_" });
  try {
    const path = join(dir, "broker.kv");
    let store = await KvStore.open(path);
    const handed = await Promise.all(
      Array.from({ length: 50 }, () => new IdAllocator(store).next()),
    );
    assert.equal(new Set(handed).size, 50, "each allocator reserves its own block");
    store.close();
    store = await KvStore.open(path);
    try {
      const next = await new IdAllocator(store).next();
      assert.ok(next > Math.max(...handed));
    } finally {
      store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mayHaveIssued: every id handed out, by this allocator or an earlier one, and none after", async () => {
  const store = await KvStore.open(":memory:");
  try {
    const first = new IdAllocator(store);
    assert.equal(await first.mayHaveIssued(1), false, "nothing handed out yet");
    const a = await first.next();
    const b = first.tryNext() as number;
    assert.equal(await first.mayHaveIssued(a), true);
    assert.equal(await first.mayHaveIssued(b), true);
    assert.equal(await first.mayHaveIssued(b + 1), false, "reserved, not handed out");
    // A later allocator (a restart) counts everything below its own first block.
    const second = new IdAllocator(store);
    assert.equal(await second.mayHaveIssued(b), true);
    assert.equal(await second.mayHaveIssued(b + 1), true, "the rest of the skipped block");
    const c = await second.next();
    assert.ok(c > b + 1);
    assert.equal(await second.mayHaveIssued(c), true);
    assert.equal(await second.mayHaveIssued(c + 1), false);
  } finally {
    store.close();
  }
});
