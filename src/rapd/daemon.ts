// rapd's lifecycle: check what it needs, start its parts, tell systemd, keep
// the watchdog fed, and stop cleanly. Everything host-facing is passed in, so
// tests run the whole daemon against a temporary tree.

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { run as realRun, type Runner } from '../lib/run.ts';
import type { NetworkReport, StatusReport } from '../protocol/control.ts';
import { redactConfig, type Config } from './config.ts';
import { startControlServer, type ControlServer } from './control.ts';
import { PortAgent } from './agent.ts';
import { FIREWALL_TABLE, applyFirewall, firewallPolicy, nftAdaptor, renderFirewall, type FirewallAdaptor } from './firewall.ts';
import { applyNetworkFiles, netPorts, renderNetworkFiles } from './network.ts';
import type { Notifier } from './notify.ts';
import { MessageStore } from './store.ts';
import type { AuditSink, SessionManager } from './session.ts';
import { journalAudit, localSessionRequest, startSessionHost } from './session-host.ts';
import { Uplink } from './uplink.ts';
import type { Paths } from './paths.ts';
import { RAPD_VERSION } from './version.ts';

export interface DaemonDeps {
  config: Config;
  paths: Paths;
  log: Logger;
  notifier: Notifier;
  now?: () => Date;
  /** Environment for proxy settings (HTTPS_PROXY, NO_PROXY...). */
  env?: NodeJS.ProcessEnv;
  /** The subprocess door for `networkctl` (and `nft` unless `firewall` is given). */
  run?: Runner;
  firewall?: FirewallAdaptor;
  /** Longest wait between bind retries while a port address is missing. */
  bindRetryMaxMs?: number;
  /** Where session and firewall events are audited (default: the journal). */
  audit?: AuditSink;
}

export interface Daemon {
  status(): StatusReport;
  stop(reason: string): Promise<void>;
}

/** Boot slot from the kernel command line ("rapbox.slot=a"), if any. */
export function slotFromCmdline(cmdline: string): string | null {
  const m = /(?:^|\s)rapbox\.slot=([ab])(?:\s|$)/.exec(cmdline);
  return m?.[1] ?? null;
}

function readSlot(path: string): string | null {
  try {
    return slotFromCmdline(readFileSync(path, 'utf8').replaceAll('\0', ' '));
  } catch {
    return null;
  }
}

/** Fail early, with the path, when the state directory cannot be written. */
function checkStateDir(dir: string, record: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileDurable(join(dir, 'rapd.instance.json'), record);
  } catch (e) {
    throw new RapError('RAP_STATE_DIR', `state directory ${dir} is not writable: ${errorMessage(e)}`, { dir }, { cause: e });
  }
}

/**
 * With any port on an interface: the firewall first (the islands are closed
 * before networkd brings their addresses up), then the networkd files. Both
 * stay in place when rapd stops: stopping never opens the box. Nothing is
 * touched when all ports are loopback/dev ports.
 */
/** nft, networkctl and openvpn alike: the command line in the debug log. */
function loggedRunner(deps: DaemonDeps): Runner {
  const door = deps.run ?? realRun;
  return (argv, opts) => door(argv, { ...opts, onStart: (cmd) => deps.log.debug('run', { cmd }) });
}

async function applyNetwork(deps: DaemonDeps, now: () => Date, run: Runner, fw: FirewallAdaptor): Promise<NetworkReport | null> {
  const { config, paths, log } = deps;
  if (netPorts(config).length === 0) return null;
  const state = await applyFirewall(fw, renderFirewall(firewallPolicy(config)));
  const files = renderNetworkFiles(config);
  const applied = await applyNetworkFiles(paths.networkd, files, run);
  log.info('instrument ports configured', {
    firewall: `table inet ${FIREWALL_TABLE}: ${state.chains.length} chains, ${state.rules} rules`,
    networkd: paths.networkd,
    changed: applied.changed,
    reloaded: applied.reloaded,
  });
  return {
    firewall: { table: `inet ${FIREWALL_TABLE}`, appliedAt: now().toISOString(), chains: state.chains.length, rules: state.rules },
    networkd: { dir: paths.networkd, files: [...files.keys()], reloaded: applied.reloaded },
  };
}

