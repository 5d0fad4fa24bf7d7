// rapd's lifecycle: check what it needs, start its parts, tell systemd, keep
// the watchdog fed, and stop cleanly. Everything host-facing is passed in, so
// tests run the whole daemon against a temporary tree.

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { StatusReport } from '../protocol/control.ts';
import { redactConfig, type Config } from './config.ts';
import { startControlServer, type ControlServer } from './control.ts';
import type { Notifier } from './notify.ts';
import type { Paths } from './paths.ts';
import { RAPD_VERSION } from './version.ts';

export interface DaemonDeps {
  config: Config;
  paths: Paths;
  log: Logger;
  notifier: Notifier;
  now?: () => Date;
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

export async function startDaemon(deps: DaemonDeps): Promise<Daemon> {
  const { config, paths, log, notifier } = deps;
  const now = deps.now ?? (() => new Date());
  const startedAt = now();
  let state: StatusReport['state'] = 'starting';
  const slot = readSlot(paths.procCmdline);

  checkStateDir(paths.state, `${JSON.stringify({ version: RAPD_VERSION, pid: process.pid, startedAt: startedAt.toISOString() })}\n`);

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
  });

  const control: ControlServer = await startControlServer(paths.controlSocket, { status }, log);

  let watchdog: NodeJS.Timeout | undefined;
  try {
    state = 'running';
    await notifier.ready(`running; slot ${slot ?? 'none'}; control ${paths.controlSocket}`);
    if (notifier.watchdogIntervalMs !== null) {
      watchdog = setInterval(() => {
        notifier.watchdog().catch((e: unknown) => log.warn('watchdog ping failed', { error: errorMessage(e) }));
      }, notifier.watchdogIntervalMs);
    }
  } catch (e) {
    // Never half-start: undo what is up before reporting.
    await control.close();
    throw e;
  }
  log.info('rapd ready', { version: RAPD_VERSION, slot, control: paths.controlSocket, watchdogMs: notifier.watchdogIntervalMs });

  let stopping: Promise<void> | undefined;
  return {
    status,
    stop(reason: string): Promise<void> {
      stopping ??= (async () => {
        state = 'stopping';
        log.info('rapd stopping', { reason });
        if (watchdog) clearInterval(watchdog);
        await notifier.stopping(`stopping: ${reason}`).catch((e: unknown) => log.warn('notify failed', { error: errorMessage(e) }));
        await control.close();
      })();
      return stopping;
    },
  };
}
