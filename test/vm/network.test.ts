// Instrument ports are islands, proven on the real image: QEMU gets a WAN NIC
// (user-mode, restricted) and two instrument NICs backed by tap devices that
// the test moves into one network namespace each, where a "instrument" lives.
// With the factory configuration (ports p1..p4 on inst1..inst4) each
// instrument must get an address from the box's DHCP server, reach rapd on
// its own gateway, and reach nothing else: not the other port's gateway or
// instrument, not the box's WAN side, not a server on the WAN (even when it
// routes through the box on purpose).
//
// Traffic stays in this test's namespaces and QEMU's user network; the only
// host socket involved is the "WAN server" on loopback that guestfwd
// exposes to the guest as 10.0.2.100:443.

import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { detectAccel, freshVars, overlayDisk, startVm } from '../../image/qemu.ts';
import { run } from '../../src/lib/run.ts';
import { probe } from '../integration/netns.ts';
import { parseResults, waitForExit } from './results.ts';

const REPO = join(import.meta.dirname, '../..');
const IMAGE = process.env['RAPBOX_IMAGE'] ?? join(REPO, 'out/rapbox.img');
const RAPD = join(REPO, 'out/rapd');
const PROBE = join(REPO, 'test/integration/netprobe.ts');
const WORK = join(REPO, 'out/vm/network');
const BOOT_BOUND_MS = 9 * 60_000;
/** How long the instruments wait for a DHCP lease (the box boots under TCG meanwhile). */
const LEASE_BOUND_S = 300;
// The factory plan (rapd's network.plan default): one /28 per port.
const GW1 = '100.87.0.1';
const GW2 = '100.87.0.17';
const WAN_SERVER_IN_GUEST = '10.0.2.100:443';
const BOX_WAN = '10.0.2.15';

const sh = (argv: string[], timeoutMs = 20_000) => run(argv, { timeoutMs });

