// rap-center for real: a PKI made by the real openssl, the HTTPS server with
// mutual TLS on 127.0.0.1, clients that present the right, the wrong or no
// certificate and offer refused protocol versions and ciphers; then the built
// out/rap-center reads the same database and serves on its own.

import t from 'tap';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request, type RequestOptions } from 'node:https';
import { join } from 'node:path';
import { connect, type ConnectionOptions } from 'node:tls';
import { gzipSync } from 'node:zlib';
import { centerMain } from '../../src/center/cli.ts';
import { openCenterDb } from '../../src/center/db.ts';
import { startCenter, type Center } from '../../src/center/server.ts';
import { createLogger } from '../../src/lib/log.ts';
import { run } from '../../src/lib/run.ts';
import type { TelemetryBatch, TelemetryMessage } from '../../src/protocol/telemetry.ts';
import { REPO, collect, runBinary, waitFor } from './helpers.ts';

const RAP_CENTER = join(REPO, 'out/rap-center');
const WAIT_MS = 10_000;

const work = mkdtempSync('/tmp/rap-center-it-');
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const pki = join(work, 'pki');
const otherPki = join(work, 'other-pki');
const dbPath = join(work, 'center.db');

async function cli(args: string[]): Promise<string> {
  let out = '';
  let err = '';
  const code = await centerMain(args, { out: (s) => (out += s), err: (s) => (err += s) }, { run });
  if (code !== 0) throw new Error(`rap-center ${args.join(' ')} exited ${code}: ${err}`);
  return out;
}

// The PKI, made the way an operator would.
await cli(['pki', 'init', '--dir', pki]);
await cli(['pki', 'issue-server', '--dir', pki, '--name', 'localhost', '--ip', '127.0.0.1']);
await cli(['pki', 'issue-device', '--dir', pki, 'box-1']);
await cli(['pki', 'issue-device', '--dir', pki, 'box-2']);
// Same device name, signed by a CA the center has never seen.
await cli(['pki', 'init', '--dir', otherPki]);
await cli(['pki', 'issue-device', '--dir', otherPki, 'box-1']);

const read = (p: string): Buffer => readFileSync(p);
const ca = read(join(pki, 'ca.pem'));
const device = (dir: string, id: string): { cert: Buffer; key: Buffer } => ({
  cert: read(join(dir, 'devices', `${id}.pem`)),
  key: read(join(dir, 'devices', `${id}.key`)),
});
const box1 = device(pki, 'box-1');
const box2 = device(pki, 'box-2');
const stranger = device(otherPki, 'box-1');

const logs: string[] = [];
const center: Center = await startCenter({
  dbPath,
  host: '127.0.0.1',
  port: 0,
  key: read(join(pki, 'server.key')),
  cert: read(join(pki, 'server.pem')),
  ca,
  log: createLogger({ write: (l) => void logs.push(l) }),
});
let centerClosed = false;
t.teardown(() => (centerClosed ? undefined : center.close()));

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  reusedSocket: boolean;
}

/** One HTTPS request to the in-process center, bounded. */
function call(opts: RequestOptions & { body?: Buffer }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: center.port, ca, timeout: WAIT_MS, ...opts },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, reusedSocket: req.reusedSocket });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${WAIT_MS} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

function postBatch(batch: unknown, cred = box1, extra: RequestOptions & { raw?: Buffer } = {}): Promise<Answer> {
  const body = extra.raw ?? gzipSync(JSON.stringify(batch));
  return call({
    method: 'POST',
    path: '/v1/telemetry',
    agent: false,
    ...cred,
    headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': body.length },
    ...extra,
    body,
  });
}

function message(over: Partial<TelemetryMessage> = {}): TelemetryMessage {
  return {
    id: randomUUID(),
    kind: 'status',
    port: 'port-1',
    instrument: { serial: 'SN-42', model: 'DxH 900', swVersion: '3.1.4' },
    receivedAt: new Date().toISOString(),
    instrumentTime: null,
    body: { state: 'ready' },
    ...over,
  };
}

const batch: TelemetryBatch = {
  device: 'box-1',
  sentAt: new Date().toISOString(),
  messages: [message(), message({ kind: 'alarm', body: { code: 'E42', text: 'reagent low' } }), message({ kind: 'heartbeat', port: 'port-2', instrument: null })],
};

interface Attempt {
  ok: boolean;
  code?: string;
  protocol?: string | null;
  cipher?: string;
}

