import t from 'tap';
import { GENESIS_HASH, auditHash, checkLink, makeRecord, parseAuditRecord } from '../../../src/protocol/audit.ts';

const at = new Date('2026-11-23T12:00:00.000Z');

t.test('the hash is over the domain line and the canonical record (pinned vector)', async (t) => {
  const r = makeRecord(null, { actor: 'rapd', action: 'config.changed', outcome: 'ok', details: { b: 1, a: [true] } }, at);
  t.same({ ...r, hash: undefined }, { seq: 1, time: '2026-11-23T12:00:00.000Z', actor: 'rapd', action: 'config.changed', instrument: null, outcome: 'ok', details: { b: 1, a: [true] }, prevHash: GENESIS_HASH, hash: undefined });
  // sha256("rapbox-audit-v1\n" + '{"action":"config.changed","actor":"rapd","details":{"a":[true],"b":1},"instrument":null,"outcome":"ok","prevHash":"000...","seq":1,"time":"2026-11-23T12:00:00.000Z"}')
  const { createHash } = await import('node:crypto');
  const text = `rapbox-audit-v1\n{"action":"config.changed","actor":"rapd","details":{"a":[true],"b":1},"instrument":null,"outcome":"ok","prevHash":"${GENESIS_HASH}","seq":1,"time":"2026-11-23T12:00:00.000Z"}`;
  t.equal(r.hash, createHash('sha256').update(text).digest('hex'));
  const next = makeRecord(r, { actor: 'instrument:p1', action: 'session.denied', instrument: 'p1', outcome: 'denied' }, at);
  t.equal(next.prevHash, r.hash);
  t.equal(checkLink(r, next), null);
  t.match(checkLink(null, next), { kind: 'seq' });
  t.match(checkLink(r, { ...next, outcome: 'approved' }), { kind: 'hash' });
  t.equal(auditHash(next), next.hash);
});

t.test('parseAuditRecord names the bad field', async (t) => {
  const good = makeRecord(null, { actor: 'rapd', action: 'a.b', outcome: 'ok' }, at);
  t.same(parseAuditRecord(JSON.parse(JSON.stringify(good))), good);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ seq: 0 }, /^seq: expected an integer >= 1$/],
    [{ time: 'noon' }, /^time: /],
    [{ actor: '' }, /^actor: /],
    [{ action: 'flat' }, /^action: expected a dotted name/],
    [{ instrument: 7 }, /^instrument: /],
    [{ outcome: null }, /^outcome: /],
    [{ details: [] }, /^details: expected an object$/],
    [{ prevHash: 'abc' }, /^prevHash: expected 64 lower-case hex digits$/],
    [{ hash: 'F'.repeat(64) }, /^hash: /],
    [{ extra: 1 }, /^extra: unexpected field$/],
  ];
  for (const [change, want] of cases) t.throws(() => parseAuditRecord({ ...good, ...change }), { message: want }, JSON.stringify(change));
  t.throws(() => parseAuditRecord('x'), { message: 'record: expected a JSON object' });
});
