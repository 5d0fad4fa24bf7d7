import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../../src/lib/log.ts';
import type { ConsentRequestFrame } from '../../../src/protocol/instrument.ts';
import type { Pinhole } from '../../../src/rapd/firewall.ts';
import type { VpnHandle } from '../../../src/rapd/openvpn.ts';
import type { AuditEvent } from '../../../src/protocol/audit.ts';
import { SessionManager, type Clock, type SessionRequest } from '../../../src/rapd/session.ts';

/** A clock whose timers fire only when the test advances it. */
function fakeClock(start = Date.parse('2026-11-23T12:00:00Z')): Clock & { advance(ms: number): void } {
  let now = start;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  return {
    now: () => now,
    setTimeout(fn, ms) {
      timers.set(++seq, { at: now + ms, fn });
      return seq;
    },
    clearTimeout(h) {
      timers.delete(h as number);
    },
    advance(ms) {
      now += ms;
      for (const [id, tm] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (tm.at <= now && timers.delete(id)) tm.fn();
      }
    },
  };
}

const settle = () => new Promise((r) => setImmediate(r));

/**
 * Every executor the manager drives records into one list of steps, so a
 * test compares the whole sequence (state-table style).
 */
function rig(t: Test, opts: { failFirewallAt?: number; vpnFails?: boolean; dir?: string } = {}) {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'rap-session-'));
  if (!opts.dir) t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const steps: string[] = [];
  const audit: AuditEvent[] = [];
  const frames: ConsentRequestFrame[] = [];
  const clock = fakeClock();
  const vpns: { lose(why: string): void }[] = [];
  let applies = 0;
  let instrumentThere = true;
  const channel = (port: string, address: string) => ({
    instrument: () => (instrumentThere ? { address, serial: `SER-${port}` } : null),
    requestConsent(f: ConsentRequestFrame) {
      frames.push(f);
      steps.push(`${port}: consent-request ${f.services.join(',')} by ${f.answerBy}`);
      return true;
    },
    sessionEnded(session: string, reason: string) {
      steps.push(`${port}: session-ended ${reason}`);
    },
  });
  const mgr = new SessionManager({
    ports: [
      { name: 'p1', iface: 'inst1', tunnel: 'rapvpn0', channel: channel('p1', '100.87.0.9') },
      { name: 'p2', iface: 'inst2', tunnel: 'rapvpn1', channel: channel('p2', '100.87.0.18') },
    ],
    async startVpn(_session, tunnel) {
      steps.push(`vpn start ${tunnel}`);
      let lostCb: ((why: string) => void) | null = null;
      vpns.push({ lose: (why) => lostCb?.(why) });
      const h: VpnHandle = {
        connected: async () => {
          if (opts.vpnFails) throw new Error('TLS handshake failed');
          return { tunnelIp: tunnel === 'rapvpn0' ? '10.200.0.2' : '10.200.0.3' };
        },
        bytes: () => ({ in: 1000, out: 2000 }),
        async stop() {
          steps.push(`vpn stop ${tunnel}`);
        },
        onLost(cb) {
          lostCb = cb;
        },
      };
      return h;
    },
    async applyPinholes(p: Pinhole[]) {
      applies++;
      if (opts.failFirewallAt === applies) {
        steps.push('firewall FAILED');
        throw new Error('nft: Operation not permitted');
      }
      steps.push(`firewall [${p.map((x) => `${x.tunnel}>${x.instrument}:${x.services.join(',')} ${x.timeoutS}s`).join(' ')}]`);
    },
    setForwarding(on) {
      steps.push(`ip_forward ${on ? 1 : 0}`);
    },
    audit: {
      async append(e) {
        audit.push(e);
      },
    },
    log: createLogger({ level: 'error', write: () => {} }),
    refusalsFile: join(dir, 'session-refusals.json'),
    consentTimeoutMs: 120_000,
    maxDurationS: 28_800,
    vpnConnectTimeoutMs: 30_000,
    clock,
  });
  return {
    mgr,
    steps,
    audit,
    frames,
    clock,
    vpns,
    dir,
    actions: () => audit.map((e) => `${e.action}:${e.outcome}`),
    goneInstrument: () => (instrumentThere = false),
  };
}

const REQ: SessionRequest = { port: 'p1', services: [5900, 22], who: 'center:j.doe', why: 'probe error E1042', maxDurationS: 3600, actor: 'center:k1' };

