// systemd notification (READY=1, STATUS=, WATCHDOG=1, STOPPING=1).
//
// Node cannot send unix datagrams, so this goes through the systemd-notify
// binary via the one subprocess door. Two traps:
// - systemd-notify is a short-lived child: by the time systemd reads the
//   datagram the sender may be gone and systemd cannot tell which unit it
//   belongs to. We pass --pid=<our pid> so the message is attributed to
//   rapd's main PID, and the unit sets NotifyAccess=all so systemd accepts a
//   message sent by a child (systemd-notify(1), "--pid=").
// - When NOTIFY_SOCKET is unset (run by hand, tests) there is nobody to tell:
//   every call is a no-op.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { RapError } from '../lib/errors.ts';
import type { Runner } from '../lib/run.ts';

export interface Notifier {
  /** Whether a service manager is listening. */
  readonly active: boolean;
  ready(status: string): Promise<void>;
  status(status: string): Promise<void>;
  stopping(status: string): Promise<void>;
  watchdog(): Promise<void>;
  /** Half of WatchdogSec in ms when systemd asked us to ping, else null. */
  readonly watchdogIntervalMs: number | null;
}

export function findOnPath(cmd: string, pathEnv: string | undefined): string | null {
  for (const dir of (pathEnv ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

export interface NotifierOptions {
  env: NodeJS.ProcessEnv;
  pid: number;
  run: Runner;
}

/**
 * Build the notifier for this process. Throws RAP_NOTIFY when systemd is
 * waiting for us (NOTIFY_SOCKET set) but systemd-notify is missing: starting
 * anyway would leave the unit "activating" until systemd kills it.
 */
export function createNotifier({ env, pid, run }: NotifierOptions): Notifier {
  const socket = env['NOTIFY_SOCKET'];
  const watchdogUsec = Number(env['WATCHDOG_USEC'] ?? '');
  const watchdogPid = env['WATCHDOG_PID'];
  const watchdogIntervalMs =
    Number.isFinite(watchdogUsec) && watchdogUsec > 0 && (watchdogPid === undefined || Number(watchdogPid) === pid)
      ? Math.max(1, Math.floor(watchdogUsec / 2000))
      : null;
  if (!socket) {
    const noop = async (): Promise<void> => {};
    return { active: false, ready: noop, status: noop, stopping: noop, watchdog: noop, watchdogIntervalMs: null };
  }
  const binary = findOnPath('systemd-notify', env['PATH']);
  if (!binary) {
    throw new RapError(
      'RAP_NOTIFY',
      `NOTIFY_SOCKET is set but systemd-notify was not found on PATH (${env['PATH'] ?? ''}); install systemd or unset NOTIFY_SOCKET`,
    );
  }
  const send = async (...assignments: string[]): Promise<void> => {
    // Newlines would split one assignment into two; STATUS is one line.
    const clean = assignments.map((a) => a.replace(/[\r\n]+/g, ' '));
    await run([binary, `--pid=${pid}`, ...clean], { timeoutMs: 5000, env: { NOTIFY_SOCKET: socket } });
  };
  return {
    active: true,
    watchdogIntervalMs,
    ready: (status) => send('READY=1', `STATUS=${status}`),
    status: (status) => send(`STATUS=${status}`),
    stopping: (status) => send('STOPPING=1', `STATUS=${status}`),
    watchdog: () => send('WATCHDOG=1'),
  };
}
