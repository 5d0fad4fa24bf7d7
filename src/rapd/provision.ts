// Provisioning bundles (docs/provisioning.md): per-box material the factory
// writes onto the data partition, consumed once on first boot.
//
//   provision/
//     manifest.json     {"format": "rapbox-provision/1", "deviceId", "createdAt",
//                        "files": {"<name>": "<sha256 hex>"}}
//     rapd.json         site config, merged over the image's factory config
//     center-ca.pem     the center's CA (optional; required with center.url)
//     device.pem        device certificate, CN = deviceId (optional, with device.key)
//     device.key        its private key (secret)
//     enrollment-token  one-time enrollment token (secret; issue 8 defines its use)
//
// The bundle is checked whole before anything is written: the manifest, every
// hash, no file missing or extra, the merged config through the one config
// parser (parseConfig), certificates and key. Secrets are never logged: only
// file names and hashes are. Applying writes each file durably, owner-only,
// then renames the bundle to `provision.applied` (the "consumed" mark: the
// next boot finds no bundle) and removes the secrets from it. A bad bundle is
// renamed to `provision.rejected` with `reason.txt`; the box keeps its config.

import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fsyncDir, writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { DEVICE_ID, DEVICE_ID_DOC } from '../protocol/telemetry.ts';
import { parseConfig, type Config } from './config.ts';
import type { ProvisionPaths } from './paths.ts';

export const PROVISION_FORMAT = 'rapbox-provision/1';
export const MANIFEST = 'manifest.json';

/** The files a bundle may hold; anything else is refused. */
export const BUNDLE_FILES = {
  'rapd.json': { secret: false, doc: 'site config (rapd.json keys), merged over the factory config' },
  'center-ca.pem': { secret: false, doc: "the center's CA certificate (PEM), to center.caFile" },
  'device.pem': { secret: false, doc: 'device certificate (PEM, CN = deviceId), to tls.certFile' },
  'device.key': { secret: true, doc: 'device private key (PEM), to tls.keyFile' },
  'enrollment-token': { secret: true, doc: 'one-time enrollment token (issue 8), to <paths.state>/pki/enrollment-token' },
} as const;
export type BundleFile = keyof typeof BUNDLE_FILES;
const NAMES = Object.keys(BUNDLE_FILES) as BundleFile[];

/** 16-1024 URL-safe or base64 characters on one line: what an enrollment token may be. */
const TOKEN = /^[A-Za-z0-9._~+/=-]{16,1024}$/;
const SHA256 = /^[0-9a-f]{64}$/;

export interface Manifest {
  format: typeof PROVISION_FORMAT;
  deviceId: string;
  createdAt: string;
  files: Partial<Record<BundleFile, string>>;
}

export interface Bundle {
  manifest: Manifest;
  files: Map<BundleFile, Buffer>;
}

/** A checked bundle: the merged configuration and where each file goes. */
export interface CheckedBundle extends Bundle {
  config: Config;
  /** The merged site config document written to the site config path. */
  siteDoc: Record<string, unknown>;
  /** Destination of each identity file (from the merged config). */
  targets: Map<BundleFile, string>;
}

