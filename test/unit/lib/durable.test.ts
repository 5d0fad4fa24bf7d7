import t from 'tap';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurable } from '../../../src/lib/durable.ts';

t.test('replaces the file whole, owner-only, leaves no temp file', async (t) => {
  const dir = t.testdir({ 'state.json': 'old' });
  writeFileDurable(join(dir, 'state.json'), 'new');
  t.equal(readFileSync(join(dir, 'state.json'), 'utf8'), 'new');
  t.equal(statSync(join(dir, 'state.json')).mode & 0o777, 0o600);
  t.same(readdirSync(dir), ['state.json']);
});

t.test('a missing directory fails and leaves nothing behind', async (t) => {
  const dir = t.testdir({});
  t.throws(() => writeFileDurable(join(dir, 'no/such/file'), 'x'), { code: 'ENOENT' });
  t.same(readdirSync(dir), []);
});

t.test('the mode asked for is the mode made, whatever the umask (rapd runs with UMask=0077)', async (t) => {
  const dir = t.testdir({});
  const old = process.umask(0o077);
  try {
    writeFileDurable(join(dir, 'for-networkd.network'), '[Match]\n', 0o644);
  } finally {
    process.umask(old);
  }
  t.equal(statSync(join(dir, 'for-networkd.network')).mode & 0o777, 0o644);
});
