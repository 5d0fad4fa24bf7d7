// The durable store-and-forward queue between the instrument agents and the
// uplink. An instrument's message is acknowledged to the instrument only once
// it is on disk, and it leaves the disk only once the center acknowledged it.
//
// One SQLite file (node:sqlite, built into the runtime: no native addon in the
// SEA) in WAL mode with synchronous=FULL: every COMMIT fsyncs the WAL, so a
// committed message survives kill -9 and power loss. NORMAL would not: it
// skips that fsync and a power cut forgets the last commits, which the
// instrument already believes delivered.
//
// fsync is the cost that matters (real flash: milliseconds each), so appends
// are group-committed: everything appended in one event-loop turn goes into
// one transaction, flushed from setImmediate (or at once when FLUSH_AT are
// waiting), and every append of it resolves after that one COMMIT.
//
// Bounds, in this order of preference:
//   - quotas per priority, enforced in the transaction that inserts: past its
//     quota a priority loses its own oldest messages. Routine pressure never
//     evicts an alarm; alarms are dropped (oldest first) only past the alarm
//     quota itself. Drops are counted (persisted in `meta`), logged and
//     described in one `lastDrop` line for `rapctl status`;
//   - free space: below `minFreeBytes` in the database's directory, new
//     routine messages are refused (RAP_STORE_FULL) while alarms are still
//     accepted, so the last of the disk goes to alarms;
//   - a write error (SQLITE_FULL, EIO) rejects every append of that
//     transaction (nothing half-acknowledged); the store stays usable.
//
// Recovery: WAL replay makes kill -9 and power cuts a non-event. A file that
// is not a database, is torn, or fails the integrity check is moved aside to
// `<file>.corrupt-<timestamp>` (kept for a post-mortem), logged at error level,
// reported in stats().recovered, and a fresh queue is started: losing the
// backlog is better than a gateway that no longer starts.

import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync, renameSync, rmSync, statfsSync } from 'node:fs';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { dirname } from 'node:path';
import { fsyncDir } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Fields, Logger } from '../lib/log.ts';
import type { StoreReport } from '../protocol/control.ts';
import { priorityOf, type InstrumentIdentity, type MessageKind, type Priority, type TelemetryMessage } from '../protocol/telemetry.ts';

export interface NewMessage {
  kind: MessageKind;
  port: string;
  instrument: InstrumentIdentity | null;
  instrumentTime: string | null;
  body: Record<string, unknown>;
}

export interface StoreOptions {
  /** SQLite file, e.g. /var/lib/rapd/queue.db (its directory must exist). */
  path: string;
  /** Quota for priority 'routine' (kinds status, heartbeat, event). */
  maxRoutineMessages: number;
  /** Quota for priority 'alarm'. */
  maxAlarmMessages: number;
  /** Below this free space in the database's directory, routine appends are refused. */
  minFreeBytes: number;
  log: Logger;
  now?: () => Date;
  /** Free bytes for unprivileged writers in `dir`; default from statfs (bavail * bsize). */
  freeBytes?: (dir: string) => number;
  /**
   * Hard cap on the database file (SQLite max_page_count); writes past it
   * fail like a full disk. Default: none. Lets tests produce SQLITE_FULL
   * without filling a real filesystem.
   */
  maxDbBytes?: number;
}

/** The store's part of `rapctl status` (defined once, in the control protocol). */
export type StoreStats = StoreReport;

/** Appends waiting at once that trigger a flush without waiting for the turn to end. */
export const FLUSH_AT = 1000;
const SCHEMA_VERSION = 1;
/** Bound on waiting for SQLite's lock (only another process could hold it). */
const BUSY_TIMEOUT_MS = 1000;
/** After a checkpoint the WAL is cut back to this size (the data partition is small). */
const WAL_SIZE_LIMIT = 16 * 1024 * 1024;
/** Repeated drop/refusal/failure logs are folded into one line per this interval. */
const LOG_EVERY_MS = 60_000;

const SQLITE_CORRUPT = 11;
const SQLITE_NOTADB = 26;

