// Validation of a TelemetryBatch as it arrives from a box (the wire format is
// src/protocol/telemetry.ts). Every field is checked before anything is
// stored, and the first problem is named by its path ("messages[3].id:
// expected a UUID"), because that text goes back to rapd in the 400 body and
// into its log: an operator must be able to find the bad message from it.
//
// Unknown fields are refused rather than ignored: both ends share one
// declaration of the format, so an unknown field is a bug or a newer rapd, and
// dropping it silently would lose data the center was meant to keep.

import { parseAuditRecord } from '../protocol/audit.ts';
import { DEVICE_ID, DEVICE_ID_DOC, PORT_NAME, PORT_NAME_DOC, type InstrumentIdentity, type MessageKind, type TelemetryBatch, type TelemetryMessage } from '../protocol/telemetry.ts';

/** Same rule as rapd's `device.id` (src/rapd/config.ts); also the device certificate's CN. */
/** Same rule as rapd's `ports[].name`. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const KINDS: readonly MessageKind[] = ['status', 'heartbeat', 'alarm', 'event', 'audit'];
/** rapd's `uplink.batchMaxMessages` cannot go above this. */
export const MAX_BATCH_MESSAGES = 10000;
const MAX_IDENTITY_CHARS = 256;
const MAX_INSTRUMENT_TIME_CHARS = 64;
const TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

export type BatchCheck = { ok: true; batch: TelemetryBatch } | { ok: false; error: string };

class Bad extends Error {}

function fail(path: string, expected: string): never {
  throw new Bad(`${path}: ${expected}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKnown(path: string, v: Record<string, unknown>, known: readonly string[]): void {
  for (const k of Object.keys(v)) if (!known.includes(k)) fail(path ? `${path}.${k}` : k, 'unexpected field');
}

/** ISO 8601 date-time with seconds and a zone, that names a real instant. */
export function isTimestamp(v: unknown): v is string {
  if (typeof v !== 'string') return false;
  const m = TIMESTAMP.exec(v);
  if (!m || Number.isNaN(Date.parse(v))) return false;
  // Date.parse rolls "02-30" over into March; a box clock never says that.
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return new Date(Date.UTC(y, mo - 1, d)).getUTCDate() === d;
}

function timestamp(path: string, v: unknown): string {
  if (!isTimestamp(v)) fail(path, 'expected an ISO 8601 timestamp with a time zone');
  return v;
}

function boundedString(path: string, v: unknown, max: number): string {
  if (typeof v !== 'string' || v.length > max) fail(path, `expected a string of at most ${max} characters`);
  return v;
}

function identity(path: string, v: unknown): InstrumentIdentity | null {
  if (v === null) return null;
  if (!isObject(v)) fail(path, 'expected an object or null');
  const out: InstrumentIdentity = {
    serial: boundedString(`${path}.serial`, v['serial'], MAX_IDENTITY_CHARS),
    model: boundedString(`${path}.model`, v['model'], MAX_IDENTITY_CHARS),
    swVersion: boundedString(`${path}.swVersion`, v['swVersion'], MAX_IDENTITY_CHARS),
  };
  onlyKnown(path, v, ['serial', 'model', 'swVersion']);
  return out;
}

function message(path: string, v: unknown): TelemetryMessage {
  if (!isObject(v)) fail(path, 'expected an object');
  const id = v['id'];
  if (typeof id !== 'string' || !UUID.test(id)) fail(`${path}.id`, 'expected a UUID');
  const kind = v['kind'];
  if (typeof kind !== 'string' || !KINDS.includes(kind as MessageKind)) {
    fail(`${path}.kind`, `expected one of ${KINDS.map((k) => JSON.stringify(k)).join(', ')}`);
  }
  const port = v['port'];
  if (typeof port !== 'string' || !PORT_NAME.test(port)) fail(`${path}.port`, `expected a port name (${PORT_NAME_DOC})`);
  const instrument = identity(`${path}.instrument`, v['instrument']);
  const receivedAt = timestamp(`${path}.receivedAt`, v['receivedAt']);
  const it = v['instrumentTime'];
  if (it !== null && (typeof it !== 'string' || it.length > MAX_INSTRUMENT_TIME_CHARS)) {
    fail(`${path}.instrumentTime`, `expected a string of at most ${MAX_INSTRUMENT_TIME_CHARS} characters or null`);
  }
  const body = v['body'];
  if (!isObject(body)) fail(`${path}.body`, 'expected a JSON object');
  if (kind === 'audit') {
    // The record is checked whole here; its place in the chain is the audit store's business.
    try {
      parseAuditRecord(body);
    } catch (e) {
      fail(`${path}.body`, `expected an audit record (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  onlyKnown(path, v, ['id', 'kind', 'port', 'instrument', 'receivedAt', 'instrumentTime', 'body']);
  // UUIDs compare case-insensitively; store one spelling so de-duplication holds.
  return { id: id.toLowerCase(), kind: kind as MessageKind, port, instrument, receivedAt, instrumentTime: it, body };
}

/** Check a parsed request body; on success the batch holds only the declared fields. */
export function validateBatch(v: unknown): BatchCheck {
  try {
    if (!isObject(v)) fail('batch', 'expected a JSON object');
    const device = v['device'];
    if (typeof device !== 'string' || !DEVICE_ID.test(device)) fail('device', `expected a device id (${DEVICE_ID_DOC})`);
    const sentAt = timestamp('sentAt', v['sentAt']);
    const list = v['messages'];
    if (!Array.isArray(list) || list.length > MAX_BATCH_MESSAGES) {
      fail('messages', `expected an array of at most ${MAX_BATCH_MESSAGES} messages`);
    }
    const messages = list.map((m, i) => message(`messages[${i}]`, m));
    onlyKnown('', v, ['device', 'sentAt', 'messages']);
    return { ok: true, batch: { device, sentAt, messages } };
  } catch (e) {
    if (e instanceof Bad) return { ok: false, error: e.message };
    throw e;
  }
}
