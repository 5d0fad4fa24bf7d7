// The uplink's way out of a hospital network: which proxy to use (config
// `proxy.url`, else HTTPS_PROXY / ALL_PROXY), which hosts skip it (NO_PROXY and
// `proxy.noProxy`), and a raw TCP path to the service center - direct, through
// an HTTP CONNECT proxy (Basic auth) or through SOCKS5 (RFC 1928, user name and
// password per RFC 1929). The caller runs TLS over the socket it gets, so a
// proxy only ever carries ciphertext and mutual TLS ends at the center.
//
// Both handshakes are hand-written on node:net: they are a few dozen bytes
// each, and the box carries no dependency it can do without.
//
// Proxy passwords are secrets: no message, log field or context here carries
// one. URLs are shown through `shownUrl` and proxies through `describeProxy`.

import { BlockList, connect, isIP, type LookupFunction, type Socket } from 'node:net';
import { lookup as dnsLookup } from 'node:dns';
import { RapError, errorMessage, isRapError } from './errors.ts';

export type ProxySpec =
  | { kind: 'http'; host: string; port: number; username?: string; password?: string }
  | { kind: 'socks5'; host: string; port: number; username?: string; password?: string; remoteDns: boolean };

export interface ConnectOptions {
  /** Bound on the whole path: TCP connect, proxy handshake and auth. */
  timeoutMs: number;
  /** Name resolution for the first hop and for socks5:// (not socks5h://) targets; default dns.lookup. */
  lookup?: LookupFunction;
}

// Without a port in the URL: HTTP proxies get the scheme's port, as in Go,
// Python and most proxy configuration UIs; SOCKS has its IANA port.
const DEFAULT_PORT = { http: 80, socks5: 1080 } as const;

// HTTPS_PROXY before ALL_PROXY; upper case first. HTTP_PROXY is never read: the
// uplink only speaks HTTPS, and HTTP_PROXY can be attacker-set in CGI-like
// environments ("httpoxy").
const PROXY_ENV = ['HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'] as const;
const NO_PROXY_ENV = ['NO_PROXY', 'no_proxy'] as const;

/** A CONNECT answer's head larger than this is not a proxy we can talk to. */
const MAX_HTTP_HEAD = 16 * 1024;

/**
 * `url` with any password replaced by "***", for messages. Conservative: on
 * malformed input everything that might be a password is hidden.
 */
