/**
 * Run by memory_test.ts in a process of its own: frees ~200 MB of small native
 * allocations (typed arrays' backing stores) and prints the RSS in KB after the garbage
 * collection and after {@link releaseNativeMemory}, and whether that did anything.
 */
import v8 from "node:v8";
import vm from "node:vm";
import { releaseNativeMemory } from "../src/memory_reducer.ts";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;
const rssKb = () => Math.round(Deno.memoryUsage().rss / 1024);

let junk: Uint8Array[] | null = [];
for (let i = 0; i < 200_000; i++) junk.push(new Uint8Array(1000));
const full = rssKb();
junk = null;
gc();
gc();
const collected = rssKb();
const released = releaseNativeMemory();
console.log(JSON.stringify({ full, collected, released, after: rssKb() }));
