import t from 'tap';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../../src/rapd/config.ts';
import { applyNetworkFiles, dhcpPool, describePorts, renderNetworkFiles } from '../../../src/rapd/network.ts';
import { subnetOf, parseIPv4 } from '../../../src/lib/ipv4.ts';
import { RapError } from '../../../src/lib/errors.ts';
import type { Runner } from '../../../src/lib/run.ts';

const config = parseConfig(
  { ports: [{ name: 'p1', interface: 'inst1' }, { name: 'dev', address: '127.0.0.1', port: 7499 }, { name: 'p3', interface: 'inst3', address: '10.20.0.1/30', dhcp: false }] },
  'test',
);

t.test('one .network file per port with an interface; dev ports get none', async (t) => {
  const files = renderNetworkFiles(config);
  t.same([...files.keys()], ['10-rapbox-p1.network', '10-rapbox-p3.network']);
  t.equal(
    files.get('10-rapbox-p1.network'),
    `# Written by rapd for instrument port p1; rewritten at every start, do not edit.
[Match]
Name=inst1

[Link]
RequiredForOnline=no

[Network]
Description=rapbox instrument port p1
Address=100.87.0.1/28
ConfigureWithoutCarrier=yes
IgnoreCarrierLoss=yes
LinkLocalAddressing=no
IPv6AcceptRA=no
IPv6SendRA=no
DHCP=no
IPv4Forwarding=no
IPv6Forwarding=no
IPMasquerade=no
LLDP=no
EmitLLDP=no
LLMNR=no
MulticastDNS=no
DHCPServer=yes

[DHCPServer]
# Pool 100.87.0.8-100.87.0.14; the lower half is for instruments configured statically.
PoolOffset=8
PoolSize=7
EmitRouter=no
EmitDNS=no
EmitNTP=no
EmitSIP=no
EmitPOP3=no
EmitSMTP=no
EmitLPR=no
EmitTimezone=no
`,
  );
  const p3 = files.get('10-rapbox-p3.network')!;
  t.match(p3, /^Address=10\.20\.0\.1\/30$/m);
  t.match(p3, /^DHCPServer=no$/m);
  t.notMatch(p3, /\[DHCPServer\]/, 'static port: no DHCP server section');
  t.same(describePorts(config), [
    'port p1: inst1 100.87.0.0/28, gateway 100.87.0.1:7400, DHCP 100.87.0.8-100.87.0.14',
    'port p3: inst3 10.20.0.0/30, gateway 10.20.0.1:7400, static instrument',
  ]);
});

t.test('DHCP pool is the upper half of the hosts, inside the subnet', async (t) => {
  const pool = (cidr: string) => {
    const [a, len] = cidr.split('/');
    return dhcpPool(subnetOf(parseIPv4(a!)!, Number(len)));
  };
  t.same(pool('100.87.0.0/28'), { offset: 8, size: 7, first: '100.87.0.8', last: '100.87.0.14' });
  t.same(pool('10.0.0.0/30'), { offset: 2, size: 1, first: '10.0.0.2', last: '10.0.0.2' });
  t.same(pool('10.0.0.0/24'), { offset: 128, size: 127, first: '10.0.0.128', last: '10.0.0.254' });
});

function recorder(fail = false) {
  const calls: string[][] = [];
  const run = (async (argv: readonly string[]) => {
    calls.push([...argv]);
    if (fail) throw new RapError('RAP_RUN', 'networkctl reload: exited with code 1: Failed to connect to bus');
    return { argv: [...argv], code: 0, signal: null, stdout: '', stderr: '' };
  }) as Runner;
  return { run, calls };
}

t.test('apply: writes atomically, reloads only on change, removes only its own stale files', async (t) => {
  const dir = t.testdir({ '80-other.network': '[Match]\nName=x\n', '10-rapbox-gone.network': 'old' });
  const { run, calls } = recorder();
  const files = renderNetworkFiles(config);
  const first = await applyNetworkFiles(dir, files, run);
  t.same(first, { changed: ['10-rapbox-p1.network', '10-rapbox-p3.network', '10-rapbox-gone.network'], reloaded: true });
  t.same(calls, [['networkctl', 'reload']]);
  t.same(readdirSync(dir).sort(), ['10-rapbox-p1.network', '10-rapbox-p3.network', '80-other.network'], 'no temp files left, others untouched');
  t.equal(statSync(join(dir, '10-rapbox-p1.network')).mode & 0o777, 0o644, 'readable by systemd-network');
  const again = await applyNetworkFiles(dir, files, run);
  t.same(again, { changed: [], reloaded: false });
  t.equal(calls.length, 1, 'nothing changed: networkd not asked');
  writeFileSync(join(dir, '10-rapbox-p1.network'), 'edited by hand');
  t.same((await applyNetworkFiles(dir, files, run)).changed, ['10-rapbox-p1.network']);
  t.equal(readFileSync(join(dir, '10-rapbox-p1.network'), 'utf8'), files.get('10-rapbox-p1.network'));
});

t.test('apply: a failed reload is RAP_NET naming the files', async (t) => {
  const dir = t.testdir({});
  await t.rejects(applyNetworkFiles(dir, renderNetworkFiles(config), recorder(true).run), {
    code: 'RAP_NET',
    message: /networkd did not take rapd's files \(10-rapbox-p1\.network, 10-rapbox-p3\.network\): networkctl reload: .*Failed to connect to bus/,
  });
});

t.test('apply: an unwritable directory is RAP_NET naming it', async (t) => {
  const dir = t.testdir({ file: 'x' });
  await t.rejects(applyNetworkFiles(join(dir, 'file', 'sub'), renderNetworkFiles(config), recorder().run), {
    code: 'RAP_NET',
    message: /cannot write networkd files in .*file\/sub/,
  });
});
