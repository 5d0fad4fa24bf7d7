// `make flash DEV=/dev/sdX [PROVISION=bundle-dir]`: manufacturing. Writes
// out/rapbox.img onto a box's SSD, reads it back and compares (sha256 over
// the image's length, after the kernel's cached copy is dropped, so the bytes
// come from the device), then optionally writes a provisioning bundle
// (docs/provisioning.md) into the data partition.
//
//   flash.ts write DEV [--image IMG] [--provision DIR] [--allow-file]
//   flash.ts verify DEV [--image IMG] [--allow-file]
//   flash.ts provision DEV DIR [--allow-file]
//
// DANGER: this overwrites a whole disk. Before a byte is written it refuses a
// DEV that is missing, not a block device (a regular file only with
// --allow-file, for tests and for flashing image copies), a partition, a disk
// this system runs from, a disk with a mounted, swapped-on or otherwise held
// (device-mapper, RAID) partition, or one smaller than the image; the disk is
// then opened O_EXCL, which the kernel refuses while anything else holds it.
//
// The bundle goes into the data partition's ext4 with debugfs (e2fsprogs),
// not a mount: no kernel filesystem code on a factory station, no partition
// rescan or loop device, the same code path for an SSD and an image file; the
// write is checked by reading every file back through debugfs.

import { createHash } from 'node:crypto';
import { closeSync, constants, existsSync, fsyncSync, openSync, readFileSync, readSync, readdirSync, realpathSync, statSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { RapError, errorMessage } from '../src/lib/errors.ts';
import type { Runner } from '../src/lib/run.ts';
import { MANIFEST, checkBundle, readBundle, readFactoryConfig, type CheckedBundle } from '../src/rapd/provision.ts';
import { OUT, REPO, humanSize, sh } from './tools.ts';

const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
/** Where a pending bundle lives, relative to the data partition's root (/var on the box). */
export const BUNDLE_IN_DATA = 'lib/rapbox/provision';
export const DATA_LABEL = 'rapbox-data';

function refuse(message: string, context: Record<string, unknown> = {}): never {
  throw new RapError('RAP_FLASH', message, context);
}

/** "major:minor" of each mounted filesystem's device (field 3 of mountinfo) -> its mount point. */
export function parseMountinfo(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5 || !/^\d+:\d+$/.test(f[2]!)) continue;
    if (!out.has(f[2]!)) out.set(f[2]!, f[4]!.replace(/\\040/g, ' '));
  }
  return out;
}

/** What the host looks like, read from /proc and /sys (a fake tree in unit tests). */
export interface Host {
  /** /sys root. */
  sys: string;
  mountinfo: string;
  /** /proc/swaps. */
  swaps: string;
  /** What a path is (statSync, following symlinks). */
  kind(path: string): 'block' | 'file' | 'other' | 'missing';
  /** "major:minor" of a device node path. */
  devOf(path: string): string | null;
}

export function realHost(): Host {
  const read = (p: string): string => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  return {
    sys: '/sys',
    mountinfo: read('/proc/self/mountinfo'),
    swaps: read('/proc/swaps'),
    kind(path) {
      try {
        const st = statSync(path);
        return st.isBlockDevice() ? 'block' : st.isFile() ? 'file' : 'other';
      } catch {
        return 'missing';
      }
    },
    devOf(path) {
      try {
        const st = statSync(path, { bigint: true });
        if (!st.isBlockDevice()) return null;
        const d = st.rdev;
        const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
        const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
        return `${major}:${minor}`;
      } catch {
        return null;
      }
    },
  };
}

/** The sysfs directory of a block device by "major:minor", or null. */
function sysDir(host: Host, majmin: string): string | null {
  try {
    return realpathSync(join(host.sys, 'dev/block', majmin));
  } catch {
    return null;
  }
}

const readTrim = (p: string): string | null => {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
};

