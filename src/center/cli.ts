// rap-center's command line: serve, look at what boxes sent, and run the PKI.
// Returns the exit code: 0 ok, 1 a failure (one line on stderr), 2 a usage
// error. Only `serve` keeps running; it stops on SIGTERM/SIGINT.

import { readFileSync, statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { RapError, errorLine, errorMessage, isRapError } from '../lib/errors.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import { run, type Runner } from '../lib/run.ts';
import { RAPD_VERSION } from '../rapd/version.ts';
import { PORT_NAME, PORT_NAME_DOC } from '../protocol/telemetry.ts';
import { openCenterDb, type DeviceRow, type StoredMessage } from './db.ts';
import { checkDeviceId, pkiInit, pkiIssueDevice, pkiIssueServer, pkiPaths, type Issued } from './pki.ts';
import { startCenter } from './server.ts';
import { callAdmin, parseAdminRequest, startAdmin } from './admin.ts';
import { generateCommandKey, loadCommandKey } from './commands.ts';
import type { AuditRecord } from '../protocol/audit.ts';

export const USAGE = `usage: rap-center serve --db PATH --listen HOST:PORT --pki DIR [--command-key FILE] [--admin SOCKET]
       rap-center devices --db PATH [--json]
       rap-center messages --db PATH --device ID [--port NAME] [--tail N] [--json]
       rap-center audit --db PATH --device ID [--verify] [--json]
       rap-center commands --db PATH --device ID [--tail N] [--json]
       rap-center command --admin SOCKET --device ID --type TYPE [--args JSON] [--ttl-ms N] [--timeout-ms N]
       rap-center command-key generate --dir DIR --id ID
       rap-center pki init --dir DIR
       rap-center pki issue-server --dir DIR --name DNSNAME [--ip IP]...
       rap-center pki issue-device --dir DIR ID
       rap-center --version | --help

commands:
  serve         accept telemetry from boxes over mutual TLS (DIR/server.pem,
                server.key, ca.pem); prints "listening on HOST:PORT" when ready
  devices       one line per box: last seen, messages, alarms, instruments
  messages      the newest messages of one box (default --tail 20), oldest first
  audit         one box's audit records as received; --verify checks its chain
                (gaps, broken links, edited records, forks); exit 1 if broken
  commands      commands sent to one box and their results, newest first
  command       sign and send one command through a running serve's --admin
                socket and print the box's result (exit 1 unless status ok)
  command-key generate   Ed25519 command signing key DIR/ID.key (0600) and
                DIR/ID.pub (the entry for the boxes' commands.keys)
  pki init      create the CA (P-256, 10 years) in DIR
  pki issue-server   server certificate (CN and SAN DNSNAME, plus --ip SANs)
  pki issue-device   client certificate CN=ID -> DIR/devices/ID.pem, ID.key`;

export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

export interface CliDeps {
  run: Runner;
  log?: Logger;
  /** Resolves when serve should stop (the entry point wires SIGTERM/SIGINT). */
  stopSignal?: () => Promise<string>;
}

const DEFAULT_TAIL = 20;
const MAX_TAIL = 100_000;

class Usage extends Error {}

type Spec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;

function parse(args: string[], options: Spec, positionals = 0): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  let r;
  try {
    r = parseArgs({ args, options, allowPositionals: positionals > 0, strict: true });
  } catch (e) {
    // node:util's messages are clear ("Unknown option '--x'"); drop its hint about '--'.
    throw new Usage(errorMessage(e).split('. To specify')[0]!);
  }
  if (r.positionals.length > positionals) throw new Usage(`unexpected argument '${r.positionals[positionals]}'`);
  return { values: r.values as Record<string, string | boolean | string[] | undefined>, positionals: r.positionals };
}

function required(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new Usage(`--${name} is required`);
  return v;
}

