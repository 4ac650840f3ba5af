/**
 * MessageBroker's entry point: flags and environment → configuration → a running
 * broker; SIGINT/SIGTERM → graceful stop and exit 0. `message_broker passwd …` manages
 * a password file instead (see src/auth/passwd_command.ts).
 *
 * @module
 */
import { runPasswd } from "./src/auth/passwd_command.ts";
import { ConfigError, envFromDeno, parseConfig } from "./src/config.ts";
import { getLogger, setupLogging } from "./src/log.ts";
import { startBroker } from "./src/server.ts";
import { errorText } from "./src/supervisor.ts";

async function main(): Promise<number> {
  // `message_broker passwd FILE USER` manages the password file and exits.
  if (Deno.args[0] === "passwd") return await runPasswd(Deno.args.slice(1));
  let parsed;
  try {
    parsed = parseConfig(Deno.args, envFromDeno);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`message_broker: ${err.message}\nTry --help for the list of options.`);
    return 2;
  }
  if (parsed.help) {
    console.log(parsed.text);
    return 0;
  }
  const config = parsed.config;
  await setupLogging({ level: config.logLevel, format: config.logFormat });
  const log = getLogger("main");

  // Listen for signals before the servers start: a supervisor may stop us as soon as
  // it sees the "accepting connections" lines.
  const { promise: signalled, resolve } = Promise.withResolvers<Deno.Signal>();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const handlers = signals.map((sig) => {
    const h = () => resolve(sig);
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });

  let running;
  try {
    running = await startBroker(config);
  } catch (err) {
    log.fatal("Could not start: {error}", { error: errorText(err) });
    return 1;
  }
  const sig = await signalled;
  log.info("Received {signal}, stopping", { signal: sig });
  const timeout = setTimeout(() => {
    log.error("Graceful stop took longer than {ms} ms; exiting", { ms: config.shutdownTimeout });
    Deno.exit(1);
  }, config.shutdownTimeout);
  await running.stop();
  clearTimeout(timeout);
  for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  return 0;
}

Deno.exit(await main());
