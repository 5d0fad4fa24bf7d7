// Manufacturing to first boot on the real image: a provisioning bundle made
// by `rapd provision create` (device id, certificate and key, the center's
// CA, an enrollment token, and a site config with a static WAN, DNS and NTP)
// is written by `image/flash.ts provision` into the data partition of a copy
// of out/rapbox.img (the shared image is never modified), then the box boots:
// rapbox-provision.service consumes the bundle before rapd starts, the WAN
// comes up static (10.0.2.42 in QEMU's user network, gateway 10.0.2.2, DNS
// 10.0.2.3), rapd runs as the provisioned device and delivers telemetry to a
// rap-center on the host through guestfwd (mutual TLS with the provisioned
// certificate, so the center names the device). A second boot of the same
// SSD finds nothing pending and keeps a site change made after provisioning.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detectAccel, freshVars, overlayDisk, startVm } from '../../image/qemu.ts';
import { sha256File } from '../../image/tools.ts';
import { openCenterDb } from '../../src/center/db.ts';
import { run } from '../../src/lib/run.ts';
import { CENTER_IN_GUEST, startVmCenter } from './center.ts';
import { parseResults, waitForExit } from './results.ts';

const REPO = join(import.meta.dirname, '../..');
const IMAGE = process.env['RAPBOX_IMAGE'] ?? join(REPO, 'out/rapbox.img');
const RAPD = join(REPO, 'out/rapd');
const WORK = join(REPO, 'out/vm/provision');
const BOOT_BOUND_MS = 8 * 60_000;
const DEVICE = 'box-prov-1';
const WAN = { address: '10.0.2.42/24', gateway: '10.0.2.2', dns: '10.0.2.3', ntp: '10.0.2.123' };

