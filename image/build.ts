// `make image`: builds out/rapbox.img, a raw GPT disk with an EFI system
// partition (systemd-boot), root slots A and B (read-only squashfs) and a data
// partition (ext4, /var). No loop mounts: every filesystem is made from a
// directory or by mtools, then placed into the disk file with dd.
//
// Stages (each prints a progress line):
//   base    mmdebstrap trixie -> out/cache/base-<key>.tar (reused while its inputs are unchanged)
//   tree    base + rootfs-overlay/ + out/rapd + presets, kernel modules and
//           udev hwdb slimmed -> out/build/rootfs/
//   harden  every hardening/*/fix applied to the tree (before it is sealed)
//   root    mksquashfs + veritysetup -> out/build/root.img (squashfs, then its hash tree)
//   esp     vfat + systemd-boot + a unified kernel image per slot -> out/build/esp.img
//   data    empty ext4 -> out/build/data.img
//   verify  every hardening/*/check on the sealed tree -> out/compliance/rules.json
//   disk    sfdisk + dd -> out/rapbox.img, out/SHA256SUMS, out/image.json
//   summary rapbox.img.zst, OTA payload size, out/size-report.txt
// A second run with unchanged inputs does nothing (input stamp in out/image.json).

import { createHash } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  cpSync,
  existsSync,
  lchownSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { lockMismatches, parseInstalled, parseLock, renderLock, renderPreferences } from './lock.ts';
import { DISK_LABEL_ID, diskSize, loadLayout, renderSfdisk, stableUuid, type Partition } from './layout.ts';
import { pruneModules } from './modules.ts';
import { packageSizesOfTree, renderHeadline, renderSizeReport, type SizeEntry, type Sizes } from './size-report.ts';
import { buildUki } from './uki.ts';
import { applyHardening, verifyHardening } from './hardening.ts';
import { OUT, REPO, humanSize, info, sh, sha256File, sourceDateEpoch, stage } from './tools.ts';

const SUITE = 'trixie';
const MiB = 1024 * 1024;
const BUILD = join(OUT, 'build');
const CACHE = join(OUT, 'cache');

// Documentation, manuals and translations are no use on a headless box; the
// copyright files stay (licence compliance).
const DPKG_EXCLUDES = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/locale/*',
  'path-exclude=/usr/share/lintian/*',
];

export function readPackageList(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter((l) => l.length > 0)
    .map((l, i) => {
      if (!/^[a-z0-9][a-z0-9+.-]+$/.test(l)) throw new Error(`image/packages.txt: line ${i + 1}: '${l}' is not a Debian package name`);
      return l;
    });
}

/** Every file below `dir`, sorted. */
function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

