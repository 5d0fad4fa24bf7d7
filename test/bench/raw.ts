// Raw ceilings for make bench: the least code that does the same essential
// work as rapd, on the same Node runtime, in the same run.

import { open, rm } from 'node:fs/promises';
import { Agent, request } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { TLS_POLICY } from '../../src/protocol/tls.ts';
import { TELEMETRY_PATH, type TelemetryMessage } from '../../src/protocol/telemetry.ts';
import { timeOrderedUuid } from '../../src/rapd/store.ts';
import { DEVICE, sleep } from './procs.ts';

export function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/**
 * A plain group-commit log: one file; append() queues a record and resolves
 * once a flush (one write of everything pending, then fdatasync) covered it.
 * A flush starts on the turn after the first pending record, and the next
 * one as soon as the previous is done.
 */
async function groupLog(path: string): Promise<{ append(rec: Buffer): Promise<void>; close(): Promise<void>; flushes: () => number }> {
  const fh = await open(path, 'w', 0o600);
  let pending: { rec: Buffer; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let flushing = false;
  let flushes = 0;
  const flush = async (): Promise<void> => {
    flushing = true;
    while (pending.length > 0) {
      const batch = pending;
      pending = [];
      try {
        await fh.write(Buffer.concat(batch.map((p) => p.rec)));
        await fh.datasync();
        flushes++;
        for (const p of batch) p.resolve();
      } catch (e) {
        for (const p of batch) p.reject(e);
      }
    }
    flushing = false;
  };
  return {
    append(rec) {
      return new Promise((resolve, reject) => {
        pending.push({ rec, resolve, reject });
        if (!flushing && pending.length === 1) setImmediate(() => void (flushing || flush()));
      });
    },
    async close() {
      await fh.close();
      await rm(path, { force: true });
    },
    flushes: () => flushes,
  };
}

function record(i: number): Buffer {
  const b = Buffer.alloc(1024, 0x20);
  b.write(`{"seq":${i},"t":${Date.now()}}`);
  b[1023] = 0x0a;
  return b;
}

/** Throughput: `producers` async loops each appending 1 KB records back to back for durationMs. */
export async function rawAppendThroughput(dir: string, durationMs: number, producers = 100): Promise<{ perSec: number; flushes: number; records: number }> {
  const log = await groupLog(join(dir, 'raw-append.log'));
  let n = 0;
  let counting = false;
  let counted = 0;
  const warmupMs = 500;
  const t0 = performance.now();
  const end = t0 + warmupMs + durationMs;
  let tStart = 0;
  let tEnd = 0;
  setTimeout(() => {
    counting = true;
    tStart = performance.now();
  }, warmupMs);
  const loop = async (): Promise<void> => {
    while (performance.now() < end) {
      await log.append(record(n++));
      if (counting) {
        counted++;
        tEnd = performance.now();
      }
    }
  };
  await Promise.all(Array.from({ length: producers }, loop));
  const flushes = log.flushes();
  await log.close();
  return { perSec: counted / ((tEnd - tStart) / 1000), flushes, records: n };
}

/** Latency: records appended on a fixed schedule (ratePerSec in all), each timed from append to durable. */
export async function rawAppendLatency(dir: string, ratePerSec: number, durationMs: number): Promise<{ p50: number; p99: number; max: number; n: number }> {
  const log = await groupLog(join(dir, 'raw-latency.log'));
  const lat: number[] = [];
  const pending: Promise<void>[] = [];
  const warmupMs = 300;
  const t0 = performance.now();
  let i = 0;
  while (true) {
    const now = performance.now();
    if (now - t0 >= warmupMs + durationMs) break;
    // Everything due by now goes (a late timer catches up, as a paced sender would).
    while (t0 + (i * 1000) / ratePerSec <= now) {
      const sentAt = performance.now();
      const warm = sentAt - t0 >= warmupMs;
      pending.push(log.append(record(i)).then(() => void (warm && lat.push(performance.now() - sentAt))));
      i++;
    }
    await sleep(Math.max(0, t0 + (i * 1000) / ratePerSec - performance.now()));
  }
  await Promise.all(pending);
  await log.close();
  lat.sort((a, b) => a - b);
  return { p50: percentile(lat, 0.5), p99: percentile(lat, 0.99), max: lat[lat.length - 1] ?? NaN, n: lat.length };
}

/**
 * The uplink's essential work without rapd: one keep-alive mTLS connection
 * (node:https, same PKI and TLS policy), POSTing pre-built gzip'd batches of
 * `perBatch` messages back to back to the center and reading each answer.
 * Bodies are built before the clock starts (gzip is not timed); ids are
 * fresh, so the center really inserts every message.
 */
export async function rawPostLoop(o: {
  port: number;
  pki: string;
  batches: number;
  perBatch: number;
  message: (i: number) => Omit<TelemetryMessage, 'id' | 'receivedAt'>;
}): Promise<{ perSec: number; wireBytesPerMsg: number; gzipMsPerBatch: number; gzipBytesPerMsg: number; messages: number }> {
  const warm = 2;
  const bodies: Buffer[] = [];
  let gzipMs = 0;
  let gzBytes = 0;
  for (let b = 0; b < o.batches + warm; b++) {
    const messages: TelemetryMessage[] = [];
    for (let k = 0; k < o.perBatch; k++) {
      const now = Date.now();
      messages.push({ id: timeOrderedUuid(now), receivedAt: new Date(now).toISOString(), ...o.message(b * o.perBatch + k) });
    }
    const json = JSON.stringify({ device: DEVICE, sentAt: new Date().toISOString(), messages });
    const g0 = performance.now();
    const body = gzipSync(json);
    gzipMs += performance.now() - g0;
    gzBytes += body.length;
    bodies.push(body);
  }
  const agent = new Agent({
    keepAlive: true,
    maxSockets: 1,
    ca: readFileSync(join(o.pki, 'ca.pem')),
    cert: readFileSync(join(o.pki, 'devices', `${DEVICE}.pem`)),
    key: readFileSync(join(o.pki, 'devices', `${DEVICE}.key`)),
    ...TLS_POLICY,
  });
  const url = new URL(TELEMETRY_PATH, `https://127.0.0.1:${o.port}`);
  const sockets = new Set<import('node:net').Socket>();
  const post = (body: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      const req = request(
        url,
        { method: 'POST', agent, timeout: 30_000, headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': body.length } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`bench: raw POST answered ${res.statusCode}: ${Buffer.concat(chunks).toString().slice(0, 300)}`))));
        },
      );
      req.on('socket', (s) => sockets.add(s));
      req.on('timeout', () => req.destroy(new Error('bench: raw POST timed out')));
      req.on('error', reject);
      req.end(body);
    });
  try {
    for (let b = 0; b < warm; b++) await post(bodies[b]!);
    const wire = (): number => [...sockets].reduce((n, s) => n + s.bytesRead + s.bytesWritten, 0);
    const w0 = wire();
    const t0 = performance.now();
    for (let b = warm; b < bodies.length; b++) await post(bodies[b]!);
    const s = (performance.now() - t0) / 1000;
    const messages = o.batches * o.perBatch;
    return {
      perSec: messages / s,
      wireBytesPerMsg: (wire() - w0) / messages,
      gzipMsPerBatch: gzipMs / bodies.length,
      gzipBytesPerMsg: gzBytes / (bodies.length * o.perBatch),
      messages,
    };
  } finally {
    agent.destroy();
  }
}
