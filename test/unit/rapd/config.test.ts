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
  t.same(c['ports'], [{ name: 'p1', address: '192.168.101.1', port: 7400, pollIntervalSec: 60, offlineAfterSec: 180 }]);
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