/**
 * The whole disks a device lives on: a partition's parent, and below
 * device-mapper, RAID or loop stacking the disks in `slaves/`.
 */
export function wholeDisks(host: Host, majmin: string, depth = 0): Set<string> {
  const out = new Set<string>();
  const dir = sysDir(host, majmin);
  if (!dir || depth > 8) return out;
  if (existsSync(join(dir, 'partition'))) {
    const parent = readTrim(join(dir, '..', 'dev'));
    if (parent) for (const d of wholeDisks(host, parent, depth + 1)) out.add(d);
    return out;
  }
  const slaves = existsSync(join(dir, 'slaves')) ? readdirSync(join(dir, 'slaves')) : [];
  if (slaves.length === 0) out.add(majmin);
  for (const s of slaves) {
    const d = readTrim(join(dir, 'slaves', s, 'dev'));
    if (d) for (const w of wholeDisks(host, d, depth + 1)) out.add(w);
  }
  return out;
}

export interface Target {
  path: string;
  kind: 'block' | 'file';
  /** Bytes the target can hold (a file grows: Infinity). */
  capacity: number;
}

/** Every refusal, before anything is opened for writing. */
export function checkTarget(dev: string | undefined, opts: { allowFile: boolean; imageBytes: number; host: Host }): Target {
  if (!dev) refuse('no target given: DEV=/dev/sdX (the whole SSD, e.g. /dev/sdb) is required');
  const { host } = opts;
  const kind = host.kind(dev);
  if (kind === 'missing') refuse(`${dev} does not exist`, { dev });
  if (kind === 'file') {
    if (!opts.allowFile) refuse(`${dev} is a regular file, not a block device (to write an image file on purpose, give --allow-file / ALLOW_FILE=1)`, { dev });
    return { path: dev, kind: 'file', capacity: Infinity };
  }
  if (kind !== 'block') refuse(`${dev} is not a block device`, { dev });
  const majmin = host.devOf(dev);
  const dir = majmin ? sysDir(host, majmin) : null;
  if (!majmin || !dir) refuse(`${dev}: cannot find it in ${host.sys}/dev/block`, { dev });
  if (existsSync(join(dir, 'partition'))) refuse(`${dev} is a partition (${basename(dir)}); give the whole disk (${basename(join(dir, '..'))})`, { dev });

  // The disks this system runs from: never, whatever else is true.
  const mounts = parseMountinfo(host.mountinfo);
  for (const [dm, mountPoint] of mounts) {
    if (!['/', '/boot', '/boot/efi', '/efi', '/usr', '/var'].includes(mountPoint)) continue;
    if (wholeDisks(host, dm).has(majmin)) refuse(`${dev} is the disk this system runs from (${mountPoint} is on it); refusing`, { dev, mountPoint });
  }
  // The disk and its partitions: none mounted, swapped on or held by another device.
  const parts = [{ name: basename(dir), majmin, dir }];
  for (const e of readdirSync(dir)) {
    const pd = join(dir, e);
    const pm = existsSync(join(pd, 'partition')) ? readTrim(join(pd, 'dev')) : null;
    if (pm) parts.push({ name: e, majmin: pm, dir: pd });
  }
  const swapped = new Set(
    host.swaps
      .split('\n')
      .slice(1)
      .map((l) => l.split(/\s+/)[0] ?? '')
      .filter((p) => p.startsWith('/'))
      .map((p) => host.devOf(p)),
  );
  for (const p of parts) {
    const at = mounts.get(p.majmin);
    if (at !== undefined) refuse(`${dev}: ${p.name} is mounted on ${at}; unmount it first`, { dev, partition: p.name, mountPoint: at });
    if (swapped.has(p.majmin)) refuse(`${dev}: ${p.name} is in use as swap; swapoff it first`, { dev, partition: p.name });
    const holders = existsSync(join(p.dir, 'holders')) ? readdirSync(join(p.dir, 'holders')) : [];
    if (holders.length > 0) refuse(`${dev}: ${p.name} is held by ${holders.join(', ')} (device-mapper, RAID or similar); release it first`, { dev, partition: p.name, holders });
  }
  const sectors = Number(readTrim(join(dir, 'size')) ?? '0');
  const capacity = sectors * 512;
  if (capacity < opts.imageBytes) refuse(`${dev} holds ${humanSize(capacity)}, smaller than the image (${humanSize(opts.imageBytes)})`, { dev, capacity });
  return { path: dev, kind: 'block', capacity };
}

