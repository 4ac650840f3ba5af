/**
 * Black-box tests of MQTT authentication and ACLs with MQTT.js over real sockets: the
 * password file checked at CONNECT (3.1.1 return codes, v5 reason codes), and the ACL
 * file applied to PUBLISH, SUBSCRIBE, wildcard filters, retained messages and wills,
 * with the 3.1.1 dead letter for a denied PUBLISH.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { setPassword } from "../src/auth/passwords.ts";
import type { BrokerConfig } from "../src/config.ts";
import { json, LineClient, receive, startTestBroker, type TestBroker } from "./helpers.ts";
import { Client, connectRefusal, LEVELS, tcpUrl } from "./mqtt_clients.ts";

/** Few hash iterations for tests (production uses 210,000). */
const FAST = { iterations: 1000 };

const PASSWORDS: Record<string, string> = {
  alice: "open sesame",
  root: "toor",
  ops: "watch it",
};

const ACL = `
user alice
topic readwrite open/#
topic write closed/#
topic read mixed/allowed/#
topic write mixed/#
user root
topic readwrite #
user ops
topic read deadLetterChan
`;

/** A broker with a password file (and the ACL above unless `acl` is false). */
async function secureBroker(
  config: Partial<BrokerConfig> = {},
  acl = true,
): Promise<TestBroker & { dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "mb-mqtt-auth-" });
  try {
    const passwordFile = join(dir, "passwords");
    for (const [user, password] of Object.entries(PASSWORDS)) {
      await setPassword(passwordFile, user, password, FAST);
    }
    const aclFile = join(dir, "acl.conf");
    await Deno.writeTextFile(aclFile, ACL);
    const b = await startTestBroker({
      mqttPort: -1,
      passwordFile,
      ...(acl ? { aclFile } : {}),
      loginFailureDelay: 20,
      loginFailureLimit: 1000,
      ...config,
    });
    const dispose = b[Symbol.asyncDispose];
    return Object.assign(b, {
      dir,
      async [Symbol.asyncDispose]() {
        await dispose.call(b);
        await Deno.remove(dir, { recursive: true });
      },
    });
  } catch (err) {
    await Deno.remove(dir, { recursive: true });
    throw err;
  }
}

/** Connects `user` with the right password. */
function login(b: TestBroker, v: 4 | 5, user: string, clientId = `${user}${v}`) {
  return Client.connect(tcpUrl(b.mqttPort), {
    protocolVersion: v,
    clientId,
    clean: true,
    username: user,
    password: PASSWORDS[user],
  });
}

// --- authentication --------------------------------------------------------------------------

Deno.test("auth: the right user name and password are accepted; wrong or missing ones are refused", async () => {
  await using b = await secureBroker({}, false);
  for (const v of LEVELS) {
    {
      await using c = await login(b, v, "alice");
      assert.equal(v === 5 ? c.connack.reasonCode : c.connack.returnCode, 0);
      // The identity holds: alice can publish and receive.
      await c.subscribe("t", { qos: 1 });
      await c.publish("t", "hello", { qos: 1 });
      assert.equal((await c.next()).text, "hello");
    }
    // 3.1.1 return code 4, v5 reason code 0x86: Bad User Name or Password.
    const bad = v === 5 ? 0x86 : 4;
    const url = tcpUrl(b.mqttPort);
    const base = { protocolVersion: v, clean: true };
    const cases: [string, Record<string, unknown>][] = [
      ["wrong password", { username: "alice", password: "open sesamE" }],
      ["unknown user", { username: "mallory", password: "open sesame" }],
      ["no password", { username: "alice" }],
      ["no credentials", {}],
      ["another user's password", { username: "root", password: "open sesame" }],
    ];
    for (const [what, credentials] of cases) {
      const code = await connectRefusal(url, { ...base, clientId: `x${v}`, ...credentials });
      assert.equal(code, bad, `v${v} ${what}`);
    }
  }
});

Deno.test("auth: an address with too many failed logins is refused with 5 / 0x87 for a while", async () => {
  await using b = await secureBroker({ loginFailureLimit: 2 }, false);
  const url = tcpUrl(b.mqttPort);
  const wrong = { clean: true, username: "alice", password: "nope" };
  assert.equal(await connectRefusal(url, { ...wrong, protocolVersion: 5, clientId: "a" }), 0x86);
  assert.equal(await connectRefusal(url, { ...wrong, protocolVersion: 4, clientId: "b" }), 4);
  // Now even the right password is refused from this address: Not Authorized.
  const right = { clean: true, username: "alice", password: PASSWORDS.alice };
  assert.equal(await connectRefusal(url, { ...right, protocolVersion: 5, clientId: "c" }), 0x87);
  assert.equal(await connectRefusal(url, { ...right, protocolVersion: 4, clientId: "d" }), 5);
});

// --- ACL ---------------------------------------------------------------------------------------

/** A JSON-line consumer logged in as ops and subscribed to the dead letter channel. */
async function deadLetterWatcher(b: TestBroker): Promise<LineClient> {
  const c = await LineClient.connect(b.consumerPort);
  try {
    await c.expect("Please login!");
    await c.send(`log ops ${PASSWORDS.ops}`);
    await c.expect("Successfully logged in!");
    await c.send(json({ type: "SUB", topic: "deadLetterChan" }));
    await c.expect("OK");
  } catch (err) {
    await c.close();
    throw err;
  }
  return c;
}