export function shownUrl(url: string): string {
  const schemeEnd = url.indexOf('://');
  const start = schemeEnd >= 0 ? schemeEnd + 3 : 0;
  const at = url.lastIndexOf('@');
  if (at >= start) {
    const colon = url.indexOf(':', start);
    if (colon >= 0 && colon < at) return `${url.slice(0, colon + 1)}***${url.slice(at)}`;
    return url;
  }
  // No "@": "http://user:secret" (host forgotten) would show its password as a port.
  const authority = url.slice(start).split(/[/?#]/, 1)[0] ?? '';
  const colon = authority.indexOf(':');
  if (colon >= 0 && !authority.startsWith('[') && !/^\d*$/.test(authority.slice(colon + 1))) {
    return `${url.slice(0, start + colon + 1)}***${url.slice(start + authority.length)}`;
  }
  return url;
}

/**
 * Parses http://, socks5:// and socks5h:// proxy URLs, with optional
 * percent-encoded user:password. A bare "host:port" is an HTTP proxy, as curl
 * reads environment variables.
 */
export function parseProxyUrl(url: string): ProxySpec {
  const raw = url.trim();
  const shown = shownUrl(raw);
  const fail = (what: string): never => {
    throw new RapError('RAP_PROXY', `proxy URL '${shown}' ${what}`, { url: shown });
  };
  if (raw === '') fail('is empty');
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    return fail('is not a valid URL (expected scheme://[user[:password]@]host[:port])');
  }
  const scheme = u.protocol.slice(0, -1).toLowerCase();
  if (scheme === 'https') fail('uses https://, a TLS connection to the proxy, which is not supported; use http:// for an HTTP CONNECT proxy');
  if (scheme !== 'http' && scheme !== 'socks5' && scheme !== 'socks5h') {
    fail(`has scheme '${scheme}'; expected http, socks5 or socks5h`);
  }
  if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.hash !== '') {
    fail('has a path, query or fragment; expected scheme://[user[:password]@]host[:port]');
  }
  const host = bare(u.hostname.toLowerCase());
  if (host === '') fail('has no host');
  const kind = scheme === 'http' ? 'http' : 'socks5';
  const port = u.port === '' ? DEFAULT_PORT[kind] : Number(u.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`has port ${u.port}; expected 1-65535`);

  let username: string | undefined;
  let password: string | undefined;
  try {
    username = u.username === '' ? undefined : decodeURIComponent(u.username);
    password = u.password === '' ? undefined : decodeURIComponent(u.password);
  } catch {
    fail('has a user name or password that is not valid percent-encoding');
  }
  if (username === undefined && password !== undefined) fail('has a password but no user name');
  // Basic auth joins them with ":" (RFC 7617); RFC 1929 gives each one length byte.
  if (kind === 'http' && username?.includes(':')) fail('has a user name containing ":", which Basic authentication cannot carry');
  if (kind === 'socks5' && username !== undefined) {
    if (Buffer.byteLength(username) > 255) fail('has a user name longer than 255 bytes (SOCKS5 limit)');
    if (Buffer.byteLength(password ?? '') > 255) fail('has a password longer than 255 bytes (SOCKS5 limit)');
  }

  const creds = {
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
  };
  return kind === 'http'
    ? { kind, host, port, ...creds }
    : { kind, host, port, ...creds, remoteDns: scheme === 'socks5h' };
}

/**
 * Whether `host:port` is reached directly under a NO_PROXY-style list: entries
 * separated by commas or spaces, case-insensitive; "*" matches everything;
 * "example.org", ".example.org" and "*.example.org" match the domain and every
 * name under it; IP literals match that address only (IPv6 in any spelling,
 * with or without brackets); "a.b.c.d/n" matches a subnet; a ":port" suffix
 * limits an entry to that port. Malformed entries match nothing.
 */
export function shouldBypass(noProxy: string, host: string, port: number): boolean {
  const h = bare(host.trim().toLowerCase()).replace(/\.$/, '');
  const hostIp = isIP(h);
  const hostCanon = hostIp ? canonicalIp(h) : h;
  for (const raw of noProxy.toLowerCase().split(/[\s,]+/)) {
    if (raw === '') continue;
    if (raw === '*') return true;
    const e = splitEntry(raw);
    if (!e || (e.port !== undefined && e.port !== port)) continue;
    if (e.subnet) {
      if (hostIp && e.subnet.check(h, hostIp === 4 ? 'ipv4' : 'ipv6')) return true;
      continue;
    }
    const entryIp = isIP(e.host);
    if (hostIp || entryIp) {
      // Addresses match exactly; a suffix rule would let "0.0.1" match "10.0.0.1".
      if (hostIp && entryIp && canonicalIp(e.host) === hostCanon) return true;
      continue;
    }
    const domain = e.host.replace(/^\*?\./, '').replace(/\.$/, '');
    if (domain !== '' && (h === domain || h.endsWith(`.${domain}`))) return true;
  }
  return false;
}

interface NoProxyEntry {
  host: string;
  port?: number;
  subnet?: BlockList;
}