function hashOf(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

/** Epoch for the base tarball: the last commit that touched its inputs, so unrelated commits reuse the cache. */
export async function baseEpoch(inputs: string[]): Promise<number> {
  try {
    const r = await sh(['git', '-C', REPO, 'log', '-1', '--format=%ct', '--', ...inputs]);
    const v = Number(r.stdout.trim());
    if (Number.isInteger(v) && v > 0) return v;
  } catch {
    // no git: fall back to the build epoch
  }
  return sourceDateEpoch();
}

/**
 * The Debian base as a tarball, cached by its inputs. With a lock
 * (image/packages.lock) every package version is pinned and checked after
 * the install; `refreshLock` (make lock) builds unpinned and rewrites the lock.
 */
async function buildBase(refreshLock = false): Promise<string> {
  const pkgFile = join(REPO, 'image/packages.txt');
  // Laid out as under /etc/initramfs-tools: hooks/ and scripts/<phase>/.
  const initramfsDir = join(REPO, 'image/initramfs');
  const initramfsFiles = listFiles(initramfsDir);
  const lockFile = join(REPO, 'image/packages.lock');
  const packages = readPackageList(readFileSync(pkgFile, 'utf8'));
  const lockText = !refreshLock && existsSync(lockFile) ? readFileSync(lockFile, 'utf8') : null;
  const lock = lockText === null ? null : parseLock(lockText);
  const epoch = await baseEpoch(['image/packages.txt', 'image/initramfs', 'image/packages.lock']);
  mkdirSync(BUILD, { recursive: true });
  const prefs = join(BUILD, 'rapbox-lock.pref');
  const installedList = join(BUILD, 'installed-packages.txt');
  if (lock) writeFileSync(prefs, renderPreferences(lock));
  const argv = [
    'mmdebstrap',
    '--mode=root',
    '--variant=minbase',
    '--format=tar',
    `--include=${packages.join(',')}`,
    ...DPKG_EXCLUDES.map((e) => `--dpkgopt=${e}`),
    // Pins apply from the first apt call on, the essential set included.
    ...(lock
      ? ['--setup-hook=mkdir -p "$1/etc/apt/preferences.d"', `--setup-hook=copy-in ${prefs} /etc/apt/preferences.d/`]
      : []),
    // The initrd is generated when the kernel is installed; our hook and
    // scripts must be in place before that, hence essential hooks.
    '--essential-hook=mkdir -p "$1/etc/initramfs-tools"',
    `--essential-hook=copy-in ${['hooks', 'scripts', 'conf.d'].map((d) => join(initramfsDir, d)).join(' ')} /etc/initramfs-tools/`,
    // What was really installed, to check against (or write) the lock.
    `--customize-hook=chroot "$1" dpkg-query -W -f='\${Package} \${Version}\\n' > ${installedList}`,
    ...(lock ? ['--customize-hook=rm -f "$1/etc/apt/preferences.d/rapbox-lock.pref"'] : []),
    SUITE,
  ];
  const key = hashOf(JSON.stringify(argv), ...initramfsFiles.flatMap((f) => [relative(initramfsDir, f), readFileSync(f)]), lockText ?? 'unlocked', String(epoch)).slice(0, 16);
  const tar = join(CACHE, `base-${SUITE}-${key}.tar`);
  if (existsSync(tar) && !refreshLock) {
    stage(`base: reusing ${relative(REPO, tar)}`);
    return tar;
  }
  stage(`base: mmdebstrap ${SUITE} (${packages.length} packages${lock ? `, ${lock.size} versions locked` : ', unlocked'}; ~1 min)`);
  mkdirSync(CACHE, { recursive: true });
  for (const old of readdirSync(CACHE)) if (old.startsWith('base-')) rmSync(join(CACHE, old), { force: true });
  const partial = `${tar}.partial`;
  rmSync(installedList, { force: true });
  await sh([...argv, partial], { env: { SOURCE_DATE_EPOCH: String(epoch) }, timeoutMs: 30 * 60_000 });
  const installed = parseInstalled(readFileSync(installedList, 'utf8'));
  if (refreshLock) {
    writeFileSync(lockFile, renderLock(installed, SUITE));
    info(`wrote image/packages.lock: ${installed.size} packages`);
  } else if (lock) {
    const problems = lockMismatches(lock, installed);
    if (problems.length > 0) {
      rmSync(partial, { force: true });
      throw new Error(
        `the installed packages differ from image/packages.lock (${problems.length}):\n  ${problems.slice(0, 20).join('\n  ')}\n` +
          'The mirror keeps only the current point release: run `make lock` to move to it (and review the diff), or build from a snapshot mirror.',
      );
    }
    info(`all ${lock.size} package versions match image/packages.lock`);
  }
  await sh(['mv', partial, tar]);
  info(`${humanSize(statSync(tar).size)} base tarball`);
  return tar;
}

/** Copy rootfs-overlay/ into the tree, owned by root whatever the checkout's owner. */
function applyOverlay(overlay: string, tree: string): void {
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(overlay, rel)).sort()) {
      const r = join(rel, name);
      const src = join(overlay, r);
      const dst = join(tree, r);
      const st = statSync(src);
      if (st.isDirectory()) {
        mkdirSync(dst, { recursive: true });
        walk(r);
      } else {
        rmSync(dst, { force: true });
        cpSync(src, dst);
        // Git keeps only the executable bit; normalise the rest.
        chmodSync(dst, st.mode & 0o111 ? 0o755 : 0o644);
      }
      lchownSync(dst, 0, 0);
    }
  };
  walk('.');
}

