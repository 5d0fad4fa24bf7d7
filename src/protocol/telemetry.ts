// The uplink wire format between rapd and rap-center (shared by both ends).
//
//   POST {center.url}/v1/telemetry
//   Content-Type: application/json
//   Content-Encoding: gzip
//   body: TelemetryBatch
//   -> 200 application/json TelemetryAck
//   -> 400 {error} bad batch (rapd logs it and drops nothing: it retries later
//          only if the status is retryable; 400 is not, see uplink.ts)
//   -> 403 device id in the batch does not match the client certificate's CN
//   -> 429 / 503 with Retry-After: come back later
//
// Mutual TLS authenticates the box; the batch's `device` must equal the CN of
// the client certificate. Every message carries a stable `id` (UUID assigned
// by rapd when the instrument's message was stored), so a batch sent twice
// (lost response, rapd killed before it deleted the batch) is stored once.

export const TELEMETRY_PATH = '/v1/telemetry';

// Names both ends check: rapd's config (device.id, ports[].name), the
// center's batch validation, its CLI and its PKI (the certificate CN).
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DEVICE_ID_DOC = '1-64 letters, digits, ".", "_" or "-", starting with a letter or digit';
export const PORT_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
export const PORT_NAME_DOC = '1-32 of a-z, 0-9, "-"';

/**
 * What a message is. Priority follows from it (see priorityOf). `audit`
 * carries one audit record (src/protocol/audit.ts) as its body, with port
 * AUDIT_PORT; the center keeps those in its per-device audit chain.
 */
export type MessageKind = 'status' | 'heartbeat' | 'alarm' | 'event' | 'audit';

/** The `port` of an audit message (it belongs to the box, not to an instrument port). */
export const AUDIT_PORT = 'audit';

/** Store and drop order: alarms are kept longest and sent first. */
export type Priority = 'alarm' | 'routine';

// Audit records ride with alarms: never dropped before routine status, and
// sent at once. (Past the alarm quota they are dropped oldest first like
// alarms; the center then reports the gap in that box's chain.)
export function priorityOf(kind: MessageKind): Priority {
  return kind === 'alarm' || kind === 'audit' ? 'alarm' : 'routine';
}

export interface InstrumentIdentity {
  serial: string;
  model: string;
  swVersion: string;
}

export interface TelemetryMessage {
  /** Stable, unique id (UUID) assigned by rapd at ingest. */
  id: string;
  kind: MessageKind;
  /** Instrument port name (config `ports[].name`). */
  port: string;
  /** The instrument as it identified itself on this connection, if it did. */
  instrument: InstrumentIdentity | null;
  /** When rapd stored it (ISO 8601, box clock). */
  receivedAt: string;
  /** The instrument's own timestamp, if it sent one (ISO 8601, as given). */
  instrumentTime: string | null;
  /** The instrument's payload (status fields, alarm code/text, event details). */
  body: Record<string, unknown>;
}

export interface TelemetryBatch {
  device: string;
  /** When this POST was made (box clock). */
  sentAt: string;
  messages: TelemetryMessage[];
}

export interface TelemetryAck {
  /** Number of messages stored for the first time. */
  stored: number;
  /** Number of messages the center already had (re-sent). */
  duplicates: number;
}
