import t from 'tap';
import nacl from 'tweetnacl';
import { createLogger } from '../../../src/lib/log.ts';
import type { AuditEvent, AuditRecord } from '../../../src/protocol/audit.ts';
import { makeRecord } from '../../../src/protocol/audit.ts';
import { signCommand, type CommandBody, type SignedCommand } from '../../../src/protocol/commands.ts';
import { CommandRouter, ReplayMemory, registerBuiltins, trustedKeys, verifyCommand, type VerifyPolicy } from '../../../src/rapd/commands.ts';

const quiet = createLogger({ write: () => {}, syslogPrefix: false });
const NOW = 1_800_000_000_000;
const k1 = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(1));
const k2 = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(2));
const stranger = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(3));
const b64 = (u: Uint8Array): string => Buffer.from(u).toString('base64');

const policy: VerifyPolicy = {
  deviceId: 'box-1',
  // Two keys trusted at once: a rotation in progress.
  keys: trustedKeys([
    { id: 'k1', publicKey: b64(k1.publicKey) },
    { id: 'k2', publicKey: b64(k2.publicKey) },
  ]),
  maxLifetimeMs: 900_000,
  skewMs: 60_000,
};

let n = 0;
function body(over: Partial<CommandBody> = {}): CommandBody {
  n++;
  return {
    v: 1,
    id: `c-${n}`,
    type: 'ping',
    deviceId: 'box-1',
    issuedAt: NOW,
    expiresAt: NOW + 60_000,
    nonce: Buffer.alloc(16, n).toString('base64'),
    keyId: 'k1',
    args: { n },
    ...over,
  };
}
const signed = (over: Partial<CommandBody> = {}, key = k1.secretKey): SignedCommand => signCommand(body(over), key);

t.test('verification: every rejection reason has its code (table)', async (t) => {
  const replay = new ReplayMemory();
  const seen = signed();
  replay.remember(seen.id, seen.nonce, NOW + 120_000);
  const { sig: _sig, ...unsigned } = signed();
  const tampered = { ...signed(), args: { n: 'changed' } };
  const cases: { name: string; cmd: unknown; code: string; message?: RegExp }[] = [
    { name: 'malformed (names the field)', cmd: { ...signed(), issuedAt: 'yesterday' }, code: 'RAP_CMD_MALFORMED', message: /^malformed command: issuedAt: expected/ },
    { name: 'not an object', cmd: 'ping', code: 'RAP_CMD_MALFORMED' },
    { name: 'unsigned', cmd: unsigned, code: 'RAP_CMD_UNSIGNED' },
    { name: 'unknown key', cmd: signed({ keyId: 'k9' }, stranger.secretKey), code: 'RAP_CMD_UNKNOWN_KEY', message: /key 'k9' is not trusted \(trusted: k1, k2\)/ },
    { name: 'bad signature: signed by another key under a trusted id', cmd: signed({ keyId: 'k1' }, stranger.secretKey), code: 'RAP_CMD_BAD_SIGNATURE' },
    { name: 'bad signature: content changed after signing', cmd: tampered, code: 'RAP_CMD_BAD_SIGNATURE' },
    { name: 'wrong device', cmd: signed({ deviceId: 'box-2' }), code: 'RAP_CMD_WRONG_DEVICE' },
    { name: 'not yet valid (past the skew)', cmd: signed({ issuedAt: NOW + 61_000, expiresAt: NOW + 120_000 }), code: 'RAP_CMD_NOT_YET_VALID' },
    { name: 'expired (past the skew)', cmd: signed({ issuedAt: NOW - 200_000, expiresAt: NOW - 61_000 }), code: 'RAP_CMD_EXPIRED' },
    { name: 'lifetime too long', cmd: signed({ expiresAt: NOW + 900_001 }), code: 'RAP_CMD_LIFETIME' },
    { name: 'replayed (same id)', cmd: seen, code: 'RAP_CMD_REPLAYED' },
    { name: 'replayed (same nonce, new id)', cmd: signed({ nonce: seen.nonce }), code: 'RAP_CMD_REPLAYED' },
    // Order: a forged command for another device is a bad signature, not a wrong device.
    { name: 'order: signature before device', cmd: signed({ deviceId: 'box-2' }, stranger.secretKey), code: 'RAP_CMD_BAD_SIGNATURE' },
    { name: 'order: device before expiry', cmd: signed({ deviceId: 'box-2', issuedAt: NOW - 200_000, expiresAt: NOW - 100_000 }), code: 'RAP_CMD_WRONG_DEVICE' },
  ];
  for (const c of cases) {
    t.throws(() => verifyCommand(c.cmd, policy, NOW, replay), { code: c.code, ...(c.message ? { message: c.message } : {}) }, c.name);
  }
  // Inside the skew allowance both ways, and signed by the second trusted key: accepted.
  const ok = verifyCommand(signed({ issuedAt: NOW + 59_000, expiresAt: NOW + 120_000, keyId: 'k2' }, k2.secretKey), policy, NOW, replay);
  t.match(ok.cmd, { type: 'ping', deviceId: 'box-1', keyId: 'k2' });
  t.ok(verifyCommand(signed({ issuedAt: NOW - 100_000, expiresAt: NOW - 59_000 }), policy, NOW, replay), 'expired by less than the skew: accepted');
});

