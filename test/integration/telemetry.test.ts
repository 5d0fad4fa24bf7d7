// The telemetry path end to end, through the real components: a simulated
// instrument -> the built out/rapd (port agent, SQLite store) -> HTTPS POST
// with mutual TLS (directly, through tinyproxy's CONNECT, through danted's
// SOCKS5) -> rap-center. The PKI is made at test time by the built
// out/rap-center. Everything on 127.0.0.1; every process stopped by pid.

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEVICE, makePki, requireRapd, runBinary } from './helpers.ts';
import { freePort, startDanted, startTinyproxy } from './proxies.ts';
import { startCenter } from '../../src/center/server.ts';
import { openCenterDb } from '../../src/center/db.ts';
import { createLogger } from '../../src/lib/log.ts';
import { runSimulator } from '../../src/sim/simulator.ts';
import type { StatusReport } from '../../src/protocol/control.ts';

const rapd = requireRapd();
const quiet = createLogger({ write: () => {}, syslogPrefix: false });

function tmp(t: Test, prefix: string): string {
  const d = mkdtempSync(`/tmp/${prefix}-`);
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

interface CenterHandle {
  port: number;
  dbPath: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  setFault(f: { status: number; retryAfterSec?: number; count: number } | null): void;
  /** Message ids the center stored for box-1, with how often each appears. */
  ids(): Map<string, number>;
}

async function center(t: Test, dir: string, pki: string): Promise<CenterHandle> {
  const dbPath = join(dir, 'center.db');
  let running: Awaited<ReturnType<typeof startCenter>> | null = null;
  let port = 0;
  const h: CenterHandle = {
    get port() {
      return port;
    },
    dbPath,
    async start() {
      running = await startCenter({
        dbPath,
        host: '127.0.0.1',
        port,
        key: readFileSync(join(pki, 'server.key')),
        cert: readFileSync(join(pki, 'server.pem')),
        ca: readFileSync(join(pki, 'ca.pem')),
        log: quiet,
      });
      port = running.port;
    },
    async stop() {
      await running?.close();
      running = null;
    },
    setFault(f) {
      running?.setFault(f);
    },
    ids() {
      const db = openCenterDb(dbPath, { create: false });
      try {
        const counts = new Map<string, number>();
        for (const m of db.messages({ device: DEVICE, tail: 10_000_000 })) counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
        return counts;
      } finally {
        db.close();
      }
    },
  };
  await h.start();
  t.teardown(() => h.stop());
  return h;
}

interface RapdHandle {
  child: ChildProcess;
  instrumentPort: number;
  socket: string;
  status(): Promise<StatusReport>;
  exited: Promise<number | null>;
}

/** Start out/rapd with a config for one port and the center; returns once its control socket answers. */
async function startRapd(t: Test, dir: string, pki: string, centerPort: number, instrumentPort: number, extra: Record<string, unknown> = {}): Promise<RapdHandle> {
  const config = join(dir, 'rapd.json');
  const socket = join(dir, 'run', 'rapd.sock');
  writeFileSync(
    config,
    JSON.stringify({
      device: { id: DEVICE },
      paths: { state: join(dir, 'state'), runtime: join(dir, 'run') },
      ports: [{ name: 'p1', address: '127.0.0.1', port: instrumentPort, pollIntervalSec: 0 }],
      center: { url: `https://127.0.0.1:${centerPort}`, caFile: join(pki, 'ca.pem') },
      tls: { certFile: join(pki, 'devices', `${DEVICE}.pem`), keyFile: join(pki, 'devices', `${DEVICE}.key`) },
      uplink: { batchMaxDelayMs: 100, backoffMaxMs: 2000, timeoutMs: 5000 },
      proxy: { fromEnvironment: false },
      ...extra,
    }),
  );
  const child = spawn(rapd, ['--config', config], { env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  child.stderr!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const status = async (): Promise<StatusReport> => {
    const r = await runBinary([rapd, 'ctl', '--socket', socket, 'status', '--json'], { PATH: '/usr/bin:/bin' });
    if (r.code !== 0) throw new Error(`rapctl status failed: ${r.stderr}\nrapd output:\n${out}`);
    return JSON.parse(r.stdout) as StatusReport;
  };
  // A killed predecessor leaves its socket file behind: wait until *this* rapd answers.
  await until(`rapd ${child.pid} answering on its control socket`, async () => {
    if (!existsSync(socket)) return false;
    return (await status().catch(() => null))?.pid === child.pid;
  }, 15_000).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; rapd output:\n${out}`);
  });
  return { child, instrumentPort, socket, status, exited };
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

const sim = (port: number, over: Parameters<typeof runSimulator>[0] extends infer O ? Partial<O> : never) =>
  runSimulator({ host: '127.0.0.1', port, serial: 'SN-0001', model: 'DxH 900', swVersion: '3.1.4', timeoutMs: 15_000, ...over });

/** One read of the center's table per check (ids() scans it). */
function centerHasAll(c: CenterHandle, ids: string[]): boolean {
  const at = c.ids();
  return ids.every((id) => at.has(id));
}

/** Every acknowledged id is at the center exactly once. */
function assertExactlyOnce(t: Test, c: CenterHandle, acked: string[]): void {
  const at = c.ids();
  const missing = acked.filter((id) => !at.has(id));
  t.same(missing, [], `all ${acked.length} acknowledged messages reached the center`);
  t.ok([...at.values()].every((n) => n === 1), 'no message stored twice at the center');
}

t.test('direct: status and alarms from an instrument reach rap-center over mutual TLS', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  const box = await startRapd(t, dir, pki, c.port, await freePort());
  const report = await sim(box.instrumentPort, { count: 300, alarmRatio: 0.1, sizeBytes: 1024 });
  t.equal(report.acked, 300, `all acknowledged (errors: ${JSON.stringify(report.errors)})`);
  await until('center has every message', () => centerHasAll(c, report.ids));
  assertExactlyOnce(t, c, report.ids);
  await until('store empty', async () => {
    const s = await box.status();
    return s.store!.queued.routine + s.store!.queued.alarm === 0;
  });
  const s = await box.status();
  t.equal(s.uplink?.proxy, 'direct');
  t.ok(s.uplink!.sentMessages >= 300, 'uplink counted what it sent');
  t.ok(s.uplink!.wireBytes > 0, 'wire bytes counted');
  t.equal(s.ports[0]?.instrument?.serial, 'SN-0001', 'port reports the identified instrument');
  const db = openCenterDb(c.dbPath, { create: false });
  t.teardown(() => db.close());
  const dev = db.devices().find((d) => d.id === DEVICE);
  t.ok(dev, 'center lists the device');
  const sample = db.messages({ device: DEVICE, tail: 1000 }).find((m) => m.kind === 'alarm');
  t.match(sample, { port: 'p1', instrument: { serial: 'SN-0001', model: 'DxH 900' }, body: { severity: /./, code: /./ } });
});

t.test('through a real HTTP CONNECT proxy (tinyproxy, Basic auth) and a real SOCKS5 proxy (danted)', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  const tiny = await startTinyproxy(t, { user: 'lab', pass: 'S3cret-proxy', connectPort: c.port });
  const dante = await startDanted(t);
  for (const [name, url] of [
    ['tinyproxy', `http://lab:S3cret-proxy@127.0.0.1:${tiny.port}`],
    ['danted', `socks5://127.0.0.1:${dante.port}`],
  ] as const) {
    const sub = tmp(t, `rap-tel-${name}`);
    const box = await startRapd(t, sub, pki, c.port, await freePort(), { proxy: { url, fromEnvironment: false } });
    const report = await sim(box.instrumentPort, { count: 100, alarmRatio: 0.05 });
    t.equal(report.acked, 100, `${name}: all acknowledged`);
    await until(`${name}: center has every message`, () => centerHasAll(c, report.ids));
    const s = await box.status();
    t.match(s.uplink?.proxy, name === 'tinyproxy' ? /^http:\/\/lab@127\.0\.0\.1:\d+$/ : /^socks5:\/\/127\.0\.0\.1:\d+$/, `${name}: uplink reports the proxy, no password`);
    t.notMatch(JSON.stringify(s), /S3cret-proxy/, `${name}: the proxy password is not in rapctl status`);
    box.child.kill('SIGTERM');
    t.equal(await box.exited, 0, `${name}: clean stop`);
  }
  t.match(tiny.daemon.log(), /CONNECT/, 'the request really went through tinyproxy');
});

