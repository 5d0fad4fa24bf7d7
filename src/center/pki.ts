// A small PKI for rap-center: one CA (P-256, 10 years) that signs the
// center's server certificate and every box's client certificate. The box
// pins ca.pem for the uplink; the center trusts it for client certificates.
//
// Keys and certificates come from the `openssl` CLI (a dev/test tool on the
// center side) through the subprocess door, with a config file written here so
// the system's openssl.cnf cannot add extensions. Work happens in a private
// temporary directory; the results are moved into place only when all of it
// succeeded, so a failure leaves nothing half-issued behind.
//
// Private keys are written 0600 and never printed. The CA key is not
// passphrase-protected: this is a reference center for tests, demos and small
// fleets, not an offline root.

import { X509Certificate, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError } from '../lib/errors.ts';
import type { Runner } from '../lib/run.ts';
import { DEVICE_ID, DEVICE_ID_DOC } from '../protocol/telemetry.ts';

export const CA_DAYS = 3650;
/** CA/Browser Forum ceiling for leaf certificates; boxes renew well before. */
export const LEAF_DAYS = 397;
export const CA_SUBJECT = 'rap-center CA';

const OPENSSL_TIMEOUT_MS = 30_000;
const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export interface PkiPaths {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  devicesDir: string;
  deviceCert(id: string): string;
  deviceKey(id: string): string;
}

export function pkiPaths(dir: string): PkiPaths {
  const devicesDir = join(dir, 'devices');
  return {
    dir,
    caCert: join(dir, 'ca.pem'),
    caKey: join(dir, 'ca.key'),
    serverCert: join(dir, 'server.pem'),
    serverKey: join(dir, 'server.key'),
    devicesDir,
    deviceCert: (id) => join(devicesDir, `${id}.pem`),
    deviceKey: (id) => join(devicesDir, `${id}.key`),
  };
}

/** What was written, for the CLI to report (never the key itself). */
export interface Issued {
  cert: string;
  key: string;
  subject: string;
  notAfter: string;
  sha256: string;
}

export interface PkiDeps {
  run: Runner;
}

// Extensions are fixed here, not taken from the system openssl.cnf.
function opensslConfig(san: string[]): string {
  return `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
${san.length > 0 ? `subjectAltName = ${san.join(', ')}` : ''}
[device]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`;
}

/** A positive 127-bit serial: unique without a serial file to keep. */
function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x10;
  return `0x${b.toString('hex')}`;
}

function refuseExisting(paths: string[]): void {
  const there = paths.filter((p) => existsSync(p));
  if (there.length > 0) {
    throw new RapError('RAP_PKI', `${there.join(' and ')} already exist${there.length === 1 ? 's' : ''}; refusing to overwrite`, { paths: there });
  }
}

function requireCa(p: PkiPaths): void {
  if (!existsSync(p.caCert) || !existsSync(p.caKey)) {
    throw new RapError('RAP_PKI', `no CA in ${p.dir}: run rap-center pki init --dir ${p.dir} first`, { dir: p.dir });
  }
}

function describe(certPath: string, keyPath: string, pem: string): Issued {
  const x = new X509Certificate(pem);
  return { cert: certPath, key: keyPath, subject: x.subject, notAfter: new Date(x.validTo).toISOString(), sha256: x.fingerprint256 };
}

