// rap-center's side of remote sessions: the real `openvpn` in server mode.
// `vpn init` renders its config from the center's PKI (the same server
// certificate and CA as the HTTPS ingest) and makes the tls-crypt key, which
// is copied onto each box next to its device certificate; `vpn serve` runs
// it in the foreground. Same cipher lists as the boxes' clients.

import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError } from '../lib/errors.ts';
import { formatIPv4, parseCidr, subnetOf } from '../lib/ipv4.ts';
import type { Runner } from '../lib/run.ts';
import { vpnTlsPolicy } from '../rapd/openvpn.ts';
import { pkiPaths } from './pki.ts';

export interface VpnServerSpec {
  listenHost: string;
  listenPort: number;
  /** Tunnel subnet; the server takes its first address, boxes get the others. */
  subnet: string;
  dev: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  tlsCryptFile: string;
  /** Management socket (unix) for status; null: none. */
  managementSocket: string | null;
}

export function vpnPaths(dir: string): { config: string; tlsCrypt: string } {
  return { config: join(dir, 'server.conf'), tlsCrypt: join(dir, 'tls-crypt.key') };
}

/** Dotted netmask of a prefix length. */
function netmask(prefix: number): string {
  return formatIPv4((0xffffffff << (32 - prefix)) >>> 0);
}

export function renderServerConfig(s: VpnServerSpec): string {
  const net = parseCidr(s.subnet);
  if (!net || net.prefix < 8 || net.prefix > 29) throw new RapError('RAP_USAGE', `--subnet '${s.subnet}': expected an IPv4 subnet a.b.c.d/8 to /29`);
  const base = formatIPv4(subnetOf(net.address, net.prefix).network);
  return [
    '# rap-center OpenVPN server for remote sessions, rendered by `rap-center vpn init`.',
    `local ${s.listenHost}`,
    `port ${s.listenPort}`,
    'proto tcp-server',
    `dev ${s.dev}`,
    'dev-type tun',
    'topology subnet',
    `server ${base} ${netmask(net.prefix)}`,
    `ca ${s.caFile}`,
    `cert ${s.certFile}`,
    `key ${s.keyFile}`,
    `tls-crypt ${s.tlsCryptFile}`,
    // ECDHE only: no finite-field DH parameters.
    'dh none',
    'verify-client-cert require',
    ...vpnTlsPolicy('client'),
    // Boxes never talk to each other through the center.
    'script-security 1',
    // Not `keepalive`: it would push ping-restart to the boxes, whose clients end on ping-exit instead.
    'ping 5',
    'ping-restart 30',
    ...(s.managementSocket ? [`management ${s.managementSocket} unix`] : []),
    'verb 3',
    '',
  ].join('\n');
}

/** Writes DIR/server.conf and a fresh DIR/tls-crypt.key (refuses to overwrite the key). */
export async function vpnInit(
  dir: string,
  opts: { pki: string; listenHost: string; listenPort: number; subnet: string; dev: string },
  deps: { run: Runner },
): Promise<{ config: string; tlsCrypt: string }> {
  const p = pkiPaths(resolve(opts.pki));
  for (const f of [p.caCert, p.serverCert, p.serverKey]) {
    if (!existsSync(f)) throw new RapError('RAP_PKI', `${f} is missing: run rap-center pki init and pki issue-server first`);
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const out = vpnPaths(resolve(dir));
  if (existsSync(out.tlsCrypt)) throw new RapError('RAP_PKI', `${out.tlsCrypt} exists; refusing to replace the key every box holds`);
  const config = renderServerConfig({
    listenHost: opts.listenHost,
    listenPort: opts.listenPort,
    subnet: opts.subnet,
    dev: opts.dev,
    caFile: p.caCert,
    certFile: p.serverCert,
    keyFile: p.serverKey,
    tlsCryptFile: out.tlsCrypt,
    managementSocket: null,
  });
  await deps.run(['openvpn', '--genkey', 'tls-crypt', out.tlsCrypt], { timeoutMs: 30_000 });
  writeFileDurable(out.config, config, 0o600);
  return out;
}