t.test('kill -9 during ingest, repeated: every acknowledged message reaches the center exactly once', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  const instrumentPort = await freePort();
  const acked: string[] = [];
  for (let round = 0; round < 4; round++) {
    const box = await startRapd(t, dir, pki, c.port, instrumentPort);
    const ctl = new AbortController();
    const running = sim(instrumentPort, { durationMs: 5000, window: 64, alarmRatio: 0.02, onAck: (_ref, id) => id && acked.push(id), signal: ctl.signal, timeoutMs: 3000 });
    await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 900)));
    box.child.kill('SIGKILL');
    await box.exited;
    ctl.abort();
    await running.catch(() => undefined);
  }
  t.ok(acked.length > 100, `instruments got ${acked.length} acks across 4 kills`);
  // One last start: rapd recovers its store and drains it by itself.
  const box = await startRapd(t, dir, pki, c.port, instrumentPort);
  await until('center has every acknowledged message', () => centerHasAll(c, acked), 60_000);
  assertExactlyOnce(t, c, acked);
  const s = await box.status();
  t.match(s.store?.recovered, /did not close the store.*integrity check ok/, 'the unclean stop is detected and the store checked, not lost');
});

t.test('center down, then back: backlog drains by itself; past the quota routine is dropped oldest-first, alarms kept', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  await c.stop();
  const box = await startRapd(t, dir, pki, c.port, await freePort(), { store: { maxRoutineMessages: 100 } });
  const report = await sim(box.instrumentPort, { count: 400, alarmRatio: 0.05 });
  t.equal(report.acked, 400, 'instrument traffic is acknowledged while the center is down');
  const down = await box.status();
  // Audit records ride with the alarms: the one of this start (config.changed) is queued with them.
  t.equal(down.store?.queued.alarm, 21, 'all 20 alarms kept, and the audit record');
  t.equal(down.store?.queued.routine, 100, 'routine held at its quota');
  t.ok(down.store!.dropped.routine >= 280, `routine dropped and counted: ${down.store!.dropped.routine}`);
  t.match(down.store?.lastDrop, /dropped .*routine/, 'status line says what was dropped');
  t.ok(down.uplink!.consecutiveFailures > 0, 'uplink reports it is failing');
  t.match(down.uplink?.lastError, /ECONNREFUSED|connect/);
  await c.start();
  await until('backlog drained', async () => {
    const s = await box.status();
    return s.store!.queued.routine + s.store!.queued.alarm === 0;
  }, 60_000);
  const at = c.ids();
  const alarmIds = new Set(report.ids.filter((_, i) => (i + 1) % 20 === 0));
  t.equal(at.size, 120, 'the center got the 100 newest routine messages and all 20 alarms');
  t.ok(alarmIds.size > 0);
  const text = await runBinary([rapd, 'ctl', '--socket', box.socket, 'status'], { PATH: '/usr/bin:/bin' });
  t.match(text.stdout, /uplink: +\w+ -> https:\/\/127\.0\.0\.1:\d+ via direct/);
});

