import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../../src/rapd/config.ts';
import { slotFromCmdline, startDaemon } from '../../../src/rapd/daemon.ts';
import { pathsFromConfig } from '../../../src/rapd/paths.ts';
import { createLogger } from '../../../src/lib/log.ts';
import type { Notifier } from '../../../src/rapd/notify.ts';
import { callControl } from '../../../src/rapctl/client.ts';
import type { FirewallAdaptor } from '../../../src/rapd/firewall.ts';
import type { Runner } from '../../../src/lib/run.ts';
import { RapError } from '../../../src/lib/errors.ts';

t.test('slotFromCmdline', async (t) => {
  t.equal(slotFromCmdline('initrd=\\x root=PARTUUID=1 rapbox.slot=b console=ttyS0'), 'b');
  t.equal(slotFromCmdline('rapbox.slot=a'), 'a');
  t.equal(slotFromCmdline('rapbox.slot=c'), null);
  t.equal(slotFromCmdline('xrapbox.slot=a'), null);
  t.equal(slotFromCmdline(''), null);
});

function recordingNotifier(fail = false) {
  const sent: string[] = [];
  const n: Notifier = {
    active: true,
    watchdogIntervalMs: 20,
    ready: async (s) => {
      if (fail) throw new Error('notify broke');
      sent.push(`READY ${s}`);
    },
    status: async (s) => void sent.push(`STATUS ${s}`),
    stopping: async (s) => void sent.push(`STOPPING ${s}`),
    watchdog: async () => void sent.push('WATCHDOG'),
  };
  return { n, sent };
}

function setup(t: Test) {
  const dir = t.testdir({ proc: { cmdline: 'root=x rapbox.slot=b\n' } });
  // Unix socket paths are limited to 108 bytes; tap's fixture paths are longer.
  const run = mkdtempSync('/tmp/rapd-test-');
  t.teardown(() => rmSync(run, { recursive: true, force: true }));
  const config = parseConfig({ paths: { state: join(dir, 'state'), runtime: join(run, 'run') } }, 'test');
  const paths = pathsFromConfig(config, join(dir, 'proc'));
  const lines: string[] = [];
  const log = createLogger({ write: (l) => void lines.push(l), syslogPrefix: false, level: 'debug' });
  return { dir, config, paths, log, lines };
}

t.test('starts, answers status over the socket, pings the watchdog, stops', async (t) => {
  const { config, paths, log } = setup(t);
  const { n, sent } = recordingNotifier();
  const d = await startDaemon({ config, paths, log, notifier: n });
  t.equal(statSync(paths.runtime).mode & 0o777, 0o700, 'runtime dir owner-only');
  t.equal(statSync(paths.controlSocket).mode & 0o777, 0o600, 'socket owner-only');
  t.match(readFileSync(join(paths.state, 'rapd.instance.json'), 'utf8'), /"pid":/);
  const res = await callControl(paths.controlSocket, { method: 'status' });
  t.ok(res.ok);
  if (res.ok) {
    t.equal(res.result.state, 'running');
    t.equal(res.result.slot, 'b');
    t.equal(res.result.config['log.level'], 'info');
  }
  await new Promise((r) => setTimeout(r, 70));
  t.ok(sent.filter((s) => s === 'WATCHDOG').length >= 2, 'watchdog pinged');
  t.match(sent[0], /^READY running; slot b/);
  await d.stop('test');
  t.match(sent.at(-1), /^STOPPING/);
  const count = sent.length;
  await new Promise((r) => setTimeout(r, 50));
  t.equal(sent.length, count, 'no pings after stop');
  await t.rejects(callControl(paths.controlSocket, { method: 'status' }), { message: /rapd is not running/ });
});

t.test('a bad control request gets an error answer, not a crash', async (t) => {
  const { config, paths, log } = setup(t);
  const d = await startDaemon({ config, paths, log, notifier: recordingNotifier().n });
  t.teardown(() => d.stop('test'));
  const res = await callControl(paths.controlSocket, { method: 'bogus' as 'status' });
  t.same(res, { ok: false, error: { code: 'RAP_CONTROL', message: 'unknown method "bogus" (known: status, audit.read, audit.verify)' } });
});

t.test('unwritable state directory fails before anything listens', async (t) => {
  const { dir, paths, config, log } = setup(t);
  // A path below a regular file cannot be created, whoever we are (root
  // ignores directory modes, so a read-only directory would prove nothing).
  const p = { ...paths, state: join(dir, 'proc', 'cmdline', 'state') };
  await t.rejects(startDaemon({ config, paths: p, log, notifier: recordingNotifier().n }), {
    code: 'RAP_STATE_DIR',
    message: /state directory .*cmdline\/state is not writable/,
  });
  t.throws(() => statSync(paths.controlSocket), { code: 'ENOENT' }, 'no socket left behind');
});

t.test('notify failure undoes the start (never half-started)', async (t) => {
  const { config, paths, log } = setup(t);
  await t.rejects(startDaemon({ config, paths, log, notifier: recordingNotifier(true).n }), { message: 'notify broke' });
  t.throws(() => statSync(paths.controlSocket), { code: 'ENOENT' });
});

t.test('refuses to replace a non-socket at the socket path', async (t) => {
  const { config, paths, log } = setup(t);
  mkdirSync(paths.runtime, { recursive: true });
  writeFileSync(paths.controlSocket, 'not a socket');
  await t.rejects(startDaemon({ config, paths, log, notifier: recordingNotifier().n }), {
    code: 'RAP_CONTROL',
    message: /exists and is not a socket/,
  });
});

