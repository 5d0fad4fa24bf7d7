import t, { type Test } from 'tap';
import { appendFileSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger } from '../../../src/lib/log.ts';
import { GENESIS_HASH, auditHash } from '../../../src/protocol/audit.ts';
import { ANCHOR_KEY, AuditLog, forwardAudit, verifyFile, type AuditStore } from '../../../src/rapd/audit.ts';
import type { NewMessage } from '../../../src/rapd/store.ts';

const quiet = createLogger({ write: () => {}, syslogPrefix: false });
let clock = Date.parse('2026-11-23T12:00:00Z');
const now = () => new Date(clock++);

function setup(t: Test): string {
  return join(t.testdir({}), 'audit.log');
}

async function filled(path: string, n: number): Promise<AuditLog> {
  const log = AuditLog.open({ path, log: quiet, now });
  for (let i = 0; i < n; i++) await log.append({ actor: 'rapd', action: 'test.step', outcome: 'ok', details: { i } });
  return log;
}

const lines = (path: string): string[] => readFileSync(path, 'utf8').split('\n').filter((l) => l !== '');
const rewrite = (path: string, ls: string[]): void => writeFileSync(path, ls.map((l) => `${l}\n`).join(''));

t.test('records chain: seq from 1, prevHash links, hash over the canonical record', async (t) => {
  const path = setup(t);
  const log = await filled(path, 3);
  await log.close();
  const rs = lines(path).map((l) => JSON.parse(l));
  t.same(rs.map((r) => r.seq), [1, 2, 3]);
  t.equal(rs[0].prevHash, GENESIS_HASH);
  t.equal(rs[1].prevHash, rs[0].hash);
  t.equal(rs[2].prevHash, rs[1].hash);
  const { hash, ...rest } = rs[2];
  t.equal(auditHash(rest), hash);
  t.match(verifyFile(path, null), { ok: true, records: 3, head: { seq: 3, hash } });
});

t.test('group commit: appends in one turn share one write, each resolves only when on disk', async (t) => {
  const path = setup(t);
  const log = AuditLog.open({ path, log: quiet, now });
  const all = await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ actor: 'rapd', action: 'test.burst', outcome: 'ok', details: { i } })));
  t.same(all.map((r) => r.seq), Array.from({ length: 50 }, (_, i) => i + 1));
  t.equal(lines(path).length, 50, 'all on disk when the promises resolved');
  t.equal(log.flushes, 1, 'one write + fsync for the whole turn');
  await log.close();
});

