// The OpenVPN client of a remote session: the real Debian `openvpn`, started
// by rapd as a supervised child through the one subprocess door, one per
// session, each with its own tun interface. rapd watches and stops it over
// its management interface on a unix socket (never TCP: nothing on the box
// may listen on a network for it).
//
// The configuration is rendered purely from the session and rapd's config
// (tests compare it whole). What it pins down and why:
// - outbound TCP to the center (443 by default, the port a site firewall
//   lets out), through the site's HTTP or SOCKS proxy when one is configured;
// - mutual TLS with the device certificate; the server must be the center
//   (CA pinned, `remote-cert-tls server`, `verify-x509-name`); `tls-crypt`
//   hides and authenticates the handshake, so a scanner learns nothing;
// - TLS 1.2+ with ECDHE + AES-GCM only, AES-GCM data channel only;
// - `route-nopull` and `pull-filter`: the server may set the tunnel address,
//   nothing else (no routes, no DNS, no redirect-gateway); `script-security 1`
//   and no scripts: the center cannot make the box run anything;
// - `nobind`: no local port; `writepid`: a later rapd finds and stops a
//   leftover client by that PID only (never by name).

import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { ProxySpec } from '../lib/proxy.ts';
import type { Runner } from '../lib/run.ts';

/** Ciphers the box accepts (FIPS-approved AEADs, ECDHE only); the center's server uses the same lists. */
export const VPN_DATA_CIPHERS = 'AES-256-GCM:AES-128-GCM';
export const VPN_TLS_CIPHERS = 'TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384:TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256';
export const VPN_TLS13_SUITES = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';

/** The TLS policy both ends render: the peer must hold a certificate for its role, approved suites only. */
export function vpnTlsPolicy(peer: 'server' | 'client'): string[] {
  return [
    `remote-cert-tls ${peer}`,
    'tls-version-min 1.2',
    `tls-cipher ${VPN_TLS_CIPHERS}`,
    `tls-ciphersuites ${VPN_TLS13_SUITES}`,
    `data-ciphers ${VPN_DATA_CIPHERS}`,
  ];
}

export interface VpnClientSpec {
  /** The tun interface (<= 15 characters). */
  dev: string;
  remoteHost: string;
  remotePort: number;
  /** The center's certificate CN (`verify-x509-name ... name`). */
  serverName: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  tlsCryptFile: string;
  /** The proxy to go through, or null (direct). */
  proxy: ProxySpec | null;
  /** File with the proxy's user and password (two lines), when it needs them. */
  proxyAuthFile: string | null;
  managementSocket: string;
  pidFile: string;
}

/** The whole client config file (`openvpn --config`). */
export function renderClientConfig(s: VpnClientSpec): string {
  const lines = [
    '# OpenVPN client of one remote session, rendered by rapd; rewritten per session.',
    'client',
    `dev ${s.dev}`,
    'dev-type tun',
    'proto tcp-client',
    `remote ${s.remoteHost} ${s.remotePort}`,
    'nobind',
    // One try: a session that cannot connect fails and is reported; the center asks again.
    'connect-retry-max 1',
    'connect-timeout 15',
    'resolv-retry 0',
  ];
  if (s.proxy?.kind === 'http') lines.push(`http-proxy ${s.proxy.host} ${s.proxy.port}${s.proxyAuthFile ? ` ${s.proxyAuthFile} basic` : ''}`);
  if (s.proxy?.kind === 'socks5') lines.push(`socks-proxy ${s.proxy.host} ${s.proxy.port}${s.proxyAuthFile ? ` ${s.proxyAuthFile}` : ''}`);
  lines.push(
    `ca ${s.caFile}`,
    `cert ${s.certFile}`,
    `key ${s.keyFile}`,
    `tls-crypt ${s.tlsCryptFile}`,
    ...vpnTlsPolicy('server'),
    `verify-x509-name ${s.serverName} name`,
    // The server sets our tunnel address; it may not set routes, DNS or a default gateway.
    'route-nopull',
    'pull-filter ignore "route"',
    'pull-filter ignore "redirect-gateway"',
    'pull-filter ignore "dhcp-option"',
    'pull-filter ignore "block-outside-dns"',
    'script-security 1',
    // A dead peer ends the session (VPN loss); no endless reconnecting.
    'ping 5',
    'ping-exit 30',
    `management ${s.managementSocket} unix`,
    // Start only after rapd is listening to the management socket: no state is missed.
    'management-hold',
    `writepid ${s.pidFile}`,
    'verb 3',
    '',
  );
  return lines.join('\n');
}

// --- the management interface ------------------------------------------------

