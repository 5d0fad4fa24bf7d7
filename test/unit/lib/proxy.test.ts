// Proxy selection as state tables, and both client handshakes against tiny
// in-process proxies on 127.0.0.1 that script every answer a real one can give
// (and some it should not). Everything is bounded; nothing leaves loopback.

import t, { type Test } from 'tap';
import { createServer, type LookupFunction, type Server, type Socket } from 'node:net';
import { connectVia, describeProxy, parseProxyUrl, resolveProxy, shouldBypass, shownUrl, type ProxySpec } from '../../../src/lib/proxy.ts';
import { isRapError } from '../../../src/lib/errors.ts';

// ---------------------------------------------------------------- parsing

const parseCases: { name: string; input: string; want: ProxySpec | RegExp }[] = [
  { name: 'http with port', input: 'http://proxy.lab:3128', want: { kind: 'http', host: 'proxy.lab', port: 3128 } },
  {
    name: 'http with user and password',
    input: 'http://svc:s3cret@proxy.lab:3128',
    want: { kind: 'http', host: 'proxy.lab', port: 3128, username: 'svc', password: 's3cret' },
  },
  {
    name: 'percent-encoded credentials are decoded',
    input: 'http://DOM%5Csvc:p%40ss%3Aw%2Fd@proxy:8080/',
    want: { kind: 'http', host: 'proxy', port: 8080, username: 'DOM\\svc', password: 'p@ss:w/d' },
  },
  { name: 'user without password', input: 'http://svc@proxy:3128', want: { kind: 'http', host: 'proxy', port: 3128, username: 'svc' } },
  { name: 'http default port is 80', input: 'http://proxy', want: { kind: 'http', host: 'proxy', port: 80 } },
  { name: 'host is lower-cased, spaces trimmed', input: '  HTTP://Proxy.LAB:3128 ', want: { kind: 'http', host: 'proxy.lab', port: 3128 } },
  { name: 'bare host:port is http (as curl)', input: 'proxy.lab:3128', want: { kind: 'http', host: 'proxy.lab', port: 3128 } },
  { name: 'bare IPv4:port', input: '10.1.2.3:8080', want: { kind: 'http', host: '10.1.2.3', port: 8080 } },
  { name: 'IPv6 literal', input: 'http://[2001:db8::1]:3128', want: { kind: 'http', host: '2001:db8::1', port: 3128 } },
  { name: 'socks5', input: 'socks5://gw:1080', want: { kind: 'socks5', host: 'gw', port: 1080, remoteDns: false } },
  { name: 'socks5 default port 1080', input: 'socks5://gw', want: { kind: 'socks5', host: 'gw', port: 1080, remoteDns: false } },
  {
    name: 'socks5h with credentials',
    input: 'socks5h://u:p@GW.lab:9050',
    want: { kind: 'socks5', host: 'gw.lab', port: 9050, username: 'u', password: 'p', remoteDns: true },
  },
  { name: 'socks5 IPv6', input: 'socks5://[::1]:1080', want: { kind: 'socks5', host: '::1', port: 1080, remoteDns: false } },
  { name: 'empty', input: '  ', want: /^proxy URL '' is empty$/ },
  { name: 'https proxy', input: 'https://proxy:3128', want: /uses https:\/\/.*not supported; use http:\/\// },
  { name: 'socks4', input: 'socks4://gw:1080', want: /has scheme 'socks4'; expected http, socks5 or socks5h$/ },
  { name: 'path', input: 'http://proxy:3128/pac', want: /has a path, query or fragment/ },
  { name: 'query', input: 'http://proxy:3128?x=1', want: /has a path, query or fragment/ },
  { name: 'port out of range', input: 'http://proxy:70000', want: /is not a valid URL/ },
  { name: 'port zero', input: 'socks5://gw:0', want: /has port 0; expected 1-65535/ },
  { name: 'no host', input: 'socks5://:1080', want: /has no host|not a valid URL/ },
  { name: 'password without user', input: 'http://:pw@proxy:3128', want: /has a password but no user name/ },
  { name: 'bad percent-encoding', input: 'http://u:%E0%A4%A@proxy:3128', want: /not valid percent-encoding/ },
  { name: 'colon in a Basic user name', input: 'http://a%3Ab:c@proxy:3128', want: /containing ":"/ },
  { name: 'socks user name too long', input: `socks5://${'u'.repeat(256)}:p@gw`, want: /longer than 255 bytes/ },
];

t.test('parseProxyUrl', async (t) => {
  for (const c of parseCases) {
    if (c.want instanceof RegExp) {
      t.throws(() => parseProxyUrl(c.input), { code: 'RAP_PROXY', message: c.want }, c.name);
    } else {
      t.same(parseProxyUrl(c.input), c.want, c.name);
    }
  }
});

t.test('parse errors never carry the password', async (t) => {
  const bad = [
    'ftp://alice:Hunter2pw@proxy:21',
    'http://alice:Hunter2pw@proxy:99999',
    'http://alice:Hunter2pw@proxy:3128/path',
    'http://alice:Hunter2pw', // host forgotten: the password looks like a port
    'http://alice:Hun#ter2pw@proxy:3128', // "#" unencoded: URL parsing cuts the authority short
    'socks5://alice:Hunter2pw@:1080',
  ];
  for (const input of bad) {
    try {
      parseProxyUrl(input);
      t.fail(`${input} parsed`);
    } catch (e) {
      t.ok(isRapError(e, 'RAP_PROXY'), input);
      const text = `${(e as Error).message} ${JSON.stringify((e as { context: unknown }).context)}`;
      t.notMatch(text, /Hunter2pw|ter2pw/, `no password in: ${text}`);
      t.match(text, /alice/, 'the user name stays, to say which account');
    }
  }
  t.equal(shownUrl('http://u:p@h:1'), 'http://u:***@h:1');
  t.equal(shownUrl('http://h:3128'), 'http://h:3128');
  t.equal(shownUrl('http://[::1]:3128'), 'http://[::1]:3128');
});

// ---------------------------------------------------------------- NO_PROXY

const bypassCases: { name: string; noProxy: string; host: string; port?: number; want: boolean }[] = [
  { name: 'empty list', noProxy: '', host: 'center.example', want: false },
  { name: 'star', noProxy: '*', host: 'center.example', want: true },
  { name: 'star among others', noProxy: 'a.b, *', host: 'center.example', want: true },
  { name: 'exact host', noProxy: 'center.example', host: 'center.example', want: true },
  { name: 'case-insensitive', noProxy: 'CENTER.Example', host: 'center.EXAMPLE', want: true },
  { name: 'bare domain matches subdomains', noProxy: 'example', host: 'center.example', want: true },
  { name: 'leading dot matches subdomains', noProxy: '.example', host: 'eu.center.example', want: true },
  { name: 'leading dot matches the domain itself', noProxy: '.example', host: 'example', want: true },
  { name: '*.domain is .domain', noProxy: '*.example', host: 'center.example', want: true },
  { name: 'suffix only at a label boundary', noProxy: 'example', host: 'badexample', want: false },
  { name: 'other domain', noProxy: 'example.org', host: 'center.example', want: false },
  { name: 'trailing dot on host', noProxy: 'center.example', host: 'center.example.', want: true },
  { name: 'spaces and empty items', noProxy: ' ,  foo ,, center.example ', host: 'center.example', want: true },
  { name: 'space-separated', noProxy: 'foo center.example', host: 'center.example', want: true },
  { name: 'host:port matches that port', noProxy: 'center.example:443', host: 'center.example', port: 443, want: true },
  { name: 'host:port not another port', noProxy: 'center.example:8443', host: 'center.example', port: 443, want: false },
  { name: 'IPv4 literal', noProxy: '10.0.0.1', host: '10.0.0.1', want: true },
  { name: 'IPv4 is not suffix-matched', noProxy: '0.0.1', host: '10.0.0.1', want: false },
  { name: 'IPv4 other address', noProxy: '10.0.0.1', host: '10.0.0.2', want: false },
  { name: 'IPv4:port', noProxy: '127.0.0.1:443', host: '127.0.0.1', port: 443, want: true },
  { name: 'IPv4 CIDR inside', noProxy: '10.0.0.0/8', host: '10.20.30.40', want: true },
  { name: 'IPv4 CIDR outside', noProxy: '10.0.0.0/8', host: '11.0.0.1', want: false },
  { name: 'CIDR never matches names', noProxy: '10.0.0.0/8', host: '10.example', want: false },
  { name: 'IPv6 bare entry, bracketed host', noProxy: '::1', host: '[::1]', want: true },
  { name: 'IPv6 other spelling', noProxy: '2001:DB8:0:0::1', host: '2001:db8::1', want: true },
  { name: 'IPv6 bracketed with port', noProxy: '[::1]:443', host: '::1', port: 443, want: true },
  { name: 'IPv6 bracketed, other port', noProxy: '[::1]:443', host: '::1', port: 8443, want: false },
  { name: 'IPv6 CIDR', noProxy: 'fd00::/8', host: 'fd12::5', want: true },
  { name: 'malformed entries match nothing', noProxy: 'a:b:c:z, [::1, host:port, 10.0.0.0/99', host: 'host', want: false },
  { name: 'an IP entry does not match a name', noProxy: '127.0.0.1', host: 'localhost', want: false },
];

t.test('shouldBypass', async (t) => {
  for (const c of bypassCases) t.equal(shouldBypass(c.noProxy, c.host, c.port ?? 443), c.want, c.name);
});

// ---------------------------------------------------------------- resolveProxy

const center = new URL('https://center.example:8443/v1/telemetry');
const resolveCases: {
  name: string;
  explicit?: string;
  fromEnvironment?: boolean;
  noProxy?: string;
  env?: NodeJS.ProcessEnv;
  target?: URL;
  want: string | RegExp;
}[] = [
  { name: 'nothing set: direct', want: 'direct' },
  { name: 'explicit', explicit: 'http://p:1', want: 'http://p:1' },
  {
    name: 'explicit wins over every variable',
    explicit: 'socks5://s:2',
    env: { HTTPS_PROXY: 'http://a:1', https_proxy: 'http://b:1', ALL_PROXY: 'http://c:1' },
    want: 'socks5://s:2',
  },
  { name: 'HTTPS_PROXY over https_proxy', env: { HTTPS_PROXY: 'http://a:1', https_proxy: 'http://b:1', ALL_PROXY: 'http://c:1' }, want: 'http://a:1' },
  { name: 'https_proxy over ALL_PROXY', env: { https_proxy: 'http://b:1', ALL_PROXY: 'http://c:1', all_proxy: 'http://d:1' }, want: 'http://b:1' },
  { name: 'ALL_PROXY over all_proxy', env: { ALL_PROXY: 'socks5h://c:1', all_proxy: 'http://d:1' }, want: 'socks5h://c:1' },
  { name: 'all_proxy last', env: { all_proxy: 'http://d:1' }, want: 'http://d:1' },
  { name: 'empty variables are skipped', env: { HTTPS_PROXY: '', https_proxy: ' ', ALL_PROXY: 'http://c:1' }, want: 'http://c:1' },
  { name: 'HTTP_PROXY is never used', env: { HTTP_PROXY: 'http://h:1', http_proxy: 'http://h:1' }, want: 'direct' },
  { name: 'fromEnvironment false ignores variables', fromEnvironment: false, env: { HTTPS_PROXY: 'http://a:1' }, want: 'direct' },
  { name: 'fromEnvironment false keeps explicit', fromEnvironment: false, explicit: 'http://p:1', env: { HTTPS_PROXY: 'http://a:1' }, want: 'http://p:1' },
  { name: 'NO_PROXY bypasses', env: { HTTPS_PROXY: 'http://a:1', NO_PROXY: '.example' }, want: 'direct' },
  { name: 'no_proxy bypasses', env: { HTTPS_PROXY: 'http://a:1', no_proxy: 'center.example' }, want: 'direct' },
  { name: 'NO_PROXY with the target port', env: { HTTPS_PROXY: 'http://a:1', NO_PROXY: 'center.example:8443' }, want: 'direct' },
  { name: 'NO_PROXY with another port', env: { HTTPS_PROXY: 'http://a:1', NO_PROXY: 'center.example:443' }, want: 'http://a:1' },
  { name: 'config noProxy bypasses an explicit proxy', explicit: 'http://p:1', noProxy: 'center.example', want: 'direct' },
  {
    name: 'NO_PROXY is ignored with fromEnvironment false',
    fromEnvironment: false,
    explicit: 'http://p:1',
    env: { NO_PROXY: '*' },
    want: 'http://p:1',
  },
  { name: 'default https port for host:port entries', target: new URL('https://c.example/x'), env: { ALL_PROXY: 'http://a:1', NO_PROXY: 'c.example:443' }, want: 'direct' },
  { name: 'a bad variable is named', env: { HTTPS_PROXY: 'ftp://u:pw@x:1' }, want: /^HTTPS_PROXY: proxy URL 'ftp:\/\/u:\*\*\*@x:1' has scheme 'ftp'/ },
  { name: 'a bad proxy.url is named', explicit: 'socks4://x', want: /^proxy\.url: proxy URL 'socks4:\/\/x' has scheme/ },
  { name: 'a bad proxy URL throws even when bypassed', explicit: 'gopher://x', noProxy: '*', want: /^proxy\.url: / },
];

t.test('resolveProxy', async (t) => {
  for (const c of resolveCases) {
    const call = (): ProxySpec | null =>
      resolveProxy({
        explicit: c.explicit ?? '',
        fromEnvironment: c.fromEnvironment ?? true,
        noProxy: c.noProxy ?? '',
        env: c.env ?? {},
        target: c.target ?? center,
      });
    if (c.want instanceof RegExp) t.throws(call, { code: 'RAP_PROXY', message: c.want }, c.name);
    else t.equal(describeProxy(call()), c.want, c.name);
  }
});

t.test('describeProxy names the proxy and user, never the password', async (t) => {
  t.equal(describeProxy(null), 'direct');
  t.equal(describeProxy(parseProxyUrl('http://user:pass@proxy:3128')), 'http://user@proxy:3128');
  t.equal(describeProxy(parseProxyUrl('socks5://u:pw@[::1]:1080')), 'socks5://u@[::1]:1080');
  t.equal(describeProxy(parseProxyUrl('socks5h://gw')), 'socks5h://gw:1080');
  t.equal(describeProxy(parseProxyUrl('http://a%40b:c@p:1')), 'http://a%40b@p:1');
});

// ---------------------------------------------------------------- fakes

/** Bound for every test-side wait. */
const WAIT_MS = 3000;

/** A TCP server on 127.0.0.1 whose connections all die with the test. */
async function fakeServer(t: Test, onConnection: (s: Socket) => void): Promise<number> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConnection(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as { port: number }).port;
}

