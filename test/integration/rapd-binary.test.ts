// The built single executable (out/rapd), run as a process: start, systemd
// notification through a recording systemd-notify on PATH, rapctl over the
// real socket, clean stop, and every bad-input exit.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { collect, requireRapd, runBinary, waitFor } from './helpers.ts';

const rapd = requireRapd();

interface Box {
  dir: string;
  bin: string;
  config: string;
  socket: string;
  notifyLog: string;
}

/** A private tree: config, state, runtime, and a bin/ with a recording systemd-notify. */
function box(t: Test, extra: Record<string, unknown> = {}): Box {
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = mkdtempSync('/tmp/rapd-it-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'bin');
  const notifyLog = join(dir, 'notify.log');
  const config = join(dir, 'rapd.json');
  writeFileSync(config, JSON.stringify({ paths: { state: join(dir, 'state'), runtime: join(dir, 'run') }, ...extra }));
  mkdirSync(bin);
  // Records argv and the socket it was told to use; the real one is proven in test/vm.
  writeFileSync(
    join(bin, 'systemd-notify'),
    `#!/bin/sh\nprintf '%s|%s\\n' "$NOTIFY_SOCKET" "$*" >> ${notifyLog}\n`,
  );
  chmodSync(join(bin, 'systemd-notify'), 0o755);
  symlinkSync(rapd, join(bin, 'rapctl'));
  return { dir, bin, config, socket: join(dir, 'run', 'rapd.sock'), notifyLog };
}

const baseEnv = (b: Box): Record<string, string> => ({ PATH: `${b.bin}:/usr/bin:/bin` });

t.test('--version works with no node on PATH and ignores NODE_OPTIONS', async (t) => {
  const r = await runBinary([rapd, '--version'], { PATH: '/nonexistent', NODE_OPTIONS: '--require=/nonexistent/evil.js' });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^rapd \d+\.\d+\.\d+\+\S+ \(node v24\.\d+\.\d+\)\n$/);
  t.equal(r.stderr, '');
});

t.test('runs, tells systemd READY with its own pid, feeds the watchdog, answers rapctl, stops on SIGTERM', async (t) => {
  const b = box(t);
  const child = spawn(rapd, ['--config', b.config], {
    env: { ...baseEnv(b), NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '200000' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const done = collect(child, 30_000);
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor('READY=1', () => existsSync(b.notifyLog) && readFileSync(b.notifyLog, 'utf8').includes('READY=1'));
  await waitFor('two watchdog pings', () => readFileSync(b.notifyLog, 'utf8').split('WATCHDOG=1').length > 2, 5000);
  const first = readFileSync(b.notifyLog, 'utf8').split('\n')[0]!;
  t.equal(first, `/run/systemd/notify|--pid=${child.pid} READY=1 STATUS=running; slot none; control ${b.socket}; 0 port(s)`);
  t.equal(statSync(join(b.dir, 'run')).mode & 0o777, 0o700, 'runtime dir owner-only');
  t.equal(statSync(b.socket).mode & 0o777, 0o600, 'socket owner-only');

  const json = await runBinary([join(b.bin, 'rapctl'), '--socket', b.socket, 'status', '--json'], baseEnv(b), 20_000, 'rapctl');
  t.equal(json.code, 0, json.stderr);
  const status = JSON.parse(json.stdout);
  t.equal(status.state, 'running');
  t.equal(status.pid, child.pid);
  t.match(status.node, /^v24\./);
  const text = await runBinary([rapd, 'ctl', '--socket', b.socket, 'status'], baseEnv(b));
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /^rapbox: rapd .* pid \d+\nstate: +running\n/);

  child.kill('SIGTERM');
  const exit = await done;
  t.equal(exit.code, 0, `clean exit; stderr: ${exit.stderr}`);
  t.match(readFileSync(b.notifyLog, 'utf8'), /STOPPING=1 STATUS=stopping: SIGTERM/);
  t.notOk(existsSync(b.socket), 'socket removed');
  const logs = exit.stdout.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: string });
  t.same(logs.map((l) => l.msg), ['audit log open', 'store open', 'rapd ready', 'rapd stopping', 'rapd stopped'], 'structured JSON log lines');
});

const badStarts: { name: string; setup: (b: Box) => { args?: string[]; env?: Record<string, string> }; want: RegExp; code?: number }[] = [
  { name: 'missing config', setup: (b) => ({ args: ['--config', join(b.dir, 'nope.json')] }), want: /^rapd: RAP_CONFIG_READ: config \S+nope\.json: cannot read: file not found\n$/ },
  {
    name: 'malformed config',
    setup: (b) => (writeFileSync(b.config, '{"log": '), {}),
    want: /^rapd: RAP_CONFIG: config \S+rapd\.json: not valid JSON: .*\n$/,
  },
  {
    name: 'bad value',
    setup: (b) => (writeFileSync(b.config, '{"shutdown": {"timeoutMs": "soon"}}'), {}),
    want: /^rapd: RAP_CONFIG: config \S+: key 'shutdown\.timeoutMs': got "soon", expected an integer from 100 to 60000\n$/,
  },
  {
    name: 'unwritable state directory',
    setup: (b) => (
      writeFileSync(b.config, JSON.stringify({ paths: { state: join(b.config, 'state'), runtime: join(b.dir, 'run') } })), {}
    ),
    want: /^rapd: RAP_STATE_DIR: state directory \S+ is not writable: .*\n$/,
  },
  {
    name: 'NOTIFY_SOCKET set but no systemd-notify',
    setup: () => ({ env: { PATH: '/nonexistent', NOTIFY_SOCKET: '/run/systemd/notify' } }),
    want: /^rapd: RAP_NOTIFY: NOTIFY_SOCKET is set but systemd-notify was not found on PATH.*\n$/,
  },
  { name: 'unknown argument', setup: () => ({ args: ['--frobnicate'] }), want: /^rapd: unknown argument '--frobnicate'\n/, code: 2 },
];
for (const c of badStarts) {
  t.test(`bad start: ${c.name} -> one clear line, non-zero, nothing left running`, async (t) => {
    const b = box(t);
    const s = c.setup(b);
    const r = await runBinary([rapd, ...(s.args ?? ['--config', b.config])], s.env ?? baseEnv(b));
    t.equal(r.code, c.code ?? 1);
    t.match(r.stderr, c.want);
    t.notOk(existsSync(b.socket), 'no control socket');
    t.notOk(existsSync(b.notifyLog), 'systemd never told READY');
  });
}

t.test('rapctl without a running rapd says so', async (t) => {
  const b = box(t);
  const r = await runBinary([join(b.bin, 'rapctl'), '--socket', b.socket, 'status'], baseEnv(b), 20_000, 'rapctl');
  t.equal(r.code, 1);
  t.match(r.stderr, /^rapctl: cannot reach rapd on \S+: rapd is not running \(no control socket\)\n$/);
});

t.test('rapctl usage errors exit 2', async (t) => {
  const r = await runBinary([rapd, 'ctl', 'frob'], { PATH: '/usr/bin:/bin' });
  t.equal(r.code, 2);
  t.match(r.stderr, /^rapctl: unknown command 'frob'\nusage: rapctl/);
});
