// The audit record and its hash chain, shared by rapd (which writes the
// chain, src/rapd/audit.ts) and rap-center (which receives a copy of every
// record through the uplink and checks the chain again per device).
//
// A record is one JSON object per line:
//
//   {"seq":7,"time":"2026-11-23T18:00:00.000Z","actor":"center:k1","action":"command.accepted",
//    "instrument":null,"outcome":"ok","details":{...},"prevHash":"<64 hex>","hash":"<64 hex>"}
//
//   seq       1, 2, 3... without gaps (the first record of a chain is 1)
//   prevHash  the previous record's hash; GENESIS_HASH (64 zeros) for seq 1
//   hash      sha256, lower-case hex, over the UTF-8 bytes of
//               "rapbox-audit-v1\n" + canonicalJson(record without "hash")
//             (canonicalJson: src/protocol/canonical.ts, RFC 8785 order)
//
// Changing a byte of a record changes its hash; the next record's prevHash
// then no longer matches. Inserting or removing a record breaks seq and the
// link. Removing records from the end leaves a valid, shorter chain: that
// needs an anchor kept elsewhere (rapd's store, the center's copy); see
// docs/commands.md.

import { createHash } from 'node:crypto';
import { canonicalJson } from './canonical.ts';

export const GENESIS_HASH = '0'.repeat(64);
const DOMAIN = 'rapbox-audit-v1\n';
const HEX64 = /^[0-9a-f]{64}$/;
export const AUDIT_ACTION = /^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$/;
const MAX_TEXT = 256;
/** A record line longer than this is refused (details are meant to be small facts). */
export const MAX_RECORD_BYTES = 16 * 1024;

/** What a caller audits (the contract with src/rapd/session.ts). */
export interface AuditEvent {
  /** Who: `rapd`, `center:<key id or operator>`, `instrument:<port>`, `operator:local`. */
  actor: string;
  /** What, dotted: `command.accepted`, `session.approved`, `firewall.applied`... */
  action: string;
  /** The instrument port concerned, if any (e.g. "p1"). */
  instrument?: string;
  /** How it ended: `ok`, `rejected`, `denied`, `error`... */
  outcome: string;
  details?: Record<string, unknown>;
}

export interface AuditRecord {
  seq: number;
  time: string;
  actor: string;
  action: string;
  instrument: string | null;
  outcome: string;
  details: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

export interface ChainHead {
  seq: number;
  hash: string;
}

export function auditHash(r: Omit<AuditRecord, 'hash'>): string {
  const { seq, time, actor, action, instrument, outcome, details, prevHash } = r;
  const body = canonicalJson({ seq, time, actor, action, instrument, outcome, details, prevHash });
  return createHash('sha256').update(DOMAIN).update(body).digest('hex');
}

/** The next record after `head` (null: the chain is empty). Throws when the event is not recordable. */
export function makeRecord(head: ChainHead | null, event: AuditEvent, time: Date): AuditRecord {
  // Details are stored as JSON would carry them (undefined members dropped,
  // Dates as strings, NaN as null): an action must not go unrecorded because
  // a caller passed an optional field as undefined. What is hashed is what is written.
  let details: Record<string, unknown>;
  try {
    details = event.details === undefined ? {} : (JSON.parse(JSON.stringify(event.details)) as Record<string, unknown>);
  } catch (e) {
    throw new Error(`details: not JSON-encodable (${e instanceof Error ? e.message : String(e)})`);
  }
  event = { ...event, details };
  checkEvent(event);
  const r = {
    seq: (head?.seq ?? 0) + 1,
    time: time.toISOString(),
    actor: event.actor,
    action: event.action,
    instrument: event.instrument ?? null,
    outcome: event.outcome,
    details,
    prevHash: head?.hash ?? GENESIS_HASH,
  };
  return { ...r, hash: auditHash(r) };
}

function text(path: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_TEXT) throw new Error(`${path}: expected a string of 1-${MAX_TEXT} characters`);
  return v;
}

