// The center's store: de-duplication by (device, id), the per-device and
// per-instrument rows, and the rules for opening a file.

import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { openCenterDb } from '../../../src/center/db.ts';
import type { TelemetryBatch, TelemetryMessage } from '../../../src/protocol/telemetry.ts';
import { makeRecord, type AuditRecord } from '../../../src/protocol/audit.ts';

let n = 0;
function uuid(): string {
  n++;
  return `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;
}

function m(over: Partial<TelemetryMessage> = {}): TelemetryMessage {
  return {
    id: uuid(),
    kind: 'status',
    port: 'p1',
    instrument: { serial: 'SN1', model: 'M1', swVersion: '1.0' },
    receivedAt: '2025-03-01T10:00:00.000Z',
    instrumentTime: null,
    body: {},
    ...over,
  };
}

const batch = (device: string, messages: TelemetryMessage[]): TelemetryBatch => ({ device, sentAt: '2025-03-01T10:05:00.000Z', messages });
const at = (s: string): Date => new Date(s);

t.test('a re-sent batch is counted as duplicates and stored once', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const b = batch('box-1', [m(), m({ kind: 'alarm', body: { code: 'E1' } }), m({ kind: 'heartbeat' })]);
  t.same(db.storeBatch(b, { remoteAddress: '10.0.0.1', now: at('2025-03-01T10:05:01Z') }), { stored: 3, duplicates: 0 });
  t.same(db.storeBatch(b, { remoteAddress: '10.0.0.2', now: at('2025-03-01T10:06:00Z') }), { stored: 0, duplicates: 3 });
  // Half new, half old: the new half only.
  const fresh = m({ receivedAt: '2025-03-01T10:07:00Z' });
  t.same(db.storeBatch(batch('box-1', [b.messages[0]!, fresh]), { remoteAddress: '10.0.0.2', now: at('2025-03-01T10:07:01Z') }), { stored: 1, duplicates: 1 });
  t.equal(db.messages({ device: 'box-1', tail: 100 }).length, 4);
  const [d] = db.devices();
  t.match(d, {
    id: 'box-1',
    firstSeen: '2025-03-01T10:05:01.000Z',
    lastSeen: '2025-03-01T10:07:01.000Z',
    lastSentAt: '2025-03-01T10:05:00.000Z',
    remoteAddress: '10.0.0.2',
    batches: 3,
    messages: 4,
    alarms: 1,
    duplicates: 4,
  });
  t.equal(d!.instruments.length, 1);
  t.equal(d!.instruments[0]!.messages, 4, 'duplicates do not count twice for the instrument either');
});

t.test('the same id from another device is not a duplicate (one box cannot mask another)', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const shared = m();
  t.same(db.storeBatch(batch('box-1', [shared]), { remoteAddress: 'a' }), { stored: 1, duplicates: 0 });
  t.same(db.storeBatch(batch('box-2', [shared]), { remoteAddress: 'b' }), { stored: 1, duplicates: 0 });
  t.same(db.devices().map((d) => [d.id, d.messages]), [['box-1', 1], ['box-2', 1]]);
});

t.test('the same id twice in one batch is stored once', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const x = m();
  t.same(db.storeBatch(batch('box-1', [x, x]), { remoteAddress: 'a' }), { stored: 1, duplicates: 1 });
});

t.test('instrument rows: newest identity, status and alarm win even when messages arrive out of order', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  // Alarms are sent first, so an older status can arrive after a newer one.
  db.storeBatch(
    batch('box-1', [
      m({ kind: 'alarm', receivedAt: '2025-03-01T10:03:00Z', body: { code: 'E2' }, instrument: null }),
      m({ kind: 'status', receivedAt: '2025-03-01T10:02:00Z', body: { s: 'new' }, instrument: { serial: 'SN2', model: 'M2', swVersion: '2.0' } }),
    ]),
    { remoteAddress: 'a' },
  );
  db.storeBatch(
    batch('box-1', [
      m({ kind: 'status', receivedAt: '2025-03-01T10:01:00Z', body: { s: 'old' } }),
      // Newer identity than SN2 even though older than the last message seen.
      m({ kind: 'heartbeat', receivedAt: '2025-03-01T10:02:30Z', instrument: { serial: 'SN3', model: 'M3', swVersion: '3.0' } }),
      m({ kind: 'alarm', receivedAt: '2025-03-01T10:00:00Z', body: { code: 'E1' } }),
      // A time zone other than Z orders by instant, not by text.
      m({ kind: 'heartbeat', receivedAt: '2025-03-01T11:01:30+01:00', instrument: null }),
      m({ kind: 'event', port: 'p2', instrument: null, body: { event: 'connected' } }),
    ]),
    { remoteAddress: 'a' },
  );
  const [d] = db.devices();
  t.same(d!.instruments, [
    {
      port: 'p1',
      serial: 'SN3',
      model: 'M3',
      swVersion: '3.0',
      lastSeen: '2025-03-01T10:03:00Z',
      messages: 6,
      lastStatus: { s: 'new' },
      lastStatusAt: '2025-03-01T10:02:00Z',
      lastAlarm: { code: 'E2' },
      lastAlarmAt: '2025-03-01T10:03:00Z',
    },
    {
      port: 'p2',
      serial: null,
      model: null,
      swVersion: null,
      lastSeen: '2025-03-01T10:00:00.000Z',
      messages: 1,
      lastStatus: null,
      lastStatusAt: null,
      lastAlarm: null,
      lastAlarmAt: null,
    },
  ]);
  t.equal(d!.alarms, 2);
});

t.test('messages: tail by receivedAt, oldest first, filtered by port', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const msgs = [
    m({ receivedAt: '2025-03-01T10:00:03Z', port: 'p1', body: { i: 3 } }),
    m({ receivedAt: '2025-03-01T10:00:01Z', port: 'p2', body: { i: 1 } }),
    m({ receivedAt: '2025-03-01T10:00:02Z', port: 'p1', body: { i: 2 }, instrumentTime: '12:00', instrument: null }),
  ];
  db.storeBatch(batch('box-1', msgs), { remoteAddress: 'a', now: at('2025-03-01T10:00:05Z') });
  db.storeBatch(batch('box-2', [m()]), { remoteAddress: 'b' });
  t.same(db.messages({ device: 'box-1', tail: 2 }).map((x) => x.body), [{ i: 2 }, { i: 3 }]);
  t.same(db.messages({ device: 'box-1', port: 'p1', tail: 10 }).map((x) => x.body), [{ i: 2 }, { i: 3 }]);
  t.same(db.messages({ device: 'box-1', port: 'p9', tail: 10 }), []);
  t.same(db.messages({ device: 'box-1', port: 'p1', tail: 1 }), [{ ...msgs[0], device: 'box-1', storedAt: '2025-03-01T10:00:05.000Z' }]);
  t.same(db.messages({ device: 'box-1', tail: 3 })[1], { ...msgs[2], device: 'box-1', storedAt: '2025-03-01T10:00:05.000Z' });
});

t.test('a failing batch stores nothing (one transaction)', async (t) => {
  const path = join(t.testdir(), 'c.db');
  const db = openCenterDb(path, { create: true });
  t.teardown(() => db.close());
  const good = m();
  // A circular body cannot be serialised: the second message fails mid-batch.
  const circular: Record<string, unknown> = {};
  circular['self'] = circular;
  t.throws(() => db.storeBatch(batch('box-1', [good, m({ body: circular })]), { remoteAddress: 'a' }), { code: 'RAP_CENTER' });
  t.same(db.devices(), []);
  t.same(db.storeBatch(batch('box-1', [good]), { remoteAddress: 'a' }), { stored: 1, duplicates: 0 }, 'the first message was rolled back');
});

t.test('the file is WAL with synchronous=FULL and survives reopening', async (t) => {
  const path = join(t.testdir(), 'c.db');
  const db = openCenterDb(path, { create: true });
  db.storeBatch(batch('box-1', [m()]), { remoteAddress: 'a' });
  db.close();
  const raw = new DatabaseSync(path);
  t.same({ ...(raw.prepare('PRAGMA journal_mode').get() as object) }, { journal_mode: 'wal' });
  raw.close();
  const again = openCenterDb(path, { create: false });
  t.equal(again.devices()[0]!.messages, 1);
  again.close();
});

t.test('opening: missing file, foreign file, newer schema', async (t) => {
  const dir = t.testdir();
  t.throws(() => openCenterDb(join(dir, 'nope.db'), { create: false }), { code: 'RAP_CENTER', message: `no database at ${join(dir, 'nope.db')} (rap-center serve --db creates it)` });
  writeFileSync(join(dir, 'text.db'), 'hello, not sqlite at all, but long enough to look like a header............................');
  t.throws(() => openCenterDb(join(dir, 'text.db'), { create: false }), { code: 'RAP_CENTER', message: /^cannot open database .*text\.db: / });
  const empty = new DatabaseSync(join(dir, 'empty.db'));
  empty.exec('CREATE TABLE x (a)');
  empty.close();
  t.throws(() => openCenterDb(join(dir, 'empty.db'), { create: false }), { code: 'RAP_CENTER', message: /empty\.db is not a rap-center database$/ });
  const future = new DatabaseSync(join(dir, 'future.db'));
  future.exec('PRAGMA user_version = 99');
  future.close();
  t.throws(() => openCenterDb(join(dir, 'future.db'), { create: true }), { code: 'RAP_CENTER', message: /has schema 99; this rap-center knows 2$/ });
});

// ---------------------------------------------------------------- audit chains

function chain(n: number, actionOf = (i: number) => `test.step${i}`): AuditRecord[] {
  const out: AuditRecord[] = [];
  for (let i = 0; i < n; i++) {
    const last = out[out.length - 1];
    out.push(makeRecord(last ? { seq: last.seq, hash: last.hash } : null, { actor: 'rapd', action: actionOf(i), outcome: 'ok' }, new Date(Date.UTC(2025, 2, 1, 10, 0, i))));
  }
  return out;
}
const auditMsg = (r: AuditRecord): TelemetryMessage => m({ kind: 'audit', port: 'audit', instrument: null, body: r as unknown as Record<string, unknown> });

t.test('audit records: stored once per seq, the chain verifies, not counted as instrument messages', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const rs = chain(4);
  t.same(db.storeBatch(batch('box-1', rs.slice(0, 3).map(auditMsg)), { remoteAddress: 'x' }), { stored: 3, duplicates: 0 });
  // Re-queued after a restart (new message ids, same records): no new rows.
  t.same(db.storeBatch(batch('box-1', rs.map(auditMsg)), { remoteAddress: 'x' }), { stored: 1, duplicates: 3 });
  t.same(db.auditVerify('box-1'), { device: 'box-1', records: 4, head: { seq: 4, hash: rs[3]!.hash }, problems: [], ok: true });
  t.equal(db.devices()[0]?.messages, 0, 'audit records are not instrument messages');
  t.same(db.auditRecords('box-1', 2, 10).map((r) => r.seq), [3, 4]);
  t.same(db.auditVerify('box-2'), { device: 'box-2', records: 0, head: null, problems: [], ok: true });
});

t.test('audit records: a gap, an edited record and a fork are reported', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  const rs = chain(6);
  db.storeBatch(batch('box-1', [rs[0]!, rs[1]!, rs[4]!, rs[5]!].map(auditMsg)), { remoteAddress: 'x' });
  t.match(db.auditVerify('box-1'), { ok: false, problems: ['gap: records 3-4 not received'] });
  // The missing ones arrive late (they were queued behind others): the gap closes.
  db.storeBatch(batch('box-1', [rs[2]!, rs[3]!].map(auditMsg)), { remoteAddress: 'x' });
  t.match(db.auditVerify('box-1'), { ok: true, records: 6 });

  // Another box sends an edited record: its hash no longer matches its content.
  const edited = { ...rs[1]!, outcome: 'denied' };
  const heard: string[] = [];
  db.storeBatch(batch('box-2', [rs[0]!, edited, rs[2]!].map(auditMsg)), { remoteAddress: 'x', onAuditProblem: (p) => heard.push(p) });
  t.match(db.auditVerify('box-2'), { ok: false, problems: [/record 2: hash does not match its content/] });
  t.match(heard, [/record 2: hash does not match/], 'reported as it arrived');

  // box-1's log was truncated to 2 records and rapd went on from there: seq 3 comes again, differently.
  const forked = chain(3, (i) => (i < 2 ? `test.step${i}` : 'audit.truncated'));
  db.storeBatch(batch('box-1', [forked[2]!].map(auditMsg)), { remoteAddress: 'x', onAuditProblem: (p) => heard.push(p) });
  t.match(heard.pop(), /^fork: record 3/);
  t.match(db.auditVerify('box-1'), { ok: false, problems: [/^fork: record 3 was received again with another hash/] });
});

t.test('commands and their results are recorded', async (t) => {
  const db = openCenterDb(join(t.testdir(), 'c.db'), { create: true });
  t.teardown(() => db.close());
  db.recordCommand('box-1', { id: 'c1', type: 'ping', keyId: 'k1', sig: 'x' }, at('2025-03-01T10:00:00Z'));
  t.match(db.commands('box-1', 10), [{ id: 'c1', type: 'ping', keyId: 'k1', status: null }]);
  db.recordResult('box-1', { t: 'result', id: 'c1', status: 'ok', result: { pong: 1 } }, at('2025-03-01T10:00:01Z'));
  db.recordResult('box-1', { t: 'result', id: 'forged-1', status: 'rejected', error: { code: 'RAP_CMD_BAD_SIGNATURE', message: 'no' } }, at('2025-03-01T10:00:02Z'));
  const rows = db.commands('box-1', 10);
  t.match(rows.find((r) => r.id === 'c1'), { status: 'ok', result: { pong: 1 }, completedAt: '2025-03-01T10:00:01.000Z' });
  t.match(rows.find((r) => r.id === 'forged-1'), { status: 'rejected', errorCode: 'RAP_CMD_BAD_SIGNATURE' });
});