async function buildTree(baseTar: string, rapd: string): Promise<string> {
  const tree = join(BUILD, 'rootfs');
  stage('tree: unpack base, apply rootfs-overlay/, install rapd');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(tree, { recursive: true });
  await sh(['tar', '-C', tree, '--numeric-owner', '-xpf', baseTar]);

  // mmdebstrap copies the build host's hostname and resolver into the tree.
  for (const f of ['etc/hostname', 'etc/resolv.conf']) rmSync(join(tree, f), { force: true });
  symlinkSync('../run/systemd/resolve/stub-resolv.conf', join(tree, 'etc/resolv.conf'));
  applyOverlay(join(REPO, 'rootfs-overlay'), tree);

  cpSync(rapd, join(tree, 'usr/bin/rapd'));
  chmodSync(join(tree, 'usr/bin/rapd'), 0o755);
  rmSync(join(tree, 'usr/bin/rapctl'), { force: true });
  symlinkSync('rapd', join(tree, 'usr/bin/rapctl'));

  // The boot-time firewall (nftables.service) is rapd's own ruleset with no
  // ports: one owner for the rules, and nothing open before rapd runs.
  const noPorts = join(BUILD, 'no-ports.json');
  writeFileSync(noPorts, '{}\n');
  const ruleset = (await sh([rapd, 'net', 'show', '--firewall', '--config', noPorts], { cleanEnv: true })).stdout;
  writeFileSync(join(tree, 'etc/nftables.conf'), ruleset);

  // Empty in the image (every box has the same root): the initrd binds the
  // box's own id from the data partition over it (local-bottom/rapbox-machine-id);
  // if that fails, systemd uses a transient one (machine-id(5)).
  writeFileSync(join(tree, 'etc/machine-id'), '');
  // Mount point for the ESP if anything asks; gpt-auto is off on the cmdline.
  mkdirSync(join(tree, 'efi'), { recursive: true });

  stage('tree: apply presets (only what 00-rapbox.preset enables)');
  // Start from nothing enabled, then let the preset decide.
  for (const d of ['etc/systemd/system/multi-user.target.wants', 'etc/systemd/system/timers.target.wants', 'etc/systemd/system/getty.target.wants']) {
    rmSync(join(tree, d), { recursive: true, force: true });
  }
  await sh(['chroot', tree, 'systemctl', 'preset-all', '--preset-mode=full']);
  await sh(['chroot', tree, 'systemctl', 'set-default', 'multi-user.target']);
  const enabled = (await sh(['chroot', tree, 'systemctl', 'list-unit-files', '--state=enabled', '--no-legend', '--plain'])).stdout;
  info(`enabled: ${enabled.split('\n').filter(Boolean).map((l) => l.split(/\s+/)[0]).join(' ')}`);
  await pruneKernelModules(tree);
  await slimHwdb(tree);
  return tree;
}

/** Only the kernel modules image/kernel-modules.txt keeps (and what they need). */
async function pruneKernelModules(tree: string): Promise<void> {
  stage('tree: kernel modules from image/kernel-modules.txt only');
  const { version } = kernelFiles(tree);
  const r = await pruneModules(tree, version, join(REPO, 'image/kernel-modules.txt'));
  info(`kept ${r.kept} modules (${humanSize(r.bytesAfter)}), removed ${r.removed} (${humanSize(r.bytesBefore - r.bytesAfter)})`);
}

/**
 * udev's hardware database without the vendor/model name tables (20-*.hwdb:
 * names for lsusb and udevadm info, ~20 MiB with the compiled copy). NICs are
 * named by PCI path (.link files), not by these. Recompiled with the tree's
 * own systemd-hwdb into /usr, so systemd-hwdb-update.service stays skipped.
 */