type Progress = (line: string) => void;

function progressMeter(what: string, total: number, say: Progress): (done: number) => void {
  const started = Date.now();
  let next = 0;
  return (done) => {
    if (done < next && done < total) return;
    next = done + Math.max(total / 20, 64 * MiB);
    const secs = Math.max((Date.now() - started) / 1000, 0.001);
    say(`${what} ${humanSize(done)} of ${humanSize(total)} (${Math.floor((done / total) * 100)}%), ${humanSize(done / secs)}/s`);
  };
}

/** Copy the image onto the target; on return it is on the device (fsync). */
export function writeImage(image: string, target: Target, say: Progress): void {
  const total = statSync(image).size;
  const src = openSync(image, 'r');
  // O_EXCL on a block device: the kernel refuses while it is mounted or held.
  const dst = openSync(target.path, target.kind === 'block' ? constants.O_WRONLY | constants.O_EXCL : constants.O_WRONLY);
  const meter = progressMeter('write:', total, say);
  const buf = Buffer.allocUnsafe(CHUNK);
  try {
    let pos = 0;
    while (pos < total) {
      const n = readSync(src, buf, 0, Math.min(CHUNK, total - pos), pos);
      if (n <= 0) refuse(`${image}: short read at ${pos}`);
      let off = 0;
      while (off < n) off += writeSync(dst, buf, off, n - off, pos + off);
      pos += n;
      meter(pos);
    }
    say('write: flushing to the device (fsync)');
    fsyncSync(dst);
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}

export interface VerifyResult {
  bytes: number;
  sha256: string;
  /** Null when identical; else the first differing 4 MiB chunk's offset. */
  firstDifference: number | null;
  deviceSha256: string;
}

/**
 * Read the target back over the image's length and compare: a whole sha256
 * each, and per chunk to say where. For a block device the kernel's cached
 * copy is dropped first (BLKFLSBUF), so the bytes come from the device.
 */
export async function verifyImage(image: string, target: Target, run: Runner, say: Progress): Promise<VerifyResult> {
  if (target.kind === 'block') await run(['blockdev', '--flushbufs', target.path], { timeoutMs: 120_000 });
  const total = statSync(image).size;
  const a = openSync(image, 'r');
  const b = openSync(target.path, 'r');
  const ha = createHash('sha256');
  const hb = createHash('sha256');
  const ba = Buffer.allocUnsafe(CHUNK);
  const bb = Buffer.allocUnsafe(CHUNK);
  const meter = progressMeter('verify: read back', total, say);
  let firstDifference: number | null = null;
  try {
    let pos = 0;
    while (pos < total) {
      const want = Math.min(CHUNK, total - pos);
      const na = readSync(a, ba, 0, want, pos);
      let nb = 0;
      while (nb < want) {
        const r = readSync(b, bb, nb, want - nb, pos + nb);
        if (r <= 0) break;
        nb += r;
      }
      ha.update(ba.subarray(0, na));
      hb.update(bb.subarray(0, nb));
      if (firstDifference === null && (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb)))) firstDifference = pos;
      pos += want;
      meter(pos);
    }
  } finally {
    closeSync(a);
    closeSync(b);
  }
  return { bytes: total, sha256: ha.digest('hex'), deviceSha256: hb.digest('hex'), firstDifference };
}