/** A raw TLS connection that asks for /v1/health; ok only if HTTP 200 came back. */
function attempt(opts: ConnectionOptions): Promise<Attempt> {
  return new Promise((resolve) => {
    let data = '';
    let protocol: string | null = null;
    let cipher: string | undefined;
    const s = connect({ host: '127.0.0.1', port: center.port, ca, ...opts });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ ok: false, code: 'TIMEOUT' });
    }, WAIT_MS);
    s.on('secureConnect', () => {
      protocol = s.getProtocol();
      cipher = s.getCipher().standardName;
      s.write('GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    });
    s.on('data', (c: Buffer) => (data += c.toString()));
    s.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, code: e.code ?? e.message });
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ ok: data.startsWith('HTTP/1.1 200'), protocol, cipher, code: data.startsWith('HTTP/1.1 200') ? undefined : 'NO_ANSWER' });
    });
  });
}

t.test('PKI files: keys owner-only, device pair owner-only', async (t) => {
  const { statSync } = await import('node:fs');
  const mode = (p: string): number => statSync(join(pki, p)).mode & 0o777;
  t.equal(mode('.'), 0o700);
  t.equal(mode('ca.key'), 0o600);
  t.equal(mode('server.key'), 0o600);
  t.equal(mode('devices/box-1.key'), 0o600);
  t.equal(mode('devices/box-1.pem'), 0o600);
  t.equal(mode('ca.pem'), 0o644);
  t.rejects(cli(['pki', 'issue-device', '--dir', pki, 'box-1']), /already exist/, 'no overwrite');
  t.rejects(cli(['pki', 'init', '--dir', pki]), /ca\.pem and .*ca\.key already exist; refusing to overwrite/);
});

t.test('health answers a device over mutual TLS', async (t) => {
  const r = await call({ method: 'GET', path: '/v1/health', agent: false, ...box1 });
  t.same([r.status, r.body], [200, { ok: true }]);
});

t.test('a gzip batch is stored; the same batch again is counted as duplicates, not stored twice', async (t) => {
  const first = await postBatch(batch);
  t.same([first.status, first.body], [200, { stored: 3, duplicates: 0 }]);
  const again = await postBatch(batch);
  t.same([again.status, again.body], [200, { stored: 0, duplicates: 3 }]);
  const db = openCenterDb(dbPath, { create: false });
  t.teardown(() => db.close());
  t.equal(db.messages({ device: 'box-1', tail: 100 }).length, 3);
  t.match(db.devices(), [{ id: 'box-1', messages: 3, alarms: 1, duplicates: 3, batches: 2, remoteAddress: /127\.0\.0\.1$/ }]);
  t.ok(logs.some((l) => /"msg":"telemetry stored".*"device":"box-1".*"stored":3/.test(l)), 'logged as JSON');
});

t.test('keep-alive: a second request reuses the connection', async (t) => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ...box1, ca });
  t.teardown(() => agent.destroy());
  const one = await call({ method: 'GET', path: '/v1/health', agent });
  const two = await call({ method: 'POST', path: '/v1/telemetry', agent, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify({ ...batch, messages: [] })) });
  t.equal(one.status, 200);
  t.same([two.status, two.body], [200, { stored: 0, duplicates: 0 }], 'identity encoding is accepted too');
  t.ok(two.reusedSocket, 'same TLS connection');
});

t.test('a batch for another device than the certificate is refused with 403', async (t) => {
  const r = await postBatch({ ...batch, messages: [message()] }, box2);
  t.same([r.status, r.body], [403, { error: "device: 'box-1' does not match the client certificate (CN 'box-2')" }]);
});

t.test('bad requests name the problem', async (t) => {
  const bad = await postBatch({ ...batch, messages: [message(), message(), message(), message({ id: 'm-4' })] });
  t.same([bad.status, bad.body], [400, { error: 'messages[3].id: expected a UUID' }]);
  const notGzip = await postBatch(null, box1, { raw: Buffer.from('{"device":"box-1"}') });
  t.equal(notGzip.status, 400);
  t.match(notGzip.body, { error: /^body: not valid gzip/ });
  const notJson = await postBatch(null, box1, { raw: gzipSync('{"device":') });
  t.match([notJson.status, notJson.body], [400, { error: /^body: not valid JSON/ }]);
  const type = await call({ method: 'POST', path: '/v1/telemetry', agent: false, ...box1, headers: { 'content-type': 'text/plain' }, body: Buffer.from('x') });
  t.same([type.status, type.body], [415, { error: 'Content-Type: expected application/json' }]);
  const get = await call({ method: 'GET', path: '/v1/telemetry', agent: false, ...box1 });
  t.same([get.status, get.headers['allow'], get.body], [405, 'POST', { error: '/v1/telemetry: use POST' }]);
  const other = await call({ method: 'GET', path: '/v1/admin', agent: false, ...box1 });
  t.same([other.status, other.body], [404, { error: 'not found' }]);
});