async function slimHwdb(tree: string): Promise<void> {
  const src = join(tree, 'usr/lib/udev/hwdb.d');
  const bin = join(tree, 'usr/lib/udev/hwdb.bin');
  const before = statSync(bin).size;
  for (const f of readdirSync(src)) if (f.startsWith('20-')) rmSync(join(src, f));
  // systemd-hwdb writes through /proc/self/fd: give it a /proc in a private
  // mount namespace (gone when it exits, never left mounted in the tree).
  await sh(['unshare', '--mount', '--fork', 'sh', '-c', 'mount -t proc proc "$1/proc" && exec chroot "$1" systemd-hwdb update --usr --strict', 'sh', tree]);
  info(`udev hwdb.bin ${humanSize(before)} -> ${humanSize(statSync(bin).size)} (vendor/model name tables dropped)`);
}

/** A root slot's payload: the squashfs followed by its dm-verity hash tree. */
export interface RootSlotImage {
  path: string;
  /** sha256 root hash of the hash tree: what the UKI's command line binds. */
  rootHash: string;
  /** Where the hash tree starts (bytes): the squashfs, padded to the verity block. */
  hashOffset: number;
  squashfsBytes: number;
}

const VERITY_BLOCK = 4096;

/**
 * Tree directories whose content stays out of the root slot: /boot goes to
 * the ESP (in the UKIs). Not /var, although the data partition is mounted
 * over it: units with DefaultDependencies=no start before that mount and
 * need its skeleton (systemd-resolved's PrivateTmp=disconnected needs
 * /var/tmp; without it resolved failed to start in the VM).
 */
export const NOT_IN_SLOT = ['/boot'];

async function buildRoot(tree: string, epoch: number): Promise<RootSlotImage> {
  const img = join(BUILD, 'root.img');
  const sqfs = join(BUILD, 'root.sqfs');
  stage('root: mksquashfs (zstd) + dm-verity hash tree');
  rmSync(sqfs, { force: true });
  // -reproducible + SOURCE_DATE_EPOCH (never together with -mkfs-time) gives
  // identical bytes. NOT_IN_SLOT directories are kept empty ("var/*").
  const exclude = NOT_IN_SLOT.map((d) => `${d.slice(1)}/*`);
  await sh(['mksquashfs', tree, sqfs, '-comp', 'zstd', '-noappend', '-reproducible', '-no-progress', '-quiet', '-wildcards', '-e', ...exclude], {
    env: { SOURCE_DATE_EPOCH: String(epoch) },
  });
  info(`${humanSize(statSync(sqfs).size)} root.sqfs`);
  // The hash tree goes right after the squashfs in the same partition, so a
  // slot stays one partition (and one OTA payload). Salt and UUID are derived,
  // not random: the same tree gives the same root hash.
  const squashfsBytes = statSync(sqfs).size;
  const hashOffset = Math.ceil(squashfsBytes / VERITY_BLOCK) * VERITY_BLOCK;
  truncateSync(sqfs, hashOffset);
  renameSync(sqfs, img);
  const out = await sh([
    'veritysetup', 'format', img, img,
    `--hash-offset=${hashOffset}`,
    `--data-blocks=${hashOffset / VERITY_BLOCK}`,
    `--data-block-size=${VERITY_BLOCK}`,
    `--hash-block-size=${VERITY_BLOCK}`,
    '--hash=sha256',
    `--salt=${createHash('sha256').update('rapbox verity salt').digest('hex')}`,
    `--uuid=${stableUuid('root-verity').toLowerCase()}`,
  ]);
  const rootHash = /^Root hash:\s+([0-9a-f]{64})$/m.exec(out.stdout)?.[1];
  if (!rootHash) throw new Error(`veritysetup format printed no root hash:\n${out.stdout}`);
  info(`${humanSize(statSync(img).size)} root slot image (squashfs + hash tree), root hash ${rootHash.slice(0, 16)}...`);
  return { path: img, rootHash, hashOffset, squashfsBytes };
}

