import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pkiInit, pkiIssueDevice, pkiPaths } from '../../../src/center/pki.ts';
import { createLogger } from '../../../src/lib/log.ts';
import { run } from '../../../src/lib/run.ts';
import { provisionPaths } from '../../../src/rapd/paths.ts';
import { applyPendingBundle, createBundle, mergeConfig, parseManifest } from '../../../src/rapd/provision.ts';
import { provisionMain } from '../../../src/rapd/provision-cli.ts';

const FACTORY = { device: { name: 'rapbox' }, ports: [{ name: 'p1', interface: 'inst1' }] };
const TOKEN = 'tok-0123456789abcdef-SECRET';

/** A box root (etc/rapd/rapd.json, var/lib/rapd) and factory material: PKI made by the real openssl at test time. */
async function setup(t: Test) {
  const dir = t.testdir({ root: { etc: { rapd: { 'rapd.json': JSON.stringify(FACTORY) } }, var: { lib: { rapd: { 'rapd.json': JSON.stringify(FACTORY) } } } } });
  const root = join(dir, 'root');
  const state = join(root, 'var/lib/rapd');
  const pkiDir = join(dir, 'pki');
  await pkiInit(pkiDir, { run });
  await pkiIssueDevice(pkiDir, 'box-0042', { run });
  await pkiIssueDevice(pkiDir, 'box-other', { run });
  const pki = pkiPaths(pkiDir);
  const site = {
    device: { name: 'lab-3' },
    paths: { state },
    center: { url: 'https://center.example:8443', caFile: join(state, 'pki/center-ca.pem') },
    tls: { certFile: join(state, 'pki/device.pem'), keyFile: join(state, 'pki/device.key') },
    wan: { address: '10.0.2.42/24', gateway: '10.0.2.2', dns: '10.0.2.3', ntp: 'ntp.example.org' },
  };
  writeFileSync(join(dir, 'site.json'), JSON.stringify(site));
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
  const opts = {
    deviceId: 'box-0042',
    config: join(dir, 'site.json'),
    centerCa: pki.caCert,
    cert: pki.deviceCert('box-0042'),
    key: pki.deviceKey('box-0042'),
    enrollmentToken: join(dir, 'token'),
    factoryConfig: join(root, 'etc/rapd/rapd.json'),
    now: new Date('2026-11-23T18:00:00.123Z'),
  };
  const paths = provisionPaths(root);
  const lines: string[] = [];
  const log = createLogger({ write: (l) => void lines.push(l), syslogPrefix: false });
  return { dir, root, state, pki, opts, paths, lines, log };
}

t.test('create, then first boot applies it once: merged config, owner-only identity files, consumed', async (t) => {
  const s = await setup(t);
  const made = createBundle({ ...s.opts, out: s.paths.bundle });
  t.same(Object.keys(made.manifest.files).sort(), ['center-ca.pem', 'device.key', 'device.pem', 'enrollment-token', 'rapd.json']);
  t.equal(made.manifest.createdAt, '2026-11-23T18:00:00Z');
  t.equal(statSync(s.paths.bundle).mode & 0o777, 0o700);
  t.equal(statSync(join(s.paths.bundle, 'device.key')).mode & 0o777, 0o600);

  const out = applyPendingBundle(s.paths, s.log);
  t.equal(out.result, 'applied');
  const site = JSON.parse(readFileSync(s.paths.siteConfig, 'utf8')) as Record<string, Record<string, unknown>>;
  t.same(site['device'], { name: 'lab-3', id: 'box-0042' }, 'site keys over the factory default, device id from the manifest');
  t.same(site['ports'], FACTORY.ports, 'factory keys the site did not set are kept');
  t.equal(site['wan']!['address'], '10.0.2.42/24');
  t.equal(statSync(s.paths.siteConfig).mode & 0o777, 0o600);
  for (const [f, from] of [['center-ca.pem', s.pki.caCert], ['device.pem', s.pki.deviceCert('box-0042')], ['device.key', s.pki.deviceKey('box-0042')]] as const) {
    t.equal(readFileSync(join(s.state, 'pki', f), 'utf8'), readFileSync(from, 'utf8'), `${f} installed`);
    t.equal(statSync(join(s.state, 'pki', f)).mode & 0o777, 0o600, `${f} owner-only`);
  }
  t.equal(readFileSync(join(s.state, 'pki/enrollment-token'), 'utf8'), `${TOKEN}\n`);
  t.equal(statSync(join(s.state, 'pki')).mode & 0o777, 0o700);
  t.notOk(existsSync(s.paths.bundle), 'no bundle pending any more');
  t.same(readdirSync(s.paths.applied).sort(), ['center-ca.pem', 'device.pem', 'manifest.json', 'rapd.json'], 'consumed bundle kept without its secrets');

  const log = s.lines.join('');
  t.match(log, /"msg":"provisioning bundle applied","deviceId":"box-0042"/);
  t.notMatch(log, /SECRET|PRIVATE KEY/, 'neither the token nor the key reach the log');

  // Second boot: nothing pending, nothing changes.
  writeFileSync(s.paths.siteConfig, '{"device":{"name":"changed-later"}}');
  t.same(applyPendingBundle(s.paths, s.log), { result: 'none' });
  t.equal(readFileSync(s.paths.siteConfig, 'utf8'), '{"device":{"name":"changed-later"}}', 'not re-applied');
});

