// make bench: the telemetry path of the real out/rapd (ingest from simulated
// instruments, ack latency, backlog drain to a real out/rap-center over
// mutual TLS, bytes on the wire, memory) plus start-up and rapctl, each next
// to a raw ceiling measured in the same run on the same Node runtime where
// one applies (these machines are noisy: the ratio is the number to watch).
//
// Prints a table and writes out/bench.json: an array of rows
//   {name, value, unit, ceiling, ratio, better, target, note}
// ratio = value/ceiling when higher is better, ceiling/value when lower is
// better, so 1.0 is "as good as raw" either way; null without a ceiling.
//
// Not a test: nothing here fails on a number. It exits non-zero only when a
// part of the benchmark itself could not run (the rows it did get are still
// written, the others carry value null and the error in `note`).
//
// Knobs (environment): BENCH_RUNS (start-up repetitions, default 9),
// BENCH_DRAIN_MESSAGES (backlog size, default 1000000), BENCH_VM_RUNS (boots
// of each image in vmboot, default 3), BENCH_ONLY (comma list of parts:
// startup, ingest, latency, center, vmboot).

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/lib/log.ts';
import type { StatusReport } from '../../src/protocol/control.ts';
import { MessageStore, type NewMessage } from '../../src/rapd/store.ts';
import type { SimOptions } from '../../src/sim/simulator.ts';
import { realisticStatus } from './messages.ts';
import { cpuMeter, killAll, makePki, NODE, RAPD, REPO, rssAnonKiB, runSims, sleep, startCenterProc, startRapd, track, until, type Rapd } from './procs.ts';
import type { SimSummary } from './sims.ts';
import { rawAppendLatency, rawAppendThroughput, rawPostLoop } from './raw.ts';
import type { Better, Row } from './rows.ts';
import { BOOT_BOUND_MS, killVms, measureVmBoot } from './vmboot.ts';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 9);
const DRAIN_MESSAGES = Number(process.env['BENCH_DRAIN_MESSAGES'] ?? 1_000_000);
const VM_RUNS = Number(process.env['BENCH_VM_RUNS'] ?? 3);
const ONLY = new Set((process.env['BENCH_ONLY'] ?? 'startup,ingest,latency,center,vmboot').split(',').map((s) => s.trim()));
const INSTRUMENTS = 8;
/**
 * The telemetry parts must end well inside 10 minutes; the VM boots (TCG,
 * two images, VM_RUNS each, plus building the minimal image once) get their
 * own budget on top. Past this everything is killed.
 */
const GLOBAL_BOUND_MS = 9.5 * 60_000 + (ONLY.has('vmboot') ? 6 * 60_000 + 2 * VM_RUNS * BOOT_BOUND_MS : 0);


const rows: Row[] = [];
const sources: string[] = [];
const failures: string[] = [];

function row(name: string, value: number | null, unit: string, better: Better, o: { ceiling?: number | null; target?: string; note?: string } = {}): void {
  const ceiling = o.ceiling ?? null;
  const ok = (x: number | null): x is number => x !== null && Number.isFinite(x) && x > 0;
  const ratio = ok(value) && ok(ceiling) ? (better === 'higher' ? value / ceiling : ceiling / value) : null;
  const r: Row = { name, value: value !== null && Number.isFinite(value) ? value : null, unit, ceiling, ratio, better, target: o.target ?? null };
  if (o.note) r.note = o.note;
  rows.push(r);
}