t.test('Retry-After from the center is honoured and nothing is lost', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  const box = await startRapd(t, dir, pki, c.port, await freePort());
  // rapd's own audit records (sent at once at start) must not take the faults meant for the instrument's messages.
  await until('audit records at start delivered', async () => (await box.status()).store!.queued.alarm === 0);
  c.setFault({ status: 503, retryAfterSec: 1, count: 2 });
  const started = Date.now();
  const report = await sim(box.instrumentPort, { count: 10, alarmRatio: 1 });
  await until('center has every message', () => centerHasAll(c, report.ids));
  t.ok(Date.now() - started >= 1800, 'two 503s with Retry-After: 1 cost about two seconds');
  assertExactlyOnce(t, c, report.ids);
  const s = await box.status();
  t.equal(s.uplink?.consecutiveFailures, 0, 'recovered');
  t.match(s.uplink?.lastError, /503/);
});

t.test('a flood from one port does not starve the others', async (t) => {
  const dir = tmp(t, 'rap-tel');
  const pki = await makePki(dir);
  const c = await center(t, dir, pki);
  const floodPort = await freePort();
  const quietPort = await freePort();
  const box = await startRapd(t, dir, pki, c.port, floodPort, {
    ports: [
      { name: 'p1', address: '127.0.0.1', port: floodPort, pollIntervalSec: 0 },
      { name: 'p2', address: '127.0.0.1', port: quietPort, pollIntervalSec: 0 },
    ],
  });
  const flood = sim(floodPort, { serial: 'SN-FLOOD', misbehave: 'flood', durationMs: 3000, timeoutMs: 20_000 });
  const steady = await sim(quietPort, { serial: 'SN-QUIET', ratePerSec: 50, durationMs: 3000 });
  const flooded = await flood;
  t.ok(flooded.acked > steady.acked, `the flooding port was served too (${flooded.acked} acks)`);
  t.equal(steady.acked, steady.sent, `the quiet port got every ack during the flood (${steady.acked}/${steady.sent})`);
  t.same(steady.errors, {}, 'and no errors');
  const s = await box.status();
  t.equal(s.ports.find((p) => p.name === 'p2')?.counters.stored, steady.acked);
});
