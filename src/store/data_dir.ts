/**
 * The data directory: one broker process owns it at a time.
 *
 * Two processes can open one Deno KV file, but their checked atomics then fail with
 * "database is locked" and neither sees the other's writes in `watch`. A broker
 * therefore takes an exclusive lock on `broker.lock` before it opens `broker.kv`, and
 * refuses to start if another process holds it. The kernel drops the lock when the
 * process dies, SIGKILL included, so no stale lock survives a crash.
 *
 * @module
 */
import { join } from "node:path";
import { type CommitPacing, NO_PACING } from "./group_commit.ts";
import { KvStore } from "./kv_store.ts";

/** Raised when another live process holds the data directory. */
export class DataDirLockedError extends Error {
  constructor(dir: string) {
    super(
      `data directory ${dir} is in use by another broker process (lock held on ${
        join(dir, "broker.lock")
      }); stop it or choose another --data-dir`,
    );
    this.name = "DataDirLockedError";
  }
}

/** An opened data directory: its store and the lock that guards it. */
export interface DataDir {
  store: KvStore;
  /** Path of the KV file. */
  path: string;
  /** Closes the store and releases the lock. */
  close(): void;
}

/** How long to wait for the lock before concluding that another process holds it. */
const LOCK_WAIT_MS = 300;

/**
 * Creates `dir` if needed (owner-only permissions), locks it, and opens its store.
 * @throws DataDirLockedError when another process holds the lock.
 */
export async function openDataDir(
  dir: string,
  pacing: CommitPacing = NO_PACING,
): Promise<DataDir> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const lockFile = await Deno.open(join(dir, "broker.lock"), {
    create: true,
    write: true,
    mode: 0o600,
  });
  // Deno has no non-blocking try-lock: a lock that is not granted quickly is held by
  // someone else. The pending lock call is abandoned with the file when we give up.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const locked = await Promise.race([
    lockFile.lock(true).then(() => true),
    new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), LOCK_WAIT_MS)),
  ]);
  clearTimeout(timer);
  if (!locked) {
    lockFile.close();
    throw new DataDirLockedError(dir);
  }
  const path = join(dir, "broker.kv");
  let store: KvStore;
  try {
    store = await KvStore.open(path, pacing);
    await Deno.chmod(path, 0o600).catch(() => {});
  } catch (err) {
    lockFile.close();
    throw err;
  }
  return {
    store,
    path,
    close() {
      store.close();
      lockFile.close(); // closing the file releases the lock
    },
  };
}
