// The flash tool's refusals against a fake /sys and /proc: a disk sda (8:0)
// with partitions sda1 (8:1), sda2 (8:2); a disk sdb (8:16) with sdb1 (8:17);
// dm-0 (254:0) on sdb1 (root through device-mapper, as on the box); sdc
// (8:32) small. The state table gives the host's mounts/swaps and the DEV.

import t from 'tap';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkTarget, parseMountinfo, wholeDisks, type Host } from '../../../image/flash.ts';

const GiB = 1024 ** 3;

function fakeSys(root: string): string {
  const sys = join(root, 'sys');
  const dev = (dir: string, majmin: string, sizeBytes: number, partition = false) => {
    mkdirSync(join(dir, 'holders'), { recursive: true });
    mkdirSync(join(dir, 'slaves'), { recursive: true });
    writeFileSync(join(dir, 'dev'), `${majmin}\n`);
    writeFileSync(join(dir, 'size'), `${sizeBytes / 512}\n`);
    if (partition) writeFileSync(join(dir, 'partition'), '1\n');
    mkdirSync(join(sys, 'dev/block'), { recursive: true });
    symlinkSync(dir, join(sys, 'dev/block', majmin));
  };
  const blk = join(sys, 'devices/block');
  dev(join(blk, 'sda'), '8:0', 64 * GiB);
  dev(join(blk, 'sda/sda1'), '8:1', GiB, true);
  dev(join(blk, 'sda/sda2'), '8:2', GiB, true);
  dev(join(blk, 'sdb'), '8:16', 64 * GiB);
  dev(join(blk, 'sdb/sdb1'), '8:17', GiB, true);
  dev(join(blk, 'dm-0'), '254:0', GiB);
  symlinkSync(join(blk, 'sdb/sdb1'), join(blk, 'dm-0/slaves/sdb1'));
  dev(join(blk, 'sdc'), '8:32', GiB / 2);
  dev(join(blk, 'sdd'), '8:48', 64 * GiB);
  dev(join(blk, 'sdd/sdd1'), '8:49', GiB, true);
  writeFileSync(join(blk, 'sdd/sdd1/holders/md0'), '');
  return sys;
}

const NODES: Record<string, string> = { '/dev/sda': '8:0', '/dev/sda1': '8:1', '/dev/sda2': '8:2', '/dev/sdb': '8:16', '/dev/sdc': '8:32', '/dev/sdd': '8:48' };
const mountinfo = (lines: [string, string][]): string => lines.map(([mm, at], i) => `${20 + i} 1 ${mm} / ${at} rw,relatime - ext4 /dev/x rw`).join('\n');

t.test('checkTarget: state table of hosts and targets', async (t) => {
  const sys = fakeSys(t.testdir({}));
  const rootOnDm: [string, string][] = [['254:0', '/'], ['0:21', '/proc']];
  const cases: { name: string; dev: string | undefined; mounts?: [string, string][]; swaps?: string; allowFile?: boolean; want: RegExp | { kind: string } }[] = [
    { name: 'no DEV', dev: undefined, want: /no target given: DEV=\/dev\/sdX/ },
    { name: 'missing', dev: '/dev/sdz', want: /\/dev\/sdz does not exist/ },
    { name: 'a character device', dev: '/dev/null', want: /\/dev\/null is not a block device/ },
    { name: 'a regular file without the flag', dev: '/tmp/x.img', want: /is a regular file, not a block device \(to write an image file on purpose/ },
    { name: 'a regular file with the flag', dev: '/tmp/x.img', allowFile: true, want: { kind: 'file' } },
    { name: 'a partition', dev: '/dev/sda1', want: /\/dev\/sda1 is a partition \(sda1\); give the whole disk \(sda\)/ },
    { name: 'the disk / is on, through device-mapper', dev: '/dev/sdb', want: /\/dev\/sdb is the disk this system runs from \(\/ is on it\)/ },
    { name: 'the disk /boot is on, directly on a partition', dev: '/dev/sda', mounts: [['8:2', '/boot']], want: /\/dev\/sda is the disk this system runs from \(\/boot is on it\)/ },
    { name: 'a disk with a mounted partition', dev: '/dev/sda', mounts: [['8:1', '/mnt/usb']], want: /\/dev\/sda: sda1 is mounted on \/mnt\/usb; unmount it first/ },
    { name: 'a mounted whole disk', dev: '/dev/sda', mounts: [['8:0', '/srv']], want: /\/dev\/sda: sda is mounted on \/srv/ },
    { name: 'a partition used as swap', dev: '/dev/sda', swaps: 'Filename Type Size Used Priority\n/dev/sda2 partition 1 0 -2\n', want: /\/dev\/sda: sda2 is in use as swap/ },
    { name: 'a partition held by RAID', dev: '/dev/sdd', want: /\/dev\/sdd: sdd1 is held by md0 \(device-mapper, RAID or similar\)/ },
    { name: 'too small', dev: '/dev/sdc', want: /\/dev\/sdc holds 512\.0 MiB, smaller than the image \(1\.0 GiB\)/ },
    { name: 'a free disk', dev: '/dev/sda', want: { kind: 'block' } },
  ];
  for (const c of cases) {
    const host: Host = {
      sys,
      mountinfo: mountinfo([...rootOnDm, ...(c.mounts ?? [])]),
      swaps: c.swaps ?? 'Filename Type Size Used Priority\n',
      kind: (p) => (p === '/dev/null' ? 'other' : p.endsWith('.img') ? 'file' : p in NODES ? 'block' : 'missing'),
      devOf: (p) => NODES[p] ?? null,
    };
    const check = () => checkTarget(c.dev, { allowFile: c.allowFile ?? false, imageBytes: GiB, host });
    if (c.want instanceof RegExp) t.throws(check, { code: 'RAP_FLASH', message: c.want }, c.name);
    else t.match(check(), c.want, c.name);
  }
});

t.test('wholeDisks and parseMountinfo', async (t) => {
  const sys = fakeSys(t.testdir({}));
  const host = { sys, mountinfo: '', swaps: '', kind: () => 'missing' as const, devOf: () => null };
  t.same([...wholeDisks(host, '254:0')], ['8:16'], 'dm on a partition: the partition\'s disk');
  t.same([...wholeDisks(host, '8:2')], ['8:0']);
  t.same([...wholeDisks(host, '0:21')], [], 'no block device (proc, overlay)');
  t.same([...parseMountinfo('27 1 254:0 / / rw - ext4 /dev/vda rw\n30 27 8:1 / /mnt/my\\040usb rw - vfat /dev/sda1 rw\n')], [['254:0', '/'], ['8:1', '/mnt/my usb']]);
});
