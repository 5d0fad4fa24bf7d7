// Shared by integration tests: where the built binary is, and a bounded way
// to run it.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const REPO = join(import.meta.dirname, '../..');
export const RAPD = join(REPO, 'out/rapd');

export function requireRapd(): string {
  if (!existsSync(RAPD)) throw new Error(`${RAPD} is missing: run make build (make check does)`);
  return RAPD;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run to completion, killed after timeoutMs. */
export function runBinary(argv: string[], env: Record<string, string>, timeoutMs = 20_000, argv0?: string): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { env, argv0, stdio: ['ignore', 'pipe', 'pipe'] });
    collect(child, timeoutMs).then(resolve);
  });
}

export function collect(child: ChildProcess, timeoutMs: number): Promise<Exit> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Poll `check` every 50 ms until it returns true or the bound passes. */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export const CENTER_BIN = join(REPO, 'out/rap-center');
/** The device id test PKIs issue a certificate for. */
export const DEVICE = 'box-1';

/**
 * A PKI made by the real rap-center CLI in `dir`/pki: CA, a server
 * certificate for localhost, 127.0.0.1 and any extra IPs, and a device
 * certificate for `device`. Made at test time; never committed.
 */
export async function makePki(dir: string, opts: { device?: string; ips?: string[] } = {}): Promise<string> {
  if (!existsSync(CENTER_BIN)) throw new Error(`${CENTER_BIN} is missing: run make build`);
  const pki = join(dir, 'pki');
  const ips = ['127.0.0.1', ...(opts.ips ?? [])].flatMap((ip) => ['--ip', ip]);
  for (const args of [
    ['pki', 'init', '--dir', pki],
    ['pki', 'issue-server', '--dir', pki, '--name', 'localhost', ...ips],
    ['pki', 'issue-device', '--dir', pki, opts.device ?? DEVICE],
  ]) {
    const r = await runBinary([CENTER_BIN, ...args], { PATH: '/usr/bin:/bin' }, 60_000);
    if (r.code !== 0) throw new Error(`rap-center ${args.join(' ')} failed: ${r.stderr}`);
  }
  return pki;
}
