// The signed command channel and the audit chain end to end, through the
// real components: the built out/rapd opens its WebSocket to rap-center
// (in process here, the same server `rap-center serve` runs) over mutual TLS,
// directly and through the real tinyproxy (HTTP CONNECT) and danted (SOCKS5)
// the proxy tests use. The PKI and the command keys are made at test time.
// Everything on 127.0.0.1; every process stopped by pid.

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEVICE, makePki, requireRapd, runBinary } from './helpers.ts';
import { startDanted, startTinyproxy } from './proxies.ts';
import WebSocket from 'ws';
import { startCenter, type Center } from '../../src/center/server.ts';
import { generateCommandKey, loadCommandKey, type SigningKey } from '../../src/center/commands.ts';
import { createLogger } from '../../src/lib/log.ts';
import { signCommand, type CommandBody } from '../../src/protocol/commands.ts';
import type { StatusReport } from '../../src/protocol/control.ts';

const rapd = requireRapd();
const quiet = createLogger({ write: () => {}, syslogPrefix: false });
const WAIT_MS = 20_000;

function tmp(t: Test, prefix: string): string {
  const d = mkdtempSync(`/tmp/${prefix}-`);
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = WAIT_MS): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

interface Lab {
  dir: string;
  pki: string;
  center: Center;
  k1: SigningKey;
  k2: SigningKey;
  pub: (k: SigningKey) => { id: string; publicKey: string };
}

/** PKI, two command keys (k1 in use, k2 for a rotation), and the center signing with k1. */
async function lab(t: Test): Promise<Lab> {
  const dir = tmp(t, 'rap-cmd');
  const pki = await makePki(dir);
  const keys = join(dir, 'keys');
  const k1 = loadCommandKey(generateCommandKey(keys, 'k1').keyFile);
  const k2 = loadCommandKey(generateCommandKey(keys, 'k2').keyFile);
  const center = await startCenter({
    dbPath: join(dir, 'center.db'),
    host: '127.0.0.1',
    port: 0,
    key: readFileSync(join(pki, 'server.key')),
    cert: readFileSync(join(pki, 'server.pem')),
    ca: readFileSync(join(pki, 'ca.pem')),
    log: quiet,
    commandKey: k1,
  });
  t.teardown(() => center.close());
  return { dir, pki, center, k1, k2, pub: (k) => ({ id: k.id, publicKey: k.publicKey }) };
}

interface Box {
  child: ChildProcess;
  socket: string;
  state: string;
  output: () => string;
  ctl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  status(): Promise<StatusReport>;
  stop(): Promise<number | null>;
}

async function startBox(t: Test, l: Lab, sub: string, extra: Record<string, unknown> = {}): Promise<Box> {
  const dir = join(l.dir, sub);
  const config = join(l.dir, `${sub}.json`);
  const socket = join(dir, 'run', 'rapd.sock');
  const state = join(dir, 'state');
  writeFileSync(
    config,
    JSON.stringify({
      device: { id: DEVICE },
      paths: { state, runtime: join(dir, 'run') },
      center: { url: `https://127.0.0.1:${l.center.port}`, caFile: join(l.pki, 'ca.pem') },
      tls: { certFile: join(l.pki, 'devices', `${DEVICE}.pem`), keyFile: join(l.pki, 'devices', `${DEVICE}.key`) },
      uplink: { batchMaxDelayMs: 100, backoffMaxMs: 2000, timeoutMs: 5000 },
      proxy: { fromEnvironment: false },
      commands: { keys: [l.pub(l.k1), l.pub(l.k2)], reconnectMaxMs: 2000 },
      ...extra,
    }),
  );
  const child = spawn(rapd, ['--config', config], { env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-50_000)));
  child.stderr!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-50_000)));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  t.teardown(() => void child.kill('SIGKILL'));
  const ctl = (args: string[]) => runBinary([rapd, 'ctl', '--socket', socket, ...args], { PATH: '/usr/bin:/bin' });
  const status = async (): Promise<StatusReport> => {
    const r = await ctl(['status', '--json']);
    if (r.code !== 0) throw new Error(`rapctl status failed: ${r.stderr}\nrapd output:\n${out}`);
    return JSON.parse(r.stdout) as StatusReport;
  };
  await until(`rapd ${child.pid} answering`, async () => existsSync(socket) && (await status().catch(() => null))?.pid === child.pid).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; rapd output:\n${out}`);
  });
  return {
    child,
    socket,
    state,
    output: () => out,
    ctl,
    status,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** A command body for box-1 signed by `key` unless told otherwise. */
function command(key: SigningKey, over: Partial<CommandBody> = {}): CommandBody {
  const now = Date.now();
  return {
    v: 1,
    id: randomUUID(),
    type: 'ping',
    deviceId: DEVICE,
    issuedAt: now,
    expiresAt: now + 60_000,
    nonce: randomBytes(16).toString('base64'),
    keyId: key.id,
    args: {},
    ...over,
  };
}

async function auditOf(box: Box): Promise<{ seq: number; action: string; outcome: string; details: Record<string, unknown> }[]> {
  const r = await box.ctl(['audit', '--json']);
  if (r.code !== 0) throw new Error(`rapctl audit failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
}