t.test('a port with an interface: firewall, then networkd files, then the agent (waiting for its address)', async (t) => {
  const { dir, paths, log } = setup(t);
  const config = parseConfig({ paths: { state: paths.state, runtime: paths.runtime, networkd: join(dir, 'networkd') }, ports: [{ name: 'p1', interface: 'inst1', address: '192.0.2.1/28' }] }, 'test');
  const p = { ...paths, networkd: config['paths.networkd'] };
  const steps: string[] = [];
  const firewall: FirewallAdaptor = {
    apply: async (ruleset) => void steps.push(`nft apply ${ruleset.includes('chain port_p1') ? 'with port_p1' : 'without port'}`),
    check: async () => {},
    read: async () => ({ chains: [{ name: 'input', hook: 'input', policy: 'drop', rules: 7 }, { name: 'forward', hook: 'forward', policy: 'drop', rules: 2 }], rules: 9 }),
  };
  const run = (async (argv: readonly string[]) => {
    steps.push(`${argv.join(' ')} (files: ${readdirSync(p.networkd).join(',')})`);
    return { argv: [...argv], code: 0, signal: null, stdout: '', stderr: '' };
  }) as Runner;
  const d = await startDaemon({ config, paths: p, log, notifier: recordingNotifier().n, firewall, run, bindRetryMaxMs: 50 });
  t.teardown(() => d.stop('test'));
  t.same(steps, ['nft apply with port_p1', 'networkctl reload (files: 10-rapbox-p1.network)']);
  const s = d.status();
  t.match(s.network, { firewall: { table: 'inet rapbox', chains: 2, rules: 9 }, networkd: { dir: p.networkd, files: ['10-rapbox-p1.network'], reloaded: true } });
  t.match(s.ports[0], { name: 'p1', listen: '192.0.2.1:7400', listening: false, bindError: 'EADDRNOTAVAIL' });
});

t.test('a firewall that does not load stops the start before networkd or any agent', async (t) => {
  const { dir, paths, log } = setup(t);
  const config = parseConfig({ paths: { state: paths.state, runtime: paths.runtime, networkd: join(dir, 'networkd') }, ports: [{ name: 'p1', interface: 'inst1' }] }, 'test');
  const firewall: FirewallAdaptor = {
    apply: async () => {
      throw new RapError('RAP_FIREWALL', 'nft apply failed, previous ruleset kept: nft: command not found');
    },
    check: async () => {},
    read: async () => null,
  };
  await t.rejects(startDaemon({ config, paths: { ...paths, networkd: config['paths.networkd'] }, log, notifier: recordingNotifier().n, firewall }), {
    code: 'RAP_FIREWALL',
    message: /previous ruleset kept/,
  });
  t.throws(() => statSync(join(dir, 'networkd')), { code: 'ENOENT' }, 'no networkd files written');
  t.throws(() => statSync(paths.controlSocket), { code: 'ENOENT' }, 'nothing listens');
});

t.test('loopback/dev ports only: no firewall or networkd touched, network status null', async (t) => {
  const { config, paths, log } = setup(t);
  const run = (async () => {
    throw new Error('must not run anything');
  }) as unknown as Runner;
  const d = await startDaemon({ config, paths, log, notifier: recordingNotifier().n, run });
  t.teardown(() => d.stop('test'));
  t.equal(d.status().network, null);
});

t.test('audit: config recorded at the first start and when it changes; firewall applies and failures recorded', async (t) => {
  const { dir, paths, log } = setup(t);
  const base = { paths: { state: paths.state, runtime: paths.runtime, networkd: join(dir, 'networkd') }, ports: [{ name: 'p1', interface: 'inst1' }] };
  const ok: FirewallAdaptor = {
    apply: async () => {},
    check: async () => {},
    read: async () => ({ chains: [{ name: 'input', hook: 'input', policy: 'drop', rules: 3 }, { name: 'forward', hook: 'forward', policy: 'drop', rules: 0 }], rules: 3 }),
  };
  const run = (async (argv: readonly string[]) => ({ argv: [...argv], code: 0, signal: null, stdout: '', stderr: '' })) as Runner;
  const start = async (doc: Record<string, unknown>, firewall: FirewallAdaptor) => {
    const config = parseConfig(doc, 'test');
    return startDaemon({ config, paths: { ...paths, networkd: config['paths.networkd'] }, log, notifier: recordingNotifier().n, firewall, run, bindRetryMaxMs: 50 });
  };
  const records = async () => {
    const res = await callControl(paths.controlSocket, { method: 'audit.read', after: 0, limit: 100 });
    return res.ok ? res.result.map((r) => [r.action, r.outcome, r.details['changedKeys'] ?? r.details['chains'] ?? r.details['error']]) : [];
  };
  let d = await start(base, ok);
  t.same(await records(), [
    ['config.changed', 'ok', []],
    ['firewall.applied', 'ok', 2],
  ]);
  await d.stop('test');
  d = await start(base, ok);
  t.equal((await records()).filter(([a]) => a === 'config.changed').length, 1, 'same config: not recorded again');
  await d.stop('test');
  d = await start({ ...base, log: { level: 'debug' } }, ok);
  t.same((await records()).filter(([a]) => a === 'config.changed').pop(), ['config.changed', 'ok', ['log.level']], 'a change names the keys');
  const verify = await callControl(paths.controlSocket, { method: 'audit.verify' });
  t.match(verify, { ok: true, result: { ok: true, records: 5 } });
  await d.stop('test');
  const broken: FirewallAdaptor = { ...ok, apply: async () => { throw new RapError('RAP_FIREWALL', 'nft apply failed'); } };
  await t.rejects(start(base, broken), { code: 'RAP_FIREWALL' });
  const lines = readFileSync(paths.auditLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.match(lines.pop(), { action: 'firewall.applied', outcome: 'error', details: { error: 'nft apply failed' } }, 'the failed apply is on record');
});
