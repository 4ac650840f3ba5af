/**
 * The ACL file over real sockets: who may SUB and PUB where, `+`, `#` and `%u`, the
 * dead letter channel, durable subscriptions the ACL no longer allows, and start-up
 * with a missing or malformed file.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { setPassword } from "../src/auth/passwords.ts";
import type { BrokerConfig } from "../src/config.ts";
import {
  ChildBroker,
  json,
  LineClient,
  loginConsumer,
  publish,
  receive,
  startTestBroker,
  type TestBroker,
  waitFor,
} from "./helpers.ts";

const ACL = `
# every user, anonymous publishers included
topic read public/#
topic write inbox/+
topic readwrite home/%u/#
topic write sensors/#     # anyone may publish readings

user alice
topic readwrite sensors/alice/#
topic write commands/+
topic read inbox/alice

user ops
topic read deadLetterChan

user root
topic read #
`;

/** Runs `body` with a temporary directory holding ACL files; removed afterwards. */
async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mb-acl-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes `text` as an ACL file in `dir` and starts a broker with it. */
async function brokerWith(
  dir: string,
  text: string,
  config: Partial<BrokerConfig> = {},
): Promise<TestBroker> {
  const aclFile = join(dir, `acl-${crypto.randomUUID()}.conf`);
  await Deno.writeTextFile(aclFile, text);
  return await startTestBroker({ ...config, aclFile });
}

const denySub = (t: string) => `ERROR: not authorised to subscribe to topic ${JSON.stringify(t)}`;
const denyPub = (t: string) => `ERROR: not authorised to publish to topic ${JSON.stringify(t)}`;

/** Sends SUB `topic` and expects OK, or the denial when `allowed` is false. */
async function sub(c: LineClient, topic: string, allowed: boolean): Promise<void> {
  await c.send(json({ type: "SUB", topic }));
  await c.expect(allowed ? "OK" : denySub(topic));
}

/** Sends PUB `topic` and expects a PUBREC, or the denial when `allowed` is false. */
async function pub(p: LineClient, topic: string, allowed: boolean): Promise<void> {
  await p.send(json({ type: "PUB", topic, msg: "m" }));
  await p.expect(allowed ? /^\{"msgId":\d+,"type":"PUBREC"\}$/ : denyPub(topic));
}

Deno.test("SUB is allowed by the user's own rules and the general rules, denied elsewhere", async () => {
  await withDir(async (dir) => {
    await using b = await brokerWith(dir, ACL);
    await using alice = await loginConsumer(b.consumerPort, "alice");
    await sub(alice, "sensors/alice/temp", true);
    await sub(alice, "public/news", true);
    await sub(alice, "inbox/alice", true);
    await sub(alice, "sensors/bob/temp", false);
    await sub(alice, "commands/stop", false); // alice may only write there
    await sub(alice, "inbox/bob", false); // the general rule is write-only
    await using bob = await loginConsumer(b.consumerPort, "bob");
    await sub(bob, "public/news", true);
    await sub(bob, "sensors/alice/temp", false);
    await sub(bob, "inbox/alice", false);
    // What was allowed is delivered.
    await using p = await LineClient.connect(b.publisherPort);
    const id = await publish(p, "sensors/alice/temp", 21);
    const got = await receive(alice);
    assert.deepEqual([got.msgId, got.topic, got.msg], [id, "sensors/alice/temp", 21]);
  });
});

Deno.test("an anonymous publisher has the general rules only", async () => {
  await withDir(async (dir) => {
    await using b = await brokerWith(dir, ACL);
    await using p = await LineClient.connect(b.publisherPort);
    await pub(p, "inbox/x", true);
    await pub(p, "sensors/a/b/c", true);
    await pub(p, "inbox", false); // '+' needs exactly one level
    await pub(p, "inbox/a/b", false);
    await pub(p, "public/news", false); // read-only for everyone
    await pub(p, "commands/stop", false); // alice's rule, not a general one
    await pub(p, "home/x/lamp", false); // %u never applies to anonymous clients
    await pub(p, "elsewhere", false);
    assert.equal(b.broker.pendingCount, 2, "a denied PUB stores nothing");
  });
});

/** Connects to `port` and logs in with a password. */
async function logIn(port: number, user: string, password: string): Promise<LineClient> {
  const c = await LineClient.connect(port);
  await c.expect("Please login!");
  await c.send(`log ${user} ${password}`);
  await c.expect("Successfully logged in!");
  return c;
}

Deno.test("a logged-in publisher has its own rules and the general ones", async () => {
  await withDir(async (dir) => {
    const passwordFile = join(dir, "passwords");
    await setPassword(passwordFile, "alice", "alice pw", { iterations: 1000 });
    await setPassword(passwordFile, "bob", "bob pw", { iterations: 1000 });
    await using b = await brokerWith(dir, ACL, { passwordFile, loginFailureDelay: 0 });
    await using alice = await logIn(b.publisherPort, "alice", "alice pw");
    await pub(alice, "commands/stop", true); // her own rule
    await pub(alice, "inbox/x", true); // a general rule
    await pub(alice, "home/alice/lamp", true); // %u is her name
    await pub(alice, "home/bob/lamp", false);
    await pub(alice, "public/news", false);
    await using bob = await logIn(b.publisherPort, "bob", "bob pw");
    await pub(bob, "commands/stop", false);
    await pub(bob, "home/bob/lamp", true);
    await pub(bob, "sensors/alice/temp", true); // general write on sensors/#
    // A consumer logged in with its password is checked under its name too.
    await using c = await logIn(b.consumerPort, "alice", "alice pw");
    await sub(c, "sensors/alice/temp", true);
    await sub(c, "home/bob/lamp", false);
  });
});

