/**
 * The broker's configuration: one zod schema fed by CLI flags, then `BROKER_*`
 * environment variables, then defaults (a flag beats the environment, which
 * beats the default). The defaults alone give a working embedded broker.
 *
 * Each setting's flag and variable are derived from its field name
 * (`consumerPort` → `--consumer-port` / `BROKER_CONSUMER_PORT`), so the two
 * can never drift apart.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { PACED_BATCH } from "./store/group_commit.ts";

/** The log levels a broker accepts, lowest first (LogTape's names). */
export const LOG_LEVELS = ["trace", "debug", "info", "warning", "error", "fatal"] as const;

/** The log output formats: readable text, or one JSON object per line. */
export const LOG_FORMATS = ["pretty", "json"] as const;

/** The values of a switch. */
export const ON_OFF = ["on", "off"] as const;

// Strictly decimal: "10s", "1e3", "0x10", "", " 5" are all refused rather than
// half-parsed, so a typo never silently becomes a different number.
const DECIMAL = /^-?[0-9]+$/;

// Timers treat a delay above 2^31-1 ms as 1 ms.
const MAX_TIMER_MS = 2_147_483_647;

/** An integer setting that also accepts its decimal string form. */
function integer(min: number, max: number, fallback: number) {
  return z.union([z.number(), z.string().regex(DECIMAL).transform(Number)])
    .pipe(z.number().int().min(min).max(max))
    .default(fallback);
}

/**
 * The schema of the broker's configuration. Integer fields accept numbers or
 * strictly decimal strings (as they come from flags and the environment);
 * missing fields take their defaults.
 */
export const brokerConfigSchema = z.object({
  dataDir: z.string().min(1).default("./data"),
  hostname: z.string().min(1).default("0.0.0.0"),
  consumerPort: integer(0, 65_535, 4040),
  publisherPort: integer(0, 65_535, 4041),
  retryInterval: integer(1, 86_400_000, 10_000),
  retryLimit: integer(1, 1000, 5),
  logLevel: z.enum(LOG_LEVELS).default("info"),
  logFormat: z.enum(LOG_FORMATS).default("pretty"),
  // Bounds what one connection can make the broker buffer before a newline.
  maxLineBytes: integer(256, 16_777_216, 65_536),
  // Stays under Deno KV's 64 KiB value limit once the message is serialised.
  maxMessageBytes: integer(1, 60_000, 60_000),
  // Capped at the largest setTimeout delay: a longer one would fire at once.
  idleTimeout: integer(0, MAX_TIMER_MS, 0),
  loginAttempts: integer(1, 100, 5),
  deadLetterMax: integer(1, 10_000_000, 10_000),
  // Bounds the memory one slow reader can pin before it is disconnected.
  writeBufferBytes: integer(1024, 1_073_741_824, 1_048_576),
  shutdownTimeout: integer(0, 600_000, 5000),
  // 0 keeps latency first; see GroupCommitter's CommitPacing.
  commitDelay: integer(0, 100, 0),
  // Only writes nobody waits for (GroupCommitter.submit's `deferrable`): on by default.
  streamCommitDelay: integer(0, 100, 4),
  // See TopicOptions.earlyDelivery.
  earlyDelivery: z.enum(ON_OFF).default("on"),
  // --- limits (each bounds what one client can make the broker hold) ---
  // Deno KV keys stop at 2,048 bytes, and a topic name is part of several keys.
  maxTopicBytes: integer(1, 1024, 256),
  maxConnections: integer(1, 1_000_000, 10_000),
  maxConnectionsPerAddress: integer(1, 1_000_000, 1_000),
  loginTimeout: integer(0, MAX_TIMER_MS, 30_000),
  maxPendingPerConnection: integer(1, 1_000_000, 10_000),
  maxSubscriptionsPerConsumer: integer(1, 1_000_000, 1_000),
  maxTopicMessages: integer(1, 1_000_000_000, 1_000_000),
  maxStoreBytes: integer(0, Number.MAX_SAFE_INTEGER, 1_073_741_824),
  maxJsonDepth: integer(1, 1_000, 32),
  // --- authentication, authorisation, TLS (all off by default) ---
  passwordFile: z.string().default(""),
  aclFile: z.string().default(""),
  loginFailureDelay: integer(0, 60_000, 500),
  loginFailureLimit: integer(1, 1_000_000, 10),
  tlsCert: z.string().default(""),
  tlsKey: z.string().default(""),
  tlsConsumerPort: integer(-1, 65_535, -1),
  tlsPublisherPort: integer(-1, 65_535, -1),
  // --- MQTT (3.1.1 and 5.0) on the same topics ---
  // 0 turns the listener off (as Mosquitto's users expect); -1 picks any free port.
  mqttPort: integer(-1, 65_535, 1883),
  mqttWsPort: integer(-1, 65_535, 8083),
  mqttTlsPort: integer(-1, 65_535, 8883),
  mqttWsPath: z.string().regex(/^\/[\x21-\x7e]*$/).default("/mqtt"),
  mqttMaxPacketBytes: integer(1024, 268_435_455, 65_536),
  mqttReceiveMaximum: integer(1, 65_535, 1024),
  mqttMaxInflight: integer(1, 65_535, 1024),
  mqttTopicAliasMaximum: integer(0, 65_535, 64),
  mqttMaxSessionExpiry: integer(0, 4_294_967_295, 1_209_600),
  mqttMaxKeepalive: integer(0, 65_535, 0),
  mqttMaxClientIdBytes: integer(23, 1024, 256),
  mqttMaxRetained: integer(0, 100_000_000, 100_000),
  mqttSysInterval: integer(0, 86_400, 10),
});

