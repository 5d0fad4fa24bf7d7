// `make compliance` (run by `make image`): the evidence pack next to the
// image, in out/compliance/, from the exact tree the root slot was made of
// (out/build/rootfs) and the build's own outputs:
//
//   rules.json              our hardening checks on the sealed tree (written by the image build)
//   systemd-security.json   `systemd-analyze security --offline` per box service
//   sbom.spdx.json          SPDX 2.3: every Debian package in the root, the npm packages bundled into rapd
//   SHA256SUMS              the image, the root slot payload, rapd (copied from out/)
//   summary.json            the numbers, in the shape issue #6 asks for
//
// Every file is deterministic (no clock, no host paths): the same image gives
// the same pack. Fails when rapd's systemd exposure is above its target.

import { copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { build } from 'esbuild';
import { RapError, errorLine } from '../src/lib/errors.ts';
import { OUT, REPO, info, sh, sourceDateEpoch, stage } from './tools.ts';

/** `systemd-analyze security` exposure rapd must stay at or under (0 best, 10 worst). */
export const RAPD_EXPOSURE_TARGET = 2.0;
/** Units that run on every box without being enabled (static), scored too. */
const STATIC_SERVICES = ['systemd-journald.service', 'systemd-udevd.service', 'systemd-logind.service'];

/** .service units enabled in the tree: enablement symlinks in etc/systemd/system (wants/requires, aliases). */
export function enabledServices(tree: string): string[] {
  const dir = join(tree, 'etc/systemd/system');
  if (!existsSync(dir)) return [];
  const units = new Set<string>();
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory() && /\.(wants|requires|upholds)$/.test(e.name)) {
      for (const u of readdirSync(p)) if (u.endsWith('.service') && lstatSync(join(p, u)).isSymbolicLink()) units.add(u);
    } else if (e.isSymbolicLink() && e.name.endsWith('.service')) {
      const target = readlinkSync(p);
      if (target !== '/dev/null') units.add(target.slice(target.lastIndexOf('/') + 1));
    }
  }
  return [...units].sort();
}

/** The overall exposure from `systemd-analyze security UNIT` text output. */
export function parseExposure(text: string, unit: string): { score: number; level: string } {
  const m = /Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\w+)/.exec(text);
  if (!m || m[1] !== unit) throw new RapError('RAP_IMAGE', `systemd-analyze security printed no overall exposure for ${unit}`, { unit });
  return { score: Number(m[2]), level: m[3]! };
}

export async function systemdSecurity(tree: string): Promise<Record<string, { score: number; level: string }>> {
  const units = [...new Set([...enabledServices(tree), ...STATIC_SERVICES.filter((u) => existsSync(join(tree, 'usr/lib/systemd/system', u)))])].sort();
  const out: Record<string, { score: number; level: string }> = {};
  for (const unit of units) {
    // Offline against the tree (systemd >= 252 on the build host); the unit
    // files are judged as written, drop-ins included.
    const r = await sh(['systemd-analyze', 'security', '--offline=yes', `--root=${tree}`, '--no-pager', unit], { timeoutMs: 120_000, env: { SYSTEMD_COLORS: '0' } });
    out[unit] = parseExposure(r.stdout, unit);
  }
  return out;
}

// ---- SBOM -------------------------------------------------------------------

export interface DebPackage {
  name: string;
  version: string;
  arch: string;
  source: string;
}

/** Installed packages from a dpkg status file (only "install ok installed"). */
export function parseDpkgStatus(text: string): DebPackage[] {
  const pkgs: DebPackage[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    const f: Record<string, string> = {};
    for (const line of para.split('\n')) {
      const m = /^([A-Za-z0-9-]+):\s?(.*)$/.exec(line);
      if (m) f[m[1]!] = m[2]!;
    }
    if (!f['Package']) continue;
    if (f['Status'] !== 'install ok installed') continue;
    if (!f['Version']) throw new RapError('RAP_IMAGE', `dpkg status: package ${f['Package']} has no Version`);
    pkgs.push({ name: f['Package'], version: f['Version'], arch: f['Architecture'] ?? 'all', source: (f['Source'] ?? f['Package']).split(' ')[0]! });
  }
  return pkgs.sort((a, b) => a.name.localeCompare(b.name));
}

/** The License: short names of a machine-readable (DEP-5) copyright file, or null when it is not one. */
export function copyrightLicenses(text: string): string[] | null {
  if (!/^Format:\s*\S/m.test(text)) return null;
  const names = new Set<string>();
  for (const m of text.matchAll(/^License:[ \t]*(\S.*?)[ \t]*$/gm)) names.add(m[1]!);
  return [...names].sort();
}

