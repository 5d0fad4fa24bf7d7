// rapd's audit log: an append-only, hash-chained JSON-lines file on the data
// partition (paths.auditLog). The record and the chain are defined in
// src/protocol/audit.ts; this is the durable file around them.
//
// Durable before done: append() resolves only after the record's line is
// written and fsync'd. Appends made in one event-loop turn share one write
// and one fsync (group commit), as the store does: fsync is what costs on
// flash. A failed write or fsync rejects every append of that group, cuts the
// file back to where the group started and rewinds the in-memory head, so the
// chain never skips a record that is not on disk.
//
// Restart: open() reads the file, checks every link and continues the chain
// from the last record. Two kinds of damage are told apart:
//   - a torn tail: bytes after the last newline. A record is written as one
//     line ending in "\n" and is reported done only after the fsync, so an
//     unterminated tail is a write a power cut interrupted and nobody was
//     told about. It is copied to `<file>.torn-<time>` (evidence), cut off,
//     and the chain goes on from the last complete record with an
//     `audit.torn-tail` record saying how many bytes were cut and their hash.
//   - anything else (an unparseable complete line, a bad hash, a gap, a
//     broken link): never repaired. rapd logs it, keeps appending after the
//     last line (linked to that line's own hash) and `verify()` keeps
//     reporting it, at the box and at the center.
// Truncation of whole records leaves a valid shorter chain; it is caught by
// comparing with an anchor kept outside the file (see verify()).