// State table: a damaged bundle -> the reason; the box keeps its config.
const bad: { name: string; change: (b: string, s: Awaited<ReturnType<typeof setup>>) => void; want: RegExp }[] = [
  { name: 'a file changed after it was made', change: (b) => writeFileSync(join(b, 'rapd.json'), '{}'), want: /^rapd\.json: sha256 [0-9a-f]{64} does not match manifest\.json/ },
  { name: 'a listed file missing', change: (b) => rmSync(join(b, 'center-ca.pem')), want: /^center-ca\.pem: listed in manifest\.json but missing/ },
  { name: 'an extra file', change: (b) => writeFileSync(join(b, 'notes.txt'), 'x'), want: /^files not listed in manifest\.json: notes\.txt/ },
  { name: 'no manifest', change: (b) => rmSync(join(b, 'manifest.json')), want: /^manifest\.json: missing/ },
  { name: 'another format version', change: (b) => editManifest(b, (m) => (m['format'] = 'rapbox-provision/2')), want: /'format' is "rapbox-provision\/2", expected "rapbox-provision\/1"/ },
  { name: 'a bad device id', change: (b) => editManifest(b, (m) => (m['deviceId'] = 'box 42')), want: /'deviceId' is "box 42", expected 1-64 letters/ },
  { name: 'a certificate for another box', change: (b, s) => replaceFile(b, 'device.pem', readFileSync(s.pki.deviceCert('box-other'))), want: /^device\.pem: CN "box-other" is not the device id "box-0042"/ },
  { name: 'a key that is not the certificate\'s', change: (b, s) => replaceFile(b, 'device.key', readFileSync(s.pki.deviceKey('box-other'))), want: /^device\.key: does not belong to device\.pem/ },
  { name: 'a config the parser refuses', change: (b) => replaceFile(b, 'rapd.json', Buffer.from('{"wan":{"address":"10.0.2.42/24"}}')), want: /^rapd\.json: config .*key 'wan\.gateway' is required/ },
  { name: 'a device id that disagrees', change: (b) => replaceFile(b, 'rapd.json', Buffer.from('{"device":{"id":"box-1"}}')), want: /^rapd\.json: device\.id "box-1" differs from the manifest's deviceId "box-0042"/ },
  { name: 'a token that is not one', change: (b) => replaceFile(b, 'enrollment-token', Buffer.from('short')), want: /^enrollment-token: expected one line .*content not shown/ },
  { name: 'a leaf certificate as the center CA', change: (b, s) => replaceFile(b, 'center-ca.pem', readFileSync(s.pki.deviceCert('box-0042'))), want: /^center-ca\.pem: CN=box-0042 is not a CA certificate/ },
];

function editManifest(b: string, f: (m: Record<string, unknown>) => void): void {
  const m = JSON.parse(readFileSync(join(b, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  f(m);
  writeFileSync(join(b, 'manifest.json'), JSON.stringify(m));
}

/** Replace a file and fix its hash: the content is what is wrong, not the manifest. */
function replaceFile(b: string, name: string, data: Buffer): void {
  writeFileSync(join(b, name), data);
  editManifest(b, (m) => ((m['files'] as Record<string, string>)[name] = sha256(data)));
}

const sha256 = (d: Buffer): string => createHash('sha256').update(d).digest('hex');

for (const c of bad) {
  t.test(`rejected: ${c.name}`, async (t) => {
    const s = await setup(t);
    createBundle({ ...s.opts, out: s.paths.bundle });
    const before = readFileSync(s.paths.siteConfig, 'utf8');
    c.change(s.paths.bundle, s);
    const out = applyPendingBundle(s.paths, s.log);
    t.equal(out.result, 'rejected');
    t.match(out.result === 'rejected' ? out.reason : '', c.want);
    t.equal(readFileSync(s.paths.siteConfig, 'utf8'), before, 'the box keeps its configuration');
    t.notOk(existsSync(join(s.state, 'pki')), 'no identity file written');
    t.notOk(existsSync(s.paths.bundle), 'not pending any more (not retried at every boot)');
    t.match(readFileSync(join(s.paths.rejected, 'reason.txt'), 'utf8'), c.want, 'kept for diagnosis with the reason');
    t.match(s.lines.join(''), /"level":"error","msg":"provisioning bundle rejected; the box keeps its configuration"/);
    t.notMatch(s.lines.join(''), /SECRET|PRIVATE KEY/);
  });
}

t.test('create refuses what the box would reject, and leaves nothing behind', async (t) => {
  const s = await setup(t);
  const out = join(s.dir, 'b');
  t.throws(() => createBundle({ ...s.opts, out, centerCa: undefined }), { code: 'RAP_PROVISION', message: /center\.url is set .* but the bundle has no center-ca\.pem/ });
  t.notOk(existsSync(out));
  t.throws(() => createBundle({ ...s.opts, out, key: undefined }), { message: /device\.pem and device\.key come together/ });
  mkdirSync(out);
  writeFileSync(join(out, 'x'), '');
  t.throws(() => createBundle({ ...s.opts, out }), { message: /exists and is not empty; refusing to overwrite/ });
});

t.test('manifest and merge rules', async (t) => {
  t.throws(() => parseManifest({ format: 'rapbox-provision/1', deviceId: 'b', createdAt: '2026-11-23T18:00:00Z', files: { 'rapd.json': 'A'.repeat(64) } }), { message: /'files\.rapd\.json' must be a lowercase sha256/ });
  t.throws(() => parseManifest({ format: 'rapbox-provision/1', deviceId: 'b', createdAt: 'yesterday', files: {} }), { message: /'createdAt' is "yesterday"/ });
  t.throws(() => parseManifest({ format: 'rapbox-provision/1', deviceId: 'b', createdAt: '2026-11-23T18:00:00Z', files: { '../etc/shadow': 'a'.repeat(64) } }), { message: /names '\.\.\/etc\/shadow', which a bundle may not hold/ });
  t.throws(() => parseManifest({ format: 'rapbox-provision/1', deviceId: 'b', createdAt: '2026-11-23T18:00:00Z', files: {}, extra: 1 }), { message: /unknown key 'extra'/ });
  t.same(mergeConfig({ a: { b: 1, c: 2 }, l: [1, 2] }, { a: { c: 3 }, l: [9] }), { a: { b: 1, c: 3 }, l: [9] });
});

t.test('CLI: create, check, apply; bad use is named', async (t) => {
  const s = await setup(t);
  const call = (args: string[]) => {
    let out = '';
    let err = '';
    const code = provisionMain(args, { out: (x) => void (out += x), err: (x) => void (err += x) });
    return { code, out, err };
  };
  const out = join(s.dir, 'bundle');
  const o = s.opts;
  const made = call(['create', '--out', out, '--device-id', o.deviceId, '--config', o.config, '--center-ca', o.centerCa, '--cert', o.cert, '--key', o.key, '--factory-config', o.factoryConfig]);
  t.equal(made.code, 0, made.err);
  t.match(made.out, /^bundle for box-0042, created .*\n  rapd\.json +sha256 [0-9a-f]{64}\n[\s\S]*site: center https:\/\/center\.example:8443, WAN 10\.0\.2\.42\/24\nwrote /);
  t.match(call(['check', out]), { code: 0, out: /ok: the box would apply it/ });
  writeFileSync(join(out, 'rapd.json'), '{}');
  t.match(call(['check', out]), { code: 1, err: /^rapd provision: RAP_PROVISION: rapd\.json: sha256 .* does not match/ });
  t.match(call(['create', '--out', out]), { code: 2, err: /create needs --device-id/ });
  t.match(call(['frobnicate']), { code: 2, err: /unknown command 'frobnicate'/ });
  t.match(call(['apply', '--bogus']), { code: 2, err: /unknown option '--bogus'/ });
  t.match(call(['apply', '--root', s.root]), { code: 0, out: /no provisioning bundle pending/ });
});
