// rapctl: the local operator CLI. Talks to rapd over the control socket.

import { RapError, errorMessage } from '../lib/errors.ts';
import { AUDIT_READ_MAX, type StatusReport } from '../protocol/control.ts';
import type { AuditRecord } from '../protocol/audit.ts';
import { DEFAULT_CONTROL_SOCKET } from '../rapd/paths.ts';
import { callControl } from './client.ts';
import { simCliMain } from '../sim/cli.ts';

const USAGE = `usage: rapctl [--socket PATH] status [--json]
       rapctl [--socket PATH] audit [--follow] [--json]
       rapctl [--socket PATH] audit verify [--json]
       rapctl instrument-sim --connect HOST:PORT [options]

commands:
  status          show what rapd is doing (--json: machine-readable)
  audit           the audit log, oldest first (--follow: then wait for new
                  records; --json: one record per line as stored)
  audit verify    check the whole hash chain and compare its head with the
                  anchor kept in the store; exit 1 on any edit, insertion,
                  removal or truncation
  instrument-sim  act as an instrument against a box (--help for its options)

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
  if (s.store) {
    const q = s.store.queued;
    lines.push(`store:    ${q.alarm} alarm + ${q.routine} routine queued${s.store.oldestRoutineAt ? ` (oldest ${s.store.oldestRoutineAt})` : ''}`);
    if (s.store.lastDrop) lines.push(`          ${s.store.lastDrop}`);
    if (s.store.refused.routine + s.store.refused.alarm > 0) lines.push(`          refused (disk low): ${s.store.refused.routine} routine, ${s.store.refused.alarm} alarm`);
    if (s.store.recovered) lines.push(`          recovered at start: ${s.store.recovered}`);
  }
  if (s.uplink) {
    const u = s.uplink;
    lines.push(`uplink:   ${u.state} -> ${u.center} via ${u.proxy}; ${u.sentMessages} sent in ${u.sentBatches} batches`);
    if (u.lastSuccessAt) lines.push(`          last success ${u.lastSuccessAt}`);
    if (u.lastError && u.consecutiveFailures > 0) lines.push(`          failing (${u.consecutiveFailures}x): ${u.lastError}; next try ${u.nextAttemptAt}`);
  } else {
    lines.push('uplink:   none configured (store only)');
  }
  if (s.channel) {
    const c = s.channel;
    lines.push(`commands: channel ${c.state} -> ${c.url} via ${c.proxy}; ${c.commandsReceived} received, ${c.resultsSent} results sent`);
    if (c.lastError && c.consecutiveFailures > 0) lines.push(`          failing (${c.consecutiveFailures}x): ${c.lastError}; next try ${c.nextAttemptAt}`);
  }
  lines.push(`          ${s.commands.accepted} accepted, ${s.commands.rejected} rejected, ${s.commands.inFlight} running; trusted keys: ${s.commands.keys.join(', ') || 'none'}`);
  lines.push(`audit:    ${s.audit.path}: head ${s.audit.head ? s.audit.head.seq : 'none'}, anchor ${s.audit.anchor ? s.audit.anchor.seq : 'none'}`);
  if (s.audit.recovered) lines.push(`          recovered at start: ${s.audit.recovered}`);
  if (s.network) {
    const n = s.network;
    lines.push(`firewall: table ${n.firewall.table}, ${n.firewall.chains} chains, ${n.firewall.rules} rules (applied ${n.firewall.appliedAt})`);
    lines.push(`networkd: ${n.networkd.files.length} port file(s) in ${n.networkd.dir}${n.networkd.reloaded ? ' (reloaded)' : ' (unchanged)'}`);
  }
  for (const p of s.ports) {
    if (!p.listening) {
      lines.push(`port ${p.name}: ${p.listen} NOT LISTENING: waiting for the address since ${p.waitingForAddressSince ?? '?'} (${p.bindError ?? 'unknown'})`);
      continue;
    }
    const who = p.instrument ? `${p.instrument.model} ${p.instrument.serial} (sw ${p.instrument.swVersion})` : 'no instrument yet';
    const errs = Object.entries(p.counters.errors).map(([k, v]) => `${k}=${v}`).join(' ');
    lines.push(`port ${p.name}: ${p.listen} ${p.online ? 'ONLINE' : 'offline'}; ${who}; last seen ${p.lastSeen ?? 'never'}; ${p.counters.stored} stored${errs ? `; errors ${errs}` : ''}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Returns the process exit code. */
