// `rapd net show`: what rapd would apply for a configuration, for site IT to
// review and for the image build. Pure rendering; changes nothing.

import { errorLine } from '../lib/errors.ts';
import { DEFAULT_CONFIG_PATH, loadConfig } from './config.ts';
import { firewallPolicy, renderFirewall } from './firewall.ts';
import { describePorts } from './network.ts';
import { TIMESYNCD_DROPIN, renderNetworkdFiles, renderTimesyncd } from './wan.ts';

const USAGE = 'usage: rapd net show [--config PATH] [--firewall | --network]';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Returns the exit code. --firewall prints only the ruleset (an `nft -f` file). */
export function netShow(args: string[], io: Io): number {
  let configPath = DEFAULT_CONFIG_PATH;
  let only: 'firewall' | 'network' | null = null;
  const [cmd, ...rest] = args;
  if (cmd === '-h' || cmd === '--help') {
    io.out(`${USAGE}\n`);
    return 0;
  }
  if (cmd !== 'show') return usage(io, cmd === undefined ? 'no command given' : `unknown command '${cmd}'`);
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--config') {
      const v = rest[++i];
      if (!v) return usage(io, '--config needs a path');
      configPath = v;
    } else if (a.startsWith('--config=')) configPath = a.slice('--config='.length);
    else if (a === '--firewall' || a === '--network') {
      if (only) return usage(io, 'give at most one of --firewall, --network');
      only = a === '--firewall' ? 'firewall' : 'network';
    } else return usage(io, `unknown argument '${a}'`);
  }
  let config;
  try {
    config = loadConfig(configPath);
  } catch (e) {
    io.err(`rapd: ${errorLine(e)}\n`);
    return 1;
  }
  const ruleset = renderFirewall(firewallPolicy(config));
  const files = renderNetworkdFiles(config);
  if (only === 'firewall') {
    io.out(ruleset);
    return 0;
  }
  const dir = config['paths.networkd'];
  const parts: string[] = [];
  if (only === null) {
    const ports = describePorts(config);
    const dev = config['ports'].filter((p) => p.interface === '').map((p) => `port ${p.name}: loopback/dev port ${p.address}:${p.port} (no network or firewall rendering)`);
    parts.push(`# rapd net show for ${configPath}`, ...[...ports, ...dev].map((l) => `#   ${l}`));
    if (ports.length === 0) parts.push('#   no port has an interface: rapd applies nothing at start (shown: what it would be)');
    parts.push('', '### firewall: nft -f - (table inet rapbox)', ruleset);
  }
  for (const [name, text] of files) parts.push(`### ${dir}/${name}`, text);
  const ntp = renderTimesyncd(config);
  if (ntp !== null) parts.push(`### ${config['paths.timesyncd']}/${TIMESYNCD_DROPIN}`, ntp);
  io.out(`${parts.join('\n')}\n`);
  return 0;
}

function usage(io: Io, problem: string): number {
  io.err(`rapd net: ${problem}\n${USAGE}\n`);
  return 2;
}
