import t from 'tap';
import fc from 'fast-check';
import { deepStrictEqual } from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  ALARM_SEVERITIES,
  BOX_FRAME_TYPES,
  CONSENT_ANSWERS,
  INSTRUMENT_FRAME_TYPES,
  LineSplitter,
  MAX_DATA_DEPTH,
  MAX_FRAME_BYTES,
  PROTOCOL_ERROR_CODES,
  ProtocolError,
  encodeFrame,
  isProtocolTime,
  parseBoxFrame,
  parseInstrumentFrame,
  type BoxFrame,
  type InstrumentFrame,
} from '../../../src/protocol/instrument.ts';

const UUID = '3f2a1c4e-9b7d-4e21-8a6f-0c5d2e1b7a90';
const hello = { type: 'hello', ref: 'h1', protocol: 1, serial: 'S1', model: 'M', swVersion: 'V' };
const status = { type: 'status', ref: 's1', data: {} };
const alarm = { type: 'alarm', ref: 'a1', code: 'E1', severity: 'major', text: 't' };
const j = (o: unknown): string => JSON.stringify(o);

t.test('parseInstrumentFrame: valid frames', async (t) => {
  const cases: { name: string; line: string; want: InstrumentFrame }[] = [
    {
      name: 'hello',
      line: '{"type":"hello","ref":"h1","protocol":1,"serial":"DXH-900-01234","model":"DxH 900","swVersion":"3.2.1 (build 77)"}',
      want: { type: 'hello', ref: 'h1', protocol: 1, serial: 'DXH-900-01234', model: 'DxH 900', swVersion: '3.2.1 (build 77)' },
    },
    {
      name: 'hello with non-ASCII model and unknown fields (ignored)',
      line: '{"type":"hello","ref":"h 1","protocol":1.0,"serial":"S","model":"Analysegerät µ","swVersion":"1","vendor":"x","extra":{"a":1}}',
      want: { type: 'hello', ref: 'h 1', protocol: 1, serial: 'S', model: 'Analysegerät µ', swVersion: '1' },
    },
    {
      name: 'status with time',
      line: '{"type":"status","ref":"s1","time":"2026-11-23T14:05:09.250Z","data":{"state":"running","tempC":37.1,"modules":[{"id":1}]}}',
      want: { type: 'status', ref: 's1', time: '2026-11-23T14:05:09.250Z', data: { state: 'running', tempC: 37.1, modules: [{ id: 1 }] } },
    },
    {
      name: 'status without time, empty data',
      line: '{"type":"status","ref":"s2","data":{}}',
      want: { type: 'status', ref: 's2', time: null, data: {} },
    },
    {
      name: 'status with null time and a local time offset kept as sent',
      line: '{"type":"status","ref":"s3","time":null,"data":{"t":"2024-02-29T23:59:59+05:30"}}',
      want: { type: 'status', ref: 's3', time: null, data: { t: '2024-02-29T23:59:59+05:30' } },
    },
    {
      name: 'status data nested exactly to the limit',
      // data itself is level 1.
      line: `{"type":"status","ref":"s4","data":${'{"a":'.repeat(MAX_DATA_DEPTH)}1${'}'.repeat(MAX_DATA_DEPTH)}}`,
      want: { type: 'status', ref: 's4', time: null, data: JSON.parse(`${'{"a":'.repeat(MAX_DATA_DEPTH)}1${'}'.repeat(MAX_DATA_DEPTH)}`) },
    },
    {
      name: 'alarm, full',
      line: '{"type":"alarm","ref":"a1","time":"2026-11-23T14:05:09+01:00","code":"E1234","severity":"critical","text":"Sample probe crash","data":{"module":"probe"}}',
      want: { type: 'alarm', ref: 'a1', time: '2026-11-23T14:05:09+01:00', code: 'E1234', severity: 'critical', text: 'Sample probe crash', data: { module: 'probe' } },
    },
    {
      name: 'alarm text of 4096 characters counted as code points, not UTF-16 units',
      line: j({ ...alarm, text: '😀'.repeat(4096) }),
      want: { type: 'alarm', ref: 'a1', time: null, code: 'E1', severity: 'major', text: '😀'.repeat(4096), data: {} },
    },
    {
      name: 'alarm without time and data, empty text',
      line: '{"type":"alarm","ref":"a2","code":"W-7","severity":"warning","text":""}',
      want: { type: 'alarm', ref: 'a2', time: null, code: 'W-7', severity: 'warning', text: '', data: {} },
    },
    { name: 'heartbeat', line: '{"type":"heartbeat","ref":"b1"}', want: { type: 'heartbeat', ref: 'b1' } },
    { name: 'bye, fields in any order, whitespace', line: ' { "ref" : "x" , "type" : "bye" } ', want: { type: 'bye', ref: 'x' } },
  ];
  for (const c of cases) t.strictSame(parseInstrumentFrame(c.line), c.want, c.name);
});

