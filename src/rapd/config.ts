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
import { RESERVED, broadcastOf, formatIPv4, formatSubnet, overlaps, parseCidr, parseIPv4, subnetOf, subnetSize, type Subnet } from '../lib/ipv4.ts';
import { DEVICE_ID, DEVICE_ID_DOC, PORT_NAME, PORT_NAME_DOC } from '../protocol/telemetry.ts';
import { KEY_ID } from '../protocol/commands.ts';
import type { TrustedKey } from './commands.ts';

type ScalarType =
  | { kind: 'string'; pattern?: RegExp; patternDoc?: string }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'integer'; min: number; max: number }
  | { kind: 'boolean' }
  | { kind: 'path' }
  | { kind: 'url'; schemes: readonly string[]; allowEmpty: boolean };

/** A field of a list item: its own type, default (undefined = required) and doc. */
interface FieldSpec {
  type: ScalarType;
  default?: string | number | boolean;
  doc: string;
}

type SettingType = ScalarType | { kind: 'list'; itemName: string; fields: Readonly<Record<string, FieldSpec>>; unique: string; maxItems: number };

interface Setting<V> {
  key: string;
  type: SettingType;
  default: V;
  secret?: boolean;
  doc: string;
}

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Linux interface names rapd renders into networkd files and nft rules (IFNAMSIZ 16). */
const IFNAME = /^[a-z][a-z0-9_-]{0,14}$/;
const IFNAME_DOC = '1-15 of a-z, 0-9, "_", "-", starting with a letter';
const CIDR4 = /^[0-9]{1,3}(\.[0-9]{1,3}){3}\/[0-9]{1,2}$/;

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
    key: 'paths.networkd',
    type: { kind: 'path' },
    default: '/run/systemd/network',
    doc: "Where rapd writes the instrument ports' systemd-networkd files (runtime: rewritten at every start).",
  },
  {
    key: 'device.id',
    type: { kind: 'string', pattern: new RegExp(`^$|${DEVICE_ID.source}`), patternDoc: `empty or ${DEVICE_ID_DOC}` },
    default: '',
    doc: 'Device id the center knows this box by (the CN of its certificate). Required when `center.url` is set.',
  },
  {
    key: 'ports',
    type: {
      kind: 'list',
      itemName: 'instrument port',
      unique: 'name',
      maxItems: 16,
      fields: {
        name: { type: { kind: 'string', pattern: PORT_NAME, patternDoc: PORT_NAME_DOC }, doc: 'port name (stable; used in message ids and the firewall)' },
        interface: {
          type: { kind: 'string', pattern: new RegExp(`^$|${IFNAME.source}`), patternDoc: `empty or ${IFNAME_DOC}` },
          default: '',
          doc: 'network interface of the port (named by a .link file, e.g. "inst1"); empty: a loopback/dev port, no network or firewall rendering',
        },
        address: {
          type: { kind: 'string', pattern: /^$|^[0-9a-fA-F.:]{2,45}(\/[0-9]{1,2})?$/, patternDoc: 'empty or an IP address, optionally with "/prefix"' },
          default: '',
          doc: "the port's gateway address rapd listens on; with an interface an IPv4 address whose subnet is the port's (\"/prefix\", default `network.portPrefix`); empty: the subnet of `network.plan` at this port's position in the list, gateway its first address (required without an interface)",
        },
        dhcp: { type: { kind: 'boolean' }, default: true, doc: 'the box serves DHCP on the port (no router or DNS handed out); false: the instrument is configured statically' },
        port: { type: { kind: 'integer', min: 1, max: 65535 }, default: 7400, doc: 'TCP port of the instrument protocol' },
        pollIntervalSec: { type: { kind: 'integer', min: 0, max: 86400 }, default: 60, doc: 'poll instruments that do not push this often (0: never)' },
        offlineAfterSec: { type: { kind: 'integer', min: 1, max: 604800 }, default: 180, doc: 'silence after which the instrument is reported offline' },
      },
    },
    default: [] as PortConfig[],
    doc: 'Instrument ports: one agent each, listening on the port\'s gateway address.',
  },
  {
    key: 'network.plan',
    type: { kind: 'string', pattern: CIDR4, patternDoc: 'an IPv4 subnet "a.b.c.d/len"' },
    default: '100.87.0.0/24',
    doc: 'Address plan for instrument ports without an explicit address: split into `network.portPrefix` subnets, one per port in list order. The default lies in RFC 6598 shared space, which hospital LANs (RFC 1918) do not use; override it if the site does.',
  },
  {
    key: 'network.portPrefix',
    type: { kind: 'integer', min: 16, max: 30 },
    default: 28,
    doc: 'Prefix length of an instrument port subnet (28: 14 hosts; DHCP hands out the upper half).',
  },
  {
    key: 'network.wanInterface',
    type: { kind: 'string', pattern: IFNAME, patternDoc: IFNAME_DOC },
    default: 'wan',
    doc: 'The WAN interface (named by a .link file): outbound only, nothing on the box is reachable from it.',
  },
  {
    key: 'center.url',
    type: { kind: 'url', schemes: ['https:'], allowEmpty: true },
    default: '',
    doc: 'rap-center base URL (https). Empty: store only, nothing is sent.',
  },
  {
    key: 'center.caFile',
    type: { kind: 'path' },
    default: '/var/lib/rapd/pki/center-ca.pem',
    doc: "The center's CA certificate (pinned: the only CA trusted for the uplink).",
  },
  {
    key: 'tls.certFile',
    type: { kind: 'path' },
    default: '/var/lib/rapd/pki/device.pem',
    doc: "This box's client certificate (PEM) for mutual TLS.",
  },
  {
    key: 'tls.keyFile',
    type: { kind: 'path' },
    default: '/var/lib/rapd/pki/device.key',
    doc: "This box's private key (PEM, owner-only).",
  },
  {
    key: 'uplink.batchMaxMessages',
    type: { kind: 'integer', min: 1, max: 10000 },
    default: 500,
    doc: 'Most messages in one POST.',
  },
  {
    key: 'uplink.batchMaxBytes',
    type: { kind: 'integer', min: 4096, max: 16777216 },
    default: 524288,
    doc: 'Most (uncompressed) bytes in one POST.',
  },
  {
    key: 'uplink.batchMaxDelayMs',
    type: { kind: 'integer', min: 0, max: 3600000 },
    default: 5000,
    doc: 'Longest a routine message waits for a batch to fill; alarms never wait.',
  },
  {
    key: 'uplink.timeoutMs',
    type: { kind: 'integer', min: 1000, max: 600000 },
    default: 30000,
    doc: 'Bound on one POST (connect, proxy, TLS, response).',
  },
  {
    key: 'uplink.backoffMaxMs',
    type: { kind: 'integer', min: 1000, max: 86400000 },
    default: 300000,
    doc: 'Longest wait between retries (exponential with jitter from 1 s; Retry-After is honoured up to this).',
  },
  {
    key: 'proxy.url',
    type: { kind: 'url', schemes: ['http:', 'socks5:', 'socks5h:'], allowEmpty: true },
    default: '',
    secret: true,
    doc: 'Proxy for the uplink: http://[user:pass@]host:port (CONNECT) or socks5://[user:pass@]host:port. Empty: see `proxy.fromEnvironment`.',
  },
  {
    key: 'proxy.fromEnvironment',
    type: { kind: 'boolean' },
    default: true,
    doc: 'When `proxy.url` is empty, use HTTPS_PROXY / ALL_PROXY / NO_PROXY from the environment.',
  },
  {
    key: 'proxy.noProxy',
    type: { kind: 'string' },
    default: '',
    doc: 'Comma-separated hosts or domains (".example.org") reached directly, as NO_PROXY.',
  },
  {
    key: 'store.maxRoutineMessages',
    type: { kind: 'integer', min: 100, max: 100000000 },
    default: 1000000,
    doc: 'Quota of routine messages (status, heartbeat, events) kept; past it the oldest are dropped.',
  },
  {
    key: 'store.maxAlarmMessages',
    type: { kind: 'integer', min: 100, max: 100000000 },
    default: 100000,
    doc: 'Quota of alarm messages kept; they are dropped last, oldest first, only past this.',
  },
  {
    key: 'store.minFreeBytes',
    type: { kind: 'integer', min: 0, max: 1099511627776 },
    default: 67108864,
    doc: 'Below this much free space on the data partition, new routine messages are refused (alarms still accepted).',
  },
  // --- command channel and signed commands (issue 5; docs/commands.md) ---
  {
    key: 'commands.keys',
    type: {
      kind: 'list',
      itemName: 'center command key',
      unique: 'id',
      maxItems: 8,
      fields: {
        id: { type: { kind: 'string', pattern: KEY_ID, patternDoc: '1-64 letters, digits, ".", "_" or "-"' }, doc: 'key id, as the center puts it in `keyId` of each command it signs' },
        publicKey: { type: { kind: 'string', pattern: /^[A-Za-z0-9+/]{43}=$/, patternDoc: 'an Ed25519 public key, base64 (32 bytes)' }, doc: 'the public half of the center command key' },
      },
    },
    default: [] as TrustedKey[],
    doc: 'Center command keys trusted to sign commands for this box (more than one while a key is rotated; docs/commands.md). Empty: every command is rejected.',
  },
  {
    key: 'commands.maxLifetimeSec',
    type: { kind: 'integer', min: 10, max: 86400 },
    default: 900,
    doc: 'Longest validity (expiresAt - issuedAt) of a command accepted; longer ones are rejected.',
  },
  {
    key: 'commands.clockSkewSec',
    type: { kind: 'integer', min: 0, max: 3600 },
    default: 60,
    doc: "Allowance for the box's and the center's clocks disagreeing, when checking issued-at and expiry.",
  },
  {
    key: 'commands.reconnectMaxMs',
    type: { kind: 'integer', min: 1000, max: 3600000 },
    default: 60000,
    doc: 'Longest wait between attempts to reopen the command channel (exponential with jitter from 1 s).',
  },
  // --- end command channel ---
  {
    key: 'shutdown.timeoutMs',
    type: { kind: 'integer', min: 100, max: 60000 },
    default: 5000,
    doc: 'Bound on a clean stop after SIGTERM; past it rapd exits non-zero.',
  },
] as const satisfies readonly Setting<unknown>[];