function kernelFiles(tree: string): { vmlinuz: string; initrd: string; version: string } {
  const boot = join(tree, 'boot');
  const kernels = readdirSync(boot).filter((f) => f.startsWith('vmlinuz-'));
  if (kernels.length !== 1) throw new Error(`expected one kernel in ${boot}, found ${kernels.join(', ') || 'none'}`);
  const version = kernels[0]!.slice('vmlinuz-'.length);
  const initrd = join(boot, `initrd.img-${version}`);
  if (!existsSync(initrd)) throw new Error(`no initrd for kernel ${version} in ${boot}`);
  return { vmlinuz: join(boot, kernels[0]!), initrd, version };
}

/** The command line bound into a slot's UKI: the verified root and the slot it is. */
export function kernelCmdline(root: Partition, slot: 'a' | 'b', verity: { rootHash: string; hashOffset: number }): string {
  return [
    // The initrd's rapbox-verity script makes /dev/mapper/root from these.
    'root=/dev/mapper/root',
    'rootfstype=squashfs',
    'ro',
    `rapbox.verity.data=PARTUUID=${root.uuid.toLowerCase()}`,
    `rapbox.verity.roothash=${verity.rootHash}`,
    `rapbox.verity.hashoffset=${verity.hashOffset}`,
    `rapbox.slot=${slot}`,
    'console=ttyS0,115200',
    // Partitions are named explicitly; gpt-auto would try to mount the ESP on
    // a read-only root (efi.automount fails).
    'systemd.gpt_auto=0',
    'panic=10',
  ].join(' ');
}

/** The UKI's file name on the ESP: systemd-boot lists every EFI/Linux/*.efi (Type #2 entry). */
export function ukiName(slot: 'a' | 'b'): string {
  return `rapbox-${slot}.efi`;
}

/** The ESP image, and slot A's UKI with its parts' sizes (for the size report and OTA payload). */
interface EspImage {
  path: string;
  uki: string;
  kernelBytes: number;
  initrdBytes: number;
}

async function buildEsp(tree: string, esp: Partition, roots: { a: Partition; b: Partition }, verity: RootSlotImage, epoch: number): Promise<EspImage> {
  const img = join(BUILD, 'esp.img');
  stage('esp: vfat, systemd-boot, a unified kernel image per slot');
  rmSync(img, { force: true });
  const env = { SOURCE_DATE_EPOCH: String(epoch) };
  const volId = stableUuid('esp-volume-id').replaceAll('-', '').slice(0, 8);
  await sh(['mkfs.vfat', '-C', '-F', '32', '--invariant', '-i', volId, '-n', 'RAPBOX-ESP', img, String(esp.sizeMiB * 1024)], { env });
  const k = kernelFiles(tree);
  const staging = join(BUILD, 'esp');
  rmSync(staging, { recursive: true, force: true });
  const put = (rel: string, from: string | { text: string } | Buffer): void => {
    const dst = join(staging, rel);
    mkdirSync(join(dst, '..'), { recursive: true });
    if (typeof from === 'string') cpSync(from, dst);
    else writeFileSync(dst, Buffer.isBuffer(from) ? from : from.text);
  };
  const efiDir = join(tree, 'usr/lib/systemd/boot/efi');
  const sdboot = join(efiDir, 'systemd-bootx64.efi');
  put('EFI/BOOT/BOOTX64.EFI', sdboot);
  put('EFI/systemd/systemd-bootx64.efi', sdboot);
  // editor no: nobody at the console may edit the kernel command line.
  put('loader/loader.conf', { text: `default ${ukiName('a')}\ntimeout 0\neditor no\nconsole-mode keep\n` });
  const stub = readFileSync(join(efiDir, 'linuxx64.efi.stub'));
  const common = {
    osrel: readFileSync(join(tree, 'usr/lib/os-release')),
    linux: readFileSync(k.vmlinuz),
    initrd: readFileSync(k.initrd),
  };
  for (const slot of ['a', 'b'] as const) {
    const cmdline = kernelCmdline(roots[slot], slot, verity);
    const uki = buildUki(stub, [
      { name: '.osrel', data: common.osrel },
      { name: '.cmdline', data: Buffer.from(`${cmdline}\0`) },
      { name: '.uname', data: Buffer.from(k.version) },
      { name: '.initrd', data: common.initrd },
      { name: '.linux', data: common.linux },
    ]);
    put(`EFI/Linux/${ukiName(slot)}`, uki);
    info(`${ukiName(slot)}: ${humanSize(uki.length)} (kernel ${k.version}, initrd ${humanSize(common.initrd.length)})`);
  }
  // mcopy -s copies the staged tree; sorted names and SOURCE_DATE_EPOCH keep it stable.
  const top = readdirSync(staging).sort().map((n) => join(staging, n));
  await sh(['mcopy', '-i', img, '-s', '-p', '-Q', ...top, '::/'], { env });
  return { path: img, uki: join(staging, 'EFI/Linux', ukiName('a')), kernelBytes: common.linux.length, initrdBytes: common.initrd.length };
}

