// How rapd reaches rap-center, for the uplink and the command channel alike:
// the pinned CA and the device certificate (mutual TLS, the shared TLS
// policy), and a raw path to the center through the site's proxy (HTTP
// CONNECT or SOCKS5) or direct, with TLS run over it by us, so a proxy only
// ever carries ciphertext.

import { readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { RapError, errorMessage } from '../lib/errors.ts';
import { connectVia, type ProxySpec } from '../lib/proxy.ts';
import { TLS_POLICY } from '../protocol/tls.ts';
import type { Config } from './config.ts';

/** TLS options for a connection to the center; throws `code` naming an unreadable file. */
export function centerTlsOptions(cfg: Config, code: 'RAP_UPLINK' | 'RAP_CHANNEL', part: string): ConnectionOptions {
  const read = (key: 'center.caFile' | 'tls.certFile' | 'tls.keyFile'): Buffer => {
    try {
      return readFileSync(cfg[key]);
    } catch (e) {
      throw new RapError(code, `${part}: cannot read ${key} ${cfg[key]}: ${errorMessage(e)}`, { key }, { cause: e });
    }
  };
  return {
    // Pinned: only the center's CA, not the system trust store.
    ca: read('center.caFile'),
    cert: read('tls.certFile'),
    key: read('tls.keyFile'),
    ...TLS_POLICY,
  };
}

export type CreateConnection = (options: unknown, cb: (err: Error | null, sock?: Socket) => void) => undefined;

/**
 * A `createConnection` for node:https agents and `ws`: proxy door (or
 * direct) to the target's host and port, then mutual TLS. `track` sees each
 * raw socket (for wire byte counts).
 */
export function centerConnector(target: URL, proxy: ProxySpec | null, tls: ConnectionOptions, timeoutMs: number, track?: (raw: Socket) => void): CreateConnection {
  const port = Number(target.port || 443);
  // SNI carries names only (RFC 6066); an IP target is still verified against the certificate's IP SANs.
  const host = target.hostname.replace(/^\[|\]$/g, '');
  return (_options, cb) => {
    connectVia(proxy, target.hostname, port, { timeoutMs }).then(
      (raw) => {
        track?.(raw);
        cb(null, tlsConnect({ ...tls, socket: raw, host, ...(isIP(host) ? {} : { servername: host }) }));
      },
      (e: unknown) => cb(e as Error),
    );
    return undefined;
  };
}
