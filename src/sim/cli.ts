// `rapctl instrument-sim`: the reference instrument simulator from a shell,
// for trying a box by hand, load tests and vendor demos.

import { errorMessage, isRapError } from '../lib/errors.ts';
import { MAX_FRAME_BYTES } from '../protocol/instrument.ts';
import { MAX_WINDOW, MISBEHAVIORS, SIM_CONSENTS, runSimulator, type Misbehavior, type SimConsent, type SimOptions, type SimReport } from './simulator.ts';

export const SIM_USAGE = `usage: rapctl instrument-sim --connect HOST:PORT [options]

Acts as one instrument speaking the instrument protocol (docs/instrument-protocol.md):
hello, then status/alarm frames within a window of unacknowledged ones, polls
answered, bye. Prints a summary; exits 0 when every frame got a reply and the
session ended as planned.

options:
  --connect HOST:PORT   the box's instrument port (IPv6: [ADDR]:PORT)
  --serial S            instrument serial number (default SIM-0001)
  --model M             model name (default RAPSIM-1)
  --sw-version V        software version (default 1.0.0)
  --count N             status/alarm frames to send (default 100, or unbounded with --duration)
  --duration SEC        stop sending after SEC seconds
  --rate R              frames per second (default 0: as fast as the window allows)
  --window N            most unacknowledged frames, 1-${MAX_WINDOW} (default 64)
  --size BYTES          pad status frames to about BYTES bytes (at most ${MAX_FRAME_BYTES})
  --alarm-ratio X       share of frames that are alarms, 0..1 (default 0)
  --heartbeat SEC       send a heartbeat every SEC seconds
  --no-polls            do not answer the box's polls
  --consent ANSWER      answer remote-session consent requests: yes, no, never, or
                        ignore (default: never answers, as an unattended instrument)
  --consent-delay SEC   answer SEC seconds after the request (default 0)
  --end-session SEC     after answering yes, end the session from the instrument SEC later
                        (each consent request and session end is printed on stderr)
  --misbehave KIND      break the protocol on purpose: ${MISBEHAVIORS.filter((m) => m !== 'none').join(', ')}
  --timeout SEC         bound on every single wait (default 10; 45 with --misbehave slow)
  --json                print the report as JSON (without the message ids)`;

export interface SimIo {
  out(s: string): void;
  err(s: string): void;
}

class UsageError extends Error {}

function number(flag: string, v: string | undefined, min: number, max: number, integer: boolean): number {
  if (v === undefined) throw new UsageError(`${flag} needs a value`);
  const n = /^[0-9]+(\.[0-9]+)?$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new UsageError(`${flag}: expected ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}, got '${v}'`);
  }
  return n;
}

/** "host:port", "[v6]:port" -> parts. */
export function parseHostPort(v: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):([0-9]{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 1 || port > 65535) throw new UsageError(`--connect: expected HOST:PORT, got '${v}'`);
  return { host: (m[1] ?? m[2])!, port };
}