/** Exactly n bytes from the socket, or a rejection after `ms`. */
function readBytes(s: Socket, n: number, ms = WAIT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const done = (err: Error | null): void => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      if (err) reject(err);
      else resolve(got.subarray(0, n));
    };
    const onData = (b: Buffer): void => {
      got = Buffer.concat([got, b]);
      if (got.length >= n) done(null);
    };
    const onClose = (): void => done(new Error(`closed after ${got.length} of ${n} bytes`));
    const timer = setTimeout(() => done(new Error(`timed out after ${got.length} of ${n} bytes`)), ms);
    s.on('data', onData);
    s.on('close', onClose);
    s.resume();
  });
}

/** Buffered exact reads for the fake servers: what one read leaves is the next one's start. */
function byteQueue(s: Socket): (n: number) => Promise<Buffer> {
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | null = null;
  s.on('data', (b: Buffer) => {
    buf = Buffer.concat([buf, b]);
    wake?.();
  });
  s.on('close', () => {
    closed = true;
    wake?.();
  });
  return async (n) => {
    const deadline = Date.now() + WAIT_MS;
    while (buf.length < n) {
      if (closed) throw new Error(`closed after ${buf.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
    }
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
}

/** Reads one CONNECT head, records it, then hands the socket to `answer`. */
async function fakeConnectProxy(t: Test, answer: (s: Socket, head: string) => void): Promise<{ port: number; heads: string[] }> {
  const heads: string[] = [];
  const port = await fakeServer(t, (s) => {
    let buf = '';
    const onData = (b: Buffer): void => {
      buf += b.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      heads.push(buf.slice(0, end));
      answer(s, buf.slice(0, end));
    };
    s.on('data', onData);
  });
  return { port, heads };
}

/** Echoes with a "pong:" prefix, so a test sees the far end answered. */
function echo(s: Socket): void {
  s.on('data', (b) => s.write(`pong:${b.toString()}`));
}

interface SocksLog {
  methods: number[][];
  auth: { user: string; pass: string }[];
  requests: { atyp: number; addr: string; port: number }[];
}

interface SocksScript {
  /** Method to choose from the offer (default: 0x02 if offered and users are set, else 0x00). */
  choose?: (offered: number[]) => number;
  users?: Record<string, string>;
  reply?: number;
  /** Sent right after a success reply, in the same write. */
  early?: string;
}

/** An RFC 1928/1929 server that tunnels into an echo. */
async function fakeSocks(t: Test, script: SocksScript): Promise<{ port: number; log: SocksLog }> {
  const log: SocksLog = { methods: [], auth: [], requests: [] };
  const port = await fakeServer(t, (s) => {
    const readBytes = byteQueue(s);
    void (async () => {
      const [, n] = await readBytes(2);
      const offered = [...(await readBytes(n!))];
      log.methods.push(offered);
      const method = script.choose ? script.choose(offered) : script.users && offered.includes(2) ? 2 : 0;
      s.write(Buffer.from([5, method]));
      if (method === 0xff) return void s.end();
      if (method === 2) {
        const [, ulen] = await readBytes(2);
        const user = (await readBytes(ulen!)).toString();
        const [plen] = await readBytes(1);
        const pass = plen ? (await readBytes(plen)).toString() : '';
        log.auth.push({ user, pass });
        const ok = script.users?.[user] === pass;
        s.write(Buffer.from([1, ok ? 0 : 1]));
        if (!ok) return void s.end();
      }
      const [, , , atyp] = await readBytes(4);
      let addr: string;
      if (atyp === 1) addr = [...(await readBytes(4))].join('.');
      else if (atyp === 4) addr = (await readBytes(16)).toString('hex');
      else addr = (await readBytes((await readBytes(1))[0]!)).toString();
      const p = await readBytes(2);
      log.requests.push({ atyp: atyp!, addr, port: p.readUInt16BE(0) });
      const rep = script.reply ?? 0;
      // Bound address as a domain name, to exercise the variable-length form.
      const bound = Buffer.from('bound.test');
      const reply = Buffer.concat([Buffer.from([5, rep, 0, 3, bound.length]), bound, Buffer.from([0x04, 0x38])]);
      if (rep !== 0) return void s.end(reply);
      s.write(script.early ? Buffer.concat([reply, Buffer.from(script.early)]) : reply);
      echo(s);
    })().catch(() => s.destroy());
  });
  return { port, log };
}

/** A port with nothing listening (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Connected socket, destroyed at teardown. */
async function via(t: Test, proxy: ProxySpec | null, host: string, port: number, timeoutMs = WAIT_MS, lookup?: LookupFunction): Promise<Socket> {
  const s = await connectVia(proxy, host, port, { timeoutMs, ...(lookup ? { lookup } : {}) });
  t.teardown(() => s.destroy());
  return s;
}

async function roundTrip(s: Socket): Promise<string> {
  s.write('ping');
  return (await readBytes(s, 9)).toString();
}

/** A lookup that knows one name and fails everything else, so no test touches real DNS. */
const fakeLookup: LookupFunction = (hostname, options, cb) => {
  // net.connect asks for { all: true } (happy eyeballs) and wants a list then.
  if (hostname === 'center.test') {
    if (options.all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
    else cb(null, '127.0.0.1', 4);
  }
  else cb(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
};

// ---------------------------------------------------------------- direct

t.test('direct: connects and resolves names through the lookup given', async (t) => {
  const port = await fakeServer(t, echo);
  t.equal(await roundTrip(await via(t, null, '127.0.0.1', port)), 'pong:ping');
  t.equal(await roundTrip(await via(t, null, 'center.test', port, WAIT_MS, fakeLookup)), 'pong:ping');
});

t.test('direct: connection refused names the target', async (t) => {
  const port = await closedPort();
  await t.rejects(connectVia(null, '127.0.0.1', port, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(`^cannot connect to 127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`),
    context: { proxy: 'direct', target: `127.0.0.1:${port}` },
  });
});

t.test('a target that could smuggle headers is refused before any connection', async (t) => {
  await t.rejects(connectVia(parseProxyUrl('http://127.0.0.1:9'), 'evil\r\nX-Injected: 1', 443, { timeoutMs: 100 }), {
    code: 'RAP_PROXY',
    message: /^invalid target/,
  });
  await t.rejects(connectVia(null, 'h', 0, { timeoutMs: 100 }), { code: 'RAP_PROXY', message: /^invalid target 'h:0'/ });
});

// ---------------------------------------------------------------- HTTP CONNECT

t.test('CONNECT 200: sends Basic auth and tunnels', async (t) => {
  const { port, heads } = await fakeConnectProxy(t, (s) => {
    s.write('HTTP/1.1 200 Connection established\r\nProxy-Agent: fake\r\n\r\n');
    echo(s);
  });
  const proxy = parseProxyUrl(`http://svc:p%40ss@127.0.0.1:${port}`);
  const s = await via(t, proxy, 'center.example', 8443);
  t.equal(await roundTrip(s), 'pong:ping');
  t.same(heads, [
    [
      'CONNECT center.example:8443 HTTP/1.1',
      'Host: center.example:8443',
      `Proxy-Authorization: Basic ${Buffer.from('svc:p@ss').toString('base64')}`,
    ].join('\r\n'),
  ]);
});

t.test('CONNECT: no credentials, no Proxy-Authorization; IPv6 target bracketed', async (t) => {
  const { port, heads } = await fakeConnectProxy(t, (s) => {
    s.write('HTTP/1.0 200 OK\r\n\r\n');
    echo(s);
  });
  await via(t, parseProxyUrl(`http://127.0.0.1:${port}`), '[2001:db8::1]', 443);
  t.same(heads, ['CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443']);
});

t.test('CONNECT: bytes after the answer head are kept for the caller', async (t) => {
  const { port } = await fakeConnectProxy(t, (s) => {
    // Same write as the head: they arrive in one chunk and must be unshifted.
    s.write('HTTP/1.1 200 Connection established\r\n\r\nHELLO-FROM-TARGET');
  });
  const s = await via(t, parseProxyUrl(`http://127.0.0.1:${port}`), 'center.example', 443);
  t.equal((await readBytes(s, 17)).toString(), 'HELLO-FROM-TARGET');
});

t.test('CONNECT: an answer head split over many writes', async (t) => {
  const { port } = await fakeConnectProxy(t, (s) => {
    const parts = ['HT', 'TP/1.1 2', '00 OK\r', '\n', 'X: y\r\n\r', '\nrest'];
    let i = 0;
    const next = (): void => {
      s.write(parts[i++]!);
      if (i < parts.length) setTimeout(next, 5);
    };
    next();
  });
  const s = await via(t, parseProxyUrl(`http://127.0.0.1:${port}`), 'center.example', 443);
  t.equal((await readBytes(s, 4)).toString(), 'rest');
});

const connectFailures: { name: string; url?: string; answer: string | null; want: RegExp }[] = [
  {
    name: '407 with credentials',
    url: 'http://user:wrong@127.0.0.1:PORT',
    answer: 'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n',
    want: /^proxy http:\/\/user@127\.0\.0\.1:\d+ answered 407 Proxy Authentication Required to CONNECT center\.example:443$/,
  },
  {
    name: '407 without credentials says so',
    answer: 'HTTP/1.1 407 Proxy Authentication Required\r\n\r\n',
    want: /answered 407 Proxy Authentication Required to CONNECT center\.example:443 \(the proxy URL has no user name and password\)$/,
  },
  { name: '403', answer: 'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n', want: /answered 403 Forbidden to CONNECT center\.example:443$/ },
  { name: '502 without a reason phrase', answer: 'HTTP/1.1 502\r\n\r\n', want: /answered 502 to CONNECT/ },
  {
    name: 'garbage',
    answer: 'SSH-2.0-OpenSSH_9.2\r\n',
    want: /answered something that is not HTTP to CONNECT center\.example:443: "SSH-2\.0-OpenSSH_9\.2\.\."$/,
  },
  { name: 'a broken status line', answer: 'HTTP/1.1 two hundred\r\n\r\n', want: /answered something that is not HTTP/ },
  { name: 'endless headers', answer: `HTTP/1.1 200 OK\r\n${'X: y\r\n'.repeat(4000)}`, want: /more than 16384 bytes of headers/ },
  { name: 'closed before answering', answer: null, want: /closed the connection while waiting for the answer to CONNECT center\.example:443$/ },
];

for (const c of connectFailures) {
  t.test(`CONNECT fails: ${c.name}`, async (t) => {
    let closed = false;
    const { port } = await fakeConnectProxy(t, (s) => {
      s.on('close', () => (closed = true));
      if (c.answer === null) s.end();
      else s.write(c.answer);
    });
    const url = (c.url ?? 'http://127.0.0.1:PORT').replace('PORT', String(port));
    await t.rejects(connectVia(parseProxyUrl(url), 'center.example', 443, { timeoutMs: WAIT_MS }), { code: 'RAP_PROXY', message: c.want });
    // Our side is gone: the proxy sees the connection close.
    await waitUntil(() => closed, 'the proxy to see our side close');
  });
}

/** Poll a condition (50 ms steps) within WAIT_MS. */
async function waitUntil(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('CONNECT error messages never carry the password', async (t) => {
  const { port } = await fakeConnectProxy(t, (s) => s.write('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n'));
  const err = await connectVia(parseProxyUrl(`http://user:Hunter2pw@127.0.0.1:${port}`), 'c', 443, { timeoutMs: WAIT_MS }).then(
    () => null,
    (e: unknown) => e as Error & { context: unknown },
  );
  t.ok(err);
  t.notMatch(`${err?.message} ${JSON.stringify(err?.context)}`, /Hunter2pw/);
});

t.test('proxy connection refused', async (t) => {
  const port = await closedPort();
  await t.rejects(connectVia(parseProxyUrl(`http://u:p@127.0.0.1:${port}`), 'center.example', 443, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: new RegExp(`^cannot connect to proxy http://u@127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`),
    context: { stage: 'connecting' },
  });
});

t.test('a proxy that never answers: the timeout bounds the handshake', async (t) => {
  let closed = false;
  const port = await fakeServer(t, (s) => s.on('close', () => (closed = true)).resume());
  const started = Date.now();
  await t.rejects(connectVia(parseProxyUrl(`http://127.0.0.1:${port}`), 'center.example', 443, { timeoutMs: 200 }), {
    code: 'RAP_PROXY',
    message: /^proxy http:\/\/127\.0\.0\.1:\d+: timed out after 200 ms waiting for the answer to CONNECT center\.example:443/,
  });
  t.ok(Date.now() - started < 2000, 'gave up near the bound');
  await waitUntil(() => closed, 'the proxy to see our side close');
});

t.test('a proxy that answers part of a head and stalls still times out', async (t) => {
  const { port } = await fakeConnectProxy(t, (s) => s.write('HTTP/1.1 200 OK\r\n'));
  await t.rejects(connectVia(parseProxyUrl(`http://127.0.0.1:${port}`), 'c', 443, { timeoutMs: 200 }), {
    message: /timed out after 200 ms waiting for the answer to CONNECT c:443/,
  });
});

// ---------------------------------------------------------------- SOCKS5

t.test('SOCKS5 with user/password: RFC 1929 auth, domain request (socks5h), tunnel', async (t) => {
  const { port, log } = await fakeSocks(t, { users: { svc: 'p@ss' } });
  const s = await via(t, parseProxyUrl(`socks5h://svc:p%40ss@127.0.0.1:${port}`), 'center.example', 8443);
  t.equal(await roundTrip(s), 'pong:ping');
  t.same(log, {
    methods: [[0, 2]],
    auth: [{ user: 'svc', pass: 'p@ss' }],
    requests: [{ atyp: 3, addr: 'center.example', port: 8443 }],
  });
});

t.test('SOCKS5 without credentials offers only "no authentication"', async (t) => {
  const { port, log } = await fakeSocks(t, {});
  await via(t, parseProxyUrl(`socks5h://127.0.0.1:${port}`), 'center.example', 443);
  t.same(log.methods, [[0]]);
  t.same(log.auth, []);
});

t.test('socks5:// resolves the name locally and sends an address', async (t) => {
  const { port, log } = await fakeSocks(t, {});
  await via(t, parseProxyUrl(`socks5://127.0.0.1:${port}`), 'center.test', 443, WAIT_MS, fakeLookup);
  t.same(log.requests, [{ atyp: 1, addr: '127.0.0.1', port: 443 }]);
});

t.test('SOCKS5 IP literals go as addresses even with socks5h', async (t) => {
  const { port, log } = await fakeSocks(t, {});
  await via(t, parseProxyUrl(`socks5h://127.0.0.1:${port}`), '10.1.2.3', 443);
  await via(t, parseProxyUrl(`socks5h://127.0.0.1:${port}`), '[2001:db8::ffff:1.2.3.4]', 443);
  t.same(log.requests, [
    { atyp: 1, addr: '10.1.2.3', port: 443 },
    { atyp: 4, addr: '20010db8000000000000ffff01020304', port: 443 },
  ]);
});

t.test('SOCKS5: bytes after the reply are kept for the caller', async (t) => {
  const { port } = await fakeSocks(t, { early: 'EARLY' });
  const s = await via(t, parseProxyUrl(`socks5h://127.0.0.1:${port}`), 'center.example', 443);
  t.equal((await readBytes(s, 5)).toString(), 'EARLY');
});

t.test('socks5:// with a name that does not resolve', async (t) => {
  const { port, log } = await fakeSocks(t, {});
  await t.rejects(connectVia(parseProxyUrl(`socks5://127.0.0.1:${port}`), 'nowhere.test', 443, { timeoutMs: WAIT_MS, lookup: fakeLookup }), {
    code: 'RAP_PROXY',
    message: /cannot be given an address for nowhere\.test: getaddrinfo ENOTFOUND nowhere\.test \(socks5h:\/\/ lets the proxy resolve names\)$/,
  });
  t.same(log.requests, []);
});

const socksFailures: { name: string; url: string; script: SocksScript; want: RegExp }[] = [
  {
    name: 'wrong password',
    url: 'socks5h://svc:wrong@127.0.0.1:PORT',
    script: { users: { svc: 'right' } },
    want: /^proxy socks5h:\/\/svc@127\.0\.0\.1:\d+ rejected user name 'svc' and its password \(RFC 1929 status 0x01\)$/,
  },
  {
    name: 'no acceptable method without credentials',
    url: 'socks5h://127.0.0.1:PORT',
    script: { choose: () => 0xff },
    want: /accepts none of the offered SOCKS5 authentication methods \(no authentication\); the proxy URL has no user name and password$/,
  },
  {
    name: 'no acceptable method with credentials',
    url: 'socks5h://u:p@127.0.0.1:PORT',
    script: { choose: () => 0xff },
    want: /accepts none of the offered SOCKS5 authentication methods \(no authentication, username\/password\)$/,
  },
  {
    name: 'a method we did not offer',
    url: 'socks5h://127.0.0.1:PORT',
    script: { choose: () => 1 },
    want: /chose SOCKS5 authentication method 0x01, which was not offered$/,
  },
];
const replyNames: [number, string][] = [
  [1, 'general SOCKS server failure'],
  [2, 'connection not allowed by ruleset'],
  [3, 'network unreachable'],
  [4, 'host unreachable'],
  [5, 'connection refused'],
  [6, 'TTL expired'],
  [7, 'command not supported'],
  [8, 'address type not supported'],
  [9, 'unassigned reply code'],
];
for (const [code, name] of replyNames) {
  socksFailures.push({
    name: `reply 0x0${code}`,
    url: 'socks5h://127.0.0.1:PORT',
    script: { reply: code },
    want: new RegExp(`^proxy socks5h://127\\.0\\.0\\.1:\\d+ answered 0x0${code} \\(${name}\\) to CONNECT center\\.example:443$`),
  });
}

for (const c of socksFailures) {
  t.test(`SOCKS5 fails: ${c.name}`, async (t) => {
    const { port } = await fakeSocks(t, c.script);
    await t.rejects(connectVia(parseProxyUrl(c.url.replace('PORT', String(port))), 'center.example', 443, { timeoutMs: WAIT_MS }), {
      code: 'RAP_PROXY',
      message: c.want,
    });
  });
}

t.test('SOCKS5 pointed at an HTTP proxy says it is not SOCKS5', async (t) => {
  const port = await fakeServer(t, (s) => s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\n\r\n')));
  await t.rejects(connectVia(parseProxyUrl(`socks5://127.0.0.1:${port}`), '127.0.0.1', 443, { timeoutMs: WAIT_MS }), {
    code: 'RAP_PROXY',
    message: /answered something that is not SOCKS5 \(first byte 0x48\)$/,
  });
});

t.test('a SOCKS5 server that never answers times out', async (t) => {
  const port = await fakeServer(t, () => {});
  await t.rejects(connectVia(parseProxyUrl(`socks5h://u:p@127.0.0.1:${port}`), 'center.example', 443, { timeoutMs: 200 }), {
    code: 'RAP_PROXY',
    message: /^proxy socks5h:\/\/u@127\.0\.0\.1:\d+: timed out after 200 ms waiting for the SOCKS5 method selection \(target center\.example:443\)$/,
  });
});

t.test('a SOCKS5 server that stalls after auth times out at that step', async (t) => {
  const port = await fakeServer(t, (s) => {
    s.once('data', () => {
      s.write(Buffer.from([5, 2]));
      s.once('data', () => s.write(Buffer.from([1, 0]))); // auth ok, then silence
    });
  });
  await t.rejects(connectVia(parseProxyUrl(`socks5h://u:p@127.0.0.1:${port}`), 'center.example', 443, { timeoutMs: 300 }), {
    message: /timed out after 300 ms waiting for the SOCKS5 answer to CONNECT center\.example:443/,
  });
});

t.test('SOCKS5 closed mid-reply', async (t) => {
  const port = await fakeServer(t, (s) => {
    s.once('data', () => {
      s.write(Buffer.from([5, 0]));
      s.once('data', () => s.end(Buffer.from([5, 0, 0, 1, 127]))); // address cut short
    });
  });
  await t.rejects(connectVia(parseProxyUrl(`socks5h://127.0.0.1:${port}`), 'center.example', 443, { timeoutMs: WAIT_MS }), {
    message: /closed the connection while waiting for the SOCKS5 answer to CONNECT center\.example:443$/,
  });
});