/** Start a request and wait until the prompt went out. */
async function prompted(r: ReturnType<typeof rig>, req: SessionRequest = REQ) {
  const p = r.mgr.open(req);
  await settle();
  return { p, id: r.frames.at(-1)!.session };
}

t.test('approved: prompt, VPN, pinhole, forwarding; center close tears down pinhole first, then VPN; all audited with bytes', async (t) => {
  const r = rig(t);
  const { p, id } = await prompted(r);
  t.match(r.frames[0], { type: 'consent-request', session: id, who: 'center:j.doe', why: 'probe error E1042', services: [5900, 22], maxDurationS: 3600, answerBy: '2026-11-23T12:02:00.000Z' });
  t.equal(r.mgr.list()[0]!.state, 'prompted');
  t.ok(r.mgr.consent('p1', id, 'yes'));
  const res = await p;
  t.strictSame(res, { sessionId: id, outcome: 'active', tunnelIp: '10.200.0.2', services: [5900, 22], expiresAt: '2026-11-23T13:00:00.000Z' });
  t.match(r.mgr.list()[0], { state: 'active', tunnelIp: '10.200.0.2', address: '100.87.0.9', instrument: 'SER-p1', bytes: { in: 1000, out: 2000 } });
  t.ok(await r.mgr.end(id, 'center-close'));
  t.strictSame(r.steps, [
    'p1: consent-request 5900,22 by 2026-11-23T12:02:00.000Z',
    'vpn start rapvpn0',
    'firewall [rapvpn0>100.87.0.9:5900,22 3610s]',
    'ip_forward 1',
    'ip_forward 0',
    'firewall []',
    'vpn stop rapvpn0',
    'p1: session-ended center-close',
  ]);
  t.strictSame(r.actions(), ['session.requested:ok', 'session.prompted:ok', 'session.approved:ok', 'session.started:ok', 'session.ended:center-close']);
  t.match(r.audit.at(-1), { actor: 'center:k1', instrument: 'p1', details: { session: id, serial: 'SER-p1', reason: 'center-close', bytesIn: 1000, bytesOut: 2000 } });
  t.match(r.audit[2], { actor: 'instrument:p1' });
  t.match(r.mgr.list(), [{ id, state: 'ended', endReason: 'center-close' }]);
  t.notOk(await r.mgr.end(id, 'center-close'), 'ending twice: no such session');
});

t.test('denied, timed out, revoked while asking: no VPN, no firewall change, the instrument told', async (t) => {
  const cases = [
    { name: 'no', act: (r: ReturnType<typeof rig>, id: string) => r.mgr.consent('p1', id, 'no'), outcome: 'denied', audit: 'session.denied:no', ended: 'denied' },
    { name: 'timeout', act: (r: ReturnType<typeof rig>) => r.clock.advance(120_000), outcome: 'timed-out', audit: 'session.timeout:denied', ended: 'timeout' },
    { name: 'center withdraws', act: (r: ReturnType<typeof rig>, id: string) => void r.mgr.end(id, 'center-close'), outcome: 'revoked', audit: 'session.denied:revoked', ended: 'denied' },
  ];
  for (const c of cases) {
    const r = rig(t);
    const { p, id } = await prompted(r);
    r.clock.advance(119_999);
    await settle();
    t.equal(r.mgr.list()[0]!.state, 'prompted', `${c.name}: still asking just before the timeout`);
    c.act(r, id);
    t.match(await p, { sessionId: id, outcome: c.outcome }, c.name);
    t.strictSame(r.steps, ['p1: consent-request 5900,22 by 2026-11-23T12:02:00.000Z', `p1: session-ended ${c.ended}`], c.name);
    t.strictSame(r.actions(), ['session.requested:ok', 'session.prompted:ok', c.audit], c.name);
    t.notOk(r.mgr.consent('p1', id, 'yes'), `${c.name}: a late yes is refused (NO_SESSION)`);
  }
});