const SCHEMA = `
  CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,          -- arrival order
    id TEXT NOT NULL UNIQUE,          -- the message's UUID (what the center acks)
    priority TEXT NOT NULL CHECK (priority IN ('alarm', 'routine')),
    received_at TEXT NOT NULL,
    bytes INTEGER NOT NULL,           -- UTF-8 length of json
    json TEXT NOT NULL                -- the TelemetryMessage as sent
  );
  CREATE INDEX messages_by_priority ON messages (priority, seq);
  CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  PRAGMA user_version = ${SCHEMA_VERSION};
`;

/** The file cannot be used as a queue: move it aside and start again. */
class Corrupt extends Error {}

type PerPriority = { alarm: number; routine: number };

interface Pending {
  msg: TelemetryMessage;
  priority: Priority;
  json: string;
  bytes: number;
  /** Meta keys set in the same transaction (the audit anchor). */
  meta: Record<string, string> | undefined;
  resolve: (m: TelemetryMessage) => void;
  reject: (e: unknown) => void;
}

interface Statements {
  insert: StatementSync;
  deleteById: StatementSync;
  deleteBySeq: StatementSync;
  dropOldest: StatementSync;
  setMeta: StatementSync;
  oldest: StatementSync;
  newest: StatementSync;
  oldestRoutineAt: StatementSync;
}

function sqliteCode(e: unknown): number | null {
  const c = (e as { errcode?: unknown } | null)?.errcode;
  return typeof c === 'number' ? c & 0xff : null;
}

function isCorruption(e: unknown): boolean {
  const c = sqliteCode(e);
  return e instanceof Corrupt || c === SQLITE_CORRUPT || c === SQLITE_NOTADB;
}

/**
 * A UUID (RFC 9562 version 7) whose first 48 bits are the time in ms and the
 * other 74 bits come from crypto.randomUUID(). Why not plain v4: the unique
 * index on `id` then takes inserts at random places, which dirties one index
 * page per message in every transaction and halved the commit rate measured
 * here; time-ordered ids land at the end of the index (and acks, oldest
 * first, at its start). Still an opaque, unique UUID to the center.
 */
export function timeOrderedUuid(ms: number): string {
  const r = randomUUID(); // xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx
  const t = (Number.isFinite(ms) ? Math.max(0, Math.min(Math.floor(ms), 0xffff_ffff_ffff)) : 0).toString(16).padStart(12, '0');
  return `${t.slice(0, 8)}-${t.slice(8, 12)}-7${r.slice(15)}`;
}