/** The broker's validated configuration. */
export type BrokerConfig = z.output<typeof brokerConfigSchema>;

/** A setting's name: a field of {@link BrokerConfig}. */
export type SettingName = keyof BrokerConfig;

/** Help for one setting: its value placeholder, what a valid value is, what it means. */
type SettingHelp = readonly [arg: string, expected: string, meaning: string];

const range = (min: number, max: number) => `an integer from ${min} to ${max}`;

const HELP: Record<SettingName, SettingHelp> = {
  dataDir: ["path", "a non-empty path", "directory of the broker's store"],
  hostname: ["host", "a non-empty host name", "interface to listen on"],
  consumerPort: ["port", range(0, 65_535), "TCP port for consumers (0 = pick a free port)"],
  publisherPort: ["port", range(0, 65_535), "TCP port for publishers (0 = pick a free port)"],
  retryInterval: ["ms", range(1, 86_400_000), "re-send an unacknowledged PUB or PUBREL after this"],
  retryLimit: ["n", range(1, 1000), "sends of a message before suspending the subscription"],
  logLevel: ["level", `one of ${LOG_LEVELS.join(", ")}`, "lowest level logged"],
  logFormat: [
    "format",
    `one of ${LOG_FORMATS.join(", ")}`,
    "pretty text, or json (one JSON object per line)",
  ],
  maxLineBytes: [
    "bytes",
    range(256, 16_777_216),
    "longest input line; a longer one closes the connection",
  ],
  maxMessageBytes: [
    "bytes",
    range(1, 60_000),
    "largest message body in UTF-8 bytes; bigger is refused",
  ],
  idleTimeout: ["ms", range(0, MAX_TIMER_MS), "close connections idle this long (0 = never)"],
  loginAttempts: ["n", range(1, 100), "failed logins before a connection is closed"],
  deadLetterMax: ["n", range(1, 10_000_000), "dead letters kept; the oldest are deleted past it"],
  writeBufferBytes: [
    "bytes",
    range(1024, 1_073_741_824),
    "bytes queued to a slow client before it is dropped",
  ],
  shutdownTimeout: ["ms", range(0, 600_000), "time given to connections to finish on shutdown"],
  commitDelay: [
    "ms",
    range(0, 100),
    `least time between two store commits while fewer than ${PACED_BATCH} writes wait (0 = none)`,
  ],
  streamCommitDelay: [
    "ms",
    range(0, 100),
    "the same while the queue holds only messages delivered already whose publishers have more in flight",
  ],
  earlyDelivery: [
    "switch",
    `one of ${ON_OFF.join(", ")}`,
    "QoS 0/1 messages reach subscribers before their commit (publishers are acknowledged after it)",
  ],
  maxTopicBytes: ["bytes", range(1, 1024), "longest topic name in UTF-8 bytes"],
  maxConnections: ["n", range(1, 1_000_000), "open connections in all; more are refused"],
  maxConnectionsPerAddress: ["n", range(1, 1_000_000), "open connections from one address"],
  loginTimeout: [
    "ms",
    range(0, MAX_TIMER_MS),
    "close a connection not logged in by then (0 = never)",
  ],
  maxPendingPerConnection: [
    "n",
    range(1, 1_000_000),
    "PUBs awaiting PUBREL per publisher connection",
  ],
  maxSubscriptionsPerConsumer: ["n", range(1, 1_000_000), "durable subscriptions per consumer"],
  maxTopicMessages: [
    "n",
    range(1, 1_000_000_000),
    "messages a topic holds; new PUBs are refused past it",
  ],
  maxStoreBytes: [
    "bytes",
    range(0, Number.MAX_SAFE_INTEGER),
    "message bytes the store may hold (logs and pending PUBs); new PUBs are refused past it (0 = no limit)",
  ],
  maxJsonDepth: ["n", range(1, 1_000), "deepest nesting of arrays and objects in a line"],
  passwordFile: [
    "path",
    "a path",
    "password file; turns authentication on (see the passwd command)",
  ],
  aclFile: ["path", "a path", "ACL file: which users may publish and subscribe to which topics"],
  loginFailureDelay: ["ms", range(0, 60_000), "delay before a failed login is answered"],
  loginFailureLimit: [
    "n",
    range(1, 1_000_000),
    "failed logins per address per minute before it is throttled",
  ],
  tlsCert: ["path", "a path", "PEM certificate; with --tls-key, serves TLS"],
  tlsKey: ["path", "a path", "PEM private key of --tls-cert"],
  tlsConsumerPort: [
    "port",
    range(-1, 65_535),
    "TLS port for consumers (-1 = TLS on --consumer-port itself)",
  ],
  mqttPort: ["port", range(-1, 65_535), "MQTT TCP port (0 = off, -1 = any free port)"],
  mqttWsPort: [
    "port",
    range(-1, 65_535),
    "MQTT over WebSocket port (0 = off, -1 = any free port)",
  ],
  mqttTlsPort: [
    "port",
    range(-1, 65_535),
    "MQTT over TLS port, served when --tls-cert/--tls-key are set (0 = off, -1 = any free port)",
  ],
  mqttWsPath: ["path", "a URL path starting with /", "MQTT over WebSocket path"],
  mqttMaxPacketBytes: [
    "bytes",
    range(1024, 268_435_455),
    "largest MQTT packet accepted (v5 Maximum Packet Size)",
  ],
  mqttReceiveMaximum: [
    "n",
    range(1, 65_535),
    "inbound MQTT QoS 1/2 PUBLISHes unacknowledged per connection",
  ],
  mqttMaxInflight: ["n", range(1, 65_535), "outbound MQTT QoS 1/2 messages in flight per session"],
  mqttTopicAliasMaximum: ["n", range(0, 65_535), "inbound MQTT 5 topic aliases per connection"],
  mqttMaxSessionExpiry: [
    "s",
    range(0, 4_294_967_295),
    "longest an MQTT session outlives its connection (also 3.1.1 persistent sessions)",
  ],
  mqttMaxKeepalive: [
    "s",
    range(0, 65_535),
    "largest MQTT keep-alive accepted; larger or 0 is replaced (0 = no cap)",
  ],
  mqttMaxClientIdBytes: ["bytes", range(23, 1024), "longest MQTT client id"],
  mqttMaxRetained: ["n", range(0, 100_000_000), "retained messages kept"],
  mqttSysInterval: ["s", range(0, 86_400), "period of $SYS/broker/... messages (0 = off)"],
  tlsPublisherPort: [
    "port",
    range(-1, 65_535),
    "TLS port for publishers (-1 = TLS on --publisher-port itself)",
  ],
};

