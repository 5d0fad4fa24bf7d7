// Boots the real image (through a copy-on-write overlay, so it stays
// pristine) under QEMU and asserts from the host what a person would check:
// systemd reached multi-user with nothing failed, rapd is active and systemd
// saw its READY, `rapctl status --json` answers inside the guest, telemetry
// reaches a rap-center on the host; then boots the same SSD again and finds
// the data partition, machine id and journal of the first boot.
//
// The checks run inside the guest from test/vm/selftest.sh, which the image
// does not ship: QEMU passes it as systemd credentials over SMBIOS
// (systemd.extra-unit.* and systemd.unit-dropin.*, systemd >= 256), so the
// bytes under test are exactly the bytes that get flashed.

import t from 'tap';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detectAccel, freshVars, overlayDisk, startVm } from '../../image/qemu.ts';
import { parseResults, waitForExit } from './results.ts';
import { CENTER_IN_GUEST, startVmCenter } from './center.ts';
import { openCenterDb } from '../../src/center/db.ts';

const REPO = join(import.meta.dirname, '../..');
const IMAGE = process.env['RAPBOX_IMAGE'] ?? join(REPO, 'out/rapbox.img');
const WORK = join(REPO, 'out/vm/boot');
// TCG boots take 30-60 s on a loaded 2-core machine; this bounds a hang.
const BOOT_BOUND_MS = 8 * 60_000;
const VM_DEVICE = 'box-vm';
/** Left on the data partition by the first boot, looked for by the second. */
const MARKER = `written by the first boot ${process.pid}`;