// Debian short names -> SPDX ids, for the common ones; anything else makes the
// package's declared licence NOASSERTION (the Debian names stay in the comment).
const SPDX: Record<string, string> = {
  'GPL-1': 'GPL-1.0-only', 'GPL-1+': 'GPL-1.0-or-later', 'GPL-2': 'GPL-2.0-only', 'GPL-2+': 'GPL-2.0-or-later',
  'GPL-2.0': 'GPL-2.0-only', 'GPL-2.0+': 'GPL-2.0-or-later', 'GPL-2.0-only': 'GPL-2.0-only', 'GPL-2.0-or-later': 'GPL-2.0-or-later',
  'GPL-3': 'GPL-3.0-only', 'GPL-3+': 'GPL-3.0-or-later', 'GPL-3.0': 'GPL-3.0-only', 'GPL-3.0+': 'GPL-3.0-or-later',
  'LGPL-2': 'LGPL-2.0-only', 'LGPL-2+': 'LGPL-2.0-or-later', 'LGPL-2.1': 'LGPL-2.1-only', 'LGPL-2.1+': 'LGPL-2.1-or-later',
  'LGPL-3': 'LGPL-3.0-only', 'LGPL-3+': 'LGPL-3.0-or-later', 'AGPL-3+': 'AGPL-3.0-or-later',
  'BSD-2-clause': 'BSD-2-Clause', 'BSD-2-Clause': 'BSD-2-Clause', 'BSD-3-clause': 'BSD-3-Clause', 'BSD-3-Clause': 'BSD-3-Clause',
  'BSD-4-clause': 'BSD-4-Clause', 'BSD-4-Clause': 'BSD-4-Clause', '0BSD': '0BSD', Expat: 'MIT', MIT: 'MIT', 'MIT/X11': 'MIT', X11: 'X11',
  ISC: 'ISC', 'Apache-2': 'Apache-2.0', 'Apache-2.0': 'Apache-2.0', 'CC0-1.0': 'CC0-1.0', 'CC-BY-SA-4.0': 'CC-BY-SA-4.0',
  zlib: 'Zlib', Zlib: 'Zlib', 'BSL-1.0': 'BSL-1.0', 'MPL-2.0': 'MPL-2.0', Artistic: 'Artistic-1.0-Perl', FSFAP: 'FSFAP', FSFULLR: 'FSFULLR',
  'GPL-2 with Linux-syscall-note exception': 'GPL-2.0-only WITH Linux-syscall-note',
  'GPL-3+ with Bison exception': 'GPL-3.0-or-later WITH Bison-exception-2.2',
};

/** One Debian licence field ("GPL-2+ or Artistic", "BSD-3-clause") as SPDX, or null if a part has no SPDX id. */
export function spdxExpression(debian: string): string | null {
  const alternatives = debian.split(/\s+or\s+/i).map((a) => SPDX[a.trim()] ?? null);
  if (alternatives.some((a) => a === null)) return null;
  return alternatives.length === 1 ? alternatives[0]! : `(${alternatives.join(' OR ')})`;
}

export interface SbomPackage {
  spdxId: string;
  name: string;
  version: string;
  purl: string;
  supplier: string;
  /** SPDX expression, or NOASSERTION. */
  licenseDeclared: string;
  licenseComments: string;
}

export function debianSbomPackages(tree: string): SbomPackage[] {
  const status = join(tree, 'var/lib/dpkg/status');
  if (!existsSync(status)) throw new RapError('RAP_IMAGE', `${status} is missing: the SBOM is made from the image's dpkg database`);
  return parseDpkgStatus(readFileSync(status, 'utf8')).map((p) => {
    const cr = join(tree, 'usr/share/doc', p.name, 'copyright');
    let licenseDeclared = 'NOASSERTION';
    let licenseComments: string;
    if (!existsSync(cr)) {
      licenseComments = 'no /usr/share/doc/<package>/copyright in the image';
    } else {
      const names = copyrightLicenses(readFileSync(cr, 'latin1'));
      if (names === null) {
        licenseComments = 'Debian copyright file is not machine-readable (DEP-5); see /usr/share/doc/<package>/copyright';
      } else {
        const exprs = names.map(spdxExpression);
        if (names.length > 0 && exprs.every((e) => e !== null)) licenseDeclared = [...new Set(exprs)].join(' AND ');
        licenseComments = `Debian copyright (DEP-5) License fields: ${names.join('; ') || 'none'}`;
      }
    }
    return {
      spdxId: spdxId('deb', p.name),
      name: p.name,
      version: p.version,
      purl: `pkg:deb/debian/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}?arch=${p.arch}&distro=debian-13`,
      supplier: 'Organization: Debian',
      licenseDeclared,
      licenseComments,
    };
  });
}