Deno.test("'+' matches one level and '#' any number, its parent level included", async () => {
  await withDir(async (dir) => {
    const text = "user u\ntopic read a/+/c\ntopic read b/#\n";
    await using b = await brokerWith(dir, text);
    await using u = await loginConsumer(b.consumerPort, "u");
    await sub(u, "a/x/c", true);
    await sub(u, "a//c", true);
    await sub(u, "a/c", false);
    await sub(u, "a/x/y/c", false);
    await sub(u, "b", true);
    await sub(u, "b/x/y/z", true);
    await sub(u, "bb", false);
  });
});

Deno.test("'%u' in a rule stands for the consumer's own name", async () => {
  await withDir(async (dir) => {
    await using b = await brokerWith(dir, ACL);
    await using alice = await loginConsumer(b.consumerPort, "alice");
    await sub(alice, "home/alice/lamp", true);
    await sub(alice, "home/bob/lamp", false);
    await using bob = await loginConsumer(b.consumerPort, "bob");
    await sub(bob, "home/bob", true);
    await sub(bob, "home/alice/lamp", false);
  });
});

Deno.test("deadLetterChan is readable only by users a rule names it for, not through '#'", async () => {
  await withDir(async (dir) => {
    await using b = await brokerWith(dir, ACL);
    await using root = await loginConsumer(b.consumerPort, "root");
    await sub(root, "deadLetterChan", false);
    await sub(root, "anything/else", true);
    await using alice = await loginConsumer(b.consumerPort, "alice");
    await sub(alice, "deadLetterChan", false);
    await using ops = await loginConsumer(b.consumerPort, "ops");
    await sub(ops, "deadLetterChan", true);
    await sub(ops, "public/news", true);
    await sub(ops, "elsewhere", false);
    await using p = await LineClient.connect(b.publisherPort);
    await p.send("not json");
    await p.expect("INVALID JSON");
    const dead = await receive(ops);
    assert.equal(dead.topic, "deadLetterChan");
    assert.equal((dead.msg as Record<string, unknown>).reason, "invalid-json");
    await root.expectSilence(100);
  });
});

Deno.test("a denied SUB leaves no durable subscription behind", async () => {
  await withDir(async (dir) => {
    await using b = await brokerWith(dir, ACL);
    {
      await using alice = await loginConsumer(b.consumerPort, "alice");
      await sub(alice, "sensors/bob/temp", false);
      await alice.send(json({ type: "UNSUB", topic: "sensors/bob/temp" }));
      await alice.expect('ERROR: not subscribed to topic "sensors/bob/temp"');
    }
    assert.deepEqual(await b.broker.store.loadSubscriberTopics("alice"), []);
    await using p = await LineClient.connect(b.publisherPort);
    await publish(p, "sensors/bob/temp", "not for alice");
    await waitFor(() => !b.broker.sessionNames.includes("alice"), "alice's session to end");
    await using again = await loginConsumer(b.consumerPort, "alice");
    await again.expectSilence(150);
  });
});

Deno.test("after a restart with a changed ACL, a subscription it no longer allows is not resumed", async () => {
  await withDir(async (dir) => {
    const dataDir = join(dir, "data");
    const before = "topic write #\nuser alice\ntopic read news/#\ntopic read keep/#\n";
    const after = "topic write #\nuser alice\ntopic read keep/#\n";
    {
      await using b = await brokerWith(dir, before, { dataDir });
      await using alice = await loginConsumer(b.consumerPort, "alice");
      await sub(alice, "news/a", true);
      await sub(alice, "keep/a", true);
    }
    await using b = await brokerWith(dir, after, { dataDir });
    await using alice = await loginConsumer(b.consumerPort, "alice");
    await using p = await LineClient.connect(b.publisherPort);
    await publish(p, "news/a", "withheld");
    const kept = await publish(p, "keep/a", "delivered");
    const got = await receive(alice);
    assert.deepEqual([got.msgId, got.topic, got.msg], [kept, "keep/a", "delivered"]);
    await alice.expectSilence(200);
    await sub(alice, "news/a", false);
  });
});

Deno.test("a missing ACL file stops start-up with a message naming it", async () => {
  await withDir(async (dir) => {
    const aclFile = join(dir, "nowhere.conf");
    await assert.rejects(
      startTestBroker({ aclFile, dataDir: dir }),
      (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.equal(err.name, "AclError");
        assert.match(err.message, new RegExp(`^ACL file ${aclFile}: cannot read it: `));
        return true;
      },
    );
  });
});

Deno.test("a malformed ACL file stops start-up naming file and line; the data directory stays free", async () => {
  await withDir(async (dir) => {
    const dataDir = join(dir, "data");
    const aclFile = join(dir, "acl.conf");
    await Deno.writeTextFile(aclFile, "# ok\ntopic read a\ntopic reed b\n");
    await assert.rejects(
      startTestBroker({ aclFile, dataDir }),
      new RegExp(`^AclError: ACL file ${aclFile}:3: unknown access "reed"`),
    );
    await Deno.writeTextFile(aclFile, "topic read a\n");
    await using b = await startTestBroker({ aclFile, dataDir });
    await using c = await loginConsumer(b.consumerPort, "c");
    await sub(c, "a", true);
  });
});

Deno.test("main.ts refuses to start with a malformed ACL file and says which line", async () => {
  await withDir(async (dir) => {
    const aclFile = join(dir, "acl.conf");
    await Deno.writeTextFile(aclFile, "user alice\ntopic a/#/b\n");
    await assert.rejects(
      ChildBroker.start(join(dir, "data"), ["--acl-file", aclFile]),
      new RegExp(`ACL file ${aclFile}:2: pattern "a/#/b": '#' must be the last level`),
    );
  });
});
