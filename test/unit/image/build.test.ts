import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelCmdline, loaderEntry, parseDu, readPackageList } from '../../../image/build.ts';
import { placePartitions } from '../../../image/layout.ts';

t.test('package list: comments and blanks dropped, names checked', async (t) => {
  t.same(readPackageList('# c\nsystemd-sysv   # init\n\nlinux-image-amd64\n'), ['systemd-sysv', 'linux-image-amd64']);
  t.throws(() => readPackageList('ok\nrm -rf /\n'), { message: /line 2: 'rm -rf \/' is not a Debian package name/ });
  const shipped = readPackageList(readFileSync(join(import.meta.dirname, '../../../image/packages.txt'), 'utf8'));
  t.ok(shipped.includes('systemd-boot-efi') && shipped.includes('linux-image-amd64'));
});

t.test('boot entry per slot names its root by PARTUUID, read-only, and its slot', async (t) => {
  const [a] = placePartitions([{ label: 'rapbox-root-a', type: 'root-x86-64', sizeMiB: 1, uuid: 'ABCD-EF' }]);
  const cmdline = kernelCmdline(a!, 'a');
  t.equal(
    cmdline,
    'root=PARTUUID=abcd-ef rootfstype=squashfs ro rapbox.slot=a console=ttyS0,115200 systemd.gpt_auto=0 panic=10',
  );
  t.equal(
    loaderEntry('a', '6.12.1', cmdline),
    `title rapbox (slot A)\nversion 6.12.1\nlinux /rapbox/a/vmlinuz\ninitrd /rapbox/a/initrd.img\noptions ${cmdline}\n`,
  );
});

t.test('du output becomes paths inside the tree', async (t) => {
  t.same(parseDu('123\t/out/rootfs/usr/lib/modules\n9\t/out/rootfs\nnoise\n', '/out/rootfs'), [
    { bytes: 123, path: '/usr/lib/modules' },
    { bytes: 9, path: '/' },
  ]);
});
