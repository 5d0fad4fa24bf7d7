import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { createLogger } from '../../../src/lib/log.ts';
import { RapError } from '../../../src/lib/errors.ts';
import type { CommandHandler, VerifiedCommand } from '../../../src/rapd/commands.ts';
import type { SessionManager, SessionRequest } from '../../../src/rapd/session.ts';
import { localSessionRequest, registerSessionCommands, setIpForwarding } from '../../../src/rapd/session-host.ts';

function rig(open: (r: SessionRequest) => Promise<unknown>, ended = true) {
  const handlers = new Map<string, CommandHandler>();
  const calls: unknown[] = [];
  const mgr = {
    open: async (r: SessionRequest) => {
      calls.push(['open', r]);
      return open(r);
    },
    end: async (id: string, reason: string) => {
      calls.push(['end', id, reason]);
      return ended;
    },
  } as unknown as SessionManager;
  registerSessionCommands({ register: (type, h) => void handlers.set(type, h) }, mgr);
  const cmd = (type: string, args: unknown): VerifiedCommand => ({ id: 'c1', type, deviceId: 'box-1', issuedAt: 0, expiresAt: 1, args, keyId: 'k1' });
  return { handlers, calls, cmd };
}

t.test('session.open: the command args become the request, the signing key the actor; the result is the session outcome', async (t) => {
  const r = rig(async () => ({ sessionId: 's1', outcome: 'denied' }));
  t.strictSame([...r.handlers.keys()], ['session.open', 'session.close']);
  const res = await r.handlers.get('session.open')!(r.cmd('session.open', { port: 'p1', services: [5900], who: 'j.doe', why: 'E1042', maxDurationS: 600 }));
  t.strictSame(res, { status: 'ok', result: { sessionId: 's1', outcome: 'denied' } });
  t.strictSame(r.calls, [['open', { port: 'p1', services: [5900], who: 'j.doe', why: 'E1042', maxDurationS: 600, actor: 'center:k1' }]]);
});

t.test('session.open: a refused request is an error result with its code, never a throw', async (t) => {
  const r = rig(async () => {
    throw new RapError('RAP_SESSION', 'port p1 already has a session (s0)');
  });
  t.strictSame(await r.handlers.get('session.open')!(r.cmd('session.open', null)), { status: 'error', error: { code: 'RAP_SESSION', message: 'port p1 already has a session (s0)' } });
  t.match(r.calls, [['open', { actor: 'center:k1', why: '' }]], 'args that are not an object reach the manager empty (it names what is missing)');
});

t.test('session.close: ends by id as the center; unknown ids and bad args are error results', async (t) => {
  const r = rig(async () => ({}));
  t.strictSame(await r.handlers.get('session.close')!(r.cmd('session.close', { sessionId: 's1' })), { status: 'ok', result: { sessionId: 's1', closed: true } });
  t.strictSame(r.calls, [['end', 's1', 'center-close']]);
  t.match(await r.handlers.get('session.close')!(r.cmd('session.close', {})), { status: 'error', error: { code: 'RAP_SESSION', message: 'session.close args.sessionId: expected a session id' } });
  const gone = rig(async () => ({}), false);
  t.match(await gone.handlers.get('session.close')!(gone.cmd('session.close', { sessionId: 's9' })), { status: 'error', error: { message: 'no open session s9' } });
});

t.test('a local request is audited as the operator at the box', async (t) => {
  t.strictSame(localSessionRequest({ port: 'p2', services: [22], who: 'me', maxDurationS: 60 }), { port: 'p2', services: [22], who: 'me', why: '', maxDurationS: 60, actor: 'operator:local' });
});

t.test('ip forwarding is written only when it changes (a read-only /proc/sys must not stop rapd at start)', async (t) => {
  const dir = t.testdir({ ip_forward: '0\n' });
  const path = join(dir, 'ip_forward');
  const lines: string[] = [];
  const log = createLogger({ level: 'info', write: (l: string) => void lines.push(l) });
  t.equal(setIpForwarding(path, false, log), false, 'already off: nothing written');
  t.equal(lines.length, 0);
  t.equal(setIpForwarding(path, true, log), true, 'a session turns it on');
  t.equal(readFileSync(path, 'utf8'), '1\n');
  t.equal(setIpForwarding(path, false, log), true, 'and off again');
  t.equal(readFileSync(path, 'utf8'), '0\n');
  t.match(lines.join(''), /ip forwarding on[\s\S]*ip forwarding off/);
});
