// Signed commands and the command channel's frames, shared by rap-center
// (which signs and sends) and rapd (which verifies and answers). The
// encoding, the verification order and key rotation are in docs/commands.md.
//
//   wss://{center}/v1/commands   one WebSocket per box, opened by the box,
//                                mutual TLS (the device certificate's CN is the box)
//   center -> box  {"t":"command","command":SignedCommand}
//   box -> center  {"t":"hello","device":ID,"version":V,"auditHead":{seq,hash}|null}
//                  {"t":"result","id":ID,"status":"ok"|"error"|"rejected","result"?:..,"error"?:{code,message}}
//
// A command is signed with Ed25519 (tweetnacl, detached signature) over
//   "rapbox-command-v1\n" + canonicalJson({v,id,type,deviceId,issuedAt,expiresAt,nonce,keyId,args})
// (every field but `sig`; canonicalJson is src/protocol/canonical.ts).

import nacl from 'tweetnacl';
import { canonicalJson } from './canonical.ts';
import { DEVICE_ID, DEVICE_ID_DOC } from './telemetry.ts';

export const COMMANDS_PATH = '/v1/commands';
export const COMMAND_VERSION = 1;
const DOMAIN = 'rapbox-command-v1\n';

export const COMMAND_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
export const COMMAND_TYPE = /^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*$/;
export const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
export const NONCE_MIN_BYTES = 16;
const NONCE_MAX_BYTES = 64;
/** Bound on a command's args (canonical bytes): commands carry small facts, not files. */
export const MAX_ARGS_BYTES = 4096;
/** Bound on one frame either way. */
export const MAX_FRAME_BYTES = 64 * 1024;

/** The signed part of a command. Times are ms since the epoch. */
export interface CommandBody {
  v: number;
  id: string;
  type: string;
  deviceId: string;
  issuedAt: number;
  expiresAt: number;
  nonce: string;
  keyId: string;
  args: unknown;
}

export interface SignedCommand extends CommandBody {
  /** Ed25519 detached signature, base64 (64 bytes). Absent: unsigned (rejected). */
  sig?: string;
}

export type ResultStatus = 'ok' | 'error' | 'rejected';

export interface ResultFrame {
  t: 'result';
  id: string;
  status: ResultStatus;
  result?: unknown;
  error?: { code: string; message: string };
}

export interface HelloFrame {
  t: 'hello';
  device: string;
  version: string;
  auditHead: { seq: number; hash: string } | null;
}

export interface CommandFrame {
  t: 'command';
  command: unknown;
}

/** A field that is missing or wrong; the message names it. */
export class MalformedCommand extends Error {}

function bad(field: string, expected: string): never {
  throw new MalformedCommand(`${field}: expected ${expected}`);
}

function base64Bytes(field: string, v: unknown, min: number, max: number): Buffer {
  if (typeof v !== 'string' || !BASE64.test(v) || v.length % 4 !== 0) bad(field, 'base64');
  const b = Buffer.from(v, 'base64');
  if (b.length < min || b.length > max) bad(field, min === max ? `${min} bytes (base64)` : `${min}-${max} bytes (base64)`);
  return b;
}

/** The bytes that are signed. */
export function signingBytes(c: CommandBody): Uint8Array {
  const { v, id, type, deviceId, issuedAt, expiresAt, nonce, keyId, args } = c;
  return Buffer.from(DOMAIN + canonicalJson({ v, id, type, deviceId, issuedAt, expiresAt, nonce, keyId, args }));
}

/**
 * Check the shape of a received command, field by field (not the signature
 * nor the times against the clock). `sig` may be absent; if present it must
 * be 64 bytes of base64. Throws MalformedCommand naming the first bad field.
 */
