// The WAN side from the site config (wan.*): one systemd-networkd file for
// the WAN interface (DHCP or a static address, gateway and DNS servers) and a
// systemd-timesyncd drop-in for the NTP servers, rendered purely; an adaptor
// writes the drop-in and restarts timesyncd only when it changed (the
// .network file goes through applyNetworkFiles with the ports' files, so
// networkd is reloaded once).
//
// Precedence: the image ships /usr/lib/systemd/network/80-wan.network (DHCP
// on "wan"), in force from the first instant of boot. When the site config
// changes anything about the WAN, rapd writes a file of the same name to
// /run/systemd/network, which shadows it wholly (systemd.network(5): /run
// beats /usr/lib for the same file name); when it changes nothing, rapd
// removes its file, so the image default applies and networkd is not made to
// renegotiate a lease at every boot for nothing. A site config edit takes
// effect at rapd's next start.

import { mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncDir, writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Runner } from '../lib/run.ts';
import { listItems, type Config } from './config.ts';
import { WAN_NETWORK_FILE, renderNetworkFiles } from './network.ts';

export { WAN_NETWORK_FILE };

/** rapd's drop-in in timesyncd's runtime drop-in directory. */
export const TIMESYNCD_DROPIN = '50-rapbox-wan.conf';

/** The WAN's .network file (systemd 257). */
export function renderWanNetwork(config: Config): string {
  const dns = listItems(config['wan.dns']);
  const ntp = listItems(config['wan.ntp']);
  const dhcp = config['wan.address'] === '';
  const lines = [
    '# Written by rapd from the site config (wan.*); shadows the image\'s',
    '# /usr/lib/systemd/network/80-wan.network. Rewritten at every start, do not edit.',
    '[Match]',
    `Name=${config['network.wanInterface']}`,
    '',
    '[Network]',
    `Description=rapbox WAN (${dhcp ? 'DHCP' : 'static'})`,
  ];
  if (dhcp) lines.push('DHCP=yes');
  else lines.push(`Address=${config['wan.address']}`, `Gateway=${config['wan.gateway']}`, 'DHCP=no');
  for (const d of dns) lines.push(`DNS=${d}`);
  lines.push(
    // The box is an end host on the WAN: it never routes for anyone.
    'IPv4Forwarding=no',
    'IPv6Forwarding=no',
    'LLDP=no',
    'EmitLLDP=no',
  );
  // The site's own servers win over whatever the lease or a router advertises
  // (link servers would otherwise take precedence in resolved and timesyncd).
  const ignore = [...(dns.length > 0 ? ['UseDNS=no'] : []), ...(ntp.length > 0 ? ['UseNTP=no'] : [])];
  if (dhcp && ignore.length > 0) {
    lines.push('', '[DHCPv4]', ...ignore, '', '[DHCPv6]', ...ignore);
    if (dns.length > 0) lines.push('', '[IPv6AcceptRA]', 'UseDNS=no');
  }
  return `${lines.join('\n')}\n`;
}

/** The timesyncd drop-in for `wan.ntp`, or null when the site names no NTP server. */
export function renderTimesyncd(config: Config): string | null {
  const ntp = listItems(config['wan.ntp']);
  if (ntp.length === 0) return null;
  return ['# Written by rapd from the site config (wan.ntp); rewritten at every start, do not edit.', '[Time]', `NTP=${ntp.join(' ')}`, ''].join('\n');
}

/** True when the site config changes nothing the image's 80-wan.network sets. */
export function wanIsImageDefault(config: Config): boolean {
  return config['wan.address'] === '' && config['wan.dns'] === '' && config['wan.ntp'] === '' && config['network.wanInterface'] === 'wan';
}

/** Every networkd file rapd writes: the instrument ports', and the WAN's unless the image default is the site's. */
export function renderNetworkdFiles(config: Config): Map<string, string> {
  const files = renderNetworkFiles(config);
  if (!wanIsImageDefault(config)) files.set(WAN_NETWORK_FILE, renderWanNetwork(config));
  return files;
}

export interface TimesyncdApplyResult {
  changed: boolean;
  restarted: boolean;
}

/**
 * Make `dir/50-rapbox-wan.conf` hold `content` (null: absent), then restart
 * timesyncd (try-restart: never starts it if it is off) only when it changed.
 */
export async function applyTimesyncd(dir: string, content: string | null, run: Runner): Promise<TimesyncdApplyResult> {
  const path = join(dir, TIMESYNCD_DROPIN);
  let old: string | null = null;
  try {
    old = readFileSync(path, 'utf8');
  } catch {
    // absent
  }
  if (old === content) return { changed: false, restarted: false };
  try {
    if (content === null) {
      unlinkSync(path);
      fsyncDir(dir);
    } else {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      // timesyncd runs as its own user and must read the file.
      writeFileDurable(path, content, 0o644);
    }
  } catch (e) {
    throw new RapError('RAP_NET', `cannot write the timesyncd drop-in ${path}: ${errorMessage(e)}`, { path }, { cause: e });
  }
  try {
    await run(['systemctl', 'try-restart', 'systemd-timesyncd.service'], { timeoutMs: 30_000 });
  } catch (e) {
    throw new RapError('RAP_NET', `timesyncd did not restart with the NTP servers of ${path}: ${errorMessage(e)}`, { path }, { cause: e });
  }
  return { changed: true, restarted: true };
}