function props(text: string): Record<string, string> {
  return Object.fromEntries(text.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

t.test('a provisioning bundle written at the factory is consumed once on first boot', async (t) => {
  if (!existsSync(IMAGE)) throw new Error(`${IMAGE} is missing: run make image (make test does)`);
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  const imageSha = (JSON.parse(readFileSync(join(REPO, 'out/image.json'), 'utf8')) as { files: Record<string, { sha256: string }> }).files['rapbox.img']?.sha256;

  const { pki, centerDb, port: centerPort } = await startVmCenter(t, WORK, DEVICE);

  // The factory: a bundle for this box, made and checked by the real CLI.
  const site = {
    device: { name: 'lab-prov' },
    // p1 keeps the box an appliance (rapd manages its network); "lo" is a
    // loopback port the guest's instrument simulator talks to.
    ports: [{ name: 'p1', interface: 'inst1' }, { name: 'lo', address: '127.0.0.1', port: 7401, pollIntervalSec: 0 }],
    center: { url: `https://${CENTER_IN_GUEST}` },
    uplink: { batchMaxDelayMs: 200, backoffMaxMs: 5000 },
    wan: WAN,
  };
  writeFileSync(join(WORK, 'site.json'), JSON.stringify(site));
  const token = randomBytes(24).toString('base64url');
  writeFileSync(join(WORK, 'token'), `${token}\n`, { mode: 0o600 });
  const bundle = join(WORK, 'bundle');
  await run([
    RAPD, 'provision', 'create', '--out', bundle, '--device-id', DEVICE, '--config', join(WORK, 'site.json'),
    '--center-ca', join(pki, 'ca.pem'), '--cert', join(pki, 'devices', `${DEVICE}.pem`), '--key', join(pki, 'devices', `${DEVICE}.key`),
    '--enrollment-token', join(WORK, 'token'), '--factory-config', join(REPO, 'rootfs-overlay/etc/rapd/rapd.json'),
  ], { timeoutMs: 60_000 });

  // The SSD: a sparse copy of the image with the bundle in its data partition,
  // behind a larger qcow2 overlay (first boot grows /var into it).
  const raw = join(WORK, 'flashed.img');
  await run(['cp', '--sparse=always', IMAGE, raw], { timeoutMs: 300_000 });
  const flashed = await run([process.execPath, join(REPO, 'image/flash.ts'), 'provision', raw, bundle, '--allow-file'], { timeoutMs: 120_000 });
  t.match(flashed.stderr, /provision: \d+ files read back and verified/, 'the bundle is in the data partition');
  const disk = await overlayDisk(raw, join(WORK, 'ssd.qcow2'), 3 * 1024 ** 3);

  const selftest = {
    'systemd.extra-unit.rapbox-selftest.service': readFileSync(join(import.meta.dirname, 'selftest.service'), 'utf8'),
    'systemd.unit-dropin.multi-user.target~rapbox-selftest': '[Unit]\nWants=rapbox-selftest.service\n',
    'rapbox.selftest.sh': readFileSync(join(import.meta.dirname, 'selftest.sh'), 'utf8'),
    'rapbox.provision-report': '1',
  };
  const accel = await detectAccel(WORK);
  const boot = async (n: number, extra: Record<string, string>) => {
    const serial = join(WORK, `serial-${n}.log`);
    const results = join(WORK, `results-${n}.log`);
    writeFileSync(serial, '');
    writeFileSync(results, '');
    const vm = startVm({
      disk,
      diskFormat: 'qcow2',
      snapshot: false,
      accel,
      varsFile: freshVars(WORK),
      serial,
      resultsFile: results,
      forwards: [{ guest: CENTER_IN_GUEST, host: `127.0.0.1:${centerPort}` }],
      credentials: { ...selftest, ...extra },
    });
    t.teardown(() => vm.kill());
    if ((await waitForExit(vm, BOOT_BOUND_MS)) === 'timeout') t.fail(`boot ${n}: no poweroff within ${BOOT_BOUND_MS / 1000} s; serial log: ${serial}`);
    const log = readFileSync(results, 'latin1');
    t.ok(log.includes('RAPBOX-SELFTEST-END'), `boot ${n}: self-test ran to its end (console: ${serial})`);
    return parseResults(log);
  };

  // First boot at the site.
  const r = await boot(1, { 'rapbox.provision-sim': '1', 'rapbox.provision-edit': 'lab-prov' });
  t.equal(r.get('system-state'), 'running', 'running, not degraded');
  t.equal(r.get('failed-units'), '', 'no failed units (the bundle was not rejected)');
  const unit = props(r.get('prov-unit') ?? '');
  t.match(unit, { ConditionResult: 'yes', Result: 'success', ExecMainStatus: '0' }, `rapbox-provision.service ran and succeeded: ${r.get('prov-journal')}`);
  t.match(r.get('prov-journal'), /"msg":"provisioning bundle applied",.*"deviceId":"box-prov-1"/);
  t.notOk((r.get('prov-journal') ?? '').includes(token), 'the enrollment token is not in the journal');
  t.notMatch(r.get('prov-journal') ?? '', /PRIVATE KEY/, 'nor the key');
  t.match(r.get('prov-pending'), /cannot access '\/var\/lib\/rapbox\/provision': No such file[\s\S]*cannot access '\/var\/lib\/rapbox\/provision\.rejected'/, 'consumed: nothing pending, nothing rejected');
  const files = r.get('prov-files') ?? '';
  t.match(files, /^700 root \/var\/lib\/rapbox\/provision\.applied$/m, 'the consumed bundle is kept, owner-only');
  t.notMatch(files, /provision\.applied\/(device\.key|enrollment-token)/, 'without its secrets');
  for (const f of ['rapd.json', 'pki/center-ca.pem', 'pki/device.pem', 'pki/device.key', 'pki/enrollment-token']) {
    t.match(files, new RegExp(`^600 root /var/lib/rapd/${f.replace('.', '\\.')}$`, 'm'), `${f} installed owner-only`);
  }
  const cfg = JSON.parse(r.get('prov-config') ?? 'null') as { device: { id: string; name: string }; wan: typeof WAN } | null;
  t.equal(cfg?.device.id, DEVICE, 'the site config carries the provisioned device id');

  // The WAN from the site config: static, not the image's DHCP default.
  t.match(r.get('wan-addr'), /^\d+: wan +inet 10\.0\.2\.42\/24 .*scope global wan/m, `static WAN address: ${r.get('wan-addr')}`);
  t.notMatch(r.get('wan-addr'), /dynamic/, 'not a DHCP lease');
  t.notMatch(r.get('wan-addr'), /10\.0\.2\.15/, 'the DHCP address the image default got before rapd ran is gone');
  t.match(r.get('wan-route'), /^default via 10\.0\.2\.2 dev wan/m, 'default route via the site gateway');
  t.match(r.get('wan-dns'), /Link \d+ \(wan\): 10\.0\.2\.3$/m, 'DNS server from the site config');
  t.match(r.get('wan-ntp'), /^SystemNTPServers=10\.0\.2\.123$/m, `timesyncd uses the site's NTP server: ${r.get('wan-ntp')}`);
  t.match(r.get('wan-networkd'), /80-wan\.network[\s\S]*50-rapbox-wan\.conf/, 'rendered into /run');

  // rapd runs as the provisioned device and reaches the center.
  const status = JSON.parse(r.get('prov-status') ?? 'null') as { config: Record<string, unknown>; uplink: { sentMessages: number; lastError: string | null } | null } | null;
  t.equal(status?.config['device.id'], DEVICE, 'rapd runs with the provisioned device id');
  t.equal(JSON.parse(r.get('prov-sim') ?? 'null')?.acked, 5, `the instrument simulator in the guest got 5 acks: ${r.get('prov-sim')}`);
  t.ok((status?.uplink?.sentMessages ?? 0) >= 5, `uplink delivered (last error: ${status?.uplink?.lastError}; journal: ${r.get('prov-rapd-journal')})`);
  const db = openCenterDb(centerDb, { create: false });
  const atCenter = db.messages({ device: DEVICE, tail: 100 }).filter((m) => m.kind === 'status' || m.kind === 'alarm');
  db.close();
  t.equal(atCenter.length, 5, 'the center stored them under the provisioned device (mutual TLS with the provisioned certificate)');

  // Second boot of the same SSD: not applied again.
  const r2 = await boot(2, {});
  t.equal(r2.get('system-state'), 'running', 'second boot: running');
  t.match(props(r2.get('prov-unit') ?? ''), { ConditionResult: 'no' }, 'second boot: rapbox-provision.service skipped (nothing pending)');
  t.notMatch(r2.get('prov-journal') ?? '', /provisioning bundle/, `and applied nothing: ${r2.get('prov-journal')}`);
  const cfg2 = JSON.parse(r2.get('prov-config') ?? 'null') as { device: { name: string; id: string } } | null;
  t.same(cfg2?.device, { name: 'lab-prov-edited', id: DEVICE }, 'the site change made after provisioning is kept');
  t.match(r2.get('wan-addr'), /inet 10\.0\.2\.42\/24/, 'second boot: the static WAN again');

  if (imageSha) t.equal(await sha256File(IMAGE), imageSha, 'out/rapbox.img itself was not modified');
});