Deno.test("acl: a denied PUBLISH is v5 PUBACK/PUBREC 0x87; 3.1.1 acked, dropped and dead-lettered", async () => {
  await using b = await secureBroker();
  await using root = await login(b, 5, "root");
  await root.subscribe("secret/x", { qos: 2 });
  await using dlc = await deadLetterWatcher(b);
  for (const v of LEVELS) {
    await using alice = await login(b, v, "alice");
    for (const qos of [1, 2] as const) {
      const outcome = await alice.publish("secret/x", `sneaky ${v} ${qos}`, { qos }).then(
        () => "acked",
        (err) => err,
      );
      if (v === 5) {
        assert.equal((outcome as { code?: number }).code, 0x87, `v5 QoS ${qos}: ${outcome}`);
      } else {
        // 3.1.1 has no negative acknowledgement: positive ack, message dropped.
        assert.equal(outcome, "acked", `3.1.1 QoS ${qos}`);
        const dead = await receive(dlc);
        const letter = dead.msg as Record<string, unknown>;
        assert.equal(letter.reason, "mqtt-publish-denied");
        assert.equal(letter.topic, "secret/x");
        assert.equal(letter.user, "alice");
      }
    }
    // Allowed topics still work on the same connection.
    await alice.publish("open/x", "fine", { qos: 1 });
  }
  // Nothing denied reached the topic: root's own marker is the first message there.
  await root.publish("secret/x", "marker", { qos: 1 });
  assert.deepEqual((await root.until("secret/x", "marker")).map((m) => m.text), ["marker"]);
  await dlc.expectSilence(100);
});

Deno.test("acl: a denied SUBSCRIBE is SUBACK 0x87 (v5) / 0x80 (3.1.1), per filter", async () => {
  await using b = await secureBroker();
  for (const v of LEVELS) {
    await using alice = await login(b, v, "alice");
    const no = v === 5 ? 0x87 : 0x80;
    assert.deepEqual(await alice.subscribe("secret/#", { qos: 1 }), [no]);
    assert.deepEqual(await alice.subscribe("closed/t", { qos: 1 }), [no], "write-only");
    assert.deepEqual(await alice.subscribe("deadLetterChan", { qos: 1 }), [no]);
    assert.deepEqual(
      await alice.subscribe(["open/#", "secret/t", "mixed/allowed/t"], { qos: 1 }),
      [1, no, 1],
    );
  }
});

Deno.test("acl: a wildcard filter reaching allowed topics is granted and delivers only those", async () => {
  await using b = await secureBroker();
  await using root = await login(b, 5, "root");
  // Retained on both sides of the line: only the allowed one is sent at SUBSCRIBE.
  await root.publish("mixed/denied/r", "retained, denied", { qos: 1, retain: true });
  await root.publish("mixed/allowed/r", "retained, allowed", { qos: 1, retain: true });
  for (const v of LEVELS) {
    await using alice = await login(b, v, "alice");
    assert.deepEqual(await alice.subscribe("mixed/#", { qos: 1 }), [1]);
    const first = await alice.next();
    assert.deepEqual([first.topic, first.text, first.packet.retain], [
      "mixed/allowed/r",
      "retained, allowed",
      true,
    ]);
    // alice may write everywhere under mixed/, but reads only mixed/allowed/.
    await alice.publish(`mixed/denied/${v}`, "denied 1", { qos: 1 });
    await alice.publish(`mixed/allowed/${v}`, "allowed 1", { qos: 1 });
    await root.publish(`mixed/denied/${v}`, "denied 2", { qos: 1 });
    await root.publish(`mixed/allowed/${v}`, "allowed 2", { qos: 1 });
    const got = await alice.until(`mixed/allowed/${v}`, "allowed 2");
    assert.deepEqual(got.map((m) => [m.topic, m.text]), [
      [`mixed/allowed/${v}`, "allowed 1"],
      [`mixed/allowed/${v}`, "allowed 2"],
    ]);
    await alice.expectSilence(200);
  }
});

Deno.test("acl: a will to a topic the user may not publish to refuses the CONNECT (5 / 0x87)", async () => {
  await using b = await secureBroker();
  for (const v of LEVELS) {
    const code = await connectRefusal(tcpUrl(b.mqttPort), {
      protocolVersion: v,
      clientId: `willing${v}`,
      clean: true,
      username: "alice",
      password: PASSWORDS.alice,
      will: { topic: "secret/will", payload: "x", qos: 1, retain: false },
    });
    assert.equal(code, v === 5 ? 0x87 : 5);
  }
  // A will to an allowed topic is accepted.
  await using ok = await Client.connect(tcpUrl(b.mqttPort), {
    protocolVersion: 5,
    clientId: "fine",
    clean: true,
    username: "alice",
    password: PASSWORDS.alice,
    will: { topic: "open/will", payload: "x", qos: 1, retain: false },
  });
  assert.equal(ok.connack.reasonCode, 0);
});
