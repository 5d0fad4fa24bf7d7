import t from 'tap';
import nacl from 'tweetnacl';
import { MalformedCommand, parseBoxFrame, parseCommand, signCommand, signatureValid, signingBytes, type CommandBody } from '../../../src/protocol/commands.ts';

const body: CommandBody = {
  v: 1,
  id: 'c-1',
  type: 'ping',
  deviceId: 'box-1',
  issuedAt: 1_800_000_000_000,
  expiresAt: 1_800_000_060_000,
  nonce: Buffer.alloc(16, 7).toString('base64'),
  keyId: 'k1',
  args: { b: [1, 2], a: 'x' },
};

t.test('the signed bytes: domain line, then the canonical body (every field but sig)', async (t) => {
  t.equal(
    Buffer.from(signingBytes(body)).toString(),
    'rapbox-command-v1\n{"args":{"a":"x","b":[1,2]},"deviceId":"box-1","expiresAt":1800000060000,"id":"c-1","issuedAt":1800000000000,"keyId":"k1","nonce":"BwcHBwcHBwcHBwcHBwcHBw==","type":"ping","v":1}',
  );
  const kp = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(1));
  const signed = signCommand(body, kp.secretKey);
  t.ok(signatureValid(signed, kp.publicKey));
  // Field order on the wire does not matter; any changed field does.
  const reordered = JSON.parse(JSON.stringify({ sig: signed.sig, ...body, args: { a: 'x', b: [1, 2] } })) as typeof signed;
  t.ok(signatureValid(parseCommand(reordered), kp.publicKey), 'reordered fields still verify');
  for (const change of [{ deviceId: 'box-2' }, { expiresAt: body.expiresAt + 1 }, { args: { a: 'y', b: [1, 2] } }, { nonce: Buffer.alloc(16, 8).toString('base64') }]) {
    t.notOk(signatureValid({ ...signed, ...change }, kp.publicKey), `changed ${Object.keys(change)[0]} does not verify`);
  }
});

t.test('parseCommand names the bad field', async (t) => {
  const sig = Buffer.alloc(64).toString('base64');
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ v: 2 }, /^v: expected 1$/],
    [{ id: '' }, /^id: expected/],
    [{ id: 'a b' }, /^id: expected/],
    [{ type: 'Ping' }, /^type: expected a dotted lower-case name/],
    [{ deviceId: '-x' }, /^deviceId: expected a device id/],
    [{ issuedAt: 1.5 }, /^issuedAt: expected a time in ms/],
    [{ expiresAt: '1' }, /^expiresAt: expected a time in ms/],
    [{ expiresAt: body.issuedAt }, /^expiresAt: expected a time after issuedAt$/],
    [{ nonce: 'short' }, /^nonce: expected base64$/],
    [{ nonce: Buffer.alloc(8).toString('base64') }, /^nonce: expected 16-64 bytes/],
    [{ keyId: '' }, /^keyId: expected/],
    [{ args: undefined }, /^args: expected a JSON value/],
    [{ args: { big: 'x'.repeat(5000) } }, /^args: expected at most 4096 bytes/],
    [{ sig: 'AAAA' }, /^sig: expected 64 bytes \(base64\)$/],
    [{ extra: 1 }, /^extra: unexpected field$/],
  ];
  for (const [change, want] of cases) {
    const c: Record<string, unknown> = { ...body, sig, ...change };
    for (const [k, v] of Object.entries(change)) if (v === undefined) delete c[k];
    t.throws(() => parseCommand(c), new MalformedCommand(), `${JSON.stringify(change).slice(0, 40)}`);
    t.throws(() => parseCommand(c), { message: want });
  }
  t.throws(() => parseCommand([]), { message: 'command: expected a JSON object' });
  t.same(parseCommand({ ...body }).sig, undefined, 'no sig: parsed, left for the unsigned check');
});

t.test('frames from the box: hello and result parsed, anything else named', async (t) => {
  t.same(parseBoxFrame('{"t":"hello","device":"box-1","version":"1","auditHead":null}'), { t: 'hello', device: 'box-1', version: '1', auditHead: null });
  t.same(parseBoxFrame('{"t":"result","id":"c1","status":"ok","result":{"x":1}}'), { t: 'result', id: 'c1', status: 'ok', result: { x: 1 } });
  t.same(parseBoxFrame('{"t":"result","id":"c1","status":"rejected","error":{"code":"RAP_CMD_EXPIRED","message":"m"}}').t, 'result');
  t.throws(() => parseBoxFrame('nope'), { message: /^frame: not valid JSON/ });
  t.throws(() => parseBoxFrame('{"t":"command"}'), { message: 'frame.t: expected "hello" or "result", got "command"' });
  t.throws(() => parseBoxFrame('{"t":"result","id":"c1","status":"done"}'), { message: /^result\.status: / });
  t.throws(() => parseBoxFrame('{"t":"result","id":"c1","status":"error","error":"x"}'), { message: /^result\.error: / });
  t.throws(() => parseBoxFrame('{"t":"hello","device":"","version":"1","auditHead":null}'), { message: /^hello\.device: / });
});