t.test('never: refused without asking, for that requester on that port only, kept across restarts, cleared by the instrument', async (t) => {
  const r = rig(t);
  const first = await prompted(r);
  r.mgr.consent('p1', first.id, 'never');
  t.match(await first.p, { outcome: 'denied' });
  t.strictSame(JSON.parse(readFileSync(join(r.dir, 'session-refusals.json'), 'utf8')), { p1: ['center:j.doe'] });

  const again = await r.mgr.open(REQ);
  t.equal(again.outcome, 'refused');
  t.equal(r.frames.length, 1, 'not asked again');
  t.strictSame(r.actions().slice(-2), ['session.requested:ok', 'session.denied:refused'], 'audited');

  // Another requester, and the same requester on another port, are still asked.
  const other = await prompted(r, { ...REQ, who: 'center:a.smith' });
  r.mgr.consent('p1', other.id, 'no');
  await other.p;
  const p2 = await prompted(r, { ...REQ, port: 'p2' });
  r.mgr.consent('p2', p2.id, 'no');
  await p2.p;
  t.equal(r.frames.length, 3);

  // A new rapd reads the refusal back.
  const r2 = rig(t, { dir: r.dir });
  t.equal((await r2.mgr.open(REQ)).outcome, 'refused');
  r2.mgr.clearRefusals('p1');
  const asked = await prompted(r2);
  t.equal(r2.frames.length, 1, 'asked again after consent-clear');
  r2.mgr.consent('p1', asked.id, 'no');
  await asked.p;
  t.ok(r2.actions().includes('session.refusals-cleared:ok'));
});

t.test('ends: instrument revoke (its own port only), expiry, VPN loss, rapd stop', async (t) => {
  const open = async (r: ReturnType<typeof rig>, req = REQ) => {
    const { p, id } = await prompted(r, req);
    r.mgr.consent(req.port, id, 'yes');
    await p;
    return id;
  };
  await t.test('local revoke', async (t) => {
    const r = rig(t);
    const id = await open(r);
    t.notOk(await r.mgr.endFromInstrument('p2', id), "another port's instrument cannot end it");
    t.ok(await r.mgr.endFromInstrument('p1', id));
    t.match(r.audit.at(-1), { action: 'session.ended', outcome: 'local-revoke', actor: 'instrument:p1' });
    t.equal(r.steps.at(-1), 'p1: session-ended local-revoke');
  });
  await t.test('expiry at maxDurationS', async (t) => {
    const r = rig(t);
    await open(r, { ...REQ, maxDurationS: 60 });
    r.clock.advance(59_999);
    await settle();
    t.equal(r.mgr.list()[0]!.state, 'active');
    r.clock.advance(1);
    await settle();
    t.match(r.mgr.list()[0], { state: 'ended', endReason: 'expired' });
    t.strictSame(r.steps.slice(-4), ['ip_forward 0', 'firewall []', 'vpn stop rapvpn0', 'p1: session-ended expired']);
  });
  await t.test('VPN loss', async (t) => {
    const r = rig(t);
    await open(r);
    r.vpns[0]!.lose('tunnel reconnecting (ping-restart)');
    await settle();
    t.match(r.mgr.list()[0], { state: 'ended', endReason: 'vpn-loss' });
    t.match(r.audit.at(-1), { outcome: 'vpn-loss', actor: 'rapd' });
  });
  await t.test('rapd stop ends an active and a prompted session; two ports at once keep separate pinholes', async (t) => {
    const r = rig(t);
    await open(r);
    const p2 = r.mgr.open({ ...REQ, port: 'p2', services: [3389] });
    await settle();
    t.equal(r.steps.at(-1), 'p2: consent-request 3389 by 2026-11-23T12:02:00.000Z');
    await r.mgr.stop();
    t.match(await p2, { outcome: 'revoked' });
    // The two end concurrently: p1's own steps in order (pinhole closed before the VPN stops), p2 told too.
    t.strictSame(r.steps.slice(-5).filter((x) => !x.startsWith('p2:')), ['ip_forward 0', 'firewall []', 'vpn stop rapvpn0', 'p1: session-ended rapd-stop']);
    t.ok(r.steps.slice(-5).includes('p2: session-ended rapd-stop'));
    await t.rejects(r.mgr.open(REQ), { code: 'RAP_SESSION', message: 'rapd is stopping' });
  });
  await t.test('two sessions: closing one keeps the other pinhole and forwarding', async (t) => {
    const r = rig(t);
    const a = await open(r);
    await open(r, { ...REQ, port: 'p2', services: [3389] });
    await r.mgr.end(a, 'center-close');
    t.strictSame(r.steps.filter((s) => s.startsWith('firewall') || s.startsWith('ip_forward')), [
      'firewall [rapvpn0>100.87.0.9:5900,22 3610s]',
      'ip_forward 1',
      'firewall [rapvpn0>100.87.0.9:5900,22 3610s rapvpn1>100.87.0.18:3389 3610s]',
      'ip_forward 1',
      'firewall [rapvpn1>100.87.0.18:3389 3610s]',
    ]);
  });
});