/** zstd settings of rapbox.img.zst; the OTA payload is measured with the same. */
const ZSTD_ARGS = ['-q', '-T0', '-10', '--long=31'];

/**
 * What an update ships (issue 7 defines the bundle): one root slot image and
 * its UKI, compressed as the disk image is. Measured, then thrown away.
 */
async function otaPayloadBytes(root: string, uki: string): Promise<number> {
  const raw = join(BUILD, 'ota-payload.bin');
  const zst = `${raw}.zst`;
  writeFileSync(raw, readFileSync(root));
  appendFileSync(raw, readFileSync(uki));
  await sh(['zstd', ...ZSTD_ARGS, '-f', raw, '-o', zst]);
  const bytes = statSync(zst).size;
  rmSync(raw, { force: true });
  rmSync(zst, { force: true });
  return bytes;
}

async function buildData(part: Partition, epoch: number): Promise<string> {
  const img = join(BUILD, 'data.img');
  stage('data: empty ext4 for /var');
  rmSync(img, { force: true });
  const uuid = part.uuid.toLowerCase();
  await sh(
    ['mkfs.ext4', '-q', '-F', '-L', 'rapbox-data', '-U', uuid, '-E', `hash_seed=${stableUuid('data-hash-seed').toLowerCase()}`, '-m', '0', img, `${part.sizeMiB}M`],
    { env: { E2FSPROGS_FAKE_TIME: String(epoch) } },
  );
  return img;
}

/** A GPT disk of `layout` with each partition's image placed (image/minimal.ts makes one too). */
export async function buildDisk(layout: Partition[], images: Map<string, string>, disk = join(OUT, 'rapbox.img')): Promise<string> {
  stage('disk: GPT with sfdisk, place partitions');
  const partial = `${disk}.partial`;
  rmSync(partial, { force: true });
  await sh(['truncate', '-s', String(diskSize(layout)), partial]);
  await sh(['sfdisk', '--no-reread', '--no-tell-kernel', '-q', partial], { input: renderSfdisk(layout) });
  for (const p of layout) {
    const img = images.get(p.label);
    if (!img) continue;
    const size = statSync(img).size;
    if (size > p.sizeMiB * MiB) throw new Error(`${p.label}: ${humanSize(size)} does not fit its ${p.sizeMiB} MiB partition`);
    await sh(['dd', `if=${img}`, `of=${partial}`, 'bs=1M', 'oflag=seek_bytes', `seek=${p.offset}`, 'conv=notrunc,sparse', 'status=none']);
    info(`${p.label.padEnd(16)} ${humanSize(size).padStart(10)} of ${p.sizeMiB} MiB`);
  }
  await sh(['mv', partial, disk]);
  return disk;
}

