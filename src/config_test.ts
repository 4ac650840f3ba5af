import assert from "node:assert/strict";
import {
  type BrokerConfig,
  ConfigError,
  configFor,
  DEFAULTS,
  envOf,
  flagOf,
  helpText,
  parseConfig,
} from "./config.ts";

type Env = (name: string) => string | undefined;

const noEnv: Env = () => undefined;

function envOfMap(vars: Record<string, string>): Env {
  return (name) => vars[name];
}

function configOf(args: string[], env = noEnv): BrokerConfig {
  const parsed = parseConfig(args, env);
  assert.equal(parsed.help, false);
  return parsed.config;
}

function configError(args: string[], env = noEnv): ConfigError {
  let caught: unknown;
  try {
    parseConfig(args, env);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${caught}`);
  return caught;
}

Deno.test("no flags and no environment give the defaults", () => {
  assert.deepEqual(configOf([]), {
    dataDir: "./data",
    hostname: "0.0.0.0",
    consumerPort: 4040,
    publisherPort: 4041,
    retryInterval: 10_000,
    retryLimit: 5,
    logLevel: "info",
    logFormat: "pretty",
    maxLineBytes: 65_536,
    maxMessageBytes: 60_000,
    idleTimeout: 0,
    loginAttempts: 5,
    deadLetterMax: 10_000,
    writeBufferBytes: 1_048_576,
    shutdownTimeout: 5000,
    commitDelay: 0,
    streamCommitDelay: 4,
    earlyDelivery: "on",
    maxTopicBytes: 256,
    maxConnections: 10_000,
    maxConnectionsPerAddress: 1_000,
    loginTimeout: 30_000,
    maxPendingPerConnection: 10_000,
    maxSubscriptionsPerConsumer: 1_000,
    maxTopicMessages: 1_000_000,
    maxStoreBytes: 1_073_741_824,
    maxJsonDepth: 32,
    passwordFile: "",
    aclFile: "",
    loginFailureDelay: 500,
    loginFailureLimit: 10,
    tlsCert: "",
    tlsKey: "",
    tlsConsumerPort: -1,
    tlsPublisherPort: -1,
    mqttPort: 1883,
    mqttWsPort: 8083,
    mqttTlsPort: 8883,
    mqttWsPath: "/mqtt",
    mqttMaxPacketBytes: 65_536,
    mqttReceiveMaximum: 1024,
    mqttMaxInflight: 1024,
    mqttTopicAliasMaximum: 64,
    mqttMaxSessionExpiry: 1_209_600,
    mqttMaxKeepalive: 0,
    mqttMaxClientIdBytes: 256,
    mqttMaxRetained: 100_000,
    mqttSysInterval: 10,
  });
  assert.deepEqual(configOf([]), DEFAULTS);
});

Deno.test("flag and variable names are derived from the field name", () => {
  assert.equal(flagOf("consumerPort"), "consumer-port");
  assert.equal(envOf("consumerPort"), "BROKER_CONSUMER_PORT");
  assert.equal(envOf("writeBufferBytes"), "BROKER_WRITE_BUFFER_BYTES");
  assert.equal(envOf("hostname"), "BROKER_HOSTNAME");
});

Deno.test("flags set every kind of setting", () => {
  const config = configOf([
    "--data-dir",
    "/tmp/broker",
    "--consumer-port",
    "0",
    "--retry-interval=250",
    "--log-level",
    "debug",
    "--log-format=json",
    "--idle-timeout",
    "30000",
  ]);
  assert.equal(config.dataDir, "/tmp/broker");
  assert.equal(config.consumerPort, 0);
  assert.equal(config.retryInterval, 250);
  assert.equal(config.logLevel, "debug");
  assert.equal(config.logFormat, "json");
  assert.equal(config.idleTimeout, 30_000);
  assert.equal(config.publisherPort, 4041);
});

Deno.test("BROKER_* variables set settings", () => {
  const config = configOf(
    [],
    envOfMap({
      BROKER_HOSTNAME: "127.0.0.1",
      BROKER_PUBLISHER_PORT: "5001",
      BROKER_RETRY_LIMIT: "3",
      BROKER_MAX_MESSAGE_BYTES: "1000",
    }),
  );
  assert.equal(config.hostname, "127.0.0.1");
  assert.equal(config.publisherPort, 5001);
  assert.equal(config.retryLimit, 3);
  assert.equal(config.maxMessageBytes, 1000);
});

Deno.test("only BROKER_* variables are read", () => {
  const asked: string[] = [];
  parseConfig([], (name) => {
    asked.push(name);
    return undefined;
  });
  assert.equal(asked.length, Object.keys(DEFAULTS).length);
  assert.ok(asked.every((name) => name.startsWith("BROKER_")), asked.join());
});

Deno.test("a flag beats its variable, which beats the default", () => {
  const env = envOfMap({ BROKER_CONSUMER_PORT: "5000", BROKER_PUBLISHER_PORT: "5001" });
  const config = configOf(["--consumer-port", "6000"], env);
  assert.equal(config.consumerPort, 6000);
  assert.equal(config.publisherPort, 5001);
  assert.equal(config.retryInterval, 10_000);
});

Deno.test("a flag beats a bad variable without looking at it", () => {
  const env = envOfMap({ BROKER_CONSUMER_PORT: "not a port" });
  assert.equal(configOf(["--consumer-port=7000"], env).consumerPort, 7000);
});

Deno.test("a non-integer names the setting by flag and variable and quotes the value", () => {
  const error = configError(["--consumer-port", "abc"]);
  assert.equal(
    error.message,
    'invalid --consumer-port (BROKER_CONSUMER_PORT): expected an integer from 0 to 65535, got "abc"',
  );
  assert.equal(error.setting, "consumerPort");
});

Deno.test("numbers must be strictly decimal integers", () => {
  for (const bad of ["10s", "1e3", "", " 5", "5 ", "0x10", "1.5", "+5", "Infinity"]) {
    const error = configError([`--retry-interval=${bad}`]);
    assert.equal(error.setting, "retryInterval", bad);
    assert.match(error.message, /^invalid --retry-interval \(BROKER_RETRY_INTERVAL\): /);
    assert.ok(error.message.endsWith(`got ${JSON.stringify(bad)}`), error.message);
  }
});

Deno.test("a bad variable is reported with its value", () => {
  const error = configError([], envOfMap({ BROKER_RETRY_LIMIT: "1e3" }));
  assert.equal(
    error.message,
    'invalid --retry-limit (BROKER_RETRY_LIMIT): expected an integer from 1 to 1000, got "1e3"',
  );
});

Deno.test("integers outside their range are refused", () => {
  const cases: [string, string][] = [
    ["--consumer-port", "65536"],
    ["--publisher-port", "-1"],
    ["--retry-interval", "0"],
    ["--retry-interval", "86400001"],
    ["--retry-limit", "1001"],
    ["--max-line-bytes", "255"],
    ["--max-message-bytes", "60001"],
    ["--idle-timeout", "-1"],
    ["--login-attempts", "0"],
    ["--dead-letter-max", "10000001"],
    ["--write-buffer-bytes", "1023"],
    ["--shutdown-timeout", "600001"],
  ];
  for (const [flag, value] of cases) {
    const error = configError([`${flag}=${value}`]);
    assert.match(error.message, /expected an integer from \d+ to \d+, got "-?\d+"$/);
    assert.ok(error.message.startsWith(`invalid ${flag} (BROKER_`), error.message);
  }
});

Deno.test("range edges are accepted", () => {
  const config = configOf([
    "--consumer-port=65535",
    "--max-line-bytes=256",
    "--max-message-bytes=60000",
    "--shutdown-timeout=0",
  ]);
  assert.equal(config.consumerPort, 65_535);
  assert.equal(config.maxLineBytes, 256);
  assert.equal(config.maxMessageBytes, 60_000);
  assert.equal(config.shutdownTimeout, 0);
});

Deno.test("an unknown log level, format or switch value lists the choices", () => {
  assert.equal(
    configError(["--log-level", "loud"]).message,
    'invalid --log-level (BROKER_LOG_LEVEL): expected one of trace, debug, info, warning, error, fatal, got "loud"',
  );
  assert.equal(
    configError([], envOfMap({ BROKER_LOG_FORMAT: "xml" })).message,
    'invalid --log-format (BROKER_LOG_FORMAT): expected one of pretty, json, got "xml"',
  );
  assert.equal(
    configError(["--early-delivery", "yes"]).message,
    'invalid --early-delivery (BROKER_EARLY_DELIVERY): expected one of on, off, got "yes"',
  );
  assert.equal(configOf(["--early-delivery", "off"]).earlyDelivery, "off");
  assert.equal(configOf([], envOfMap({ BROKER_EARLY_DELIVERY: "off" })).earlyDelivery, "off");
});

Deno.test("an empty data directory or hostname is refused", () => {
  assert.equal(configError(["--data-dir="]).setting, "dataDir");
  assert.equal(configError([], envOfMap({ BROKER_HOSTNAME: "" })).setting, "hostname");
});

Deno.test("an unknown flag is refused by name", () => {
  assert.equal(configError(["--foo"]).message, "unknown option --foo");
  assert.equal(configError(["--foo=1"]).message, "unknown option --foo");
  assert.equal(configError(["-x"]).message, "unknown option -x");
});

Deno.test("a positional argument is refused", () => {
  assert.equal(
    configError(["serve"]).message,
    'unexpected argument "serve": message_broker takes only options',
  );
});

Deno.test("a flag without its value names the setting", () => {
  const error = configError(["--consumer-port"]);
  assert.equal(error.setting, "consumerPort");
  assert.match(error.message, /^invalid --consumer-port \(BROKER_CONSUMER_PORT\): missing value/);
  // A following flag is not taken as the value.
  assert.equal(configError(["--data-dir", "--hostname", "h"]).setting, "dataDir");
});

Deno.test("--help and -h return the help text", () => {
  for (const args of [["--help"], ["-h"], ["--consumer-port", "abc", "--help"]]) {
    const parsed = parseConfig(args, noEnv);
    assert.equal(parsed.help, true, args.join(" "));
    assert.equal(parsed.text, helpText());
  }
  assert.equal(configError(["--help=yes"]).message, "--help takes no value");
});

Deno.test("the help text shows usage and every option with its variable and default", () => {
  const text = helpText();
  assert.match(text, /Usage: message_broker \[options\]/);
  for (const [name, value] of Object.entries(DEFAULTS)) {
    const flag = flagOf(name as keyof BrokerConfig);
    const env = envOf(name as keyof BrokerConfig);
    assert.match(text, new RegExp(`--${flag} <\\w+> +\\S`), flag);
    const shown = value === "" ? "(none)" : value;
    assert.ok(text.includes(`env ${env}, default ${shown}\n`), env);
  }
});

Deno.test("configFor fills defaults and validates overrides", () => {
  const config = configFor({ consumerPort: 0, retryInterval: 50 });
  assert.deepEqual(config, { ...DEFAULTS, consumerPort: 0, retryInterval: 50 });
  assert.deepEqual(configFor(), DEFAULTS);
  assert.throws(() => configFor({ retryLimit: 0 }), {
    name: "ConfigError",
    message:
      "invalid --retry-limit (BROKER_RETRY_LIMIT): expected an integer from 1 to 1000, got 0",
  });
});
