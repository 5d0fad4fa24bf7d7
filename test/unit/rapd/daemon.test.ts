import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../../src/rapd/config.ts';
import { slotFromCmdline, startDaemon } from '../../../src/rapd/daemon.ts';
import { pathsFromConfig } from '../../../src/rapd/paths.ts';
import { createLogger } from '../../../src/lib/log.ts';
import type { Notifier } from '../../../src/rapd/notify.ts';
import { callControl } from '../../../src/rapctl/client.ts';

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
  t.same(res, { ok: false, error: { code: 'RAP_CONTROL', message: 'unknown method "bogus" (known: status)' } });
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