/** Hash of everything the image is made from, to skip a build with no changes. */
function inputStamp(baseTar: string, rapdSha: string, epoch: number): string {
  // Tools that do not shape the image's bytes (out/rapd is hashed separately).
  const notInputs = new Set(['image/qemu.ts', 'image/deps.sh', 'image/sea.ts', 'image/readme-settings.ts', 'image/flash.ts', 'image/compliance.ts']);
  const files = [...listFiles(join(REPO, 'rootfs-overlay')), ...listFiles(join(REPO, 'image')), ...listFiles(join(REPO, 'hardening'))].filter((f) => !notInputs.has(relative(REPO, f)));
  const h = createHash('sha256').update(`${baseTar}\0${rapdSha}\0${epoch}\0`);
  for (const f of files) h.update(relative(REPO, f)).update('\0').update(String(statSync(f).mode & 0o111)).update(readFileSync(f));
  return h.digest('hex');
}

export async function buildImage(): Promise<void> {
  const started = Date.now();
  const rapd = join(OUT, 'rapd');
  if (!existsSync(rapd)) throw new Error(`${rapd} is missing: run make build first`);
  const epoch = await sourceDateEpoch();
  const layout = loadLayout(join(REPO, 'image/partitions'));
  const byLabel = (l: string): Partition => {
    const p = layout.find((x) => x.label === l);
    if (!p) throw new Error(`image/partitions: no partition labelled ${l}`);
    return p;
  };
  const baseTar = await buildBase();
  const rapdSha = await sha256File(rapd);
  const stamp = inputStamp(baseTar, rapdSha, epoch);
  const manifestPath = join(OUT, 'image.json');
  if (existsSync(manifestPath) && existsSync(join(OUT, 'rapbox.img'))) {
    const old = JSON.parse(readFileSync(manifestPath, 'utf8')) as { inputStamp?: string };
    if (old.inputStamp === stamp) {
      stage('image: up to date (inputs unchanged)');
      printSummary(JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest);
      return;
    }
  }
  mkdirSync(BUILD, { recursive: true });
  const tree = await buildTree(baseTar, rapd);
  await applyHardening(tree);
  const rootSizes = await largestInTree(tree);
  const { packages, unowned, treeBytes } = packageSizesOfTree(tree, NOT_IN_SLOT);
  const root = await buildRoot(tree, epoch);
  const esp = await buildEsp(tree, byLabel('rapbox-esp'), { a: byLabel('rapbox-root-a'), b: byLabel('rapbox-root-b') }, root, epoch);
  // The tree is no longer changed from here: it is what the root slot holds.
  mkdirSync(join(OUT, 'compliance'), { recursive: true });
  await verifyHardening(tree, join(BUILD, 'esp'), join(OUT, 'compliance/rules.json'));
  const data = await buildData(byLabel('rapbox-data'), epoch);
  const disk = await buildDisk(
    layout,
    new Map([
      ['rapbox-esp', esp.path],
      ['rapbox-root-a', root.path],
      ['rapbox-root-b', root.path],
      ['rapbox-data', data],
    ]),
  );

  stage('summary: sha256, compressed size');
  const zst = `${disk}.zst`;
  rmSync(zst, { force: true });
  // --long=31: a 2 GiB window sees slot B repeat slot A and the empty space
  // (420 MiB -> ~185 MiB). Decompressing needs the same flag: zstd -d --long=31.
  await sh(['zstd', ...ZSTD_ARGS, '-f', disk, '-o', zst]);
  const sizes: Sizes = {
    rootSlotBytes: statSync(root.path).size,
    squashfsBytes: root.squashfsBytes,
    hashTreeBytes: statSync(root.path).size - root.hashOffset,
    ukiBytes: statSync(esp.uki).size,
    kernelBytes: esp.kernelBytes,
    initrdBytes: esp.initrdBytes,
    rapdBytes: statSync(rapd).size,
    imageBytes: statSync(disk).size,
    imageZstBytes: statSync(zst).size,
    otaPayloadBytes: await otaPayloadBytes(root.path, esp.uki),
    treeBytes,
  };
  const manifest: Manifest = {
    inputStamp: stamp,
    sourceDateEpoch: epoch,
    diskLabelId: DISK_LABEL_ID,
    rootHash: root.rootHash,
    partitions: layout.map((p) => ({ label: p.label, uuid: p.uuid.toLowerCase(), offset: p.offset, sizeMiB: p.sizeMiB })),
    files: {},
    sizes,
    rootSizes,
    packageSizes: packages.slice(0, 25),
    buildSeconds: Math.round((Date.now() - started) / 1000),
  };
  for (const f of [disk, zst, root.path, rapd]) {
    manifest.files[relative(OUT, f)] = { bytes: statSync(f).size, sha256: await sha256File(f) };
  }
  writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  writeFileSync(
    join(OUT, 'SHA256SUMS'),
    Object.entries(manifest.files)
      .map(([n, f]) => `${f.sha256}  ${n}\n`)
      .join(''),
  );
  writeFileSync(join(OUT, 'size-report.txt'), renderSizeReport(sizes, packages, unowned, rootSizes));
  if (existsSync(join(OUT, 'rapbox.img.partial'))) unlinkSync(join(OUT, 'rapbox.img.partial'));
  printSummary(manifest);
}

