/**
 * `message_broker passwd`: manages the password file, in the spirit of
 * `mosquitto_passwd`.
 *
 * ```text
 * message_broker passwd FILE USER              add USER or change its password (asked for)
 * message_broker passwd -b FILE USER PASSWORD  the same, password from the command line
 * message_broker passwd -D FILE USER           delete USER
 * ```
 *
 * The password is read from standard input: on a terminal it is asked twice without
 * echo; otherwise the first line is taken (so `printf 'pw\n' | message_broker passwd …`
 * works in scripts). Exit codes: 0 done, 1 failed (message on stderr), 2 bad usage.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { usernameError } from "../core/names.ts";
import {
  deleteUser,
  type HashOptions,
  MAX_PASSWORD_BYTES,
  passwordError,
  PasswordFileError,
  setPassword,
} from "./passwords.ts";

/** The `passwd` usage text. */
export const PASSWD_USAGE = [
  "Usage: message_broker passwd FILE USER",
  "       message_broker passwd -b FILE USER PASSWORD",
  "       message_broker passwd -D FILE USER",
  "",
  "Adds USER to the password FILE or changes its password; FILE is created if needed",
  "and always written owner-only (0600), atomically. The password is read from",
  "standard input: asked twice without echo on a terminal, else its first line.",
  "Passwords may contain spaces, but not control characters and not at their start or",
  "end. Lines look like USER:$pbkdf2-sha256$ITERATIONS$SALT$HASH (never plain text).",
  "Restart the broker (--password-file FILE) to apply changes.",
  "",
  "Options:",
  "  -b, --batch    take PASSWORD from the command line (visible to other local users",
  "                 in the process list and shell history: prefer standard input)",
  "  -D, --delete   delete USER from FILE",
  "  -h, --help     print this help and exit",
  "",
].join("\n");

/** Where the command reads and writes; tests pass their own. */
export interface PasswdIo {
  /** Standard input's bytes. */
  stdin: ReadableStream<Uint8Array>;
  /** A terminal to prompt on without echo, or null when input is not a terminal. */
  terminal: { setRaw(raw: boolean): void; read(buffer: Uint8Array): Promise<number | null> } | null;
  /** Writes to standard output. */
  out(text: string): void;
  /** Writes to standard error (prompts go here too). */
  err(text: string): void;
  /** Hashing options; tests pass a low iteration count. */
  hash?: HashOptions;
}

const encoder = new TextEncoder();

/** The process's standard streams. */
export function denoIo(): PasswdIo {
  return {
    stdin: Deno.stdin.readable,
    terminal: Deno.stdin.isTerminal()
      ? { setRaw: (raw) => Deno.stdin.setRaw(raw), read: (b) => Deno.stdin.read(b) }
      : null,
    out: (text) => Deno.stdout.writeSync(encoder.encode(text)),
    err: (text) => Deno.stderr.writeSync(encoder.encode(text)),
  };
}

/** An input problem the user should see as is. */
class PasswdError extends Error {}

/**
 * Runs `message_broker passwd` with `args` (the words after `passwd`); returns the exit
 * code: 0 done, 1 failed, 2 bad usage.
 *
 * @example
 * ```ts
 * Deno.exit(await runPasswd(["./passwords", "alice"], denoIo()));
 * ```
 */
