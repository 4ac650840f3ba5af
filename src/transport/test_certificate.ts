/**
 * Test-only: a throwaway self-signed certificate for `localhost` and `127.0.0.1`,
 * made by `openssl` (the Debian package `openssl`; `.ci/run` installs it), so that no
 * key is ever committed. Clients trust it with `caCerts: [cert]`.
 *
 * @module
 */

import type { TlsPem } from "./tls.ts";

let made: Promise<TlsPem> | undefined;

/**
 * The test certificate and key as PEM text, made once per test process (an RSA key
 * takes a moment) and valid for a day.
 *
 * @example
 * ```ts
 * const { cert, key } = await testCertificate();
 * const client = await Deno.connectTls({ hostname: "localhost", port, caCerts: [cert] });
 * ```
 * @throws {Error} if openssl is missing or fails, saying how to install it
 */
export function testCertificate(): Promise<TlsPem> {
  return made ??= makeCertificate();
}

/**
 * Writes the test certificate and key into `dir` as `cert.pem` and `key.pem`, for a
 * broker that reads its TLS files at start-up. Returns their paths.
 */
export async function writeTestCertificate(
  dir: string,
): Promise<{ certFile: string; keyFile: string }> {
  const { cert, key } = await testCertificate();
  const certFile = `${dir}/cert.pem`;
  const keyFile = `${dir}/key.pem`;
  await Deno.writeTextFile(certFile, cert);
  await Deno.writeTextFile(keyFile, key, { mode: 0o600 });
  return { certFile, keyFile };
}

async function makeCertificate(): Promise<TlsPem> {
  const dir = await Deno.makeTempDir({ prefix: "mb-tls-" });
  try {
    const keyFile = `${dir}/key.pem`;
    const certFile = `${dir}/cert.pem`;
    // CA:FALSE: without it openssl marks the certificate as a CA, and rustls then
    // refuses it as a server's own certificate ("CaUsedAsEndEntity").
    const args = [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-days",
      "1",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ];
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" })
        .output();
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      throw new Error(
        "the TLS tests need openssl to make a test certificate, and it is not installed: " +
          "install it (Debian/Ubuntu: apt-get install openssl) or run .ci/run",
      );
    }
    if (!output.success) {
      const stderr = new TextDecoder().decode(output.stderr).trim();
      throw new Error(`openssl ${args.join(" ")} failed (exit ${output.code}): ${stderr}`);
    }
    return {
      cert: await Deno.readTextFile(certFile),
      key: await Deno.readTextFile(keyFile),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