t.test('setup failures: nothing left open, the VPN stopped, audited as failed', async (t) => {
  await t.test('firewall cannot be applied', async (t) => {
    const r = rig(t, { failFirewallAt: 1 });
    const { p, id } = await prompted(r);
    r.mgr.consent('p1', id, 'yes');
    await t.rejects(p, { code: 'RAP_SESSION', message: /could not be set up: nft: Operation not permitted/ });
    t.strictSame(r.steps, ['p1: consent-request 5900,22 by 2026-11-23T12:02:00.000Z', 'vpn start rapvpn0', 'firewall FAILED', 'ip_forward 0', 'firewall []', 'vpn stop rapvpn0', 'p1: session-ended failed']);
    t.match(r.audit.at(-1), { action: 'session.ended', outcome: 'failed', details: { error: 'nft: Operation not permitted' } });
    t.equal(r.mgr.list()[0]!.state, 'ended');
    t.equal(r.mgr.degraded(), null, 'the closing apply worked: not degraded');
  });
  await t.test('the pinhole cannot be closed: degraded (the element expires by itself) until an apply works again', async (t) => {
    const r = rig(t, { failFirewallAt: 2 });
    const { p, id } = await prompted(r);
    r.mgr.consent('p1', id, 'yes');
    await p;
    await r.mgr.end(id, 'center-close');
    t.strictSame(r.steps.slice(-4), ['ip_forward 0', 'firewall FAILED', 'vpn stop rapvpn0', 'p1: session-ended center-close'], 'forwarding off and the VPN stopped anyway');
    t.match(r.mgr.degraded(), /^firewall: the last session pinhole change failed, the previous ruleset is in place \(its pinholes expire on their own\): nft: Operation not permitted$/);
    t.ok(r.audit.some((e) => e.action === 'firewall.applied' && e.outcome === 'failed'));
    const again = await prompted(r);
    r.mgr.consent('p1', again.id, 'yes');
    await again.p;
    t.equal(r.mgr.degraded(), null, 'cleared by the next apply that worked');
    await r.mgr.end(again.id, 'center-close');
  });
  await t.test('the tunnel does not come up', async (t) => {
    const r = rig(t, { vpnFails: true });
    const { p, id } = await prompted(r);
    r.mgr.consent('p1', id, 'yes');
    await t.rejects(p, { code: 'RAP_SESSION', message: /TLS handshake failed/ });
    t.strictSame(r.steps, ['p1: consent-request 5900,22 by 2026-11-23T12:02:00.000Z', 'vpn start rapvpn0', 'vpn stop rapvpn0', 'p1: session-ended failed']);
  });
});

t.test('requests that cannot be asked are refused with a reason, and audited', async (t) => {
  const r = rig(t);
  const cases: [Partial<SessionRequest>, RegExp][] = [
    [{ port: 'p9' }, /no instrument port 'p9' with an interface/],
    [{ services: [] }, /services: expected 1-8 TCP ports/],
    [{ services: [22, 22] }, /services: a port is listed twice/],
    [{ services: [70000] }, /services: expected 1-8 TCP ports/],
    [{ who: '' }, /who: expected 1-128 characters/],
    [{ why: 'a\u0007' }, /why: expected at most 1024 characters/],
    [{ maxDurationS: 28_801 }, /maxDurationS: expected a whole number of seconds from 1 to 28800/],
  ];
  for (const [patch, msg] of cases) await t.rejects(r.mgr.open({ ...REQ, ...patch }), { code: 'RAP_SESSION', message: msg }, JSON.stringify(patch));
  const { id } = await prompted(r);
  await t.rejects(r.mgr.open({ ...REQ, services: [80] }), { message: `port p1 already has a session (${id})` }, 'one session per instrument');
  r.goneInstrument();
  await t.rejects(r.mgr.open({ ...REQ, port: 'p2' }), { message: 'no identified instrument is connected on port p2' });
  t.ok(r.audit.some((e) => e.action === 'session.requested' && e.outcome === 'rejected' && e.instrument === 'p2'));
  t.notOk(existsSync(join(r.dir, 'session-refusals.json')));
  r.mgr.consent('p1', id, 'no');
});

t.test('a damaged refusals file is reported and every request is asked', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rap-session-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'session-refusals.json'), '{"p1": "everyone"}');
  const r = rig(t, { dir });
  const { p, id } = await prompted(r);
  t.equal(r.frames.length, 1);
  r.mgr.consent('p1', id, 'no');
  await p;
});