const SETTING_NAMES = Object.keys(HELP) as SettingName[];

/** The CLI flag of a setting, without the dashes: `consumerPort` → `consumer-port`. */
export function flagOf(name: SettingName): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The environment variable of a setting: `consumerPort` → `BROKER_CONSUMER_PORT`. */
export function envOf(name: SettingName): string {
  return `BROKER_${flagOf(name).replaceAll("-", "_").toUpperCase()}`;
}

/**
 * A configuration that cannot be used: a bad value, an unknown flag or a
 * stray argument. The message names the setting by flag and variable.
 *
 * @example
 * ```ts
 * // invalid --consumer-port (BROKER_CONSUMER_PORT): expected an integer from 0 to 65535, got "abc"
 * ```
 */
export class ConfigError extends Error {
  /** The setting that was wrong, if the error is about one. */
  readonly setting: SettingName | undefined;

  /** Builds an error about `setting` (if any) with a complete message. */
  constructor(message: string, setting?: SettingName) {
    super(message);
    this.name = "ConfigError";
    this.setting = setting;
  }
}

function invalid(name: SettingName, what: string): ConfigError {
  return new ConfigError(`invalid --${flagOf(name)} (${envOf(name)}): ${what}`, name);
}

/** Validates `input` against the schema, turning the first issue into a {@link ConfigError}. */
function validate(input: Record<string, unknown>): BrokerConfig {
  const result = brokerConfigSchema.safeParse(input);
  if (result.success) return result.data;
  const name = result.error.issues[0]?.path[0];
  if (typeof name !== "string" || !(name in HELP)) {
    throw new ConfigError(`invalid configuration: ${result.error.message}`);
  }
  const setting = name as SettingName;
  throw invalid(setting, `expected ${HELP[setting][1]}, got ${JSON.stringify(input[name])}`);
}

