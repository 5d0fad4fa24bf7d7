// Wires the session manager to the host: the port agents as consent
// channels, the real openvpn through the subprocess door, the firewall
// (re-rendered whole with the pinholes), ip_forward through paths.ts, and the
// audit log. Only the daemon calls this; tests of the state machine use
// session.ts with fakes.

import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage, isRapError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { resolveProxy } from '../lib/proxy.ts';
import type { Runner } from '../lib/run.ts';
import type { PortAgent } from './agent.ts';
import type { CommandHandler, CommandResult } from './commands.ts';
import type { Config } from './config.ts';
import { applyFirewall, firewallPolicy, renderFirewall, type FirewallAdaptor } from './firewall.ts';
import { netPorts } from './network.ts';
import { openvpnStarter, reapStaleVpns } from './openvpn.ts';
import type { Paths } from './paths.ts';
import { SessionManager, type AuditSink, type SessionPort, type SessionRequest } from './session.ts';

export interface SessionHostDeps {
  config: Config;
  paths: Paths;
  log: Logger;
  run: Runner;
  firewall: FirewallAdaptor;
  agents: PortAgent[];
  audit: AuditSink;
  env: NodeJS.ProcessEnv;
}

/** Where the session VPN connects: `vpn.host` or the center's host. */
function vpnTarget(config: Config): { host: string; port: number; serverName: string } {
  const centerHost = config['center.url'] === '' ? '' : new URL(config['center.url']).hostname;
  const host = config['vpn.host'] || centerHost;
  if (host === '') throw new RapError('RAP_SESSION', 'no VPN server: set vpn.host or center.url');
  return { host, port: config['vpn.port'], serverName: config['vpn.serverName'] || centerHost || host };
}

/**
 * Switches IPv4 forwarding, writing only a change. The image boots with
 * forwarding off, and a sandbox that keeps /proc/sys read-only
 * (ProtectKernelTunables) must not stop rapd from starting: it fails the
 * first session instead, with the reason. Returns whether it wrote.
 */
export function setIpForwarding(path: string, on: boolean, log: Logger): boolean {
  const want = on ? '1' : '0';
  if (readFileSync(path, 'utf8').trim() === want) return false;
  writeFileSync(path, `${want}\n`);
  log.info(on ? 'ip forwarding on (a session is active)' : 'ip forwarding off');
  return true;
}

/**
 * The session manager for this box, or null when no port has an interface.
 * At start nothing may be left open: a leftover openvpn (by its PID file) is
 * stopped and forwarding is switched off (the firewall was just applied
 * without pinholes).
 */
