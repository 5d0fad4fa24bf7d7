import t from 'tap';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import nacl from 'tweetnacl';
import { generateCommandKey, loadCommandKey } from '../../../src/center/commands.ts';
import { parseAdminRequest } from '../../../src/center/admin.ts';
import { signCommand, signatureValid } from '../../../src/protocol/commands.ts';
import { trustedKeys } from '../../../src/rapd/commands.ts';

t.test('a generated key: secret 0600, .pub is a commands.keys entry, signatures verify on the box side', async (t) => {
  const dir = t.testdir();
  const k = generateCommandKey(dir, 'k1');
  t.equal(statSync(k.keyFile).mode & 0o777, 0o600);
  const pub = JSON.parse(readFileSync(k.pubFile, 'utf8'));
  t.same(Object.keys(pub), ['id', 'publicKey']);
  const key = loadCommandKey(k.keyFile);
  t.equal(key.id, 'k1');
  const body = { v: 1, id: 'c1', type: 'ping', deviceId: 'box-1', issuedAt: 1, expiresAt: 2, nonce: Buffer.alloc(16).toString('base64'), keyId: 'k1', args: {} };
  t.ok(signatureValid(signCommand(body, key.secretKey), trustedKeys([pub]).get('k1')!));
  t.throws(() => generateCommandKey(dir, 'k1'), { code: 'RAP_PKI', message: /never overwritten/ });
  t.throws(() => generateCommandKey(dir, '../x'), { code: 'RAP_USAGE' });
});

t.test('a bad key file is named', async (t) => {
  const dir = t.testdir();
  const other = nacl.sign.keyPair();
  const k = generateCommandKey(dir, 'k2');
  const doc = JSON.parse(readFileSync(k.keyFile, 'utf8'));
  writeFileSync(join(dir, 'mismatch.key'), JSON.stringify({ ...doc, publicKey: Buffer.from(other.publicKey).toString('base64') }));
  t.throws(() => loadCommandKey(join(dir, 'mismatch.key')), { message: /'publicKey' does not belong to 'secretKey'/ });
  writeFileSync(join(dir, 'short.key'), JSON.stringify({ ...doc, secretKey: 'AAAA' }));
  t.throws(() => loadCommandKey(join(dir, 'short.key')), { message: /'secretKey' must be 64 bytes/ });
  t.throws(() => loadCommandKey(join(dir, 'none.key')), { code: 'RAP_PKI', message: /cannot read/ });
});

t.test('admin requests: defaults, and each bad field named', async (t) => {
  t.same(parseAdminRequest('{"device":"box-1","type":"ping"}'), { device: 'box-1', type: 'ping', args: {}, ttlMs: 300000, timeoutMs: 30000 });
  t.throws(() => parseAdminRequest('{"device":"box 1","type":"ping"}'), { message: /^device: / });
  t.throws(() => parseAdminRequest('{"device":"box-1","type":"Ping"}'), { message: /^type: / });
  t.throws(() => parseAdminRequest('{"device":"box-1","type":"ping","ttlMs":0}'), { message: /^ttlMs: / });
  t.throws(() => parseAdminRequest('{"device":"box-1","type":"ping","x":1}'), { message: /^x: unexpected field$/ });
  t.throws(() => parseAdminRequest('nope'), { message: /^request: not valid JSON/ });
});
