// The local control protocol between rapctl and rapd over the owner-only unix
// socket: one JSON request per line, one JSON response per line. Shared by
// both ends so they cannot drift apart.

import type { AuditRecord, ChainHead, VerifyReport } from './audit.ts';
import type { InstrumentIdentity } from './telemetry.ts';

export const CONTROL_METHODS = ['status', 'audit.read', 'audit.verify'] as const;
export type ControlMethod = (typeof CONTROL_METHODS)[number];

/** Most audit records in one `audit.read` answer. */
export const AUDIT_READ_MAX = 1000;

export type ControlRequest =
  | { method: 'status' }
  /** Records with seq > after, oldest first, at most limit. */
  | { method: 'audit.read'; after: number; limit: number }
  | { method: 'audit.verify' };

/** What each method answers. */
export interface ControlResults {
  status: StatusReport;
  'audit.read': AuditRecord[];
  'audit.verify': VerifyReport;
}

/** Per-port agent state. */
export interface PortReport {
  name: string;
  listen: string;
  /** False while the gateway address is not on the box yet (networkd adds it asynchronously). */
  listening: boolean;
  waitingForAddressSince: string | null;
  /** Why the last listen attempt failed (e.g. "EADDRNOTAVAIL"), null once listening. */
  bindError: string | null;
  connections: number;
  instrument: InstrumentIdentity | null;
  online: boolean;
  lastSeen: string | null;
  lastStatusAt: string | null;
  counters: { frames: number; stored: number; polls: number; errors: Record<string, number> };
}

export interface StoreReport {
  queued: { alarm: number; routine: number };
  /** Approximate payload bytes queued (the stored JSON). */
  bytes: number;
  /** receivedAt of the oldest queued routine message. */
  oldestRoutineAt: string | null;
  /** Dropped by the quotas; persisted, so these count across restarts. */
  dropped: { alarm: number; routine: number };
  /** Appends rejected since open: disk low (routine) or a failed commit (either). */
  refused: { alarm: number; routine: number };
  /** One human line about the last drop, e.g. "dropped 120 routine messages (quota 1000000) at ...". */
  lastDrop: string | null;
  /** Group-commit counters since open. */
  commits: number;
  messagesCommitted: number;
  /** What recovery found at open (corrupt file moved aside, unclean shutdown), or null. */
  recovered: string | null;
}

export interface UplinkReport {
  center: string;
  proxy: string;
  state: 'idle' | 'waiting' | 'sending' | 'backoff' | 'stopped';
  lastSuccessAt: string | null;
  lastError: string | null;
  consecutiveFailures: number;
  nextAttemptAt: string | null;
  sentBatches: number;
  sentMessages: number;
  duplicatesAtCenter: number;
  rejectedByCenter: number;
  /** Bytes on the wire (TCP payload both ways, incl. TLS and proxy handshakes). */
  wireBytes: number;
}

export interface ChannelReport {
  url: string;
  proxy: string;
  state: 'idle' | 'connecting' | 'connected' | 'backoff' | 'stopped';
  connectedSince: string | null;
  lastError: string | null;
  consecutiveFailures: number;
  nextAttemptAt: string | null;
  commandsReceived: number;
  resultsSent: number;
}

export interface CommandsReport {
  /** Command types this box handles. */
  types: string[];
  /** Trusted center command key ids. */
  keys: string[];
  accepted: number;
  rejected: number;
  inFlight: number;
  /** Accepted command ids remembered against replay (until their expiry). */
  remembered: number;
}

export interface AuditReport {
  path: string;
  head: ChainHead | null;
  /** The head that reached the store (forwarded to the center from there). */
  anchor: ChainHead | null;
  /** What the open found (torn tail cut, broken chain), or null. */
  recovered: string | null;
}

/** The instrument ports' network and the firewall, as applied at start. */
export interface NetworkReport {
  firewall: { table: string; appliedAt: string; chains: number; rules: number };
  /** The networkd directory, rapd's files in it, and whether networkd was asked to reload. */
  networkd: { dir: string; files: string[]; reloaded: boolean };
}

export interface StatusReport {
  name: string;
  version: string;
  node: string;
  pid: number;
  state: 'starting' | 'running' | 'stopping';
  startedAt: string;
  uptimeSeconds: number;
  /** Root slot we booted from ("a"/"b"), or null when not booted from an image slot. */
  slot: string | null;
  paths: { state: string; runtime: string };
  config: Record<string, unknown>;
  ports: PortReport[];
  store: StoreReport | null;
  /** null when no center is configured (store only). */
  uplink: UplinkReport | null;
  /** null when no port has an interface (loopback/dev ports only: nothing applied). */
  network: NetworkReport | null;
  /** null when no center is configured. */
  channel: ChannelReport | null;
  commands: CommandsReport;
  audit: AuditReport;
}

export type ControlResponse<T = StatusReport> =
  | { ok: true; result: T }
  | { ok: false; error: { code: string; message: string } };

/** Largest request line accepted; a request is tiny, anything bigger is abuse. */
export const MAX_REQUEST_BYTES = 4096;

function intField(doc: Record<string, unknown>, name: string, min: number, max: number): number {
  const v = doc[name];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new Error(`'${name}': expected an integer from ${min} to ${max}`);
  return v;
}

/** Parse one request line; throws an Error whose message names what is wrong. */
export function parseControlRequest(line: string): ControlRequest {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (e) {
    throw new Error(`request is not valid JSON: ${(e as Error).message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new Error('request must be a JSON object');
  }
  const method = (doc as { method?: unknown }).method;
  if (typeof method !== 'string') throw new Error("request has no string 'method'");
  if (!(CONTROL_METHODS as readonly string[]).includes(method)) {
    throw new Error(`unknown method ${JSON.stringify(method)} (known: ${CONTROL_METHODS.join(', ')})`);
  }
  const allowed = method === 'audit.read' ? ['method', 'after', 'limit'] : ['method'];
  const extra = Object.keys(doc).filter((k) => !allowed.includes(k));
  if (extra.length > 0) throw new Error(`unknown request field(s): ${extra.join(', ')}`);
  if (method === 'audit.read') {
    const d = doc as Record<string, unknown>;
    return { method, after: intField(d, 'after', 0, Number.MAX_SAFE_INTEGER), limit: intField(d, 'limit', 1, AUDIT_READ_MAX) };
  }
  return { method: method as 'status' | 'audit.verify' };
}