export function spdxId(kind: string, name: string): string {
  return `SPDXRef-${kind}-${name.replace(/[^A-Za-z0-9.-]/g, (c) => `-${c.charCodeAt(0).toString(16)}-`)}`;
}

/** npm packages esbuild puts into the rapd bundle (same entry and options as image/sea.ts), plus the Node runtime. */
export async function npmSbomPackages(): Promise<SbomPackage[]> {
  const r = await build({
    entryPoints: [join(REPO, 'src/rapd/main.ts')],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    define: { __RAPD_VERSION__: '"sbom"' },
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
  const names = new Set<string>();
  for (const input of Object.keys(r.metafile.inputs)) {
    const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) names.add(m[1]!);
  }
  const runtime = JSON.parse(readFileSync(join(REPO, 'image/node-runtime.json'), 'utf8')) as { package: string };
  names.add(runtime.package);
  return [...names].sort().map((name) => {
    const pj = JSON.parse(readFileSync(join(REPO, 'node_modules', name, 'package.json'), 'utf8')) as { version: string; license?: string };
    return {
      spdxId: spdxId('npm', name),
      name,
      version: pj.version,
      purl: `pkg:npm/${name.startsWith('@') ? `%40${name.slice(1)}` : name}@${pj.version}`,
      supplier: 'NOASSERTION',
      licenseDeclared: pj.license ?? 'NOASSERTION',
      licenseComments: name === runtime.package ? 'the Node.js runtime the rapd single executable is built on' : 'bundled into rapd by esbuild',
    };
  });
}

export interface Hashes {
  image: string;
  imageZst: string;
  rootSlot: string;
  rapd: string;
}

/** out/SHA256SUMS ("<sha256>  <name>") -> the files the pack names. */
export function parseSums(text: string): Hashes {
  const sums = new Map<string, string>();
  for (const line of text.split('\n').filter(Boolean)) {
    const m = /^([0-9a-f]{64}) {2}(\S+)$/.exec(line);
    if (!m) throw new RapError('RAP_IMAGE', `SHA256SUMS: bad line '${line}'`);
    sums.set(m[2]!, m[1]!);
  }
  const get = (n: string): string => {
    const v = sums.get(n);
    if (!v) throw new RapError('RAP_IMAGE', `SHA256SUMS: no entry for ${n}`);
    return v;
  };
  return { image: get('rapbox.img'), imageZst: get('rapbox.img.zst'), rootSlot: get('build/root.img'), rapd: get('rapd') };
}

export function renderSpdx(o: { deb: SbomPackage[]; npm: SbomPackage[]; hashes: Hashes; created: string }): string {
  const pkg = (p: SbomPackage): Record<string, unknown> => ({
    SPDXID: p.spdxId,
    name: p.name,
    versionInfo: p.version,
    supplier: p.supplier,
    downloadLocation: 'NOASSERTION',
    filesAnalyzed: false,
    licenseConcluded: 'NOASSERTION',
    licenseDeclared: p.licenseDeclared,
    licenseComments: p.licenseComments,
    copyrightText: 'NOASSERTION',
    externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: p.purl }],
  });
  const doc = {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: 'rapbox-image',
    documentNamespace: `https://rapbox.invalid/spdx/rapbox-image-${o.hashes.image}`,
    creationInfo: { created: o.created, creators: ['Tool: rapbox-image-compliance', 'Organization: rapbox'] },
    packages: [
      {
        SPDXID: 'SPDXRef-image',
        name: 'rapbox.img',
        versionInfo: o.hashes.image.slice(0, 16),
        supplier: 'Organization: rapbox',
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        checksums: [{ algorithm: 'SHA256', checksumValue: o.hashes.image }],
        licenseConcluded: 'NOASSERTION',
        licenseDeclared: 'NOASSERTION',
        copyrightText: 'NOASSERTION',
      },
      {
        SPDXID: 'SPDXRef-rapd',
        name: 'rapd',
        versionInfo: o.hashes.rapd.slice(0, 16),
        supplier: 'Organization: rapbox',
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        checksums: [{ algorithm: 'SHA256', checksumValue: o.hashes.rapd }],
        licenseConcluded: 'NOASSERTION',
        licenseDeclared: 'Apache-2.0',
        copyrightText: 'NOASSERTION',
      },
      ...o.deb.map(pkg),
      ...o.npm.map(pkg),
    ],
    relationships: [
      { spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: 'SPDXRef-image' },
      { spdxElementId: 'SPDXRef-image', relationshipType: 'CONTAINS', relatedSpdxElement: 'SPDXRef-rapd' },
      ...o.deb.map((p) => ({ spdxElementId: 'SPDXRef-image', relationshipType: 'CONTAINS', relatedSpdxElement: p.spdxId })),
      ...o.npm.map((p) => ({ spdxElementId: 'SPDXRef-rapd', relationshipType: 'CONTAINS', relatedSpdxElement: p.spdxId })),
    ],
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}