interface Manifest {
  inputStamp: string;
  sourceDateEpoch: number;
  diskLabelId: string;
  /** dm-verity root hash of the root slot image (both slots at manufacturing). */
  rootHash: string;
  partitions: { label: string; uuid: string; offset: number; sizeMiB: number }[];
  files: Record<string, { bytes: number; sha256: string }>;
  /** Headline sizes (out/size-report.txt has them with the breakdown). */
  sizes?: Sizes;
  /** The root filesystem's largest directories and files (uncompressed), for slimming. */
  rootSizes?: { path: string; bytes: number }[];
  /** The root tree's largest Debian packages (bytes in the final tree). */
  packageSizes?: SizeEntry[];
  buildSeconds: number;
}

/**
 * What takes the room in the root filesystem: the two levels below /usr and
 * the top level (apparent sizes, before squashfs compression), largest first.
 */
export async function largestInTree(tree: string, count = 12): Promise<{ path: string; bytes: number }[]> {
  const r = await sh(['du', '--apparent-size', '--block-size=1', '--max-depth=3', '--one-file-system', tree]);
  return parseDu(r.stdout, tree)
    .filter((e) => e.path !== '/' && e.path !== '/usr' && e.path !== '/usr/lib' && e.path !== '/usr/share')
    .filter((e) => !NOT_IN_SLOT.some((d) => e.path === d || e.path.startsWith(`${d}/`)))
    .sort((a, b) => b.bytes - a.bytes)
    .slice(0, count);
}

/** `du -b` lines ("bytes<TAB>path") with the tree prefix removed. */
export function parseDu(text: string, tree: string): { path: string; bytes: number }[] {
  return text
    .split('\n')
    .map((l) => /^(\d+)\t(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ bytes: Number(m[1]), path: m[2]!.slice(tree.length) || '/' }));
}

function printSummary(m: Manifest): void {
  process.stderr.write('\n  file                 size        sha256\n');
  for (const [name, f] of Object.entries(m.files)) {
    process.stderr.write(`  ${name.padEnd(20)} ${humanSize(f.bytes).padStart(10)}  ${f.sha256}\n`);
  }
  if (m.sizes) process.stderr.write(`\n${renderHeadline(m.sizes)}  (breakdown by package and directory: out/size-report.txt)\n`);
  process.stderr.write(`  SOURCE_DATE_EPOCH=${m.sourceDateEpoch}; built in ${m.buildSeconds}s\n\n`);
}

/** make lock: an unpinned base build that rewrites image/packages.lock. */
export async function refreshLock(): Promise<void> {
  await buildBase(true);
}

if (import.meta.main) {
  (process.argv[2] === 'lock' ? refreshLock() : buildImage()).catch((e: unknown) => {
    process.stderr.write(`make image: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
