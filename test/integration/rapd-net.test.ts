// The built rapd inside the "box" namespace with two instrument ports: it
// loads its firewall with the real nft, writes its networkd files (a
// recording networkctl stands in for networkd, which does not run here),
// waits for gateway addresses that are not there yet, and serves an
// instrument once the test adds them as networkd would. A failing nft stops
// the start with one line.

import t, { type Test } from 'tap';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/lib/run.ts';
import type { StatusReport } from '../../src/protocol/control.ts';
import { collect, requireRapd, runBinary, waitFor } from './helpers.ts';
import { ADDR, makeLab, netnsSkipReason } from './netns.ts';

const rapd = requireRapd();
const SYS_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

function tree(t: Test, ports: unknown[], wan: Record<string, string> = {}) {
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = mkdtempSync('/tmp/rapd-net-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  const config = join(dir, 'rapd.json');
  writeFileSync(config, JSON.stringify({ paths: { state: join(dir, 'state'), runtime: join(dir, 'run'), networkd: join(dir, 'networkd'), timesyncd: join(dir, 'timesyncd.conf.d') }, ports, wan }));
  // networkd and timesyncd do not run on the test host: record what rapd asks of them.
  for (const tool of ['networkctl', 'systemctl']) {
    writeFileSync(join(bin, tool), `#!/bin/sh\necho "$*" >> ${join(dir, `${tool}.log`)}\n`);
    chmodSync(join(bin, tool), 0o755);
  }
  return { dir, bin, config, socket: join(dir, 'run', 'rapd.sock') };
}

t.test('rapd in the box namespace: firewall, networkd files, agents waiting for their addresses, an instrument served', { skip: netnsSkipReason() ?? false }, async (t) => {
  const lab = await makeLab(t, { boxAddresses: false });
  const { ns } = lab;
  const b = tree(
    t,
    [
      { name: 'p1', interface: 'inst1', pollIntervalSec: 0 },
      { name: 'p2', interface: 'inst2', dhcp: false, pollIntervalSec: 0 },
    ],
    { address: `${ADDR.boxWan}/24`, gateway: ADDR.wanPeer, dns: ADDR.wanPeer, ntp: ADDR.wanPeer },
  );
  const child = lab.spawn(ns.box, [rapd, '--config', b.config], { PATH: `${b.bin}:${SYS_PATH}` });
  const done = collect(child, 60_000);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const logged = (msg: string, port: string) => out.split('\n').some((l) => l.includes(`"msg":"${msg}"`) && l.includes(`"port":"${port}"`));

  await waitFor('both agents waiting for their address', () => logged('port address not there yet; retrying until it is', 'p1') && logged('port address not there yet; retrying until it is', 'p2'), 20_000);
  t.match(await lab.exec(ns.box, ['nft', 'list', 'table', 'inet', 'rapbox']), /chain port_p1 \{[\s\S]*?ip saddr 100\.87\.0\.0\/28 ip daddr 100\.87\.0\.1 tcp dport 7400 accept/, 'rapd loaded its firewall with nft');
  t.same(readdirSync(join(b.dir, 'networkd')).sort(), ['10-rapbox-p1.network', '10-rapbox-p2.network', '80-wan.network']);
  t.match(readFileSync(join(b.dir, 'networkd', '80-wan.network'), 'utf8'), new RegExp(`^Address=${ADDR.boxWan}/24\nGateway=${ADDR.wanPeer}\nDHCP=no\nDNS=${ADDR.wanPeer}$`, 'm'), 'the static WAN from the site config');
  t.equal(readFileSync(join(b.dir, 'networkctl.log'), 'utf8'), 'reload\n', 'networkd asked to reload once (ports and WAN)');
  t.match(readFileSync(join(b.dir, 'timesyncd.conf.d', '50-rapbox-wan.conf'), 'utf8'), new RegExp(`^NTP=${ADDR.wanPeer}$`, 'm'));
  t.equal(readFileSync(join(b.dir, 'systemctl.log'), 'utf8'), 'try-restart systemd-timesyncd.service\n', 'timesyncd restarted for its NTP server');

  const st = await runBinary([rapd, 'ctl', '--socket', b.socket, 'status', '--json'], { PATH: SYS_PATH });
  t.equal(st.code, 0, st.stderr);
  const status = JSON.parse(st.stdout) as StatusReport;
  t.match(status.ports, [
    { name: 'p1', listen: `${ADDR.gw1}:7400`, listening: false, bindError: 'EADDRNOTAVAIL' },
    { name: 'p2', listen: `${ADDR.gw2}:7400`, listening: false, bindError: 'EADDRNOTAVAIL' },
  ]);
  t.match(status.network, { firewall: { table: 'inet rapbox' }, networkd: { files: ['10-rapbox-p1.network', '10-rapbox-p2.network'], reloaded: true } });
  const text = await runBinary([rapd, 'ctl', '--socket', b.socket, 'status'], { PATH: SYS_PATH });
  t.match(text.stdout, /port p1: 100\.87\.0\.1:7400 NOT LISTENING: waiting for the address since .* \(EADDRNOTAVAIL\)/);

  // What networkd does on the appliance, a moment later.
  await run(['ip', '-n', ns.box, 'addr', 'add', `${ADDR.gw1}/28`, 'dev', 'inst1']);
  await run(['ip', '-n', ns.box, 'addr', 'add', `${ADDR.gw2}/28`, 'dev', 'inst2']);
  await waitFor('both agents listening', () => logged('port agent listening', 'p1') && logged('port agent listening', 'p2'), 20_000);
  t.equal(out.split('\n').filter((l) => l.includes('port address not there yet')).length, 2, 'the wait was logged once per port');

  const sim = await run(['ip', 'netns', 'exec', ns.i1, rapd, 'ctl', 'instrument-sim', '--connect', `${ADDR.gw1}:7400`, '--count', '5', '--json'], { timeoutMs: 30_000, okCodes: [0, 1] });
  t.equal(sim.code, 0, sim.stderr);
  t.match(JSON.parse(sim.stdout), { acked: 5 }, 'instrument 1 served through the firewall');
  t.equal(await lab.probe(ns.i1, ADDR.gw2, 7400), 'timeout', "instrument 1 cannot reach port 2's agent");
  t.equal(await lab.probe(ns.wan, ADDR.gw1, 7400), 'timeout', 'the WAN cannot reach an agent');

  child.kill('SIGTERM');
  const exit = await done;
  t.equal(exit.code, 0, exit.stderr);
  t.match(await lab.exec(ns.box, ['nft', 'list', 'table', 'inet', 'rapbox']), /policy drop/, 'the firewall stays after rapd stops');
});

t.test('a firewall rapd cannot load stops it with one line and touches nothing else', async (t) => {
  const b = tree(t, [{ name: 'p1', interface: 'inst1' }]);
  writeFileSync(join(b.bin, 'nft'), '#!/bin/sh\necho "Error: Could not process rule: Operation not permitted" >&2\nexit 1\n');
  chmodSync(join(b.bin, 'nft'), 0o755);
  const r = await runBinary([rapd, '--config', b.config], { PATH: `${b.bin}:${SYS_PATH}` });
  t.equal(r.code, 1);
  t.match(r.stderr, /^rapd: RAP_FIREWALL: nft apply failed, previous ruleset kept: nft -f -: exited with code 1: Error: Could not process rule: Operation not permitted\n$/);
  t.notOk(existsSync(join(b.dir, 'networkd')), 'no networkd files');
  t.notOk(existsSync(join(b.dir, 'networkctl.log')), 'networkd not asked');
  t.notOk(existsSync(b.socket), 'nothing listens');
});