/** Give a row its ceiling after the fact (measured later in the same part). */
function setCeiling(name: string, ceiling: number, note: string): void {
  const r = rows.find((x) => x.name === name);
  if (!r) return;
  r.ceiling = ceiling;
  r.ratio = r.value !== null && r.value > 0 && ceiling > 0 ? (r.better === 'higher' ? r.value / ceiling : ceiling / r.value) : null;
  r.note = r.note ? `${r.note}; ${note}` : note;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mb = (kib: number): number => kib / 1024;
const fmt = (x: number | null, digits = 1): string => (x === null || !Number.isFinite(x) ? '-' : Math.abs(x) >= 10000 ? Math.round(x).toString() : x.toFixed(digits));
const log = (s: string): void => void process.stderr.write(`bench: ${s}\n`);
const quiet = createLogger({ write: () => {}, syslogPrefix: false });

/**
 * Let the disk settle before a timed run: write back what earlier parts left
 * dirty (hundreds of MB after ingest or the backlog fill), so one part's
 * writeback does not land in the next part's fsyncs.
 */
async function settle(): Promise<void> {
  spawnSync('sync', [], { stdio: 'ignore', timeout: 60_000 });
  await sleep(500);
}

/** Run one part; a failure is recorded (and its rows marked) but the others still run. */
async function part(name: string, rowNames: string[], fn: () => Promise<void>): Promise<void> {
  if (!ONLY.has(name)) return;
  const t0 = performance.now();
  log(`${name}...`);
  try {
    await fn();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    failures.push(`${name}: ${msg}`);
    log(`${name} FAILED: ${msg}`);
    for (const n of rowNames) {
      if (!rows.some((r) => r.name === n)) rows.push({ name: n, value: null, unit: '', ceiling: null, ratio: null, better: 'higher', target: null, note: `not measured: ${msg.slice(0, 300)}` });
    }
  }
  log(`${name} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

// --- start-up, idle RSS, rapctl (the original make bench) ---------------------

async function waitFile(path: string, boundMs: number): Promise<void> {
  await until(`${path} to appear`, () => existsSync(path), boundMs, 2);
}

/** Start argv with a recording systemd-notify; time until READY, RSS after 1 s idle. */
async function startAndIdle(dir: string, argv: string[]): Promise<{ readyMs: number; rssKiB: number }> {
  const marker = join(dir, 'ready');
  rmSync(marker, { force: true });
  const t0 = performance.now();
  const child = track(
    spawn(argv[0]!, argv.slice(1), {
      env: { PATH: `${join(dir, 'bin')}:/usr/bin:/bin`, NOTIFY_SOCKET: '/dev/null', MARKER: marker },
      stdio: 'ignore',
    }),
  );
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
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}`);
  return performance.now() - t0;
}

async function startup(root: string): Promise<void> {
  const dir = join(root, 'startup');
  mkdirSync(join(dir, 'bin'), { recursive: true });
  // The fake systemd-notify marks READY by creating a file.
  writeFileSync(join(dir, 'bin/systemd-notify'), '#!/bin/sh\ncase "$*" in *READY=1*) : > "$MARKER";; esac\n');
  chmodSync(join(dir, 'bin/systemd-notify'), 0o755);
  symlinkSync(RAPD, join(dir, 'bin/rapctl'));
  const config = join(dir, 'rapd.json');
  writeFileSync(config, JSON.stringify({ paths: { state: join(dir, 'state'), runtime: join(dir, 'run') } }));
  // Raw ceiling: the same Node runtime doing the least a notify daemon can do
  // (start, spawn systemd-notify once, idle).
  const raw = join(dir, 'raw.cjs');
  writeFileSync(raw, "require('node:child_process').spawn('systemd-notify', ['READY=1'], {stdio:'ignore'}); setInterval(() => {}, 1e6);\n");
  const rapdRuns: { readyMs: number; rssKiB: number }[] = [];
  const rawRuns: { readyMs: number; rssKiB: number }[] = [];
  for (let i = 0; i < RUNS; i++) {
    rawRuns.push(await startAndIdle(dir, [NODE, raw]));
    rapdRuns.push(await startAndIdle(dir, [RAPD, '--config', config]));
  }
  // rapctl round trip vs a bare `node -e ''`.
  const server = track(spawn(RAPD, ['--config', config], { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } }));
  try {
    await waitFile(join(dir, 'run/rapd.sock'), 20_000);
    const ctl: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      bare.push(timeProcess([NODE, '-e', '']));
      ctl.push(timeProcess([join(dir, 'bin/rapctl'), '--socket', join(dir, 'run/rapd.sock'), 'status', '--json'], 'rapctl'));
    }
    row('start_to_ready_ms', median(rapdRuns.map((r) => r.readyMs)), 'ms', 'lower', {
      ceiling: median(rawRuns.map((r) => r.readyMs)),
      note: `median of ${RUNS}; no ports, no center`,
    });
    row('rss_idle_no_ports_mb', mb(median(rapdRuns.map((r) => r.rssKiB))), 'MB', 'lower', {
      ceiling: mb(median(rawRuns.map((r) => r.rssKiB))),
      note: `RssAnon 1 s after READY, median of ${RUNS}; no ports, no center`,
    });
    row('rapctl_status_ms', median(ctl), 'ms', 'lower', { ceiling: median(bare), note: `median of ${RUNS}` });
    sources.push(`start_to_ready_ms, rss_idle_no_ports_mb: node running a script that spawns systemd-notify READY=1 and idles (${RUNS} runs, median)`);
    sources.push(`rapctl_status_ms: \`node -e ''\` process start to exit (${RUNS} runs, median)`);
  } finally {
    server.kill('SIGTERM');
  }
  const vmMetrics = join(REPO, 'out/vm/boot/metrics.json');
  // The vmboot part measures it in this run, against a bare Debian.
  if (existsSync(vmMetrics) && !ONLY.has('vmboot')) {
    const vm = JSON.parse(readFileSync(vmMetrics, 'utf8')) as { accel: string; kernelSecondsToRapdReady: number; rapdRssAnonKiB?: number };
    row('vm_kernel_to_rapd_ready_s', vm.kernelSecondsToRapdReady, 's', 'lower', {
      note: `from the last make vm (out/vm/boot/metrics.json, ${vm.accel}), not measured by this run`,
    });
  }
}

