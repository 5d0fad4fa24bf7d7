// Remote sessions end to end in network namespaces this test makes: the
// "wan" namespace is the center (the real openvpn server from `rap-center vpn
// init`), the "box" namespace runs the built rapd with real nft, and two
// instrument namespaces run the simulator (the user at the instrument) and a
// TCP service standing in for the instrument's remote-desktop port.
//
// Shown: nothing on the box's WAN side is open (nmap); an approved session
// makes exactly that instrument's approved port reachable through the tunnel
// and nothing else (another port of the same instrument, the other
// instrument, the box's own agent; nmap of the tunnel address finds the one
// port); closing it removes the tunnel, the pinhole and forwarding; denied and
// unanswered requests open nothing; the instrument's own session-end tears
// everything down within 2 s; a rapd killed during a session leaves an
// openvpn that the next rapd stops (by its PID file) before anything else.

import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { callControl } from '../../src/rapctl/client.ts';
import { CENTER_BIN, collect, runBinary, waitFor } from './helpers.ts';
import { ADDR } from './netns.ts';
import { SYS_PATH, makeSessionLab, sessionLabSkipReason, type Opened } from './sessionlab.ts';

const skip = sessionLabSkipReason();

t.test('remote session: consent, a real OpenVPN tunnel, one pinhole, teardown', { skip: skip ?? false }, async (t) => {
  const s = await makeSessionLab(t);
  const { lab, ns, dir, socket, admin, rapd, startSim, stopSim, open, sessions, tunnels, pinholes, ipForward } = s;
  t.equal(await ipForward(), '1', 'the lab starts with forwarding on');
  let rapdChild = await s.startRapd();
  t.equal(await ipForward(), '0', 'rapd switches forwarding off at start: no session is open');
  const nmap = async (host: string): Promise<number[]> => {
    const out = await lab.exec(ns.wan, ['nmap', '-n', '-Pn', '-sT', '-p-', '--max-retries', '0', '--max-rtt-timeout', '200ms', '--min-rate', '3000', '-oG', '-', host]);
    return [...out.matchAll(/(\d+)\/open\//g)].map((m) => Number(m[1]));
  };

  await t.test('before any session: the WAN side has nothing open', async (t) => {
    t.strictSame(await nmap(ADDR.boxWan), [], `nmap -p- ${ADDR.boxWan}`);
    t.equal(await tunnels(), 0);
  });

  await t.test('approved: exactly the approved port of that instrument is reachable through the tunnel', async (t) => {
    const sim = await startSim(ns.i1, ADDR.gw1, 'yes');
    const r = await open('p1', [5900]);
    t.match(r, { outcome: 'active', tunnelIp: /^10\.200\.0\.\d+$/ });
    const tip = r.tunnelIp!;
    t.equal(await ipForward(), '1', 'forwarding on while the session is active');
    t.equal(await lab.probe(ns.wan, tip, 5900, 3000), 'connected inst1-rdp', 'center -> tunnel address:5900 reaches instrument 1');
    t.equal(await lab.probe(ns.wan, tip, 22, 1500), 'timeout', 'another port of the same instrument: closed');
    t.equal(await lab.probe(ns.wan, tip, 7400, 1500), 'timeout', "the box's own agent port through the tunnel: closed");
    t.equal(await lab.probe(ns.wan, ADDR.inst1, 5900, 1500), 'timeout', 'instrument 1 from the WAN, not through the tunnel: closed');
    t.equal(await lab.probe(ns.wan, ADDR.inst2, 5900, 1500), 'timeout', 'the other instrument: closed');
    t.strictSame(await nmap(tip), [5900], 'nmap of the tunnel address finds only the approved port');
    t.strictSame(await nmap(ADDR.boxWan), [], 'the WAN address still has nothing open');
    t.match(await sessions(), [{ id: r.sessionId, port: 'p1', state: 'active', instrument: /^SIM-yes-/, address: ADDR.inst1, services: [5900] }]);

    const closed = await callControl(socket, { method: 'session-close', args: { sessionId: r.sessionId } }, 30_000);
    t.ok(closed.ok);
    t.equal(await tunnels(), 0, 'tunnel gone');
    t.notOk(await pinholes(), 'pinhole gone');
    t.equal(await ipForward(), '0', 'forwarding off again');
    t.equal(await lab.probe(ns.wan, tip, 5900, 1500), 'timeout', 'the port is closed again');
    const ended = (await sessions()).find((s) => s.id === r.sessionId);
    t.match(ended, { state: 'ended', endReason: 'center-close' });
    t.ok((ended?.bytes?.in ?? 0) > 0 && (ended?.bytes?.out ?? 0) > 0, `bytes counted: ${JSON.stringify(ended?.bytes)}`);
    await waitFor('the instrument told', () => s.simErr().includes(`session: ended ${r.sessionId} (center-close)`), 5000);
    await stopSim(sim);
  });

  await t.test('denied and unanswered: no tunnel, nothing reachable', async (t) => {
    const no = await startSim(ns.i2, ADDR.gw2, 'no');
    t.match(await open('p2', [5900]), { outcome: 'denied' });
    t.equal(await tunnels(), 0);
    t.notOk(await pinholes());
    await stopSim(no);
    const ignore = await startSim(ns.i2, ADDR.gw2, 'ignore');
    const started = Date.now();
    t.match(await open('p2', [5900]), { outcome: 'timed-out' });
    t.ok(Date.now() - started >= 4900, 'denied only after the consent timeout (5 s here)');
    t.equal(await tunnels(), 0);
    t.notOk(await pinholes());
    t.equal(await ipForward(), '0');
    await stopSim(ignore);
  });

  await t.test("the instrument's session-end: tunnel and pinhole gone within 2 s", async (t) => {
    // The user ends it 8 s after saying yes (the tunnel takes a second or two of that).
    const sim = await startSim(ns.i1, ADDR.gw1, 'yes', ['--end-session', '8']);
    const r = await open('p1', [5900]);
    t.equal(r.outcome, 'active');
    const probed = await lab.probe(ns.wan, r.tunnelIp!, 5900, 3000);
    t.equal(probed, 'connected inst1-rdp', 'reachable while it lasts');
    if (probed !== 'connected inst1-rdp') t.comment(s.rapdOut().split('\n').filter((l) => l.includes(r.sessionId) || l.includes('openvpn')).join('\n'));
    await waitFor('the instrument ended it', () => s.simErr().includes(`session: ended ${r.sessionId} (local-revoke)`), 15_000);
    const line = (msg: string) => s.rapdOut().split('\n').find((l) => l.includes(`"msg":"${msg}"`) && l.includes(r.sessionId));
    const asked = Date.parse(JSON.parse(line('session end asked by the instrument')!).ts);
    const done = Date.parse(JSON.parse(line('session ended')!).ts);
    t.ok(done - asked <= 2000, `torn down ${done - asked} ms after the instrument asked`);
    t.equal(await tunnels(), 0);
    t.notOk(await pinholes());
    t.equal(await lab.probe(ns.wan, r.tunnelIp!, 5900, 1500), 'timeout');
    await stopSim(sim);
  });

  await t.test('the real trigger: a signed session.open from the center, then session.close; every step in the verified audit chain', async (t) => {
    const sim = await startSim(ns.i1, ADDR.gw1, 'yes');
    await waitFor('the command channel', () => s.rapdOut().includes('"msg":"command channel open"'), 30_000);
    const command = async (type: string, args: unknown) => {
      const r = await runBinary([CENTER_BIN, 'command', '--admin', admin, '--device', 'box-1', '--type', type, '--args', JSON.stringify(args), '--timeout-ms', '60000'], { PATH: SYS_PATH }, 90_000);
      t.equal(r.code, 0, `${type}: ${r.stdout}${r.stderr}`);
      return JSON.parse(r.stdout) as { status: string; result: Opened };
    };
    const opened = await command('session.open', { port: 'p1', services: [5900], who: 'center:ops', why: 'signed command', maxDurationS: 600 });
    t.match(opened, { status: 'ok', result: { outcome: 'active', tunnelIp: /^10\.200\.0\.\d+$/ } });
    const id = opened.result.sessionId;
    t.equal(await lab.probe(ns.wan, opened.result.tunnelIp!, 5900, 3000), 'connected inst1-rdp');
    t.match(await command('session.close', { sessionId: id }), { status: 'ok', result: { sessionId: id, closed: true } });
    t.equal(await tunnels(), 0);
    t.notOk(await pinholes());

    const audit = await runBinary([rapd, 'ctl', '--socket', socket, 'audit', '--json'], { PATH: SYS_PATH });
    t.equal(audit.code, 0, audit.stderr);
    const records = audit.stdout.trim().split('\n').map((l) => JSON.parse(l) as { actor: string; action: string; outcome: string; details: Record<string, unknown> });
    const mine = records.filter((r) => r.details['session'] === id).map((r) => `${r.actor} ${r.action} ${r.outcome}`);
    t.strictSame(mine, [
      'center:k1 session.requested ok',
      'instrument:p1 session.prompted ok',
      'instrument:p1 session.approved ok',
      'center:k1 session.started ok',
      'center:k1 session.ended center-close',
    ]);
    const ended = records.find((r) => r.details['session'] === id && r.action === 'session.ended')!;
    t.ok(Number(ended.details['bytesIn']) > 0 && Number(ended.details['bytesOut']) > 0, 'bytes in the audit record');
    t.ok(records.some((r) => r.action === 'command.accepted' && r.details['type'] === 'session.open'), 'the command itself was accepted and audited');
    const verify = await runBinary([rapd, 'ctl', '--socket', socket, 'audit', 'verify'], { PATH: SYS_PATH });
    t.equal(verify.code, 0, verify.stdout + verify.stderr);
    await stopSim(sim);
  });

  await t.test('rapd killed during a session: the next rapd stops the leftover openvpn and opens nothing', async (t) => {
    const sim = await startSim(ns.i1, ADDR.gw1, 'yes');
    const r = await open('p1', [5900]);
    t.equal(r.outcome, 'active');
    const pid = Number(readFileSync(join(dir, 'run', 'vpn-rapvpn0.pid'), 'utf8'));
    rapdChild.kill('SIGKILL');
    await collect(rapdChild, 10_000);
    t.ok(existsSync(`/proc/${pid}`), 'openvpn outlived the killed rapd');
    s.clearRapdOut();
    rapdChild = await s.startRapd();
    await waitFor('leftover openvpn gone', () => !existsSync(`/proc/${pid}`), 10_000);
    t.match(s.rapdOut(), /stopped an openvpn left by a previous rapd/);
    t.notOk(await pinholes(), 'the firewall was re-applied without the pinhole');
    t.equal(await ipForward(), '0');
    t.equal(await lab.probe(ns.wan, r.tunnelIp!, 5900, 1500), 'timeout');
    await stopSim(sim);
  });

  await t.test('rapd stop ends an active session: nothing left open', async (t) => {
    const sim = await startSim(ns.i1, ADDR.gw1, 'yes');
    t.equal((await open('p1', [5900])).outcome, 'active');
    rapdChild.kill('SIGTERM');
    const exit = await collect(rapdChild, 20_000);
    t.equal(exit.code, 0);
    t.equal(await tunnels(), 0);
    t.notOk(await pinholes());
    t.equal(await ipForward(), '0');
    t.notOk(existsSync(join(dir, 'run', 'vpn-rapvpn0.pid')));
    await waitFor('the instrument told', () => /session: ended \S+ \(rapd-stop\)/.test(s.simErr()), 5000);
    await stopSim(sim);
  });
});