export type MgmtEvent =
  | { kind: 'state'; state: string; detail: string; localIp: string | null }
  | { kind: 'bytecount'; bytesIn: number; bytesOut: number }
  | { kind: 'hold' }
  | { kind: 'fatal'; message: string }
  /** From the `status` command's statistics: bytes on the link (the same counters as BYTECOUNT). */
  | { kind: 'linkbytes'; read: boolean; bytes: number }
  | { kind: 'end' }
  | { kind: 'other'; line: string };

/** One line of the management interface; every malformed real-time line is `other` with the text. */
export function parseMgmtLine(line: string): MgmtEvent {
  let m = /^>STATE:(\d+),([A-Z_]+),([^,]*),([^,]*)/.exec(line);
  if (m) return { kind: 'state', state: m[2]!, detail: m[3]!, localIp: m[4] === '' ? null : m[4]! };
  m = /^>BYTECOUNT:(\d+),(\d+)$/.exec(line);
  if (m) return { kind: 'bytecount', bytesIn: Number(m[1]), bytesOut: Number(m[2]) };
  if (line.startsWith('>HOLD:')) return { kind: 'hold' };
  m = /^>FATAL:(.*)$/.exec(line);
  if (m) return { kind: 'fatal', message: m[1]! };
  m = /^TCP\/UDP (read|write) bytes,(\d+)$/.exec(line);
  if (m) return { kind: 'linkbytes', read: m[1] === 'read', bytes: Number(m[2]) };
  if (line === 'END') return { kind: 'end' };
  return { kind: 'other', line };
}

/** What a session sees of its VPN. */
export interface VpnHandle {
  /** Resolves with the tunnel address once CONNECTED; rejects when it cannot connect in time. */
  connected(timeoutMs: number): Promise<{ tunnelIp: string }>;
  /** Bytes through the tunnel so far (from the last BYTECOUNT). */
  bytes(): { in: number; out: number };
  /** Stop it (management `signal SIGTERM`, then a kill after the bound); resolves when it is gone. */
  stop(): Promise<void>;
  /** Called once when the client dies or drops after having connected, unless stop() was called first. */
  onLost(cb: (why: string) => void): void;
}

export interface VpnStarter {
  start(spec: VpnClientSpec): Promise<VpnHandle>;
}

const MGMT_CONNECT_MS = 10_000;
const STOP_GRACE_MS = 5_000;

/**
 * The real thing: writes the config next to the management socket, starts
 * `openvpn --config FILE` through the subprocess door and drives it over the
 * management socket.
 */
