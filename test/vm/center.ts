// A rap-center on the host for VM tests, with a test PKI made at test time:
// the guest reaches it through QEMU guestfwd at CENTER_IN_GUEST.

import type { Test } from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCenter } from '../../src/center/server.ts';
import { createLogger } from '../../src/lib/log.ts';
import { makePki } from '../integration/helpers.ts';

/** Where the guest reaches the test's rap-center (guestfwd to a host loopback port). */
export const CENTER_IN_GUEST = '10.0.2.100:443';

export async function startVmCenter(t: Test, work: string, device: string): Promise<{ pki: string; centerDb: string; port: number }> {
  const pki = await makePki(work, { device, ips: [CENTER_IN_GUEST.split(':')[0]!] });
  const centerDb = join(work, 'center.db');
  const center = await startCenter({
    dbPath: centerDb,
    host: '127.0.0.1',
    port: 0,
    key: readFileSync(join(pki, 'server.key')),
    cert: readFileSync(join(pki, 'server.pem')),
    ca: readFileSync(join(pki, 'ca.pem')),
    log: createLogger({ write: () => {}, syslogPrefix: false }),
  });
  t.teardown(() => center.close());
  return { pki, centerDb, port: center.port };
}