// --- boot under QEMU against a bare Debian 13 ------------------------------------

async function vmboot(): Promise<void> {
  const image = join(REPO, 'out/rapbox.img');
  if (!existsSync(image)) throw new Error(`${image} is missing: make image`);
  // Consoles kept after the run (out/vm/bench/<image>-<n>/serial.log), for a boot that went wrong.
  const { result: r, samples } = await measureVmBoot(image, join(REPO, 'out/vm/bench'), VM_RUNS);
  const each = (xs: { multiUserS: number | null; rapdReadyS: number | null }[], k: 'multiUserS' | 'rapdReadyS'): string => xs.map((x) => fmt(x[k], 1)).join(', ');
  row('vm_kernel_to_rapd_ready_s', r.rapbox.rapdReadyS, 's', 'lower', {
    ceiling: r.minimal.multiUserS,
    note: `rapbox image, kernel start to rapd READY (${r.accel}; median of ${VM_RUNS}: ${each(samples.rapbox, 'rapdReadyS')}; system ${r.rapbox.state})`,
  });
  row('vm_kernel_to_multi_user_s', r.rapbox.multiUserS, 's', 'lower', {
    ceiling: r.minimal.multiUserS,
    note: `rapbox image, kernel start to multi-user.target (same boots: ${each(samples.rapbox, 'multiUserS')})`,
  });
  const ratio = r.rapbox.rapdReadyS !== null && r.minimal.multiUserS !== null ? r.rapbox.rapdReadyS / r.minimal.multiUserS : null;
  row('vm_boot_vs_bare_debian', ratio, 'x', 'lower', {
    target: '<= 1.3',
    note: 'rapbox kernel->rapd READY over bare Debian kernel->multi-user, medians of the same run',
  });
  sources.push(
    `vm_kernel_to_*: bare Debian 13 (image/minimal.ts: minbase + systemd-sysv + the same kernel, ext4 root) booted alternately with rapbox, same QEMU flags, kernel start to multi-user.target (${r.accel}; median of ${VM_RUNS}: ${each(samples.minimal, 'multiUserS')} s)`,
  );
  log(`vmboot: rapbox ${r.rapbox.analyze.split('\n')[0]}; blame:\n${r.rapbox.blame}`);
  log(`vmboot: bare Debian ${r.minimal.analyze.split('\n')[0]}`);
}

// --- raw local ceilings (each measured right before the rapd run it is the ceiling of) ---

let rawAppend: { perSec: number; flushes: number; records: number } | null = null;

async function rawThroughputCeiling(dir: string): Promise<void> {
  await settle();
  rawAppend = await rawAppendThroughput(dir, 5000, 100);
  sources.push(
    `ingest_msgs_per_s, store_append_msgs_per_s: one file, 100 async producers appending 1 KB records; each flush = one write of all pending + fdatasync ` +
      `(${rawAppend.records} records, ${Math.round(rawAppend.records / Math.max(1, rawAppend.flushes))} per flush, 5 s)`,
  );
}

// --- ingest from 8 simulated instruments into the real rapd ------------------

function simOpts(port: number, k: number, over: Partial<SimOptions>): SimOptions {
  return { host: '127.0.0.1', port, serial: `SN-${1001 + k}`, model: 'DxH 900', swVersion: '3.1.4', timeoutMs: 15_000, window: 64, sizeBytes: 1024, ...over };
}

/** One simulated instrument per port, all in one child process (test/bench/sims.ts). */
function instruments(box: Rapd, over: Partial<SimOptions>): ReturnType<typeof runSims> {
  return runSims(box.instrumentPorts.map((port, k) => simOpts(port, k, over)), (over.durationMs ?? 0) + 60_000);
}

