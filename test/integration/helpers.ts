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