export async function runPasswd(args: string[], io: PasswdIo = denoIo()): Promise<number> {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: {
        batch: { type: "boolean", short: "b" },
        delete: { type: "boolean", short: "D" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    }));
  } catch (err) {
    return usage(io, err instanceof Error ? err.message.split("\n")[0] ?? "" : String(err));
  }
  if (values.help) {
    io.out(PASSWD_USAGE);
    return 0;
  }
  const wanted = values.batch ? 3 : 2;
  if (values.batch && values.delete) return usage(io, "-b and -D cannot be used together");
  if (positionals.length !== wanted) {
    return usage(io, `expected ${values.batch ? "FILE USER PASSWORD" : "FILE USER"}`);
  }
  const [file = "", user = "", batchPassword] = positionals;
  const badUser = usernameError(user);
  if (badUser) return fail(io, badUser);
  try {
    if (values.delete) {
      if (!(await deleteUser(file, user))) return fail(io, `user ${user} is not in ${file}`);
      io.out(`Deleted user ${user} from ${file}\n`);
      return 0;
    }
    const password = batchPassword ?? await readPassword(io);
    const badPassword = passwordError(password);
    if (badPassword) return fail(io, badPassword);
    const added = await setPassword(file, user, password, io.hash);
    io.out(
      added ? `Added user ${user} to ${file}\n` : `Changed the password of ${user} in ${file}\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof PasswdError || err instanceof PasswordFileError) {
      return fail(io, err.message);
    }
    throw err;
  }
}

function usage(io: PasswdIo, problem: string): number {
  io.err(`message_broker passwd: ${problem}\n\n${PASSWD_USAGE}`);
  return 2;
}

function fail(io: PasswdIo, problem: string): number {
  io.err(`message_broker passwd: ${problem}\n`);
  return 1;
}

async function readPassword(io: PasswdIo): Promise<string> {
  if (io.terminal === null) return await readFirstLine(io.stdin);
  const first = await promptHidden(io, "Password: ");
  const second = await promptHidden(io, "Reenter password: ");
  if (first !== second) throw new PasswdError("the passwords do not match; nothing changed");
  return first;
}

/** Reads the first line of `stream` (without its line break), at most a bounded size. */
export async function readFirstLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  const bytes: number[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        if (bytes.length === 0) throw new PasswdError("no password on standard input");
        break;
      }
      const end = value.indexOf(0x0a);
      for (const b of end < 0 ? value : value.subarray(0, end)) bytes.push(b);
      if (bytes.length > MAX_PASSWORD_BYTES + 1) {
        throw new PasswdError(`password is longer than ${MAX_PASSWORD_BYTES} bytes`);
      }
      if (end >= 0) break;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  if (bytes.at(-1) === 0x0d) bytes.pop();
  return decodeTyped(bytes);
}

/**
 * Prompts on the terminal and reads a line with echo off (raw mode): Enter ends it,
 * Backspace erases, Ctrl-C or Ctrl-D on an empty line cancels.
 */
export async function promptHidden(io: PasswdIo, prompt: string): Promise<string> {
  const terminal = io.terminal;
  if (terminal === null) throw new PasswdError("no terminal to prompt on");
  io.err(prompt);
  terminal.setRaw(true);
  const bytes: number[] = [];
  const buffer = new Uint8Array(256);
  try {
    for (;;) {
      const n = await terminal.read(buffer);
      if (n === null) throw new PasswdError("cancelled: end of input");
      for (const b of buffer.subarray(0, n)) {
        if (b === 0x0d || b === 0x0a) return decodeTyped(bytes);
        if (b === 0x03 || (b === 0x04 && bytes.length === 0)) throw new PasswdError("cancelled");
        if (b === 0x7f || b === 0x08) eraseLastCharacter(bytes);
        else if (b >= 0x20) bytes.push(b);
        if (bytes.length > MAX_PASSWORD_BYTES) {
          throw new PasswdError(`password is longer than ${MAX_PASSWORD_BYTES} bytes`);
        }
      }
    }
  } finally {
    terminal.setRaw(false);
    io.err("\n");
  }
}

/** Removes the last UTF-8 character: its continuation bytes, then its lead byte. */
function eraseLastCharacter(bytes: number[]): void {
  while (bytes.length > 0 && ((bytes.at(-1) as number) & 0xc0) === 0x80) bytes.pop();
  bytes.pop();
}

function decodeTyped(bytes: number[]): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    throw new PasswdError("the password is not valid UTF-8");
  }
}