function props(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

t.test('the image boots to multi-user with rapd READY and rapctl answering', async (t) => {
  if (!existsSync(IMAGE)) throw new Error(`${IMAGE} is missing: run make image (make test does)`);
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  const serial = join(WORK, 'serial.log');
  const results = join(WORK, 'results.log');
  writeFileSync(serial, '');
  writeFileSync(results, '');
  const accel = await detectAccel(WORK);
  t.comment(`accelerator: ${accel}`);

  // A rap-center on the host, reached from the guest through guestfwd.
  const { pki, centerDb, port: centerPort } = await startVmCenter(t, WORK, VM_DEVICE);
  const siteConfig = {
    device: { name: 'rapbox-vm', id: VM_DEVICE },
    ports: [{ name: 'p1', address: '127.0.0.1', port: 7400, pollIntervalSec: 0 }],
    center: { url: `https://${CENTER_IN_GUEST}` },
    uplink: { batchMaxDelayMs: 200, backoffMaxMs: 5000 },
  };

  const selftestCredentials = {
    'systemd.extra-unit.rapbox-selftest.service': readFileSync(join(import.meta.dirname, 'selftest.service'), 'utf8'),
    'systemd.unit-dropin.multi-user.target~rapbox-selftest': '[Unit]\nWants=rapbox-selftest.service\n',
    'rapbox.selftest.sh': readFileSync(join(import.meta.dirname, 'selftest.sh'), 'utf8'),
  };

  // The box's SSD is bigger than the image: 3 GiB, so first boot grows /var.
  const disk = await overlayDisk(IMAGE, join(WORK, 'ssd.qcow2'), 3 * 1024 ** 3);
  const started = Date.now();
  const vm = startVm({
    disk,
    diskFormat: 'qcow2',
    snapshot: false,
    accel,
    varsFile: freshVars(WORK),
    serial,
    resultsFile: results,
    forwards: [{ guest: CENTER_IN_GUEST, host: `127.0.0.1:${centerPort}` }],
    credentials: {
      ...selftestCredentials,
      'rapbox.marker': MARKER,
      'rapbox.telemetry.config': JSON.stringify(siteConfig),
      'rapbox.telemetry.ca': readFileSync(join(pki, 'ca.pem'), 'utf8'),
      'rapbox.telemetry.cert': readFileSync(join(pki, 'devices', `${VM_DEVICE}.pem`), 'utf8'),
      'rapbox.telemetry.key': readFileSync(join(pki, 'devices', `${VM_DEVICE}.key`), 'utf8'),
    },
  });
  t.teardown(() => vm.kill());

  // The guest powers off after printing its results; QEMU then exits (-no-reboot).
  const outcome = await waitForExit(vm, BOOT_BOUND_MS);
  const log = readFileSync(results, 'latin1');
  const seconds = (Date.now() - started) / 1000;
  if (outcome === 'timeout') t.fail(`no poweroff within ${BOOT_BOUND_MS / 1000} s; serial log: ${serial}`);
  t.ok(log.includes('RAPBOX-SELFTEST-END'), `self-test ran to its end (console: ${serial}, results: ${results})`);
  const r = parseResults(log);

  t.equal(r.get('system-state'), 'running', 'systemctl is-system-running: running (not degraded)');
  t.equal(r.get('failed-units'), '', 'systemctl --failed is empty');

  const show = props(r.get('rapd-show') ?? '');
  t.equal(show['Type'], 'notify', 'rapd.service is Type=notify');
  t.equal(show['ActiveState'], 'active');
  t.equal(show['SubState'], 'running');
  // A Type=notify unit only leaves "activating" once systemd got READY=1;
  // StatusText is what rapd sent with it, so systemd attributed the message.
  t.match(show['StatusText'], /^running; slot a; control \/run\/rapd\/rapd\.sock; \d+ port\(s\)$/, 'systemd saw READY and STATUS from rapd');
  t.equal(show['NRestarts'], '0', 'rapd did not restart');

  const status = JSON.parse(r.get('rapctl-json') ?? 'null') as { state: string; slot: string; pid: number; node: string } | null;
  t.ok(status, `rapctl status --json answered: ${r.get('rapctl-json')}`);
  t.equal(status?.state, 'running');
  t.equal(status?.slot, 'a', 'booted from slot A');
  t.equal(String(status?.pid), show['MainPID'], 'rapctl reached the daemon systemd runs');
  t.match(status?.node, /^v24\./, 'the box runs Node 24');
  t.match(r.get('rapctl-text'), /^rapbox: rapd .*\nstate: +running/);
  t.match(r.get('rapd-socket'), /^700 root directory \/run\/rapd\n600 root socket \/run\/rapd\/rapd\.sock$/, 'owner-only control socket');

  const mounts = r.get('mounts') ?? '';
  t.match(mounts, /^\/ \/dev\/mapper\/root squashfs ro[,\s]/m, 'root is the read-only squashfs slot, through dm-verity');
  const verity = r.get('verity') ?? '';
  t.match(verity, /is active and is in use/, `veritysetup status root: ${verity}`);
  t.match(verity, /status:\s+verified/, 'dm-verity reports the root verified');
  t.match(verity, /data device:\s+\/dev\/vda2/, 'slot A is what is verified');
  const manifest = JSON.parse(readFileSync(join(REPO, 'out/image.json'), 'utf8')) as { rootHash: string };
  t.match(verity, new RegExp(`root hash:\\s+${manifest.rootHash}`), 'with the root hash the build recorded');
  t.match(mounts, /^\/var \/dev\/vda4 ext4 rw/m, 'data partition on /var');
  const varBytes = Number((r.get('var-size') ?? '').trim());
  // 3 GiB disk - 1 MiB - 160 (ESP) - 2 x 640 (root slots) = ~1.6 GiB for data, was 256 MiB.
  t.ok(varBytes > 1.4 * 1024 ** 3, `first boot grew the data partition and its filesystem into the rest of the 3 GiB disk (/var: ${varBytes} bytes; image: 256 MiB)`);

  // Telemetry inside the image: instrument -> rapd -> mTLS -> the host's rap-center.
  t.equal(r.get('telemetry-restart'), 'active', 'rapd restarted with the provisioned site config');
  const simReport = JSON.parse(r.get('telemetry-sim') ?? 'null') as { acked: number; sent: number } | null;
  t.equal(simReport?.acked, 50, `instrument simulator in the guest got 50 acks: ${r.get('telemetry-sim')}`);
  const tel = JSON.parse(r.get('telemetry-status') ?? 'null') as { uplink: { sentMessages: number; lastError: string | null; proxy: string } } | null;
  t.ok((tel?.uplink.sentMessages ?? 0) >= 50, `uplink delivered (last error: ${tel?.uplink.lastError}; journal: ${r.get('telemetry-journal')})`);
  const db = openCenterDb(centerDb, { create: false });
  const atCenter = db.messages({ device: VM_DEVICE, tail: 1000 });
  db.close();
  const fromSim = atCenter.filter((m) => m.kind === 'status' || m.kind === 'alarm');
  t.equal(fromSim.length, 50, 'the host rap-center stored the 50 messages from the guest instrument');
  t.ok(fromSim.every((m) => m.instrument?.serial === 'SN-VM-1' && m.port === 'p1'), 'with the instrument identity and port');
  t.equal(fromSim.filter((m) => m.kind === 'alarm').length, 5, 'alarms included');

  // Numbers for the closing notes and make bench (not asserted).
  const startUs = Number(show['ExecMainStartTimestampMonotonic']);
  const readyUs = Number(show['ActiveEnterTimestampMonotonic']);
  const rss = /RssAnon:\s+(\d+) kB/.exec(r.get('rapd-proc-status') ?? '')?.[1];
  const metrics = {
    accel,
    hostSecondsToPoweroff: seconds,
    kernelSecondsToRapdReady: readyUs / 1e6,
    rapdStartToReadySeconds: (readyUs - startUs) / 1e6,
    rapdRssAnonKiB: rss ? Number(rss) : null,
    systemdAnalyze: r.get('analyze'),
  };
  writeFileSync(join(WORK, 'metrics.json'), `${JSON.stringify(metrics, null, 2)}\n`);
  t.comment(JSON.stringify(metrics));

  // First boot's identity and marker, for the second boot to find.
  const machineId = r.get('machine-id') ?? '';
  t.match(machineId, /^[0-9a-f]{32}$/, 'the box has a machine id');
  t.match(r.get('machine-id-mount') ?? '', /^\/etc\/machine-id /, 'bound over the read-only root by the initrd');
  t.equal(r.get('marker-found'), '', 'first boot: no marker on the data partition yet');

  // Second boot of the same SSD: what the first boot stored is still there.
  const serial2 = join(WORK, 'serial-2.log');
  const results2 = join(WORK, 'results-2.log');
  writeFileSync(serial2, '');
  writeFileSync(results2, '');
  const vm2 = startVm({
    disk,
    diskFormat: 'qcow2',
    snapshot: false,
    accel,
    varsFile: freshVars(WORK),
    serial: serial2,
    resultsFile: results2,
    credentials: selftestCredentials,
  });
  t.teardown(() => vm2.kill());
  const outcome2 = await waitForExit(vm2, BOOT_BOUND_MS);
  if (outcome2 === 'timeout') t.fail(`second boot: no poweroff within ${BOOT_BOUND_MS / 1000} s; serial log: ${serial2}`);
  const r2 = parseResults(readFileSync(results2, 'latin1'));
  t.equal(r2.get('system-state'), 'running', 'second boot: running (not degraded)');
  t.equal(r2.get('marker-found'), MARKER, 'the data partition kept what the first boot wrote');
  t.equal(r2.get('machine-id'), machineId, 'the machine id survived the reboot');
  t.equal((r2.get('boots') ?? '').split('\n').filter((l) => /\b[0-9a-f]{32}\b/.test(l)).length, 2, `the journal on /var has both boots under that id: ${r2.get('boots')}`);
  const status2 = JSON.parse(r2.get('rapctl-json') ?? 'null') as { ports: { name: string }[]; config: Record<string, unknown> } | null;
  t.equal(status2?.config['device.id'], VM_DEVICE, 'rapd started with the site config provisioned on the first boot');
  t.ok(Number((r2.get('var-size') ?? '').trim()) > 1.4 * 1024 ** 3, 'the grown data partition stayed grown');
});
