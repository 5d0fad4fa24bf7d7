// The instrument ports' network side: one systemd-networkd `.network` file per
// port with an interface, rendered purely from the configuration, and an
// adaptor that writes them to networkd's runtime directory and asks networkd
// to reload only when something changed.
//
// Each port is an island: a static gateway address, an optional DHCP server
// that hands out an address and nothing else (no router, no DNS: the
// instrument has nowhere to go but its gateway), no IPv6, no forwarding.
// Written for systemd 257 (Debian 13); the firewall (firewall.ts) is what
// actually enforces the islands, these files only avoid inviting traffic.

import { mkdirSync, readFileSync, readdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncDir, writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import { broadcastOf, formatIPv4, formatSubnet, parseIPv4, subnetOf, subnetSize, type Subnet } from '../lib/ipv4.ts';
import type { Runner } from '../lib/run.ts';
import type { Config, PortConfig } from './config.ts';

/** A port with an interface: what networkd and the firewall need to know. */
export interface NetPort {
  name: string;
  iface: string;
  /** The gateway address on the box (the agent listens here). */
  gateway: string;
  prefix: number;
  subnet: Subnet;
  agentPort: number;
  dhcp: boolean;
}

/** The ports that have an interface, in config order; dev ports have none. */
export function netPorts(config: Config): NetPort[] {
  return config['ports']
    .filter((p: PortConfig) => p.interface !== '')
    .map((p) => {
      const gw = parseIPv4(p.address);
      // The config layer has validated these; a failure here is a bug.
      if (gw === null) throw new RapError('RAP_NET', `port ${p.name}: gateway ${p.address} is not IPv4`);
      return { name: p.name, iface: p.interface, gateway: p.address, prefix: p.prefix, subnet: subnetOf(gw, p.prefix), agentPort: p.port, dhcp: p.dhcp };
    });
}

/**
 * The DHCP pool: the upper half of the subnet's hosts (a /28 hands out
 * .8-.14), so the lower half is free for instruments configured statically.
 * networkd never hands out its own address even if it lies in the pool.
 */
export function dhcpPool(s: Subnet): { offset: number; size: number; first: string; last: string } {
  const size = subnetSize(s.prefix);
  const offset = size / 2;
  const count = size / 2 - 1;
  return { offset, size: count, first: formatIPv4(s.network + offset), last: formatIPv4(broadcastOf(s) - 1) };
}

/** File name of a port's .network file; sorts before the image's 80-wan.network. */
export function networkFileName(p: NetPort): string {
  return `${NETWORK_FILE_PREFIX}${p.name}.network`;
}
/** Every instrument port file rapd owns in the networkd directory starts with this (stale ones are removed). */
export const NETWORK_FILE_PREFIX = '10-rapbox-';
/** The WAN's file (wan.ts): same name as the image's DHCP default, which it shadows; rapd's too. */
export const WAN_NETWORK_FILE = '80-wan.network';
const ownedByRapd = (name: string): boolean => (name.startsWith(NETWORK_FILE_PREFIX) && name.endsWith('.network')) || name === WAN_NETWORK_FILE;

/** The .network file for one instrument port (systemd 257). */
export function renderNetworkFile(p: NetPort): string {
  const lines = [
    `# Written by rapd for instrument port ${p.name}; rewritten at every start, do not edit.`,
    '[Match]',
    `Name=${p.iface}`,
    '',
    '[Link]',
    // The box is "online" when the WAN is; an empty instrument port must not hold up boot.
    'RequiredForOnline=no',
    '',
    '[Network]',
    `Description=rapbox instrument port ${p.name}`,
    `Address=${p.gateway}/${p.prefix}`,
    // The address is there with no cable plugged in and stays when it is
    // pulled: rapd's agent can bind at boot and keeps its socket.
    'ConfigureWithoutCarrier=yes',
    'IgnoreCarrierLoss=yes',
    // Islands: IPv4 only, no router advertisements taken or sent, no forwarding or NAT.
    'LinkLocalAddressing=no',
    'IPv6AcceptRA=no',
    'IPv6SendRA=no',
    'DHCP=no',
    'IPv4Forwarding=no',
    'IPv6Forwarding=no',
    'IPMasquerade=no',
    // Say nothing about the box on an instrument port.
    'LLDP=no',
    'EmitLLDP=no',
    'LLMNR=no',
    'MulticastDNS=no',
    `DHCPServer=${p.dhcp ? 'yes' : 'no'}`,
  ];
  if (p.dhcp) {
    const pool = dhcpPool(p.subnet);
    lines.push(
      '',
      '[DHCPServer]',
      `# Pool ${pool.first}-${pool.last}; the lower half is for instruments configured statically.`,
      `PoolOffset=${pool.offset}`,
      `PoolSize=${pool.size}`,
      // Only an address: no default route and no name servers, so the
      // instrument has no way out and no reason to look for one.
      'EmitRouter=no',
      'EmitDNS=no',
      'EmitNTP=no',
      'EmitSIP=no',
      'EmitPOP3=no',
      'EmitSMTP=no',
      'EmitLPR=no',
      'EmitTimezone=no',
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Every file rapd wants in the networkd directory, by name. */
export function renderNetworkFiles(config: Config): Map<string, string> {
  return new Map(netPorts(config).map((p) => [networkFileName(p), renderNetworkFile(p)]));
}

export interface NetworkApplyResult {
  /** Files written or removed (empty: nothing changed, networkd not asked). */
  changed: string[];
  reloaded: boolean;
}

/**
 * Make `dir` hold exactly `files` among rapd's own (NETWORK_FILE_PREFIX and
 * WAN_NETWORK_FILE) files: each written atomically, stale ones removed, then `networkctl
 * reload` once, only when something changed. Files of others are untouched.
 */
export async function applyNetworkFiles(dir: string, files: ReadonlyMap<string, string>, run: Runner): Promise<NetworkApplyResult> {
  const changed: string[] = [];
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    for (const [name, content] of files) {
      let old: string | null = null;
      try {
        old = readFileSync(join(dir, name), 'utf8');
      } catch {
        // absent: write it
      }
      if (old === content) continue;
      // networkd runs as its own user and must read the file.
      writeFileDurable(join(dir, name), content, 0o644);
      changed.push(name);
    }
    for (const name of readdirSync(dir)) {
      if (ownedByRapd(name) && !files.has(name)) {
        unlinkSync(join(dir, name));
        changed.push(name);
      }
    }
    if (changed.length > 0) fsyncDir(dir);
  } catch (e) {
    throw new RapError('RAP_NET', `cannot write networkd files in ${dir}: ${errorMessage(e)}`, { dir }, { cause: e });
  }
  if (changed.length === 0) return { changed, reloaded: false };
  try {
    await run(['networkctl', 'reload'], { timeoutMs: 30_000 });
  } catch (e) {
    throw new RapError('RAP_NET', `networkd did not take rapd's files (${changed.join(', ')}): ${errorMessage(e)}`, { dir, changed }, { cause: e });
  }
  return { changed, reloaded: true };
}

/** One line per port for people: where the island is and what DHCP hands out. */
export function describePorts(config: Config): string[] {
  return netPorts(config).map((p) => {
    const dhcp = p.dhcp ? `DHCP ${dhcpPool(p.subnet).first}-${dhcpPool(p.subnet).last}` : 'static instrument';
    return `port ${p.name}: ${p.iface} ${formatSubnet(p.subnet)}, gateway ${p.gateway}:${p.agentPort}, ${dhcp}`;
  });
}
