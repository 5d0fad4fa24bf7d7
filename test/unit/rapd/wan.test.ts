import t from 'tap';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../../src/rapd/config.ts';
import { applyNetworkFiles } from '../../../src/rapd/network.ts';
import { applyTimesyncd, renderNetworkdFiles, renderTimesyncd, renderWanNetwork } from '../../../src/rapd/wan.ts';
import { RapError } from '../../../src/lib/errors.ts';
import type { Runner } from '../../../src/lib/run.ts';

const HEAD = `# Written by rapd from the site config (wan.*); shadows the image's
# /usr/lib/systemd/network/80-wan.network. Rewritten at every start, do not edit.
[Match]
Name=wan

[Network]
`;
const TAIL = `IPv4Forwarding=no
IPv6Forwarding=no
LLDP=no
EmitLLDP=no
`;

// State table: the whole rendered file for each site config.
const cases: { name: string; wan: Record<string, string>; network: string; ntp: string | null }[] = [
  {
    name: 'factory default: DHCP, the lease decides DNS and NTP (as the image default)',
    wan: {},
    network: `${HEAD}Description=rapbox WAN (DHCP)\nDHCP=yes\n${TAIL}`,
    ntp: null,
  },
  {
    name: 'static address, gateway, two DNS servers, NTP servers',
    wan: { address: '10.0.2.42/24', gateway: '10.0.2.2', dns: '10.0.2.3, 192.0.2.53', ntp: 'ntp1.example.org,10.0.2.123' },
    network: `${HEAD}Description=rapbox WAN (static)\nAddress=10.0.2.42/24\nGateway=10.0.2.2\nDHCP=no\nDNS=10.0.2.3\nDNS=192.0.2.53\n${TAIL}`,
    ntp: '# Written by rapd from the site config (wan.ntp); rewritten at every start, do not edit.\n[Time]\nNTP=ntp1.example.org 10.0.2.123\n',
  },
  {
    name: "DHCP with the site's DNS: the lease's and the router's DNS are ignored",
    wan: { dns: '2001:db8::53' },
    network: `${HEAD}Description=rapbox WAN (DHCP)\nDHCP=yes\nDNS=2001:db8::53\n${TAIL}\n[DHCPv4]\nUseDNS=no\n\n[DHCPv6]\nUseDNS=no\n\n[IPv6AcceptRA]\nUseDNS=no\n`,
    ntp: null,
  },
  {
    name: "DHCP with the site's NTP: the lease's NTP is ignored, DNS still from the lease",
    wan: { ntp: 'time.example.org' },
    network: `${HEAD}Description=rapbox WAN (DHCP)\nDHCP=yes\n${TAIL}\n[DHCPv4]\nUseNTP=no\n\n[DHCPv6]\nUseNTP=no\n`,
    ntp: '# Written by rapd from the site config (wan.ntp); rewritten at every start, do not edit.\n[Time]\nNTP=time.example.org\n',
  },
];

for (const c of cases) {
  t.test(`render: ${c.name}`, async (t) => {
    const config = parseConfig({ wan: c.wan }, 'test');
    t.equal(renderWanNetwork(config), c.network);
    t.equal(renderTimesyncd(config), c.ntp);
  });
}

t.test('the WAN file follows network.wanInterface and joins the ports\' files; none when the image default is the site\'s', async (t) => {
  const config = parseConfig({ network: { wanInterface: 'eth0' }, ports: [{ name: 'p1', interface: 'inst1' }] }, 'test');
  const files = renderNetworkdFiles(config);
  t.same([...files.keys()], ['10-rapbox-p1.network', '80-wan.network']);
  t.match(files.get('80-wan.network'), /^Name=eth0$/m);
  const factory = parseConfig({ ports: [{ name: 'p1', interface: 'inst1' }] }, 'test');
  t.same([...renderNetworkdFiles(factory).keys()], ['10-rapbox-p1.network'], "factory WAN: the image's 80-wan.network applies");
  t.same([...renderNetworkdFiles(parseConfig({ wan: { ntp: 'time.example.org' } }, 'test')).keys()], ['80-wan.network'], 'NTP alone: the lease must not override it');
});

t.test('apply: a WAN back to the image default removes rapd\'s 80-wan.network (the /usr/lib one applies again)', async (t) => {
  const dir = t.testdir({ '80-wan.network': 'old static WAN', '80-other.network': 'x' });
  const { run, calls } = recorder();
  const r = await applyNetworkFiles(dir, renderNetworkdFiles(parseConfig({ ports: [{ name: 'p1', interface: 'inst1' }] }, 'test')), run);
  t.same(r, { changed: ['10-rapbox-p1.network', '80-wan.network'], reloaded: true });
  t.same(readdirSync(dir).sort(), ['10-rapbox-p1.network', '80-other.network']);
  t.same(calls, [['networkctl', 'reload']]);
});