export function startSessionHost(d: SessionHostDeps): SessionManager | null {
  const { config, paths, log } = d;
  const net = netPorts(config);
  if (net.length === 0) return null;
  reapStaleVpns(paths.runtime, paths.proc, log);
  const setForwarding = (on: boolean): void => void setIpForwarding(paths.ipForward, on, log);
  setForwarding(false);

  const ports: SessionPort[] = [];
  net.forEach((p, i) => {
    const agent = d.agents.find((a) => a.status().name === p.name);
    if (!agent) return;
    ports.push({
      name: p.name,
      iface: p.iface,
      tunnel: `rapvpn${i}`,
      channel: {
        instrument: () => agent.sessionInstrument(),
        requestConsent: (f) => agent.requestConsent(f),
        sessionEnded: (s, r) => agent.sessionEnded(s, r),
      },
    });
  });

  const starter = openvpnStarter({ run: d.run, log });
  const mgr = new SessionManager({
    ports,
    async startVpn(_session, tunnel) {
      const target = vpnTarget(config);
      const proxy = resolveProxy({
        explicit: config['proxy.url'],
        fromEnvironment: config['proxy.fromEnvironment'],
        noProxy: config['proxy.noProxy'],
        env: d.env,
        target: new URL(`https://${target.host}:${target.port}/`),
      });
      let proxyAuthFile: string | null = null;
      if (proxy?.username !== undefined) {
        proxyAuthFile = paths.vpnFile(tunnel, 'auth');
        writeFileDurable(proxyAuthFile, `${proxy.username}\n${proxy.password ?? ''}\n`, 0o600);
      }
      const handle = await starter.start({
        dev: tunnel,
        remoteHost: target.host,
        remotePort: target.port,
        serverName: target.serverName,
        caFile: config['center.caFile'],
        certFile: config['tls.certFile'],
        keyFile: config['tls.keyFile'],
        tlsCryptFile: config['vpn.tlsCryptFile'],
        proxy,
        proxyAuthFile,
        managementSocket: paths.vpnFile(tunnel, 'sock'),
        pidFile: paths.vpnFile(tunnel, 'pid'),
      });
      // The proxy credentials live only as long as the session's VPN.
      const auth = proxyAuthFile;
      return auth === null ? handle : { ...handle, stop: () => handle.stop().finally(() => rmSync(auth, { force: true })) };
    },
    async applyPinholes(pinholes) {
      await applyFirewall(d.firewall, renderFirewall(firewallPolicy(config, pinholes)));
      d.audit.append({ actor: 'rapd', action: 'firewall.applied', outcome: 'ok', details: { pinholes: pinholes.map((p) => ({ session: p.session, port: p.port, services: p.services })) } }).catch((e: unknown) => log.error('audit append failed', { error: errorMessage(e) }));
    },
    setForwarding,
    audit: d.audit,
    log: log.child({ part: 'sessions' }),
    refusalsFile: paths.sessionRefusals,
    consentTimeoutMs: config['session.consentTimeoutSec'] * 1000,
    maxDurationS: config['session.maxDurationSec'],
    vpnConnectTimeoutMs: config['session.vpnConnectTimeoutSec'] * 1000,
  });
  for (const agent of d.agents) {
    agent.setSessionHandler({
      consent: (port, session, answer) => mgr.consent(port, session, answer),
      end: (port, session) => mgr.endFromInstrument(port, session),
      clear: (port) => mgr.clearRefusals(port),
    });
  }
  return mgr;
}

/** Session args of a command or a control request (their types are checked by the session manager). */
function sessionRequest(args: unknown, actor: string): SessionRequest {
  const a = (args !== null && typeof args === 'object' && !Array.isArray(args) ? args : {}) as Record<string, unknown>;
  return {
    port: a['port'] as string,
    services: a['services'] as number[],
    who: a['who'] as string,
    why: (a['why'] ?? '') as string,
    maxDurationS: a['maxDurationS'] as number,
    actor,
  };
}

/** A session request from the control socket (an operator at the box). */
export function localSessionRequest(args: Record<string, unknown>): SessionRequest {
  return sessionRequest(args, 'operator:local');
}

/**
 * The signed commands (docs/commands.md): `session.open` resolves once the
 * session is active or was refused (it may wait the whole consent timeout;
 * the channel keeps other commands going meanwhile), `session.close` once it
 * is torn down. The actor is the center key that signed the command.
 */
export function registerSessionCommands(router: { register(type: string, h: CommandHandler): void }, mgr: SessionManager): void {
  const fail = (e: unknown): CommandResult => ({ status: 'error', error: { code: isRapError(e) ? e.code : 'RAP_SESSION', message: errorMessage(e) } });
  router.register('session.open', async (cmd) => {
    try {
      return { status: 'ok', result: await mgr.open(sessionRequest(cmd.args, `center:${cmd.keyId}`)) };
    } catch (e) {
      return fail(e);
    }
  });
  router.register('session.close', async (cmd) => {
    const id = (cmd.args as { sessionId?: unknown } | null)?.sessionId;
    if (typeof id !== 'string' || id === '') return fail(new RapError('RAP_SESSION', 'session.close args.sessionId: expected a session id'));
    if (!(await mgr.end(id, 'center-close'))) return fail(new RapError('RAP_SESSION', `no open session ${id}`));
    return { status: 'ok', result: { sessionId: id, closed: true } };
  });
}