t.test('instruments on their ports get an address, reach rapd, and nothing else', async (t) => {
  if (!existsSync(IMAGE)) throw new Error(`${IMAGE} is missing: run make image (make test does)`);
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });

  // A "server on the WAN": counts who reached it.
  const wanHits: string[] = [];
  const wan = createServer((s) => {
    wanHits.push(`${s.remoteAddress}`);
    s.end('wan\n');
  });
  await new Promise<void>((r) => wan.listen(0, '127.0.0.1', r));
  t.teardown(() => void wan.close());

  // Two instrument namespaces, each with a tap QEMU attaches to first.
  const id = randomBytes(3).toString('hex');
  const inst = [
    { ns: `rbx${id}-i1`, tap: `rbx${id}a`, gw: GW1, port: 'p1', serial: 'SN-NET-1' },
    { ns: `rbx${id}-i2`, tap: `rbx${id}b`, gw: GW2, port: 'p2', serial: 'SN-NET-2' },
  ];
  const madeNs: string[] = [];
  const madeTaps: string[] = [];
  t.teardown(async () => {
    for (const n of madeNs) await run(['ip', 'netns', 'del', n], { okCodes: [0, 1], timeoutMs: 10_000 });
    for (const d of madeTaps) await run(['ip', 'link', 'del', d], { okCodes: [0, 1], timeoutMs: 10_000 });
  });
  for (const i of inst) {
    await sh(['ip', 'netns', 'add', i.ns]);
    madeNs.push(i.ns);
    await sh(['ip', '-n', i.ns, 'link', 'set', 'lo', 'up']);
    await sh(['ip', 'tuntap', 'add', 'dev', i.tap, 'mode', 'tap']);
    madeTaps.push(i.tap);
    await sh(['ip', 'link', 'set', i.tap, 'up']);
  }

  const serial = join(WORK, 'serial.log');
  const results = join(WORK, 'results.log');
  writeFileSync(serial, '');
  writeFileSync(results, '');
  const disk = await overlayDisk(IMAGE, join(WORK, 'ssd.qcow2'), 3 * 1024 ** 3);
  const vm = startVm({
    disk,
    diskFormat: 'qcow2',
    snapshot: false,
    accel: await detectAccel(WORK),
    varsFile: freshVars(WORK),
    serial,
    resultsFile: results,
    forwards: [{ guest: WAN_SERVER_IN_GUEST, host: `127.0.0.1:${(wan.address() as AddressInfo).port}` }],
    instrumentTaps: inst.map((i) => i.tap),
    credentials: {
      'systemd.extra-unit.rapbox-selftest.service': readFileSync(join(import.meta.dirname, 'selftest.service'), 'utf8'),
      'systemd.unit-dropin.multi-user.target~rapbox-selftest': '[Unit]\nWants=rapbox-selftest.service\n',
      'rapbox.selftest.sh': readFileSync(join(import.meta.dirname, 'selftest.sh'), 'utf8'),
      'rapbox.wait-ports': inst.map((i) => i.port).join(' '),
    },
  });
  t.teardown(() => vm.kill());

  // Once QEMU holds the taps (carrier up), they become the instruments' NICs.
  for (const i of inst) {
    const deadline = Date.now() + 60_000;
    const carrier = (): string => {
      try {
        return readFileSync(`/sys/class/net/${i.tap}/carrier`, 'utf8').trim();
      } catch {
        return '';
      }
    };
    while (carrier() !== '1' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    t.equal(carrier(), '1', `QEMU attached ${i.tap}`);
    await sh(['ip', 'link', 'set', i.tap, 'netns', i.ns]);
    madeTaps.splice(madeTaps.indexOf(i.tap), 1);
    await sh(['ip', '-n', i.ns, 'link', 'set', i.tap, 'up']);
  }

  // DHCP from the box: udhcpc with a script that only sets the address.
  const script = join(WORK, 'udhcpc.sh');
  writeFileSync(script, '#!/bin/sh\ncase "$1" in bound|renew) ip addr add "$ip/$mask" dev "$interface" && echo "LEASE $ip/$mask router=${router:-none} dns=${dns:-none}" ;; esac\nexit 0\n', { mode: 0o755 });
  // udhcpc is restarted until the deadline: the box boots meanwhile, and a
  // run that gives up early must not end the wait.
  const leaseDeadline = Date.now() + LEASE_BOUND_S * 1000;
  const leases = await Promise.all(
    inst.map(async (i) => {
      let last = '';
      while (Date.now() < leaseDeadline) {
        const r = await run(['ip', 'netns', 'exec', i.ns, 'udhcpc', '-f', '-q', '-n', '-B', '-i', i.tap, '-s', script, '-t', '10', '-T', '3', '-A', '1'], {
          timeoutMs: 60_000,
          okCodes: [0, 1],
        });
        const m = /LEASE (\S+)\/(\d+) router=(\S+) dns=(\S+)/.exec(r.stdout);
        if (m) return m;
        last = `${r.stdout}${r.stderr}`.trim().split('\n').slice(-3).join(' | ');
      }
      t.comment(`udhcpc on ${i.tap}: no lease; last output: ${last}`);
      return null;
    }),
  );
  const [l1, l2] = leases;
  t.ok(l1, 'instrument 1 got a DHCP lease from the box');
  t.ok(l2, 'instrument 2 got a DHCP lease from the box');
  if (!l1 || !l2) {
    // Let the guest report what it sees before giving up (its wait is bounded).
    await waitForExit(vm, 8 * 60_000);
    const r = parseResults(readFileSync(results, 'latin1'));
    for (const k of ['failed-units', 'ip-addr', 'networkctl', 'networkd-journal', 'rapd-journal-ports']) t.comment(`${k}: ${r.get(k)}`);
    return;
  }
  t.match(l1[1], /^100\.87\.0\.(8|9|1[0-4])$/, `instrument 1 address ${l1[1]} is in port p1's DHCP pool`);
  t.match(l2[1], /^100\.87\.0\.(2[4-9]|30)$/, `instrument 2 address ${l2[1]} is in port p2's DHCP pool`);
  t.equal(l1[2], '28', 'a /28 per port');
  t.equal(l1[3], 'none', 'no router is handed out: the instrument subnet leads nowhere');
  t.equal(l1[4], 'none', 'no DNS server is handed out');

  // An instrument that routes everything through the box on purpose.
  for (const i of inst) await sh(['ip', '-n', i.ns, 'route', 'add', 'default', 'via', i.gw]);
  // A listener on instrument 2 that instrument 1 must not reach.
  const listener = spawn('ip', ['netns', 'exec', inst[1]!.ns, process.execPath, PROBE, 'listen', 'inst2', `${l2[1]}:9100`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => void (listener.exitCode === null && listener.kill('SIGKILL')));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('instrument 2 listener not ready')), 10_000);
    listener.stdout!.on('data', (b: Buffer) => b.toString().includes('ready') && (clearTimeout(timer), resolve()));
  });
  const sim = async (i: (typeof inst)[number]): Promise<{ acked: number } | null> => {
    const r = await run(
      // --no-polls: rapd polls an instrument that has not sent a status yet on
      // its next tick; under a loaded TCG guest that tick can fall between the
      // hello and the first status, and the poll answer made it 4 acks, not 3.
      ['ip', 'netns', 'exec', i.ns, RAPD, 'ctl', 'instrument-sim', '--connect', `${i.gw}:7400`, '--serial', i.serial, '--model', 'DxH-900', '--count', '3', '--no-polls', '--json'],
      { okCodes: [0, 1], timeoutMs: 120_000 },
    );
    try {
      return JSON.parse(r.stdout) as { acked: number };
    } catch {
      t.comment(`instrument-sim: ${r.stdout} ${r.stderr}`);
      return null;
    }
  };

  t.equal((await sim(inst[0]!))?.acked, 3, 'instrument 1 reached rapd on its own gateway: 3 messages acknowledged');
  t.equal(await probe(inst[1]!.ns, l2[1]!, 9100, 3000), 'connected inst2', 'control: instrument 2 listener answers locally');
  const i1 = inst[0]!.ns;
  // Dropped, not refused: the firewall answers nothing.
  t.equal(await probe(i1, GW2, 7400, 3000), 'timeout', 'instrument 1 cannot reach port p2\'s gateway');
  t.equal(await probe(i1, l2[1]!, 9100, 3000), 'timeout', 'instrument 1 cannot reach instrument 2');
  t.equal(await probe(i1, GW1, 22, 3000), 'timeout', 'instrument 1 reaches nothing but rapd on its gateway (port 22)');
  t.equal(await probe(i1, BOX_WAN, 7400, 3000), 'timeout', "instrument 1 cannot reach the box's WAN address");
  t.equal(await probe(i1, WAN_SERVER_IN_GUEST.split(':')[0]!, 443, 3000), 'timeout', 'instrument 1 cannot reach a server on the WAN through the box');
  t.same(wanHits, [], 'the WAN server saw no connection from an instrument');
  // Last: instrument 2 talks to rapd; its goodbye tells the guest we are done.
  t.equal((await sim(inst[1]!))?.acked, 3, 'instrument 2 reached rapd on its own gateway');

  const outcome = await waitForExit(vm, BOOT_BOUND_MS);
  if (outcome === 'timeout') t.fail(`no poweroff within ${BOOT_BOUND_MS / 1000} s; serial log: ${serial}`);
  const r = parseResults(readFileSync(results, 'latin1'));
  t.equal(r.get('system-state'), 'running', 'the box is running, not degraded');
  t.equal(r.get('failed-units'), '', 'no failed units');
  t.match(r.get('ip-addr') ?? '', /^wan\s+UP\s+10\.0\.2\.15\/24/m, 'the WAN NIC is named wan and got its address by DHCP');
  t.match(r.get('ip-addr') ?? '', new RegExp(`^inst1\\s+UP\\s+${GW1}/28`, 'm'), 'inst1 carries port p1\'s gateway');
  t.match(r.get('ip-addr') ?? '', new RegExp(`^inst2\\s+UP\\s+${GW2}/28`, 'm'), 'inst2 carries port p2\'s gateway');
  t.match(r.get('nft') ?? '', /table inet rapbox[\s\S]*chain port_p1[\s\S]*chain port_p2/, `rapd's firewall is in force: ${r.get('nft')?.slice(0, 200)}`);
  t.equal(r.get('ip-forward'), '0\n0', 'the box does not forward (globally, nor on inst1)');
  t.equal(r.get('box-to-wan'), 'wan', 'the box itself reaches the WAN server (so the path the instruments were denied exists)');
  t.equal(wanHits.length, 1, 'and that was the only connection the WAN server saw');
  const status = JSON.parse(r.get('ports-status') ?? 'null') as { ports: { name: string; listening: boolean; instrument: { serial: string } | null }[] } | null;
  const byName = new Map((status?.ports ?? []).map((p) => [p.name, p]));
  t.equal(byName.get('p1')?.instrument?.serial, 'SN-NET-1', 'rapd knows the instrument on p1');
  t.equal(byName.get('p2')?.instrument?.serial, 'SN-NET-2', 'rapd knows the instrument on p2');
  t.equal(byName.get('p3')?.listening, false, 'p3 has no NIC in this VM: its agent waits for its address');
});
