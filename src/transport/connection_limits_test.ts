import assert from "node:assert/strict";
import { ConnectionLimits } from "./connection_limits.ts";

Deno.test("connections are refused one past the total and one past the per-address limit", () => {
  const limits = new ConnectionLimits(3, 2);
  assert.equal(limits.admit("10.0.0.1"), null);
  assert.equal(limits.admit("10.0.0.1"), null);
  assert.equal(limits.admit("10.0.0.1"), "too many connections from 10.0.0.1 (limit 2)");
  assert.equal(limits.admit("10.0.0.2"), null);
  assert.equal(limits.admit("10.0.0.3"), "too many connections (limit 3)");
  assert.equal(limits.total, 3);
});

Deno.test("a released connection frees its slot, in all and for its address", () => {
  const limits = new ConnectionLimits(2, 1);
  assert.equal(limits.admit("a"), null);
  assert.equal(limits.admit("b"), null);
  limits.release("a");
  assert.equal(limits.total, 1);
  assert.equal(limits.admit("a"), null);
  assert.equal(limits.admit("c"), "too many connections (limit 2)");
});

Deno.test("onChange is told the total after each admission and release, not after a refusal", () => {
  const totals: number[] = [];
  const limits = new ConnectionLimits(2, 2, (total) => totals.push(total));
  assert.equal(limits.admit("a"), null);
  assert.equal(limits.admit("b"), null);
  assert.notEqual(limits.admit("c"), null);
  limits.release("a");
  limits.release("b");
  assert.deepEqual(totals, [1, 2, 1, 0]);
});
