// rapd's configuration, declared once. Every setting is one entry in SETTINGS:
// its dotted key, type, default, whether it is secret, and one line of doc.
// Parsing, validation, redaction in logs and the README table all come from
// this table; nothing else in the code base names a config key's default.
//
// The file is JSON with nested objects: {"log": {"level": "debug"}} sets
// `log.level`. Unknown keys are errors (a typo must not silently fall back to
// a default on a box nobody can see).

import { readFileSync } from 'node:fs';
import { RapError } from '../lib/errors.ts';

type SettingType =
  | { kind: 'string'; pattern?: RegExp; patternDoc?: string }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'integer'; min: number; max: number }
  | { kind: 'boolean' }
  | { kind: 'path' };

interface Setting<V> {
  key: string;
  type: SettingType;
  default: V;
  secret?: boolean;
  doc: string;
}

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

// `as const satisfies` keeps each entry's literal key for the Config type below.
export const SETTINGS = [
  {
    key: 'device.name',
    type: { kind: 'string', pattern: /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, patternDoc: '1-63 letters, digits, ".", "_" or "-"' },
    default: 'rapbox',
    doc: 'Name of this box as shown by `rapctl status` and in logs.',
  },
  {
    key: 'log.level',
    type: { kind: 'enum', values: LOG_LEVELS },
    default: 'info' as LogLevel,
    doc: 'Least severe log level written to the journal.',
  },
  {
    key: 'paths.state',
    type: { kind: 'path' },
    default: '/var/lib/rapd',
    doc: 'Durable state (on the data partition). Must be writable at start.',
  },
  {
    key: 'paths.runtime',
    type: { kind: 'path' },
    default: '/run/rapd',
    doc: 'Runtime directory for the owner-only control socket `rapd.sock`.',
  },
  {
    key: 'shutdown.timeoutMs',
    type: { kind: 'integer', min: 100, max: 60000 },
    default: 5000,
    doc: 'Bound on a clean stop after SIGTERM; past it rapd exits non-zero.',
  },
] as const satisfies readonly Setting<unknown>[];

type SettingsList = typeof SETTINGS;
type ValueOf<S> = S extends { default: infer D } ? (D extends string ? string : D extends number ? number : D extends boolean ? boolean : D) : never;
/** The validated configuration, keyed by the dotted setting keys. */
export type Config = { [S in SettingsList[number] as S['key']]: S['key'] extends 'log.level' ? LogLevel : ValueOf<S> };

export const DEFAULT_CONFIG_PATH = '/etc/rapd/rapd.json';

function describeExpected(t: SettingType): string {
  switch (t.kind) {
    case 'string':
      return t.patternDoc ? `a string of ${t.patternDoc}` : 'a string';
    case 'enum':
      return `one of ${t.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'integer':
      return `an integer from ${t.min} to ${t.max}`;
    case 'boolean':
      return 'true or false';
    case 'path':
      return 'an absolute path';
  }
}

function valid(t: SettingType, v: unknown): boolean {
  switch (t.kind) {
    case 'string':
      return typeof v === 'string' && (!t.pattern || t.pattern.test(v));
    case 'enum':
      return typeof v === 'string' && t.values.includes(v);
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v) && v >= t.min && v <= t.max;
    case 'boolean':
      return typeof v === 'boolean';
    case 'path':
      return typeof v === 'string' && v.startsWith('/') && !v.includes('\0') && !v.split('/').includes('..');
  }
}

const BY_KEY: ReadonlyMap<string, Setting<unknown>> = new Map(SETTINGS.map((s) => [s.key, s as Setting<unknown>]));

/** Flatten nested objects into dotted keys; arrays and scalars are leaves. */
function flatten(obj: Record<string, unknown>, prefix: string, out: Map<string, unknown>): void {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    const isSection = [...BY_KEY.keys()].some((known) => known.startsWith(`${key}.`));
    if (isSection && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      flatten(v as Record<string, unknown>, key, out);
    } else {
      out.set(key, v);
    }
  }
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Validate a parsed document. `source` names it in errors. Every problem is
 * reported (joined on one line), so one edit fixes a file.
 */
export function parseConfig(doc: unknown, source: string): Config {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new RapError('RAP_CONFIG', `config ${source}: expected a JSON object at the top level, got ${show(doc)}`, { source });
  }
  const given = new Map<string, unknown>();
  flatten(doc as Record<string, unknown>, '', given);
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) out[s.key] = s.default;
  for (const [key, value] of given) {
    const setting = BY_KEY.get(key);
    if (!setting) {
      problems.push(`unknown key '${key}' (known keys: ${[...BY_KEY.keys()].join(', ')})`);
      continue;
    }
    if (!valid(setting.type, value)) {
      const shown = setting.secret ? '<redacted>' : show(value);
      problems.push(`key '${key}': got ${shown}, expected ${describeExpected(setting.type)}`);
      continue;
    }
    out[key] = value;
  }
  if (problems.length > 0) {
    throw new RapError('RAP_CONFIG', `config ${source}: ${problems.join('; ')}`, { source, problems });
  }
  return out as Config;
}

/** Read and validate a config file. A missing file is an error, not defaults. */
export function loadConfig(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : String(e);
    throw new RapError('RAP_CONFIG_READ', `config ${path}: cannot read: ${why}`, { path }, { cause: e });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new RapError('RAP_CONFIG', `config ${path}: not valid JSON: ${(e as Error).message}`, { path }, { cause: e });
  }
  return parseConfig(doc, path);
}

/** The configuration with secret values replaced, for logs and `rapctl`. */
export function redactConfig(config: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS as readonly Setting<unknown>[]) {
    out[s.key] = s.secret ? '<redacted>' : (config as Record<string, unknown>)[s.key];
  }
  return out;
}

/** Markdown table of every setting, for the README (kept in sync by a test). */
export function configDocTable(): string {
  const rows = (SETTINGS as readonly Setting<unknown>[]).map(
    (s) => `| \`${s.key}\` | ${describeExpected(s.type)} | \`${JSON.stringify(s.default)}\` | ${s.doc}${s.secret ? ' (secret)' : ''} |`,
  );
  return ['| key | type | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
