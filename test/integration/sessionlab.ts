// The remote-session lab shared by the integration test and the session
// benchmark: namespaces from netns.ts; in "wan" the center (the real openvpn
// server from `rap-center vpn init`, and `rap-center serve` with a command
// key and its admin socket), in "box" the built rapd with two static
// instrument ports, at the instruments the simulator (the user who answers)
// and TCP services. PKI and keys are made at setup time. Everything started
// here is stopped by PID at teardown.

import type { ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Test } from 'tap';
import type { SessionReport } from '../../src/protocol/control.ts';
import { callControl } from '../../src/rapctl/client.ts';
import { CENTER_BIN, makePki, requireRapd, runBinary, waitFor } from './helpers.ts';
import { ADDR, makeLab, netnsSkipReason, type Lab } from './netns.ts';

export const SYS_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

/** Why the session lab cannot run here, or null. */
export function sessionLabSkipReason(): string | null {
  const missing = ['openvpn', 'nmap'].find((tool) => !['/usr/sbin', '/usr/bin'].some((d) => existsSync(join(d, tool))));
  return netnsSkipReason() ?? (missing ? `${missing} is missing (make integration installs it: image/deps.sh integration)` : null);
}

export interface Opened {
  sessionId: string;
  outcome: string;
  tunnelIp?: string;
}

export async function makeSessionLab(t: Pick<Test, 'teardown'>, opts: { logLevel?: string } = {}) {
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
  if (init.code !== 0) throw new Error(`rap-center vpn init failed: ${init.stderr}`);
  const server = lab.spawn(ns.wan, ['openvpn', '--config', join(dir, 'vpn', 'server.conf')], { PATH: SYS_PATH });
  let serverLog = '';
  server.stdout!.on('data', (b: Buffer) => (serverLog += b.toString()));
  await waitFor('the center openvpn server', () => serverLog.includes('Initialization Sequence Completed'), 30_000).catch((e: unknown) => {
    throw new Error(`${String(e)}: ${serverLog}`);
  });

  // The center's command service in the same namespace: signs session.open/close with k1.
  const keyOut = await runBinary([CENTER_BIN, 'command-key', 'generate', '--dir', join(dir, 'keys'), '--id', 'k1'], { PATH: SYS_PATH });
  if (keyOut.code !== 0) throw new Error(`rap-center command-key generate failed: ${keyOut.stderr}`);
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
      log: { level: opts.logLevel ?? 'debug' },
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

  return {
    lab,
    ns,
    dir,
    socket,
    admin,
    rapd,
    startRapd,
    rapdOut: () => rapdOut,
    clearRapdOut: () => void (rapdOut = ''),
    simErr: () => simErr,
    startSim,
    stopSim,
    open,
    sessions,
    tunnels,
    pinholes,
    ipForward,
  };
}

export type SessionLab = Awaited<ReturnType<typeof makeSessionLab>>;
export type { Lab };