/** Byte offset of the data partition, from the target's GPT. */
export async function dataPartitionOffset(path: string, run: Runner): Promise<number> {
  const r = await run(['sfdisk', '--json', path], { timeoutMs: 30_000 });
  let doc: { partitiontable?: { sectorsize?: number; partitions?: { name?: string; start?: number }[] } };
  try {
    doc = JSON.parse(r.stdout) as typeof doc;
  } catch (e) {
    refuse(`sfdisk --json ${path}: not JSON: ${errorMessage(e)}`);
  }
  const table = doc.partitiontable;
  const part = table?.partitions?.find((p) => p.name === DATA_LABEL);
  if (!table || !part || typeof part.start !== 'number') refuse(`${path}: no partition labelled ${DATA_LABEL} in its partition table (is it a rapbox disk?)`, { path });
  return part.start * (table.sectorsize ?? 512);
}

/** debugfs on the ext4 at `offset` inside `path` (a disk or an image file), through the one door. */
function debugfs(path: string, offset: number, run: Runner) {
  const fs = `${path}?offset=${offset}`;
  return {
    request: (cmd: string) => run(['debugfs', '-R', cmd, fs], { timeoutMs: 60_000 }),
    script: (cmds: string[]) => run(['debugfs', '-w', '-f', '-', fs], { input: `${cmds.join('\n')}\n`, timeoutMs: 120_000 }),
  };
}

/**
 * Write a checked bundle into the data partition (directory 0700, files 0600,
 * root-owned), then read every file back and compare its sha256. debugfs's
 * exit status says nothing about its commands, so the read-back is the check.
 */