function fail(message: string, context: Record<string, unknown> = {}): never {
  throw new RapError('RAP_PROVISION', message, context);
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

export function parseManifest(doc: unknown): Manifest {
  if (!isObject(doc)) fail(`${MANIFEST}: expected a JSON object`);
  const known = ['format', 'deviceId', 'createdAt', 'files'];
  for (const k of Object.keys(doc)) if (!known.includes(k)) fail(`${MANIFEST}: unknown key '${k}' (known: ${known.join(', ')})`);
  if (doc['format'] !== PROVISION_FORMAT) fail(`${MANIFEST}: 'format' is ${JSON.stringify(doc['format'])}, expected "${PROVISION_FORMAT}"`);
  const id = doc['deviceId'];
  if (typeof id !== 'string' || !DEVICE_ID.test(id)) fail(`${MANIFEST}: 'deviceId' is ${JSON.stringify(id)}, expected ${DEVICE_ID_DOC}`);
  const at = doc['createdAt'];
  if (typeof at !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(at) || Number.isNaN(Date.parse(at))) {
    fail(`${MANIFEST}: 'createdAt' is ${JSON.stringify(at)}, expected an ISO 8601 UTC time ("2026-11-23T18:00:00Z")`);
  }
  const files = doc['files'];
  if (!isObject(files)) fail(`${MANIFEST}: 'files' must be an object of file name -> sha256`);
  for (const [name, hash] of Object.entries(files)) {
    if (!(NAMES as string[]).includes(name)) fail(`${MANIFEST}: 'files' names '${name}', which a bundle may not hold (allowed: ${NAMES.join(', ')})`);
    if (typeof hash !== 'string' || !SHA256.test(hash)) fail(`${MANIFEST}: 'files.${name}' must be a lowercase sha256 hex digest, got ${JSON.stringify(hash)}`);
  }
  if (!('rapd.json' in files)) fail(`${MANIFEST}: 'files' must list rapd.json (the site config)`);
  return { format: PROVISION_FORMAT, deviceId: id, createdAt: at, files: files as Manifest['files'] };
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Read a bundle directory: the manifest, and exactly the files it lists, each matching its hash. */
export function readBundle(dir: string): Bundle {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch (e) {
    fail(`cannot read the bundle directory ${dir}: ${errorMessage(e)}`, { dir });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8'));
  } catch (e) {
    fail(`${MANIFEST}: ${existsSync(join(dir, MANIFEST)) ? `not valid JSON: ${errorMessage(e)}` : 'missing'}`, { dir });
  }
  const manifest = parseManifest(doc);
  const listed = Object.keys(manifest.files) as BundleFile[];
  const extra = entries.filter((e) => e !== MANIFEST && !(listed as string[]).includes(e));
  if (extra.length > 0) fail(`files not listed in ${MANIFEST}: ${extra.join(', ')}`, { dir });
  const files = new Map<BundleFile, Buffer>();
  for (const name of listed) {
    const path = join(dir, name);
    if (!existsSync(path) || !statSync(path).isFile()) fail(`${name}: listed in ${MANIFEST} but missing`, { dir });
    const data = readFileSync(path);
    if (sha256(data) !== manifest.files[name]) fail(`${name}: sha256 ${sha256(data)} does not match ${MANIFEST} (${manifest.files[name]}): damaged or changed after it was made`, { dir });
    files.set(name, data);
  }
  return { manifest, files };
}

/** Objects merge key by key; anything else (lists too) replaces. */
export function mergeConfig(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isObject(v) && isObject(out[k]) ? mergeConfig(out[k], v) : v;
  return out;
}

function pem(name: BundleFile, data: Buffer): string {
  const text = data.toString('utf8');
  if (!text.includes('-----BEGIN ')) fail(`${name}: not PEM`);
  return text;
}

/**
 * Everything that can be known before writing: the merged config passes the
 * one config parser, the device id agrees everywhere, certificates parse,
 * the key belongs to the certificate, and every destination lies in rapd's
 * state directory.
 */
export function checkBundle(bundle: Bundle, factory: Record<string, unknown>): CheckedBundle {
  const { manifest, files } = bundle;
  let site: unknown;
  try {
    site = JSON.parse(files.get('rapd.json')!.toString('utf8'));
  } catch (e) {
    fail(`rapd.json: not valid JSON: ${errorMessage(e)}`);
  }
  if (!isObject(site)) fail('rapd.json: expected a JSON object (site config keys)');
  const siteId = isObject(site['device']) ? site['device']['id'] : undefined;
  if (siteId !== undefined && siteId !== manifest.deviceId) {
    fail(`rapd.json: device.id ${JSON.stringify(siteId)} differs from the manifest's deviceId "${manifest.deviceId}"`);
  }
  const siteDoc = mergeConfig(mergeConfig(factory, site), { device: { id: manifest.deviceId } });
  let config: Config;
  try {
    config = parseConfig(siteDoc, 'rapd.json merged over the factory config');
  } catch (e) {
    fail(`rapd.json: ${errorMessage(e)}`);
  }
  if (config['center.url'] !== '' && !files.has('center-ca.pem')) fail(`center.url is set (${config['center.url']}) but the bundle has no center-ca.pem to trust it by`);
  if (files.has('center-ca.pem')) {
    let ca: X509Certificate;
    try {
      ca = new X509Certificate(pem('center-ca.pem', files.get('center-ca.pem')!));
    } catch (e) {
      fail(`center-ca.pem: not a certificate: ${errorMessage(e)}`);
    }
    if (!ca.ca) fail(`center-ca.pem: ${ca.subject.replaceAll('\n', ', ')} is not a CA certificate`);
  }
  if (files.has('device.pem') !== files.has('device.key')) fail('device.pem and device.key come together: the bundle has only one of them');
  if (files.has('device.pem')) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(pem('device.pem', files.get('device.pem')!));
    } catch (e) {
      fail(`device.pem: not a certificate: ${errorMessage(e)}`);
    }
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
    if (cn !== manifest.deviceId) fail(`device.pem: CN ${JSON.stringify(cn ?? null)} is not the device id "${manifest.deviceId}"`);
    let key;
    try {
      key = createPrivateKey(pem('device.key', files.get('device.key')!));
    } catch {
      // Never the key's text or the parser's detail: it may quote it.
      fail('device.key: not a PEM private key');
    }
    if (!cert.checkPrivateKey(key)) fail('device.key: does not belong to device.pem');
  }
  if (files.has('enrollment-token') && !TOKEN.test(files.get('enrollment-token')!.toString('utf8').replace(/\n$/, ''))) {
    fail('enrollment-token: expected one line of 16-1024 letters, digits or ._~+/=- (content not shown: it is a secret)');
  }
  const state = config['paths.state'];
  const targets = new Map<BundleFile, string>([
    ['center-ca.pem', config['center.caFile']],
    ['device.pem', config['tls.certFile']],
    ['device.key', config['tls.keyFile']],
    ['enrollment-token', join(state, 'pki', 'enrollment-token')],
  ]);
  for (const [name, to] of targets) {
    if (!files.has(name)) targets.delete(name);
    else if (!to.startsWith(`${state}/`)) fail(`${name} would go to ${to}, outside rapd's state directory ${state}`);
  }
  return { ...bundle, config, siteDoc, targets };
}

