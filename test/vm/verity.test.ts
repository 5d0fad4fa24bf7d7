// A root slot whose bytes were changed after the build must not run. The
// test flips one byte of slot A inside block 0 of its squashfs, past the
// 96-byte superblock (so squashfs itself would mount it happily), in a
// copy-on-write overlay of the real image, and boots it: dm-verity must see
// the block's hash mismatch when the initrd mounts root and, as designed
// (panic-on-corruption), stop the kernel instead of running the changed root.

import t from 'tap';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detectAccel, freshVars, overlayDisk, startVm } from '../../image/qemu.ts';
import { run } from '../../src/lib/run.ts';
import { waitForExit } from './results.ts';

const REPO = join(import.meta.dirname, '../..');
const IMAGE = process.env['RAPBOX_IMAGE'] ?? join(REPO, 'out/rapbox.img');
const WORK = join(REPO, 'out/vm/verity');
const BOOT_BOUND_MS = 6 * 60_000;

t.test('a changed byte in the root slot stops the boot with a dm-verity error', async (t) => {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  const manifest = JSON.parse(readFileSync(join(REPO, 'out/image.json'), 'utf8')) as { partitions: { label: string; offset: number }[] };
  const slotA = manifest.partitions.find((p) => p.label === 'rapbox-root-a');
  if (!slotA) throw new Error('out/image.json has no rapbox-root-a partition');

  const disk = await overlayDisk(IMAGE, join(WORK, 'ssd.qcow2'), 3 * 1024 ** 3);
  const at = slotA.offset + 2048;
  const before = (await run(['qemu-io', '-f', 'qcow2', '-c', `read -v ${at} 1`, disk])).stdout;
  const old = /^[0-9a-f]+:\s+([0-9a-f]{2})/m.exec(before)?.[1];
  if (!old) throw new Error(`qemu-io read gave no byte: ${before}`);
  const flipped = (parseInt(old, 16) ^ 0xff).toString(16).padStart(2, '0');
  await run(['qemu-io', '-f', 'qcow2', '-c', `write -P 0x${flipped} ${at} 1`, disk]);
  t.comment(`slot A byte ${at - slotA.offset}: 0x${old} -> 0x${flipped}`);

  const serial = join(WORK, 'serial.log');
  writeFileSync(serial, '');
  const vm = startVm({
    disk,
    diskFormat: 'qcow2',
    snapshot: false,
    accel: await detectAccel(WORK),
    varsFile: freshVars(WORK),
    serial,
    resultsFile: join(WORK, 'results.log'),
  });
  t.teardown(() => vm.kill());
  // panic=10 reboots 10 s after the panic, and QEMU runs with -no-reboot: it exits.
  const outcome = await waitForExit(vm, BOOT_BOUND_MS);
  const log = readFileSync(serial, 'latin1');
  t.not(outcome, 'timeout', `the box stopped by itself within ${BOOT_BOUND_MS / 1000} s (console: ${serial})`);
  t.match(log, /rapbox: opening root slot with dm-verity/, 'the initrd opened slot A through dm-verity');
  t.match(log, /device-mapper: verity: [\d:]+: data block 0 is corrupted/, 'dm-verity named the changed block');
  t.match(log, /Kernel panic - not syncing: dm-verity device corrupted/, 'and stopped the kernel (panic-on-corruption)');
  t.notMatch(log, /Reached target.*Multi-User|Started rapd\.service/, 'nothing of the changed root ran');
});
