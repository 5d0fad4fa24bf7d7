import t from 'tap';
import { listFilePackage, renderHeadline, renderSizeReport, sizesByPackage, type Sizes } from '../../../image/size-report.ts';

t.test('dpkg list files name their package, other info files are skipped', async (t) => {
  t.equal(listFilePackage('bash.list'), 'bash');
  t.equal(listFilePackage('libc6:amd64.list'), 'libc6');
  t.equal(listFilePackage('libstdc++6:amd64.list'), 'libstdc++6');
  t.equal(listFilePackage('bash.md5sums'), null);
  t.equal(listFilePackage('bash.postinst'), null);
});

t.test('bytes per package: each file once (hard links, /lib via usr/lib), the rest is not from a package', async (t) => {
  const files: Record<string, { ino: number; bytes: number }> = {
    '/usr/bin/perl': { ino: 1, bytes: 4000 },
    '/usr/bin/perl5.40': { ino: 1, bytes: 4000 },
    '/usr/lib/libc.so.6': { ino: 2, bytes: 2000 },
    '/lib/libc.so.6': { ino: 2, bytes: 2000 },
    '/usr/bin/rapd': { ino: 3, bytes: 100000 },
    '/etc/rapd/rapd.json': { ino: 4, bytes: 10 },
  };
  const lists = new Map([
    ['perl-base', ['/.', '/usr/bin', '/usr/bin/perl', '/usr/bin/perl5.40', '/usr/share/doc/perl-base/README']],
    ['libc6', ['/lib/libc.so.6', '/usr/lib/libc.so.6']],
  ]);
  const all = Object.entries(files).map(([path, f]) => ({ path, ...f }));
  const r = sizesByPackage(lists, all, (p) => files[p] ?? null);
  t.same(r.packages, [
    { name: '(not from a package)', bytes: 100010 },
    { name: 'perl-base', bytes: 4000 },
    { name: 'libc6', bytes: 2000 },
  ]);
  t.same(r.unowned, [
    { name: '/usr/bin/rapd', bytes: 100000 },
    { name: '/etc/rapd/rapd.json', bytes: 10 },
  ]);
});

const SIZES: Sizes = {
  rootSlotBytes: 80 * 1024 ** 2,
  squashfsBytes: 79 * 1024 ** 2,
  hashTreeBytes: 1024 ** 2,
  ukiBytes: 20 * 1024 ** 2,
  kernelBytes: 12 * 1024 ** 2,
  initrdBytes: 7 * 1024 ** 2,
  rapdBytes: 104 * 1024 ** 2,
  imageBytes: 1700 * 1024 ** 2,
  imageZstBytes: 110 * 1024 ** 2,
  otaPayloadBytes: 99 * 1024 ** 2,
  treeBytes: 200 * 1024 ** 2,
};

t.test('headline and report carry the OTA payload, slot, UKI parts, and the breakdowns', async (t) => {
  const h = renderHeadline(SIZES);
  t.match(h, /99\.0 MiB {2}OTA payload .*103809024 bytes/);
  t.match(h, /80\.0 MiB {2}root slot \(squashfs 79\.0 MiB \+ hash tree 1\.0 MiB\)/);
  t.match(h, /UKI per slot \(kernel 12\.0 MiB, initrd 7\.0 MiB\)/);
  const pk = Array.from({ length: 30 }, (_, i) => ({ name: `p${i}`, bytes: 1000 - i }));
  const r = renderSizeReport(SIZES, pk, [{ name: '/usr/bin/rapd', bytes: 104 * 1024 ** 2 }], [{ path: '/usr/lib/modules', bytes: 5 * 1024 ** 2 }], 25);
  t.match(r, /p24\n/);
  t.notMatch(r, /p25\n/);
  t.match(r, /4\.8 KiB {2}5 more packages/);
  t.match(r, /5\.0 MiB {2}\/usr\/lib\/modules/);
  t.match(r, /not from a package[^\n]*\n {3}104\.0 MiB {2}\/usr\/bin\/rapd/);
});