/** The default configuration. */
export const DEFAULTS: Readonly<BrokerConfig> = Object.freeze(brokerConfigSchema.parse({}));

/**
 * A validated configuration from defaults and `overrides`, for tests and
 * embedding.
 *
 * @example
 * ```ts
 * const config = configFor({ consumerPort: 0, publisherPort: 0, retryInterval: 50 });
 * ```
 * @throws {ConfigError} if an override is out of range.
 */
export function configFor(overrides: Partial<BrokerConfig> = {}): BrokerConfig {
  return validate({ ...overrides });
}

/** The `--help` text: usage and every option with its variable, default and meaning. */
export function helpText(): string {
  const left = (name: SettingName) => `  --${flagOf(name)} <${HELP[name][0]}>`;
  const width = Math.max(...SETTING_NAMES.map((n) => left(n).length)) + 2;
  const rows = SETTING_NAMES.map((name) => {
    const value = DEFAULTS[name] === "" ? "(none)" : DEFAULTS[name];
    return `${left(name).padEnd(width)}${HELP[name][2]}\n${" ".repeat(width)}env ${
      envOf(name)
    }, default ${value}`;
  });
  return [
    "MessageBroker: a durable message broker.",
    "",
    "Usage: message_broker [options]",
    "       message_broker passwd FILE USER      add a user or change its password (asked for)",
    "       message_broker passwd -D FILE USER   delete a user (passwd --help for more)",
    "",
    "Each option can also be set by its environment variable; a flag beats the",
    "environment, which beats the default. Flags take --name value or --name=value.",
    "",
    "Options:",
    ...rows,
    `${"  -h, --help".padEnd(width)}print this help and exit`,
    "",
  ].join("\n");
}

/** Reads an environment variable through Deno; pass it to {@link parseConfig}. */
export function envFromDeno(name: string): string | undefined {
  // Deno is started with --allow-env=BROKER_*, so any other name would throw.
  if (!name.startsWith("BROKER_")) throw new RangeError(`not a broker variable: ${name}`);
  return Deno.env.get(name);
}

/** The result of {@link parseConfig}: help was asked for, or a configuration. */
export type ParsedConfig = { help: true; text: string } | { help: false; config: BrokerConfig };

/**
 * Builds the configuration from CLI `args` (without the program name) and the
 * `env` lookup: a flag beats its `BROKER_*` variable, which beats the default.
 * `--help`/`-h` returns the help text instead.
 *
 * @example
 * ```ts
 * const parsed = parseConfig(Deno.args, envFromDeno);
 * if (parsed.help) console.log(parsed.text);
 * ```
 * @throws {ConfigError} on a bad value, an unknown flag or a positional argument.
 */
export function parseConfig(
  args: string[],
  env: (name: string) => string | undefined,
): ParsedConfig {
  const flags = parseFlags(args);
  if (flags.help === true) return { help: true, text: helpText() };
  const input: Record<string, string | undefined> = {};
  for (const name of SETTING_NAMES) {
    const flag = flags[flagOf(name)];
    input[name] = typeof flag === "string" ? flag : env(envOf(name));
  }
  return { help: false, config: validate(input) };
}

function parseFlags(args: string[]): Record<string, string | boolean | undefined> {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const name of SETTING_NAMES) options[flagOf(name)] = { type: "string" };
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (error) {
    throw flagError(error);
  }
}

/** Rewords node:util parseArgs errors in the broker's terms. */
function flagError(error: unknown): ConfigError {
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof Error && "code" in error ? error.code : undefined;
  const quoted = /'([^']*)'/.exec(message)?.[1] ?? "";
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") return new ConfigError(`unknown option ${quoted}`);
  if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    return new ConfigError(
      `unexpected argument ${JSON.stringify(quoted)}: message_broker takes only options`,
    );
  }
  const flag = /^--?([a-z-]+)/.exec(quoted)?.[1];
  const name = SETTING_NAMES.find((n) => flagOf(n) === flag);
  if (name !== undefined) {
    return invalid(
      name,
      `missing value (write --${flag}=VALUE for a value starting with "-")`,
    );
  }
  if (flag === "help" || flag === "h") return new ConfigError(`--help takes no value`);
  return new ConfigError(message.split("\n")[0] ?? message);
}