t.test('parseInstrumentFrame: each invalid case, with code, message and recovered ref', async (t) => {
  const cases: { name: string; line: string; code: string; message: string | RegExp; ref: string | null }[] = [
    { name: 'not JSON', line: 'hello box', code: 'BAD_FRAME', message: /^frame is not valid JSON: /, ref: null },
    { name: 'empty line', line: '', code: 'BAD_FRAME', message: /^frame is not valid JSON: /, ref: null },
    { name: 'truncated', line: '{"type":"status","ref":"s1"', code: 'BAD_FRAME', message: /^frame is not valid JSON: /, ref: null },
    { name: 'array', line: '[1]', code: 'BAD_FRAME', message: 'frame: expected a JSON object', ref: null },
    { name: 'null', line: 'null', code: 'BAD_FRAME', message: 'frame: expected a JSON object', ref: null },
    { name: 'string', line: '"status"', code: 'BAD_FRAME', message: 'frame: expected a JSON object', ref: null },
    { name: 'no type', line: '{"ref":"r1"}', code: 'BAD_FRAME', message: 'type: missing', ref: 'r1' },
    { name: 'type not a string', line: '{"type":7,"ref":"r1"}', code: 'BAD_FRAME', message: 'type: expected a string', ref: 'r1' },
    {
      name: 'unknown type',
      line: '{"type":"reading","ref":"r1"}',
      code: 'UNKNOWN_TYPE',
      message: 'type: unknown frame type "reading" (known: hello, status, alarm, heartbeat, bye, consent, session-end, consent-clear)',
      ref: 'r1',
    },
    {
      name: 'a box frame type sent by an instrument',
      line: '{"type":"ack","ref":"r1","id":null}',
      code: 'UNKNOWN_TYPE',
      message: 'type: unknown frame type "ack" (known: hello, status, alarm, heartbeat, bye, consent, session-end, consent-clear)',
      ref: 'r1',
    },
    { name: 'unknown type, bad ref', line: '{"type":"x","ref":""}', code: 'UNKNOWN_TYPE', message: /^type: unknown frame type "x"/, ref: null },
    { name: 'no ref', line: '{"type":"heartbeat"}', code: 'BAD_FRAME', message: 'heartbeat.ref: missing', ref: null },
    { name: 'empty ref', line: '{"type":"heartbeat","ref":""}', code: 'BAD_FRAME', message: 'heartbeat.ref: expected 1-64 printable ASCII characters', ref: null },
    { name: 'ref too long', line: j({ type: 'bye', ref: 'r'.repeat(65) }), code: 'BAD_FRAME', message: 'bye.ref: expected 1-64 printable ASCII characters', ref: null },
    { name: 'ref with a tab', line: j({ type: 'bye', ref: 'a\tb' }), code: 'BAD_FRAME', message: 'bye.ref: expected 1-64 printable ASCII characters', ref: null },
    { name: 'ref not ASCII', line: j({ type: 'bye', ref: 'réf' }), code: 'BAD_FRAME', message: 'bye.ref: expected 1-64 printable ASCII characters', ref: null },
    { name: 'ref a number', line: '{"type":"bye","ref":1}', code: 'BAD_FRAME', message: 'bye.ref: expected 1-64 printable ASCII characters', ref: null },
    { name: 'hello without protocol', line: j({ ...hello, protocol: undefined }), code: 'BAD_FRAME', message: 'hello.protocol: missing', ref: 'h1' },
    { name: 'hello protocol "1"', line: j({ ...hello, protocol: '1' }), code: 'BAD_FRAME', message: 'hello.protocol: expected the number 1', ref: 'h1' },
    { name: 'hello protocol 2', line: j({ ...hello, protocol: 2 }), code: 'BAD_FRAME', message: 'hello.protocol: unsupported version 2 (this box speaks 1)', ref: 'h1' },
    { name: 'hello without serial', line: j({ ...hello, serial: undefined }), code: 'BAD_FRAME', message: 'hello.serial: missing', ref: 'h1' },
    { name: 'hello serial null', line: j({ ...hello, serial: null }), code: 'BAD_FRAME', message: 'hello.serial: expected 1-64 printable ASCII characters', ref: 'h1' },
    { name: 'hello serial not ASCII', line: j({ ...hello, serial: 'Nº1' }), code: 'BAD_FRAME', message: 'hello.serial: expected 1-64 printable ASCII characters', ref: 'h1' },
    { name: 'hello empty model', line: j({ ...hello, model: '' }), code: 'BAD_FRAME', message: 'hello.model: expected 1-64 characters, no control characters', ref: 'h1' },
    { name: 'hello model with a newline', line: j({ ...hello, model: 'a\nb' }), code: 'BAD_FRAME', message: 'hello.model: expected 1-64 characters, no control characters', ref: 'h1' },
    { name: 'hello swVersion too long', line: j({ ...hello, swVersion: 'é'.repeat(65) }), code: 'BAD_FRAME', message: 'hello.swVersion: expected 1-64 characters, no control characters', ref: 'h1' },
    { name: 'hello swVersion a number', line: j({ ...hello, swVersion: 3 }), code: 'BAD_FRAME', message: 'hello.swVersion: expected 1-64 characters, no control characters', ref: 'h1' },
    { name: 'status without data', line: '{"type":"status","ref":"s1"}', code: 'BAD_FRAME', message: 'status.data: missing', ref: 's1' },
    { name: 'status data array', line: j({ ...status, data: [1] }), code: 'BAD_FRAME', message: 'status.data: expected a JSON object', ref: 's1' },
    { name: 'status data null', line: j({ ...status, data: null }), code: 'BAD_FRAME', message: 'status.data: expected a JSON object', ref: 's1' },
    { name: 'status data string', line: j({ ...status, data: '{}' }), code: 'BAD_FRAME', message: 'status.data: expected a JSON object', ref: 's1' },
    {
      name: 'status data nested one level too deep',
      line: `{"type":"status","ref":"s1","data":${'{"a":'.repeat(MAX_DATA_DEPTH + 1)}1${'}'.repeat(MAX_DATA_DEPTH + 1)}}`,
      code: 'BAD_FRAME',
      message: `status.data: nested deeper than ${MAX_DATA_DEPTH} levels`,
      ref: 's1',
    },
    {
      // Regression: JSON.parse takes 30000 nested arrays, JSON.stringify (the store) overflows the stack on them.
      name: 'status data as deep as a line allows',
      line: `{"type":"status","ref":"s1","data":{"a":${'['.repeat(30000)}${']'.repeat(30000)}}}`,
      code: 'BAD_FRAME',
      message: `status.data: nested deeper than ${MAX_DATA_DEPTH} levels`,
      ref: 's1',
    },
    { name: 'status number out of range', line: '{"type":"status","ref":"s1","data":{"x":{"y":[0,1e999]}}}', code: 'BAD_FRAME', message: 'status.data.x.y[1]: number out of range', ref: 's1' },
    { name: 'status time a number', line: j({ ...status, time: 1700000000 }), code: 'BAD_FRAME', message: 'status.time: expected an ISO 8601 date-time such as 2026-11-23T14:05:09.250Z', ref: 's1' },
    { name: 'status time date only', line: j({ ...status, time: '2026-11-23' }), code: 'BAD_FRAME', message: /^status\.time: expected an ISO 8601 date-time/, ref: 's1' },
    { name: 'status time 31 November', line: j({ ...status, time: '2026-11-31T00:00:00Z' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'status time 29 February 2026', line: j({ ...status, time: '2026-02-29T00:00:00Z' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'status time hour 24', line: j({ ...status, time: '2026-11-23T24:00:00Z' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'status time space separator', line: j({ ...status, time: '2026-11-23 14:05:09Z' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'status time bad offset', line: j({ ...status, time: '2026-11-23T14:05:09+24:00' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'status time basic format', line: j({ ...status, time: '20261123T140509Z' }), code: 'BAD_FRAME', message: /^status\.time: /, ref: 's1' },
    { name: 'alarm without code', line: j({ ...alarm, code: undefined }), code: 'BAD_FRAME', message: 'alarm.code: missing', ref: 'a1' },
    { name: 'alarm code a number', line: j({ ...alarm, code: 1234 }), code: 'BAD_FRAME', message: 'alarm.code: expected 1-64 printable ASCII characters', ref: 'a1' },
    { name: 'alarm without severity', line: j({ ...alarm, severity: undefined }), code: 'BAD_FRAME', message: 'alarm.severity: missing', ref: 'a1' },
    { name: 'alarm severity unknown', line: j({ ...alarm, severity: 'fatal' }), code: 'BAD_FRAME', message: 'alarm.severity: expected one of critical, major, minor, warning', ref: 'a1' },
    { name: 'alarm severity upper case', line: j({ ...alarm, severity: 'MAJOR' }), code: 'BAD_FRAME', message: 'alarm.severity: expected one of critical, major, minor, warning', ref: 'a1' },
    { name: 'alarm without text', line: j({ ...alarm, text: undefined }), code: 'BAD_FRAME', message: 'alarm.text: missing', ref: 'a1' },
    { name: 'alarm text too long', line: j({ ...alarm, text: 'x'.repeat(4097) }), code: 'BAD_FRAME', message: 'alarm.text: expected a string of at most 4096 characters', ref: 'a1' },
    { name: 'alarm text a number', line: j({ ...alarm, text: 7 }), code: 'BAD_FRAME', message: 'alarm.text: expected a string of at most 4096 characters', ref: 'a1' },
    { name: 'alarm data array', line: j({ ...alarm, data: [] }), code: 'BAD_FRAME', message: 'alarm.data: expected a JSON object', ref: 'a1' },
    { name: 'alarm time bad', line: j({ ...alarm, time: 'yesterday' }), code: 'BAD_FRAME', message: /^alarm\.time: /, ref: 'a1' },
  ];
  for (const c of cases) {
    t.throws(() => parseInstrumentFrame(c.line), { name: 'ProtocolError', code: c.code, message: c.message, ref: c.ref }, c.name);
  }
});

t.test('isProtocolTime', async (t) => {
  for (const ok of ['2026-11-23T14:05:09Z', '2026-11-23T14:05:09.1Z', '2026-11-23T14:05:09.123456789-08:00', '2024-02-29T00:00:00', '0001-01-01T00:00:00+00:00', '2000-02-29T23:59:59Z']) {
    t.ok(isProtocolTime(ok), JSON.stringify(ok));
  }
  for (const bad of ['', '2026-11-23', '2026-11-23T14:05Z', '2026-13-01T00:00:00Z', '2026-00-01T00:00:00Z', '2100-02-29T00:00:00Z', '2026-04-31T00:00:00Z', '2026-11-23T14:60:00Z', '2026-11-23T14:05:60Z', '2026-11-23T14:05:09.Z', '2026-11-23T14:05:09.1234567890Z', '2026-11-23T14:05:09z', '2026-11-23T14:05:09+0100', ' 2026-11-23T14:05:09Z']) {
    t.notOk(isProtocolTime(bad), JSON.stringify(bad));
  }
});

t.test('parseBoxFrame: valid frames', async (t) => {
  const cases: { line: string; want: BoxFrame }[] = [
    { line: `{"type":"ack","ref":"s1","id":"${UUID}"}`, want: { type: 'ack', ref: 's1', id: UUID } },
    { line: '{"type":"ack","ref":"h1","id":null}', want: { type: 'ack', ref: 'h1', id: null } },
    { line: '{"type":"error","ref":"s1","code":"STORE_FULL","message":"disk low","retryAfter":30}', want: { type: 'error', ref: 's1', code: 'STORE_FULL', message: 'disk low' } },
    { line: '{"type":"error","ref":null,"code":"TOO_LARGE","message":"line longer than 65536 bytes"}', want: { type: 'error', ref: null, code: 'TOO_LARGE', message: 'line longer than 65536 bytes' } },
    { line: '{"type":"poll","ref":"p-17"}', want: { type: 'poll', ref: 'p-17' } },
  ];
  for (const c of cases) t.strictSame(parseBoxFrame(c.line), c.want, c.line);
});

t.test('remote-session frames: valid and invalid, each problem named', async (t) => {
  const req = { type: 'consent-request', ref: 'c-1', session: UUID, who: 'center:j.doe', why: 'probe error E1042', services: [5900], maxDurationS: 3600, answerBy: '2026-11-23T14:07:00.000Z' };
  t.strictSame(parseBoxFrame(j(req)), req, 'consent-request');
  t.strictSame(parseBoxFrame(j({ type: 'session-ended', ref: 'e-1', session: UUID, reason: 'local-revoke' })), { type: 'session-ended', ref: 'e-1', session: UUID, reason: 'local-revoke' });
  t.strictSame(parseInstrumentFrame(j({ type: 'consent', ref: 'k1', session: UUID, answer: 'never' })), { type: 'consent', ref: 'k1', session: UUID, answer: 'never' });
  t.strictSame(parseInstrumentFrame(j({ type: 'session-end', ref: 'k2', session: UUID })), { type: 'session-end', ref: 'k2', session: UUID });
  t.strictSame(parseInstrumentFrame(j({ type: 'consent-clear', ref: 'k3' })), { type: 'consent-clear', ref: 'k3' });
  const bad: { line: string; message: string; box?: boolean }[] = [
    { line: j({ type: 'consent', ref: 'k1', session: UUID, answer: 'maybe' }), message: 'consent.answer: expected one of yes, no, never' },
    { line: j({ type: 'consent', ref: 'k1', answer: 'yes' }), message: 'consent.session: missing' },
    { line: j({ type: 'consent', ref: 'k1', session: 'x', answer: 'yes' }), message: 'consent.session: expected a session id (UUID)' },
    { line: j({ type: 'session-end', ref: 'k2' }), message: 'session-end.session: missing' },
    { line: j({ ...req, services: [] }), message: 'consent-request.services: expected 1-8 TCP ports (1-65535)', box: true },
    { line: j({ ...req, services: [0] }), message: 'consent-request.services: expected 1-8 TCP ports (1-65535)', box: true },
    { line: j({ ...req, who: '' }), message: 'consent-request.who: expected 1-128 characters, no control characters', box: true },
    { line: j({ ...req, why: 'a\nb' }), message: 'consent-request.why: expected 0-1024 characters, no control characters', box: true },
    { line: j({ ...req, maxDurationS: 1.5 }), message: 'consent-request.maxDurationS: expected a whole number of seconds >= 1', box: true },
    { line: j({ ...req, answerBy: 'soon' }), message: 'consent-request.answerBy: expected an ISO 8601 date-time', box: true },
  ];
  for (const c of bad) {
    t.throws(() => (c.box ? parseBoxFrame : parseInstrumentFrame)(c.line), { name: 'ProtocolError', code: 'BAD_FRAME', message: c.message }, c.line);
  }
});

t.test('parseBoxFrame: invalid frames', async (t) => {
  const cases: { line: string; code: string; message: string | RegExp }[] = [
    { line: '{"type":"status","ref":"s1","data":{}}', code: 'UNKNOWN_TYPE', message: 'type: unknown frame type "status" (known: ack, error, poll, consent-request, session-ended)' },
    { line: '{"type":"ack","ref":"s1"}', code: 'BAD_FRAME', message: 'ack.id: missing' },
    { line: '{"type":"ack","ref":"s1","id":"42"}', code: 'BAD_FRAME', message: 'ack.id: expected a UUID or null' },
    { line: `{"type":"ack","id":"${UUID}"}`, code: 'BAD_FRAME', message: 'ack.ref: missing' },
    { line: '{"type":"error","code":"BUSY","message":"m"}', code: 'BAD_FRAME', message: 'error.ref: missing' },
    { line: '{"type":"error","ref":"","code":"BUSY","message":"m"}', code: 'BAD_FRAME', message: 'error.ref: expected 1-64 printable ASCII characters or null' },
    { line: '{"type":"error","ref":null,"code":"OOPS","message":"m"}', code: 'BAD_FRAME', message: `error.code: expected one of ${PROTOCOL_ERROR_CODES.join(', ')}` },
    { line: '{"type":"error","ref":null,"code":"BUSY"}', code: 'BAD_FRAME', message: 'error.message: missing' },
    { line: '{"type":"poll"}', code: 'BAD_FRAME', message: 'poll.ref: missing' },
    { line: '{"type":"poll","ref":"p-1"', code: 'BAD_FRAME', message: /^frame is not valid JSON/ },
  ];
  for (const c of cases) t.throws(() => parseBoxFrame(c.line), { name: 'ProtocolError', code: c.code, message: c.message }, c.line);
});

t.test('encodeFrame: one line of JSON, newlines and lone surrogates escaped', async (t) => {
  const line = encodeFrame({ type: 'status', ref: 's1', time: null, data: { text: 'a\nb\r\u2028', bad: '\ud800' } });
  t.equal(line.indexOf('\n'), line.length - 1);
  t.notOk(line.slice(0, -1).includes('\r'));
  t.ok(Buffer.from(line, 'utf8').toString('utf8') === line, 'valid UTF-8');
  t.equal(encodeFrame({ type: 'poll', ref: 'p-1' }), '{"type":"poll","ref":"p-1"}\n');
});

t.test('LineSplitter', async (t) => {
  t.test('lines split across chunks, CRLF tolerated, UTF-8 split inside a character', async (t) => {
    const s = new LineSplitter();
    const bytes = Buffer.from('{"a":"é"}\r\n{"b":2}\n\npartial');
    const lines: string[] = [];
    for (let i = 0; i < bytes.length; i += 3) lines.push(...s.push(bytes.subarray(i, i + 3)));
    t.strictSame(lines, ['{"a":"é"}', '{"b":2}', '']);
    t.ok(s.pending, 'partial line buffered');
    t.strictSame(s.push(Buffer.from('-end\n')), ['partial-end']);
    t.notOk(s.pending);
  });

  t.test('many lines in one chunk; only the last \\r is removed', async (t) => {
    const s = new LineSplitter();
    t.strictSame(s.push(Buffer.from('a\nb\r\r\nc\n')), ['a', 'b\r', 'c']);
    t.notOk(s.pending);
  });

  t.test('a line of exactly maxBytes passes, with \\n or \\r\\n, even when the \\r arrives alone', async (t) => {
    const s = new LineSplitter(8);
    t.strictSame(s.push(Buffer.from('12345678\n')), ['12345678']);
    t.strictSame(s.push(Buffer.from('12345678\r')), []);
    t.strictSame(s.push(Buffer.from('\n')), ['12345678']);
    t.strictSame(s.push(Buffer.from('1234')), []);
    t.strictSame(s.push(Buffer.from('5678\r\n')), ['12345678']);
  });

  t.test('oversized partial line throws TOO_LARGE without waiting for the newline', async (t) => {
    const s = new LineSplitter(8);
    t.strictSame(s.push(Buffer.from('12345')), []);
    t.throws(() => s.push(Buffer.from('6789')), { name: 'ProtocolError', code: 'TOO_LARGE', message: 'line longer than 8 bytes', ref: null });
    t.throws(() => s.push(Buffer.from('\nok\n')), { code: 'TOO_LARGE' }, 'framing is lost for good');
  });

  t.test('oversized complete line in one chunk throws', async (t) => {
    const s = new LineSplitter(8);
    t.throws(() => s.push(Buffer.from('ok\n123456789\n')), { code: 'TOO_LARGE' });
  });

  t.test('a trailing \\r does not buy more than one byte', async (t) => {
    const s = new LineSplitter(8);
    t.throws(() => s.push(Buffer.from('123456789\r')), { code: 'TOO_LARGE' });
  });

  t.test('memory stays bounded for a peer that never sends a newline', async (t) => {
    const s = new LineSplitter(MAX_FRAME_BYTES);
    const chunk = Buffer.alloc(1000, 0x61);
    let fed = 0;
    let err: unknown;
    try {
      for (;;) {
        s.push(chunk);
        fed += chunk.length;
        // The splitter holds at most what it accepted so far; it must stop at the bound.
        if (fed > MAX_FRAME_BYTES + chunk.length) break;
      }
    } catch (e) {
      err = e;
    }
    t.type(err, ProtocolError);
    t.equal((err as ProtocolError).code, 'TOO_LARGE');
    t.ok(fed <= MAX_FRAME_BYTES, `threw after ${fed} bytes buffered (bound ${MAX_FRAME_BYTES})`);
    t.notOk(s.pending, 'buffer released');
  });
});

// --- properties ---------------------------------------------------------------

function expectParsedOrProtocolError(parse: (line: string) => unknown, line: string): void {
  try {
    parse(line);
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`not a ProtocolError for ${JSON.stringify(line).slice(0, 200)}: ${String(e)}`);
    if (!(PROTOCOL_ERROR_CODES as readonly string[]).includes(e.code)) throw new Error(`unknown code ${e.code}`);
    if (e.message.length > 1000) throw new Error(`message too long (${e.message.length})`);
  }
}

const anyField = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.boolean(),
  fc.double(),
  fc.integer(),
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.constantFrom('h1', '2026-11-23T14:05:09Z', 'critical', 'warning', ''),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4, noNullPrototype: true }),
);

t.test('property: arbitrary bytes in arbitrary chunks split into lines or throw TOO_LARGE', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 20 }),
      fc.integer({ min: 16, max: 512 }),
      (chunks, max) => {
        const s = new LineSplitter(max);
        try {
          for (const c of chunks) {
            for (const line of s.push(Buffer.from(c))) {
              if (Buffer.byteLength(line) > max * 3) throw new Error('line longer than the bound'); // U+FFFD may triple invalid bytes
              expectParsedOrProtocolError(parseInstrumentFrame, line);
            }
          }
        } catch (e) {
          if (!(e instanceof ProtocolError && e.code === 'TOO_LARGE')) throw e;
        }
      },
    ),
    { numRuns: 1000 },
  );
  t.pass('1000 byte streams');
});

const ref = fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 64 });
const label = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 64 }).filter((s) => [...s].length <= 64 && !/[\u0000-\u001f\u007f-\u009f]/.test(s));
const time = fc.oneof(
  fc.constant(null),
  fc.date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true }).map((d) => d.toISOString()),
  fc
    .tuple(fc.date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }), fc.constantFrom('', '+05:30', '-08:00', '+00:00'))
    .map(([d, off]) => `${d.toISOString().slice(0, 19)}${off}`),
);
const data = fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 4 }), { noNullPrototype: true });

