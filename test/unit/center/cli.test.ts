// rap-center's command line without a server or openssl: usage errors exit 2
// with the usage text, failures exit 1 with one line, and the read commands
// print what the store holds.

import t from 'tap';
import { join } from 'node:path';
import { USAGE, centerMain, parseListen } from '../../../src/center/cli.ts';
import { openCenterDb } from '../../../src/center/db.ts';
import type { Runner } from '../../../src/lib/run.ts';

const noRun: Runner = async (argv) => {
  throw new Error(`unexpected subprocess ${argv.join(' ')}`);
};

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await centerMain(args, { out: (s) => (out += s), err: (s) => (err += s) }, { run: noRun });
  return { code, out, err };
}

const usage: { name: string; args: string[]; want: string }[] = [
  { name: 'no command', args: [], want: 'no command given' },
  { name: 'unknown command', args: ['frob'], want: "unknown command 'frob'" },
  { name: 'unknown option', args: ['devices', '--db', 'x', '--frob'], want: "Unknown option '--frob'" },
  { name: 'serve without --db', args: ['serve', '--listen', '127.0.0.1:0', '--pki', 'p'], want: '--db is required' },
  { name: 'serve with a bad --listen', args: ['serve', '--db', 'x', '--listen', '8443', '--pki', 'p'], want: "--listen '8443': expected HOST:PORT (e.g. 0.0.0.0:8443 or [::]:8443)" },
  { name: 'messages without --device', args: ['messages', '--db', 'x'], want: '--device is required' },
  { name: 'messages with a bad --tail', args: ['messages', '--db', 'x', '--device', 'b', '--tail', '0'], want: "--tail '0': expected an integer from 1 to 100000" },
  { name: 'messages with a bad --port', args: ['messages', '--db', 'x', '--device', 'b', '--port', 'P 1'], want: `--port 'P 1': expected 1-32 of a-z, 0-9, "-"` },
  { name: 'messages with a bad --device', args: ['messages', '--db', 'x', '--device', '../b'], want: `--device: device id '../b' is invalid: expected 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit` },
  { name: 'pki without subcommand', args: ['pki'], want: 'pki needs a subcommand (init, issue-server, issue-device)' },
  { name: 'pki unknown subcommand', args: ['pki', 'revoke'], want: "unknown pki subcommand 'revoke'" },
  { name: 'issue-device without id', args: ['pki', 'issue-device', '--dir', 'd'], want: 'pki issue-device needs a device ID' },
  { name: 'issue-device with two ids', args: ['pki', 'issue-device', '--dir', 'd', 'a', 'b'], want: "unexpected argument 'b'" },
  { name: 'issue-device with a bad id', args: ['pki', 'issue-device', '--dir', 'd', 'a/b'], want: `device id 'a/b' is invalid: expected 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit` },
  { name: 'issue-server with a bad name', args: ['pki', 'issue-server', '--dir', 'd', '--name', 'a_b'], want: "--name 'a_b' is not a DNS name" },
  { name: 'issue-server with a bad ip', args: ['pki', 'issue-server', '--dir', 'd', '--name', 'c.example', '--ip', '1.2.3'], want: "--ip '1.2.3' is not an IP address" },
];
for (const c of usage) {
  t.test(`usage error: ${c.name} -> exit 2`, async (t) => {
    const r = await cli(c.args);
    t.same({ code: r.code, out: r.out, err: r.err }, { code: 2, out: '', err: `rap-center: ${c.want}\n${USAGE}\n` });
  });
}

t.test('failures exit 1 with one line', async (t) => {
  const dir = t.testdir();
  const r = await cli(['devices', '--db', join(dir, 'none.db')]);
  t.same(r, { code: 1, out: '', err: `rap-center: RAP_CENTER: no database at ${join(dir, 'none.db')} (rap-center serve --db creates it)\n` });
  const p = await cli(['pki', 'issue-device', '--dir', dir, 'box-1']);
  t.same(p, { code: 1, out: '', err: `rap-center: RAP_PKI: no CA in ${dir}: run rap-center pki init --dir ${dir} first\n` });
  const s = await cli(['serve', '--db', join(dir, 'c.db'), '--listen', '127.0.0.1:0', '--pki', dir]);
  t.equal(s.code, 1);
  t.equal(s.err, `rap-center: RAP_PKI: cannot read ${join(dir, 'ca.pem')}: ENOENT (run rap-center pki init --dir ${dir})\n`);
});

t.test('--version and --help', async (t) => {
  const v = await cli(['--version']);
  t.equal(v.code, 0);
  t.match(v.out, /^rap-center \S+ \(node v24\.\d+\.\d+\)\n$/);
  t.same(await cli(['--help']), { code: 0, out: `${USAGE}\n`, err: '' });
});

t.test('--listen forms', async (t) => {
  t.same(parseListen('127.0.0.1:8443'), { host: '127.0.0.1', port: 8443 });
  t.same(parseListen('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseListen('center.example:443'), { host: 'center.example', port: 443 });
  t.throws(() => parseListen('::1:443'));
  t.throws(() => parseListen('host:70000'));
});

t.test('devices and messages print the store', async (t) => {
  const path = join(t.testdir(), 'c.db');
  const db = openCenterDb(path, { create: true });
  db.storeBatch(
    {
      device: 'box-1',
      sentAt: '2025-03-01T10:00:01Z',
      messages: [
        { id: '00000000-0000-4000-8000-000000000001', kind: 'alarm', port: 'p1', instrument: null, receivedAt: '2025-03-01T10:00:00Z', instrumentTime: null, body: { code: 'E1' } },
      ],
    },
    { remoteAddress: '10.1.2.3', now: new Date('2025-03-01T10:00:02Z') },
  );
  db.close();
  const d = await cli(['devices', '--db', path]);
  t.same(d, {
    code: 0,
    err: '',
    out: 'DEVICE  LAST SEEN                 MESSAGES  ALARMS  INSTRUMENTS  ADDRESS\nbox-1   2025-03-01T10:00:02.000Z  1         1       1            10.1.2.3\n',
  });
  const dj = await cli(['devices', '--db', path, '--json']);
  t.match(JSON.parse(dj.out), [{ id: 'box-1', messages: 1, alarms: 1, instruments: [{ port: 'p1', lastAlarm: { code: 'E1' } }] }]);
  const msgs = await cli(['messages', '--db', path, '--device', 'box-1']);
  t.same(msgs.out, 'RECEIVED              PORT  KIND   ID                                    BODY\n2025-03-01T10:00:00Z  p1    alarm  00000000-0000-4000-8000-000000000001  {"code":"E1"}\n');
  const none = await cli(['messages', '--db', path, '--device', 'box-2', '--json']);
  t.same(none, { code: 0, out: '[]\n', err: '' });
});