function checkReports(what: string, reports: SimSummary[]): string {
  const bad = reports.filter((r) => r.end !== 'done' || r.unanswered > 0 || Object.keys(r.errors).length > 0);
  if (bad.length === 0) return '';
  return `; ${what}: ${bad.length} instrument(s) did not end cleanly (${bad.map((r) => `${r.end}, unanswered ${r.unanswered}, errors ${JSON.stringify(r.errors)}`).join('; ')})`;
}

async function ingest(root: string): Promise<void> {
  const dir = join(root, 'ingest');
  mkdirSync(dir, { recursive: true });
  await rawThroughputCeiling(dir);
  await settle();
  const box = await startRapd({ dir, ports: INSTRUMENTS });
  try {
    // Idle: 8 listening ports, nothing connected, no center.
    await sleep(2000);
    const idle = rssAnonKiB(box.pid);
    row('rss_idle_mb', mb(idle), 'MB', 'lower', { target: '<= 40', note: `RssAnon of out/rapd 2 s after start, ${INSTRUMENTS} ports listening, no center, no traffic` });

    const durationMs = 11_000;
    const samples: { t: number; acked: number }[] = [];
    let rssMax = idle;
    const t0 = performance.now();
    const rapdCpu = cpuMeter(box.pid);
    const selfCpu = cpuMeter('self');
    const sims = instruments(box, { durationMs });
    const sampler = setInterval(() => {
      samples.push({ t: performance.now() - t0, acked: sims.acked() });
      rssMax = Math.max(rssMax, rssAnonKiB(box.pid) || 0);
    }, 100);
    let run: Awaited<typeof sims.done>;
    try {
      run = await sims.done;
    } finally {
      clearInterval(sampler);
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu = { rapd: rapdCpu(), bench: selfCpu(), sims: run.cpuSeconds / seconds };
    const reports = run.reports;
    // Steady state: from 1 s in (connections up, caches warm) to 0.5 s before the senders stop.
    const a = samples.find((s) => s.t >= 1000);
    const b = [...samples].reverse().find((s) => s.t <= durationMs - 500);
    if (!a || !b || b.t <= a.t) throw new Error('ingest: too few samples');
    const rate = (b.acked - a.acked) / ((b.t - a.t) / 1000);
    const total = reports.reduce((n, r) => n + r.acked, 0);
    row('ingest_msgs_per_s', rate, 'msg/s', 'higher', {
      ceiling: rawAppend?.perSec ?? null,
      target: '>= 0.5x',
      note:
        `${INSTRUMENTS} simulated instruments (one child process, test/bench/sims.ts), window 64, ~1 KB status frames, ${durationMs / 1000} s, steady window ` +
        `${(a.t / 1000).toFixed(1)}-${(b.t / 1000).toFixed(1)} s (acks counted by the simulators); ${total} acked in all; CPU: rapd ${(cpu.rapd * 100).toFixed(0)}% of a core, ` +
        `simulators ${(cpu.sims * 100).toFixed(0)}%, bench ${(cpu.bench * 100).toFixed(0)}% (${availableParallelism()} cores); CPU per acked message: ` +
        `rapd ${((cpu.rapd * seconds * 1e6) / Math.max(1, total)).toFixed(1)} us, simulators ${((run.cpuSeconds * 1e6) / Math.max(1, total)).toFixed(1)} us` +
        `${checkReports('ingest', reports)}`,
    });
    row('rss_load_mb', mb(rssMax), 'MB', 'lower', { target: '<= 80', note: 'max RssAnon of out/rapd sampled every 100 ms during the ingest run' });
    const st = await box.status();
    row('ingest_commit_batch_msgs', st.store!.messagesCommitted / Math.max(1, st.store!.commits), 'msg/commit', 'higher', {
      note: `store group commit: ${st.store!.commits} commits for ${st.store!.messagesCommitted} messages during the ingest run (info)`,
    });
  } finally {
    await box.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- ack latency at a paced 1,000 msg/s --------------------------------------

async function latency(root: string): Promise<void> {
  const dir = join(root, 'latency');
  mkdirSync(dir, { recursive: true });
  await settle();
  const rawLatency = await rawAppendLatency(dir, 1000, 6000);
  sources.push(
    `ack_p50_ms, ack_p99_ms: the same group-commit loop fed 1,000 records/s on a schedule, each timed from append to fdatasync done (${rawLatency.n} records)`,
  );
  await settle();
  const box = await startRapd({ dir, ports: INSTRUMENTS });
  try {
    const perInstrument = 1000 / INSTRUMENTS;
    const { reports } = await instruments(box, { durationMs: 10_000, ratePerSec: perInstrument }).done;
    const p50s = reports.map((r) => r.ackLatencyMs.p50);
    const p99s = reports.map((r) => r.ackLatencyMs.p99);
    const acked = reports.reduce((n, r) => n + r.acked, 0);
    const how =
      `${INSTRUMENTS} instruments x ${perInstrument}/s, ~1 KB, 10 s, ${acked} acked; the simulator reports percentiles per instrument only, ` +
      `so this is the worst instrument's (an upper bound of the merged value)`;
    row('ack_p50_ms', Math.max(...p50s), 'ms', 'lower', {
      ceiling: rawLatency.p50,
      note: `${how}; per instrument ${p50s.map((x) => x.toFixed(2)).join(' ')}${checkReports('latency', reports)}`,
    });
    row('ack_p99_ms', Math.max(...p99s), 'ms', 'lower', {
      ceiling: rawLatency.p99,
      note: `${how}; per instrument ${p99s.map((x) => x.toFixed(2)).join(' ')}; max ${Math.max(...reports.map((r) => r.ackLatencyMs.max)).toFixed(1)} ms`,
    });
  } finally {
    await box.stop();
  }
}

// --- the uplink: raw POST loop, backlog drain, wire bytes, idle -------------

/** One realistic status message of instrument k (as the store would hold it, without id and receivedAt). */
function messageMaker(): (i: number) => NewMessage {
  const gens = Array.from({ length: INSTRUMENTS }, (_, k) => realisticStatus(k + 1));
  const who = Array.from({ length: INSTRUMENTS }, (_, k) => ({ serial: `SN-${1001 + k}`, model: 'DxH 900', swVersion: '3.1.4' }));
  // A pool of bodies reused round-robin: far apart (16k messages) compared
  // with gzip's 32 KB window (~30 messages), so reuse does not help compression,
  // and generating a million bodies is not what is being measured.
  const POOL = 16_384;
  const now = Date.now();
  const pool = Array.from({ length: POOL }, (_, j) => gens[j % INSTRUMENTS]!.body(j >> 3, now + j));
  return (i) => {
    const k = i % INSTRUMENTS;
    return { kind: 'status', port: `p${k + 1}`, instrument: who[k]!, instrumentTime: new Date().toISOString(), body: pool[i % POOL]! };
  };
}

/** Fill rapd's queue database directly through MessageStore, as rapd would (durable group commits). */
async function fillBacklog(path: string, n: number, make: (i: number) => NewMessage): Promise<{ perSec: number; bytes: number; avgJson: number }> {
  const store = MessageStore.open({ path, maxRoutineMessages: Math.max(2_000_000, n * 2), maxAlarmMessages: 100_000, minFreeBytes: 0, log: quiet });
  const t0 = performance.now();
  const CHUNK = 5000;
  try {
    for (let i = 0; i < n; i += CHUNK) {
      const batch: Promise<unknown>[] = [];
      for (let j = i; j < Math.min(n, i + CHUNK); j++) batch.push(store.append(make(j)));
      await Promise.all(batch);
    }
    const perSec = n / ((performance.now() - t0) / 1000);
    const st = store.stats();
    if (st.queued.routine !== n) throw new Error(`backlog: expected ${n} queued, store says ${st.queued.routine}`);
    return { perSec, bytes: st.bytes, avgJson: st.bytes / n };
  } finally {
    await store.close();
  }
}

interface Sample {
  t: number;
  queued: number;
  sent: number;
  wire: number;
  state: string;
}

async function sample(box: Rapd, t0: number): Promise<Sample> {
  const s: StatusReport = await box.status();
  return {
    t: performance.now() - t0,
    queued: s.store!.queued.routine + s.store!.queued.alarm,
    sent: s.uplink!.sentMessages,
    wire: s.uplink!.wireBytes,
    state: s.uplink!.state,
  };
}

async function center(root: string): Promise<void> {
  const dir = join(root, 'center');
  mkdirSync(dir, { recursive: true });
  const pki = await makePki(dir);
  const c = await startCenterProc(dir, pki);
  try {
    const make = messageMaker();

    // Raw ceiling: bare keep-alive mTLS POSTs of 500 x ~1 KB gzip'd to the same
    // center, once before the drain (its database nearly empty) and once after
    // (a million rows more); the drain's ceiling is the mean of the two.
    await settle();
    const raw = await rawPostLoop({ port: c.port, pki, batches: 100, perBatch: 500, message: make });

    // The backlog, written while rapd does not run.
    const state = join(dir, 'state');
    mkdirSync(state, { recursive: true });
    const fill = await fillBacklog(join(state, 'queue.db'), DRAIN_MESSAGES, make);
    const dbBytes = statSync(join(state, 'queue.db')).size + (existsSync(join(state, 'queue.db-wal')) ? statSync(join(state, 'queue.db-wal')).size : 0);
    row('store_append_msgs_per_s', fill.perSec, 'msg/s', 'higher', {
      ceiling: rawAppend?.perSec ?? null,
      note: `MessageStore.append in the bench process (5000 appends in flight, group commit), filling the ${DRAIN_MESSAGES} backlog; no sockets (info)`,
    });

    // The real rapd on that backlog, default uplink settings.
    await settle();
    const box = await startRapd({ dir, ports: INSTRUMENTS, center: { port: c.port, pki }, extra: { store: { maxRoutineMessages: Math.max(2_000_000, DRAIN_MESSAGES * 2) } }, readyBoundMs: 120_000 });
    try {
      row('start_with_backlog_ms', box.readyMs, 'ms', 'lower', {
        note: `out/rapd spawn to control socket answering, ${DRAIN_MESSAGES} messages (${(dbBytes / 1e9).toFixed(2)} GB) queued (info)`,
      });
      const t0 = performance.now();
      const samples: Sample[] = [await sample(box, t0)];
      let rssMax = 0;
      const rapdCpu = cpuMeter(box.pid);
      const centerCpu = cpuMeter(c.pid);
      const boundMs = 4.5 * 60_000;
      let done = false;
      while (performance.now() - t0 < boundMs) {
        await sleep(250);
        rssMax = Math.max(rssMax, rssAnonKiB(box.pid) || 0);
        const s = await sample(box, t0);
        samples.push(s);
        if (s.queued === 0) {
          done = true;
          break;
        }
      }
      const cpu = { rapd: rapdCpu(), center: centerCpu() };
      const last = samples[samples.length - 1]!;
      const seconds = last.t / 1000;
      const rate = (done ? DRAIN_MESSAGES : last.sent) / seconds;
      row('drain_msgs_per_s', rate, 'msg/s', 'higher', {
        target: '>= 0.5x',
        note:
          `${DRAIN_MESSAGES} stored realistic ~${Math.round(fill.avgJson)} B status messages forwarded by out/rapd (batchMaxMessages 500) to out/rap-center over mTLS ` +
          `in ${seconds.toFixed(1)} s (from control socket up to queue empty, polled every 250 ms)` +
          (done ? '' : `; DID NOT FINISH within ${boundMs / 1000} s: ${last.sent} sent, ${last.queued} left`) +
          `; CPU: rapd ${(cpu.rapd * 100).toFixed(0)}%, rap-center ${(cpu.center * 100).toFixed(0)}% of a core (2 cores)`,
      });
      row('rss_drain_mb', mb(rssMax), 'MB', 'lower', { target: '<= 80', note: 'max RssAnon of out/rapd sampled every 250 ms during the drain (info)' });

      // Wire bytes at steady state: between 10% and 90% of the drain (no handshake in it).
      const sent = last.sent;
      const a = samples.find((s) => s.sent >= sent * 0.1);
      const b = [...samples].reverse().find((s) => s.sent <= sent * 0.9);
      const wire = a && b && b.sent > a.sent ? (b.wire - a.wire) / (b.sent - a.sent) : last.wire / Math.max(1, last.sent);
      row('wire_bytes_per_msg', wire, 'B/msg', 'lower', {
        ceiling: raw.wireBytesPerMsg,
        target: '<= 150',
        note:
          `rapctl status uplink.wireBytes delta / sentMessages delta, 10-90% of the drain, realistic status bodies (noisy sensor values, stable names; ` +
          `test/bench/messages.ts), ~${Math.round(fill.avgJson)} B stored JSON each`,
      });

      // Both need the queue to empty; a drain that did not finish (a machine
      // too busy) leaves them unmeasured instead of failing the rest.
      if (!done) {
        const why = `not measured: the backlog drain did not finish within ${boundMs / 1000} s, so the queue never emptied`;
        row('wire_bytes_per_msg_sim_padding', null, 'B/msg', 'lower', { target: '<= 150', note: why });
        row('idle_bytes_per_hour', null, 'B/h', 'lower', { note: why });
        row('idle_tcp_segments_per_hour', null, 'seg/h', 'lower', { note: why });
      } else {
        // The simulator's bodies: padded with one repeated character (src/sim/simulator.ts statusFrame: PAD).
        const before = await sample(box, t0);
        const { reports } = await instruments(box, { durationMs: 6000, ratePerSec: 250 }).done;
        await until('the simulators\' messages delivered', async () => (await sample(box, t0)).queued === 0, 30_000, 100);
        const after = await sample(box, t0);
        row('wire_bytes_per_msg_sim_padding', (after.wire - before.wire) / Math.max(1, after.sent - before.sent), 'B/msg', 'lower', {
          target: '<= 150',
          note:
            `same, steady run of ${INSTRUMENTS} simulators x 250/s x 6 s with sizeBytes 1024 (${after.sent - before.sent} messages); the simulator pads with ` +
            `one repeated character ('x'), which gzip all but removes: flatters the uplink, see wire_bytes_per_msg${checkReports('wire', reports)}`,
        });

        // Idle: connected, nothing to send. The simulators' bye events go after batchMaxDelayMs (5 s).
        await sleep(1000);
        await until('uplink idle with an empty queue', async () => {
          const s = await sample(box, t0);
          return s.queued === 0 && s.state === 'idle';
        }, 30_000, 200);
        const i0 = await sample(box, t0);
        const k0 = tcpCounters(c.port);
        const idleMs = 30_000;
        await sleep(idleMs);
        const i1 = await sample(box, t0);
        const k1 = tcpCounters(c.port);
        const perHour = 3600_000 / (i1.t - i0.t);
        // A socket closed and opened again in the window would make the delta meaningless.
        const segs = k0 && k1 && k1.segs >= k0.segs && k1.sockets === k0.sockets ? k1.segs - k0.segs : null;
        row('idle_bytes_per_hour', (i1.wire - i0.wire) * perHour, 'B/h', 'lower', {
          note:
            `uplink.wireBytes (TCP payload) over ${((i1.t - i0.t) / 1000).toFixed(0)} s with the center connected and no instrument traffic, x${perHour.toFixed(0)}; ` +
            `${i1.sent - i0.sent} messages sent meanwhile; RssAnon then ${mb(rssAnonKiB(box.pid)).toFixed(1)} MB`,
        });
        row('idle_tcp_segments_per_hour', segs === null ? null : segs * perHour, 'seg/h', 'lower', {
          note:
            segs === null
              ? 'ss -ti found no (or not the same) established uplink socket at the start and end of the idle window'
              : `ss -ti on the box side of the uplink (${k1!.sockets} socket(s); ${k1!.timers}): ${segs} segments in and out (TCP keepalive probes and their ACKs carry no payload, ` +
                `so uplink.wireBytes does not see them) and ${k1!.bytes - k0!.bytes} payload bytes in the window; at ~66 B of headers each that is ` +
                `~${Math.round((segs * 66 * perHour) / 1024)} KiB/h more on a real link. The center closes a keep-alive connection idle for 65 s, which ends ` +
                `this on a truly idle box; with traffic (a batch at least every batchMaxDelayMs, 5 s) it never idles that long`,
        });
      }
    } finally {
      await box.stop();
    }
    await settle();
    const rawAfter = await rawPostLoop({ port: c.port, pki, batches: 100, perBatch: 500, message: make });
    const ceiling = (raw.perSec + rawAfter.perSec) / 2;
    setCeiling('drain_msgs_per_s', ceiling, `ceiling ${Math.round(raw.perSec)} msg/s before the drain, ${Math.round(rawAfter.perSec)} after`);
    sources.push(
      `drain_msgs_per_s: bare keep-alive mTLS POST loop (node:https, same PKI and TLS policy, one connection) of pre-built gzip'd batches ` +
        `of 500 realistic ~1.2 KB status messages to the same out/rap-center process (which validates and stores each batch in SQLite before its 200); ` +
        `${raw.messages} messages before the drain and ${rawAfter.messages} after, mean of the two; gzip not timed (${raw.gzipMsPerBatch.toFixed(1)} ms per batch when built)`,
    );
    sources.push(`wire_bytes_per_msg: the same raw POST loop's TCP payload per message (${raw.gzipBytesPerMsg.toFixed(0)} B gzip body per message)`);
  } finally {
    await c.stop();
  }
}

/** TCP counters of the box's side of its connections to the center (ss -ti), or null when none is established. */
function tcpCounters(centerPort: number): { segs: number; bytes: number; sockets: number; timers: string } | null {
  const r = spawnSync('ss', ['-tinoH', 'state', 'established', 'dport', '=', `:${centerPort}`], { encoding: 'utf8', timeout: 5000 });
  if (r.status !== 0) return null;
  const num = (text: string, key: string): number => Number(new RegExp(`\\b${key}:(\\d+)`).exec(text)?.[1] ?? 0);
  const info = r.stdout.split('\n').filter((l) => /segs_out:/.test(l));
  if (info.length === 0) return null;
  const timers = [...new Set(r.stdout.match(/timer:\([^)]*\)/g) ?? [])].join(' ') || 'no timer';
  return {
    segs: info.reduce((n, l) => n + num(l, 'segs_out') + num(l, 'segs_in'), 0),
    bytes: info.reduce((n, l) => n + num(l, 'bytes_sent') + num(l, 'bytes_received'), 0),
    sockets: info.length,
    timers,
  };
}

/** Busy share of all cores over `ms`, from /proc/stat (whatever runs: call it while nothing of ours does). */
async function machineBusy(ms: number): Promise<number> {
  const read = (): { busy: number; total: number } => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  };
  const a = read();
  await sleep(ms);
  const b = read();
  return (b.busy - a.busy) / Math.max(1, b.total - a.total);
}

// --- output -------------------------------------------------------------------

function print(totalS: number): void {
  const w = [34, 12, 8, 12, 7, 9];
  const line = (cells: string[]): string =>
    `${cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join(' ')}\n`;
  let out = line(['name', 'value', 'unit', 'ceiling', 'ratio', 'target']);
  for (const r of rows) {
    const digits = r.unit === 'ms' || r.unit === 'MB' || r.unit === 'x' ? 2 : r.unit === 'B/msg' ? 1 : 0;
    out += line([r.name, fmt(r.value, digits), r.unit, fmt(r.ceiling, digits), r.ratio === null ? '-' : `${r.ratio.toFixed(2)}x`, r.target ?? '']);
  }
  out += '\nratio: value/ceiling for rows where higher is better, ceiling/value where lower is better (1.00x = as good as raw)\n';
  out += '\nceilings:\n';
  for (const s of sources) out += `  ${s}\n`;
  out += '\nnotes:\n';
  for (const r of rows) if (r.note) out += `  ${r.name}: ${r.note}\n`;
  out += `\ntotal ${totalS.toFixed(0)} s; node ${spawnSync(NODE, ['--version']).stdout.toString().trim()}; ${INSTRUMENTS} instruments; backlog ${DRAIN_MESSAGES}\n`;
  process.stdout.write(out);
}

async function main(): Promise<number> {
  const t0 = performance.now();
  const bound = setTimeout(() => {
    log(`the whole bench exceeded ${GLOBAL_BOUND_MS / 1000} s; killing what it started`);
    killAll();
    killVms();
    process.exit(1);
  }, GLOBAL_BOUND_MS);
  bound.unref();
  for (const bin of [RAPD, join(REPO, 'out/rap-center')]) if (!existsSync(bin)) throw new Error(`${bin} missing: make build`);
  const root = mkdtempSync('/tmp/rapd-bench-');
  // Other load on the machine skews everything here; say how much there was.
  const before = await machineBusy(2000);
  const cores = availableParallelism();
  row('background_cpu_pct', before * 100, '%', 'lower', {
    note: `all-core busy share over 2 s before the bench started anything (${cores} cores; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}); above ~10% the numbers below are disturbed by other processes`,
  });
  if (before > 0.1) log(`WARNING: the machine is ${(before * 100).toFixed(0)}% busy before the bench starts; numbers will be disturbed`);
  try {
    await part('startup', ['start_to_ready_ms', 'rss_idle_no_ports_mb', 'rapctl_status_ms'], () => startup(root));
    await part('ingest', ['rss_idle_mb', 'ingest_msgs_per_s', 'rss_load_mb'], () => ingest(root));
    await part('latency', ['ack_p50_ms', 'ack_p99_ms'], () => latency(root));
    await part('center', ['drain_msgs_per_s', 'wire_bytes_per_msg', 'idle_bytes_per_hour'], () => center(root));
    await part('vmboot', ['vm_kernel_to_rapd_ready_s', 'vm_kernel_to_multi_user_s', 'vm_boot_vs_bare_debian'], () => vmboot());
  } finally {
    killAll();
    killVms();
    rmSync(root, { recursive: true, force: true });
  }
  print((performance.now() - t0) / 1000);
  mkdirSync(join(REPO, 'out'), { recursive: true });
  writeFileSync(join(REPO, 'out/bench.json'), `${JSON.stringify(rows, null, 2)}\n`);
  if (failures.length > 0) {
    process.stderr.write(`bench: could not run: ${failures.join('; ')}\n`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    killAll();
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