function splitEntry(entry: string): NoProxyEntry | null {
  const slash = entry.indexOf('/');
  if (slash >= 0) {
    const addr = bare(entry.slice(0, slash));
    const bits = entry.slice(slash + 1);
    const family = isIP(addr);
    if (!family || !/^\d{1,3}$/.test(bits) || Number(bits) > (family === 4 ? 32 : 128)) return null;
    const subnet = new BlockList();
    subnet.addSubnet(addr, Number(bits), family === 4 ? 'ipv4' : 'ipv6');
    return { host: addr, subnet };
  }
  let host = entry;
  let portText: string | undefined;
  if (entry.startsWith('[')) {
    const close = entry.indexOf(']');
    if (close < 0) return null;
    host = entry.slice(1, close);
    const rest = entry.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return null;
      portText = rest.slice(1);
    }
  } else if (entry.indexOf(':') >= 0 && entry.indexOf(':') === entry.lastIndexOf(':')) {
    // One colon: host:port. More than one: a bare IPv6 address.
    const colon = entry.indexOf(':');
    host = entry.slice(0, colon);
    portText = entry.slice(colon + 1);
  }
  if (portText === undefined) return { host };
  if (!/^\d{1,5}$/.test(portText)) return null;
  return { host, port: Number(portText) };
}

/**
 * The proxy for `target`, or null for a direct connection. `explicit` (config
 * `proxy.url`) wins; else, with `fromEnvironment`, HTTPS_PROXY, https_proxy,
 * ALL_PROXY, all_proxy in that order. `noProxy` (config `proxy.noProxy`)
 * always applies; NO_PROXY / no_proxy only with `fromEnvironment`. A bad proxy
 * URL throws even when the target would bypass it: a broken setting must not
 * stay hidden until the center moves.
 */
export function resolveProxy(opts: {
  explicit: string;
  fromEnvironment: boolean;
  noProxy: string;
  env: NodeJS.ProcessEnv;
  target: URL;
}): ProxySpec | null {
  let source = 'proxy.url';
  let value = opts.explicit.trim();
  if (value === '' && opts.fromEnvironment) {
    for (const name of PROXY_ENV) {
      const v = opts.env[name]?.trim();
      if (v) {
        source = name;
        value = v;
        break;
      }
    }
  }
  if (value === '') return null;
  let proxy: ProxySpec;
  try {
    proxy = parseProxyUrl(value);
  } catch (e) {
    if (!isRapError(e)) throw e;
    throw new RapError('RAP_PROXY', `${source}: ${e.message}`, { ...e.context, source }, { cause: e });
  }
  const envNoProxy = opts.fromEnvironment ? (NO_PROXY_ENV.map((n) => opts.env[n]).find((v) => v) ?? '') : '';
  const port = opts.target.port !== '' ? Number(opts.target.port) : opts.target.protocol === 'http:' ? 80 : 443;
  if (shouldBypass(`${opts.noProxy},${envNoProxy}`, opts.target.hostname, port)) return null;
  return proxy;
}

/** For logs and status: "http://user@host:3128", "socks5h://[::1]:1080" or "direct"; never a password. */
export function describeProxy(p: ProxySpec | null): string {
  if (!p) return 'direct';
  const scheme = p.kind === 'http' ? 'http' : p.remoteDns ? 'socks5h' : 'socks5';
  const user = p.username !== undefined ? `${encodeURIComponent(p.username)}@` : '';
  return `${scheme}://${user}${hostPort(p.host, p.port)}`;
}

/**
 * A connected TCP socket that reaches host:port, directly or through `proxy`.
 * The socket comes back paused, with any bytes the proxy sent past its answer
 * pushed back, ready for tls.connect({ socket }). Every failure is
 * RAP_PROXY naming the proxy (without password), the step and the target;
 * the socket is destroyed on every failure path.
 */
