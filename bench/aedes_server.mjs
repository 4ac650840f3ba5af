// Aedes (https://github.com/moscajs/aedes) as a plain MQTT broker on 127.0.0.1, in
// memory, for `deno task bench --vs aedes`. Run by the bench under Node.js:
//
//   node bench/aedes_server.mjs PORT      listens, prints "aedes VERSION listening on ..."
//   node bench/aedes_server.mjs --check   prints the aedes version found, or why none (exit 3)
//
// aedes is looked up in $AEDES_DIR (a directory where `npm install aedes@1.2.0` was run),
// else by Node's resolution from this file (a node_modules above it, or NODE_PATH). The
// bench never installs it. Aedes 1.x (ESM, `Aedes.createBroker()`) and 0.x (CommonJS,
// `require("aedes")()`) both work.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";

const VERSION_HINT = "1.2.0";

function resolveAedes() {
  const dir = process.env.AEDES_DIR;
  const from = dir ? path.join(path.resolve(dir), "package.json") : import.meta.filename;
  const require = createRequire(from);
  // The package's own directory, from its package.json (exports may hide the file).
  let pkgJson;
  try {
    pkgJson = require.resolve("aedes/package.json");
  } catch {
    // aedes 1.x's exports map hides package.json: find the entry and walk up.
    const entry = require.resolve("aedes");
    let d = path.dirname(entry);
    while (!safeRead(path.join(d, "package.json"))?.includes('"name": "aedes"')) {
      const up = path.dirname(d);
      if (up === d) throw new Error(`no package.json above ${entry}`);
      d = up;
    }
    pkgJson = path.join(d, "package.json");
  }
  const pkg = JSON.parse(readFileSync(pkgJson, "utf8"));
  return { version: pkg.version, entry: require.resolve("aedes") };
}

function safeRead(file) {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

function explain(err) {
  const where = process.env.AEDES_DIR
    ? `in AEDES_DIR=${process.env.AEDES_DIR}`
    : "from bench/ (set AEDES_DIR to the directory where it is installed)";
  return `aedes not found ${where}: ${err.message.split("\n")[0]}\n` +
    `install it with: mkdir -p ~/aedes && (cd ~/aedes && npm install aedes@${VERSION_HINT}) ` +
    "and run the bench with AEDES_DIR=~/aedes";
}

let found;
try {
  found = resolveAedes();
} catch (err) {
  console.error(explain(err));
  process.exit(3);
}

if (process.argv[2] === "--check") {
  console.log(`aedes ${found.version} at ${path.dirname(found.entry)}`);
  process.exit(0);
}

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("usage: node aedes_server.mjs PORT | --check");
  process.exit(2);
}

const mod = await import(pathToFileURL(found.entry).href);
const broker = mod.Aedes?.createBroker ? await mod.Aedes.createBroker() : (mod.default ?? mod)();
const server = net.createServer(broker.handle);
server.listen(port, "127.0.0.1", () => {
  console.log(`aedes ${found.version} listening on 127.0.0.1:${server.address().port}`);
});
const stop = () => {
  server.close();
  broker.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