t.test('trusted keys from config: a bad one is named', async (t) => {
  t.throws(() => trustedKeys([{ id: 'k1', publicKey: b64(new Uint8Array(31)) }]), { code: 'RAP_CONFIG', message: /commands\.keys\[0\]\.publicKey: expected 32 bytes, got 31/ });
});

class MemAudit {
  records: AuditRecord[] = [];
  fail = false;
  async append(e: AuditEvent): Promise<AuditRecord> {
    if (this.fail) throw new Error('disk gone');
    const last = this.records[this.records.length - 1];
    const r = makeRecord(last ? { seq: last.seq, hash: last.hash } : null, e, new Date(NOW));
    this.records.push(r);
    return r;
  }
}

function router(audit: MemAudit, now = () => NOW): CommandRouter {
  const r = new CommandRouter({ policy, audit, log: quiet, now });
  registerBuiltins(r, { headNow: () => ({ seq: 1, hash: 'h' }) }, () => null, now);
  return r;
}

t.test('router: accepted is audited before it runs; rejected is audited with its code; results carry the id', async (t) => {
  const audit = new MemAudit();
  const r = router(audit);
  const cmd = signed({ args: { hello: 1 } });
  t.same(await r.handle(cmd), { t: 'result', id: cmd.id, status: 'ok', result: { pong: { hello: 1 }, at: NOW } });
  t.match(audit.records.map((x) => [x.actor, x.action, x.outcome]), [
    ['center:k1', 'command.accepted', 'ok'],
    ['center:k1', 'command.completed', 'ok'],
  ]);
  t.match(audit.records[0]!.details, { id: cmd.id, nonce: cmd.nonce, expiresAt: cmd.expiresAt, args: { hello: 1 } });
  const again = await r.handle(cmd);
  t.match(again, { id: cmd.id, status: 'rejected', error: { code: 'RAP_CMD_REPLAYED' } });
  t.match(audit.records[2], { action: 'command.rejected', outcome: 'rejected', details: { id: cmd.id, code: 'RAP_CMD_REPLAYED' } });
  const unknown = signed({ type: 'reboot' });
  t.match(await r.handle(unknown), { status: 'rejected', error: { code: 'RAP_CMD_UNKNOWN_TYPE', message: /known: audit\.head, ping/ } });
  t.match(await r.handle(signed({ type: 'audit.head' })), { status: 'ok', result: { head: { seq: 1 }, anchor: null } });
  t.match(r.stats(), { accepted: 2, rejected: 2, inFlight: 0 });
});

t.test('router: a command whose audit record cannot be written does not run', async (t) => {
  const audit = new MemAudit();
  const r = router(audit);
  let ran = false;
  r.register('touch', async () => {
    ran = true;
    return { status: 'ok' };
  });
  audit.fail = true;
  t.match(await r.handle(signed({ type: 'touch' })), { status: 'error', error: { code: 'RAP_AUDIT' } });
  t.notOk(ran);
});

t.test('router: a restart does not reopen the replay window (memory rebuilt from the audit log)', async (t) => {
  const audit = new MemAudit();
  const cmd = signed();
  await router(audit).handle(cmd);
  // A new router, as after a restart, fed the records read at open.
  const later = () => NOW + 30_000;
  const restarted = router(new MemAudit(), later);
  for (const rec of audit.records) restarted.rememberFromAudit(rec);
  t.match(await restarted.handle(cmd), { status: 'rejected', error: { code: 'RAP_CMD_REPLAYED' } });
  // Once past expiry + skew the id is forgotten, and the command is refused as expired anyway.
  const muchLater = router(new MemAudit(), () => cmd.expiresAt + 61_000);
  for (const rec of audit.records) muchLater.rememberFromAudit(rec);
  t.match(await muchLater.handle(cmd), { error: { code: 'RAP_CMD_EXPIRED' } });
  t.equal(muchLater.replay.seen(cmd.id, cmd.nonce, cmd.expiresAt + 61_000), false, 'pruned after expiry');
});

t.test('router: commands run concurrently; a slow one does not hold up another', async (t) => {
  const audit = new MemAudit();
  const r = router(audit);
  let release!: () => void;
  const gate = new Promise<void>((res) => (release = res));
  r.register('slow', async () => {
    await gate;
    return { status: 'ok', result: 'slow done' };
  });
  const slow = r.handle(signed({ type: 'slow' }));
  const fast = await r.handle(signed({ type: 'ping' }));
  t.equal(fast.status, 'ok', 'ping answered while slow is still running');
  t.equal(r.stats().inFlight, 1);
  release();
  t.match(await slow, { status: 'ok', result: 'slow done' });
  // A handler that throws answers an error result, and is audited as such.
  r.register('boom', async () => {
    throw new Error('kaput');
  });
  t.match(await r.handle(signed({ type: 'boom' })), { status: 'error', error: { code: 'RAP_CMD_FAILED', message: 'kaput' } });
  t.match(audit.records[audit.records.length - 1], { action: 'command.completed', outcome: 'error' });
});
