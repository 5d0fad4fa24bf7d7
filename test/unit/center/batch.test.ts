// validateBatch: every way a batch can be wrong, with the exact 400 text rapd
// will log (it must name the field an operator has to look at).

import t from 'tap';
import { isTimestamp, validateBatch } from '../../../src/center/batch.ts';

const ID = '3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b';

function msg(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: ID,
    kind: 'status',
    port: 'port-1',
    instrument: { serial: 'SN1', model: 'DxH 900', swVersion: '3.1' },
    receivedAt: '2025-03-01T10:00:00.000Z',
    instrumentTime: '2025-03-01T11:00:00+01:00',
    body: { temp: 37 },
    ...over,
  };
}

function batch(over: Record<string, unknown> = {}): Record<string, unknown> {
  return { device: 'box-1', sentAt: '2025-03-01T10:00:01.000Z', messages: [msg()], ...over };
}

function without(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const c = { ...o };
  delete c[key];
  return c;
}

const bad: { name: string; input: unknown; want: string }[] = [
  { name: 'not an object', input: [], want: 'batch: expected a JSON object' },
  { name: 'null', input: null, want: 'batch: expected a JSON object' },
  { name: 'device missing', input: without(batch(), 'device'), want: 'device: expected a device id (1-64 letters, digits, ".", "_" or "-", starting with a letter or digit)' },
  { name: 'device empty', input: batch({ device: '' }), want: 'device: expected a device id (1-64 letters, digits, ".", "_" or "-", starting with a letter or digit)' },
  { name: 'device with a slash', input: batch({ device: '../x' }), want: 'device: expected a device id (1-64 letters, digits, ".", "_" or "-", starting with a letter or digit)' },
  { name: 'device 65 chars', input: batch({ device: 'a'.repeat(65) }), want: 'device: expected a device id (1-64 letters, digits, ".", "_" or "-", starting with a letter or digit)' },
  { name: 'sentAt not a timestamp', input: batch({ sentAt: 'yesterday' }), want: 'sentAt: expected an ISO 8601 timestamp with a time zone' },
  { name: 'sentAt without zone', input: batch({ sentAt: '2025-03-01T10:00:00' }), want: 'sentAt: expected an ISO 8601 timestamp with a time zone' },
  { name: 'sentAt Feb 30', input: batch({ sentAt: '2025-02-30T10:00:00Z' }), want: 'sentAt: expected an ISO 8601 timestamp with a time zone' },
  { name: 'sentAt epoch number', input: batch({ sentAt: 1740823200000 }), want: 'sentAt: expected an ISO 8601 timestamp with a time zone' },
  { name: 'messages not an array', input: batch({ messages: {} }), want: 'messages: expected an array of at most 10000 messages' },
  { name: 'too many messages', input: batch({ messages: Array.from({ length: 10001 }, () => msg()) }), want: 'messages: expected an array of at most 10000 messages' },
  { name: 'message not an object', input: batch({ messages: [msg(), 'x'] }), want: 'messages[1]: expected an object' },
  { name: 'id not a UUID', input: batch({ messages: [msg(), msg(), msg(), msg({ id: 'm-4' })] }), want: 'messages[3].id: expected a UUID' },
  { name: 'id missing', input: batch({ messages: [without(msg(), 'id')] }), want: 'messages[0].id: expected a UUID' },
  { name: 'kind unknown', input: batch({ messages: [msg({ kind: 'warning' })] }), want: 'messages[0].kind: expected one of "status", "heartbeat", "alarm", "event", "audit"' },
  { name: 'port upper case', input: batch({ messages: [msg({ port: 'Port1' })] }), want: 'messages[0].port: expected a port name (1-32 of a-z, 0-9, "-")' },
  { name: 'instrument missing', input: batch({ messages: [without(msg(), 'instrument')] }), want: 'messages[0].instrument: expected an object or null' },
  { name: 'instrument a string', input: batch({ messages: [msg({ instrument: 'SN1' })] }), want: 'messages[0].instrument: expected an object or null' },
  {
    name: 'instrument.serial a number',
    input: batch({ messages: [msg({ instrument: { serial: 1, model: 'm', swVersion: 'v' } })] }),
    want: 'messages[0].instrument.serial: expected a string of at most 256 characters',
  },
  {
    name: 'instrument.model too long',
    input: batch({ messages: [msg({ instrument: { serial: 's', model: 'm'.repeat(257), swVersion: 'v' } })] }),
    want: 'messages[0].instrument.model: expected a string of at most 256 characters',
  },
  {
    name: 'instrument.swVersion missing',
    input: batch({ messages: [msg({ instrument: { serial: 's', model: 'm' } })] }),
    want: 'messages[0].instrument.swVersion: expected a string of at most 256 characters',
  },
  {
    name: 'instrument with an extra field',
    input: batch({ messages: [msg({ instrument: { serial: 's', model: 'm', swVersion: 'v', site: 'x' } })] }),
    want: 'messages[0].instrument.site: unexpected field',
  },
  { name: 'receivedAt missing', input: batch({ messages: [without(msg(), 'receivedAt')] }), want: 'messages[0].receivedAt: expected an ISO 8601 timestamp with a time zone' },
  { name: 'instrumentTime missing', input: batch({ messages: [without(msg(), 'instrumentTime')] }), want: 'messages[0].instrumentTime: expected a string of at most 64 characters or null' },
  { name: 'instrumentTime too long', input: batch({ messages: [msg({ instrumentTime: 'x'.repeat(65) })] }), want: 'messages[0].instrumentTime: expected a string of at most 64 characters or null' },
  { name: 'body an array', input: batch({ messages: [msg({ body: [1] })] }), want: 'messages[0].body: expected a JSON object' },
  { name: 'body null', input: batch({ messages: [msg({ body: null })] }), want: 'messages[0].body: expected a JSON object' },
  { name: 'extra message field', input: batch({ messages: [msg({ priority: 'alarm' })] }), want: 'messages[0].priority: unexpected field' },
  { name: 'extra batch field', input: batch({ version: 2 }), want: 'version: unexpected field' },
  // The first problem wins, in field order, so the message is stable.
  { name: 'audit body not a record (names its field)', input: batch({ messages: [msg({ kind: 'audit', port: 'audit', body: { seq: 0 } })] }), want: 'messages[0].body: expected an audit record (seq: expected an integer >= 1)' },
  { name: 'two problems: the first is named', input: batch({ messages: [msg({ kind: 'x', port: 'Y' })] }), want: 'messages[0].kind: expected one of "status", "heartbeat", "alarm", "event", "audit"' },
];

