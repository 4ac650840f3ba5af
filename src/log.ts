/**
 * Logging through LogTape. Every broker category starts with "broker"
 * (`["broker", "topic"]`), so one logger config governs them all.
 *
 * Logs go to stdout, not stderr: the broker prints its startup lines (ports
 * chosen for port 0) there, and tests read a child broker's stdout to learn
 * them. The sink writes synchronously (console.log), so a line logged just
 * before the process exits is not lost.
 *
 * @module
 */
import {
  configure,
  getAnsiColorFormatter,
  getConsoleSink,
  getJsonLinesFormatter,
  getLogger as getLogTapeLogger,
  getTextFormatter,
  type Logger,
  type LogLevel,
  reset,
  type Sink,
  type TextFormatter,
} from "@logtape/logtape";

export type { Logger, LogLevel };

/** How log lines look: readable text, or one JSON object per line. */
export type LogFormat = "pretty" | "json";

/** Options of {@link setupLogging}. */
export interface LogOptions {
  /** The lowest level written; records below it are dropped. */
  level: LogLevel;
  /** Readable text, or JSON Lines for log collectors. */
  format: LogFormat;
  /** Colour the pretty format; defaults to whether stdout is a terminal. */
  color?: boolean;
  /**
   * Where each formatted line goes (with its trailing newline); defaults to
   * stdout. Tests pass a function to capture the real output.
   */
  write?: (line: string) => void;
}

function formatterFor(format: LogFormat, color: boolean): TextFormatter {
  if (format === "json") return getJsonLinesFormatter();
  // "bare" shows string values without quotes: `listening on 0.0.0.0:4040`.
  const options = { timestamp: "date-time-tz", value: "bare" } as const;
  // Escape codes only on a terminal: in a file or pipe they are noise.
  return color ? getAnsiColorFormatter(options) : getTextFormatter(options);
}

function sinkFor(formatter: TextFormatter, write?: (line: string) => void): Sink {
  if (write !== undefined) return (record) => write(formatter(record));
  // console.log writes to stdout for every level (the default map sends
  // warnings and errors to stderr, which would split the log in two).
  const toStdout = "log" as const;
  return getConsoleSink({
    formatter,
    levelMap: {
      trace: toStdout,
      debug: toStdout,
      info: toStdout,
      warning: toStdout,
      error: toStdout,
      fatal: toStdout,
    },
  });
}

/**
 * Configures LogTape for the broker. Safe to call again: each call replaces
 * the previous configuration.
 *
 * @example
 * ```ts
 * await setupLogging({ level: "info", format: "json" });
 * getLogger("topic").info("created {topic}", { topic: "orders" });
 * ```
 */
export async function setupLogging(options: LogOptions): Promise<void> {
  const color = options.color ?? Deno.stdout.isTerminal();
  const sink = sinkFor(formatterFor(options.format, color), options.write);
  await configure({
    reset: true,
    sinks: { out: sink },
    loggers: [
      { category: ["broker"], sinks: ["out"], lowestLevel: options.level },
      // LogTape's own logger announces its configuration at info; only its
      // warnings (e.g. a failing sink) are worth a line.
      { category: ["logtape", "meta"], sinks: ["out"], lowestLevel: "warning" },
    ],
  });
}

/**
 * The logger for `["broker", ...sub]`.
 *
 * @example
 * ```ts
 * const log = getLogger("transport", "tcp");
 * log.debug("accepted {peer}", { peer: "127.0.0.1:5000" });
 * ```
 */
export function getLogger(...sub: string[]): Logger {
  return getLogTapeLogger(["broker", ...sub]);
}

/** Removes the logging configuration (for tests). */
export async function resetLogging(): Promise<void> {
  await reset();
}
