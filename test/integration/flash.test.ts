// `make flash` (image/flash.ts) against real block devices: loop devices over
// sparse files the test makes, never a disk of this machine. A small image
// with the real partition labels (a GPT by sfdisk, an ext4 data partition by
// mkfs.ext4) stands in for out/rapbox.img, so the test is fast and needs no
// image build. Covered: a write verified by reading back, a provisioning
// bundle written into the data partition with debugfs and read back, each
// refusal (no DEV, missing, not a block device, a regular file without the
// flag, a partition, a mounted partition, too small, a bad bundle, a second
// bundle), and a corrupted device detected by the read-back.

import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { placePartitions, renderSfdisk, stableUuid } from '../../image/layout.ts';
import { run } from '../../src/lib/run.ts';
import { REPO, requireRapd, runBinary } from './helpers.ts';

const rapd = requireRapd();
const NODE = process.execPath;
const FLASH = join(REPO, 'image/flash.ts');
const MiB = 1024 * 1024;
const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

async function loopSkipReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (loop devices)';
  try {
    await run(['losetup', '-f'], { timeoutMs: 10_000 });
    return null;
  } catch (e) {
    return `loop devices are not available here: ${(e as Error).message}`;
  }
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A 40 MiB disk: ESP-labelled partition full of random bytes, then an empty ext4 labelled rapbox-data. */
async function makeImage(dir: string): Promise<{ path: string; dataOffset: number }> {
  const parts = placePartitions([
    { label: 'rapbox-esp', type: 'esp', sizeMiB: 8, uuid: stableUuid('t-esp') },
    { label: 'rapbox-data', type: 'linux-data', sizeMiB: 24, uuid: stableUuid('t-data') },
  ]);
  const path = join(dir, 'test.img');
  await run(['truncate', '-s', String(40 * MiB), path]);
  await run(['sfdisk', '--no-reread', '--no-tell-kernel', '-q', path], { input: renderSfdisk(parts) });
  const fd = openSync(path, 'r+');
  writeSync(fd, randomBytes(8 * MiB), 0, 8 * MiB, parts[0]!.offset);
  closeSync(fd);
  const data = parts[1]!;
  await run(['mkfs.ext4', '-q', '-F', '-L', 'rapbox-data', '-E', `offset=${data.offset}`, path, `${data.sizeMiB}M`]);
  return { path, dataOffset: data.offset };
}

async function loop(t: Test, file: string, partscan = false): Promise<string> {
  const dev = (await run(['losetup', '--show', '-f', ...(partscan ? ['-P'] : []), file], { timeoutMs: 10_000 })).stdout.trim();
  t.teardown(() => run(['losetup', '-d', dev], { okCodes: [0, 1], timeoutMs: 10_000 }).then(() => {}));
  return dev;
}

function flash(args: string[]) {
  return runBinary([NODE, FLASH, ...args], { PATH }, 120_000);
}

