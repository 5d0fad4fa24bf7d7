// rapd's lifecycle: check what it needs, start its parts, tell systemd, keep
// the watchdog fed, and stop cleanly. Everything host-facing is passed in, so
// tests run the whole daemon against a temporary tree.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { run as realRun, type Runner } from '../lib/run.ts';
import { canonicalJson } from '../protocol/canonical.ts';
import type { NetworkReport, StatusReport } from '../protocol/control.ts';
import { redactConfig, type Config } from './config.ts';
import { AuditLog, forwardAudit, readAnchor } from './audit.ts';
import { CommandChannel } from './channel.ts';
import { CommandRouter, registerBuiltins, trustedKeys } from './commands.ts';
import type { AuditEvent, AuditRecord } from '../protocol/audit.ts';
import { startControlServer, type ControlServer } from './control.ts';
import { PortAgent } from './agent.ts';
import { FIREWALL_TABLE, applyFirewall, firewallPolicy, nftAdaptor, renderFirewall, type FirewallAdaptor } from './firewall.ts';
import { applyNetworkFiles, netPorts, renderNetworkFiles } from './network.ts';
import type { Notifier } from './notify.ts';
import { MessageStore } from './store.ts';
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
async function applyNetwork(deps: DaemonDeps, now: () => Date, audit: AuditLog): Promise<NetworkReport | null> {
  const { config, paths, log } = deps;
  if (netPorts(config).length === 0) return null;
  const door = deps.run ?? realRun;
  // nft and networkctl alike: the command line in the debug log.
  const run: Runner = (argv, opts) => door(argv, { ...opts, onStart: (cmd) => log.debug('run', { cmd }) });
  const fw = deps.firewall ?? nftAdaptor(run);
  const ruleset = renderFirewall(firewallPolicy(config));
  const sha256 = createHash('sha256').update(ruleset).digest('hex');
  let state;
  try {
    state = await applyFirewall(fw, ruleset);
  } catch (e) {
    await auditOrLog(audit, log, { actor: 'rapd', action: 'firewall.applied', outcome: 'error', details: { table: FIREWALL_TABLE, sha256, error: errorMessage(e) } });
    throw e;
  }
  await auditOrLog(audit, log, { actor: 'rapd', action: 'firewall.applied', outcome: 'ok', details: { table: FIREWALL_TABLE, sha256, chains: state.chains.length, rules: state.rules } });
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

/**
 * `config.changed` when the configuration differs from the one the last
 * such record describes (the first start records it too). Secret values are
 * redacted before anything is hashed or recorded (a hash of a proxy password
 * could be guessed offline), so a change of a secret alone is not seen.
 */
/**
 * Record what rapd did at start. A record that cannot be written (data
 * partition full, I/O error) is logged and does not stop the start: the
 * firewall and the telemetry matter more than their record. Commands are
 * different: without their record they do not run (commands.ts).
 */
async function auditOrLog(audit: AuditLog, log: Logger, event: AuditEvent): Promise<void> {
  await audit.append(event).catch((e: unknown) => log.error('audit record not written', { action: event.action, error: errorMessage(e) }));
}

async function auditConfig(audit: AuditLog, log: Logger, config: Config): Promise<void> {
  const shown = redactConfig(config);
  const sha256 = createHash('sha256').update(canonicalJson(shown)).digest('hex');
  const last = audit.last('config.changed');
  if (last?.details['sha256'] === sha256) return;
  const before = (last?.details['config'] ?? {}) as Record<string, unknown>;
  // The first record has nothing to compare with: it lists no changed keys, only the config.
  const changedKeys = last ? Object.keys(shown).filter((k) => canonicalJson(shown[k]) !== canonicalJson(before[k] ?? null)) : [];
  await auditOrLog(audit, log, { actor: 'rapd', action: 'config.changed', outcome: 'ok', details: { sha256, first: last === null, changedKeys, config: shown } });
}

export async function startDaemon(deps: DaemonDeps): Promise<Daemon> {
  const { config, paths, log, notifier } = deps;
  const now = deps.now ?? (() => new Date());
  const startedAt = now();
  let state: StatusReport['state'] = 'starting';
  const slot = readSlot(paths.procCmdline);

  checkStateDir(paths.state, `${JSON.stringify({ version: RAPD_VERSION, pid: process.pid, startedAt: startedAt.toISOString() })}\n`);
  // The audit log first: the firewall and config changes below are audited, and
  // the accepted commands in it rebuild the replay memory.
  const accepted: AuditRecord[] = [];
  const audit = AuditLog.open({ path: paths.auditLog, log: log.child({ part: 'audit' }) }, (r) => {
    if (r.action === 'command.accepted') accepted.push(r);
  });
  const router = new CommandRouter({
    policy: {
      deviceId: config['device.id'],
      keys: trustedKeys(config['commands.keys']),
      maxLifetimeMs: config['commands.maxLifetimeSec'] * 1000,
      skewMs: config['commands.clockSkewSec'] * 1000,
    },
    audit,
    log,
  });
  for (const r of accepted) router.rememberFromAudit(r);
  let network: NetworkReport | null;
  try {
    await auditConfig(audit, log, config);
    network = await applyNetwork(deps, now, audit);
  } catch (e) {
    await audit.close();
    throw e;
  }

  // Each part started is pushed here so a failure later unwinds it (never half-started).
  const undo: (() => Promise<void> | void)[] = [() => audit.close()];
  const unwind = async (): Promise<void> => {
    for (const u of undo.reverse()) await Promise.resolve(u()).catch(() => {});
  };

  let store: MessageStore;
  const agents: PortAgent[] = [];
  let uplink: Uplink | null = null;
  let channel: CommandChannel | null = null;
  try {
    store = MessageStore.open({
      path: paths.queueDb,
      maxRoutineMessages: config['store.maxRoutineMessages'],
      maxAlarmMessages: config['store.maxAlarmMessages'],
      minFreeBytes: config['store.minFreeBytes'],
      log: log.child({ part: 'store' }),
    });
    undo.push(() => store.close());
    undo.push(await forwardAudit(audit, store, log.child({ part: 'audit' })));
    registerBuiltins(router, audit, () => readAnchor(store));
    if (config['center.url'] !== '') {
      uplink = new Uplink({ config, store, log, env: deps.env });
      uplink.start();
      const u = uplink;
      undo.push(() => u.stop());
      channel = new CommandChannel({ config, router, log, env: deps.env, auditHead: () => audit.headNow() });
      channel.start();
      const c = channel;
      undo.push(() => c.stop());
    }
    for (const port of config['ports']) {
      const agent = await PortAgent.start({ port, store, log, bindRetryMaxMs: deps.bindRetryMaxMs });
      agents.push(agent);
      undo.push(() => agent.stop());
    }
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
    channel: channel?.status() ?? null,
    commands: { types: router.types(), keys: config['commands.keys'].map((k) => k.id), ...router.stats() },
    audit: { path: paths.auditLog, head: audit.headNow(), anchor: readAnchor(store), recovered: audit.recovered },
  });

  let control: ControlServer;
  try {
    control = await startControlServer(
      paths.controlSocket,
      { status, auditRead: (after, limit) => audit.read(after, limit), auditVerify: () => audit.verify(readAnchor(store)) },
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
