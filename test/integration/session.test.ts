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
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { SessionReport } from '../../src/protocol/control.ts';
import { callControl } from '../../src/rapctl/client.ts';
import { CENTER_BIN, collect, makePki, requireRapd, runBinary, waitFor } from './helpers.ts';
import { ADDR, makeLab, netnsSkipReason } from './netns.ts';

const SYS_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const missing = ['openvpn', 'nmap'].find((tool) => !['/usr/sbin', '/usr/bin'].some((d) => existsSync(join(d, tool))));
const skip = netnsSkipReason() ?? (missing ? `${missing} is missing (make integration installs it: image/deps.sh integration)` : null);

interface Opened {
  sessionId: string;
  outcome: string;
  tunnelIp?: string;
}

t.test('remote session: consent, a real OpenVPN tunnel, one pinhole, teardown', { skip: skip ?? false }, async (t) => {
  const rapd = requireRapd();
  const lab = await makeLab(t);
  const { ns } = lab;
  // Short: unix socket paths (control, openvpn management) are limited to 108 bytes.
  const dir = mkdtempSync('/tmp/rap-sess-');
  t.teardown(() => {
    // An openvpn a failed test left behind (its rapd killed): stopped by its PID file only.
    for (const dev of ['rapvpn0', 'rapvpn1']) {
      const f = join(dir, 'run', `vpn-${dev}.pid`);
      if (!existsSync(f)) continue;
      const pid = Number(readFileSync(f, 'utf8'));
      const comm = `/proc/${pid}/comm`;
      if (existsSync(comm) && readFileSync(comm, 'utf8').trim() === 'openvpn') process.kill(pid, 'SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  });

  // The center: PKI, OpenVPN server config and tls-crypt key from rap-center itself.
  const pki = await makePki(dir, { ips: [ADDR.wanPeer] });
  const init = await runBinary([CENTER_BIN, 'vpn', 'init', '--dir', join(dir, 'vpn'), '--pki', pki, '--listen', `${ADDR.wanPeer}:443`], { PATH: SYS_PATH }, 60_000);
  t.equal(init.code, 0, init.stderr);
  const server = lab.spawn(ns.wan, ['openvpn', '--config', join(dir, 'vpn', 'server.conf')], { PATH: SYS_PATH });
  let serverLog = '';
  server.stdout!.on('data', (b: Buffer) => (serverLog += b.toString()));
  await waitFor('the center openvpn server', () => serverLog.includes('Initialization Sequence Completed'), 30_000).catch((e: unknown) => {
    throw new Error(`${String(e)}: ${serverLog}`);
  });

  // The center's command service in the same namespace: signs session.open/close with k1.
  const keyOut = await runBinary([CENTER_BIN, 'command-key', 'generate', '--dir', join(dir, 'keys'), '--id', 'k1'], { PATH: SYS_PATH });
  t.equal(keyOut.code, 0, keyOut.stderr);
  const k1 = JSON.parse(readFileSync(join(dir, 'keys', 'k1.pub'), 'utf8')) as { id: string; publicKey: string };
  const admin = join(dir, 'admin.sock');
  const centerProc = lab.spawn(ns.wan, [CENTER_BIN, 'serve', '--db', join(dir, 'center.db'), '--listen', `${ADDR.wanPeer}:8443`, '--pki', pki, '--command-key', join(dir, 'keys', 'k1.key'), '--admin', admin], { PATH: SYS_PATH });
  let centerOut = '';
  centerProc.stdout!.on('data', (b: Buffer) => (centerOut += b.toString()));
  await waitFor('rap-center serve', () => centerOut.includes('listening on') && existsSync(admin), 30_000);

  // The box: its PKI files where the config says, rapd with two static instrument ports.
  const boxPki = join(dir, 'boxpki');
  mkdirSync(boxPki, { mode: 0o700 });
  copyFileSync(join(pki, 'ca.pem'), join(boxPki, 'center-ca.pem'));
  copyFileSync(join(pki, 'devices', 'box-1.pem'), join(boxPki, 'device.pem'));
  copyFileSync(join(pki, 'devices', 'box-1.key'), join(boxPki, 'device.key'));
  copyFileSync(join(dir, 'vpn', 'tls-crypt.key'), join(boxPki, 'vpn-tls-crypt.key'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  // networkd does not run here; the test put the gateway addresses on (makeLab).
  writeFileSync(join(bin, 'networkctl'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  const config = join(dir, 'rapd.json');
  writeFileSync(
    config,
    JSON.stringify({
      device: { id: 'box-1' },
      commands: { keys: [k1], reconnectMaxMs: 2000 },
      proxy: { fromEnvironment: false },
      paths: { state: join(dir, 'state'), runtime: join(dir, 'run'), networkd: join(dir, 'networkd') },
      ports: [
        { name: 'p1', interface: 'inst1', dhcp: false, pollIntervalSec: 0 },
        { name: 'p2', interface: 'inst2', dhcp: false, pollIntervalSec: 0 },
      ],
      center: { url: `https://${ADDR.wanPeer}:8443`, caFile: join(boxPki, 'center-ca.pem') },
      tls: { certFile: join(boxPki, 'device.pem'), keyFile: join(boxPki, 'device.key') },
      // vpn.host: the host of center.url.
      vpn: { port: 443, serverName: 'localhost', tlsCryptFile: join(boxPki, 'vpn-tls-crypt.key') },
      session: { consentTimeoutSec: 5 },
      log: { level: 'debug' },
    }),
  );
  const socket = join(dir, 'run', 'rapd.sock');
  let rapdOut = '';
  const startRapd = async (): Promise<ChildProcess> => {
    const child = lab.spawn(ns.box, [rapd, '--config', config], { PATH: `${bin}:${SYS_PATH}` });
    child.stdout!.on('data', (b: Buffer) => (rapdOut += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (rapdOut += b.toString()));
    await waitFor('rapd ready', () => existsSync(socket) && rapdOut.includes('"msg":"rapd ready"'), 30_000);
    return child;
  };
  const ipForward = async () => (await lab.exec(ns.box, ['cat', '/proc/sys/net/ipv4/ip_forward'])).trim();
  t.equal(await ipForward(), '1', 'the lab starts with forwarding on');
  let rapdChild = await startRapd();
  t.equal(await ipForward(), '0', 'rapd switches forwarding off at start: no session is open');

  // The instrument side: the "remote desktop" (5900) and another service (22) on instrument 1, the same on instrument 2.
  await lab.listen(ns.i1, 'inst1-rdp', [`${ADDR.inst1}:5900`]);
  await lab.listen(ns.i1, 'inst1-ssh', [`${ADDR.inst1}:22`]);
  await lab.listen(ns.i2, 'inst2-rdp', [`${ADDR.inst2}:5900`]);
  let simErr = '';
  let sims = 0;
  const startSim = async (nsName: string, gw: string, consent: string, extra: string[] = []): Promise<ChildProcess> => {
    // A new serial each time: the agent logs an instrument when its serial changes.
    const serial = `SIM-${consent}-${++sims}`;
    const sim = lab.spawn(nsName, [rapd, 'ctl', 'instrument-sim', '--connect', `${gw}:7400`, '--serial', serial, '--count', '100000', '--rate', '2', '--duration', '300', '--consent', consent, ...extra], { PATH: SYS_PATH });
    sim.stderr!.on('data', (b: Buffer) => (simErr += b.toString()));
    await waitFor(`instrument ${serial} identified`, () => rapdOut.includes(`"serial":"${serial}"`), 20_000);
    return sim;
  };
  const stopSim = async (sim: ChildProcess) => {
    sim.kill('SIGKILL');
    if (sim.exitCode === null && sim.signalCode === null) await new Promise((r) => sim.once('close', r));
  };
  const open = async (port: string, services: number[]): Promise<Opened> => {
    const res = await callControl(socket, { method: 'session-open', args: { port, services, who: 'center:it-test', why: 'integration test', maxDurationS: 600 } }, 60_000);
    if (!res.ok) throw new Error(`session-open refused: ${res.error.message}`);
    return res.result as Opened;
  };
  const sessions = async (): Promise<SessionReport[]> => {
    const res = await callControl(socket, { method: 'sessions' });
    if (!res.ok) throw new Error(res.error.message);
    return res.result;
  };
  const tunnels = async () => (await lab.exec(ns.box, ['ip', '-o', 'link', 'show'])).split('\n').filter((l) => /rapvpn/.test(l)).length;
  const pinholes = async () => (await lab.exec(ns.box, ['nft', 'list', 'table', 'inet', 'rapbox'])).includes('session_pinholes');
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
    await waitFor('the instrument told', () => simErr.includes(`session: ended ${r.sessionId} (center-close)`), 5000);
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
    if (probed !== 'connected inst1-rdp') t.comment(rapdOut.split('\n').filter((l) => l.includes(r.sessionId) || l.includes('openvpn')).join('\n'));
    await waitFor('the instrument ended it', () => simErr.includes(`session: ended ${r.sessionId} (local-revoke)`), 15_000);
    const line = (msg: string) => rapdOut.split('\n').find((l) => l.includes(`"msg":"${msg}"`) && l.includes(r.sessionId));
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
    await waitFor('the command channel', () => rapdOut.includes('"msg":"command channel open"'), 30_000);
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
    rapdOut = '';
    rapdChild = await startRapd();
    await waitFor('leftover openvpn gone', () => !existsSync(`/proc/${pid}`), 10_000);
    t.match(rapdOut, /stopped an openvpn left by a previous rapd/);
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
    await waitFor('the instrument told', () => /session: ended \S+ \(rapd-stop\)/.test(simErr), 5000);
    await stopSim(sim);
  });
});