function checkEvent(e: AuditEvent): void {
  text('actor', e.actor);
  if (typeof e.action !== 'string' || !AUDIT_ACTION.test(e.action) || e.action.length > MAX_TEXT) {
    throw new Error(`action: expected a dotted name like "command.accepted", got ${JSON.stringify(e.action)}`);
  }
  if (e.instrument !== undefined) text('instrument', e.instrument);
  text('outcome', e.outcome);
  if (e.details !== undefined && (e.details === null || typeof e.details !== 'object' || Array.isArray(e.details))) {
    throw new Error('details: expected an object');
  }
  // Encodable (finite numbers, plain objects...) and small; throws naming the path otherwise.
  const size = Buffer.byteLength(canonicalJson(e.details ?? {}, 'details'));
  if (size > MAX_RECORD_BYTES / 2) throw new Error(`details: ${size} bytes, more than ${MAX_RECORD_BYTES / 2}`);
}

/** Parse one record (from a line or a telemetry body); throws an Error naming the bad field. Does not check the hash. */
export function parseAuditRecord(v: unknown): AuditRecord {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('record: expected a JSON object');
  const o = v as Record<string, unknown>;
  const known = ['seq', 'time', 'actor', 'action', 'instrument', 'outcome', 'details', 'prevHash', 'hash'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new Error(`${k}: unexpected field`);
  const seq = o['seq'];
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) throw new Error('seq: expected an integer >= 1');
  const time = o['time'];
  if (typeof time !== 'string' || Number.isNaN(Date.parse(time))) throw new Error('time: expected an ISO 8601 timestamp');
  const instrument = o['instrument'];
  if (instrument !== null) text('instrument', instrument);
  const details = o['details'];
  if (details === null || typeof details !== 'object' || Array.isArray(details)) throw new Error('details: expected an object');
  for (const k of ['prevHash', 'hash']) {
    if (typeof o[k] !== 'string' || !HEX64.test(o[k])) throw new Error(`${k}: expected 64 lower-case hex digits`);
  }
  const event: AuditEvent = { actor: o['actor'] as string, action: o['action'] as string, outcome: o['outcome'] as string };
  checkEvent({ ...event, details: details as Record<string, unknown> });
  return {
    seq,
    time,
    actor: event.actor,
    action: event.action,
    instrument: instrument as string | null,
    outcome: event.outcome,
    details: details as Record<string, unknown>,
    prevHash: o['prevHash'] as string,
    hash: o['hash'] as string,
  };
}

export type ChainProblemKind = 'malformed' | 'hash' | 'seq' | 'link';

export interface ChainProblem {
  kind: ChainProblemKind;
  /** The record's seq as written (null when unreadable). */
  seq: number | null;
  /** 1-based line in the file, when checking a file. */
  line?: number;
  message: string;
}

/**
 * Check one record against the one before it (`prev` null: it must be the
 * first of the chain). Returns the problem, or null when it links.
 */
export function checkLink(prev: ChainHead | null, r: AuditRecord): ChainProblem | null {
  if (auditHash(r) !== r.hash) return { kind: 'hash', seq: r.seq, message: `record ${r.seq}: hash does not match its content (edited)` };
  const wantSeq = (prev?.seq ?? 0) + 1;
  if (r.seq !== wantSeq) {
    return { kind: 'seq', seq: r.seq, message: `record ${r.seq}: expected seq ${wantSeq} (a record was ${r.seq > wantSeq ? 'removed' : 'inserted or repeated'})` };
  }
  const wantPrev = prev?.hash ?? GENESIS_HASH;
  if (r.prevHash !== wantPrev) return { kind: 'link', seq: r.seq, message: `record ${r.seq}: prevHash does not match record ${r.seq - 1}'s hash (broken link)` };
  return null;
}

/** The result of reading and checking a whole audit file. */
export interface ChainReport {
  records: number;
  head: ChainHead | null;
  /** The first problem found (later ones are not looked for), or null. */
  problem: ChainProblem | null;
  /** Bytes after the last newline (a torn write), 0 when none. */
  tornBytes: number;
}

/** `rapctl audit verify`: the file's chain and how it compares with the anchor kept outside it. */
export interface VerifyReport extends ChainReport {
  path: string;
  /** The anchor compared with (null: none known yet). */
  anchor: ChainHead | null;
  /** The file is shorter than the anchor (truncated) or differs at its seq; null when it matches. */
  anchorProblem: string | null;
  ok: boolean;
}