t.test('direct: a signed ping round-trips; forged, expired, early, replayed, wrong-device commands are rejected and audited; the center verifies the chain', async (t) => {
  const l = await lab(t);
  const box = await startBox(t, l, 'box');
  await l.center.commands.waitConnected(DEVICE, WAIT_MS);

  const pong = await l.center.commands.send(DEVICE, { type: 'ping', args: { hello: 'box' } }, WAIT_MS);
  t.match(pong, { t: 'result', status: 'ok', result: { pong: { hello: 'box' } } });
  const accepted = signCommand(command(l.k1, { args: { n: 1 } }), l.k1.secretKey);
  t.match(await l.center.commands.sendRaw(DEVICE, accepted, WAIT_MS), { id: accepted.id, status: 'ok' });

  const now = Date.now();
  const stranger = loadCommandKey(generateCommandKey(join(l.dir, 'stranger'), 'k1').keyFile);
  const { sig: _unused, ...unsigned } = signCommand(command(l.k1), l.k1.secretKey);
  const rejections: [string, unknown, string][] = [
    ['forged (signed by a key the box does not trust, under a trusted id)', signCommand(command(l.k1), stranger.secretKey), 'RAP_CMD_BAD_SIGNATURE'],
    ['unsigned', unsigned, 'RAP_CMD_UNSIGNED'],
    ['unknown key', signCommand(command(l.k1, { keyId: 'k9' }), l.k1.secretKey), 'RAP_CMD_UNKNOWN_KEY'],
    ['expired', signCommand(command(l.k1, { issuedAt: now - 600_000, expiresAt: now - 300_000 }), l.k1.secretKey), 'RAP_CMD_EXPIRED'],
    ['not yet valid', signCommand(command(l.k1, { issuedAt: now + 300_000, expiresAt: now + 400_000 }), l.k1.secretKey), 'RAP_CMD_NOT_YET_VALID'],
    ['lifetime too long', signCommand(command(l.k1, { expiresAt: now + 86_400_000 }), l.k1.secretKey), 'RAP_CMD_LIFETIME'],
    ['wrong device', signCommand(command(l.k1, { deviceId: 'box-2' }), l.k1.secretKey), 'RAP_CMD_WRONG_DEVICE'],
    ['replayed', accepted, 'RAP_CMD_REPLAYED'],
    ['malformed', { ...command(l.k1), nonce: 'x' }, 'RAP_CMD_MALFORMED'],
  ];
  for (const [name, cmd, code] of rejections) {
    const res = await l.center.commands.sendRaw(DEVICE, cmd as Record<string, unknown>, WAIT_MS);
    t.match(res, { status: 'rejected', error: { code } }, name);
  }

  const records = await auditOf(box);
  const rejected = records.filter((r) => r.action === 'command.rejected').map((r) => r.details['code']);
  t.same(rejected, rejections.map(([, , code]) => code), 'each rejection is in the box audit log with its code, in order');
  t.equal(records.filter((r) => r.action === 'command.accepted').length, 2);
  t.match(records[0], { seq: 1, action: 'config.changed' });
  const verify = await box.ctl(['audit', 'verify']);
  t.equal(verify.code, 0, verify.stdout + verify.stderr);
  t.match(verify.stdout, /audit chain ok/);

  // The records reach the center through the store and verify there too.
  const head = records[records.length - 1]!.seq;
  await until('center has the whole chain', () => l.center.db.auditVerify(DEVICE).records === head);
  t.match(l.center.db.auditVerify(DEVICE), { ok: true, problems: [], head: { seq: head } });
  const rows = l.center.db.commands(DEVICE, 100);
  t.match(rows.find((r) => r.id === pong.id), { status: 'ok', type: 'ping', keyId: 'k1' });
  t.ok(rows.filter((r) => r.status === 'rejected').length >= rejections.length - 1, 'the center recorded the rejections');

  // audit.head answers the box's head and the anchor in its store.
  const ah = await l.center.commands.send(DEVICE, { type: 'audit.head' }, WAIT_MS);
  t.match(ah, { status: 'ok', result: { head: { seq: Number }, anchor: { seq: Number } } });

  // An edited record on the box is detected by rapctl audit verify.
  const path = join(box.state, 'audit.log');
  const text = readFileSync(path, 'utf8');
  writeFileSync(path, text.replace('"code":"RAP_CMD_EXPIRED"', '"code":"RAP_CMD_OK"'));
  const broken = await box.ctl(['audit', 'verify']);
  t.equal(broken.code, 1);
  t.match(broken.stdout, /CHAIN BROKEN: line \d+: record \d+: hash does not match its content \(edited\)/);
  writeFileSync(path, text);
  const status = await box.status();
  t.match(status.channel, { state: 'connected', proxy: 'direct' });
  t.match(status.commands, { keys: ['k1', 'k2'], types: ['audit.head', 'ping'] });
});