export function connectVia(proxy: ProxySpec | null, host: string, port: number, opts: ConnectOptions): Promise<Socket> {
  const targetHost = bare(host);
  const target = hostPort(targetHost, port);
  const via = describeProxy(proxy);
  if (targetHost === '' || /[\s\x00-\x1f\x7f/@]/.test(targetHost) || !Number.isInteger(port) || port < 1 || port > 65535) {
    // Also the guard against header injection into the CONNECT request line.
    return Promise.reject(new RapError('RAP_PROXY', `invalid target '${target}'`, { proxy: via, target }));
  }
  const first = proxy ?? { host: targetHost, port };
  let stage = 'connecting';
  const context = (): Record<string, unknown> => ({ proxy: via, target, stage });
  const problem = (detail: string, cause?: unknown): RapError =>
    new RapError('RAP_PROXY', `proxy ${via} ${detail}`, context(), cause === undefined ? undefined : { cause });

  return new Promise((resolve, reject) => {
    const socket = connect({ host: first.host, port: first.port, ...(opts.lookup ? { lookup: opts.lookup } : {}) });
    let settled = false;
    const finish = (err: RapError | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('error', onError);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onError = (e: Error): void => {
      if (stage === 'connecting') {
        const where = proxy ? `proxy ${via}` : target;
        finish(new RapError('RAP_PROXY', `cannot connect to ${where}: ${e.message}`, context(), { cause: e }));
      } else {
        finish(problem(`failed while ${stage}: ${e.message}`, e));
      }
    };
    socket.on('error', onError);
    const timer = setTimeout(() => {
      const msg = proxy
        ? `proxy ${via}: timed out after ${opts.timeoutMs} ms ${stage === 'connecting' ? 'connecting' : stage} (target ${target})`
        : `timed out after ${opts.timeoutMs} ms connecting to ${target}`;
      finish(new RapError('RAP_PROXY', msg, context()));
    }, opts.timeoutMs);

    socket.once('connect', () => {
      if (!proxy) return finish(null);
      const reader = handshakeReader(socket, () => problem(`closed the connection while ${stage}`));
      const setStage = (s: string): void => {
        stage = s;
      };
      const handshake =
        proxy.kind === 'http'
          ? httpConnect(socket, reader, proxy, targetHost, port, setStage, problem)
          : socks5Connect(socket, reader, proxy, targetHost, port, setStage, problem, opts.lookup ?? dnsLookup);
      handshake.then(
        () => {
          reader.release();
          finish(null);
        },
        (e: unknown) => finish(isRapError(e) ? e : problem(`failed while ${stage}: ${errorMessage(e)}`, e)),
      );
    });
  });
}

type SetStage = (stage: string) => void;
type Problem = (detail: string, cause?: unknown) => RapError;

async function httpConnect(
  socket: Socket,
  reader: HandshakeReader,
  proxy: ProxySpec,
  host: string,
  port: number,
  setStage: SetStage,
  problem: Problem,
): Promise<void> {
  const authority = hostPort(host, port);
  const lines = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`];
  if (proxy.username !== undefined) {
    const token = Buffer.from(`${proxy.username}:${proxy.password ?? ''}`, 'utf8').toString('base64');
    lines.push(`Proxy-Authorization: Basic ${token}`);
  }
  setStage(`waiting for the answer to CONNECT ${authority}`);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const head = await reader.read((buf) => {
    // Fail on the first bytes of a non-HTTP answer instead of waiting for a blank line that never comes.
    const probe = buf.subarray(0, 5).toString('latin1');
    if (!'HTTP/'.startsWith(probe)) return problem(`answered something that is not HTTP to CONNECT ${authority}: ${printable(buf)}`);
    const end = buf.indexOf('\r\n\r\n');
    if (end >= 0) return end + 4;
    if (buf.length > MAX_HTTP_HEAD) return problem(`answered CONNECT ${authority} with more than ${MAX_HTTP_HEAD} bytes of headers`);
    return -1;
  });
  const status = /^HTTP\/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n/.exec(head.toString('latin1'));
  if (!status) throw problem(`answered something that is not HTTP to CONNECT ${authority}: ${printable(head)}`);
  const code = Number(status[1]);
  if (code >= 200 && code <= 299) return;
  const reason = status[2] ? ` ${clean(status[2])}` : '';
  let hint = '';
  if (code === 407 && proxy.username === undefined) hint = ' (the proxy URL has no user name and password)';
  // tinyproxy before 1.11.2 answers wrong proxy credentials with 401
  // (tinyproxy/tinyproxy#532); from a proxy it means the same as 407.
  if (code === 401 && proxy.username !== undefined) hint = ' (the proxy rejected the user name and password)';
  throw problem(`answered ${code}${reason} to CONNECT ${authority}${hint}`);
}

// RFC 1928 section 6.
const SOCKS_REPLIES: Record<number, string> = {
  0x01: 'general SOCKS server failure',
  0x02: 'connection not allowed by ruleset',
  0x03: 'network unreachable',
  0x04: 'host unreachable',
  0x05: 'connection refused',
  0x06: 'TTL expired',
  0x07: 'command not supported',
  0x08: 'address type not supported',
};
const SOCKS_METHODS: Record<number, string> = { 0x00: 'no authentication', 0x01: 'GSSAPI', 0x02: 'username/password' };

async function socks5Connect(
  socket: Socket,
  reader: HandshakeReader,
  proxy: ProxySpec,
  host: string,
  port: number,
  setStage: SetStage,
  problem: Problem,
  lookup: LookupFunction,
): Promise<void> {
  const target = hostPort(host, port);
  const methods = proxy.username !== undefined ? [0x00, 0x02] : [0x00];
  setStage('waiting for the SOCKS5 method selection');
  socket.write(Buffer.from([0x05, methods.length, ...methods]));
  const [ver, method] = await reader.read(exactly(2));
  if (ver !== 0x05) throw problem(`answered something that is not SOCKS5 (first byte ${hex(ver!)})`);
  if (method === 0xff) {
    const offered = methods.map((m) => SOCKS_METHODS[m]).join(', ');
    const hint = proxy.username === undefined ? '; the proxy URL has no user name and password' : '';
    throw problem(`accepts none of the offered SOCKS5 authentication methods (${offered})${hint}`);
  }
  if (!methods.includes(method!)) throw problem(`chose SOCKS5 authentication method ${hex(method!)}, which was not offered`);

  if (method === 0x02) {
    // RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD.
    const user = Buffer.from(proxy.username ?? '', 'utf8');
    const pass = Buffer.from(proxy.password ?? '', 'utf8');
    setStage('waiting for the SOCKS5 username/password check');
    socket.write(Buffer.concat([Buffer.from([0x01, user.length]), user, Buffer.from([pass.length]), pass]));
    const [aver, status] = await reader.read(exactly(2));
    if (aver !== 0x01) throw problem(`answered the username/password request with version ${hex(aver!)}, expected 0x01`);
    if (status !== 0x00) {
      throw problem(`rejected user name '${proxy.username}' and its password (RFC 1929 status ${hex(status!)})`);
    }
  }

  let address: Buffer;
  const family = isIP(host);
  if (family === 4) address = Buffer.from([0x01, ...ipv4Bytes(host)]);
  else if (family === 6) address = Buffer.from([0x04, ...ipv6Bytes(host)]);
  else if (proxy.kind === 'socks5' && proxy.remoteDns) {
    const name = Buffer.from(host, 'utf8');
    if (name.length > 255) throw problem(`cannot carry host name '${host}' (longer than 255 bytes)`);
    address = Buffer.concat([Buffer.from([0x03, name.length]), name]);
  } else {
    // socks5:// resolves here; socks5h:// leaves names to the proxy (split-horizon DNS).
    setStage(`resolving ${host} for the SOCKS5 request`);
    const ip = await resolveOne(lookup, host).catch((e: unknown) => {
      throw problem(`cannot be given an address for ${host}: ${errorMessage(e)} (socks5h:// lets the proxy resolve names)`, e);
    });
    address = isIP(ip) === 6 ? Buffer.from([0x04, ...ipv6Bytes(ip)]) : Buffer.from([0x01, ...ipv4Bytes(ip)]);
  }
  setStage(`waiting for the SOCKS5 answer to CONNECT ${target}`);
  socket.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00]), address, Buffer.from([port >> 8, port & 0xff])]));
  // VER REP first: a refusing server may close right after them.
  const [rver, rep] = await reader.read(exactly(2));
  if (rver !== 0x05) throw problem(`answered CONNECT ${target} with something that is not SOCKS5 (first byte ${hex(rver!)})`);
  if (rep !== 0x00) {
    const name = SOCKS_REPLIES[rep!] ?? 'unassigned reply code';
    throw problem(`answered ${hex(rep!)} (${name}) to CONNECT ${target}`);
  }
  // RSV ATYP BND.ADDR BND.PORT: read to the end so nothing of it reaches TLS.
  const [, atyp] = await reader.read(exactly(2));
  let rest: number;
  if (atyp === 0x01) rest = 4 + 2;
  else if (atyp === 0x04) rest = 16 + 2;
  else if (atyp === 0x03) rest = (await reader.read(exactly(1)))[0]! + 2;
  else throw problem(`answered CONNECT ${target} with unknown address type ${hex(atyp!)}`);
  await reader.read(exactly(rest));
}