t.test('a gzip bomb is cut off at 64 MiB of JSON with 413', async (t) => {
  // ~65 KiB on the wire, 65 MiB inflated.
  const inflated = Buffer.alloc(65 * 1024 * 1024, 0x20);
  inflated.write('{"device":"box-1","x":"');
  const r = await postBatch(null, box1, { raw: gzipSync(inflated) });
  t.same([r.status, r.body], [413, { error: 'body: more than 67108864 bytes after gunzip' }]);
});

t.test('the fault switch answers the next N posts with the status and Retry-After, then stops', async (t) => {
  center.setFault({ status: 503, retryAfterSec: 7, count: 2 });
  t.teardown(() => center.setFault(null));
  const b = { ...batch, messages: [message()] };
  const a1 = await postBatch(b);
  const a2 = await postBatch(b);
  const a3 = await postBatch(b);
  t.same([a1.status, a1.headers['retry-after'], a2.status, a2.headers['retry-after']], [503, '7', 503, '7']);
  t.same([a3.status, a3.body], [200, { stored: 1, duplicates: 0 }], 'nothing was stored while faulted');
  center.setFault({ status: 429, count: 1 });
  const a4 = await postBatch(b);
  t.same([a4.status, a4.headers['retry-after']], [429, undefined]);
});

