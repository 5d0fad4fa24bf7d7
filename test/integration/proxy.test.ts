// The uplink's proxy door against real proxies from Debian: tinyproxy (HTTP
// CONNECT, Basic auth) and dante's danted (SOCKS5), each run in the foreground
// from a config generated in a temp dir, in front of a mutual-TLS HTTPS server
// with a throwaway certificate made at test time. Everything listens on
// 127.0.0.1; every process is killed by its pid at teardown.
//
// danted's username method checks system accounts, which a test must not
// create, so real-dante coverage is without authentication; RFC 1929 is
// covered by the in-process fake in test/unit/lib/proxy.test.ts.

import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request, createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { connectVia, parseProxyUrl, resolveProxy, type ProxySpec } from '../../src/lib/proxy.ts';
import { run } from '../../src/lib/run.ts';
import { WAIT_MS, freePort, startDanted, startTinyproxy } from './proxies.ts';

const CENTER_NAME = 'rap-center.test';

// ---------------------------------------------------------------- the center stand-in

interface Center {
  port: number;
  cert: string;
  key: string;
}

interface Seen {
  status: number;
  path: string;
  body: string;
  clientCN: string;
  /** The TCP port the server saw the connection come from. */
  remotePort: number;
}

const center = await (async (): Promise<Center> => {
  const dir = mkdtempSync(join(tmpdir(), 'rap-proxy-it-cert-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  // Throwaway, made per run, never committed. The same pair serves as the
  // server's certificate and the box's client certificate (mutual TLS).
  await run(
    [
      'openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc',
      '-keyout', keyPath, '-out', certPath, '-days', '1',
      '-subj', `/CN=${CENTER_NAME}`, '-addext', `subjectAltName=DNS:${CENTER_NAME},IP:127.0.0.1`,
    ],
    { timeoutMs: 30_000 },
  );
  const cert = readFileSync(certPath, 'utf8');
  const key = readFileSync(keyPath, 'utf8');
  const server: HttpsServer = createHttpsServer({ cert, key, ca: [cert], requestCert: true, rejectUnauthorized: true }, (req, res) => {
    let body = '';
    req.on('data', (b: Buffer) => (body += b.toString()));
    req.on('end', () => {
      const peer = (req.socket as TLSSocket).getPeerCertificate();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ path: req.url, body, clientCN: peer.subject?.CN, remotePort: req.socket.remotePort }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as { port: number }).port, cert, key };
})();

/** Mutual TLS over `raw`, then one HTTPS POST; bounded. */
function post(raw: Socket, body: string): Promise<Seen> {
  return new Promise((resolve, reject) => {
    const tls = tlsConnect({ socket: raw, servername: CENTER_NAME, ca: [center.cert], cert: center.cert, key: center.key });
    const timer = setTimeout(() => {
      tls.destroy();
      reject(new Error(`no HTTPS answer within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const req = request(
      {
        createConnection: () => tls,
        method: 'POST',
        path: '/v1/telemetry',
        headers: { host: CENTER_NAME, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.on('data', (b: Buffer) => (text += b.toString()));
        res.on('end', () => {
          clearTimeout(timer);
          tls.destroy();
          resolve({ status: res.statusCode ?? 0, ...(JSON.parse(text) as Omit<Seen, 'status'>) });
        });
      },
    );
    req.on('error', (e) => {
      clearTimeout(timer);
      tls.destroy();
      reject(e);
    });
    req.end(body);
  });
}

async function connected(t: Test, proxy: ProxySpec | null): Promise<Socket> {
  const raw = await connectVia(proxy, '127.0.0.1', center.port, { timeoutMs: WAIT_MS });
  t.teardown(() => raw.destroy());
  return raw;
}

// ---------------------------------------------------------------- tinyproxy

t.test('tinyproxy: mutual TLS and an HTTPS POST through CONNECT with Basic auth', async (t) => {
  const tp = await startTinyproxy(t, { user: 'rapbox', pass: 'Pr0xy-pass', connectPort: center.port });
  const proxy = resolveProxy({
    explicit: `http://rapbox:Pr0xy-pass@127.0.0.1:${tp.port}`,
    fromEnvironment: false,
    noProxy: '',
    env: {},
    target: new URL(`https://127.0.0.1:${center.port}/v1/telemetry`),
  });
  t.same(proxy, { kind: 'http', host: '127.0.0.1', port: tp.port, username: 'rapbox', password: 'Pr0xy-pass' });
  const raw = await connected(t, proxy);
  const localPort = raw.localPort;
  const seen = await post(raw, '{"batch":1}');
  t.same(seen, { status: 200, path: '/v1/telemetry', body: '{"batch":1}', clientCN: CENTER_NAME, remotePort: seen.remotePort });
  t.not(seen.remotePort, localPort, 'the center saw the proxy, not us');
  t.match(tp.daemon.log(), `Request (file descriptor `, 'tinyproxy logged a request');
  t.match(tp.daemon.log(), `: CONNECT 127.0.0.1:${center.port} HTTP/1.1`, 'tinyproxy logged the tunnel');
});

t.test('tinyproxy: missing credentials are 407, wrong ones 401 or 407', async (t) => {
  const tp = await startTinyproxy(t, { user: 'rapbox', pass: 'Pr0xy-pass', connectPort: center.port });
  await t.rejects(connectVia(parseProxyUrl(`http://127.0.0.1:${tp.port}`), '127.0.0.1', center.port, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(
      `^proxy http://127\\.0\\.0\\.1:${tp.port} answered 407 Proxy Authentication Required to CONNECT 127\\.0\\.0\\.1:${center.port} \\(the proxy URL has no user name and password\\)$`,
    ),
  });
  // tinyproxy 1.11.1 (Debian 12) answers wrong credentials with 401, fixed
  // to 407 upstream (tinyproxy/tinyproxy#532); either way the message says so.
  await t.rejects(connectVia(parseProxyUrl(`http://rapbox:wrong@127.0.0.1:${tp.port}`), '127.0.0.1', center.port, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(
      `^proxy http://rapbox@127\\.0\\.0\\.1:${tp.port} answered (407 Proxy Authentication Required|401 Unauthorized) to CONNECT 127\\.0\\.0\\.1:${center.port}( \\(the proxy rejected the user name and password\\))?$`,
    ),
  });
});

t.test('tinyproxy: a CONNECT port it does not allow is refused with its status', async (t) => {
  const tp = await startTinyproxy(t, { user: 'rapbox', pass: 'Pr0xy-pass', connectPort: center.port });
  const other = center.port === 65535 ? center.port - 1 : center.port + 1;
  await t.rejects(connectVia(parseProxyUrl(`http://rapbox:Pr0xy-pass@127.0.0.1:${tp.port}`), '127.0.0.1', other, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(`answered 403 .*to CONNECT 127\\.0\\.0\\.1:${other}$`),
  });
});

// ---------------------------------------------------------------- danted

t.test('danted: mutual TLS and an HTTPS POST through SOCKS5', async (t) => {
  const d = await startDanted(t);
  const raw = await connected(t, parseProxyUrl(`socks5://127.0.0.1:${d.port}`));
  const localPort = raw.localPort;
  const seen = await post(raw, '{"batch":2}');
  t.equal(seen.status, 200);
  t.equal(seen.body, '{"batch":2}');
  t.equal(seen.clientCN, CENTER_NAME);
  t.not(seen.remotePort, localPort, 'the center saw the proxy, not us');
});

t.test('danted: refusals come back as named SOCKS5 reply codes', async (t) => {
  const closed = await freePort();
  const blocked = await freePort();
  const d = await startDanted(t, { blockPort: blocked });
  const proxy = parseProxyUrl(`socks5://127.0.0.1:${d.port}`);
  await t.rejects(connectVia(proxy, '127.0.0.1', closed, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(`^proxy socks5://127\\.0\\.0\\.1:${d.port} answered 0x05 \\(connection refused\\) to CONNECT 127\\.0\\.0\\.1:${closed}$`),
  });
  await t.rejects(connectVia(proxy, '127.0.0.1', blocked, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: /answered 0x02 \(connection not allowed by ruleset\)/,
  });
});

// ---------------------------------------------------------------- NO_PROXY

t.test('NO_PROXY: the center is reached directly despite HTTPS_PROXY', async (t) => {
  const deadProxy = await freePort();
  const target = new URL(`https://127.0.0.1:${center.port}/v1/telemetry`);
  const env = { HTTPS_PROXY: `http://127.0.0.1:${deadProxy}` };
  // Without NO_PROXY the (dead) environment proxy is in force...
  const proxied = resolveProxy({ explicit: '', fromEnvironment: true, noProxy: '', env, target });
  await t.rejects(connectVia(proxied, '127.0.0.1', center.port, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(`^cannot connect to proxy http://127\\.0\\.0\\.1:${deadProxy}: connect ECONNREFUSED`),
  });
  // ...and NO_PROXY takes the center out of it.
  const direct = resolveProxy({ explicit: '', fromEnvironment: true, noProxy: '', env: { ...env, NO_PROXY: 'example.org, 127.0.0.1' }, target });
  t.equal(direct, null);
  const raw = await connected(t, direct);
  const localPort = raw.localPort;
  const seen = await post(raw, '{"batch":3}');
  t.equal(seen.status, 200);
  t.equal(seen.remotePort, localPort, 'the center saw us directly');
});

t.test('proxy.noProxy with host:port bypasses a working tinyproxy', async (t) => {
  const tp = await startTinyproxy(t, { user: 'rapbox', pass: 'Pr0xy-pass', connectPort: center.port });
  const proxy = resolveProxy({
    explicit: `http://rapbox:Pr0xy-pass@127.0.0.1:${tp.port}`,
    fromEnvironment: false,
    noProxy: `127.0.0.1:${center.port}`,
    env: {},
    target: new URL(`https://127.0.0.1:${center.port}/v1/telemetry`),
  });
  t.equal(proxy, null);
  const raw = await connected(t, proxy);
  const localPort = raw.localPort;
  const seen = await post(raw, '{"batch":4}');
  t.equal(seen.remotePort, localPort, 'the center saw us directly');
  t.notMatch(tp.daemon.log(), 'Request (file descriptor', 'tinyproxy saw no request');
});
