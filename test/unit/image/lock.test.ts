import t from 'tap';
import { lockMismatches, parseInstalled, parseLock, renderLock, renderPreferences } from '../../../image/lock.ts';

t.test('parse and render round-trip, sorted', async (t) => {
  const lock = parseLock('# c\nzstd 1.5.7+dfsg-1\nlibc6 2.41-12\n\n');
  t.same([...lock], [['zstd', '1.5.7+dfsg-1'], ['libc6', '2.41-12']]);
  t.equal(renderLock(lock, 'trixie').split('\n').slice(1).join('\n'), 'libc6 2.41-12\nzstd 1.5.7+dfsg-1\n');
  t.same(parseLock(renderLock(lock, 'trixie')), lock);
});

t.test('bad lock lines name the line', async (t) => {
  t.throws(() => parseLock('libc6\n'), { message: /line 1: expected "package version", got "libc6"/ });
  t.throws(() => parseLock('ab 1\nab 2\n'), { message: /line 2: ab is listed twice/ });
});

t.test('preferences pin each version above everything', async (t) => {
  t.equal(renderPreferences(parseLock('libc6 2.41-12\nzstd 1.5.7\n')), 'Package: libc6\nPin: version 2.41-12\nPin-Priority: 1001\n\nPackage: zstd\nPin: version 1.5.7\nPin-Priority: 1001\n');
});

t.test('mismatches: moved version, missing, extra', async (t) => {
  const lock = parseLock('libc6 2.41-12\nzstd 1.5.7\nold 1.0\n');
  const installed = parseInstalled('libc6 2.41-13\nzstd 1.5.7\nnew 2.0\n');
  t.same(lockMismatches(lock, installed), [
    'libc6: locked 2.41-12, installed 2.41-13 (the mirror no longer has 2.41-12?)',
    'old 1.0 is locked but was not installed',
    'new 2.0 was installed but is not in the lock',
  ]);
  t.same(lockMismatches(lock, lock), []);
});
