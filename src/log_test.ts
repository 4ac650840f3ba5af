import assert from "node:assert/strict";
import { getLogger, resetLogging, setupLogging } from "./log.ts";

Deno.test("json format writes one JSON object per line with message and category", async () => {
  const lines: string[] = [];
  try {
    await setupLogging({ level: "info", format: "json", write: (line) => lines.push(line) });
    getLogger("topic").info("created {topic}", { topic: "orders" });
    assert.equal(lines.length, 1);
    const line = lines[0] ?? "";
    assert.ok(line.endsWith("\n") && !line.slice(0, -1).includes("\n"), line);
    const record = JSON.parse(line);
    assert.equal(record.level, "INFO");
    assert.equal(record.logger, "broker.topic");
    assert.equal(record.message, 'created "orders"');
    assert.deepEqual(record.properties, { topic: "orders" });
  } finally {
    await resetLogging();
  }
});

Deno.test("records below the level are dropped", async () => {
  const lines: string[] = [];
  try {
    await setupLogging({ level: "warning", format: "json", write: (line) => lines.push(line) });
    const log = getLogger("transport", "tcp");
    log.debug("dropped");
    log.info("dropped");
    log.warn("kept {n}", { n: 1 });
    log.error("kept {n}", { n: 2 });
    assert.deepEqual(lines.map((line) => JSON.parse(line).message), ["kept 1", "kept 2"]);
  } finally {
    await resetLogging();
  }
});

Deno.test("pretty format shows time, level, category and message, uncoloured off a terminal", async () => {
  const lines: string[] = [];
  try {
    await setupLogging({
      level: "trace",
      format: "pretty",
      color: false,
      write: (line) => lines.push(line),
    });
    getLogger("core").info("listening on {host}", { host: "0.0.0.0" });
    assert.equal(lines.length, 1);
    assert.match(
      lines[0] ?? "",
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[INF\] broker·core: listening on 0\.0\.0\.0\n$/,
    );
  } finally {
    await resetLogging();
  }
});

Deno.test("setupLogging can be called again and LogTape's own info stays quiet", async () => {
  const first: string[] = [];
  const second: string[] = [];
  try {
    await setupLogging({ level: "trace", format: "json", write: (line) => first.push(line) });
    await setupLogging({ level: "trace", format: "json", write: (line) => second.push(line) });
    // LogTape's meta logger would announce each configure() at info.
    assert.deepEqual([first, second], [[], []]);
    getLogger().info("after reconfigure");
    assert.deepEqual([first.length, second.length], [0, 1]);
  } finally {
    await resetLogging();
  }
});