t.test('a refused event names the field and does not consume a seq', async (t) => {
  const path = setup(t);
  const log = await filled(path, 1);
  await t.rejects(log.append({ actor: 'rapd', action: 'NoDots', outcome: 'ok' }), { code: 'RAP_AUDIT', message: /action: expected a dotted name/ });
  await t.rejects(log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok', details: { x: 1n } }), { code: 'RAP_AUDIT', message: /details: not JSON-encodable/ });
  // Stored as JSON carries it: an undefined optional field does not lose the record.
  t.same((await log.append({ actor: 'rapd', action: 'a.c', outcome: 'ok', details: { a: undefined, b: 1 } })).details, { b: 1 });
  t.equal((await log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok' })).seq, 3);
  await log.close();
});

t.test('restart continues the chain', async (t) => {
  const path = setup(t);
  await (await filled(path, 2)).close();
  const visited: number[] = [];
  const again = AuditLog.open({ path, log: quiet, now }, (r) => visited.push(r.seq));
  t.same(visited, [1, 2], 'open visits what is there (replay memory is rebuilt from it)');
  t.equal((await again.append({ actor: 'rapd', action: 'rapd.restarted', outcome: 'ok' })).seq, 3);
  await again.close();
  t.match(verifyFile(path, null), { ok: true, records: 3 });
  t.equal(again.last('rapd.restarted')?.seq, 3);
});

t.test('verify detects an edited, an inserted, a removed record and a truncation', async (t) => {
  const path = setup(t);
  await (await filled(path, 5)).close();
  const orig = lines(path);
  const head = verifyFile(path, null).head!;

  const edited = [...orig];
  edited[2] = edited[2]!.replace('"i":2', '"i":7');
  rewrite(path, edited);
  t.match(verifyFile(path, head), { ok: false, problem: { kind: 'hash', seq: 3, line: 3, message: /record 3: hash does not match its content \(edited\)/ } });

  // Edited and re-hashed: the next record's link breaks instead.
  const r3 = JSON.parse(orig[2]!);
  r3.details.i = 7;
  const { hash: _h, ...body } = r3;
  r3.hash = auditHash(body);
  rewrite(path, [orig[0]!, orig[1]!, JSON.stringify(r3), orig[3]!, orig[4]!]);
  t.match(verifyFile(path, head), { ok: false, problem: { kind: 'link', seq: 4, message: /broken link/ } });

  rewrite(path, [orig[0]!, orig[1]!, orig[1]!, ...orig.slice(2)]);
  t.match(verifyFile(path, head), { ok: false, problem: { kind: 'seq', line: 3, message: /inserted or repeated/ } }, 'inserted');

  rewrite(path, [orig[0]!, orig[1]!, orig[3]!, orig[4]!]);
  t.match(verifyFile(path, head), { ok: false, problem: { kind: 'seq', seq: 4, message: /record 4: expected seq 3 \(a record was removed\)/ } }, 'removed');

  rewrite(path, orig.slice(0, 3));
  const cut = verifyFile(path, head);
  t.equal(cut.problem, null, 'a truncated file is a valid chain by itself...');
  t.match(cut, { ok: false, anchorProblem: /file ends at record 3 but record 5 was recorded outside it \(truncated: 2 record\(s\) missing\)/ }, '...the anchor catches it');

  rewrite(path, ['{"seq":1', ...orig.slice(1)]);
  t.match(verifyFile(path, head), { ok: false, problem: { kind: 'malformed', line: 1 } }, 'garbage line');

  rewrite(path, orig);
  t.match(verifyFile(path, head), { ok: true, anchorProblem: null });
});

t.test('torn tail: cut off at open, kept as evidence, chain continues, recorded', async (t) => {
  const path = setup(t);
  await (await filled(path, 3)).close();
  const good = readFileSync(path, 'utf8');
  // A power cut in the middle of writing record 4.
  const torn = '{"seq":4,"time":"2026-11-23T12:00:';
  t.equal(torn.length, 34);
  appendFileSync(path, torn);
  t.match(verifyFile(path, null), { ok: false, tornBytes: 34, problem: { message: /34 bytes after the last complete record \(torn write\)/ } });
  const log = AuditLog.open({ path, log: quiet, now });
  t.match(log.recovered, /torn tail of 34 bytes/);
  await new Promise((r) => setImmediate(r));
  await log.close();
  const evidence = readdirSync(join(path, '..')).filter((f) => f.startsWith('audit.log.torn-'));
  t.equal(evidence.length, 1, 'the torn file is kept');
  t.match(readFileSync(join(path, '..', evidence[0]!), 'utf8'), /"time":"2026-11-23T12:00:$/);
  const after = lines(path);
  t.equal(after.length, 4);
  t.ok(readFileSync(path, 'utf8').startsWith(good), 'complete records untouched');
  t.match(JSON.parse(after[3]!), { seq: 4, action: 'audit.torn-tail', outcome: 'recovered', details: { bytes: 34 } });
  t.match(verifyFile(path, null), { ok: true, records: 4 });
});

t.test('a broken chain found at open is reported, not repaired; appends go on after it', async (t) => {
  const path = setup(t);
  await (await filled(path, 3)).close();
  const ls = lines(path);
  rewrite(path, [ls[0]!, ls[2]!]);
  const log = AuditLog.open({ path, log: quiet, now });
  t.match(log.openProblem, { kind: 'seq', seq: 3 });
  t.equal((await log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok' })).seq, 4, 'continues after the last line');
  await log.close();
  t.match(verifyFile(path, null), { ok: false, problem: { seq: 3 } }, 'still reported');
});

class MemStore implements AuditStore {
  queued: { msg: NewMessage; meta?: Record<string, string> }[] = [];
  metas = new Map<string, string>();
  async append(msg: NewMessage, opts: { meta?: Record<string, string> }): Promise<unknown> {
    this.queued.push({ msg, meta: opts.meta });
    for (const [k, v] of Object.entries(opts.meta ?? {})) this.metas.set(k, v);
    return msg;
  }
  meta(key: string): string | null {
    return this.metas.get(key) ?? null;
  }
}

t.test('forwarding: every record to the store with the anchor; after a crash the missing ones are queued again', async (t) => {
  const path = setup(t);
  const store = new MemStore();
  const log = await filled(path, 2);
  const stop = await forwardAudit(log, store, quiet);
  t.same(store.queued.map((q) => (q.msg.body as { seq: number }).seq), [1, 2], 'what was in the file before');
  await log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok' });
  t.match(store.queued[2], { msg: { kind: 'audit', port: 'audit', body: { seq: 3 } }, meta: { [ANCHOR_KEY]: /"seq":3/ } });
  // rapd dies after the audit fsync, before the store commit of record 4.
  stop();
  await log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok' });
  await log.close();
  const log2 = AuditLog.open({ path, log: quiet, now });
  await forwardAudit(log2, store, quiet);
  t.same(store.queued.map((q) => (q.msg.body as { seq: number }).seq), [1, 2, 3, 4], 'record 4 queued at the next start, nothing twice');
  t.match(log2.verify(JSON.parse(store.meta(ANCHOR_KEY)!)), { ok: true });
  await log2.close();
});

t.test('forwarding: a file shorter than the anchor is recorded as truncated, and the anchor does not move back', async (t) => {
  const path = setup(t);
  const store = new MemStore();
  const log = await filled(path, 4);
  await forwardAudit(log, store, quiet);
  await log.close();
  rewrite(path, lines(path).slice(0, 2));
  const log2 = AuditLog.open({ path, log: quiet, now });
  await forwardAudit(log2, store, quiet);
  await new Promise((r) => setImmediate(r));
  t.match(log2.last('audit.truncated'), { seq: 3, outcome: 'detected', details: { fileHead: { seq: 2 }, anchor: { seq: 4 } } });
  t.match(JSON.parse(store.meta(ANCHOR_KEY)!), { seq: 4 }, 'anchor kept at 4');
  t.match(log2.verify(JSON.parse(store.meta(ANCHOR_KEY)!)), { ok: false, anchorProblem: /record 4 differs|truncated/ });
  await log2.close();
});

t.test('regression: a torn tail that ends inside a multi-byte character is cut at the exact byte', async (t) => {
  const path = setup(t);
  const log = await filled(path, 1);
  await log.append({ actor: 'rapd', action: 'a.b', outcome: 'ok', details: { who: 'Dr. Müller' } });
  await log.close();
  const good = readFileSync(path);
  // Half of the two bytes of "ü": decoding as text would count a 3-byte replacement character.
  const torn = Buffer.concat([Buffer.from('{"details":{"who":"M'), Buffer.from('ü').subarray(0, 1)]);
  appendFileSync(path, torn);
  const again = AuditLog.open({ path, log: quiet, now });
  t.match(again.recovered, new RegExp(`torn tail of ${torn.length} bytes`));
  await new Promise((r) => setImmediate(r));
  await again.close();
  t.ok(readFileSync(path).subarray(0, good.length).equals(good), 'complete records byte for byte');
  t.match(verifyFile(path, null), { ok: true, records: 3 });
});

t.test('read: the newest records from memory, older ones from the file, the same either way', async (t) => {
  const path = setup(t);
  const log = await filled(path, 1100);
  const fromFile = log.read(0, 5000);
  t.same(fromFile.map((r) => r.seq), Array.from({ length: 1100 }, (_, i) => i + 1));
  t.same(log.read(1050, 10), fromFile.slice(1050, 1060), 'inside the kept tail');
  t.same(log.read(50, 10), fromFile.slice(50, 60), 'before it');
  t.same(log.read(1100, 10), [], 'nothing after the head');
  await log.close();
  // A file whose seqs do not rise by one (damaged) is always read from disk.
  const ls = lines(path);
  rewrite(path, [...ls.slice(0, 5), ...ls.slice(6)]);
  const again = AuditLog.open({ path, log: quiet, now });
  t.same(again.read(3, 3).map((r) => r.seq), [4, 5, 7]);
  await again.close();
});
