import t, { type Test } from 'tap';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createNotifier, findOnPath } from '../../../src/rapd/notify.ts';
import type { Runner, RunResult } from '../../../src/lib/run.ts';

function recorder() {
  const calls: { argv: string[]; env: Record<string, string | undefined> | undefined }[] = [];
  const run: Runner = async (argv, opts) => {
    calls.push({ argv: [...argv], env: opts?.env });
    return { argv: [...argv], code: 0, signal: null, stdout: '', stderr: '' } satisfies RunResult;
  };
  return { calls, run };
}

function fakeBin(t: Test): string {
  const dir = t.testdir({ 'systemd-notify': '#!/bin/sh\n' });
  chmodSync(join(dir, 'systemd-notify'), 0o755);
  return dir;
}

t.test('without NOTIFY_SOCKET every call is a no-op', async (t) => {
  const r = recorder();
  const n = createNotifier({ env: { PATH: '/nonexistent' }, pid: 42, run: r.run });
  t.equal(n.active, false);
  await n.ready('x');
  await n.watchdog();
  t.same(r.calls, []);
  t.equal(n.watchdogIntervalMs, null);
});

t.test('NOTIFY_SOCKET set but systemd-notify missing is a clear error', async (t) => {
  const r = recorder();
  t.throws(() => createNotifier({ env: { NOTIFY_SOCKET: '/run/x', PATH: '/nonexistent' }, pid: 1, run: r.run }), {
    code: 'RAP_NOTIFY',
    message: /systemd-notify was not found on PATH/,
  });
});

t.test('state table: what each call sends', async (t) => {
  const dir = fakeBin(t);
  const bin = join(dir, 'systemd-notify');
  const cases: { name: string; call: (n: ReturnType<typeof createNotifier>) => Promise<void>; want: string[] }[] = [
    { name: 'ready', call: (n) => n.ready('running'), want: [bin, '--pid=4242', 'READY=1', 'STATUS=running'] },
    { name: 'status strips newlines', call: (n) => n.status('a\nb'), want: [bin, '--pid=4242', 'STATUS=a b'] },
    { name: 'stopping', call: (n) => n.stopping('bye'), want: [bin, '--pid=4242', 'STOPPING=1', 'STATUS=bye'] },
    { name: 'watchdog', call: (n) => n.watchdog(), want: [bin, '--pid=4242', 'WATCHDOG=1'] },
  ];
  for (const c of cases) {
    const r = recorder();
    const n = createNotifier({ env: { NOTIFY_SOCKET: '/run/systemd/notify', PATH: dir }, pid: 4242, run: r.run });
    await c.call(n);
    t.same(r.calls.map((x) => x.argv), [c.want], c.name);
    t.equal(r.calls[0]?.env?.['NOTIFY_SOCKET'], '/run/systemd/notify', `${c.name}: socket passed on`);
  }
});

t.test('watchdog interval is half of WATCHDOG_USEC, only for our pid', async (t) => {
  const dir = fakeBin(t);
  const r = recorder();
  const base = { NOTIFY_SOCKET: '/s', PATH: dir };
  t.equal(createNotifier({ env: { ...base, WATCHDOG_USEC: '30000000' }, pid: 7, run: r.run }).watchdogIntervalMs, 15000);
  t.equal(createNotifier({ env: { ...base, WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, pid: 7, run: r.run }).watchdogIntervalMs, 15000);
  t.equal(createNotifier({ env: { ...base, WATCHDOG_USEC: '30000000', WATCHDOG_PID: '8' }, pid: 7, run: r.run }).watchdogIntervalMs, null);
  t.equal(createNotifier({ env: { ...base, WATCHDOG_USEC: 'junk' }, pid: 7, run: r.run }).watchdogIntervalMs, null);
});

t.test('findOnPath needs an executable file', async (t) => {
  const dir = t.testdir({ tool: 'x', 'systemd-notify': 'x' });
  chmodSync(join(dir, 'systemd-notify'), 0o755);
  writeFileSync(join(dir, 'tool'), 'x');
  t.equal(findOnPath('tool', dir), null);
  t.equal(findOnPath('systemd-notify', `/nonexistent:${dir}`), join(dir, 'systemd-notify'));
});
