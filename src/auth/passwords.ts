/**
 * The password file: salted, slow hashes (PBKDF2-SHA-256 from WebCrypto), never plain
 * text. One line per user:
 *
 * ```text
 * # comments and blank lines are kept as they are
 * alice:$pbkdf2-sha256$210000$<salt, base64>$<hash, base64>
 * ```
 *
 * - the user name follows the broker's username rules (`usernameError`), so it has no `:`;
 * - `210000` is the PBKDF2 iteration count (decimal, 1 to 10,000,000);
 * - the salt is at least 8 random bytes (16 when written here), standard base64;
 * - the hash is the 32-byte PBKDF2-SHA-256 output of the UTF-8 password, standard base64.
 *
 * Write it with `message_broker passwd FILE USER` ({@link setPassword}): the file is
 * replaced atomically (a temporary file renamed over it) and is owner-only (`0600`).
 *
 * @module
 */
import { dirname, join } from "node:path";
import { usernameError } from "../core/names.ts";
import { getLogger } from "../log.ts";
import { errorText } from "../supervisor.ts";

/** PBKDF2 iterations of a new hash: OWASP's 2023 figure for PBKDF2-HMAC-SHA-256. */
export const DEFAULT_ITERATIONS = 210_000;
/** Most iterations a file may ask for: more would make each login a denial of service. */
export const MAX_ITERATIONS = 10_000_000;
/** Longest password, in UTF-8 bytes. */
export const MAX_PASSWORD_BYTES = 1024;

const SCHEME = "pbkdf2-sha256";
const SALT_BYTES = 16;
const MIN_SALT_BYTES = 8;
const HASH_BYTES = 32;
const B64 = "[A-Za-z0-9+/]+={0,2}";
const LINE = new RegExp(`^([^:]*):\\$${SCHEME}\\$([0-9]{1,8})\\$(${B64})\\$(${B64})$`);
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

const encoder = new TextEncoder();
const log = getLogger("auth");

/** A password file that cannot be read or written, or a line of it that is malformed. */
export class PasswordFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PasswordFileError";
  }
}

/** The stored hash of one user's password. */
export interface PasswordHash {
  iterations: number;
  salt: Uint8Array;
  hash: Uint8Array;
}

/** Options for hashing new passwords; tests pass a low `iterations` to stay fast. */
export interface HashOptions {
  /** PBKDF2 iterations; default {@link DEFAULT_ITERATIONS}. */
  iterations?: number;
}

/**
 * Checks a new password; returns null when valid, else what is wrong. A password is
 * typed at the end of a `log USER PASSWORD` line, which is trimmed, so it cannot start
 * or end with white space, and cannot hold control characters (a line break ends it).
 */
export function passwordError(password: string): string | null {
  if (password.length === 0) return "password must not be empty";
  if (encoder.encode(password).byteLength > MAX_PASSWORD_BYTES) {
    return `password is longer than ${MAX_PASSWORD_BYTES} bytes`;
  }
  if (CONTROL.test(password)) return "password must not contain control characters";
  if (password.trim() !== password) return "password must not start or end with white space";
  return null;
}

/** PBKDF2-SHA-256 of `password` with a fresh random salt (or the one given). */
export async function hashPassword(
  password: string,
  { iterations = DEFAULT_ITERATIONS }: HashOptions = {},
  salt: Uint8Array = crypto.getRandomValues(new Uint8Array(SALT_BYTES)),
): Promise<PasswordHash> {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new RangeError(
      `iterations must be an integer from 1 to ${MAX_ITERATIONS}, got ${iterations}`,
    );
  }
  return { iterations, salt, hash: await derive(password, salt, iterations) };
}

async function derive(password: string, salt: Uint8Array, iterations: number) {
  const key = await crypto.subtle.importKey("raw", encoder.encode(password), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: salt as Uint8Array<ArrayBuffer>, iterations },
    key,
    HASH_BYTES * 8,
  );
  return new Uint8Array(bits);
}

/** Compares in time that depends on the length only, not on where the bytes differ. */
function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

/** The line of the password file for `user`. */
export function formatLine(user: string, h: PasswordHash): string {
  return `${user}:$${SCHEME}$${h.iterations}$${toBase64(h.salt)}$${toBase64(h.hash)}`;
}

/** One line of a password file: a user's hash, or text kept as is (comment, blank). */
type Line = { user: string; hash: PasswordHash; text: string } | { user: null; text: string };

function parseLines(text: string, path: string): Line[] {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  const seen = new Map<string, number>();
  return lines.map((raw, i) => {
    const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (text.trim() === "" || text.trimStart().startsWith("#")) return { user: null, text };
    const where = `password file ${path}, line ${i + 1}`;
    const m = LINE.exec(text);
    if (!m) {
      throw new PasswordFileError(
        `${where}: expected USER:$${SCHEME}$ITERATIONS$SALT$HASH (write it with message_broker passwd)`,
      );
    }
    const [, user = "", iter = "", salt64 = "", hash64 = ""] = m;
    const bad = usernameError(user);
    if (bad) throw new PasswordFileError(`${where}: ${bad}`);
    const first = seen.get(user);
    if (first !== undefined) {
      throw new PasswordFileError(`${where}: user ${user} is already on line ${first}`);
    }
    seen.set(user, i + 1);
    const iterations = Number(iter);
    if (iterations < 1 || iterations > MAX_ITERATIONS) {
      throw new PasswordFileError(
        `${where}: iterations must be from 1 to ${MAX_ITERATIONS}, got ${iter}`,
      );
    }
    const salt = fromBase64(salt64);
    const hash = fromBase64(hash64);
    if (!salt || salt.length < MIN_SALT_BYTES) {
      throw new PasswordFileError(`${where}: the salt must be at least ${MIN_SALT_BYTES} bytes`);
    }
    if (!hash || hash.length !== HASH_BYTES) {
      throw new PasswordFileError(`${where}: the hash must be ${HASH_BYTES} bytes`);
    }
    return { user, hash: { iterations, salt, hash }, text };
  });
}