import { closeSync, copyFileSync, existsSync, fstatSync, fsyncSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';
import { fsyncDir } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { AUDIT_PORT } from '../protocol/telemetry.ts';
import type { NewMessage } from './store.ts';
import {
  checkLink,
  makeRecord,
  parseAuditRecord,
  type AuditEvent,
  type AuditRecord,
  type ChainHead,
  type ChainProblem,
  type ChainReport,
  type VerifyReport,
} from '../protocol/audit.ts';

export type { AuditEvent, AuditRecord, ChainHead, VerifyReport } from '../protocol/audit.ts';

/** What other parts need of the audit log (the contract with the session manager). */
export interface AuditSink {
  append(event: AuditEvent): Promise<AuditRecord>;
}

export interface AuditOptions {
  path: string;
  log: Logger;
  now?: () => Date;
}


interface Pending {
  record: AuditRecord;
  line: string;
  resolve: (r: AuditRecord) => void;
  reject: (e: unknown) => void;
}

/**
 * Read `data` (a whole audit file) record by record, checking each link.
 * `visit` sees every record that parsed, in file order. Bytes, not text: a
 * torn tail can end inside a multi-byte character, and its length must be
 * counted in bytes to cut it off exactly.
 */
export function scanChain(data: Buffer, visit?: (r: AuditRecord) => void): ChainReport {
  const end = data.lastIndexOf(0x0a) + 1;
  const tornBytes = data.length - end;
  const text = data.subarray(0, end).toString('utf8');
  let head: ChainHead | null = null;
  let problem: ChainProblem | null = null;
  let records = 0;
  let lineNo = 0;
  const lines = text.split('\n');
  lines.pop(); // what follows the last newline: the torn tail, counted above
  for (const line of lines) {
    lineNo++;
    let r: AuditRecord;
    try {
      if (line === '') throw new Error('empty line');
      r = parseAuditRecord(JSON.parse(line));
    } catch (e) {
      problem ??= { kind: 'malformed', seq: null, line: lineNo, message: `line ${lineNo}: not an audit record: ${errorMessage(e)}` };
      continue;
    }
    records++;
    if (!problem) {
      const p = checkLink(head, r);
      if (p) problem = { ...p, line: lineNo, message: `line ${lineNo}: ${p.message}` };
    }
    visit?.(r);
    // Continue from what the line says, so one damaged record is reported once.
    head = { seq: r.seq, hash: r.hash };
  }
  return { records, head, problem, tornBytes };
}

/** Records kept in memory for read() (see AuditLog.tail). */
const TAIL_KEEP = 1000;

export class AuditLog implements AuditSink {
  private readonly path: string;
  private readonly log: Logger;
  private readonly now: () => Date;
  private fd: number;
  private head: ChainHead | null;
  private size: number;
  private pending: Pending[] = [];
  private immediate: NodeJS.Immediate | null = null;
  private readonly listeners = new Set<(r: AuditRecord) => void>();
  private closed = false;
  /** Group commits done (writes + fsyncs), for tests and status. */
  flushes = 0;
  /** What open() found: torn tail cut, chain problems. */
  readonly recovered: string | null;
  readonly openProblem: ChainProblem | null;
  private readonly lastByAction = new Map<string, AuditRecord>();
  /**
   * The newest records as written (at most TAIL_KEEP), so `rapctl audit
   * --follow`, which asks every half second for what came after the last one
   * it saw, does not read the whole file each time. Kept only while their
   * seqs rise by one; otherwise read() goes to the file.
   */
  private tail: AuditRecord[] = [];
  private tailOk = true;

  private constructor(opts: AuditOptions, fd: number, head: ChainHead | null, size: number, recovered: string | null, problem: ChainProblem | null) {
    this.path = opts.path;
    this.log = opts.log;
    this.now = opts.now ?? (() => new Date());
    this.fd = fd;
    this.head = head;
    this.size = size;
    this.recovered = recovered;
    this.openProblem = problem;
  }

  /**
   * Open (or create) the log at opts.path and continue its chain. `visit`
   * sees every record already in the file (rapd rebuilds its replay memory
   * from the accepted commands). Throws RAP_AUDIT when the file cannot be
   * read or written: rapd does not run without its audit log.
   */
  static open(opts: AuditOptions, visit?: (r: AuditRecord) => void): AuditLog {
    const { path, log } = opts;
    const now = opts.now ?? (() => new Date());
    let fd: number;
    try {
      const isNew = !existsSync(path);
      // Append-only from here on: O_APPEND, owner-only (the log names instruments and operators).
      fd = openSync(path, 'a+', 0o600);
      if (isNew) fsyncDir(dirname(path));
    } catch (e) {
      throw new RapError('RAP_AUDIT', `audit log ${path}: cannot open: ${errorMessage(e)}`, { path }, { cause: e });
    }
    try {
      const data = readFileSync(path);
      const byAction = new Map<string, AuditRecord>();
      const seen: AuditRecord[] = [];
      const report = scanChain(data, (r) => {
        byAction.set(r.action, r);
        seen.push(r);
        if (seen.length > 2 * TAIL_KEEP) seen.splice(0, TAIL_KEEP);
        visit?.(r);
      });
      let recovered: string | null = null;
      let size = data.length;
      let torn: { bytes: number; sha256: string; savedAs: string } | null = null;
      if (report.tornBytes > 0) {
        const tail = data.subarray(size - report.tornBytes);
        const savedAs = `${path}.torn-${now().toISOString().replaceAll(':', '-')}`;
        // Keep the evidence before cutting it off.
        copyFileSync(path, savedAs);
        const ev = openSync(savedAs, 'r');
        try {
          fsyncSync(ev);
        } finally {
          closeSync(ev);
        }
        fsyncDir(dirname(path));
        size -= report.tornBytes;
        ftruncateSync(fd, size);
        fsyncSync(fd);
        torn = { bytes: report.tornBytes, sha256: createHash('sha256').update(tail).digest('hex'), savedAs };
        recovered = `torn tail of ${torn.bytes} bytes (an interrupted write) cut off; the whole file before it is kept in ${savedAs}`;
        log.warn('audit log: torn tail cut off', { path, ...torn });
      }
      if (report.problem) log.error('audit log: chain is broken; appending after it, verify keeps reporting it', { path, problem: report.problem.message });
      const audit = new AuditLog(opts, fd, report.head, size, recovered, report.problem);
      for (const [k, v] of byAction) audit.lastByAction.set(k, v);
      for (const r of seen.slice(-TAIL_KEEP)) audit.keep(r);
      if (torn) {
        void audit.append({ actor: 'rapd', action: 'audit.torn-tail', outcome: 'recovered', details: torn }).catch(() => {});
      }
      log.info('audit log open', { path, records: report.records, head: report.head });
      return audit;
    } catch (e) {
      closeSync(fd);
      if (e instanceof RapError) throw e;
      throw new RapError('RAP_AUDIT', `audit log ${path}: cannot read: ${errorMessage(e)}`, { path }, { cause: e });
    }
  }

  /** The last record on disk or queued for it (null: empty). */
  headNow(): ChainHead | null {
    return this.head ? { ...this.head } : null;
  }

  /** The newest record with this action (read at open or appended since). */
  last(action: string): AuditRecord | null {
    return this.lastByAction.get(action) ?? null;
  }

  /** Called after each record is durable; returns the unsubscribe function. */
  onAppend(listener: (r: AuditRecord) => void): () => void {
    const l = (r: AuditRecord): void => listener(r);
    this.listeners.add(l);
    return () => void this.listeners.delete(l);
  }

  /** Append a record; resolves once it is on disk (fsync'd). Rejects RAP_AUDIT otherwise. */
  append(event: AuditEvent): Promise<AuditRecord> {
    if (this.closed) return Promise.reject(new RapError('RAP_AUDIT', `audit log ${this.path}: closed`, { path: this.path }));
    let record: AuditRecord;
    try {
      record = makeRecord(this.head, event, this.now());
    } catch (e) {
      return Promise.reject(new RapError('RAP_AUDIT', `audit event refused: ${errorMessage(e)}`, { action: event.action }, { cause: e }));
    }
    this.head = { seq: record.seq, hash: record.hash };
    return new Promise((resolve, reject) => {
      this.pending.push({ record, line: `${JSON.stringify(record)}\n`, resolve, reject });
      this.immediate ??= setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = null;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const buf = Buffer.from(batch.map((p) => p.line).join(''));
    const before = this.size;
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off);
      fsyncSync(this.fd);
    } catch (e) {
      // Nothing of this group counts: cut it off and rewind the chain to before it.
      try {
        if (fstatSync(this.fd).size > before) ftruncateSync(this.fd, before);
      } catch {
        // the next open finds a torn tail at worst
      }
      const first = batch[0]!.record;
      this.head = first.seq === 1 ? null : { seq: first.seq - 1, hash: first.prevHash };
      const err = new RapError('RAP_AUDIT', `audit log ${this.path}: could not write ${batch.length} record(s): ${errorMessage(e)}`, { path: this.path }, { cause: e });
      this.log.error('audit log: write failed; the actions were not recorded', { path: this.path, error: errorMessage(e) });
      for (const p of batch) p.reject(err);
      return;
    }
    this.size = before + buf.length;
    this.flushes++;
    for (const p of batch) {
      this.lastByAction.set(p.record.action, p.record);
      this.keep(p.record);
      p.resolve(p.record);
    }
    for (const p of batch) {
      for (const l of this.listeners) {
        try {
          l(p.record);
        } catch (e) {
          this.log.error('audit log: listener threw', { error: errorMessage(e) });
        }
      }
    }
  }

  private keep(r: AuditRecord): void {
    const last = this.tail[this.tail.length - 1];
    if (last && r.seq !== last.seq + 1) this.tailOk = false;
    this.tail.push(r);
    if (this.tail.length > TAIL_KEEP) this.tail.shift();
  }

  /** Records with seq > after, at most `limit`, oldest first (the newest from memory, older ones from the file). */
  read(after: number, limit: number): AuditRecord[] {
    const first = this.tail[0];
    if (this.tailOk && first && after >= first.seq - 1) {
      return this.tail.slice(after - first.seq + 1, after - first.seq + 1 + limit);
    }
    const out: AuditRecord[] = [];
    scanChain(readFileSync(this.path), (r) => {
      if (r.seq > after && out.length < limit) out.push(r);
    });
    return out;
  }

  /**
   * Read the whole file again (an edit made while rapd runs is seen) and
   * check the chain, then compare it with `anchor`, a head recorded outside
   * the file: the file must reach the anchor's seq, with the same hash there.
   */
  verify(anchor: ChainHead | null): VerifyReport {
    return verifyFile(this.path, anchor);
  }

  /** Write what is pending and close. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.listeners.clear();
    try {
      closeSync(this.fd);
    } catch (e) {
      this.log.warn('audit log: close failed', { path: this.path, error: errorMessage(e) });
    }
  }
}

/** Check an audit file against an optional anchor (also for tools that run without rapd). */
export function verifyFile(path: string, anchor: ChainHead | null): VerifyReport {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new RapError('RAP_AUDIT', `audit log ${path}: cannot read: ${errorMessage(e)}`, { path }, { cause: e });
  }
  let atAnchor: AuditRecord | null = null;
  const report = scanChain(data, (r) => {
    if (anchor && r.seq === anchor.seq) atAnchor = r;
  });
  let anchorProblem: string | null = null;
  if (anchor) {
    const headSeq = report.head?.seq ?? 0;
    if (headSeq < anchor.seq) {
      anchorProblem = `file ends at record ${headSeq} but record ${anchor.seq} was recorded outside it (truncated: ${anchor.seq - headSeq} record(s) missing)`;
    } else if (atAnchor === null || (atAnchor as AuditRecord).hash !== anchor.hash) {
      anchorProblem = `record ${anchor.seq} differs from the one recorded outside the file (rewritten)`;
    }
  }
  const torn = report.tornBytes > 0 ? { kind: 'malformed' as const, seq: null, message: `${report.tornBytes} bytes after the last complete record (torn write)` } : null;
  const problem = report.problem ?? torn;
  return { ...report, problem, path, anchor, anchorProblem, ok: problem === null && anchorProblem === null };
}

/** The store key of the audit anchor: the newest record that reached the store (JSON {seq, hash}). */
export const ANCHOR_KEY = 'audit.anchor';

/** The part of the store the audit forwarder uses. */
export interface AuditStore {
  append(msg: NewMessage, opts: { meta?: Record<string, string> }): Promise<unknown>;
  meta(key: string): string | null;
}

export function readAnchor(store: Pick<AuditStore, 'meta'>): ChainHead | null {
  const v = store.meta(ANCHOR_KEY);
  if (v === null) return null;
  try {
    const h = JSON.parse(v) as ChainHead;
    return typeof h.seq === 'number' && typeof h.hash === 'string' ? { seq: h.seq, hash: h.hash } : null;
  } catch {
    return null;
  }
}

/**
 * Forward every audit record to the center through the store (kind `audit`,
 * which the store keeps with alarms). The store commits each record together
 * with the anchor (ANCHOR_KEY = its seq and hash), so the anchor is the head
 * of the chain as far as it left the file. At start, records after the
 * anchor (rapd stopped between the audit fsync and the store commit) are
 * queued again; the center de-duplicates by seq. A file shorter than the
 * anchor was truncated: that is recorded (`audit.truncated`) and the anchor
 * never moves back, so `verify` keeps reporting it.
 * Returns the unsubscribe function.
 */
export async function forwardAudit(audit: AuditLog, store: AuditStore, log: Logger): Promise<() => void> {
  const anchor = readAnchor(store);
  let anchorSeq = anchor?.seq ?? 0;
  const queue = (r: AuditRecord): void => {
    const meta = r.seq > anchorSeq ? { [ANCHOR_KEY]: JSON.stringify({ seq: r.seq, hash: r.hash }) } : undefined;
    if (meta) anchorSeq = r.seq;
    store
      .append({ kind: 'audit', port: AUDIT_PORT, instrument: null, instrumentTime: null, body: r as unknown as Record<string, unknown> }, meta ? { meta } : {})
      .catch((e: unknown) => log.error('audit record not queued for the center', { seq: r.seq, error: errorMessage(e) }));
  };
  const head = audit.headNow();
  const truncated = anchor !== null && (head?.seq ?? 0) < anchor.seq;
  if (!truncated) {
    // Usually nothing or a few records; one pass over the file either way.
    for (const r of audit.read(anchor?.seq ?? 0, Number.MAX_SAFE_INTEGER)) queue(r);
  }
  const unsubscribe = audit.onAppend(queue);
  if (truncated) {
    log.error('audit log is shorter than its anchor: records were removed', { head, anchor });
    await audit
      .append({ actor: 'rapd', action: 'audit.truncated', outcome: 'detected', details: { fileHead: head, anchor } })
      .catch((e: unknown) => log.error('audit: could not record the truncation', { error: errorMessage(e) }));
  }
  return unsubscribe;
}