// ---- the pack ---------------------------------------------------------------

export interface Summary {
  scap: { profile: string; pass: number; fail: number; notapplicable: number; notchecked: number } | null;
  lynis: { index: number; warnings: number } | null;
  systemd: Record<string, number>;
  rules: { pass: number; fail: number; excepted: number; notapplicable: number };
  sbom: { packages: number; debian: number; npm: number; licenseDeclared: number };
  sha256: Hashes;
  /** Why a null section is null. */
  notes: Record<string, string>;
}

export function renderSummary(o: { rules: Summary['rules']; systemd: Record<string, { score: number }>; deb: SbomPackage[]; npm: SbomPackage[]; hashes: Hashes }): string {
  const all = [...o.deb, ...o.npm];
  const s: Summary = {
    scap: null,
    lynis: null,
    systemd: Object.fromEntries(Object.entries(o.systemd).map(([u, v]) => [u, v.score])),
    rules: o.rules,
    sbom: { packages: all.length, debian: o.deb.length, npm: o.npm.length, licenseDeclared: all.filter((p) => p.licenseDeclared !== 'NOASSERTION').length },
    sha256: o.hashes,
    notes: {
      scap: 'not run yet: OpenSCAP with Debian SCAP Security Guide content for the image release is the next step of issue #6',
      lynis: 'not run yet: Lynis inside the booted image (test/vm) is the next step of issue #6',
      systemd: `systemd-analyze security --offline=yes --root=<tree> on the build host (0 = best, 10 = worst); rapd target <= ${RAPD_EXPOSURE_TARGET}`,
    },
  };
  return `${JSON.stringify(s, null, 2)}\n`;
}

export async function writeCompliance(tree = join(OUT, 'build/rootfs'), dir = join(OUT, 'compliance')): Promise<void> {
  stage('compliance: evidence pack -> out/compliance/');
  if (!existsSync(join(tree, 'usr/lib/os-release'))) throw new RapError('RAP_IMAGE', `${tree} is not the image's root tree: run make image first`);
  const sums = join(OUT, 'SHA256SUMS');
  const rulesFile = join(dir, 'rules.json');
  for (const f of [sums, rulesFile]) if (!existsSync(f)) throw new RapError('RAP_IMAGE', `${relative(REPO, f)} is missing: run make image first`);
  mkdirSync(dir, { recursive: true });
  const hashes = parseSums(readFileSync(sums, 'utf8'));
  copyFileSync(sums, join(dir, 'SHA256SUMS'));

  const systemd = await systemdSecurity(tree);
  writeFileSync(join(dir, 'systemd-security.json'), `${JSON.stringify(systemd, null, 2)}\n`);
  for (const [u, v] of Object.entries(systemd)) info(`${u.padEnd(40)} ${v.score.toFixed(1)} ${v.level}`);

  const deb = debianSbomPackages(tree);
  const npm = await npmSbomPackages();
  const created = new Date((await sourceDateEpoch()) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  writeFileSync(join(dir, 'sbom.spdx.json'), renderSpdx({ deb, npm, hashes, created }));
  info(`sbom.spdx.json: ${deb.length} Debian packages, ${npm.length} npm packages`);

  const rules = (JSON.parse(readFileSync(rulesFile, 'utf8')) as { summary: Summary['rules'] }).summary;
  writeFileSync(join(dir, 'summary.json'), renderSummary({ rules, systemd, deb, npm, hashes }));

  const rapd = systemd['rapd.service'];
  if (!rapd) throw new RapError('RAP_IMAGE', 'rapd.service is not enabled in the image tree');
  if (rapd.score > RAPD_EXPOSURE_TARGET) {
    throw new RapError('RAP_IMAGE', `rapd.service: systemd-analyze security exposure ${rapd.score} is above the target ${RAPD_EXPOSURE_TARGET}`);
  }
}

if (import.meta.main) {
  writeCompliance().catch((e: unknown) => {
    process.stderr.write(`make compliance: ${errorLine(e)}\n`);
    process.exit(1);
  });
}