function statfsFree(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

const zero = (): PerPriority => ({ alarm: 0, routine: 0 });

interface Opened {
  db: DatabaseSync;
  /** The previous process did not close the store (kill -9, power cut, crash). */
  unclean: boolean;
}

/** Open, configure and check the file; throws Corrupt (or a SQLite corruption error) when unusable. */
function openDatabase(path: string, maxDbBytes: number | undefined): Opened {
  if (!existsSync(path)) {
    // Owner-only: the queue holds instrument data. SQLite gives -wal and -shm
    // the main file's mode. The directory entry is made durable once the
    // schema is in (SQLite syncs the directory for the WAL itself).
    closeSync(openSync(path, 'a', 0o600));
  }
  const db = new DatabaseSync(path, { timeout: BUSY_TIMEOUT_MS });
  try {
    // The first statement reads the header: garbage fails here with NOTADB, a
    // torn file with CORRUPT.
    const mode = db.prepare('PRAGMA journal_mode = WAL').get()?.['journal_mode'];
    if (mode !== 'wal') throw new RapError('RAP_STORE', `store ${path}: cannot use WAL (journal_mode is ${String(mode)})`, { path });
    db.exec('PRAGMA synchronous = FULL');
    // Guard the promise in the header comment: FULL is what makes an ack durable.
    if (db.prepare('PRAGMA synchronous').get()?.['synchronous'] !== 2) {
      throw new RapError('RAP_STORE', `store ${path}: SQLite refused synchronous=FULL`, { path });
    }
    db.exec(`PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT}`);
    if (maxDbBytes !== undefined) {
      const pageSize = Number(db.prepare('PRAGMA page_size').get()?.['page_size']);
      db.exec(`PRAGMA max_page_count = ${Math.max(1, Math.floor(maxDbBytes / pageSize))}`);
    }
    const version = Number(db.prepare('PRAGMA user_version').get()?.['user_version']);
    if (version === 0) {
      const tables = Number(db.prepare('SELECT count(*) AS n FROM sqlite_schema').get()?.['n']);
      if (tables > 0) throw new Corrupt('a SQLite database, but not a rapd queue (user_version 0 with tables in it)');
      db.exec(`BEGIN IMMEDIATE; ${SCHEMA}; COMMIT`);
      fsyncDir(dirname(path));
      return { db, unclean: false };
    }
    if (version !== SCHEMA_VERSION) {
      // A newer firmware's queue after a rollback to this slot, most likely.
      throw new Corrupt(`queue schema version ${version} is not known to this rapd (it knows ${SCHEMA_VERSION})`);
    }
    const state = db.prepare(`SELECT value FROM meta WHERE key = 'state'`).get()?.['value'];
    const unclean = state === 'open';
    if (unclean) {
      // A crash or power cut: WAL replay has already happened; check the
      // pages as well before trusting them. (After a clean close the
      // full-table count at open is the cheaper check.)
      const rows = db.prepare('PRAGMA quick_check').all();
      const first = rows[0]?.['quick_check'];
      if (rows.length !== 1 || first !== 'ok') throw new Corrupt(`integrity check failed: ${String(first)}`);
    }
    return { db, unclean };
  } catch (e) {
    try {
      db.close();
    } catch {
      // already unusable
    }
    throw e;
  }
}

/** Move a corrupt file (and its WAL) aside, keeping it for a post-mortem. Returns the new name. */
function moveAside(path: string, at: Date): string {
  const aside = `${path}.corrupt-${at.toISOString().replaceAll(':', '-')}`;
  renameSync(path, aside);
  if (existsSync(`${path}-wal`)) renameSync(`${path}-wal`, `${aside}-wal`);
  // The shared-memory index is rebuilt from the WAL; a stale one must not meet a new file.
  rmSync(`${path}-shm`, { force: true });
  fsyncDir(dirname(path));
  return aside;
}

export class MessageStore {
  private readonly path: string;
  private readonly dir: string;
  private readonly db: DatabaseSync;
  private readonly st: Statements;
  private readonly quota: PerPriority;
  private readonly minFreeBytes: number;
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly freeBytes: (dir: string) => number;
  private readonly recovered: string | null;

  private readonly counts: PerPriority;
  private readonly queuedBytes: PerPriority;
  private readonly dropped: PerPriority;
  private readonly refused = zero();
  private lastDrop: string | null;
  private commits = 0;
  private messagesCommitted = 0;

  private pending: Pending[] = [];
  private immediate: NodeJS.Immediate | null = null;
  /** Free bytes measured for the group being collected (bytes null: could not measure). */
  private groupFree: { bytes: number | null } | null = null;
  private readonly listeners = new Set<(m: TelemetryMessage) => void>();
  private closed = false;
  /** A corruption error at run time: do not mark the next open clean, so it runs the integrity check. */
  private sawCorruption = false;
  private readonly logged = new Map<string, { at: number; suppressed: number }>();

  private constructor(opts: StoreOptions, db: DatabaseSync, recovered: string | null) {
    this.path = opts.path;
    this.dir = dirname(opts.path);
    this.db = db;
    this.quota = { alarm: opts.maxAlarmMessages, routine: opts.maxRoutineMessages };
    this.minFreeBytes = opts.minFreeBytes;
    this.log = opts.log;
    this.now = opts.now ?? (() => new Date());
    this.freeBytes = opts.freeBytes ?? statfsFree;
    this.recovered = recovered;
    this.st = {
      insert: db.prepare('INSERT INTO messages (id, priority, received_at, bytes, json) VALUES (?, ?, ?, ?, ?)'),
      deleteById: db.prepare('DELETE FROM messages WHERE id = ? RETURNING priority, bytes'),
      deleteBySeq: db.prepare('DELETE FROM messages WHERE seq = ?'),
      dropOldest: db.prepare(
        'DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE priority = ? ORDER BY seq LIMIT ?) RETURNING bytes',
      ),
      setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      oldest: db.prepare('SELECT seq, bytes, json FROM messages WHERE priority = ? ORDER BY seq LIMIT ?'),
      newest: db.prepare('SELECT seq, bytes, json FROM messages WHERE priority = ? AND seq > ? ORDER BY seq DESC LIMIT ?'),
      oldestRoutineAt: db.prepare(`SELECT received_at FROM messages WHERE priority = 'routine' ORDER BY seq LIMIT 1`),
    };
    // Counters live in memory (count() is called per message by the uplink);
    // this full scan also reads every table page once, which catches a torn
    // file the header check missed.
    this.counts = zero();
    this.queuedBytes = zero();
    for (const r of db.prepare('SELECT priority, count(*) AS n, total(bytes) AS b FROM messages GROUP BY priority').all()) {
      const p = r['priority'] === 'alarm' ? 'alarm' : 'routine';
      this.counts[p] = Number(r['n']);
      this.queuedBytes[p] = Number(r['b']);
    }
    const meta = new Map(db.prepare('SELECT key, value FROM meta').all().map((r) => [String(r['key']), String(r['value'])]));
    this.dropped = { alarm: Number(meta.get('dropped.alarm') ?? 0), routine: Number(meta.get('dropped.routine') ?? 0) };
    this.lastDrop = meta.get('lastDrop') ?? null;
  }

  /**
   * Open (or create) the queue at opts.path. A corrupt file is moved aside
   * and replaced by an empty queue (see stats().recovered); other failures
   * (no such directory, permissions) throw RAP_STORE.
   */
  static open(opts: StoreOptions): MessageStore {
    const now = opts.now ?? (() => new Date());
    let recovered: string | null = null;
    let store: MessageStore;
    try {
      const { db, unclean } = openDatabase(opts.path, opts.maxDbBytes);
      if (unclean) recovered = 'previous run did not close the store (crash or power cut); integrity check ok';
      try {
        store = new MessageStore(opts, db, recovered);
      } catch (e) {
        db.close();
        throw e;
      }
    } catch (e) {
      if (!isCorruption(e)) {
        if (e instanceof RapError) throw e;
        throw new RapError('RAP_STORE', `store ${opts.path}: cannot open: ${errorMessage(e)}`, { path: opts.path }, { cause: e });
      }
      let aside: string;
      try {
        aside = moveAside(opts.path, now());
      } catch (e2) {
        throw new RapError('RAP_STORE', `store ${opts.path}: corrupt (${errorMessage(e)}) and cannot be moved aside: ${errorMessage(e2)}`, { path: opts.path }, { cause: e2 });
      }
      recovered = `corrupt queue database (${errorMessage(e)}) moved aside to ${aside}; started an empty queue`;
      opts.log.error('store database corrupt: moved aside, queued messages in it are not sent', {
        path: opts.path,
        movedTo: aside,
        error: errorMessage(e),
      });
      try {
        const { db } = openDatabase(opts.path, opts.maxDbBytes);
        store = new MessageStore(opts, db, recovered);
      } catch (e2) {
        throw new RapError('RAP_STORE', `store ${opts.path}: cannot create a fresh queue: ${errorMessage(e2)}`, { path: opts.path }, { cause: e2 });
      }
    }
    store.start();
    return store;
  }

  /** Mark the file in use (so a crash is noticed next time) and apply quotas lowered since the last run. */
  private start(): void {
    if (this.recovered && !this.recovered.startsWith('corrupt')) {
      this.log.warn('store recovered after an unclean shutdown', { path: this.path, queued: { ...this.counts } });
    }
    try {
      this.db.exec('BEGIN IMMEDIATE');
      const drops = this.enforceQuotas(zero());
      this.st.setMeta.run('state', 'open');
      this.db.exec('COMMIT');
      this.applyDrops(drops);
    } catch (e) {
      // A full disk must not keep rapd from starting; the marker is only an
      // optimisation for the next open and the quotas apply at the next commit.
      this.rollback();
      this.log.warn('store: could not record the open state', { path: this.path, error: errorMessage(e) });
    }
    this.log.info('store open', { path: this.path, queued: { ...this.counts }, bytes: this.queuedBytes.alarm + this.queuedBytes.routine });
  }

  /**
   * Queue a message. Resolves with the stored message (id, receivedAt) only
   * after the transaction holding it committed. Rejects RAP_STORE_FULL for a
   * routine message while the disk is low, RAP_STORE when the commit failed.
   */
  append(msg: NewMessage, opts: { meta?: Record<string, string> } = {}): Promise<TelemetryMessage> {
    if (this.closed) return Promise.reject(new RapError('RAP_STORE', `store ${this.path}: closed`, { path: this.path }));
    const priority = priorityOf(msg.kind);
    if (priority === 'routine') {
      // One statfs per group, not per append; a new group (nothing pending) measures again.
      if (this.pending.length === 0 || this.groupFree === null) this.groupFree = { bytes: this.measureFree() };
      const free = this.groupFree.bytes;
      if (free !== null && free < this.minFreeBytes) {
        this.refused.routine++;
        this.throttledLog('refused', 'warn', 'store: disk low, refusing routine messages', { free, minFreeBytes: this.minFreeBytes });
        return Promise.reject(
          new RapError(
            'RAP_STORE_FULL',
            `store: disk low: ${free} bytes free in ${this.dir}, below store.minFreeBytes ${this.minFreeBytes}; routine message refused (alarms are still accepted)`,
            { dir: this.dir, freeBytes: free, minFreeBytes: this.minFreeBytes },
          ),
        );
      }
    }
    const at = this.now();
    const stored: TelemetryMessage = {
      id: timeOrderedUuid(at.getTime()),
      kind: msg.kind,
      port: msg.port,
      instrument: msg.instrument,
      receivedAt: at.toISOString(),
      instrumentTime: msg.instrumentTime,
      body: msg.body,
    };
    let json: string;
    try {
      json = JSON.stringify(stored);
    } catch (e) {
      return Promise.reject(new RapError('RAP_STORE', `store: message cannot be serialised: ${errorMessage(e)}`, { port: msg.port }, { cause: e }));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ msg: stored, priority, json, bytes: Buffer.byteLength(json), meta: opts.meta, resolve, reject });
      if (this.pending.length >= FLUSH_AT) this.flush();
      else this.immediate ??= setImmediate(() => this.flush());
    });
  }

  private measureFree(): number | null {
    try {
      return this.freeBytes(this.dir);
    } catch (e) {
      // Not knowing is no reason to refuse data; SQLite still reports a real ENOSPC.
      this.throttledLog('statfs', 'warn', 'store: cannot measure free space', { dir: this.dir, error: errorMessage(e) });
      return null;
    }
  }

  /** Commit everything pending in one transaction, then resolve and notify. */
  private flush(): void {
    if (this.immediate) {
      clearImmediate(this.immediate);
      this.immediate = null;
    }
    this.groupFree = null;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const added = zero();
    const addedBytes = zero();
    for (const p of batch) {
      added[p.priority]++;
      addedBytes[p.priority] += p.bytes;
    }
    let drops: Drops;
    try {
      this.db.exec('BEGIN IMMEDIATE');
      for (const p of batch) {
        this.st.insert.run(p.msg.id, p.priority, p.msg.receivedAt, p.bytes, p.json);
        for (const [k, v] of Object.entries(p.meta ?? {})) this.st.setMeta.run(k, v);
      }
      drops = this.enforceQuotas(added);
      this.db.exec('COMMIT');
    } catch (e) {
      // Nothing of this transaction is on disk: every append in it fails.
      this.rollback();
      this.noteFailure(e);
      this.refused.alarm += added.alarm;
      this.refused.routine += added.routine;
      const err = new RapError(
        'RAP_STORE',
        `store ${this.path}: could not commit ${batch.length} message(s): ${errorMessage(e)}`,
        { path: this.path, messages: batch.length, sqlite: sqliteCode(e) },
        { cause: e },
      );
      this.throttledLog('commit', 'error', 'store: commit failed, appends rejected', { messages: batch.length, error: errorMessage(e) });
      for (const p of batch) p.reject(err);
      return;
    }
    this.commits++;
    this.messagesCommitted += batch.length;
    for (const p of ['alarm', 'routine'] as const) {
      this.counts[p] += added[p];
      this.queuedBytes[p] += addedBytes[p];
    }
    this.applyDrops(drops);
    for (const p of batch) p.resolve(p.msg);
    for (const p of batch) this.emit(p.msg);
  }

  private emit(m: TelemetryMessage): void {
    for (const l of this.listeners) {
      try {
        l(m);
      } catch (e) {
        // A listener's bug must not undo or repeat a commit.
        this.throttledLog('listener', 'error', 'store: onAppend listener threw', { error: errorMessage(e) });
      }
    }
  }

  /**
   * Inside the open transaction: bring each priority back to its quota by
   * deleting its own oldest rows. `added` are this transaction's inserts
   * (not yet in this.counts).
   */
  private enforceQuotas(added: PerPriority): Drops {
    const drops: Drops = { alarm: { n: 0, bytes: 0 }, routine: { n: 0, bytes: 0 } };
    for (const p of ['alarm', 'routine'] as const) {
      const over = this.counts[p] + added[p] - this.quota[p];
      if (over <= 0) continue;
      for (const r of this.st.dropOldest.all(p, over)) {
        drops[p].n++;
        drops[p].bytes += Number(r['bytes']);
      }
    }
    if (drops.alarm.n + drops.routine.n > 0) {
      const parts = (['alarm', 'routine'] as const)
        .filter((p) => drops[p].n > 0)
        .map((p) => `${drops[p].n} ${p} message${drops[p].n === 1 ? '' : 's'} (quota ${this.quota[p]})`);
      this.recordDrops(drops, `dropped ${parts.join(' and ')} at ${this.now().toISOString()}`);
    }
    return drops;
  }

  /** Inside the open transaction: persist the drop counters and the status line. */
  private recordDrops(drops: Drops, line: string): void {
    drops.line = line;
    this.st.setMeta.run('dropped.alarm', String(this.dropped.alarm + drops.alarm.n));
    this.st.setMeta.run('dropped.routine', String(this.dropped.routine + drops.routine.n));
    this.st.setMeta.run('lastDrop', line);
  }

  /** After the commit that deleted them: counters, the status line, a (folded) log line. */
  private applyDrops(drops: Drops, quiet = false): void {
    if (!drops.line) return;
    for (const p of ['alarm', 'routine'] as const) {
      this.counts[p] -= drops[p].n;
      this.queuedBytes[p] -= drops[p].bytes;
      this.dropped[p] += drops[p].n;
    }
    this.lastDrop = drops.line;
    if (quiet) return;
    const fields = { dropped: { alarm: drops.alarm.n, routine: drops.routine.n }, total: { ...this.dropped } };
    // Losing alarms is the worse news; keep it apart so routine drops cannot fold it away.
    if (drops.alarm.n > 0) this.throttledLog('drop-alarm', 'error', `store: alarm quota reached, ${drops.line}`, fields);
    else this.throttledLog('drop-routine', 'warn', `store: routine quota reached, ${drops.line}`, fields);
  }

  /**
   * The next messages to send, without removing them: every queued alarm
   * first (oldest first), then routine. When the routine backlog does not
   * fit, half the remaining room goes to the oldest and half to the newest,
   * so live data is not stuck behind days of backlog. Never empty while
   * anything is queued, even if one message alone exceeds maxBytes.
   */
  nextBatch(opts: { maxMessages: number; maxBytes: number }): TelemetryMessage[] {
    this.assertOpen();
    const unreadable: Unreadable[] = [];
    let out: TelemetryMessage[];
    try {
      out = this.collect(opts, unreadable);
    } catch (e) {
      this.noteFailure(e);
      throw new RapError('RAP_STORE', `store ${this.path}: cannot read the queue: ${errorMessage(e)}`, { path: this.path }, { cause: e });
    }
    if (unreadable.length > 0) this.discardUnreadable(unreadable);
    return out;
  }

  private collect(opts: { maxMessages: number; maxBytes: number }, unreadable: Unreadable[]): TelemetryMessage[] {
    const out: TelemetryMessage[] = [];
    const room = { messages: Math.max(1, opts.maxMessages), bytes: opts.maxBytes };
    // Takes rows in order while they fit in `limit`; the batch's first message always fits.
    const take = (priority: Priority, rows: Iterable<Record<string, unknown>>, limit: { messages: number; bytes: number }): { n: number; lastSeq: number } => {
      const got = { n: 0, bytes: 0, lastSeq: 0 };
      for (const r of rows) {
        const bytes = Number(r['bytes']);
        if (got.n >= limit.messages || (out.length > 0 && got.bytes + bytes > limit.bytes)) break;
        got.lastSeq = Number(r['seq']);
        try {
          out.push(JSON.parse(String(r['json'])) as TelemetryMessage);
        } catch {
          unreadable.push({ seq: got.lastSeq, priority, bytes });
          continue;
        }
        got.n++;
        got.bytes += bytes;
      }
      room.messages -= got.n;
      room.bytes -= got.bytes;
      return got;
    };
    if (this.counts.alarm > 0) take('alarm', this.st.oldest.iterate('alarm', room.messages), { ...room });
    if (this.counts.routine === 0 || room.messages <= 0 || (room.bytes <= 0 && out.length > 0)) return out;
    if (this.counts.routine <= room.messages && this.queuedBytes.routine <= room.bytes) {
      take('routine', this.st.oldest.iterate('routine', room.messages), { ...room });
      return out;
    }
    const backlogRoom = { messages: Math.ceil(room.messages / 2), bytes: Math.ceil(room.bytes / 2) };
    const backlog = take('routine', this.st.oldest.iterate('routine', backlogRoom.messages), backlogRoom);
    if (room.messages <= 0 || room.bytes <= 0) return out;
    // Newest first from the database, sent oldest first; never overlapping the backlog part.
    const start = out.length;
    take('routine', this.st.newest.iterate('routine', backlog.lastSeq, room.messages), { ...room });
    out.push(...out.splice(start).reverse());
    return out;
  }

  /**
   * A row whose JSON does not parse would block the head of the queue for
   * ever (the uplink asks for it again and again): drop it, counted and
   * logged like a quota drop.
   */
  private discardUnreadable(rows: readonly Unreadable[]): void {
    const drops: Drops = { alarm: { n: 0, bytes: 0 }, routine: { n: 0, bytes: 0 } };
    for (const r of rows) {
      drops[r.priority].n++;
      drops[r.priority].bytes += r.bytes;
    }
    try {
      this.db.exec('BEGIN IMMEDIATE');
      for (const r of rows) this.st.deleteBySeq.run(r.seq);
      this.recordDrops(drops, `dropped ${rows.length} unreadable message${rows.length === 1 ? '' : 's'} (stored JSON does not parse) at ${this.now().toISOString()}`);
      this.db.exec('COMMIT');
    } catch (e) {
      this.rollback();
      this.noteFailure(e);
      this.throttledLog('unreadable', 'error', 'store: could not drop unreadable messages', { error: errorMessage(e) });
      return;
    }
    this.applyDrops(drops, true);
    this.log.error(`store: ${drops.line}`, { seqs: rows.map((r) => r.seq) });
  }

  /**
   * Remove acknowledged messages in one durable transaction. Unknown ids
   * (already acked, dropped by a quota) are ignored. Throws RAP_STORE if the
   * delete cannot be committed: the messages stay and are sent again, which
   * the center deduplicates by id.
   */
  ack(ids: readonly string[]): void {
    this.assertOpen();
    if (ids.length === 0) return;
    const gone = zero();
    const goneBytes = zero();
    try {
      this.db.exec('BEGIN IMMEDIATE');
      for (const id of ids) {
        for (const r of this.st.deleteById.all(id)) {
          const p = r['priority'] === 'alarm' ? 'alarm' : 'routine';
          gone[p]++;
          goneBytes[p] += Number(r['bytes']);
        }
      }
      this.db.exec('COMMIT');
    } catch (e) {
      this.rollback();
      this.noteFailure(e);
      throw new RapError('RAP_STORE', `store ${this.path}: could not remove ${ids.length} acknowledged message(s): ${errorMessage(e)}`, { path: this.path }, { cause: e });
    }
    for (const p of ['alarm', 'routine'] as const) {
      this.counts[p] -= gone[p];
      this.queuedBytes[p] -= goneBytes[p];
    }
  }

  /**
   * A meta value committed with an append (e.g. the audit anchor: the head of
   * the audit chain that reached the store), or null.
   */
  meta(key: string): string | null {
    this.assertOpen();
    const v = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key)?.['value'];
    return typeof v === 'string' ? v : null;
  }

  count(): { alarm: number; routine: number } {
    return { ...this.counts };
  }

  private oldestRoutineAt(): string | null {
    if (this.closed || this.counts.routine === 0) return null;
    const v = this.st.oldestRoutineAt.get()?.['received_at'];
    return typeof v === 'string' ? v : null;
  }

  /** Age of the oldest queued routine message (box clock; never negative), or null when none. */
  oldestRoutineAgeMs(): number | null {
    const at = this.oldestRoutineAt();
    return at === null ? null : Math.max(0, this.now().getTime() - Date.parse(at));
  }

  /** Called after commit for each message; returns the unsubscribe function. */
  onAppend(listener: (m: TelemetryMessage) => void): () => void {
    // A wrapper, so the same function subscribed twice is two subscriptions.
    const l = (m: TelemetryMessage): void => listener(m);
    this.listeners.add(l);
    return () => void this.listeners.delete(l);
  }

  stats(): StoreStats {
    let oldestRoutineAt: string | null = null;
    try {
      oldestRoutineAt = this.oldestRoutineAt();
    } catch (e) {
      // Status must answer even when the disk misbehaves.
      this.noteFailure(e);
    }
    return {
      queued: { ...this.counts },
      bytes: this.queuedBytes.alarm + this.queuedBytes.routine,
      oldestRoutineAt,
      dropped: { ...this.dropped },
      refused: { ...this.refused },
      lastDrop: this.lastDrop,
      commits: this.commits,
      messagesCommitted: this.messagesCommitted,
      recovered: this.recovered,
    };
  }

  /** Commit what is pending, mark the file closed cleanly, close it. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.listeners.clear();
    try {
      if (!this.sawCorruption) this.st.setMeta.run('state', 'closed');
    } catch (e) {
      // Only costs an integrity check at the next open.
      this.log.warn('store: could not record the clean close', { path: this.path, error: errorMessage(e) });
    }
    try {
      this.db.close();
    } catch (e) {
      this.log.warn('store: close failed', { path: this.path, error: errorMessage(e) });
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new RapError('RAP_STORE', `store ${this.path}: closed`, { path: this.path });
  }

  private rollback(): void {
    try {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
    } catch {
      // SQLite rolls back by itself after some errors; nothing more to undo.
    }
  }

  private noteFailure(e: unknown): void {
    if (!isCorruption(e)) return;
    if (!this.sawCorruption) this.log.error('store: database corruption detected at run time; it is checked at the next start', { path: this.path, error: errorMessage(e) });
    this.sawCorruption = true;
  }

  /** Log at most once per LOG_EVERY_MS per key, with how many were folded in. */
  private throttledLog(key: string, level: 'warn' | 'error', msg: string, fields: Fields): void {
    const t = this.now().getTime();
    const last = this.logged.get(key);
    if (last && t - last.at < LOG_EVERY_MS && t >= last.at) {
      last.suppressed++;
      return;
    }
    this.log[level](msg, last?.suppressed ? { ...fields, suppressedSinceLast: last.suppressed } : fields);
    this.logged.set(key, { at: t, suppressed: 0 });
  }
}

/** A row whose stored JSON does not parse. */
interface Unreadable {
  seq: number;
  priority: Priority;
  bytes: number;
}

interface Drops {
  alarm: { n: number; bytes: number };
  routine: { n: number; bytes: number };
  /** The lastDrop line, when anything was dropped. */
  line?: string;
}