function resolveOne(lookup: LookupFunction, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    lookup(host, {}, (err, address) => {
      if (err) return reject(err);
      const ip = typeof address === 'string' ? address : address[0]?.address;
      if (!ip || !isIP(ip)) return reject(new Error(`lookup gave no address`));
      resolve(ip);
    });
  });
}

interface HandshakeReader {
  /** Resolves with the bytes `take` accepts: it returns how many, -1 for "need more", or an error. */
  read(take: (buf: Buffer) => number | Error): Promise<Buffer>;
  /** Hands the socket back: our listeners off, paused, read-ahead bytes pushed back. */
  release(): void;
}

const exactly =
  (n: number) =>
  (buf: Buffer): number =>
    buf.length >= n ? n : -1;

function handshakeReader(socket: Socket, closed: () => Error): HandshakeReader {
  let buf: Buffer = Buffer.alloc(0);
  let ended = false;
  let pending: { take: (b: Buffer) => number | Error; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  const pump = (): void => {
    if (!pending) return;
    const p = pending;
    const n = p.take(buf);
    if (n instanceof Error) {
      pending = null;
      p.reject(n);
    } else if (n >= 0) {
      pending = null;
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      p.resolve(out);
    } else if (ended) {
      pending = null;
      p.reject(closed());
    }
  };
  const onData = (b: Buffer): void => {
    buf = buf.length === 0 ? b : Buffer.concat([buf, b]);
    pump();
  };
  const onEnd = (): void => {
    ended = true;
    pump();
  };
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('close', onEnd);
  return {
    read: (take) =>
      new Promise((resolve, reject) => {
        pending = { take, resolve, reject };
        pump();
      }),
    release: () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      // Removing the listener does not stop a flowing stream; pause first, so
      // no chunk is emitted to nobody before the TLS layer takes over.
      socket.pause();
      if (buf.length > 0) socket.unshift(buf);
    },
  };
}

/** "[::1]" -> "::1"; anything else unchanged. */
function bare(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

function canonicalIp(ip: string): string {
  return isIP(ip) === 6 ? bare(new URL(`http://[${ip}]/`).hostname) : ip;
}

function ipv4Bytes(ip: string): number[] {
  return ip.split('.').map(Number);
}

function ipv6Bytes(ip: string): number[] {
  // Canonical form first (lower case, "::" compressed, embedded IPv4 as hex).
  const canon = canonicalIp(ip.replace(/%.*$/, ''));
  const [head = '', tail] = canon.split('::');
  const groups = (s: string | undefined): string[] => (s ? s.split(':') : []);
  const h = groups(head);
  const t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return all.flatMap((g) => {
    const v = parseInt(g, 16);
    return [v >> 8, v & 0xff];
  });
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

/** Peer text, safe inside a one-line message: printable ASCII, at most 60 characters. */
function clean(s: string): string {
  const shown = s.slice(0, 60).replace(/[^\x20-\x7e]/g, '.');
  return s.length > 60 ? `${shown}...` : shown;
}

/** A peer's bytes, quoted, for "answered something that is not ...". */
function printable(b: Buffer): string {
  return JSON.stringify(clean(b.subarray(0, 61).toString('latin1')));
}
