// rap-center's store: one SQLite file (node:sqlite). WAL so the CLI can read
// while the server writes; synchronous=FULL because a 200 tells the box it may
// delete its copy: an acknowledged batch must survive a power cut here too.
//
// De-duplication is the (device, id) uniqueness of a message: rapd delivers at
// least once (it re-sends when an answer is lost), INSERT OR IGNORE turns that
// into exactly once. The id is scoped to the device so that one box cannot
// suppress another's messages by sending their ids first.

import { existsSync } from 'node:fs';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { RapError, errorMessage } from '../lib/errors.ts';
import { checkLink, parseAuditRecord, type AuditRecord } from '../protocol/audit.ts';
import type { ResultFrame } from '../protocol/commands.ts';
import type { InstrumentIdentity, MessageKind, TelemetryAck, TelemetryBatch, TelemetryMessage } from '../protocol/telemetry.ts';

// 2: audit chains and commands (tables added with IF NOT EXISTS, so a version 1 file is upgraded in place).
const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS devices (
  id             TEXT PRIMARY KEY,
  first_seen     TEXT NOT NULL,    -- center clock
  last_seen      TEXT NOT NULL,    -- center clock
  last_sent_at   TEXT NOT NULL,    -- box clock, from the batch (shows clock skew)
  remote_address TEXT NOT NULL,
  batches        INTEGER NOT NULL,
  messages       INTEGER NOT NULL,
  alarms         INTEGER NOT NULL,
  duplicates     INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS messages (
  seq             INTEGER PRIMARY KEY,  -- arrival order at the center
  device          TEXT NOT NULL,
  id              TEXT NOT NULL,
  kind            TEXT NOT NULL,
  port            TEXT NOT NULL,
  instrument      TEXT,                 -- JSON InstrumentIdentity or NULL
  received_at     TEXT NOT NULL,        -- box clock, as sent
  received_ms     INTEGER NOT NULL,     -- the same instant, for ordering across zones
  instrument_time TEXT,
  body            TEXT NOT NULL,        -- JSON
  stored_at       TEXT NOT NULL,        -- center clock
  UNIQUE (device, id)
) STRICT;
CREATE INDEX IF NOT EXISTS messages_by_port ON messages (device, port, received_ms);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (device, received_ms);

CREATE TABLE IF NOT EXISTS instruments (
  device         TEXT NOT NULL,
  port           TEXT NOT NULL,
  serial         TEXT,
  model          TEXT,
  sw_version     TEXT,
  identity_ms    INTEGER,               -- receivedAt of the message that carried serial/model/sw_version
  last_seen      TEXT NOT NULL,
  last_seen_ms   INTEGER NOT NULL,
  messages       INTEGER NOT NULL,
  last_status    TEXT,                  -- JSON body of the newest status message
  last_status_at TEXT,
  last_status_ms INTEGER,
  last_alarm     TEXT,                  -- JSON body of the newest alarm
  last_alarm_at  TEXT,
  last_alarm_ms  INTEGER,
  PRIMARY KEY (device, port)
) STRICT;

-- Each box's audit chain, one row per record, keyed by the box's seq (a
-- record re-sent after a restart is the same row). A record arriving for a
-- seq already held with another hash is a fork: kept in audit_conflicts.
CREATE TABLE IF NOT EXISTS audit (
  device    TEXT NOT NULL,
  seq       INTEGER NOT NULL,
  hash      TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  time      TEXT NOT NULL,       -- box clock
  action    TEXT NOT NULL,
  record    TEXT NOT NULL,       -- the record as the box sent it (JSON)
  stored_at TEXT NOT NULL,       -- center clock
  PRIMARY KEY (device, seq)
) STRICT;
CREATE TABLE IF NOT EXISTS audit_conflicts (
  device    TEXT NOT NULL,
  seq       INTEGER NOT NULL,
  hash      TEXT NOT NULL,
  record    TEXT NOT NULL,
  stored_at TEXT NOT NULL,
  PRIMARY KEY (device, seq, hash)
) STRICT;

-- Commands sent to boxes and the results they answered.
CREATE TABLE IF NOT EXISTS commands (
  device       TEXT NOT NULL,
  id           TEXT NOT NULL,
  type         TEXT,
  key_id       TEXT,
  command      TEXT NOT NULL,      -- JSON as sent
  sent_at      TEXT NOT NULL,
  status       TEXT,               -- ok | error | rejected; NULL while waiting
  result       TEXT,               -- JSON
  error_code   TEXT,
  error        TEXT,
  completed_at TEXT,
  PRIMARY KEY (device, id)
) STRICT;
`;

/** A box's audit chain as the center holds it. */
export interface AuditChainReport {
  device: string;
  records: number;
  head: { seq: number; hash: string } | null;
  /** Gaps, broken links, edited records and forks, in seq order (at most 100). */
  problems: string[];
  ok: boolean;
}

export interface CommandRow {
  device: string;
  id: string;
  type: string | null;
  keyId: string | null;
  sentAt: string;
  status: string | null;
  result: unknown;
  errorCode: string | null;
  error: string | null;
  completedAt: string | null;
}

export interface InstrumentRow {
  port: string;
  serial: string | null;
  model: string | null;
  swVersion: string | null;
  lastSeen: string;
  messages: number;
  lastStatus: Record<string, unknown> | null;
  lastStatusAt: string | null;
  lastAlarm: Record<string, unknown> | null;
  lastAlarmAt: string | null;
}

export interface DeviceRow {
  id: string;
  firstSeen: string;
  lastSeen: string;
  lastSentAt: string;
  remoteAddress: string;
  batches: number;
  messages: number;
  alarms: number;
  duplicates: number;
  instruments: InstrumentRow[];
}

export interface StoredMessage extends TelemetryMessage {
  device: string;
  storedAt: string;
}

export interface MessageQuery {
  device: string;
  port?: string;
  /** The newest N (by the box's receivedAt), returned oldest first. */
  tail: number;
}

export interface CenterDb {
  /** Store a validated batch in one transaction; counts what was new. */
  /**
   * Store a validated batch in one transaction; counts what was new.
   * `onAuditProblem` hears of an audit record that does not link to the one
   * before it or forks the chain, as it arrives (a gap is only known later:
   * the missing record may still come; auditVerify reports it).
   */
  storeBatch(batch: TelemetryBatch, meta: { remoteAddress: string; now?: Date; onAuditProblem?: (problem: string) => void }): TelemetryAck;
  devices(): DeviceRow[];
  /** Audit records of one device with seq > after, oldest first. */
  auditRecords(device: string, after: number, limit: number): AuditRecord[];
  /** Walk one device's chain: every link, every gap, every fork. */
  auditVerify(device: string): AuditChainReport;
  recordCommand(device: string, command: unknown, now: Date): void;
  recordResult(device: string, result: ResultFrame, now: Date): void;
  commands(device: string, tail: number): CommandRow[];
  messages(q: MessageQuery): StoredMessage[];
  close(): void;
}

export interface OpenOptions {
  /** Create the file and schema if missing (the server); the CLI only reads an existing one. */
  create: boolean;
}

type Row = Record<string, unknown>;

const str = (v: unknown): string => v as string;
const strOrNull = (v: unknown): string | null => (v === null ? null : (v as string));
const num = (v: unknown): number => Number(v);
const jsonOrNull = (v: unknown): Record<string, unknown> | null => (v === null ? null : (JSON.parse(v as string) as Record<string, unknown>));

function instrumentRow(r: Row): InstrumentRow {
  return {
    port: str(r['port']),
    serial: strOrNull(r['serial']),
    model: strOrNull(r['model']),
    swVersion: strOrNull(r['sw_version']),
    lastSeen: str(r['last_seen']),
    messages: num(r['messages']),
    lastStatus: jsonOrNull(r['last_status']),
    lastStatusAt: strOrNull(r['last_status_at']),
    lastAlarm: jsonOrNull(r['last_alarm']),
    lastAlarmAt: strOrNull(r['last_alarm_at']),
  };
}

export function openCenterDb(path: string, opts: OpenOptions): CenterDb {
  if (!opts.create && !existsSync(path)) {
    throw new RapError('RAP_CENTER', `no database at ${path} (rap-center serve --db creates it)`, { path });
  }
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
    db.exec('PRAGMA busy_timeout = 5000');
    const version = num((db.prepare('PRAGMA user_version').get() as Row)['user_version']);
    if (version > SCHEMA_VERSION) {
      db.close();
      throw new RapError('RAP_CENTER', `database ${path} has schema ${version}; this rap-center knows ${SCHEMA_VERSION}`, { path, version });
    }
    // Persistent in the file; readers (the CLI) find it set.
    if (opts.create) db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = FULL');
    if (version < SCHEMA_VERSION) {
      if (!opts.create && version === 0) {
        db.close();
        throw new RapError('RAP_CENTER', `${path} is not a rap-center database`, { path });
      }
      db.exec('BEGIN IMMEDIATE');
      db.exec(SCHEMA);
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      db.exec('COMMIT');
    }
  } catch (e) {
    if (e instanceof RapError) throw e;
    throw new RapError('RAP_CENTER', `cannot open database ${path}: ${errorMessage(e)}`, { path }, { cause: e });
  }

  const q = {
    insertMessage: db.prepare(
      `INSERT OR IGNORE INTO messages (device, id, kind, port, instrument, received_at, received_ms, instrument_time, body, stored_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    getInstrument: db.prepare('SELECT * FROM instruments WHERE device = ? AND port = ?'),
    putInstrument: db.prepare(
      `INSERT OR REPLACE INTO instruments (device, port, serial, model, sw_version, identity_ms, last_seen, last_seen_ms, messages,
         last_status, last_status_at, last_status_ms, last_alarm, last_alarm_at, last_alarm_ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    upsertDevice: db.prepare(
      `INSERT INTO devices (id, first_seen, last_seen, last_sent_at, remote_address, batches, messages, alarms, duplicates)
       VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET
         last_seen = excluded.last_seen, last_sent_at = excluded.last_sent_at, remote_address = excluded.remote_address,
         batches = batches + 1, messages = messages + excluded.messages, alarms = alarms + excluded.alarms,
         duplicates = duplicates + excluded.duplicates`,
    ),
    devices: db.prepare('SELECT * FROM devices ORDER BY id'),
    instrumentsOf: db.prepare('SELECT * FROM instruments WHERE device = ? ORDER BY port'),
    tailDevice: db.prepare('SELECT * FROM messages WHERE device = ? ORDER BY received_ms DESC, seq DESC LIMIT ?'),
    tailPort: db.prepare('SELECT * FROM messages WHERE device = ? AND port = ? ORDER BY received_ms DESC, seq DESC LIMIT ?'),
    insertAudit: db.prepare(
      `INSERT INTO audit (device, seq, hash, prev_hash, time, action, record, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (device, seq) DO NOTHING`,
    ),
    auditHashAt: db.prepare('SELECT hash FROM audit WHERE device = ? AND seq = ?'),
    insertConflict: db.prepare('INSERT OR IGNORE INTO audit_conflicts (device, seq, hash, record, stored_at) VALUES (?, ?, ?, ?, ?)'),
    auditAfter: db.prepare('SELECT record FROM audit WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?'),
    auditAll: db.prepare('SELECT record FROM audit WHERE device = ? ORDER BY seq'),
    conflictsOf: db.prepare('SELECT seq, hash FROM audit_conflicts WHERE device = ? ORDER BY seq'),
    insertCommand: db.prepare(
      `INSERT INTO commands (device, id, type, key_id, command, sent_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (device, id) DO UPDATE SET command = excluded.command, sent_at = excluded.sent_at,
         status = NULL, result = NULL, error_code = NULL, error = NULL, completed_at = NULL`,
    ),
    resultCommand: db.prepare(
      `INSERT INTO commands (device, id, command, sent_at, status, result, error_code, error, completed_at) VALUES (?, ?, 'null', ?, ?, ?, ?, ?, ?)
       ON CONFLICT (device, id) DO UPDATE SET status = excluded.status, result = excluded.result,
         error_code = excluded.error_code, error = excluded.error, completed_at = excluded.completed_at`,
    ),
    commandsOf: db.prepare('SELECT * FROM commands WHERE device = ? ORDER BY sent_at DESC, rowid DESC LIMIT ?'),
  } satisfies Record<string, StatementSync>;

  /** Fold one newly stored message into its instrument's row (messages may arrive out of order). */
  const touchInstrument = (device: string, m: TelemetryMessage, ms: number): void => {
    const cur = q.getInstrument.get(device, m.port) as Row | undefined;
    const newer = (key: string): boolean => cur === undefined || cur[key] === null || ms >= num(cur[key]);
    let ident: InstrumentIdentity | null =
      cur && cur['serial'] !== null ? { serial: str(cur['serial']), model: str(cur['model']), swVersion: str(cur['sw_version']) } : null;
    let identMs = cur && cur['identity_ms'] !== null ? num(cur['identity_ms']) : null;
    // The newest identity wins (an instrument swapped on a port).
    if (m.instrument && newer('identity_ms')) {
      ident = m.instrument;
      identMs = ms;
    }
    const seen = newer('last_seen_ms') ? { at: m.receivedAt, ms } : { at: str(cur!['last_seen']), ms: num(cur!['last_seen_ms']) };
    const keep = (prefix: 'status' | 'alarm', kind: MessageKind): [string | null, string | null, number | null] =>
      m.kind === kind && newer(`last_${prefix}_ms`)
        ? [JSON.stringify(m.body), m.receivedAt, ms]
        : cur
          ? [strOrNull(cur[`last_${prefix}`]), strOrNull(cur[`last_${prefix}_at`]), cur[`last_${prefix}_ms`] === null ? null : num(cur[`last_${prefix}_ms`])]
          : [null, null, null];
    q.putInstrument.run(
      device,
      m.port,
      ident?.serial ?? null,
      ident?.model ?? null,
      ident?.swVersion ?? null,
      identMs,
      seen.at,
      seen.ms,
      (cur ? num(cur['messages']) : 0) + 1,
      ...keep('status', 'status'),
      ...keep('alarm', 'alarm'),
    );
  };

  /** One audit record into the device's chain; false when it was there already. */
  const storeAudit = (device: string, body: unknown, now: string, problem: (p: string) => void): boolean => {
    const r = parseAuditRecord(body);
    const json = JSON.stringify(r);
    const res = q.insertAudit.run(device, r.seq, r.hash, r.prevHash, r.time, r.action, json, now);
    if (Number(res.changes) > 0) {
      const prev = r.seq === 1 ? null : (q.auditHashAt.get(device, r.seq - 1) as Row | undefined)?.['hash'];
      const link = prev === undefined ? null : checkLink(prev === null ? null : { seq: r.seq - 1, hash: str(prev) }, r);
      if (link) problem(link.message);
      return true;
    }
    const held = (q.auditHashAt.get(device, r.seq) as Row | undefined)?.['hash'];
    if (held !== r.hash) {
      q.insertConflict.run(device, r.seq, r.hash, json, now);
      problem(`fork: record ${r.seq} received again with another hash`);
    }
    return false;
  };

  return {
    auditRecords(device, after, limit) {
      return (q.auditAfter.all(device, after, limit) as Row[]).map((r) => JSON.parse(str(r['record'])) as AuditRecord);
    },

    auditVerify(device) {
      const problems: string[] = [];
      let head: { seq: number; hash: string } | null = null;
      let records = 0;
      for (const row of q.auditAll.iterate(device) as Iterable<Row>) {
        const r = JSON.parse(str(row['record'])) as AuditRecord;
        records++;
        const expected = (head?.seq ?? 0) + 1;
        if (r.seq > expected) {
          problems.push(`gap: record${r.seq - expected > 1 ? `s ${expected}-${r.seq - 1}` : ` ${expected}`} not received`);
          // Past a gap the link cannot be checked; the record itself still can.
          const p = checkLink({ seq: r.seq - 1, hash: r.prevHash }, r);
          if (p) problems.push(p.message);
        } else {
          const p = checkLink(head, r);
          if (p) problems.push(p.message);
        }
        head = { seq: r.seq, hash: r.hash };
      }
      for (const c of q.conflictsOf.all(device) as Row[]) {
        problems.push(`fork: record ${num(c['seq'])} was received again with another hash (${str(c['hash']).slice(0, 12)}...): the box's log was rewritten or truncated`);
      }
      return { device, records, head, problems: problems.slice(0, 100), ok: problems.length === 0 };
    },

    recordCommand(device, command, now) {
      const c = (command ?? {}) as Record<string, unknown>;
      const s = (v: unknown): string | null => (typeof v === 'string' ? v : null);
      q.insertCommand.run(device, String(c['id'] ?? ''), s(c['type']), s(c['keyId']), JSON.stringify(command), now.toISOString());
    },

    recordResult(device, r, now) {
      const at = now.toISOString();
      q.resultCommand.run(device, r.id, at, r.status, r.result === undefined ? null : JSON.stringify(r.result), r.error?.code ?? null, r.error?.message ?? null, at);
    },

    commands(device, tail) {
      return (q.commandsOf.all(device, tail) as Row[]).map((r) => ({
        device: str(r['device']),
        id: str(r['id']),
        type: strOrNull(r['type']),
        keyId: strOrNull(r['key_id']),
        sentAt: str(r['sent_at']),
        status: strOrNull(r['status']),
        result: r['result'] === null ? null : (JSON.parse(str(r['result'])) as unknown),
        errorCode: strOrNull(r['error_code']),
        error: strOrNull(r['error']),
        completedAt: strOrNull(r['completed_at']),
      }));
    },

    storeBatch(batch, meta) {
      const now = (meta.now ?? new Date()).toISOString();
      let stored = 0;
      let alarms = 0;
      let audits = 0;
      db.exec('BEGIN IMMEDIATE');
      try {
        for (const m of batch.messages) {
          if (m.kind === 'audit') {
            if (storeAudit(batch.device, m.body, now, meta.onAuditProblem ?? (() => {}))) audits++;
            continue;
          }
          const ms = Date.parse(m.receivedAt);
          const r = q.insertMessage.run(
            batch.device,
            m.id,
            m.kind,
            m.port,
            m.instrument ? JSON.stringify(m.instrument) : null,
            m.receivedAt,
            ms,
            m.instrumentTime,
            JSON.stringify(m.body),
            now,
          );
          if (Number(r.changes) === 0) continue; // already stored: applied the first time
          stored++;
          if (m.kind === 'alarm') alarms++;
          touchInstrument(batch.device, m, ms);
        }
        const duplicates = batch.messages.length - stored - audits;
        // The device's message count is instrument traffic; audit records are counted by their chain.
        q.upsertDevice.run(batch.device, now, now, batch.sentAt, meta.remoteAddress, stored, alarms, duplicates);
        db.exec('COMMIT');
        return { stored: stored + audits, duplicates };
      } catch (e) {
        db.exec('ROLLBACK');
        throw new RapError('RAP_CENTER', `storing a batch from ${batch.device} failed: ${errorMessage(e)}`, { device: batch.device }, { cause: e });
      }
    },

    devices() {
      return (q.devices.all() as Row[]).map((r) => ({
        id: str(r['id']),
        firstSeen: str(r['first_seen']),
        lastSeen: str(r['last_seen']),
        lastSentAt: str(r['last_sent_at']),
        remoteAddress: str(r['remote_address']),
        batches: num(r['batches']),
        messages: num(r['messages']),
        alarms: num(r['alarms']),
        duplicates: num(r['duplicates']),
        instruments: (q.instrumentsOf.all(r['id'] as string) as Row[]).map(instrumentRow),
      }));
    },

    messages(query) {
      const rows = (
        query.port === undefined ? q.tailDevice.all(query.device, query.tail) : q.tailPort.all(query.device, query.port, query.tail)
      ) as Row[];
      return rows.reverse().map((r) => ({
        device: str(r['device']),
        id: str(r['id']),
        kind: str(r['kind']) as MessageKind,
        port: str(r['port']),
        instrument: jsonOrNull(r['instrument']) as InstrumentIdentity | null,
        receivedAt: str(r['received_at']),
        instrumentTime: strOrNull(r['instrument_time']),
        body: JSON.parse(str(r['body'])) as Record<string, unknown>,
        storedAt: str(r['stored_at']),
      }));
    },

    close() {
      if (db.isOpen) db.close();
    },
  };
}
