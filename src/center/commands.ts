// rap-center's side of the command channel: the command signing key, and the
// hub that holds one WebSocket per connected box, signs and sends commands
// and matches the results that come back (by device and command id).
//
// Command keys are Ed25519 (tweetnacl). A key file is JSON
// {"id","publicKey","secretKey"} (base64), written 0600 and never printed;
// the `.pub` file next to it is {"id","publicKey"}, exactly one entry of a
// box's `commands.keys`. Keys are made at run time (tests make their own);
// none is ever committed.

import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import nacl from 'tweetnacl';
import type WebSocket from 'ws';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { COMMAND_VERSION, KEY_ID, parseBoxFrame, signCommand, type ResultFrame, type SignedCommand } from '../protocol/commands.ts';
import type { CenterDb } from './db.ts';

export interface SigningKey {
  id: string;
  publicKey: string;
  secretKey: Uint8Array;
}

/** Default validity of a command sent without an explicit ttl. */
export const DEFAULT_TTL_MS = 5 * 60_000;
/** Server pings each box this often; a box silent for two intervals is dropped. */
const PING_EVERY_MS = 30_000;

/** Make a new command key: DIR/ID.key (0600) and DIR/ID.pub. Refuses to overwrite. */
export function generateCommandKey(dir: string, id: string): { keyFile: string; pubFile: string; publicKey: string } {
  if (!KEY_ID.test(id)) throw new RapError('RAP_USAGE', `key id '${id}': expected 1-64 letters, digits, ".", "_" or "-"`);
  const keyFile = join(dir, `${id}.key`);
  const pubFile = join(dir, `${id}.pub`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (existsSync(keyFile)) throw new RapError('RAP_PKI', `${keyFile} exists; a command key is never overwritten (pick a new id to rotate)`, { keyFile });
  const kp = nacl.sign.keyPair();
  const publicKey = Buffer.from(kp.publicKey).toString('base64');
  writeFileDurable(keyFile, `${JSON.stringify({ id, publicKey, secretKey: Buffer.from(kp.secretKey).toString('base64') })}\n`, 0o600);
  writeFileDurable(pubFile, `${JSON.stringify({ id, publicKey })}\n`, 0o644);
  return { keyFile, pubFile, publicKey };
}

/** Read a key file made by generateCommandKey; throws RAP_PKI naming what is wrong. */
export function loadCommandKey(path: string, log?: Logger): SigningKey {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new RapError('RAP_PKI', `command key ${path}: cannot read: ${errorMessage(e)}`, { path }, { cause: e });
  }
  const o = (doc ?? {}) as Record<string, unknown>;
  const id = o['id'];
  if (typeof id !== 'string' || !KEY_ID.test(id)) throw new RapError('RAP_PKI', `command key ${path}: 'id' missing or invalid`, { path });
  const sk = typeof o['secretKey'] === 'string' ? Buffer.from(o['secretKey'], 'base64') : Buffer.alloc(0);
  if (sk.length !== nacl.sign.secretKeyLength) throw new RapError('RAP_PKI', `command key ${path}: 'secretKey' must be ${nacl.sign.secretKeyLength} bytes of base64`, { path });
  const publicKey = Buffer.from(nacl.sign.keyPair.fromSecretKey(sk).publicKey).toString('base64');
  if (o['publicKey'] !== publicKey) throw new RapError('RAP_PKI', `command key ${path}: 'publicKey' does not belong to 'secretKey'`, { path });
  if ((statSync(path).mode & 0o077) !== 0) log?.warn('command key is readable by others', { path });
  return { id, publicKey, secretKey: new Uint8Array(sk) };
}

export interface CommandSpec {
  type: string;
  args?: unknown;
  /** Validity from now (default DEFAULT_TTL_MS). */
  ttlMs?: number;
}

interface Waiter {
  resolve: (r: ResultFrame) => void;
  timer: NodeJS.Timeout;
}

export class CommandHub {
  private readonly db: CenterDb;
  private readonly log: Logger;
  private readonly now: () => Date;
  private key: SigningKey | null;
  private readonly boxes = new Map<string, WebSocket>();
  private readonly waiters = new Map<string, Waiter>();
  private readonly connectWaiters = new Set<() => void>();

