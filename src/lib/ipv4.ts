// IPv4 address arithmetic for the instrument-port address plan: parse,
// format, subnets and their overlaps. Pure; numbers are unsigned 32-bit.

import { isIPv4 } from 'node:net';

export interface Subnet {
  /** The network address (host bits zero). */
  network: number;
  prefix: number;
}

/** The address as a number, or null when `s` is not a dotted-quad IPv4 address. */
export function parseIPv4(s: string): number | null {
  if (!isIPv4(s)) return null;
  return s.split('.').reduce((n, part) => n * 256 + Number(part), 0);
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** "a.b.c.d/len" split into address and prefix, or null. */
export function parseCidr(s: string): { address: number; prefix: number } | null {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m) return null;
  const address = parseIPv4(m[1]!);
  const prefix = Number(m[2]);
  if (address === null || prefix > 32) return null;
  return { address, prefix };
}

/** Number of addresses in a subnet of this prefix length. */
export function subnetSize(prefix: number): number {
  return 2 ** (32 - prefix);
}

/** The subnet `address` lies in for a prefix length. */
export function subnetOf(address: number, prefix: number): Subnet {
  const size = subnetSize(prefix);
  return { network: address - (address % size), prefix };
}

export function broadcastOf(s: Subnet): number {
  return s.network + subnetSize(s.prefix) - 1;
}

export function formatSubnet(s: Subnet): string {
  return `${formatIPv4(s.network)}/${s.prefix}`;
}

export function contains(s: Subnet, address: number): boolean {
  return address >= s.network && address <= broadcastOf(s);
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return a.network <= broadcastOf(b) && b.network <= broadcastOf(a);
}

/**
 * Ranges no instrument subnet may use: "this network", loopback, link-local,
 * multicast and reserved, and the limited broadcast address.
 */
export const RESERVED: readonly { subnet: Subnet; what: string }[] = [
  { subnet: { network: 0, prefix: 8 }, what: '"this network" (0.0.0.0/8)' },
  { subnet: { network: 127 * 2 ** 24, prefix: 8 }, what: 'loopback (127.0.0.0/8)' },
  { subnet: { network: (169 * 256 + 254) * 2 ** 16, prefix: 16 }, what: 'link-local (169.254.0.0/16)' },
  { subnet: { network: 224 * 2 ** 24, prefix: 3 }, what: 'multicast or reserved (224.0.0.0/3)' },
];
