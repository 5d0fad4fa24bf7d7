// What is left by size, written at build time (out/size-report.txt, and the
// numbers in out/image.json): the root tree by Debian package (from dpkg's
// file lists, measured on the final tree, so excluded docs and pruned
// modules are not counted) and by directory, then the artefacts: root slot,
// UKI and its parts, rapd, the disk image raw and compressed, and the OTA
// payload (one root slot + its UKI, compressed as the disk image is).

import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { humanSize } from './tools.ts';

export interface Sizes {
  /** Squashfs + dm-verity hash tree: one slot's partition content. */
  rootSlotBytes: number;
  squashfsBytes: number;
  hashTreeBytes: number;
  ukiBytes: number;
  kernelBytes: number;
  initrdBytes: number;
  rapdBytes: number;
  imageBytes: number;
  imageZstBytes: number;
  /** zstd (same settings as rapbox.img.zst) of one root slot image followed by its UKI. */
  otaPayloadBytes: number;
  /** Apparent bytes of the root tree that goes into the squashfs (no /boot). */
  treeBytes: number;
}

export interface SizeEntry {
  name: string;
  bytes: number;
}

/** The package a dpkg info file belongs to: "libc6:amd64.list" -> "libc6", null for other files. */
export function listFilePackage(file: string): string | null {
  const m = /^([a-z0-9][a-z0-9+.-]+)(?::[a-z0-9]+)?\.list$/.exec(file);
  return m ? m[1]! : null;
}

/**
 * Bytes per package: each file counted once (by inode: hard links, and paths
 * reached through /lib -> usr/lib, are one file), for the first package
 * listing it in name order. Files no package lists (rapd, the overlay,
 * generated files) are "(not from a package)".
 */
export function sizesByPackage(
  lists: ReadonlyMap<string, readonly string[]>,
  allFiles: readonly { path: string; ino: number; bytes: number }[],
  statOf: (path: string) => { ino: number; bytes: number } | null,
): { packages: SizeEntry[]; unowned: SizeEntry[] } {
  const seen = new Set<number>();
  const out = new Map<string, number>();
  for (const pkg of [...lists.keys()].sort()) {
    let sum = 0;
    for (const p of lists.get(pkg)!) {
      const st = statOf(p);
      if (!st || seen.has(st.ino)) continue;
      seen.add(st.ino);
      sum += st.bytes;
    }
    out.set(pkg, sum);
  }
  const unowned: SizeEntry[] = [];
  for (const f of allFiles) {
    if (seen.has(f.ino)) continue;
    seen.add(f.ino);
    unowned.push({ name: f.path, bytes: f.bytes });
  }
  out.set('(not from a package)', unowned.reduce((n, f) => n + f.bytes, 0));
  return { packages: sortEntries([...out].map(([name, bytes]) => ({ name, bytes }))), unowned: sortEntries(unowned) };
}

const sortEntries = (xs: SizeEntry[]): SizeEntry[] => xs.sort((a, b) => b.bytes - a.bytes || (a.name < b.name ? -1 : 1));

/**
 * Regular files of the tree but those under `skip` (not in the root slot),
 * with inode and size. Walked by hand: readdir's recursive mode follows the
 * /bin -> usr/bin style symlinks and would count /usr twice.
 */
function treeFiles(tree: string, skip: readonly string[]): { path: string; ino: number; bytes: number }[] {
  const out: { path: string; ino: number; bytes: number }[] = [];
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(tree, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory() && !skip.includes(r)) walk(r);
      else if (e.isFile()) {
        const st = lstatSync(join(tree, r));
        out.push({ path: r, ino: st.ino, bytes: st.size });
      }
    }
  };
  walk('');
  return out;
}

/** The tree's files (but those under `skip`) by installed Debian package, read from its dpkg database. */
export function packageSizesOfTree(tree: string, skip: readonly string[]): { packages: SizeEntry[]; unowned: SizeEntry[]; treeBytes: number } {
  const info = join(tree, 'var/lib/dpkg/info');
  const lists = new Map<string, string[]>();
  for (const f of readdirSync(info).sort()) {
    const pkg = listFilePackage(f);
    if (pkg) lists.set(pkg, readFileSync(join(info, f), 'utf8').split('\n').filter((l) => l.startsWith('/')));
  }
  const files = treeFiles(tree, skip);
  const statOf = (p: string): { ino: number; bytes: number } | null => {
    if (skip.some((d) => p.startsWith(`${d}/`))) return null;
    try {
      const st = lstatSync(join(tree, p));
      return st.isFile() ? { ino: st.ino, bytes: st.size } : null;
    } catch {
      // listed but not in the tree: excluded (docs) or pruned (modules)
      return null;
    }
  };
  const inodes = new Map(files.map((f) => [f.ino, f.bytes]));
  return { ...sizesByPackage(lists, files, statOf), treeBytes: [...inodes.values()].reduce((n, b) => n + b, 0) };
}

const row = (bytes: number, what: string): string => `  ${humanSize(bytes).padStart(10)}  ${what}\n`;

/** The headline numbers: what `make image` prints and the report starts with. */
export function renderHeadline(s: Sizes): string {
  return (
    row(s.otaPayloadBytes, `OTA payload (one root slot + its UKI, zstd as rapbox.img.zst; ${s.otaPayloadBytes} bytes)`) +
    row(s.rootSlotBytes, `root slot (squashfs ${humanSize(s.squashfsBytes)} + hash tree ${humanSize(s.hashTreeBytes)})`) +
    row(s.ukiBytes, `UKI per slot (kernel ${humanSize(s.kernelBytes)}, initrd ${humanSize(s.initrdBytes)})`) +
    row(s.rapdBytes, 'rapd (Node single executable, uncompressed in the tree)') +
    row(s.imageBytes, 'rapbox.img (raw disk)') +
    row(s.imageZstBytes, 'rapbox.img.zst')
  );
}

/** out/size-report.txt: headline, then the root tree by package and by directory. */
export function renderSizeReport(
  s: Sizes,
  packages: readonly SizeEntry[],
  unowned: readonly SizeEntry[],
  dirs: readonly { path: string; bytes: number }[],
  topPackages = 25,
): string {
  let out = 'rapbox image sizes (written by make image)\n\n';
  out += renderHeadline(s);
  out += `\nroot tree: ${humanSize(s.treeBytes)} of files before squashfs compression; by Debian package (dpkg file lists, as installed):\n`;
  for (const p of packages.slice(0, topPackages)) out += row(p.bytes, p.name);
  const rest = packages.slice(topPackages);
  if (rest.length > 0) out += row(rest.reduce((n, p) => n + p.bytes, 0), `${rest.length} more packages`);
  out += '\nlargest files not from a package (ours, and files made at install or build time):\n';
  for (const f of unowned.slice(0, 8)) out += row(f.bytes, f.name);
  out += '\nroot tree by directory (largest, nested directories counted in their parents too):\n';
  for (const d of dirs) out += row(d.bytes, d.path);
  return out;
}