export function readFactoryConfig(path: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`factory config ${path}: ${errorMessage(e)}`, { path });
  }
  if (!isObject(doc)) fail(`factory config ${path}: expected a JSON object`, { path });
  return doc;
}

export interface CreateOptions {
  out: string;
  deviceId: string;
  /** The site config file (rapd.json keys). */
  config: string;
  centerCa?: string;
  cert?: string;
  key?: string;
  enrollmentToken?: string;
  /** The image's factory config, to check the merge as the box will (default: none, i.e. defaults). */
  factoryConfig?: string;
  now?: Date;
}

/** Make a bundle directory (0700, files 0600) and check it as the box will; a bad one is removed. */
export function createBundle(o: CreateOptions): CheckedBundle {
  if (existsSync(o.out) && readdirSync(o.out).length > 0) fail(`${o.out} exists and is not empty; refusing to overwrite`, { out: o.out });
  const sources: [BundleFile, string | undefined][] = [
    ['rapd.json', o.config],
    ['center-ca.pem', o.centerCa],
    ['device.pem', o.cert],
    ['device.key', o.key],
    ['enrollment-token', o.enrollmentToken],
  ];
  mkdirSync(o.out, { recursive: true, mode: 0o700 });
  chmodSync(o.out, 0o700);
  try {
    const files: Record<string, string> = {};
    for (const [name, from] of sources) {
      if (from === undefined) continue;
      if (!existsSync(from)) fail(`${name}: ${from} not found`);
      copyFileSync(from, join(o.out, name));
      chmodSync(join(o.out, name), 0o600);
      files[name] = sha256(readFileSync(join(o.out, name)));
    }
    const manifest = { format: PROVISION_FORMAT, deviceId: o.deviceId, createdAt: (o.now ?? new Date()).toISOString().replace(/\.\d+Z$/, 'Z'), files };
    parseManifest(manifest);
    writeFileSync(join(o.out, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
    return checkBundle(readBundle(o.out), o.factoryConfig ? readFactoryConfig(o.factoryConfig) : {});
  } catch (e) {
    rmSync(o.out, { recursive: true, force: true });
    throw e;
  }
}

/** Move `from` to `to`, replacing an older `to` (the last applied or rejected bundle is what is kept). */
function replaceDir(from: string, to: string): void {
  rmSync(to, { recursive: true, force: true });
  renameSync(from, to);
  fsyncDir(dirname(to));
}

export type ApplyOutcome = { result: 'none' } | { result: 'applied'; bundle: CheckedBundle } | { result: 'rejected'; reason: string };

/**
 * First boot: consume the pending bundle once. Applied: identity files and
 * the merged site config written (0600, directories 0700), then the bundle
 * renamed to `applied` with its secrets removed. Rejected: renamed to
 * `rejected` with reason.txt, nothing else changed. No bundle: nothing.
 */
export function applyPendingBundle(p: ProvisionPaths, log: Logger): ApplyOutcome {
  if (!existsSync(p.bundle)) return { result: 'none' };
  let checked: CheckedBundle;
  try {
    checked = checkBundle(readBundle(p.bundle), readFactoryConfig(p.factoryConfig));
  } catch (e) {
    const reason = errorMessage(e);
    try {
      writeFileDurable(join(p.bundle, 'reason.txt'), `${reason}\n`);
    } catch {
      // Not a directory: kept as it is; the journal has the reason.
    }
    replaceDir(p.bundle, p.rejected);
    log.error('provisioning bundle rejected; the box keeps its configuration', { reason, keptIn: p.rejected });
    return { result: 'rejected', reason };
  }
  const { manifest, files, targets } = checked;
  // Crash-safe order: everything is written before the bundle is marked
  // consumed (renamed), so a power cut means the next boot applies it again.
  for (const [name, to] of targets) {
    mkdirSync(dirname(to), { recursive: true, mode: 0o700 });
    writeFileDurable(to, files.get(name)!, 0o600);
  }
  mkdirSync(dirname(p.siteConfig), { recursive: true, mode: 0o700 });
  writeFileDurable(p.siteConfig, `${JSON.stringify(checked.siteDoc, null, 2)}\n`, 0o600);
  replaceDir(p.bundle, p.applied);
  for (const name of NAMES) if (BUNDLE_FILES[name].secret) rmSync(join(p.applied, name), { force: true });
  fsyncDir(p.applied);
  log.info('provisioning bundle applied', {
    deviceId: manifest.deviceId,
    createdAt: manifest.createdAt,
    // Names and destinations only; hashes identify what came without showing it.
    installed: Object.fromEntries([...targets].map(([name, to]) => [name, to])),
    siteConfig: p.siteConfig,
    consumedTo: p.applied,
  });
  return { result: 'applied', bundle: checked };
}
