// The yardstick for make bench's boot ratio: a bare Debian 13 that boots the
// same way as rapbox (OVMF, a unified kernel image, virtio disk) but is only
// mmdebstrap's minbase + systemd-sysv + the same kernel package, root on
// ext4, nothing of ours. Built from the same package lock (every version it
// installs must be the locked one), with fixed UUIDs and SOURCE_DATE_EPOCH,
// and cached in out/cache/ by its inputs. Not part of make image or make test.
//
// The disk: an ESP whose EFI/BOOT/BOOTX64.EFI is the UKI itself (the
// firmware starts it directly; what is measured starts at the kernel), and
// the root partition.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { baseEpoch, buildDisk } from './build.ts';
import { placePartitions, stableUuid } from './layout.ts';
import { parseInstalled, parseLock, renderPreferences } from './lock.ts';
import { buildUki } from './uki.ts';
import { OUT, REPO, humanSize, info, sh, stage } from './tools.ts';

const CACHE = join(OUT, 'cache');
const WORK = join(OUT, 'build', 'minimal');
/** What "bare Debian" means here: init, and the kernel rapbox boots. systemd-boot-efi only provides the UKI stub. */
export const MINIMAL_PACKAGES = ['systemd-sysv', 'linux-image-amd64', 'systemd-boot-efi'];

/** Installed versions that are not the locked ones (the minimal set is a subset of the lock). */
export function versionsOffLock(lock: ReadonlyMap<string, string>, installed: ReadonlyMap<string, string>): string[] {
  return [...installed].filter(([p, v]) => lock.get(p) !== v).map(([p, v]) => `${p} ${v} (locked: ${lock.get(p) ?? 'not in the lock'})`);
}

/** The kernel command line of the minimal image: its root by PARTUUID, the same console. */
export function minimalCmdline(rootUuid: string): string {
  return `root=PARTUUID=${rootUuid.toLowerCase()} rw console=ttyS0,115200 panic=10`;
}

/** out/cache/minimal-<key>.img, built when missing. */
export async function buildMinimalImage(): Promise<string> {
  const lockText = readFileSync(join(REPO, 'image/packages.lock'), 'utf8');
  const lock = parseLock(lockText);
  const epoch = await baseEpoch(['image/packages.lock', 'image/minimal.ts']);
  const parts = placePartitions([
    { label: 'minimal-esp', type: 'esp', sizeMiB: 96, uuid: stableUuid('partition:minimal-esp') },
    { label: 'minimal-root', type: 'root-x86-64', sizeMiB: 1024, uuid: stableUuid('partition:minimal-root') },
  ]);
  const [esp, root] = parts as [(typeof parts)[0], (typeof parts)[0]];
  const key = createHash('sha256').update(`${MINIMAL_PACKAGES.join(',')}\0${lockText}\0${epoch}\0${readFileSync(new URL(import.meta.url))}`).digest('hex').slice(0, 16);
  const out = join(CACHE, `minimal-${key}.img`);
  if (existsSync(out)) {
    stage(`minimal: reusing ${out}`);
    return out;
  }
  stage(`minimal: mmdebstrap trixie minbase + ${MINIMAL_PACKAGES.join(', ')} (pinned by image/packages.lock)`);
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  const env = { SOURCE_DATE_EPOCH: String(epoch) };
  const prefs = join(WORK, 'rapbox-lock.pref');
  writeFileSync(prefs, renderPreferences(lock));
  const installedList = join(WORK, 'installed.txt');
  const tree = join(WORK, 'rootfs');
  await sh(
    [
      'mmdebstrap', '--mode=root', '--variant=minbase', '--format=directory',
      `--include=${MINIMAL_PACKAGES.join(',')}`,
      '--setup-hook=mkdir -p "$1/etc/apt/preferences.d"',
      `--setup-hook=copy-in ${prefs} /etc/apt/preferences.d/`,
      `--customize-hook=chroot "$1" dpkg-query -W -f='\${Package} \${Version}\\n' > ${installedList}`,
      '--customize-hook=rm -f "$1/etc/apt/preferences.d/rapbox-lock.pref" "$1/etc/hostname" "$1/etc/resolv.conf"',
      'trixie', tree,
    ],
    { env, timeoutMs: 30 * 60_000 },
  );
  const off = versionsOffLock(lock, parseInstalled(readFileSync(installedList, 'utf8')));
  if (off.length > 0) throw new Error(`minimal image: installed versions differ from image/packages.lock:\n  ${off.join('\n  ')}`);

  const boot = join(tree, 'boot');
  const version = readdirSync(boot).find((f) => f.startsWith('vmlinuz-'))?.slice('vmlinuz-'.length);
  if (!version) throw new Error(`minimal image: no kernel in ${boot}`);
  const uki = buildUki(readFileSync(join(tree, 'usr/lib/systemd/boot/efi/linuxx64.efi.stub')), [
    { name: '.cmdline', data: Buffer.from(`${minimalCmdline(root.uuid)}\0`) },
    { name: '.uname', data: Buffer.from(version) },
    { name: '.initrd', data: readFileSync(join(boot, `initrd.img-${version}`)) },
    { name: '.linux', data: readFileSync(join(boot, `vmlinuz-${version}`)) },
  ]);
  info(`minimal UKI ${humanSize(uki.length)} (kernel ${version})`);

  const espImg = join(WORK, 'esp.img');
  const staging = join(WORK, 'esp');
  mkdirSync(join(staging, 'EFI/BOOT'), { recursive: true });
  writeFileSync(join(staging, 'EFI/BOOT/BOOTX64.EFI'), uki);
  const volId = stableUuid('minimal-esp-volume-id').replaceAll('-', '').slice(0, 8);
  await sh(['mkfs.vfat', '-C', '-F', '32', '--invariant', '-i', volId, '-n', 'MINIMAL', espImg, String(esp.sizeMiB * 1024)], { env });
  await sh(['mcopy', '-i', espImg, '-s', '-p', '-Q', join(staging, 'EFI'), '::/'], { env });

  const rootImg = join(WORK, 'root.img');
  await sh(
    ['mkfs.ext4', '-q', '-F', '-L', 'minimal-root', '-U', stableUuid('minimal-root-fs').toLowerCase(), '-E', `hash_seed=${stableUuid('minimal-root-hash-seed').toLowerCase()}`, '-d', tree, rootImg, `${root.sizeMiB}M`],
    { env: { E2FSPROGS_FAKE_TIME: String(epoch) } },
  );
  mkdirSync(CACHE, { recursive: true });
  for (const old of readdirSync(CACHE)) if (old.startsWith('minimal-')) rmSync(join(CACHE, old), { force: true });
  await buildDisk(parts, new Map([[esp.label, espImg], [root.label, rootImg]]), out);
  rmSync(WORK, { recursive: true, force: true });
  return out;
}

if (import.meta.main) {
  buildMinimalImage().then(
    (p) => process.stdout.write(`${p}\n`),
    (e: unknown) => {
      process.stderr.write(`minimal image: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
