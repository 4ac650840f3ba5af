import assert from "node:assert/strict";
import { SegmentIndex } from "./segment_index.ts";

Deno.test("SegmentIndex: segments ending in a range, removed from the head or the middle, bytes summed", () => {
  const index = new SegmentIndex(1);
  // Segments ending at 10, 20, ..., 100, each of 10 messages of `last` bytes in all.
  for (let last = 10; last <= 100; last += 10) index.add(last, last);
  assert.equal(index.coveredFrom, 1);
  assert.equal(index.size, 10);
  // [25, 61): the segments ending at 30, 40, 50 and 60 (the one ending at 20 holds
  // nothing of the range; the one holding 61..70 ends past it).
  assert.deepEqual(index.within(25, 61, 100), { at: 2, lastSeqs: [30, 40, 50, 60] });
  assert.deepEqual(index.within(25, 61, 2), { at: 2, lastSeqs: [30, 40] });
  // From the middle: the others stay, in order.
  assert.equal(index.remove(2, 2), 30 + 40);
  assert.deepEqual(index.within(0, 1000, 100).lastSeqs, [10, 20, 50, 60, 70, 80, 90, 100]);
  // From the head.
  assert.equal(index.remove(0, 3), 10 + 20 + 50);
  assert.deepEqual(index.within(0, 1000, 100), { at: 3, lastSeqs: [60, 70, 80, 90, 100] });
  assert.deepEqual(index.within(0, 60, 100).lastSeqs, [], "nothing ends below 60 any more");
  // Retention rewrote the segment ending at 60 without its first messages.
  index.shrank(60, 25);
  assert.equal(index.remove(3, 1), 60 - 25);
  index.shrank(75, 5); // no segment ends there: nothing changes
  assert.equal(index.remove(4, 4), 70 + 80 + 90 + 100);
  assert.equal(index.size, 0);
});

Deno.test("SegmentIndex: a long run of adds and removals from the head keeps every segment once", () => {
  const index = new SegmentIndex(1);
  let next = 1;
  let removed = 0;
  let bytesRemoved = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 37; i++) index.add(next++, 1);
    const { at, lastSeqs } = index.within(removed + 1, next - 5, 1000);
    assert.equal(lastSeqs[0], removed + 1, `round ${round}: starts where the last ended`);
    bytesRemoved += index.remove(at, lastSeqs.length);
    removed += lastSeqs.length;
    assert.equal(index.size, next - 1 - removed);
  }
  assert.equal(bytesRemoved, removed);
  assert.deepEqual(
    index.within(0, next, 1000).lastSeqs,
    Array.from({ length: 5 }, (_, i) => removed + 1 + i),
  );
});