// Near-misses: each field either valid or anything, so that the field checks
// are reached, not only JSON.parse.
const either = <T>(valid: fc.Arbitrary<T>): fc.Arbitrary<unknown> => fc.oneof(valid, anyField);
const nearFrame = fc
  .record({
    type: either(fc.constantFrom(...INSTRUMENT_FRAME_TYPES, ...BOX_FRAME_TYPES)),
    session: either(fc.uuid()),
    answer: either(fc.constantFrom(...CONSENT_ANSWERS)),
    services: either(fc.array(fc.integer({ min: 0, max: 70000 }), { maxLength: 9 })),
    ref: either(ref),
    protocol: either(fc.constant(1)),
    serial: either(ref),
    model: either(label),
    swVersion: either(label),
    time: either(time),
    data: either(data),
    code: either(fc.constantFrom(...PROTOCOL_ERROR_CODES, 'E1234')),
    severity: either(fc.constantFrom(...ALARM_SEVERITIES)),
    text: either(fc.string({ maxLength: 50 })),
    id: either(fc.uuid()),
    message: either(fc.string({ maxLength: 50 })),
  })
  .map((r) => JSON.stringify(r));

const instrumentFrame: fc.Arbitrary<InstrumentFrame> = fc.oneof(
  fc.record({ type: fc.constant('hello' as const), ref, protocol: fc.constant(1 as const), serial: ref, model: label, swVersion: label }),
  fc.record({ type: fc.constant('status' as const), ref, time, data }),
  fc.record({
    type: fc.constant('alarm' as const),
    ref,
    time,
    code: ref,
    severity: fc.constantFrom(...ALARM_SEVERITIES),
    text: fc.string({ unit: 'binary', maxLength: 200 }),
    data,
  }),
  fc.record({ type: fc.constant('heartbeat' as const), ref }),
  fc.record({ type: fc.constant('bye' as const), ref }),
  fc.record({ type: fc.constant('consent' as const), ref, session: fc.uuid(), answer: fc.constantFrom(...CONSENT_ANSWERS) }),
  fc.record({ type: fc.constant('session-end' as const), ref, session: fc.uuid() }),
  fc.record({ type: fc.constant('consent-clear' as const), ref }),
);
const boxFrame: fc.Arbitrary<BoxFrame> = fc.oneof(
  fc.record({ type: fc.constant('ack' as const), ref, id: fc.oneof(fc.constant(null), fc.uuid()) }),
  fc.record({ type: fc.constant('error' as const), ref: fc.oneof(fc.constant(null), ref), code: fc.constantFrom(...PROTOCOL_ERROR_CODES), message: fc.string({ unit: 'binary', maxLength: 200 }) }),
  fc.record({ type: fc.constant('poll' as const), ref }),
  fc.record({
    type: fc.constant('consent-request' as const),
    ref,
    session: fc.uuid(),
    who: label,
    why: fc.string({ maxLength: 100 }).filter((s) => !/[\u0000-\u001f\u007f-\u009f]/.test(s)),
    services: fc.array(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 8 }),
    maxDurationS: fc.integer({ min: 1, max: 86400 }),
    answerBy: fc.date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString()),
  }),
  fc.record({ type: fc.constant('session-ended' as const), ref, session: fc.uuid(), reason: label }),
);