export async function writeBundle(path: string, bundleDir: string, bundle: CheckedBundle, run: Runner, say: Progress): Promise<void> {
  const offset = await dataPartitionOffset(path, run);
  const fs = debugfs(path, offset, run);
  const existing = await fs.request(`stat ${BUNDLE_IN_DATA}`);
  if (/Inode:\s+\d+/.test(existing.stdout)) refuse(`${path}: the data partition already holds a pending bundle (${BUNDLE_IN_DATA}); flash again for a fresh data partition`, { path });
  const names = [MANIFEST, ...Object.keys(bundle.manifest.files)];
  for (const n of names) if (/[\s"]/.test(join(bundleDir, n))) refuse(`${join(bundleDir, n)}: debugfs cannot take paths with spaces or quotes`);
  const cmds = ['mkdir lib', 'mkdir lib/rapbox', `mkdir ${BUNDLE_IN_DATA}`, `sif ${BUNDLE_IN_DATA} mode 040700`, `cd ${BUNDLE_IN_DATA}`];
  for (const n of names) cmds.push(`write ${join(bundleDir, n)} ${n}`, `sif ${n} mode 0100600`, `sif ${n} uid 0`, `sif ${n} gid 0`);
  say(`provision: writing ${names.length} files for ${bundle.manifest.deviceId} into ${DATA_LABEL} (offset ${offset}) with debugfs`);
  await fs.script(cmds);
  for (const n of names) {
    const want = createHash('sha256').update(readFileSync(join(bundleDir, n))).digest('hex');
    const got = createHash('sha256').update((await fs.request(`cat ${BUNDLE_IN_DATA}/${n}`)).stdout).digest('hex');
    if (got !== want) refuse(`provision: ${BUNDLE_IN_DATA}/${n} read back from ${path} differs from the bundle (sha256 ${got}, want ${want})`, { path, file: n });
    const mode = /Mode:\s+(\d+)/.exec((await fs.request(`stat ${BUNDLE_IN_DATA}/${n}`)).stdout)?.[1];
    if (mode !== '0600') refuse(`provision: ${BUNDLE_IN_DATA}/${n} has mode ${mode ?? 'unknown'}, want 0600`, { path, file: n });
  }
  say(`provision: ${names.length} files read back and verified`);
}

/** Check a bundle as the box will (the image's factory config), before touching the disk. */
export function checkBundleDir(dir: string): CheckedBundle {
  return checkBundle(readBundle(dir), readFactoryConfig(join(REPO, 'rootfs-overlay/etc/rapd/rapd.json')));
}

const USAGE = `usage: flash.ts write DEV [--image IMG] [--provision BUNDLE_DIR] [--allow-file]
       flash.ts verify DEV [--image IMG] [--allow-file]
       flash.ts provision DEV BUNDLE_DIR [--allow-file]
(make flash DEV=/dev/sdX [PROVISION=dir] [ALLOW_FILE=1])`;

export async function flashMain(args: string[], run: Runner, host: Host, say: Progress): Promise<void> {
  const [cmd, ...rest] = args;
  let image = join(OUT, 'rapbox.img');
  let provision: string | undefined;
  let allowFile = false;
  const pos: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--image' || a === '--provision') {
      const v = rest[++i];
      if (!v) throw new RapError('RAP_USAGE', `${a} needs a value\n${USAGE}`);
      if (a === '--image') image = v;
      else provision = v;
    } else if (a === '--allow-file') allowFile = true;
    else if (a.startsWith('--')) throw new RapError('RAP_USAGE', `unknown option '${a}'\n${USAGE}`);
    else pos.push(a);
  }
  if (cmd !== 'write' && cmd !== 'verify' && cmd !== 'provision') throw new RapError('RAP_USAGE', `${cmd ? `unknown command '${cmd}'` : 'no command given'}\n${USAGE}`);
  if (pos.length > (cmd === 'provision' ? 2 : 1)) throw new RapError('RAP_USAGE', `unexpected argument '${pos.at(-1)}'\n${USAGE}`);
  if (cmd === 'provision') provision = pos[1] ?? refuse('provision needs a bundle directory');
  const dev = pos[0];
  if (!dev) refuse('no target given: DEV=/dev/sdX (the whole SSD, e.g. /dev/sdb) is required');
  // The bundle first: a bad one stops everything before the disk is touched.
  const bundle = provision ? checkBundleDir(provision) : null;
  if (bundle) say(`bundle ${provision}: ok, device ${bundle.manifest.deviceId}`);
  if (cmd !== 'provision' && !existsSync(image)) refuse(`${image} not found: run make image first`);
  const imageBytes = cmd === 'provision' ? 0 : statSync(image).size;
  const target = checkTarget(dev, { allowFile, imageBytes, host });
  if (cmd === 'write') {
    say(`write: ${image} (${humanSize(imageBytes)}) -> ${target.path} (${target.kind === 'block' ? humanSize(target.capacity) : 'regular file'})`);
    writeImage(image, target, say);
  }
  if (cmd !== 'provision') {
    const v = await verifyImage(image, target, run, say);
    if (v.firstDifference !== null) {
      refuse(`verify: ${target.path} differs from ${image}: first difference in the 4 MiB at byte ${v.firstDifference}; sha256 over ${v.bytes} bytes: device ${v.deviceSha256}, image ${v.sha256}. Do not ship this disk.`, {
        dev: target.path,
        firstDifference: v.firstDifference,
      });
    }
    say(`verify: ok, sha256 ${v.sha256} over ${v.bytes} bytes read back from ${target.path}`);
  }
  if (bundle && provision) await writeBundle(target.path, provision, bundle, run, say);
}

if (import.meta.main) {
  const say = (l: string): void => void process.stderr.write(`flash: ${l}\n`);
  flashMain(process.argv.slice(2), (argv, opts) => sh([...argv], opts), realHost(), say).then(
    () => say('done'),
    (e: unknown) => {
      process.stderr.write(`flash: ${e instanceof RapError ? `${e.code}: ` : ''}${errorMessage(e)}\n`);
      process.exit(e instanceof RapError && e.code === 'RAP_USAGE' ? 2 : 1);
    },
  );
}
