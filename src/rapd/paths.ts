// Every host path rapd touches comes from here, so tests can point the whole
// daemon at a temporary tree.

import { join } from 'node:path';
import type { Config } from './config.ts';

export interface Paths {
  /** Durable state on the data partition. */
  state: string;
  /** Owner-only runtime directory (tmpfs). */
  runtime: string;
  /** The store-and-forward queue (SQLite, WAL). */
  queueDb: string;
  /** The hash-chained audit log (JSON lines, append-only; src/rapd/audit.ts). */
  auditLog: string;
  /** The control socket rapctl talks to. */
  controlSocket: string;
  /** The kernel command line (boot slot). */
  procCmdline: string;
  /** systemd-networkd's runtime directory for the instrument ports' .network files. */
  networkd: string;
  /** systemd-timesyncd's runtime drop-in directory (the WAN's NTP servers). */
  timesyncd: string;
  /** IPv4 forwarding: on only while a remote session is active. */
  ipForward: string;
  /** /proc, to check that a leftover PID is still an openvpn. */
  proc: string;
  /** The instruments' "never" answers to remote-session requests. */
  sessionRefusals: string;
  /** A session VPN's runtime files: config, management socket, PID file, proxy credentials. */
  vpnFile(dev: string, ext: 'conf' | 'sock' | 'pid' | 'auth'): string;
}

export const DEFAULT_CONTROL_SOCKET = '/run/rapd/rapd.sock';

export function pathsFromConfig(config: Config, procRoot = '/proc'): Paths {
  return {
    state: config['paths.state'],
    runtime: config['paths.runtime'],
    controlSocket: join(config['paths.runtime'], 'rapd.sock'),
    queueDb: join(config['paths.state'], 'queue.db'),
    auditLog: join(config['paths.state'], 'audit.log'),
    procCmdline: join(procRoot, 'cmdline'),
    networkd: config['paths.networkd'],
    timesyncd: config['paths.timesyncd'],
    ipForward: join(procRoot, 'sys/net/ipv4/ip_forward'),
    proc: procRoot,
    sessionRefusals: join(config['paths.state'], 'session-refusals.json'),
    vpnFile: (dev, ext) => join(config['paths.runtime'], `vpn-${dev}.${ext}`),
  };
}

/**
 * Provisioning (provision.ts): where the factory leaves a bundle on the data
 * partition (/var), where it goes once applied or rejected, and the two
 * config files it is merged from and into. `root` is "/" on the box.
 */
export interface ProvisionPaths {
  /** The pending bundle the factory wrote (docs/provisioning.md). */
  bundle: string;
  /** The last applied bundle, secrets removed: "consumed", never applied again. */
  applied: string;
  /** The last rejected bundle, kept as it came for diagnosis, with reason.txt. */
  rejected: string;
  /** The image's factory configuration (read-only root). */
  factoryConfig: string;
  /** The site configuration rapd.service runs with (data partition). */
  siteConfig: string;
}

export function provisionPaths(root = '/'): ProvisionPaths {
  return {
    bundle: join(root, 'var/lib/rapbox/provision'),
    applied: join(root, 'var/lib/rapbox/provision.applied'),
    rejected: join(root, 'var/lib/rapbox/provision.rejected'),
    factoryConfig: join(root, 'etc/rapd/rapd.json'),
    siteConfig: join(root, 'var/lib/rapd/rapd.json'),
  };
}