/** Run `work(tmp)` in a private temp dir under `dir`, always removing it. */
async function inTemp<T>(dir: string, work: (tmp: string) => Promise<T>): Promise<T> {
  const tmp = mkdtempSync(join(dir, '.pki-'));
  chmodSync(tmp, 0o700);
  try {
    return await work(tmp);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function newKey(deps: PkiDeps, path: string): Promise<void> {
  await deps.run(
    ['openssl', 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:named_curve', '-out', path],
    { timeoutMs: OPENSSL_TIMEOUT_MS },
  );
  chmodSync(path, 0o600);
}

/** Key + CSR + certificate signed by the CA, for a leaf with extensions section `section`. */
async function issueLeaf(deps: PkiDeps, p: PkiPaths, tmp: string, cn: string, section: 'server' | 'device', san: string[]): Promise<{ key: string; cert: string }> {
  const conf = join(tmp, 'openssl.cnf');
  writeFileSync(conf, opensslConfig(san), { mode: 0o600 });
  const key = join(tmp, 'key.pem');
  const csr = join(tmp, 'req.csr');
  const cert = join(tmp, 'cert.pem');
  await newKey(deps, key);
  await deps.run(['openssl', 'req', '-new', '-config', conf, '-key', key, '-subj', `/CN=${cn}`, '-out', csr], { timeoutMs: OPENSSL_TIMEOUT_MS });
  await deps.run(
    ['openssl', 'x509', '-req', '-in', csr, '-CA', p.caCert, '-CAkey', p.caKey, '-set_serial', serial(), '-days', String(LEAF_DAYS),
      '-sha256', '-extfile', conf, '-extensions', section, '-out', cert],
    { timeoutMs: OPENSSL_TIMEOUT_MS },
  );
  const pem = readFileSync(cert, 'utf8');
  // Prove the chain before anything is moved into place.
  const ca = new X509Certificate(readFileSync(p.caCert));
  if (!new X509Certificate(pem).verify(ca.publicKey)) {
    throw new RapError('RAP_PKI', `openssl produced a certificate for ${cn} that ${p.caCert} did not sign`);
  }
  return { key: readFileSync(key, 'utf8'), cert: pem };
}

/** Create the CA in `dir` (made 0700 if missing). */
export async function pkiInit(dir: string, deps: PkiDeps): Promise<Issued> {
  const p = pkiPaths(dir);
  refuseExisting([p.caCert, p.caKey]);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return inTemp(dir, async (tmp) => {
    const conf = join(tmp, 'openssl.cnf');
    writeFileSync(conf, opensslConfig([]), { mode: 0o600 });
    const key = join(tmp, 'key.pem');
    const cert = join(tmp, 'cert.pem');
    await newKey(deps, key);
    await deps.run(
      ['openssl', 'req', '-new', '-x509', '-config', conf, '-key', key, '-subj', `/CN=${CA_SUBJECT}`, '-set_serial', serial(),
        '-days', String(CA_DAYS), '-sha256', '-extensions', 'ca', '-out', cert],
      { timeoutMs: OPENSSL_TIMEOUT_MS },
    );
    const pem = readFileSync(cert, 'utf8');
    writeFileDurable(p.caKey, readFileSync(key), 0o600);
    writeFileDurable(p.caCert, pem, 0o644);
    return describe(p.caCert, p.caKey, pem);
  });
}

export interface ServerCertRequest {
  /** DNS name boxes use in center.url (the CN and the first SAN). */
  name: string;
  /** IP addresses boxes may use instead (SAN entries). */
  ips: string[];
}

export function checkServerRequest(r: ServerCertRequest): void {
  if (!HOSTNAME.test(r.name)) throw new RapError('RAP_USAGE', `--name '${r.name}' is not a DNS name`);
  for (const ip of r.ips) if (isIP(ip) === 0) throw new RapError('RAP_USAGE', `--ip '${ip}' is not an IP address`);
}

export async function pkiIssueServer(dir: string, r: ServerCertRequest, deps: PkiDeps): Promise<Issued> {
  checkServerRequest(r);
  const p = pkiPaths(dir);
  requireCa(p);
  refuseExisting([p.serverCert, p.serverKey]);
  const san = [`DNS:${r.name}`, ...r.ips.map((ip) => `IP:${ip}`)];
  return inTemp(dir, async (tmp) => {
    const out = await issueLeaf(deps, p, tmp, r.name, 'server', san);
    writeFileDurable(p.serverKey, out.key, 0o600);
    writeFileDurable(p.serverCert, out.cert, 0o644);
    return describe(p.serverCert, p.serverKey, out.cert);
  });
}

export function checkDeviceId(id: string): void {
  if (!DEVICE_ID.test(id)) throw new RapError('RAP_USAGE', `device id '${id}' is invalid: expected ${DEVICE_ID_DOC}`);
}

export async function pkiIssueDevice(dir: string, id: string, deps: PkiDeps): Promise<Issued> {
  checkDeviceId(id);
  const p = pkiPaths(dir);
  requireCa(p);
  refuseExisting([p.deviceCert(id), p.deviceKey(id)]);
  mkdirSync(p.devicesDir, { recursive: true, mode: 0o700 });
  return inTemp(dir, async (tmp) => {
    const out = await issueLeaf(deps, p, tmp, id, 'device', []);
    // Both owner-only: the pair is copied onto one box and nowhere else.
    writeFileDurable(p.deviceKey(id), out.key, 0o600);
    writeFileDurable(p.deviceCert(id), out.cert, 0o600);
    return describe(p.deviceCert(id), p.deviceKey(id), out.cert);
  });
}