export interface PortConfig {
  name: string;
  /** The gateway address the agent listens on (no prefix; resolved from the plan when empty in the file). */
  address: string;
  port: number;
  pollIntervalSec: number;
  offlineAfterSec: number;
  /** Network interface; "" for a loopback/dev port (no network or firewall rendering). */
  interface: string;
  /** Prefix length of the port subnet (0 for a loopback/dev port). */
  prefix: number;
  dhcp: boolean;
}

type SettingsList = typeof SETTINGS;
type ValueOf<S> = S extends { default: infer D } ? (D extends string ? string : D extends number ? number : D extends boolean ? boolean : D extends readonly (infer E)[] ? E[] : D) : never;
/** The validated configuration, keyed by the dotted setting keys. */
export type Config = { [S in SettingsList[number] as S['key']]: S['key'] extends 'log.level' ? LogLevel : ValueOf<S> };

export const DEFAULT_CONFIG_PATH = '/etc/rapd/rapd.json';

function describeExpected(t: SettingType | ScalarType): string {
  switch (t.kind) {
    case 'list':
      return `a list of at most ${t.maxItems} ${t.itemName} objects`;
    case 'url':
      return `${t.allowEmpty ? 'empty or ' : ''}a URL (${t.schemes.join(' or ')})`;
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

function valid(t: ScalarType, v: unknown): boolean {
  switch (t.kind) {
    case 'url': {
      if (typeof v !== 'string') return false;
      if (v === '') return t.allowEmpty;
      try {
        const u = new URL(v);
        return t.schemes.includes(u.protocol) && u.hostname !== '';
      } catch {
        return false;
      }
    }
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

/** Validate a list setting item by item; problems name `key[i].field`. */
function parseList(
  key: string,
  t: Extract<SettingType, { kind: 'list' }>,
  value: unknown,
  problems: string[],
): Record<string, unknown>[] | null {
  if (!Array.isArray(value) || value.length > t.maxItems) {
    problems.push(`key '${key}': got ${show(value)}, expected ${describeExpected(t)}`);
    return null;
  }
  const before = problems.length;
  const items = value.map((item, i) => {
    const at = `${key}[${i}]`;
    const result: Record<string, unknown> = {};
    if (item === null || typeof item !== 'object' || Array.isArray(item)) {
      problems.push(`key '${at}': got ${show(item)}, expected an ${t.itemName} object`);
      return result;
    }
    for (const k of Object.keys(item)) {
      if (!(k in t.fields)) problems.push(`unknown key '${at}.${k}' (known: ${Object.keys(t.fields).join(', ')})`);
    }
    for (const [name, f] of Object.entries(t.fields)) {
      const v = (item as Record<string, unknown>)[name];
      if (v === undefined) {
        if (f.default === undefined) problems.push(`key '${at}.${name}' is required (${f.doc})`);
        else result[name] = f.default;
      } else if (!valid(f.type, v)) {
        problems.push(`key '${at}.${name}': got ${show(v)}, expected ${describeExpected(f.type)}`);
      } else result[name] = v;
    }
    return result;
  });
  const seen = new Set<unknown>();
  items.forEach((it, i) => {
    const u = it[t.unique];
    if (u !== undefined && seen.has(u)) problems.push(`key '${key}[${i}].${t.unique}': ${show(u)} is used twice`);
    seen.add(u);
  });
  return problems.length === before ? items : null;
}

/**
 * The network side of the ports: fill in addresses from the plan, split
 * "address/prefix", and check what involves more than one port or key
 * (overlapping subnets, an interface used twice or clashing with the WAN,
 * a gateway that is its subnet's network or broadcast address). Returns null
 * when a problem was found.
 */
function resolvePorts(c: Record<string, unknown>, problems: string[]): PortConfig[] | null {
  const before = problems.length;
  const raw = (c['ports'] ?? []) as (Omit<PortConfig, 'prefix'> & { address: string })[];
  const wan = c['network.wanInterface'] as string;
  const portPrefix = c['network.portPrefix'] as number;
  const planText = c['network.plan'] as string;
  const planCidr = parseCidr(planText);
  let plan: Subnet | null = null;
  if (!planCidr || planCidr.prefix > portPrefix) {
    problems.push(`key 'network.plan': got ${show(planText)}, expected an IPv4 subnet no smaller than /${portPrefix} ('network.portPrefix')`);
  } else if (subnetOf(planCidr.address, planCidr.prefix).network !== planCidr.address) {
    problems.push(`key 'network.plan': ${planText} has host bits set (the subnet is ${formatSubnet(subnetOf(planCidr.address, planCidr.prefix))})`);
  } else plan = subnetOf(planCidr.address, planCidr.prefix);

  const subnets: { at: string; subnet: Subnet }[] = [];
  const ifaces = new Map<string, number>();
  const out = raw.map((p, i): PortConfig => {
    const at = `ports[${i}]`;
    if (p.interface === '') {
      if (p.address === '') problems.push(`key '${at}.address' is required for a port without an interface (a loopback/dev port)`);
      else if (p.address.includes('/')) problems.push(`key '${at}.address': got ${show(p.address)}; a "/prefix" needs an interface ('${at}.interface')`);
      return { ...p, prefix: 0 };
    }
    if (p.interface === wan) problems.push(`key '${at}.interface': ${show(p.interface)} is the WAN interface ('network.wanInterface')`);
    else if (p.interface === 'lo') problems.push(`key '${at}.interface': "lo" is loopback; leave it empty for a loopback/dev port`);
    const first = ifaces.get(p.interface);
    if (first !== undefined) problems.push(`key '${at}.interface': ${show(p.interface)} is used by ports[${first}] too`);
    ifaces.set(p.interface, i);

    let gateway: number | null;
    let prefix = portPrefix;
    if (p.address === '') {
      if (!plan) return { ...p, prefix };
      const slots = subnetSize(plan.prefix) / subnetSize(portPrefix);
      if (i >= slots) {
        problems.push(`key '${at}.address': 'network.plan' ${formatSubnet(plan)} has only ${slots} /${portPrefix} subnet(s); give this port an address`);
        return { ...p, prefix };
      }
      gateway = plan.network + i * subnetSize(portPrefix) + 1;
    } else {
      const [addr, len] = p.address.split('/');
      gateway = parseIPv4(addr!);
      if (len !== undefined) prefix = Number(len);
      if (gateway === null || prefix < 8 || prefix > 30) {
        problems.push(`key '${at}.address': got ${show(p.address)}, expected an IPv4 address with an optional "/prefix" from 8 to 30 (the port has an interface)`);
        return { ...p, prefix };
      }
    }
    const subnet = subnetOf(gateway, prefix);
    const shown = `${formatIPv4(gateway)}/${prefix}`;
    if (gateway === subnet.network) problems.push(`key '${at}.address': ${shown} is the network address of ${formatSubnet(subnet)}, not a host in it`);
    if (gateway === broadcastOf(subnet)) problems.push(`key '${at}.address': ${shown} is the broadcast address of ${formatSubnet(subnet)}, not a host in it`);
    const reserved = RESERVED.find((r) => overlaps(r.subnet, subnet));
    if (reserved) problems.push(`key '${at}.address': subnet ${formatSubnet(subnet)} lies in ${reserved.what}`);
    const clash = subnets.find((s) => overlaps(s.subnet, subnet));
    if (clash) problems.push(`key '${at}.address': subnet ${formatSubnet(subnet)} overlaps ${clash.at}'s ${formatSubnet(clash.subnet)}`);
    subnets.push({ at, subnet });
    return { ...p, address: formatIPv4(gateway), prefix };
  });
  return problems.length === before ? out : null;
}

/** Rules that involve more than one key. */
function crossChecks(c: Record<string, unknown>, problems: string[]): void {
  if (c['center.url'] !== '' && c['device.id'] === '') {
    problems.push(`key 'device.id' must be set when 'center.url' is set (it must match the certificate's CN)`);
  }
  const ports = resolvePorts(c, problems);
  if (ports) c['ports'] = ports;
  else return;
  const endpoints = new Set<string>();
  ports.forEach((p, i) => {
    const ep = `${p.address}:${p.port}`;
    if (endpoints.has(ep)) problems.push(`key 'ports[${i}]': address ${ep} is used by another port`);
    endpoints.add(ep);
  });
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
    if (setting.type.kind === 'list') {
      const items = parseList(key, setting.type, value, problems);
      if (items) out[key] = items;
      continue;
    }
    if (!valid(setting.type, value)) {
      const shown = setting.secret ? '<redacted>' : show(value);
      problems.push(`key '${key}': got ${shown}, expected ${describeExpected(setting.type)}`);
      continue;
    }
    out[key] = value;
  }
  crossChecks(out, problems);
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
  for (const s of SETTINGS as readonly Setting<unknown>[]) {
    if (s.type.kind !== 'list') continue;
    for (const [name, f] of Object.entries(s.type.fields)) {
      rows.push(`| \`${s.key}[].${name}\` | ${describeExpected(f.type)} | ${f.default === undefined ? 'required' : `\`${JSON.stringify(f.default)}\``} | ${f.doc} |`);
    }
  }
  return ['| key | type | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
