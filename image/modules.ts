// Kernel modules in the root slot: Debian's kernel ships ~4000 modules
// (~100 MiB, most of the root slot); a headless gateway needs its disks,
// NICs, firewall, filesystems and a console keyboard. image/kernel-modules.txt
// says what to keep; what those need (modules.dep, softdeps) comes along;
// the rest is deleted from the tree and depmod rebuilds the indexes.
// The initrd is not touched here: it is made at kernel install from its own
// list (image/initramfs/hooks/rapbox).

import { readdirSync, readFileSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { sh } from './tools.ts';

/** A module's name as modprobe sees it: file name without .ko[.xz|.zst|.gz], '-' as '_'. */
export function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replaceAll('-', '_');
}

/** Path below kernel/ without the .ko suffix: what list entries match. */
function entryPath(path: string): string {
  return path.replace(/^kernel\//, '').replace(/\.ko(\.(xz|zst|gz))?$/, '');
}

export function parseModuleList(text: string, source = 'image/kernel-modules.txt'): string[] {
  const out: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    if (!/^[A-Za-z0-9_][A-Za-z0-9_./+-]*$/.test(line) || line.includes('..') || line.endsWith('/') || line.endsWith('.ko')) {
      throw new Error(`${source}: line ${i + 1}: '${line}' is not a path below kernel/ without .ko (e.g. drivers/net/tun or net/netfilter)`);
    }
    if (out.includes(line)) throw new Error(`${source}: line ${i + 1}: '${line}' is listed twice`);
    out.push(line);
  });
  if (out.length === 0) throw new Error(`${source}: no entries (an empty list would remove every module)`);
  return out;
}

/** modules.dep: "kernel/a/b.ko.xz: kernel/c.ko.xz kernel/d.ko.xz" -> path -> dependency paths. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const dep = new Map<string, string[]>();
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const m = /^(\S+\.ko(?:\.\w+)?):(.*)$/.exec(line);
    if (!m) throw new Error(`modules.dep: line ${i + 1}: expected "module.ko: deps...", got ${JSON.stringify(line.slice(0, 120))}`);
    dep.set(m[1]!, m[2]!.trim().split(/\s+/).filter(Boolean));
  });
  return dep;
}

/** modules.softdep: "softdep NAME pre: A B post: C" -> name -> every A, B, C (aliases included, unresolved). */
export function parseSoftdeps(text: string): Map<string, string[]> {
  const soft = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const [kw, name, ...rest] = line.split(/\s+/);
    if (kw !== 'softdep' || !name) throw new Error(`modules.softdep: expected "softdep NAME pre: ... post: ...", got ${JSON.stringify(line.slice(0, 120))}`);
    const key = name.replaceAll('-', '_');
    soft.set(key, [...(soft.get(key) ?? []), ...rest.filter((w) => !w.endsWith(':')).map((w) => w.replaceAll('-', '_'))]);
  }
  return soft;
}

/**
 * The modules to keep: every module an entry names (a module, or a
 * directory's modules), closed over hard and soft dependencies. Entries that
 * match no module are returned, so the caller can fail on them.
 */
export function selectModules(
  entries: readonly string[],
  dep: ReadonlyMap<string, readonly string[]>,
  softdep: ReadonlyMap<string, readonly string[]>,
): { keep: Set<string>; unmatched: string[] } {
  const byName = new Map<string, string>();
  for (const p of dep.keys()) byName.set(moduleName(p), p);
  const keep = new Set<string>();
  const todo: string[] = [];
  const add = (p: string): void => {
    if (keep.has(p)) return;
    keep.add(p);
    todo.push(p);
  };
  const unmatched: string[] = [];
  for (const e of entries) {
    const hits = [...dep.keys()].filter((p) => {
      const ep = entryPath(p);
      return ep === e || ep.startsWith(`${e}/`);
    });
    if (hits.length === 0) unmatched.push(e);
    hits.forEach(add);
  }
  while (todo.length > 0) {
    const p = todo.pop()!;
    for (const d of dep.get(p) ?? []) add(d);
    // Softdeps name modules or aliases; an alias (crypto-crc32c) is left to
    // the directories kept whole (crypto, lib).
    for (const s of softdep.get(moduleName(p)) ?? []) {
      const hit = byName.get(s);
      if (hit) add(hit);
    }
  }
  return { keep, unmatched };
}

function removeEmptyDirs(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeEmptyDirs(join(dir, e.name));
  if (readdirSync(dir).length === 0) rmdirSync(dir);
}

/** Delete the modules the list does not keep from `tree`, then rebuild the indexes with the tree's own depmod. */
export async function pruneModules(tree: string, version: string, listFile: string): Promise<{ kept: number; removed: number; bytesBefore: number; bytesAfter: number }> {
  const dir = join(tree, 'usr/lib/modules', version);
  const dep = parseModulesDep(readFileSync(join(dir, 'modules.dep'), 'utf8'));
  const soft = parseSoftdeps(readFileSync(join(dir, 'modules.softdep'), 'utf8'));
  const entries = parseModuleList(readFileSync(listFile, 'utf8'), relative(join(listFile, '../..'), listFile));
  const { keep, unmatched } = selectModules(entries, dep, soft);
  if (unmatched.length > 0) {
    throw new Error(`${relative(join(listFile, '../..'), listFile)}: no module of kernel ${version} matches: ${unmatched.join(', ')}`);
  }
  let bytesBefore = 0;
  let bytesAfter = 0;
  let removed = 0;
  for (const p of dep.keys()) {
    const file = join(dir, p);
    const size = statSync(file).size;
    bytesBefore += size;
    if (keep.has(p)) {
      bytesAfter += size;
    } else {
      rmSync(file);
      removed++;
    }
  }
  removeEmptyDirs(join(dir, 'kernel'));
  await sh(['chroot', tree, 'depmod', '-a', version]);
  return { kept: keep.size, removed, bytesBefore, bytesAfter };
}
