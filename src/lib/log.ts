// Structured JSON logs, one object per line on stdout (journald under
// systemd). Secrets are redacted by field name before anything is written:
// a token must not reach the journal even if a caller passes it by mistake.

import type { LogLevel } from '../rapd/config.ts';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
// syslog priorities; journald reads a "<N>" prefix when the stream is its own.
const SYSLOG: Record<LogLevel, number> = { debug: 7, info: 6, warn: 4, error: 3 };

const SECRET_FIELD = /(pass(word|phrase)?|secret|token|private[-_]?key|credential|authorization|cookie)$/i;

export type Fields = Record<string, unknown>;

/** Copy of `v` with secret-named fields replaced, at any depth. */
export function redact(v: unknown, depth = 0): unknown {
  if (depth > 8 || v === null || typeof v !== 'object') return v;
  if (v instanceof Error) return { name: v.name, message: v.message, code: (v as { code?: unknown }).code };
  if (Array.isArray(v)) return v.map((x) => redact(x, depth + 1));
  const out: Fields = {};
  for (const [k, x] of Object.entries(v)) out[k] = SECRET_FIELD.test(k) ? '<redacted>' : redact(x, depth + 1);
  return out;
}

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(fields: Fields): Logger;
  setLevel(level: LogLevel): void;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Where lines go; default process.stdout. */
  write?: (line: string) => void;
  /** Prefix lines with "<prio>" for journald (default: when JOURNAL_STREAM is set). */
  syslogPrefix?: boolean;
  now?: () => Date;
}

export function createLogger(opts: LoggerOptions = {}, base: Fields = {}): Logger {
  const state = { level: opts.level ?? 'info' };
  const write = opts.write ?? ((line: string) => process.stdout.write(line));
  const prefix = opts.syslogPrefix ?? Boolean(process.env['JOURNAL_STREAM']);
  const now = opts.now ?? (() => new Date());

  const make = (bound: Fields): Logger => {
    const emit = (level: LogLevel, msg: string, fields?: Fields): void => {
      if (ORDER[level] < ORDER[state.level]) return;
      const record = redact({ ts: now().toISOString(), level, msg, ...bound, ...fields }) as Fields;
      write(`${prefix ? `<${SYSLOG[level]}>` : ''}${JSON.stringify(record)}\n`);
    };
    return {
      debug: (m, f) => emit('debug', m, f),
      info: (m, f) => emit('info', m, f),
      warn: (m, f) => emit('warn', m, f),
      error: (m, f) => emit('error', m, f),
      child: (f) => make({ ...bound, ...f }),
      setLevel: (l) => {
        state.level = l;
      },
    };
  };
  return make(base);
}
