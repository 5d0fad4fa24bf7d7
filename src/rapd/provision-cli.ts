// `rapd provision ...`: make and check provisioning bundles at the factory,
// and consume the pending one on the box (rapbox-provision.service).

import { errorLine } from '../lib/errors.ts';
import { createLogger } from '../lib/log.ts';
import { provisionPaths } from './paths.ts';
import { applyPendingBundle, checkBundle, createBundle, readBundle, readFactoryConfig, type CheckedBundle } from './provision.ts';

const USAGE = `usage: rapd provision create --out DIR --device-id ID --config SITE.json
                             [--center-ca PEM] [--cert PEM --key PEM]
                             [--enrollment-token FILE] [--factory-config rapd.json]
       rapd provision check DIR [--factory-config rapd.json]
       rapd provision apply [--root DIR]
create: make a bundle (docs/provisioning.md) and check it as the box will
check:  check a bundle (exit 0: the box would apply it)
apply:  on the box, consume the pending bundle on the data partition once
        (exit 0: applied or none; 1: rejected, see the journal)`;

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const VALUE_FLAGS = ['--out', '--device-id', '--config', '--center-ca', '--cert', '--key', '--enrollment-token', '--factory-config', '--root'] as const;
type Flag = (typeof VALUE_FLAGS)[number];

function summary(b: CheckedBundle): string {
  const files = Object.entries(b.manifest.files).map(([n, h]) => `  ${n.padEnd(17)} sha256 ${h}`);
  return [`bundle for ${b.manifest.deviceId}, created ${b.manifest.createdAt}`, ...files, `  site: center ${b.config['center.url'] || 'none'}, WAN ${b.config['wan.address'] || 'DHCP'}`].join('\n');
}

export function provisionMain(args: string[], io: Io): number {
  const [cmd, ...rest] = args;
  if (cmd === undefined || cmd === '-h' || cmd === '--help') {
    (cmd === undefined ? io.err : io.out)(`${USAGE}\n`);
    return cmd === undefined ? 2 : 0;
  }
  const flags = new Map<Flag, string>();
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if ((VALUE_FLAGS as readonly string[]).includes(a)) {
      const v = rest[++i];
      if (v === undefined) return usage(io, `${a} needs a value`);
      flags.set(a as Flag, v);
    } else if (a.startsWith('--')) return usage(io, `unknown option '${a}'`);
    else positional.push(a);
  }
  try {
    if (cmd === 'create') {
      for (const f of ['--out', '--device-id', '--config'] as const) if (!flags.has(f)) return usage(io, `create needs ${f}`);
      if (positional.length > 0) return usage(io, `unexpected argument '${positional[0]}'`);
      const b = createBundle({
        out: flags.get('--out')!,
        deviceId: flags.get('--device-id')!,
        config: flags.get('--config')!,
        centerCa: flags.get('--center-ca'),
        cert: flags.get('--cert'),
        key: flags.get('--key'),
        enrollmentToken: flags.get('--enrollment-token'),
        factoryConfig: flags.get('--factory-config'),
      });
      io.out(`${summary(b)}\nwrote ${flags.get('--out')}\n`);
      return 0;
    }
    if (cmd === 'check') {
      if (positional.length !== 1) return usage(io, 'check needs one bundle directory');
      const factory = flags.get('--factory-config');
      const b = checkBundle(readBundle(positional[0]!), factory ? readFactoryConfig(factory) : {});
      io.out(`${summary(b)}\nok: the box would apply it\n`);
      return 0;
    }
    if (cmd === 'apply') {
      if (positional.length > 0) return usage(io, `unexpected argument '${positional[0]}'`);
      const log = createLogger({ write: io.out }, { part: 'provision' });
      const outcome = applyPendingBundle(provisionPaths(flags.get('--root') ?? '/'), log);
      if (outcome.result === 'rejected') {
        io.err(`rapd provision: RAP_PROVISION: bundle rejected: ${outcome.reason}\n`);
        return 1;
      }
      if (outcome.result === 'none') log.info('no provisioning bundle pending');
      return 0;
    }
    return usage(io, `unknown command '${cmd}'`);
  } catch (e) {
    io.err(`rapd provision: ${errorLine(e)}\n`);
    return 1;
  }
}

function usage(io: Io, problem: string): number {
  io.err(`rapd provision: ${problem}\n${USAGE}\n`);
  return 2;
}