t.test('TLS: what is refused and what is negotiated', async (t) => {
  const cases: { name: string; opts: ConnectionOptions; ok: boolean; code?: RegExp; reason?: string; protocol?: string; cipher?: RegExp }[] = [
    { name: 'device certificate, defaults', opts: { ...box1 }, ok: true, protocol: 'TLSv1.3', cipher: /^TLS_AES_(128|256)_GCM_SHA(256|384)$/ },
    { name: 'device certificate, TLS 1.2', opts: { ...box1, maxVersion: 'TLSv1.2' }, ok: true, protocol: 'TLSv1.2', cipher: /^TLS_ECDHE_ECDSA_WITH_AES_(128|256)_GCM_SHA(256|384)$/ },
    { name: 'no client certificate', opts: {}, ok: false, code: /CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE|ECONNRESET/ },
    { name: 'no client certificate, TLS 1.2', opts: { maxVersion: 'TLSv1.2' }, ok: false, code: /HANDSHAKE_FAILURE|ECONNRESET/ },
    // node drops a peer whose certificate fails verification without an alert:
    // under TLS 1.3 the client only sees the connection close unanswered.
    { name: 'certificate from another CA', opts: { ...stranger }, ok: false, code: /NO_ANSWER|ECONNRESET/, reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
    { name: 'certificate from another CA, TLS 1.2', opts: { ...stranger, maxVersion: 'TLSv1.2' }, ok: false, code: /NO_ANSWER|ECONNRESET/, reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
    // The server's own certificate is serverAuth only: not a client credential.
    { name: 'server certificate as client', opts: { cert: read(join(pki, 'server.pem')), key: read(join(pki, 'server.key')) }, ok: false, code: /NO_ANSWER|ECONNRESET/, reason: 'INVALID_PURPOSE' },
    {
      name: 'TLS 1.1',
      opts: { ...box1, minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' },
      ok: false,
      code: /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|ECONNRESET/,
    },
    { name: 'TLS 1.2 CBC suite', opts: { ...box1, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256' }, ok: false, code: /HANDSHAKE_FAILURE|ECONNRESET/ },
    { name: 'TLS 1.2 ChaCha20', opts: { ...box1, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' }, ok: false, code: /HANDSHAKE_FAILURE|ECONNRESET/ },
    { name: 'TLS 1.3 ChaCha20 only', opts: { ...box1, minVersion: 'TLSv1.3', ciphers: 'TLS_CHACHA20_POLY1305_SHA256' }, ok: false, code: /HANDSHAKE_FAILURE|ECONNRESET/ },
    { name: 'X25519 only (not a FIPS curve here)', opts: { ...box1, ecdhCurve: 'X25519' }, ok: false, code: /HANDSHAKE_FAILURE|ECONNRESET/ },
  ];
  for (const c of cases) {
    const before = logs.length;
    const r = await attempt(c.opts);
    t.equal(r.ok, c.ok, `${c.name}: ${c.ok ? 'accepted' : 'refused'} (${r.code ?? 'ok'})`);
    if (c.code) t.match(r.code, c.code, `${c.name}: error code`);
    if (c.protocol) t.equal(r.protocol, c.protocol, `${c.name}: protocol`);
    if (c.cipher) t.match(r.cipher, c.cipher, `${c.name}: cipher`);
    if (c.reason) {
      const why = `"reason":"${c.reason}"`;
      await waitFor(`${c.name}: server logs ${why}`, () => logs.slice(before).some((l) => l.includes('"msg":"TLS handshake refused"') && l.includes(why)), WAIT_MS);
      t.pass(`${c.name}: server logged ${why}`);
    }
  }
  t.ok(logs.some((l) => l.includes('"msg":"TLS handshake refused"')), 'refusals are logged');
  const db = openCenterDb(dbPath, { create: false });
  t.teardown(() => db.close());
  t.same(db.devices().map((d) => d.id), ['box-1'], 'nothing from refused peers');
});

t.test('the built out/rap-center reads the database', async (t) => {
  await center.close();
  centerClosed = true;
  if (!existsSync(RAP_CENTER)) throw new Error(`${RAP_CENTER} is missing: run make build`);
  const env = { PATH: '/usr/bin:/bin' };
  const d = await runBinary([RAP_CENTER, 'devices', '--db', dbPath, '--json'], env);
  t.equal(d.code, 0, d.stderr);
  const devices = JSON.parse(d.stdout);
  t.match(devices, [
    {
      id: 'box-1',
      messages: 4,
      alarms: 1,
      instruments: [
        { port: 'port-1', serial: 'SN-42', model: 'DxH 900', swVersion: '3.1.4', lastAlarm: { code: 'E42', text: 'reagent low' }, lastStatus: { state: 'ready' } },
        { port: 'port-2', serial: null },
      ],
    },
  ]);
  const m = await runBinary([RAP_CENTER, 'messages', '--db', dbPath, '--device', 'box-1', '--port', 'port-1', '--tail', '2', '--json'], env);
  t.equal(m.code, 0, m.stderr);
  const msgs = JSON.parse(m.stdout) as { id: string; port: string }[];
  t.equal(msgs.length, 2);
  t.ok(msgs.every((x) => x.port === 'port-1'));
  const text = await runBinary([RAP_CENTER, 'devices', '--db', dbPath], env);
  t.match(text.stdout, /^DEVICE +LAST SEEN +MESSAGES +ALARMS +INSTRUMENTS +ADDRESS\nbox-1 +\S+ +4 +1 +2 +\S+\n$/);
  const bad = await runBinary([RAP_CENTER, 'messages', '--db', dbPath], env);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /^rap-center: --device is required\nusage: rap-center/);
});

t.test('out/rap-center serve: says where it listens, answers, stops cleanly on SIGTERM', async (t) => {
  if (!existsSync(RAP_CENTER)) throw new Error(`${RAP_CENTER} is missing: run make build`);
  const child = spawn(RAP_CENTER, ['serve', '--db', join(work, 'served.db'), '--listen', '127.0.0.1:0', '--pki', pki], {
    env: { PATH: '/usr/bin:/bin' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const done = collect(child, 30_000);
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  await waitFor('listening line', () => /^listening on 127\.0\.0\.1:\d+$/m.test(out), WAIT_MS);
  const port = Number(/^listening on 127\.0\.0\.1:(\d+)$/m.exec(out)![1]);
  const r = await call({ method: 'GET', path: '/v1/health', agent: false, port, ...box1 });
  t.same([r.status, r.body], [200, { ok: true }]);
  child.kill('SIGTERM');
  const exit = await done;
  t.equal(exit.code, 0, `clean exit; stderr: ${exit.stderr}`);
  const json = exit.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string });
  t.same(json.map((l) => l.msg), ['rap-center listening', 'rap-center stopping', 'rap-center stopped']);
});
