// Real proxies for tests, from Debian packages: tinyproxy (HTTP CONNECT with
// Basic auth) and dante's danted (SOCKS5), each run in the foreground from a
// config generated in a temp dir, listening on 127.0.0.1 only, and stopped by
// pid at teardown.

import { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const TINYPROXY = '/usr/bin/tinyproxy';
export const DANTED = '/usr/sbin/danted';
/** Bound for every single wait in this file. */
export const WAIT_MS = 10_000;

export function requireBinary(path: string, pkg: string): void {
  if (!existsSync(path)) throw new Error(`${path} is missing (Debian package ${pkg}): run image/deps.sh integration`);
}

export function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'rap-proxy-it-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A port that was free a moment ago (bound to 127.0.0.1, then released). */
export async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => done(false), 1000);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

export interface Daemon {
  pid: number;
  /** Its stdout and stderr so far. */
  log: () => string;
}

/**
 * Starts a proxy in the foreground, waits (bounded) until `port` accepts, and
 * stops it at teardown: SIGTERM to its pid, SIGKILL if it is still there.
 */
export async function startDaemon(t: Test, argv: string[], port: number): Promise<Daemon> {
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
  });
  let log = '';
  child.stdout.on('data', (b: Buffer) => (log += b.toString()));
  child.stderr.on('data', (b: Buffer) => (log += b.toString()));
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.on('exit', () => {
      exited = true;
      resolve();
    }),
  );
  child.on('error', (e) => (log += `spawn failed: ${e.message}\n`));
  t.teardown(async () => {
    if (exited) return;
    child.kill('SIGTERM');
    await Promise.race([exit, new Promise((r) => setTimeout(r, 5000))]);
    if (!exited) child.kill('SIGKILL');
  });
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (exited) throw new Error(`${argv[0]} exited before listening on ${port}:\n${log}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new Error(`${argv[0]} not listening on 127.0.0.1:${port} after ${WAIT_MS} ms:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { pid: child.pid!, log: () => log };
}

export async function startTinyproxy(t: Test, opts: { user: string; pass: string; connectPort: number }): Promise<{ port: number; daemon: Daemon }> {
  requireBinary(TINYPROXY, 'tinyproxy');
  const dir = tempDir(t);
  const port = await freePort();
  const conf = join(dir, 'tinyproxy.conf');
  // -d keeps it in the foreground and, with no LogFile or Syslog, logging to stderr.
  writeFileSync(
    conf,
    [
      `Port ${port}`,
      'Listen 127.0.0.1',
      'Timeout 30',
      'MaxClients 8',
      'LogLevel Info',
      'Allow 127.0.0.1',
      `BasicAuth ${opts.user} ${opts.pass}`,
      // Only the test's TLS server: a CONNECT anywhere else is refused by the proxy itself.
      `ConnectPort ${opts.connectPort}`,
      '',
    ].join('\n'),
  );
  const daemon = await startDaemon(t, [TINYPROXY, '-d', '-c', conf], port);
  return { port, daemon };
}

export async function startDanted(t: Test, opts: { blockPort?: number } = {}): Promise<{ port: number; daemon: Daemon }> {
  requireBinary(DANTED, 'dante-server');
  const dir = tempDir(t);
  const port = await freePort();
  const conf = join(dir, 'danted.conf');
  writeFileSync(
    conf,
    [
      'logoutput: stderr',
      `internal: 127.0.0.1 port = ${port}`,
      'external: 127.0.0.1',
      'clientmethod: none',
      'socksmethod: none',
      'client pass {',
      '  from: 127.0.0.1/32 to: 0.0.0.0/0',
      '}',
      ...(opts.blockPort
        ? ['socks block {', `  from: 127.0.0.1/32 to: 127.0.0.1/32 port = ${opts.blockPort}`, '  command: connect', '}']
        : []),
      // Loopback only: the proxy cannot be used to reach anything else.
      'socks pass {',
      '  from: 127.0.0.1/32 to: 127.0.0.1/32',
      '  command: connect',
      '}',
      '',
    ].join('\n'),
  );
  const daemon = await startDaemon(t, [DANTED, '-f', conf, '-p', join(dir, 'danted.pid')], port);
  return { port, daemon };
}