// JSON has no -0: what a frame means is its JSON text.
const asJson = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

t.test('property: encode -> split -> parse round-trips every valid frame', async (t) => {
  fc.assert(
    fc.property(fc.array(instrumentFrame, { minLength: 1, maxLength: 5 }), fc.integer({ min: 1, max: 64 }), (frames, chunkSize) => {
      // Through the splitter in small chunks, as off a socket.
      const bytes = Buffer.from(frames.map(encodeFrame).join(''));
      const s = new LineSplitter();
      const lines: string[] = [];
      for (let i = 0; i < bytes.length; i += chunkSize) lines.push(...s.push(bytes.subarray(i, i + chunkSize)));
      if (lines.length !== frames.length) throw new Error(`${lines.length} lines for ${frames.length} frames`);
      lines.forEach((line, i) => deepStrictEqual(parseInstrumentFrame(line), asJson(frames[i])));
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(boxFrame, (f) => {
      deepStrictEqual(parseBoxFrame(encodeFrame(f).slice(0, -1)), asJson(f));
    }),
    { numRuns: 500 },
  );
  t.pass('round-trips');
});

t.test('property: any input parses to a frame or throws ProtocolError, never anything else', async (t) => {
  const lines = fc.oneof(fc.string({ unit: 'binary' }), fc.json(), nearFrame, fc.string({ unit: 'binary-ascii' }));
  fc.assert(
    fc.property(lines, (line) => {
      expectParsedOrProtocolError(parseInstrumentFrame, line);
      expectParsedOrProtocolError(parseBoxFrame, line);
    }),
    { numRuns: 3000 },
  );
  t.pass('3000 inputs');
});

t.test('every example in docs/instrument-protocol.md means what the text says', async (t) => {
  const doc = readFileSync(new URL('../../../docs/instrument-protocol.md', import.meta.url), 'utf8');
  const sent = [...doc.matchAll(/^> (\{.*\})$/gm)].map((m) => m[1]!);
  const replies = [...doc.matchAll(/^< (\{.*\})$/gm)].map((m) => parseBoxFrame(m[1]!));
  t.ok(sent.length >= 8 && replies.length >= 8, 'the session examples are there');
  for (const line of sent) {
    let refused: ProtocolError | undefined;
    try {
      parseInstrumentFrame(line);
    } catch (e) {
      refused = e as ProtocolError;
    }
    const ref = (JSON.parse(line) as { ref: string }).ref;
    const reply = replies.find((r) => r.ref === ref);
    if (refused) {
      t.strictSame(reply, { type: 'error', ref, code: refused.code, message: refused.message }, `the documented error for ${ref} is the parser's`);
    } else if (reply?.type === 'error') {
      t.equal(reply.code, 'NOT_IDENTIFIED', `${ref}: only a state error for a valid frame`);
    } else {
      t.equal(reply?.type, 'ack', `${ref} is acknowledged`);
    }
  }
  // The ```json blocks: each line is a valid frame of one side or the other.
  for (const block of doc.matchAll(/```json\n([\s\S]*?)```/g)) {
    for (const line of block[1]!.split('\n').filter(Boolean)) {
      const type = (JSON.parse(line) as { type: string }).type;
      if ((BOX_FRAME_TYPES as readonly string[]).includes(type)) parseBoxFrame(line);
      else parseInstrumentFrame(line);
      t.pass(`${type} example parses`);
    }
  }
});