t.test('config: bad WAN settings are named', async (t) => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ wan: { address: '10.0.2.42/24' } }, /key 'wan\.gateway' is required with a static 'wan\.address'/],
    [{ wan: { gateway: '10.0.2.2' } }, /key 'wan\.gateway': "10\.0\.2\.2" is set but 'wan\.address' is empty/],
    [{ wan: { address: '10.0.2.42/24', gateway: '10.0.3.1' } }, /'wan\.gateway': 10\.0\.3\.1 is not another host in the WAN subnet 10\.0\.2\.0\/24/],
    [{ wan: { address: '10.0.2.0/24', gateway: '10.0.2.1' } }, /'wan\.address': 10\.0\.2\.0\/24 is the network or broadcast address/],
    [{ wan: { address: '10.0.2.42', gateway: '10.0.2.1' } }, /key 'wan\.address': got "10\.0\.2\.42", expected a string of empty or an IPv4 address with "\/prefix"/],
    [{ wan: { address: '10.0.2.42/31', gateway: '10.0.2.43' } }, /"\/prefix" from 8 to 30/],
    [{ wan: { address: '300.0.2.42/24', gateway: '10.0.2.1' } }, /key 'wan\.address': got "300\.0\.2\.42\/24"/],
    [{ wan: { dns: '10.0.2.3,10.0.2' } }, /key 'wan\.dns': "10\.0\.2" is not an IP address/],
    [{ wan: { dns: 'dns.example.org' } }, /key 'wan\.dns': got "dns\.example\.org", expected a string of empty or comma-separated IP addresses/],
    [{ wan: { ntp: 'ntp_1.example.org' } }, /key 'wan\.ntp': got "ntp_1\.example\.org"/],
    [{ wan: { ntp: '-bad.example.org' } }, /key 'wan\.ntp': "-bad\.example\.org" is neither an IP address nor a host name/],
    [{ wan: { address: '100.87.0.20/24', gateway: '100.87.0.254' }, ports: [{ name: 'p1', interface: 'inst1' }] }, /'wan\.address': WAN subnet 100\.87\.0\.0\/24 overlaps ports\[0\]'s 100\.87\.0\.0\/28/],
  ];
  for (const [doc, want] of bad) t.throws(() => parseConfig(doc, 'test'), { code: 'RAP_CONFIG', message: want }, JSON.stringify(doc));
});

function recorder(fail = false) {
  const calls: string[][] = [];
  const run = (async (argv: readonly string[]) => {
    calls.push([...argv]);
    if (fail) throw new RapError('RAP_RUN', 'systemctl try-restart: exited with code 1: Failed to connect to bus');
    return { argv: [...argv], code: 0, signal: null, stdout: '', stderr: '' };
  }) as Runner;
  return { run, calls };
}

t.test('timesyncd drop-in: written (0644) and timesyncd restarted only on change; removed when the site names none', async (t) => {
  const dir = join(t.testdir({ 'other.conf': '[Time]\n' }), '.');
  const { run, calls } = recorder();
  const text = renderTimesyncd(parseConfig({ wan: { ntp: 'time.example.org' } }, 'test'));
  t.same(await applyTimesyncd(dir, text, run), { changed: true, restarted: true });
  t.equal(statSync(join(dir, '50-rapbox-wan.conf')).mode & 0o777, 0o644, 'readable by systemd-timesync');
  t.same(await applyTimesyncd(dir, text, run), { changed: false, restarted: false });
  writeFileSync(join(dir, '50-rapbox-wan.conf'), 'edited by hand');
  t.same(await applyTimesyncd(dir, text, run), { changed: true, restarted: true });
  t.equal(readFileSync(join(dir, '50-rapbox-wan.conf'), 'utf8'), text);
  t.same(await applyTimesyncd(dir, null, run), { changed: true, restarted: true });
  t.same(readdirSync(dir), ['other.conf'], 'only its own file removed');
  t.same(await applyTimesyncd(dir, null, run), { changed: false, restarted: false });
  t.same(calls, Array(3).fill(['systemctl', 'try-restart', 'systemd-timesyncd.service']));
});

t.test('timesyncd drop-in: a failed restart is RAP_NET naming the file', async (t) => {
  const dir = t.testdir({});
  await t.rejects(applyTimesyncd(dir, '[Time]\nNTP=x\n', recorder(true).run), {
    code: 'RAP_NET',
    message: /timesyncd did not restart with the NTP servers of .*50-rapbox-wan\.conf: systemctl try-restart: .*Failed to connect to bus/,
  });
});