  constructor(deps: { db: CenterDb; log: Logger; key: SigningKey | null; now?: () => Date }) {
    this.db = deps.db;
    this.log = deps.log.child({ part: 'commands' });
    this.key = deps.key;
    this.now = deps.now ?? (() => new Date());
  }

  /** Sign with another key from now on (rotation: the boxes must trust it first). */
  setKey(key: SigningKey | null): void {
    this.key = key;
  }

  connected(): string[] {
    return [...this.boxes.keys()].sort();
  }

  /** Resolves once `device` has a channel open; rejects after timeoutMs. */
  async waitConnected(device: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.boxes.has(device)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new RapError('RAP_CENTER', `device '${device}' has no command channel open (waited ${timeoutMs} ms)`, { device });
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 1000));
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        this.connectWaiters.add(done);
      });
    }
  }

  /** A box's WebSocket after the upgrade; `device` is its certificate's CN. */
  attach(ws: WebSocket, device: string, remote: string): void {
    const old = this.boxes.get(device);
    if (old) old.terminate();
    this.boxes.set(device, ws);
    this.log.info('command channel open', { device, remote });
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
    let alive = true;
    const pinger = setInterval(() => {
      if (!alive) return void ws.terminate();
      alive = false;
      ws.ping();
    }, PING_EVERY_MS);
    ws.on('pong', () => (alive = true));
    ws.on('message', (data, isBinary) => {
      alive = true;
      if (isBinary) return;
      let frame;
      try {
        frame = parseBoxFrame(data.toString());
      } catch (e) {
        this.log.warn('command channel: bad frame from box', { device, error: errorMessage(e) });
        return;
      }
      if (frame.t === 'hello') {
        this.log.info('box hello', { device, version: frame.version, auditHead: frame.auditHead });
        return;
      }
      this.db.recordResult(device, frame, this.now());
      const key = `${device}\n${frame.id}`;
      const w = this.waiters.get(key);
      if (w) {
        this.waiters.delete(key);
        clearTimeout(w.timer);
        w.resolve(frame);
      }
    });
    ws.on('error', (e) => this.log.warn('command channel error', { device, error: errorMessage(e) }));
    ws.on('close', () => {
      clearInterval(pinger);
      if (this.boxes.get(device) === ws) this.boxes.delete(device);
      this.log.info('command channel closed', { device });
    });
  }

  /** Sign and send a command; resolves with the box's result (or rejects after timeoutMs). */
  send(device: string, spec: CommandSpec, timeoutMs: number): Promise<ResultFrame> {
    if (!this.key) return Promise.reject(new RapError('RAP_CENTER', 'no command signing key (serve --command-key)'));
    const issuedAt = this.now().getTime();
    const cmd = signCommand(
      {
        v: COMMAND_VERSION,
        id: randomUUID(),
        type: spec.type,
        deviceId: device,
        issuedAt,
        expiresAt: issuedAt + (spec.ttlMs ?? DEFAULT_TTL_MS),
        nonce: randomBytes(16).toString('base64'),
        keyId: this.key.id,
        args: spec.args ?? {},
      },
      this.key.secretKey,
    );
    return this.sendRaw(device, cmd, timeoutMs);
  }

  /**
   * Send a command exactly as given (already signed, or deliberately not:
   * tests send forged, expired and replayed ones this way).
   */
  sendRaw(device: string, command: SignedCommand | Record<string, unknown>, timeoutMs: number): Promise<ResultFrame> {
    const ws = this.boxes.get(device);
    if (!ws) return Promise.reject(new RapError('RAP_CENTER', `device '${device}' has no command channel open`, { device }));
    const id = String((command as { id?: unknown }).id ?? '');
    const key = `${device}\n${id}`;
    if (this.waiters.has(key)) return Promise.reject(new RapError('RAP_CENTER', `command ${id} to ${device} is already waiting for its result`));
    this.db.recordCommand(device, command, this.now());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key);
        reject(new RapError('RAP_CENTER', `no result for command ${id} from ${device} within ${timeoutMs} ms`, { device, id }));
      }, timeoutMs);
      this.waiters.set(key, { resolve, timer });
      ws.send(JSON.stringify({ t: 'command', command }));
    });
  }

  close(): void {
    for (const ws of this.boxes.values()) ws.terminate();
    this.boxes.clear();
    for (const w of this.waiters.values()) clearTimeout(w.timer);
    this.waiters.clear();
  }
}