for (const c of bad) {
  t.test(`refuses: ${c.name}`, async (t) => {
    t.same(validateBatch(c.input), { ok: false, error: c.want });
  });
}

t.test('accepts a good batch and keeps only declared fields, ids lower-cased', async (t) => {
  const upper = ID.toUpperCase();
  const r = validateBatch(
    batch({
      messages: [msg({ id: upper }), msg({ id: ID, kind: 'alarm', instrument: null, instrumentTime: null, body: { code: 'E42', nested: { a: [1] } } })],
    }),
  );
  t.ok(r.ok);
  if (!r.ok) return;
  t.same(r.batch, {
    device: 'box-1',
    sentAt: '2025-03-01T10:00:01.000Z',
    messages: [
      { ...msg(), id: ID },
      { ...msg(), id: ID, kind: 'alarm', instrument: null, instrumentTime: null, body: { code: 'E42', nested: { a: [1] } } },
    ],
  });
});

t.test('an empty batch is valid (nothing to store)', async (t) => {
  t.same(validateBatch(batch({ messages: [] })), { ok: true, batch: batch({ messages: [] }) });
});

t.test('timestamps', async (t) => {
  for (const ok of ['2025-03-01T10:00:00Z', '2025-03-01T10:00:00.1+01:00', '2024-02-29T23:59:59.123456789-05:30']) t.ok(isTimestamp(ok), ok);
  for (const no of ['2025-03-01', '2025-03-01 10:00:00Z', '2025-13-01T10:00:00Z', '2023-02-29T00:00:00Z', '2025-03-01T24:00:01Z', '']) t.notOk(isTimestamp(no), no);
});