/** "HOST:PORT", "[v6]:PORT"; port 0 picks a free one. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Usage(`--listen '${s}': expected HOST:PORT (e.g. 0.0.0.0:8443 or [::]:8443)`);
  return { host: (m[1] ?? m[2])!, port };
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

function formatDevices(devices: DeviceRow[]): string {
  if (devices.length === 0) return 'no devices yet\n';
  return table(
    ['DEVICE', 'LAST SEEN', 'MESSAGES', 'ALARMS', 'INSTRUMENTS', 'ADDRESS'],
    devices.map((d) => [d.id, d.lastSeen, String(d.messages), String(d.alarms), String(d.instruments.length), d.remoteAddress]),
  );
}

function formatMessages(messages: StoredMessage[]): string {
  if (messages.length === 0) return 'no messages\n';
  return table(
    ['RECEIVED', 'PORT', 'KIND', 'ID', 'BODY'],
    messages.map((m) => [m.receivedAt, m.port, m.kind, m.id, JSON.stringify(m.body)]),
  );
}

function formatIssued(what: string, i: Issued): string {
  return `${what}: ${i.subject}, valid until ${i.notAfter}
  certificate ${i.cert}
  key         ${i.key} (0600)
  sha256      ${i.sha256}
`;
}

function readPki(dir: string, log: Logger): { key: Buffer; cert: Buffer; ca: Buffer } {
  const p = pkiPaths(dir);
  const read = (path: string, hint: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new RapError('RAP_PKI', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)} (${hint})`, { path }, { cause: e });
    }
  };
  const ca = read(p.caCert, `run rap-center pki init --dir ${dir}`);
  const hint = `run rap-center pki issue-server --dir ${dir} --name DNSNAME`;
  const cert = read(p.serverCert, hint);
  const key = read(p.serverKey, hint);
  if ((statSync(p.serverKey).mode & 0o077) !== 0) log.warn('server key is readable by others', { path: p.serverKey });
  return { key, cert, ca };
}

async function serve(args: string[], io: Io, deps: CliDeps): Promise<number> {
  const { values } = parse(args, {
    db: { type: 'string' },
    listen: { type: 'string' },
    pki: { type: 'string' },
    'command-key': { type: 'string' },
    admin: { type: 'string' },
  });
  const dbPath = required(values, 'db');
  const { host, port } = parseListen(required(values, 'listen'));
  const dir = required(values, 'pki');
  const log = deps.log ?? createLogger();
  const keyFile = values['command-key'] as string | undefined;
  const commandKey = keyFile === undefined ? null : loadCommandKey(keyFile, log);
  const center = await startCenter({ dbPath, host, port, ...readPki(dir, log), log, commandKey });
  const adminPath = values['admin'] as string | undefined;
  const admin = adminPath === undefined ? null : await startAdmin(adminPath, center.commands, log).catch(async (e: unknown) => {
    await center.close();
    throw e;
  });
  io.out(`listening on ${hostPort(host, center.port)}\n`);
  const signal = await (deps.stopSignal ?? (() => new Promise<string>(() => {})))();
  log.info('rap-center stopping', { signal });
  await admin?.close();
  await center.close();
  log.info('rap-center stopped');
  return 0;
}

function devices(args: string[], io: Io): number {
  const { values } = parse(args, { db: { type: 'string' }, json: { type: 'boolean' } });
  const db = openCenterDb(required(values, 'db'), { create: false });
  try {
    const list = db.devices();
    io.out(values['json'] ? `${JSON.stringify(list, null, 2)}\n` : formatDevices(list));
    return 0;
  } finally {
    db.close();
  }
}

function messages(args: string[], io: Io): number {
  const { values } = parse(args, {
    db: { type: 'string' },
    device: { type: 'string' },
    port: { type: 'string' },
    tail: { type: 'string' },
    json: { type: 'boolean' },
  });
  const dbPath = required(values, 'db');
  const device = required(values, 'device');
  try {
    checkDeviceId(device);
  } catch (e) {
    throw new Usage(`--device: ${errorMessage(e)}`);
  }
  const port = values['port'] as string | undefined;
  if (port !== undefined && !PORT_NAME.test(port)) throw new Usage(`--port '${port}': expected ${PORT_NAME_DOC}`);
  const tail = tailArg(values['tail'] as string | undefined);
  const db = openCenterDb(dbPath, { create: false });
  try {
    const list = db.messages({ device, port, tail });
    io.out(values['json'] ? `${JSON.stringify(list, null, 2)}\n` : formatMessages(list));
    return 0;
  } finally {
    db.close();
  }
}

function deviceArg(values: Record<string, unknown>): string {
  const device = required(values, 'device');
  try {
    checkDeviceId(device);
  } catch (e) {
    throw new Usage(`--device: ${errorMessage(e)}`);
  }
  return device;
}

function audit(args: string[], io: Io): number {
  const { values } = parse(args, { db: { type: 'string' }, device: { type: 'string' }, verify: { type: 'boolean' }, json: { type: 'boolean' } });
  const dbPath = required(values, 'db');
  const device = deviceArg(values);
  const db = openCenterDb(dbPath, { create: false });
  try {
    if (values['verify']) {
      const r = db.auditVerify(device);
      if (values['json']) io.out(`${JSON.stringify(r, null, 2)}\n`);
      else {
        io.out(`${device}: ${r.records} audit record(s), head ${r.head ? `${r.head.seq} ${r.head.hash}` : 'none'}\n`);
        io.out(r.ok ? 'chain ok\n' : `CHAIN BROKEN:\n${r.problems.map((p) => `  ${p}`).join('\n')}\n`);
      }
      return r.ok ? 0 : 1;
    }
    const records = db.auditRecords(device, 0, MAX_TAIL);
    io.out(values['json'] ? `${JSON.stringify(records, null, 2)}\n` : formatAudit(records));
    return 0;
  } finally {
    db.close();
  }
}

function commands(args: string[], io: Io): number {
  const { values } = parse(args, { db: { type: 'string' }, device: { type: 'string' }, tail: { type: 'string' }, json: { type: 'boolean' } });
  const dbPath = required(values, 'db');
  const device = deviceArg(values);
  const tail = tailArg(values['tail'] as string | undefined);
  const db = openCenterDb(dbPath, { create: false });
  try {
    const list = db.commands(device, tail);
    io.out(
      values['json']
        ? `${JSON.stringify(list, null, 2)}\n`
        : list.length === 0
          ? 'no commands\n'
          : table(
              ['SENT', 'ID', 'TYPE', 'KEY', 'STATUS', 'RESULT'],
              list.map((c) => [c.sentAt, c.id, c.type ?? '-', c.keyId ?? '-', c.status ?? 'waiting', c.errorCode ? `${c.errorCode}: ${c.error}` : JSON.stringify(c.result)]),
            ),
    );
    return 0;
  } finally {
    db.close();
  }
}

async function command(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    admin: { type: 'string' },
    device: { type: 'string' },
    type: { type: 'string' },
    args: { type: 'string' },
    'ttl-ms': { type: 'string' },
    'timeout-ms': { type: 'string' },
  });
  const socket = required(values, 'admin');
  const num = (name: string): number | undefined => {
    const v = values[name] as string | undefined;
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new Usage(`--${name} '${v}': expected a number of milliseconds`);
    return Number(v);
  };
  let argsValue: unknown = {};
  if (values['args'] !== undefined) {
    try {
      argsValue = JSON.parse(values['args'] as string);
    } catch (e) {
      throw new Usage(`--args: not valid JSON (${errorMessage(e)})`);
    }
  }
  let req;
  try {
    req = parseAdminRequest(JSON.stringify({ device: deviceArg(values), type: required(values, 'type'), args: argsValue, ttlMs: num('ttl-ms'), timeoutMs: num('timeout-ms') }));
  } catch (e) {
    if (e instanceof Usage) throw e;
    throw new Usage(errorMessage(e));
  }
  const result = await callAdmin(socket, req);
  io.out(`${JSON.stringify(result, null, 2)}\n`);
  return result.status === 'ok' ? 0 : 1;
}

function commandKey(args: string[], io: Io): number {
  const [sub, ...rest] = args;
  if (sub !== 'generate') throw new Usage(sub === undefined ? 'command-key needs a subcommand (generate)' : `unknown command-key subcommand '${sub}'`);
  const { values } = parse(rest, { dir: { type: 'string' }, id: { type: 'string' } });
  const dir = required(values, 'dir');
  const k = generateCommandKey(dir, required(values, 'id'));
  io.out(`command key ${required(values, 'id')}
  secret key  ${k.keyFile} (0600; for serve --command-key)
  public key  ${k.pubFile}
  for the boxes' config, commands.keys: ${readFileSync(k.pubFile, 'utf8').trim()}
`);
  return 0;
}

function formatAudit(records: AuditRecord[]): string {
  if (records.length === 0) return 'no audit records\n';
  return table(
    ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'INSTRUMENT', 'OUTCOME', 'DETAILS'],
    records.map((r) => [String(r.seq), r.time, r.actor, r.action, r.instrument ?? '-', r.outcome, JSON.stringify(r.details)]),
  );
}

function tailArg(arg: string | undefined): number {
  const tail = arg === undefined ? DEFAULT_TAIL : Number(arg);
  if (!/^\d+$/.test(arg ?? '1') || tail < 1 || tail > MAX_TAIL) throw new Usage(`--tail '${arg}': expected an integer from 1 to ${MAX_TAIL}`);
  return tail;
}

async function pki(args: string[], io: Io, deps: CliDeps): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'init') {
    const { values } = parse(rest, { dir: { type: 'string' } });
    io.out(formatIssued('CA', await pkiInit(required(values, 'dir'), deps)));
    return 0;
  }
  if (sub === 'issue-server') {
    const { values } = parse(rest, { dir: { type: 'string' }, name: { type: 'string' }, ip: { type: 'string', multiple: true } });
    const issued = await pkiIssueServer(required(values, 'dir'), { name: required(values, 'name'), ips: (values['ip'] as string[] | undefined) ?? [] }, deps);
    io.out(formatIssued('server certificate', issued));
    return 0;
  }
  if (sub === 'issue-device') {
    const { values, positionals } = parse(rest, { dir: { type: 'string' } }, 1);
    const dir = required(values, 'dir');
    const id = positionals[0];
    if (id === undefined) throw new Usage('pki issue-device needs a device ID');
    io.out(formatIssued('device certificate', await pkiIssueDevice(dir, id, deps)));
    return 0;
  }
  throw new Usage(sub === undefined ? 'pki needs a subcommand (init, issue-server, issue-device)' : `unknown pki subcommand '${sub}'`);
}

/** Returns the process exit code. */
export async function centerMain(args: string[], io: Io, deps: CliDeps = { run }): Promise<number> {
  const [cmd, ...rest] = args;
  try {
    switch (cmd) {
      case '--version':
        io.out(`rap-center ${RAPD_VERSION} (node ${process.version})\n`);
        return 0;
      case '-h':
      case '--help':
      case 'help':
        io.out(`${USAGE}\n`);
        return 0;
      case 'serve':
        return await serve(rest, io, deps);
      case 'devices':
        return devices(rest, io);
      case 'messages':
        return messages(rest, io);
      case 'pki':
        return await pki(rest, io, deps);
      case 'audit':
        return audit(rest, io);
      case 'commands':
        return commands(rest, io);
      case 'command':
        return await command(rest, io);
      case 'command-key':
        return commandKey(rest, io);
      case undefined:
        throw new Usage('no command given');
      default:
        throw new Usage(`unknown command '${cmd}'`);
    }
  } catch (e) {
    if (e instanceof Usage || isRapError(e, 'RAP_USAGE')) {
      io.err(`rap-center: ${e.message}\n${USAGE}\n`);
      return 2;
    }
    io.err(`rap-center: ${errorLine(e)}\n`);
    return 1;
  }
}