export async function startDaemon(deps: DaemonDeps): Promise<Daemon> {
  const { config, paths, log, notifier } = deps;
  const now = deps.now ?? (() => new Date());
  const startedAt = now();
  let state: StatusReport['state'] = 'starting';
  const slot = readSlot(paths.procCmdline);

  checkStateDir(paths.state, `${JSON.stringify({ version: RAPD_VERSION, pid: process.pid, startedAt: startedAt.toISOString() })}\n`);
  const run = loggedRunner(deps);
  const fw = deps.firewall ?? nftAdaptor(run);
  const network = await applyNetwork(deps, now, run, fw);

  // Each part started is pushed here so a failure later unwinds it (never half-started).
  const undo: (() => Promise<void> | void)[] = [];
  const unwind = async (): Promise<void> => {
    for (const u of undo.reverse()) await Promise.resolve(u()).catch(() => {});
  };

  let store: MessageStore;
  const agents: PortAgent[] = [];
  let uplink: Uplink | null = null;
  let sessions: SessionManager | null = null;
  try {
    store = MessageStore.open({
      path: paths.queueDb,
      maxRoutineMessages: config['store.maxRoutineMessages'],
      maxAlarmMessages: config['store.maxAlarmMessages'],
      minFreeBytes: config['store.minFreeBytes'],
      log: log.child({ part: 'store' }),
    });
    undo.push(() => store.close());
    if (config['center.url'] !== '') {
      uplink = new Uplink({ config, store, log, env: deps.env });
      uplink.start();
      const u = uplink;
      undo.push(() => u.stop());
    }
    for (const port of config['ports']) {
      const agent = await PortAgent.start({ port, store, log, bindRetryMaxMs: deps.bindRetryMaxMs });
      agents.push(agent);
      undo.push(() => agent.stop());
    }
    // Unwound before the agents: every session ends (pinhole closed, VPN stopped) and the instrument is told.
    sessions = startSessionHost({ config, paths, log, run, firewall: fw, agents, audit: deps.audit ?? journalAudit(log), env: deps.env ?? process.env });
    const mgr = sessions;
    if (mgr) undo.push(() => mgr.stop());
  } catch (e) {
    await unwind();
    throw e;
  }

  const status = (): StatusReport => ({
    name: config['device.name'],
    version: RAPD_VERSION,
    node: process.version,
    pid: process.pid,
    state,
    startedAt: startedAt.toISOString(),
    uptimeSeconds: Math.round((now().getTime() - startedAt.getTime()) / 1000),
    slot,
    paths: { state: paths.state, runtime: paths.runtime },
    config: redactConfig(config),
    ports: agents.map((a) => a.status()),
    store: store.stats(),
    uplink: uplink?.status() ?? null,
    network,
    sessions: sessions?.list() ?? [],
  });

  let control: ControlServer;
  try {
    const mgr = sessions;
    control = await startControlServer(
      paths.controlSocket,
      {
        status,
        sessions: mgr
          ? {
              list: () => mgr.list(),
              open: (args) => mgr.open(localSessionRequest(args)),
              close: async (id) => {
                if (!(await mgr.end(id, 'center-close'))) throw new RapError('RAP_SESSION', `no open session ${id}`);
                return { sessionId: id, closed: true };
              },
            }
          : undefined,
      },
      log,
    );
  } catch (e) {
    await unwind();
    throw e;
  }
  undo.push(() => control.close());

  let watchdog: NodeJS.Timeout | undefined;
  try {
    state = 'running';
    await notifier.ready(`running; slot ${slot ?? 'none'}; control ${paths.controlSocket}; ${agents.length} port(s)`);
    if (notifier.watchdogIntervalMs !== null) {
      watchdog = setInterval(() => {
        notifier.watchdog().catch((e: unknown) => log.warn('watchdog ping failed', { error: errorMessage(e) }));
      }, notifier.watchdogIntervalMs);
    }
  } catch (e) {
    // Never half-start: undo what is up before reporting.
    await unwind();
    throw e;
  }
  log.info('rapd ready', {
    version: RAPD_VERSION,
    slot,
    control: paths.controlSocket,
    watchdogMs: notifier.watchdogIntervalMs,
    ports: agents.map((a) => a.status().listen),
    uplink: uplink ? uplink.status().center : 'none (store only)',
  });

  let stopping: Promise<void> | undefined;
  return {
    status,
    stop(reason: string): Promise<void> {
      stopping ??= (async () => {
        state = 'stopping';
        log.info('rapd stopping', { reason });
        if (watchdog) clearInterval(watchdog);
        await notifier.stopping(`stopping: ${reason}`).catch((e: unknown) => log.warn('notify failed', { error: errorMessage(e) }));
        // Reverse start order: control socket, agents (no new input), uplink, then the store flushes and closes.
        await unwind();
      })();
      return stopping;
    },
  };
}