t.test('make flash onto loop devices', async (t) => {
  const skip = await loopSkipReason();
  if (skip) {
    t.comment(`skip: ${skip}`);
    t.pass(`skipped: ${skip}`);
    return;
  }
  const dir = mkdtempSync('/tmp/rapbox-flash-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await makeImage(dir);
  const imageBytes = readFileSync(image.path);
  const disk = join(dir, 'ssd.img');
  await run(['truncate', '-s', String(64 * MiB), disk]);
  const dev = await loop(t, disk);

  // A bundle as the factory makes it (the real rapd CLI), site WAN static.
  writeFileSync(join(dir, 'site.json'), JSON.stringify({ device: { name: 'lab-1' }, wan: { address: '192.0.2.10/24', gateway: '192.0.2.1', dns: '192.0.2.53' } }));
  const bundle = join(dir, 'bundle');
  const made = await runBinary([rapd, 'provision', 'create', '--out', bundle, '--device-id', 'box-0007', '--config', join(dir, 'site.json'), '--factory-config', join(REPO, 'rootfs-overlay/etc/rapd/rapd.json')], { PATH });
  t.equal(made.code, 0, `bundle made: ${made.stderr}`);

  await t.test('refusals, before anything is written', async (t) => {
    const blank = sha(readFileSync(disk));
    const small = join(dir, 'small.img');
    await run(['truncate', '-s', String(16 * MiB), small]);
    const smallDev = await loop(t, small);
    const regular = join(dir, 'regular.img');
    writeFileSync(regular, '');
    const badBundle = join(dir, 'bad-bundle');
    mkdirSync(badBundle);
    writeFileSync(join(badBundle, 'manifest.json'), '{"format":"rapbox-provision/1"}');
    const cases: [string, string[], RegExp][] = [
      ['no DEV', ['write', '--image', image.path], /RAP_FLASH: no target given: DEV=\/dev\/sdX .* is required/],
      ['a missing DEV', ['write', join(dir, 'nope'), '--image', image.path], /RAP_FLASH: .*\/nope does not exist/],
      ['a character device', ['write', '/dev/null', '--image', image.path], /RAP_FLASH: \/dev\/null is not a block device/],
      ['a regular file without --allow-file', ['write', regular, '--image', image.path], /RAP_FLASH: .*regular\.img is a regular file, not a block device \(to write an image file on purpose, give --allow-file/],
      ['a device smaller than the image', ['write', smallDev, '--image', image.path], /RAP_FLASH: \/dev\/loop\d+ holds 16\.0 MiB, smaller than the image \(40\.0 MiB\)/],
      ['a bad bundle', ['write', dev, '--image', image.path, '--provision', badBundle], /RAP_PROVISION: manifest\.json: 'deviceId' is undefined/],
      ['an unknown option', ['write', dev, '--force'], /RAP_USAGE: unknown option '--force'/],
    ];
    for (const [name, args, want] of cases) {
      const r = await flash(args);
      t.not(r.code, 0, `${name}: refused`);
      t.match(r.stderr, want, name);
    }
    t.equal(sha(readFileSync(disk)), blank, 'the target was not touched');
    const mk = await runBinary(['make', '-s', '-C', REPO, 'flash'], { PATH });
    t.equal(mk.code, 2);
    t.match(mk.stderr, /make flash: DEV= is required/, 'make flash without DEV says what is missing');
  });

  await t.test('write, read back, verified; then a bundle into the data partition, read back', async (t) => {
    const r = await flash(['write', dev, '--image', image.path]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /flash: write: .*test\.img \(40\.0 MiB\) -> \/dev\/loop\d+ \(64\.0 MiB\)/);
    t.match(r.stderr, /flash: write: 40\.0 MiB of 40\.0 MiB \(100%\)/, 'progress');
    t.match(r.stderr, new RegExp(`flash: verify: ok, sha256 ${sha(imageBytes)} over ${imageBytes.length} bytes read back from /dev/loop`));
    t.equal(sha(readFileSync(disk).subarray(0, imageBytes.length)), sha(imageBytes), 'the device holds the image');

    const p = await flash(['provision', dev, bundle]);
    t.equal(p.code, 0, p.stderr);
    t.match(p.stderr, /provision: 6 files|provision: \d+ files read back and verified/);
    // Read back independently of the tool: debugfs on the disk file.
    const fs = `${disk}?offset=${image.dataOffset}`;
    const ls = (await run(['debugfs', '-R', 'ls -l lib/rapbox/provision', fs])).stdout;
    t.match(ls, /40700 +\(2\) +0 +0 .* \./, 'the bundle directory is root-owned 0700');
    t.match(ls, /100600 +\(1\) +0 +0 .* manifest\.json/, 'files are root-owned 0600');
    const manifest = (await run(['debugfs', '-R', 'cat lib/rapbox/provision/manifest.json', fs])).stdout;
    t.equal(manifest, readFileSync(join(bundle, 'manifest.json'), 'utf8'));
    const again = await flash(['provision', dev, bundle]);
    t.equal(again.code, 1);
    t.match(again.stderr, /already holds a pending bundle/, 'a second bundle is refused');
  });

  await t.test('a mounted device, and (where the kernel scans loop partitions) a mounted partition and a partition as DEV, are refused', async (t) => {
    const before = sha(readFileSync(disk));
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    const mount = async (what: string): Promise<void> => {
      await run(['mount', '-o', 'ro', what, mnt], { timeoutMs: 20_000 });
      t.teardown(() => run(['umount', mnt], { okCodes: [0, 32], timeoutMs: 20_000 }).then(() => {}));
    };
    // The data partition's ext4 as a device of its own (a loop at its offset), mounted.
    const data = (await run(['losetup', '--show', '-f', '-o', String(image.dataOffset), '--sizelimit', String(24 * MiB), disk], { timeoutMs: 10_000 })).stdout.trim();
    t.teardown(() => run(['losetup', '-d', data], { okCodes: [0, 1], timeoutMs: 10_000 }).then(() => {}));
    await mount(data);
    const m = await flash(['write', data, '--image', image.path]);
    t.equal(m.code, 1);
    t.match(m.stderr, new RegExp(`RAP_FLASH: ${data}: loop\\d+ is mounted on ${mnt}; unmount it first`), 'a mounted device');
    await run(['umount', mnt], { timeoutMs: 20_000 });

    const pdev = await loop(t, disk, true);
    const part = `${pdev}p2`;
    if (!existsSync(part)) {
      t.comment(`the kernel made no partition devices for ${pdev} here (no loop partition scan): partition cases are covered by test/unit/image/flash.test.ts`);
    } else {
      await mount(part);
      const held = await flash(['write', pdev, '--image', image.path]);
      t.match(held.stderr, new RegExp(`RAP_FLASH: ${pdev}: loop\\d+p2 is mounted on ${mnt}; unmount it first`), 'a disk with a mounted partition');
      const p = await flash(['write', part, '--image', image.path]);
      t.match(p.stderr, new RegExp(`RAP_FLASH: ${part} is a partition \\(loop\\d+p2\\); give the whole disk \\(loop\\d+\\)`), 'a partition');
    }
    t.equal(sha(readFileSync(disk)), before, 'nothing written');
  });

  await t.test('a corrupted device is detected by the read-back', async (t) => {
    const w = await flash(['write', dev, '--image', image.path]);
    t.equal(w.code, 0, w.stderr);
    // One byte changes underneath the loop device (behind its page cache):
    // the read-back must come from the device, not from what was written.
    const fd = openSync(disk, 'r+');
    const at = 5 * MiB + 123;
    const b = Buffer.alloc(1);
    b[0] = imageBytes[at]! ^ 0xff;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    const v = await flash(['verify', dev, '--image', image.path]);
    t.equal(v.code, 1, 'verify fails');
    t.match(v.stderr, /RAP_FLASH: verify: \/dev\/loop\d+ differs from .*test\.img: first difference in the 4 MiB at byte 4194304; .*Do not ship this disk/);
  });
});