function parseArgs(args: string[]): { opts: SimOptions; json: boolean } | 'help' {
  let target: { host: string; port: number } | undefined;
  const o: Partial<SimOptions> = {};
  let json = false;
  let timeoutSet = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string | undefined => args[++i];
    switch (a) {
      case '-h':
      case '--help':
        return 'help';
      case '--connect': {
        const v = value();
        if (v === undefined) throw new UsageError('--connect needs HOST:PORT');
        target = parseHostPort(v);
        break;
      }
      case '--serial':
      case '--model':
      case '--sw-version': {
        const v = value();
        if (v === undefined) throw new UsageError(`${a} needs a value`);
        o[a === '--serial' ? 'serial' : a === '--model' ? 'model' : 'swVersion'] = v;
        break;
      }
      case '--count':
        o.count = number(a, value(), 0, Number.MAX_SAFE_INTEGER, true);
        break;
      case '--duration':
        o.durationMs = number(a, value(), 0.001, 7 * 86400, false) * 1000;
        break;
      case '--rate':
        o.ratePerSec = number(a, value(), 0, 1e6, false);
        break;
      case '--window':
        o.window = number(a, value(), 1, MAX_WINDOW, true);
        break;
      case '--size':
        o.sizeBytes = number(a, value(), 0, MAX_FRAME_BYTES, true);
        break;
      case '--alarm-ratio':
        o.alarmRatio = number(a, value(), 0, 1, false);
        break;
      case '--heartbeat':
        o.heartbeatEveryMs = number(a, value(), 0.01, 86400, false) * 1000;
        break;
      case '--no-polls':
        o.answerPolls = false;
        break;
      case '--consent': {
        const v = value();
        if (v === undefined || !(SIM_CONSENTS as readonly string[]).includes(v)) {
          throw new UsageError(`--consent: expected one of ${SIM_CONSENTS.join(', ')}, got '${v ?? ''}'`);
        }
        o.consent = v as SimConsent;
        break;
      }
      case '--consent-delay':
        o.consentDelayMs = number(a, value(), 0, 3600, false) * 1000;
        break;
      case '--end-session':
        o.endSessionAfterMs = number(a, value(), 0, 86400, false) * 1000;
        break;
      case '--misbehave': {
        const v = value();
        if (v === undefined || !(MISBEHAVIORS as readonly string[]).includes(v)) {
          throw new UsageError(`--misbehave: expected one of ${MISBEHAVIORS.join(', ')}, got '${v ?? ''}'`);
        }
        o.misbehave = v as Misbehavior;
        break;
      }
      case '--timeout':
        o.timeoutMs = number(a, value(), 0.001, 3600, false) * 1000;
        timeoutSet = true;
        break;
      case '--json':
        json = true;
        break;
      default:
        throw new UsageError(a.startsWith('-') ? `unknown option '${a}'` : `unexpected argument '${a}'`);
    }
  }
  if (!target) throw new UsageError('--connect HOST:PORT is required');
  if (o.count === undefined && o.durationMs === undefined) o.count = 100;
  // The box waits 30 s for a started line; a slow sender must outlast that.
  if (o.misbehave === 'slow' && !timeoutSet) o.timeoutMs = 45_000;
  return { opts: { ...o, ...target }, json };
}

export function formatReport(r: SimReport, opts: SimOptions): string {
  const errors = Object.entries(r.errors).map(([code, n]) => `${code} ${n}`).join(', ');
  const lines = [
    `instrument-sim: ${opts.serial ?? 'SIM-0001'} -> ${opts.host}:${opts.port}`,
    `sent:      ${r.sent} frames (${r.alarms} alarms), ${r.acked} acked, ${r.unanswered} unanswered`,
    `latency:   p50 ${r.ackLatencyMs.p50} ms, p99 ${r.ackLatencyMs.p99} ms, max ${r.ackLatencyMs.max} ms`,
    `errors:    ${errors || 'none'}`,
    `polls:     ${r.polled}`,
  ];
  if (r.consentRequests > 0) lines.push(`sessions:  ${r.consentRequests} consent request(s) (answered ${opts.consent ?? 'ignore'}), ended: ${r.sessionsEnded.map((e) => e.reason).join(', ') || 'none'}`);
  if (r.violations > 0) lines.push(`violations: ${r.violations} (--misbehave ${opts.misbehave})`);
  if (r.badReplies > 0) lines.push(`bad replies from the box: ${r.badReplies}`);
  lines.push(`ended:     ${r.end}`);
  return `${lines.join('\n')}\n`;
}

/** Returns the exit code: 0 ran as planned, 1 did not, 2 usage. */
export async function simCliMain(args: string[], io: SimIo): Promise<number> {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs(args);
  } catch (e) {
    io.err(`rapctl instrument-sim: ${errorMessage(e)}\n${SIM_USAGE}\n`);
    return 2;
  }
  if (parsed === 'help') {
    io.out(`${SIM_USAGE}\n`);
    return 0;
  }
  const { opts, json } = parsed;
  // Live, for a person at the console (or a test watching): the box's session frames.
  opts.onSession = (f) => {
    if (f.type === 'consent-request') io.err(`session: consent-request ${f.session} from ${f.who} for tcp ${f.services.join(',')}: ${opts.consent ?? 'ignore'}\n`);
    if (f.type === 'session-ended') io.err(`session: ended ${f.session} (${f.reason})\n`);
  };
  let report: SimReport;
  try {
    report = await runSimulator(opts);
  } catch (e) {
    io.err(`rapctl instrument-sim: ${errorMessage(e)}\n`);
    return isRapError(e, 'RAP_USAGE') ? 2 : 1;
  }
  if (json) {
    const { ids: _ids, ...rest } = report;
    io.out(`${JSON.stringify(rest, null, 2)}\n`);
  } else {
    io.out(formatReport(report, opts));
  }
  return report.end === 'done' && report.unanswered === 0 ? 0 : 1;
}
