import t from 'tap';
import { createLogger, redact } from '../../../src/lib/log.ts';

const capture = () => {
  const lines: string[] = [];
  return { lines, write: (l: string) => void lines.push(l) };
};

t.test('one JSON object per line, with level and bound fields', async (t) => {
  const c = capture();
  const log = createLogger({ write: c.write, syslogPrefix: false, now: () => new Date(0) }).child({ port: 2 });
  log.info('hello', { n: 1 });
  t.equal(c.lines.length, 1);
  t.ok(c.lines[0]!.endsWith('\n'));
  t.same(JSON.parse(c.lines[0]!), { ts: '1970-01-01T00:00:00.000Z', level: 'info', msg: 'hello', port: 2, n: 1 });
});

t.test('levels below the threshold are dropped; setLevel changes it', async (t) => {
  const c = capture();
  const log = createLogger({ write: c.write, syslogPrefix: false, level: 'warn' });
  log.info('no');
  log.warn('yes');
  log.setLevel('debug');
  log.debug('now yes');
  t.same(c.lines.map((l) => JSON.parse(l).msg), ['yes', 'now yes']);
});

t.test('journald priority prefix', async (t) => {
  const c = capture();
  const log = createLogger({ write: c.write, syslogPrefix: true });
  log.error('bad');
  log.info('fine');
  t.match(c.lines[0]!, /^<3>\{/);
  t.match(c.lines[1]!, /^<6>\{/);
});

t.test('secrets are redacted at any depth, even when passed by mistake', async (t) => {
  const c = capture();
  const log = createLogger({ write: c.write, syslogPrefix: false });
  log.info('enrol', { token: 'abc123', nested: { password: 'p', privateKey: 'k', keep: 'v' }, list: [{ secret: 's' }] });
  t.notMatch(c.lines[0]!, /abc123|"p"|"k"|"s"/);
  const rec = JSON.parse(c.lines[0]!);
  t.equal(rec.token, '<redacted>');
  t.same(rec.nested, { password: '<redacted>', privateKey: '<redacted>', keep: 'v' });
  t.same(rec.list, [{ secret: '<redacted>' }]);
});

t.test('errors are logged as name, message, code', async (t) => {
  const e = Object.assign(new Error('boom'), { code: 'X' });
  t.same(redact({ error: e }), { error: { name: 'Error', message: 'boom', code: 'X' } });
});