export function openvpnStarter(deps: { run: Runner; log: Logger; openvpn?: string }): VpnStarter {
  return {
    async start(spec) {
      const configFile = spec.managementSocket.replace(/\.sock$/, '.conf');
      writeFileDurable(configFile, renderClientConfig(spec), 0o600);
      rmSync(spec.managementSocket, { force: true });
      const abort = new AbortController();
      const log = deps.log.child({ part: 'openvpn', dev: spec.dev });
      let exited: string | null = null;
      let stopping = false;
      let lostCb: ((why: string) => void) | null = null;
      let tunnelIp: string | null = null;
      let bytes = { in: 0, out: 0 };
      let lastState = '';
      let statusDone = false;
      const waiters = new Set<() => void>();
      const wake = (): void => {
        for (const w of [...waiters]) w();
      };
      const lost = (why: string): void => {
        if (stopping || !lostCb) return;
        const cb = lostCb;
        lostCb = null;
        cb(why);
      };
      const child = deps.run([deps.openvpn ?? 'openvpn', '--config', configFile], { stdio: 'ignore', signal: abort.signal, onStart: (cmd) => log.debug('run', { cmd }) });
      const gone = child.then(
        () => 'exited',
        (e: unknown) => errorMessage(e),
      ).then((why) => {
        exited = why;
        rmSync(spec.pidFile, { force: true });
        log.info('openvpn exited', { why, stopping });
        wake();
        lost(`openvpn exited: ${why}`);
      });

      // The management socket appears once openvpn has read its config.
      let sock: Socket | null = null;
      const deadline = Date.now() + MGMT_CONNECT_MS;
      while (!sock && exited === null && Date.now() < deadline) {
        if (existsSync(spec.managementSocket)) {
          sock = await new Promise<Socket | null>((resolve) => {
            const s = connect(spec.managementSocket);
            s.once('connect', () => resolve(s));
            s.once('error', () => resolve(null));
          });
        }
        if (!sock) await new Promise((r) => setTimeout(r, 50));
      }
      if (!sock) {
        abort.abort();
        await gone;
        throw new RapError('RAP_VPN', `openvpn management socket ${spec.managementSocket} not up within ${MGMT_CONNECT_MS} ms${exited ? ` (openvpn ${exited})` : ''}`);
      }
      const mgmt = sock;
      mgmt.on('error', () => {});
      let buf = '';
      mgmt.on('data', (b: Buffer) => {
        buf += b.toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          const ev = parseMgmtLine(line);
          if (ev.kind === 'state') {
            log.debug('openvpn state', { state: ev.state, detail: ev.detail });
            if (ev.state === 'CONNECTED' && ev.localIp) tunnelIp = ev.localIp;
            // Once up, leaving CONNECTED (reconnecting, exiting) is a VPN loss.
            else if (lastState === 'CONNECTED' && ev.state !== 'CONNECTED') lost(`tunnel ${ev.state.toLowerCase()}${ev.detail ? ` (${ev.detail})` : ''}`);
            lastState = ev.state;
          } else if (ev.kind === 'bytecount') {
            bytes = { in: ev.bytesIn, out: ev.bytesOut };
          } else if (ev.kind === 'linkbytes') {
            bytes = ev.read ? { ...bytes, in: ev.bytes } : { ...bytes, out: ev.bytes };
          } else if (ev.kind === 'end') {
            statusDone = true;
          } else if (ev.kind === 'fatal') {
            log.warn('openvpn fatal', { message: ev.message });
          }
          wake();
        }
      });
      mgmt.on('close', () => {
        if (exited === null && !stopping) lost('management socket closed');
      });
      // Real-time state and byte counts (every second), then let it connect.
      mgmt.write('state on\nbytecount 1\nhold release\n');

      const handle: VpnHandle = {
        connected(timeoutMs) {
          return new Promise((resolve, reject) => {
            const check = (): void => {
              if (tunnelIp) {
                done();
                resolve({ tunnelIp });
              } else if (exited !== null) {
                done();
                reject(new RapError('RAP_VPN', `openvpn ended before connecting: ${exited}`));
              }
            };
            const timer = setTimeout(() => {
              done();
              reject(new RapError('RAP_VPN', `tunnel not up within ${timeoutMs} ms (last state ${lastState || 'none'})`));
            }, timeoutMs);
            const done = (): void => {
              clearTimeout(timer);
              waiters.delete(check);
            };
            waiters.add(check);
            check();
          });
        },
        bytes: () => ({ ...bytes }),
        async stop() {
          stopping = true;
          if (exited === null && !mgmt.destroyed) {
            // The final byte counts first (BYTECOUNT comes once a second; a short session may have none yet).
            statusDone = false;
            mgmt.write('status\n');
            await new Promise<void>((resolve) => {
              const check = (): void => {
                if (statusDone || exited !== null) finish();
              };
              const timer = setTimeout(() => finish(), 1000);
              const finish = (): void => {
                clearTimeout(timer);
                waiters.delete(check);
                resolve();
              };
              waiters.add(check);
            });
            mgmt.write('signal SIGTERM\n');
          }
          const timer = setTimeout(() => abort.abort(), STOP_GRACE_MS);
          await gone;
          clearTimeout(timer);
          mgmt.destroy();
          rmSync(spec.managementSocket, { force: true });
        },
        onLost(cb) {
          lostCb = cb;
        },
      };
      return handle;
    },
  };
}

/**
 * At rapd start: stop any openvpn a previous rapd left running (it crashed or
 * was killed), found only through the PID files it wrote in the runtime
 * directory, and only when that PID is still an openvpn process.
 */
export function reapStaleVpns(runtimeDir: string, procRoot: string, log: Logger, kill: (pid: number, sig: NodeJS.Signals) => void = process.kill): number[] {
  let names: string[];
  try {
    names = readdirSync(runtimeDir).filter((n) => /^vpn-.*\.pid$/.test(n));
  } catch {
    return [];
  }
  const reaped: number[] = [];
  for (const name of names) {
    const file = join(runtimeDir, name);
    const pid = Number(readFileSync(file, 'utf8').trim());
    let comm = '';
    try {
      comm = readFileSync(join(procRoot, String(pid), 'comm'), 'utf8').trim();
    } catch {
      // not running any more
    }
    if (Number.isInteger(pid) && pid > 1 && comm === 'openvpn') {
      try {
        kill(pid, 'SIGKILL');
        reaped.push(pid);
        log.warn('stopped an openvpn left by a previous rapd', { pid, pidFile: file });
      } catch (e) {
        log.warn('could not stop a leftover openvpn', { pid, error: errorMessage(e) });
      }
    }
    rmSync(file, { force: true });
  }
  return reaped;
}
