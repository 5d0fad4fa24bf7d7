import t from 'tap';
import { MINIMAL_PACKAGES, minimalCmdline, versionsOffLock } from '../../../image/minimal.ts';
import { readPackageList } from '../../../image/build.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

t.test('the bare image installs only locked versions (a subset of the lock is fine)', async (t) => {
  const lock = new Map([
    ['systemd', '257.9-1'],
    ['linux-image-amd64', '6.12.117-1'],
    ['nftables', '1.1.3-1'],
  ]);
  t.same(versionsOffLock(lock, new Map([['systemd', '257.9-1'], ['linux-image-amd64', '6.12.117-1']])), []);
  t.same(versionsOffLock(lock, new Map([['systemd', '257.10-1'], ['libfoo1', '2.0']])), [
    'systemd 257.10-1 (locked: 257.9-1)',
    'libfoo1 2.0 (locked: not in the lock)',
  ]);
});

t.test('the bare image boots the same kernel package with the same console', async (t) => {
  t.equal(minimalCmdline('ABCD-EF'), 'root=PARTUUID=abcd-ef rw console=ttyS0,115200 panic=10');
  const rapbox = readPackageList(readFileSync(join(import.meta.dirname, '../../../image/packages.txt'), 'utf8'));
  for (const p of MINIMAL_PACKAGES) t.ok(rapbox.includes(p), `${p} is in rapbox's package list too (so it is locked)`);
});
