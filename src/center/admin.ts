// rap-center's local admin door for the operator CLI: `serve --admin PATH`
// listens on a unix socket (mode 0600, so only the center's own user) and
// takes one JSON request per connection:
//
//   {"device":"box-1","type":"ping","args":{...},"ttlMs":60000,"timeoutMs":30000}
//   -> {"ok":true,"result":ResultFrame} | {"ok":false,"error":"..."}
//
// It signs with the server's command key and waits for the box's result.
// Nothing about it is reachable over the network.

import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { COMMAND_TYPE, type ResultFrame } from '../protocol/commands.ts';
import { DEVICE_ID } from '../protocol/telemetry.ts';
import type { CommandHub } from './commands.ts';

export interface AdminRequest {
  device: string;
  type: string;
  args: unknown;
  ttlMs: number;
  timeoutMs: number;
}

const MAX_REQUEST = 64 * 1024;
const MAX_TIMEOUT_MS = 3_600_000;

/** Check a request; throws an Error naming the bad field. */
export function parseAdminRequest(text: string): AdminRequest {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`request: not valid JSON (${errorMessage(e)})`);
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new Error('request: expected a JSON object');
  for (const k of Object.keys(o)) if (!['device', 'type', 'args', 'ttlMs', 'timeoutMs'].includes(k)) throw new Error(`${k}: unexpected field`);
  if (typeof o['device'] !== 'string' || !DEVICE_ID.test(o['device'])) throw new Error('device: expected a device id');
  if (typeof o['type'] !== 'string' || !COMMAND_TYPE.test(o['type'])) throw new Error('type: expected a dotted lower-case command type');
  const ms = (k: string, d: number): number => {
    const v = o[k] ?? d;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > MAX_TIMEOUT_MS) throw new Error(`${k}: expected an integer from 1 to ${MAX_TIMEOUT_MS}`);
    return v;
  };
  return { device: o['device'], type: o['type'], args: o['args'] ?? {}, ttlMs: ms('ttlMs', 300_000), timeoutMs: ms('timeoutMs', 30_000) };
}

export async function startAdmin(path: string, hub: CommandHub, log: Logger): Promise<{ close(): Promise<void> }> {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // nothing there
  }
  const server: Server = createServer((sock) => {
    let buf = '';
    sock.setTimeout(MAX_TIMEOUT_MS + 10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (b: Buffer) => {
      buf += b.toString('utf8');
      if (buf.length > MAX_REQUEST) return void sock.end(`${JSON.stringify({ ok: false, error: 'request too long' })}\n`);
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = '';
      sock.pause();
      let req: AdminRequest;
      try {
        req = parseAdminRequest(line);
      } catch (e) {
        return void sock.end(`${JSON.stringify({ ok: false, error: errorMessage(e) })}\n`);
      }
      log.info('admin: command', { device: req.device, type: req.type });
      hub.send(req.device, { type: req.type, args: req.args, ttlMs: req.ttlMs }, req.timeoutMs).then(
        (result) => sock.end(`${JSON.stringify({ ok: true, result })}\n`),
        (e: unknown) => sock.end(`${JSON.stringify({ ok: false, error: errorMessage(e) })}\n`),
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new RapError('RAP_CENTER', `cannot listen on admin socket ${path}: ${errorMessage(e)}`, { path }, { cause: e })));
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        try {
          unlinkSync(path);
        } catch {
          // gone
        }
      }),
  };
}

/** The CLI's side: one request, the answer, bounded by the request's own timeout. */
export function callAdmin(path: string, req: AdminRequest): Promise<ResultFrame> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new RapError('RAP_CENTER', `no answer on ${path} within ${req.timeoutMs + 5000} ms`));
    }, req.timeoutMs + 5000);
    sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on('data', (b: Buffer) => (buf += b.toString('utf8')));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(new RapError('RAP_CENTER', `cannot reach rap-center on ${path}: ${errorMessage(e)}`, { path }, { cause: e }));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        const res = JSON.parse(buf.split('\n')[0] ?? '') as { ok: boolean; result?: ResultFrame; error?: string };
        if (res.ok && res.result) resolve(res.result);
        else reject(new RapError('RAP_CENTER', res.error ?? 'refused'));
      } catch {
        reject(new RapError('RAP_CENTER', `unreadable answer: ${JSON.stringify(buf.slice(0, 200))}`));
      }
    });
  });
}
