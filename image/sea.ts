// Builds out/rapd and out/rap-center: each entry point bundled by esbuild and
// injected into the pinned Node 24 binary as a single executable application
// (SEA). Two executables, not one: the center never ships in the box image.
//
// Order matters: strip the node binary *before* injecting the blob. Stripping
// after injection rewrites the ELF and the resulting binary segfaults.

import { build } from 'esbuild';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BOX_NODE, OUT, REPO, gitDescribe, humanSize, sh, sha256File, stage } from './tools.ts';

const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

interface RuntimePin {
  package: string;
  version: string;
  sha256: string;
}

/** Refuse to ship a Node binary that is not exactly the pinned one. */
export async function verifyRuntime(): Promise<RuntimePin> {
  const pin = JSON.parse(readFileSync(join(REPO, 'image/node-runtime.json'), 'utf8')) as RuntimePin;
  const pkg = JSON.parse(readFileSync(join(REPO, 'node_modules', pin.package, 'package.json'), 'utf8')) as { version: string };
  if (pkg.version !== pin.version) {
    throw new Error(`node runtime: node_modules has ${pin.package}@${pkg.version}, image/node-runtime.json pins ${pin.version} (run npm ci)`);
  }
  if (!/^24\./.test(pin.version)) throw new Error(`node runtime: ${pin.version} is not the Node 24 LTS line`);
  const got = await sha256File(BOX_NODE);
  if (got !== pin.sha256) {
    throw new Error(`node runtime: ${BOX_NODE} has sha256 ${got}, expected ${pin.sha256} from image/node-runtime.json`);
  }
  const v = (await sh([BOX_NODE, '--version'])).stdout.trim();
  if (v !== `v${pin.version}`) throw new Error(`node runtime: binary says ${v}, expected v${pin.version}`);
  return pin;
}

/** The single executables: one entry point each, sharing src/lib and src/protocol. */
export const SEA_TARGETS = [
  // A small young generation: under load V8 otherwise grows it to 3 x 16 MiB
  // of mostly empty semi-space, which is most of rapd's memory (make bench).
  { name: 'rapd', entry: 'src/rapd/main.ts', execArgv: ['--max-semi-space-size=4'] },
  { name: 'rap-center', entry: 'src/center/main.ts', execArgv: [] },
] as const;
export type SeaName = (typeof SEA_TARGETS)[number]['name'];

/** The pinned node binary, stripped once; every target is injected into a copy of it. */
async function strippedNode(work: string, pin: RuntimePin): Promise<string> {
  const stripped = join(work, `node-${pin.version}.stripped`);
  const stampFile = `${stripped}.stamp`;
  if (existsSync(stripped) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === pin.sha256) return stripped;
  const tmp = `${stripped}.tmp`;
  copyFileSync(BOX_NODE, tmp);
  chmodSync(tmp, 0o755);
  await sh(['strip', '--strip-all', tmp]);
  renameSync(tmp, stripped);
  writeFileSync(stampFile, pin.sha256);
  return stripped;
}

async function buildOne(name: SeaName, entry: string, execArgv: readonly string[], work: string, pin: RuntimePin, version: string): Promise<string> {
  stage(`${name}: bundle with esbuild`);
  const bundle = join(work, `${name}.cjs`);
  await build({
    entryPoints: [join(REPO, entry)],
    outfile: bundle,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    define: { __RAPD_VERSION__: JSON.stringify(version) },
    legalComments: 'none',
    logLevel: 'warning',
  });

  const seaConfig = join(work, `${name}.sea-config.json`);
  const blob = join(work, `${name}.blob`);
  // Relative paths (node runs in `work`): the blob records the main script's
  // path, and an absolute one would make two checkouts build different bytes.
  const seaSettings = JSON.stringify({
      main: `${name}.cjs`,
      output: `${name}.blob`,
      disableExperimentalSEAWarning: true,
      // A code cache is V8-build specific and not byte-stable; startup is fast without.
      useCodeCache: false,
      useSnapshot: false,
      // Fixed V8 flags, baked in; and a box daemon must not load code from
      // the environment (NODE_OPTIONS), so nothing can be added to them.
      execArgv,
      execArgvExtension: 'none',
  });
  const out = join(OUT, name);
  // Same bundle, same runtime, same SEA settings: the binary would not change.
  const stampFile = join(work, `${name}.stamp`);
  const stamp = `${await sha256File(bundle)} ${pin.sha256} ${seaSettings}`;
  if (existsSync(out) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
    stage(`${name}: up to date (${version})`);
    return out;
  }

  stage(`${name}: make SEA blob`);
  writeFileSync(seaConfig, seaSettings);
  await sh([BOX_NODE, '--experimental-sea-config', seaConfig], { cwd: work });

  stage(`${name}: inject blob into stripped node`);
  const tmp = join(work, `${name}.tmp`);
  // Dangerous step: strip must happen before injection (strippedNode), never after.
  copyFileSync(await strippedNode(work, pin), tmp);
  chmodSync(tmp, 0o755);
  await sh([BOX_NODE, join(REPO, 'node_modules/postject/dist/cli.js'), tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]);

  // Prove it runs with no node on PATH and with hostile NODE_OPTIONS ignored.
  const check = await sh([tmp, '--version'], { cleanEnv: true, env: { PATH: '/nonexistent', NODE_OPTIONS: '--require=/nonexistent.js' } });
  if (!check.stdout.startsWith(`${name} ${version} (node v${pin.version})`)) {
    throw new Error(`built ${name} answered ${JSON.stringify(check.stdout)} to --version`);
  }
  renameSync(tmp, out);
  writeFileSync(stampFile, stamp);
  stage(`${name}: ${out} ${humanSize(statSync(out).size)} (${version}, node v${pin.version})`);
  return out;
}

/** Builds out/rapd and out/rap-center; returns their paths by name. */
export async function buildExecutables(): Promise<Record<SeaName, string>> {
  const work = join(OUT, 'build', 'sea');
  mkdirSync(work, { recursive: true });
  stage('sea: verify pinned node runtime');
  const pin = await verifyRuntime();
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
  const version = `${pkg.version}+${await gitDescribe()}`;
  const built = {} as Record<SeaName, string>;
  for (const t of SEA_TARGETS) built[t.name] = await buildOne(t.name, t.entry, t.execArgv, work, pin, version);
  return built;
}

/** out/rapd (rap-center is built alongside it). */
export async function buildRapd(): Promise<string> {
  return (await buildExecutables()).rapd;
}

if (import.meta.main) {
  buildExecutables().catch((e: unknown) => {
    process.stderr.write(`build sea: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