t.test('a restart keeps the replay window closed, continues the chain, and reconnects', async (t) => {
  const l = await lab(t);
  let box = await startBox(t, l, 'box');
  await l.center.commands.waitConnected(DEVICE, WAIT_MS);
  const cmd = signCommand(command(l.k1, { args: { once: true } }), l.k1.secretKey);
  t.match(await l.center.commands.sendRaw(DEVICE, cmd, WAIT_MS), { status: 'ok' });
  const before = await auditOf(box);

  // rapctl audit --follow prints what is there, then each new record as it is written.
  const follow = spawn(rapd, ['ctl', '--socket', box.socket, 'audit', '--follow', '--json'], { env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void follow.kill('SIGKILL'));
  let followed = '';
  follow.stdout!.on('data', (b: Buffer) => (followed += b.toString()));
  await until('follow printed the existing records', () => followed.split('\n').length > before.length);
  const live = await l.center.commands.send(DEVICE, { type: 'ping', args: { live: true } }, WAIT_MS);
  await until('follow printed the new command', () => followed.includes(live.id));
  follow.kill('SIGTERM');
  const seqs = followed.trim().split('\n').map((x) => (JSON.parse(x) as { seq: number }).seq);
  t.same(seqs, seqs.map((_, i) => i + 1), 'each record once, in order');

  t.equal(await box.stop(), 0, 'clean stop');
  box = await startBox(t, l, 'box');
  await until('channel back', async () => (await box.status()).channel?.state === 'connected');
  t.match(await l.center.commands.sendRaw(DEVICE, cmd, WAIT_MS), { status: 'rejected', error: { code: 'RAP_CMD_REPLAYED' } }, 'replayed after a restart');
  const after = await auditOf(box);
  t.same(after.slice(0, before.length), before, 'earlier records unchanged');
  t.equal(after[after.length - 1]!.action, 'command.rejected');
  t.equal((await box.ctl(['audit', 'verify'])).code, 0);

  // Key rotation: the box trusts k1 and k2; the center moves to k2.
  l.center.commands.setKey(l.k2);
  t.match(await l.center.commands.send(DEVICE, { type: 'ping' }, WAIT_MS), { status: 'ok' }, 'signed with the new key');
  const last = await auditOf(box);
  t.match(last.filter((r) => r.action === 'command.accepted').pop(), { details: { keyId: 'k2' } });
  const head = last[last.length - 1]!.seq;
  await until('center has the chain across the restart', () => l.center.db.auditVerify(DEVICE).records === head);
  t.match(l.center.db.auditVerify(DEVICE), { ok: true });
});

t.test('through a real HTTP CONNECT proxy (tinyproxy) and a real SOCKS5 proxy (danted)', async (t) => {
  const l = await lab(t);
  const tiny = await startTinyproxy(t, { user: 'lab', pass: 'S3cret-proxy', connectPort: l.center.port });
  const dante = await startDanted(t);
  for (const [name, url] of [
    ['tinyproxy', `http://lab:S3cret-proxy@127.0.0.1:${tiny.port}`],
    ['danted', `socks5://127.0.0.1:${dante.port}`],
  ] as const) {
    const box = await startBox(t, l, name, { proxy: { url, fromEnvironment: false } });
    await l.center.commands.waitConnected(DEVICE, WAIT_MS);
    await until(`${name}: channel connected`, async () => (await box.status()).channel?.state === 'connected');
    t.match(await l.center.commands.send(DEVICE, { type: 'ping', args: { via: name } }, WAIT_MS), { status: 'ok', result: { pong: { via: name } } }, `${name}: ping`);
    const bad = signCommand(command(l.k1, { deviceId: 'box-2' }), l.k1.secretKey);
    t.match(await l.center.commands.sendRaw(DEVICE, bad, WAIT_MS), { status: 'rejected', error: { code: 'RAP_CMD_WRONG_DEVICE' } }, `${name}: wrong device`);
    const s = await box.status();
    t.match(s.channel?.proxy, name === 'tinyproxy' ? /^http:\/\/lab@127\.0\.0\.1:\d+$/ : /^socks5:\/\/127\.0\.0\.1:\d+$/, `${name}: channel reports the proxy, no password`);
    t.notMatch(JSON.stringify(s), /S3cret-proxy/);
    t.equal(await box.stop(), 0, `${name}: clean stop`);
    await until(`${name}: center saw the channel close`, () => !l.center.commands.connected().includes(DEVICE));
  }
  t.match(tiny.daemon.log(), new RegExp(`CONNECT 127\\.0\\.0\\.1:${l.center.port}`), 'the channel really went through tinyproxy');
});

t.test('the center accepts the upgrade on /v1/commands only, and only with a device certificate', async (t) => {
  const l = await lab(t);
  await t.rejects(l.center.commands.send('box-9', { type: 'ping' }, 1000), { code: 'RAP_CENTER', message: /no command channel open/ });
  const ca = readFileSync(join(l.pki, 'ca.pem'));
  const cert = readFileSync(join(l.pki, 'devices', `${DEVICE}.pem`));
  const key = readFileSync(join(l.pki, 'devices', `${DEVICE}.key`));
  const attempt = (path: string, withCert: boolean): Promise<string> =>
    new Promise((resolve) => {
      const ws = new WebSocket(`wss://127.0.0.1:${l.center.port}${path}`, { ca, ...(withCert ? { cert, key } : {}), handshakeTimeout: 5000 });
      ws.on('open', () => {
        ws.close();
        resolve('open');
      });
      ws.on('unexpected-response', (_req, res) => {
        resolve(`http ${res.statusCode}`);
        ws.terminate();
      });
      ws.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    });
  t.equal(await attempt('/v1/telemetry', true), 'http 404', 'another path: 404');
  t.match(await attempt('/v1/commands', false), /^error /, 'no client certificate: refused in the TLS handshake');
  t.equal(await attempt('/v1/commands', true), 'open', 'the device certificate on the one path: accepted');
});

t.test('the channel comes back by itself after the center restarts', async (t) => {
  const l = await lab(t);
  const box = await startBox(t, l, 'box');
  await l.center.commands.waitConnected(DEVICE, WAIT_MS);
  const port = l.center.port;
  await l.center.close();
  await until('box sees the channel down', async () => (await box.status()).channel?.state !== 'connected');
  const again = await startCenter({
    dbPath: join(l.dir, 'center.db'),
    host: '127.0.0.1',
    port,
    key: readFileSync(join(l.pki, 'server.key')),
    cert: readFileSync(join(l.pki, 'server.pem')),
    ca: readFileSync(join(l.pki, 'ca.pem')),
    log: quiet,
    commandKey: l.k1,
  });
  t.teardown(() => again.close());
  // reconnectMaxMs is 2 s in this config: the backoff is bounded.
  await again.commands.waitConnected(DEVICE, WAIT_MS);
  t.match(await again.commands.send(DEVICE, { type: 'ping', args: { after: 'restart' } }, WAIT_MS), { status: 'ok', result: { pong: { after: 'restart' } } });
  t.ok((await box.status()).channel!.consecutiveFailures === 0, 'failures reset once connected');
});
