// rapctl: the local operator CLI. Talks to rapd over the control socket.

import { RapError, errorMessage } from '../lib/errors.ts';
import type { StatusReport } from '../protocol/control.ts';
import { DEFAULT_CONTROL_SOCKET } from '../rapd/paths.ts';
import { callControl } from './client.ts';

const USAGE = `usage: rapctl [--socket PATH] status [--json]

commands:
  status          show what rapd is doing (--json: machine-readable)

options:
  --socket PATH   control socket (default ${DEFAULT_CONTROL_SOCKET})`;

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

function formatStatus(s: StatusReport): string {
  const lines = [
    `${s.name}: rapd ${s.version} (node ${s.node}), pid ${s.pid}`,
    `state:    ${s.state}`,
    `uptime:   ${s.uptimeSeconds}s (since ${s.startedAt})`,
    `slot:     ${s.slot ?? 'none'}`,
    `state dir ${s.paths.state}`,
  ];
  return `${lines.join('\n')}\n`;
}

/** Returns the process exit code. */
export async function rapctlMain(args: string[], io: Io): Promise<number> {
  let socket = DEFAULT_CONTROL_SOCKET;
  let json = false;
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--socket') {
      const v = args[++i];
      if (!v) return usage(io, '--socket needs a path');
      socket = v;
    } else if (a === '--json') json = true;
    else if (a === '-h' || a === '--help') {
      io.out(`${USAGE}\n`);
      return 0;
    } else rest.push(a);
  }
  const [cmd, ...extra] = rest;
  if (cmd === undefined) return usage(io, 'no command given');
  if (cmd !== 'status') return usage(io, `unknown command '${cmd}'`);
  if (extra.length > 0) return usage(io, `unexpected argument '${extra[0]}'`);
  try {
    const res = await callControl(socket, { method: 'status' });
    if (!res.ok) throw new RapError('RAP_CONTROL', `rapd refused: ${res.error.message}`);
    io.out(json ? `${JSON.stringify(res.result, null, 2)}\n` : formatStatus(res.result));
    return 0;
  } catch (e) {
    io.err(`rapctl: ${errorMessage(e)}\n`);
    return 1;
  }
}

function usage(io: Io, problem: string): number {
  io.err(`rapctl: ${problem}\n${USAGE}\n`);
  return 2;
}