export async function rapctlMain(args: string[], io: Io): Promise<number> {
  // The simulator has its own options; it does not talk to the control socket.
  if (args[0] === 'instrument-sim') return simCliMain(args.slice(1), io);
  let socket = DEFAULT_CONTROL_SOCKET;
  let json = false;
  let follow = false;
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--socket') {
      const v = args[++i];
      if (!v) return usage(io, '--socket needs a path');
      socket = v;
    } else if (a === '--json') json = true;
    else if (a === '--follow' || a === '-f') follow = true;
    else if (a === '-h' || a === '--help') {
      io.out(`${USAGE}\n`);
      return 0;
    } else rest.push(a);
  }
  const [cmd, ...extra] = rest;
  if (cmd === undefined) return usage(io, 'no command given');
  if (cmd === 'audit') {
    if (extra.length > 1 || (extra.length === 1 && extra[0] !== 'verify')) return usage(io, `unexpected argument '${extra[extra.length - 1]}'`);
    if (extra[0] === 'verify' && follow) return usage(io, '--follow does not go with verify');
    try {
      return extra[0] === 'verify' ? await auditVerify(socket, json, io) : await auditList(socket, json, follow, io);
    } catch (e) {
      io.err(`rapctl: ${errorMessage(e)}\n`);
      return 1;
    }
  }
  if (follow) return usage(io, '--follow goes with audit only');
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

/** Poll interval of `audit --follow`. */
const FOLLOW_EVERY_MS = 500;

function formatRecord(r: AuditRecord): string {
  const details = Object.keys(r.details).length > 0 ? ` ${JSON.stringify(r.details)}` : '';
  return `${r.seq} ${r.time} ${r.actor} ${r.action}${r.instrument ? ` [${r.instrument}]` : ''} -> ${r.outcome}${details}\n`;
}

async function auditList(socket: string, json: boolean, follow: boolean, io: Io): Promise<number> {
  let after = 0;
  for (;;) {
    const res = await callControl(socket, { method: 'audit.read', after, limit: AUDIT_READ_MAX });
    if (!res.ok) throw new RapError('RAP_CONTROL', `rapd refused: ${res.error.message}`);
    for (const r of res.result) io.out(json ? `${JSON.stringify(r)}\n` : formatRecord(r));
    if (res.result.length > 0) after = res.result[res.result.length - 1]!.seq;
    if (res.result.length === AUDIT_READ_MAX) continue;
    // Follow runs until rapctl is interrupted; rapd going away ends it with an error.
    if (!follow) return 0;
    await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
  }
}

async function auditVerify(socket: string, json: boolean, io: Io): Promise<number> {
  const res = await callControl(socket, { method: 'audit.verify' }, 60_000);
  if (!res.ok) throw new RapError('RAP_CONTROL', `rapd refused: ${res.error.message}`);
  const v = res.result;
  if (json) io.out(`${JSON.stringify(v, null, 2)}\n`);
  else {
    io.out(`${v.path}: ${v.records} record(s), head ${v.head ? `${v.head.seq} ${v.head.hash}` : 'none'}\n`);
    io.out(`anchor (store): ${v.anchor ? `${v.anchor.seq} ${v.anchor.hash}` : 'none yet'}\n`);
    if (v.problem) io.out(`CHAIN BROKEN: ${v.problem.message}\n`);
    if (v.anchorProblem) io.out(`ANCHOR MISMATCH: ${v.anchorProblem}\n`);
    if (v.ok) io.out('audit chain ok\n');
  }
  return v.ok ? 0 : 1;
}

function usage(io: Io, problem: string): number {
  io.err(`rapctl: ${problem}\n${USAGE}\n`);
  return 2;
}
