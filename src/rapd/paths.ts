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
  };
}