/** Checks passwords against a loaded password file. */
export class PasswordFile {
  readonly #users: Map<string, PasswordHash>;
  /** Compared against for an unknown user, so that it costs a known user's work. */
  readonly #decoy: PasswordHash;

  private constructor(users: Map<string, PasswordHash>) {
    this.#users = users;
    const iterations = Math.max(0, ...[...users.values()].map((h) => h.iterations)) ||
      DEFAULT_ITERATIONS;
    this.#decoy = {
      iterations,
      salt: crypto.getRandomValues(new Uint8Array(SALT_BYTES)),
      hash: crypto.getRandomValues(new Uint8Array(HASH_BYTES)),
    };
  }

  /**
   * PBKDF2 iterations spent on a login of an unknown user: those of the file's
   * strongest entry, so that timing does not tell unknown users from known ones.
   */
  get decoyIterations(): number {
    return this.#decoy.iterations;
  }

  /**
   * Reads and checks the password file at `path`.
   *
   * @example
   * ```ts
   * const passwords = await PasswordFile.load("./passwords");
   * if (await passwords.verify("alice", "s3cret pass")) console.log("welcome");
   * ```
   * @throws {PasswordFileError} if it cannot be read, naming the file, or has a
   *   malformed line, naming the file and the line.
   */
  static async load(path: string): Promise<PasswordFile> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
      const { mode } = await Deno.stat(path);
      if (mode !== null && (mode & 0o077) !== 0) {
        log.warning("Password file {path} is readable by others (mode {mode}); chmod 600 it", {
          path,
          mode: (mode & 0o777).toString(8),
        });
      }
    } catch (err) {
      throw new PasswordFileError(`cannot read password file ${path}: ${errorText(err)}`);
    }
    return PasswordFile.parse(text, path);
  }

  /** Parses the text of a password file; `path` is for error messages. */
  static parse(text: string, path = "(text)"): PasswordFile {
    const users = new Map<string, PasswordHash>();
    for (const line of parseLines(text, path)) {
      if (line.user !== null) users.set(line.user, line.hash);
    }
    return new PasswordFile(users);
  }

  /** The users in the file, in file order. */
  get users(): string[] {
    return [...this.#users.keys()];
  }

  /**
   * Whether `password` is `user`'s. Takes the same work for an unknown user as for a
   * known one, and compares hashes in constant time, so timing tells neither apart.
   */
  async verify(user: string, password: string): Promise<boolean> {
    const known = this.#users.get(user);
    const h = known ?? this.#decoy;
    const hash = await derive(password, h.salt, h.iterations);
    return constantTimeEqual(hash, h.hash) && known !== undefined;
  }
}

/**
 * Sets `user`'s password in the file at `path` (creating it), replacing the file
 * atomically with an owner-only (`0600`) one. Other lines are kept as they are.
 * Returns whether the user was new.
 *
 * @example
 * ```ts
 * await setPassword("./passwords", "alice", "s3cret pass");
 * ```
 * @throws {PasswordFileError} if the file is malformed or cannot be written.
 * @throws {RangeError} if the user name or the password is not allowed.
 */
export async function setPassword(
  path: string,
  user: string,
  password: string,
  options: HashOptions = {},
): Promise<boolean> {
  const bad = usernameError(user) ?? passwordError(password);
  if (bad) throw new RangeError(bad);
  const lines = await readLines(path, { mustExist: false });
  const line = formatLine(user, await hashPassword(password, options));
  const i = lines.findIndex((l) => l.user === user);
  if (i >= 0) lines[i] = { user: null, text: line };
  else lines.push({ user: null, text: line });
  await writeAtomically(path, lines.map((l) => l.text + "\n").join(""));
  return i < 0;
}

/**
 * Removes `user` from the password file at `path` (atomically, as {@link setPassword}).
 * Returns false, changing nothing, if the user is not in it.
 *
 * @throws {PasswordFileError} if the file is missing, malformed or cannot be written.
 */
export async function deleteUser(path: string, user: string): Promise<boolean> {
  const lines = await readLines(path, { mustExist: true });
  const kept = lines.filter((l) => l.user !== user);
  if (kept.length === lines.length) return false;
  await writeAtomically(path, kept.map((l) => l.text + "\n").join(""));
  return true;
}

async function readLines(path: string, { mustExist }: { mustExist: boolean }): Promise<Line[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (!mustExist && err instanceof Deno.errors.NotFound) return [];
    throw new PasswordFileError(`cannot read password file ${path}: ${errorText(err)}`);
  }
  return parseLines(text, path);
}

/**
 * Writes a temporary file beside `path` (owner-only, synced), then renames it over
 * `path`: a reader sees the old file or the new one, never half of one.
 */
async function writeAtomically(path: string, text: string): Promise<void> {
  const random = toBase64(crypto.getRandomValues(new Uint8Array(6))).replace(/[+/]/g, "_");
  const tmp = join(dirname(path), `.${path.split("/").at(-1)}.${random}.tmp`);
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      const bytes = encoder.encode(text);
      for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.chmod(tmp, 0o600); // the umask may have taken bits from the mode asked for
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new PasswordFileError(`cannot write password file ${path}: ${errorText(err)}`);
  }
}

function toBase64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function fromBase64(text: string): Uint8Array | null {
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
