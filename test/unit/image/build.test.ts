import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelCmdline, parseDu, readPackageList, ukiName } from '../../../image/build.ts';
import { placePartitions } from '../../../image/layout.ts';

t.test('package list: comments and blanks dropped, names checked', async (t) => {
  t.same(readPackageList('# c\nsystemd-sysv   # init\n\nlinux-image-amd64\n'), ['systemd-sysv', 'linux-image-amd64']);
  t.throws(() => readPackageList('ok\nrm -rf /\n'), { message: /line 2: 'rm -rf \/' is not a Debian package name/ });
  const shipped = readPackageList(readFileSync(join(import.meta.dirname, '../../../image/packages.txt'), 'utf8'));
  t.ok(shipped.includes('systemd-boot-efi') && shipped.includes('linux-image-amd64'));
});

t.test('each slot boots its verified root: the cmdline names the slot partition, root hash and hash offset', async (t) => {
  const [a] = placePartitions([{ label: 'rapbox-root-a', type: 'root-x86-64', sizeMiB: 1, uuid: 'ABCD-EF' }]);
  const hash = 'ab'.repeat(32);
  t.equal(
    kernelCmdline(a!, 'a', { rootHash: hash, hashOffset: 8192 }),
    `root=/dev/mapper/root rootfstype=squashfs ro rapbox.verity.data=PARTUUID=abcd-ef rapbox.verity.roothash=${hash} ` +
      'rapbox.verity.hashoffset=8192 rapbox.slot=a console=ttyS0,115200 systemd.gpt_auto=0 panic=10',
  );
  t.equal(ukiName('b'), 'rapbox-b.efi');
});

t.test('the initrd script reads exactly the parameters the cmdline sets', async (t) => {
  const script = readFileSync(join(import.meta.dirname, '../../../image/initramfs/scripts/local-top/rapbox-verity'), 'utf8');
  for (const p of ['rapbox.verity.data=PARTUUID=', 'rapbox.verity.roothash=', 'rapbox.verity.hashoffset=']) t.match(script, p);
  t.match(script, /--panic-on-corruption/);
});

t.test('du output becomes paths inside the tree', async (t) => {
  t.same(parseDu('123\t/out/rootfs/usr/lib/modules\n9\t/out/rootfs\nnoise\n', '/out/rootfs'), [
    { bytes: 123, path: '/usr/lib/modules' },
    { bytes: 9, path: '/' },
  ]);
});