export function parseCommand(v: unknown): SignedCommand {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) bad('command', 'a JSON object');
  const o = v as Record<string, unknown>;
  const known = ['v', 'id', 'type', 'deviceId', 'issuedAt', 'expiresAt', 'nonce', 'keyId', 'args', 'sig'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new MalformedCommand(`${k}: unexpected field`);
  if (o['v'] !== COMMAND_VERSION) bad('v', `${COMMAND_VERSION}`);
  const str = (k: string, re: RegExp, doc: string): string => {
    const x = o[k];
    if (typeof x !== 'string' || !re.test(x)) bad(k, doc);
    return x;
  };
  const id = str('id', COMMAND_ID, '1-64 letters, digits, ".", "_", ":" or "-"');
  const type = str('type', COMMAND_TYPE, 'a dotted lower-case name like "session.open"');
  const deviceId = str('deviceId', DEVICE_ID, `a device id (${DEVICE_ID_DOC})`);
  const keyId = str('keyId', KEY_ID, '1-64 letters, digits, ".", "_" or "-"');
  const time = (k: string): number => {
    const x = o[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x <= 0) bad(k, 'a time in ms since the epoch (a positive integer)');
    return x;
  };
  const issuedAt = time('issuedAt');
  const expiresAt = time('expiresAt');
  if (expiresAt <= issuedAt) bad('expiresAt', 'a time after issuedAt');
  base64Bytes('nonce', o['nonce'], NONCE_MIN_BYTES, NONCE_MAX_BYTES);
  const nonce = o['nonce'] as string;
  if (!('args' in o)) bad('args', 'a JSON value (use {} for none)');
  let argsBytes: number;
  try {
    argsBytes = Buffer.byteLength(canonicalJson(o['args'], 'args'));
  } catch (e) {
    throw new MalformedCommand(e instanceof Error ? e.message : String(e));
  }
  if (argsBytes > MAX_ARGS_BYTES) bad('args', `at most ${MAX_ARGS_BYTES} bytes (got ${argsBytes})`);
  const out: SignedCommand = { v: COMMAND_VERSION, id, type, deviceId, issuedAt, expiresAt, nonce, keyId, args: o['args'] };
  if (o['sig'] !== undefined) {
    base64Bytes('sig', o['sig'], nacl.sign.signatureLength, nacl.sign.signatureLength);
    out.sig = o['sig'] as string;
  }
  return out;
}

/** True when `sig` is a valid Ed25519 signature of the command by `publicKey`. */
export function signatureValid(c: SignedCommand, publicKey: Uint8Array): boolean {
  if (c.sig === undefined) return false;
  return nacl.sign.detached.verify(signingBytes(c), Buffer.from(c.sig, 'base64'), publicKey);
}

/** Sign a command body with a 64-byte tweetnacl secret key. */
export function signCommand(body: CommandBody, secretKey: Uint8Array): SignedCommand {
  const sig = Buffer.from(nacl.sign.detached(signingBytes(body), secretKey)).toString('base64');
  return { ...body, sig };
}

/** Decode a base64 Ed25519 public key (32 bytes); throws naming `what`. */
export function decodePublicKey(b64: string, what: string): Uint8Array {
  if (!BASE64.test(b64) || b64.length % 4 !== 0) throw new Error(`${what}: not base64`);
  const b = Buffer.from(b64, 'base64');
  if (b.length !== nacl.sign.publicKeyLength) throw new Error(`${what}: expected ${nacl.sign.publicKeyLength} bytes, got ${b.length}`);
  return new Uint8Array(b);
}

/** Parse a frame from the box (center side); throws an Error naming the bad field. */
export function parseBoxFrame(text: string): ResultFrame | HelloFrame {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw new Error(`frame: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new Error('frame: expected a JSON object');
  const f = o as Record<string, unknown>;
  if (f['t'] === 'hello') {
    if (typeof f['device'] !== 'string' || !DEVICE_ID.test(f['device'])) throw new Error('hello.device: expected a device id');
    if (typeof f['version'] !== 'string') throw new Error('hello.version: expected a string');
    const h = f['auditHead'];
    if (h !== null && (typeof h !== 'object' || typeof (h as { seq?: unknown }).seq !== 'number' || typeof (h as { hash?: unknown }).hash !== 'string')) {
      throw new Error('hello.auditHead: expected {seq, hash} or null');
    }
    return { t: 'hello', device: f['device'], version: f['version'], auditHead: h as HelloFrame['auditHead'] };
  }
  if (f['t'] === 'result') {
    if (typeof f['id'] !== 'string' || f['id'].length > 128) throw new Error('result.id: expected a string of at most 128 characters');
    const status = f['status'];
    if (status !== 'ok' && status !== 'error' && status !== 'rejected') throw new Error('result.status: expected "ok", "error" or "rejected"');
    const e = f['error'];
    if (e !== undefined && (e === null || typeof e !== 'object' || typeof (e as { code?: unknown }).code !== 'string' || typeof (e as { message?: unknown }).message !== 'string')) {
      throw new Error('result.error: expected {code, message}');
    }
    const out: ResultFrame = { t: 'result', id: f['id'], status };
    if (f['result'] !== undefined) out.result = f['result'];
    if (e !== undefined) out.error = e as ResultFrame['error'];
    return out;
  }
  throw new Error(`frame.t: expected "hello" or "result", got ${JSON.stringify(f['t'])}`);
}
