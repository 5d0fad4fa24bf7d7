import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SETTINGS, configDocTable, loadConfig, parseConfig, redactConfig } from '../../../src/rapd/config.ts';
import { isRapError } from '../../../src/lib/errors.ts';

t.test('an empty object gives every default', async (t) => {
  const c = parseConfig({}, 'test');
  for (const s of SETTINGS) t.same((c as Record<string, unknown>)[s.key], s.default, s.key);
});

t.test('nested sections set dotted keys', async (t) => {
  const c = parseConfig({ log: { level: 'debug' }, paths: { state: '/data/rapd' } }, 'test');
  t.equal(c['log.level'], 'debug');
  t.equal(c['paths.state'], '/data/rapd');
  t.equal(c['paths.runtime'], '/run/rapd');
});

const bad: { name: string; doc: unknown; want: RegExp }[] = [
  { name: 'wrong enum value names key, value and choices', doc: { log: { level: 'verbose' } }, want: /key 'log\.level': got "verbose", expected one of "debug", "info", "warn", "error"/ },
  { name: 'unknown key', doc: { logg: { level: 'info' } }, want: /unknown key 'logg' \(known keys: device\.name, log\.level/ },
  { name: 'unknown key inside a section', doc: { log: { colour: true } }, want: /unknown key 'log\.colour'/ },
  { name: 'relative path', doc: { paths: { state: 'var/lib' } }, want: /key 'paths\.state': got "var\/lib", expected an absolute path/ },
  { name: 'path with ..', doc: { paths: { state: '/var/../etc' } }, want: /expected an absolute path/ },
  { name: 'integer out of range', doc: { shutdown: { timeoutMs: 5 } }, want: /key 'shutdown\.timeoutMs': got 5, expected an integer from 100 to 60000/ },
  { name: 'float for integer', doc: { shutdown: { timeoutMs: 1000.5 } }, want: /expected an integer/ },
  { name: 'section given as scalar', doc: { log: 'debug' }, want: /unknown key 'log'/ },
  { name: 'bad device name', doc: { device: { name: 'box with spaces' } }, want: /key 'device\.name'.*letters, digits/ },
  { name: 'top-level array', doc: [], want: /expected a JSON object at the top level/ },
  { name: 'top-level null', doc: null, want: /expected a JSON object at the top level, got null/ },
];
for (const c of bad) {
  t.test(`rejects: ${c.name}`, async (t) => {
    t.throws(() => parseConfig(c.doc, 'rapd.json'), { code: 'RAP_CONFIG', message: c.want });
  });
}

t.test('all problems are reported together', async (t) => {
  try {
    parseConfig({ log: { level: 'x' }, nope: 1 }, 'f');
    t.fail('should throw');
  } catch (e) {
    t.ok(isRapError(e, 'RAP_CONFIG'));
    t.match((e as Error).message, /log\.level.*; unknown key 'nope'/);
  }
});

t.test('loadConfig: missing file, bad JSON, good file', async (t) => {
  const dir = t.testdir({ 'bad.json': '{"log": {', 'good.json': '{"device": {"name": "lab-3"}}' });
  t.throws(() => loadConfig(join(dir, 'missing.json')), { code: 'RAP_CONFIG_READ', message: /missing\.json: cannot read: file not found/ });
  t.throws(() => loadConfig(join(dir, 'bad.json')), { code: 'RAP_CONFIG', message: /bad\.json: not valid JSON/ });
  t.equal(loadConfig(join(dir, 'good.json'))['device.name'], 'lab-3');
});

t.test('the shipped image config is valid', async (t) => {
  const c = loadConfig(join(import.meta.dirname, '../../../rootfs-overlay/etc/rapd/rapd.json'));
  t.equal(c['paths.state'], '/var/lib/rapd');
});

t.test('redactConfig lists every key', async (t) => {
  const r = redactConfig(parseConfig({}, 't'));
  t.same(Object.keys(r).sort(), SETTINGS.map((s) => s.key).sort());
});

t.test('README carries the current settings table', async (t) => {
  const readme = readFileSync(join(import.meta.dirname, '../../../README.md'), 'utf8');
  t.ok(readme.includes(configDocTable()), 'README.md settings table is out of date: paste the output of `rapd --config-doc`');
});

t.test('ports: defaults filled in, each field checked with its index', async (t) => {
  const c = parseConfig({ ports: [{ name: 'p1', address: '192.168.101.1' }] }, 'test');
  t.same(c['ports'], [{ name: 'p1', interface: '', address: '192.168.101.1', dhcp: true, port: 7400, pollIntervalSec: 60, offlineAfterSec: 180, prefix: 0 }]);
  const cases: [unknown, RegExp][] = [
    [{ ports: {} }, /key 'ports': got \{\}, expected a list of at most 16 instrument port objects/],
    [{ ports: [{ address: '10.1.1.1' }] }, /key 'ports\[0\]\.name' is required/],
    [{ ports: [{ name: 'p1', address: '10.1.1.1', port: 70000 }] }, /key 'ports\[0\]\.port': got 70000, expected an integer from 1 to 65535/],
    [{ ports: [{ name: 'p1', address: '10.1.1.1', colour: 'red' }] }, /unknown key 'ports\[0\]\.colour'/],
    [{ ports: [{ name: 'p1', address: 'a' }, { name: 'p1', address: 'b' }] }, /key 'ports\[1\]\.name': "p1" is used twice/],
    [{ ports: [{ name: 'p1', address: '10.1.1.1' }, { name: 'p2', address: '10.1.1.1' }] }, /key 'ports\[1\]': address 10\.1\.1\.1:7400 is used by another port/],
    [{ ports: ['p1'] }, /key 'ports\[0\]': got "p1", expected an instrument port object/],
  ];
  for (const [doc, want] of cases) t.throws(() => parseConfig(doc, 'f'), { code: 'RAP_CONFIG', message: want }, JSON.stringify(doc));
});

t.test('center.url must be https; device.id required with it', async (t) => {
  t.throws(() => parseConfig({ center: { url: 'http://center.example' }, device: { id: 'box-1' } }, 'f'), {
    message: /key 'center\.url': got "http:\/\/center\.example", expected empty or a URL \(https:\)/,
  });
  t.throws(() => parseConfig({ center: { url: 'https://center.example' } }, 'f'), { message: /key 'device\.id' must be set when 'center\.url' is set/ });
  t.equal(parseConfig({ center: { url: 'https://center.example:8443' }, device: { id: 'box-1' } }, 'f')['center.url'], 'https://center.example:8443');
});

t.test('a bad secret value is not echoed', async (t) => {
  try {
    parseConfig({ proxy: { url: 'ftp://user:hunter2@proxy' } }, 'f');
    t.fail('should throw');
  } catch (e) {
    t.match((e as Error).message, /key 'proxy\.url': got <redacted>, expected empty or a URL \(http: or socks5: or socks5h:\)/);
    t.notMatch((e as Error).message, /hunter2/);
  }
  t.equal(redactConfig(parseConfig({ proxy: { url: 'http://u:hunter2@proxy:3128' } }, 'f'))['proxy.url'], '<redacted>');
});

t.test('network ports: addresses from the plan, one /28 each in list order', async (t) => {
  const c = parseConfig({ ports: [{ name: 'p1', interface: 'inst1' }, { name: 'dev', address: '127.0.0.1', port: 7499 }, { name: 'p3', interface: 'inst3', dhcp: false }] }, 'f');
  t.same(
    c['ports'].map((p) => [p.name, p.interface, p.address, p.prefix, p.dhcp]),
    [
      ['p1', 'inst1', '100.87.0.1', 28, true],
      ['dev', '', '127.0.0.1', 0, true],
      ['p3', 'inst3', '100.87.0.33', 28, false],
    ],
  );
});

t.test('network ports: explicit address with or without a prefix, site plan override', async (t) => {
  const c = parseConfig(
    { network: { plan: '172.31.250.0/24', portPrefix: 29 }, ports: [{ name: 'a', interface: 'inst1' }, { name: 'b', interface: 'inst2' }, { name: 'c', interface: 'inst3', address: '10.99.0.1/30' }, { name: 'd', interface: 'inst4', address: '10.99.1.14' }] },
    'f',
  );
  t.same(
    c['ports'].map((p) => `${p.address}/${p.prefix}`),
    ['172.31.250.1/29', '172.31.250.9/29', '10.99.0.1/30', '10.99.1.14/29'],
  );
});

// Each bad network config names the key and says what is wrong.
const badNet: { name: string; doc: unknown; want: RegExp }[] = [
  { name: 'overlapping port subnets', doc: { ports: [{ name: 'a', interface: 'inst1', address: '10.5.0.1/24' }, { name: 'b', interface: 'inst2', address: '10.5.0.129/25' }] }, want: /key 'ports\[1\]\.address': subnet 10\.5\.0\.128\/25 overlaps ports\[0\]'s 10\.5\.0\.0\/24/ },
  { name: 'explicit address overlapping a plan subnet', doc: { ports: [{ name: 'a', interface: 'inst1' }, { name: 'b', interface: 'inst2', address: '100.87.0.5' }] }, want: /key 'ports\[1\]\.address': subnet 100\.87\.0\.0\/28 overlaps ports\[0\]'s 100\.87\.0\.0\/28/ },
  { name: 'gateway is the network address', doc: { ports: [{ name: 'a', interface: 'inst1', address: '10.5.0.0/28' }] }, want: /key 'ports\[0\]\.address': 10\.5\.0\.0\/28 is the network address of 10\.5\.0\.0\/28, not a host in it/ },
  { name: 'gateway is the broadcast address', doc: { ports: [{ name: 'a', interface: 'inst1', address: '10.5.0.15/28' }] }, want: /key 'ports\[0\]\.address': 10\.5\.0\.15\/28 is the broadcast address of 10\.5\.0\.0\/28/ },
  { name: 'interface is the WAN', doc: { ports: [{ name: 'a', interface: 'wan' }] }, want: /key 'ports\[0\]\.interface': "wan" is the WAN interface \('network\.wanInterface'\)/ },
  { name: 'interface clashes with a renamed WAN', doc: { network: { wanInterface: 'eth0' }, ports: [{ name: 'a', interface: 'eth0' }] }, want: /key 'ports\[0\]\.interface': "eth0" is the WAN interface/ },
  { name: 'interface used twice', doc: { ports: [{ name: 'a', interface: 'inst1' }, { name: 'b', interface: 'inst1' }] }, want: /key 'ports\[1\]\.interface': "inst1" is used by ports\[0\] too/ },
  { name: 'interface lo', doc: { ports: [{ name: 'a', interface: 'lo' }] }, want: /key 'ports\[0\]\.interface': "lo" is loopback/ },
  { name: 'interface name too long', doc: { ports: [{ name: 'a', interface: 'instrument-port-1' }] }, want: /key 'ports\[0\]\.interface': got "instrument-port-1", expected a string of empty or 1-15 of a-z/ },
  { name: 'IPv6 gateway on a network port', doc: { ports: [{ name: 'a', interface: 'inst1', address: 'fd00::1' }] }, want: /key 'ports\[0\]\.address': got "fd00::1", expected an IPv4 address with an optional "\/prefix" from 8 to 30/ },
  { name: 'prefix /31', doc: { ports: [{ name: 'a', interface: 'inst1', address: '10.5.0.1/31' }] }, want: /key 'ports\[0\]\.address': got "10\.5\.0\.1\/31", expected an IPv4 address/ },
  { name: 'loopback subnet', doc: { ports: [{ name: 'a', interface: 'inst1', address: '127.1.0.1/28' }] }, want: /key 'ports\[0\]\.address': subnet 127\.1\.0\.0\/28 lies in loopback/ },
  { name: 'link-local subnet', doc: { ports: [{ name: 'a', interface: 'inst1', address: '169.254.3.1/28' }] }, want: /lies in link-local/ },
  { name: 'dev port without an address', doc: { ports: [{ name: 'a' }] }, want: /key 'ports\[0\]\.address' is required for a port without an interface/ },
  { name: 'dev port with a prefix', doc: { ports: [{ name: 'a', address: '127.0.0.1/8' }] }, want: /key 'ports\[0\]\.address': got "127\.0\.0\.1\/8"; a "\/prefix" needs an interface/ },
  { name: 'plan with host bits', doc: { network: { plan: '100.87.0.1/24' } }, want: /key 'network\.plan': 100\.87\.0\.1\/24 has host bits set \(the subnet is 100\.87\.0\.0\/24\)/ },
  { name: 'plan smaller than a port subnet', doc: { network: { plan: '100.87.0.0/30' } }, want: /key 'network\.plan': got "100\.87\.0\.0\/30", expected an IPv4 subnet no smaller than \/28/ },
  { name: 'plan not an address', doc: { network: { plan: '300.1.1.0/24' } }, want: /key 'network\.plan': got "300\.1\.1\.0\/24"/ },
  {
    name: 'plan too small for the ports',
    doc: { network: { plan: '100.87.0.0/27' }, ports: [{ name: 'a', interface: 'inst1' }, { name: 'b', interface: 'inst2' }, { name: 'c', interface: 'inst3' }] },
    want: /key 'ports\[2\]\.address': 'network\.plan' 100\.87\.0\.0\/27 has only 2 \/28 subnet\(s\); give this port an address/,
  },
];
for (const c of badNet) {
  t.test(`rejects network config: ${c.name}`, async (t) => {
    t.throws(() => parseConfig(c.doc, 'rapd.json'), { code: 'RAP_CONFIG', message: c.want });
  });
}

t.test('sixteen ports fit the default plan', async (t) => {
  const ports = Array.from({ length: 16 }, (_, i) => ({ name: `p${i + 1}`, interface: `inst${i + 1}` }));
  const c = parseConfig({ ports }, 'f');
  t.equal(c['ports'][15]?.address, '100.87.0.241');
});
