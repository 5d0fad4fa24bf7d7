// The box's firewall: one nftables table, `inet rapbox`, rendered purely from
// the configuration and applied by an adaptor that drives `nft` through the
// one subprocess door. rapd is its only owner.
//
// Policy (docs: ARCHITECTURE.md "Boundaries that matter"):
// - input drops by default: loopback, replies to what the box started, and
//   IPv6 neighbour discovery pass; from an instrument interface only DHCP to
//   the box and TCP to that port's own gateway address and agent port (plus
//   ping to it); nothing from the WAN or anywhere else.
// - forward drops everything: instruments reach neither the WAN nor each
//   other, whatever net.ipv4.ip_forward says. It jumps to the `session`
//   chain, empty while no remote session is open. A session's pinhole
//   (docs: README "Remote sessions") is one element per approved service in
//   the set `session_pinholes`: (tunnel interface, instrument address, TCP
//   port), each with a timeout at the session's end, so a pinhole closes
//   itself even if rapd dies and never re-renders. Both directions of the
//   service's traffic must match an element (no "established" shortcut), so
//   removing or expiring the element cuts a running connection at once. The
//   center reaches the service at the box's tunnel address: DNAT from the
//   tunnel to the instrument for the approved ports only, and masquerade out
//   of the instrument port, so the instrument answers its own gateway and
//   needs no route back.
// - output is open towards the WAN (egress narrowing to the center, proxy,
//   DNS and NTP comes with issue 5); towards an instrument the box only
//   answers (replies and DHCP), it starts nothing.
//
// Applying is one `nft -f -` transaction that deletes and recreates the
// table: it either all takes or nothing changes, so a failed apply leaves the
// previous ruleset (the image's static default-deny at boot) in place.

import { RapError, errorMessage } from '../lib/errors.ts';
import { formatSubnet } from '../lib/ipv4.ts';
import type { Runner } from '../lib/run.ts';
import type { Config } from './config.ts';
import { netPorts, type NetPort } from './network.ts';

export const FIREWALL_TABLE = 'rapbox';
/** The chain forward jumps to first; issue 5 adds session pinholes here. */
export const SESSION_CHAIN = 'session';

/** One open remote session's hole: from `tunnel` to `instrument`'s approved TCP ports only. */
export interface Pinhole {
  session: string;
  /** The instrument port (config name) and its interface. */
  port: string;
  iface: string;
  /** The session's OpenVPN tun interface. */
  tunnel: string;
  /** The instrument's IPv4 address (the one that consented). */
  instrument: string;
  services: number[];
  /** Seconds until the elements expire on their own (the session's remaining lifetime). */
  timeoutS: number;
}

export interface FirewallPolicy {
  ports: NetPort[];
  wanInterface: string;
  pinholes?: Pinhole[];
}

export function firewallPolicy(config: Config, pinholes: Pinhole[] = []): FirewallPolicy {
  return { ports: netPorts(config), wanInterface: config['network.wanInterface'], pinholes };
}

/** The session chain, its set and the NAT chains; nothing at all while no session is open. */
function renderPinholes(pinholes: Pinhole[]): { chain: string[]; extra: string[] } {
  if (pinholes.length === 0) return { chain: [], extra: [] };
  const q = (s: string): string => `"${s}"`;
  const elements = pinholes.flatMap((p) => p.services.map((svc) => `${q(p.tunnel)} . ${p.instrument} . ${svc} timeout ${Math.max(1, Math.ceil(p.timeoutS))}s`));
  const extra = [
    '',
    '	# One element per approved service of an open session; each expires on its own.',
    '	set session_pinholes {',
    '		type ifname . ipv4_addr . inet_service',
    '		flags timeout',
    `		elements = { ${elements.join(', ')} }`,
    '	}',
    '',
    "	# The center connects to the box's tunnel address; the approved ports go to the instrument.",
    '	chain session_dnat {',
    '		type nat hook prerouting priority dstnat; policy accept;',
    ...pinholes.map((p) => `		iifname ${q(p.tunnel)} tcp dport { ${p.services.join(', ')} } dnat ip to ${p.instrument}`),
    '	}',
    '',
    '	# The instrument sees its own gateway as the peer: no route back needed.',
    '	chain session_snat {',
    '		type nat hook postrouting priority srcnat; policy accept;',
    ...pinholes.map((p) => `		iifname ${q(p.tunnel)} oifname ${q(p.iface)} ip daddr ${p.instrument} masquerade`),
    '	}',
  ];
  const chain = [
    ...pinholes.map((p) => `		# session ${p.session}: port ${p.port}, ${p.instrument} tcp ${p.services.join(', ')}`),
    '		iifname . ip daddr . tcp dport @session_pinholes accept',
    '		oifname . ip saddr . tcp sport @session_pinholes accept',
  ];
  return { chain, extra };
}

const portChain = (p: NetPort): string => `port_${p.name.replaceAll('-', '_')}`;

/** The whole `nft -f` input: replaces table inet rapbox in one transaction. */
export function renderFirewall(policy: FirewallPolicy): string {
  const { ports, wanInterface } = policy;
  const session = renderPinholes(policy.pinholes ?? []);
  const q = (s: string): string => `"${s}"`;
  const out: string[] = [
    '# rapbox firewall, rendered by rapd from its configuration; rapd replaces',
    '# this table as a whole at every start. Do not edit: change the config.',
    '#',
    '# Creating the table before deleting it makes the delete succeed whether or',
    '# not it exists (nft 1.0 has no "destroy"). The file is one transaction:',
    '# if any of it fails, nothing changes.',
    `table inet ${FIREWALL_TABLE} {}`,
    `delete table inet ${FIREWALL_TABLE}`,
    '',
    `table inet ${FIREWALL_TABLE} {`,
    '\tchain input {',
    '\t\ttype filter hook input priority filter; policy drop;',
    '\t\tct state invalid drop',
    '\t\tct state established,related accept',
    `\t\tiifname ${q('lo')} accept`,
    '\t\t# IPv6 neighbour discovery (on-link only: hop limit 255) and MLD queries;',
    '\t\t# the WAN may be IPv6. Instrument ports have no IPv6 at all.',
    '\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept',
    '\t\ticmpv6 type mld-listener-query ip6 saddr fe80::/10 accept',
    '\t\t# DHCPv6 answers to the box\'s own client on the WAN (sent to multicast, so not "established").',
    `\t\tiifname ${q(wanInterface)} ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept`,
  ];
  if (ports.length > 0) {
    out.push(
      '\t\t# Each instrument port has its own chain; what it does not accept is dropped.',
      `\t\tiifname vmap { ${ports.map((p) => `${q(p.iface)} : jump ${portChain(p)}`).join(', ')} }`,
    );
  }
  out.push(
    '\t\t# Everything else, the WAN included, falls to the policy: drop.',
    '\t}',
    '',
    '\tchain forward {',
    '\t\ttype filter hook forward priority filter; policy drop;',
    '\t\tct state invalid drop',
    '\t\t# Nothing is forwarded except what a remote session opens there.',
    `\t\tjump ${SESSION_CHAIN}`,
    '\t}',
    '',
    '\t# Remote-session pinholes (issue 5): empty while no session is open.',
    `\tchain ${SESSION_CHAIN} {`,
    ...session.chain,
    '\t}',
    ...session.extra,
    '',
    '\tchain output {',
    '\t\ttype filter hook output priority filter; policy accept;',
  );
  if (ports.length > 0) {
    out.push(`\t\toifname { ${ports.map((p) => q(p.iface)).join(', ')} } jump to_instrument`);
  }
  out.push('\t}');
  if (ports.length > 0) {
    out.push(
      '',
      '\t# The box only answers on an instrument port: it starts nothing there.',
      '\tchain to_instrument {',
      '\t\tct state established,related accept',
      '\t\tudp sport 67 udp dport 68 accept',
      '\t\tdrop',
      '\t}',
    );
  }
  for (const p of ports) {
    const subnet = formatSubnet(p.subnet);
    out.push('', `\t# instrument port ${p.name} on ${p.iface}: ${subnet}, gateway ${p.gateway}`, `\tchain ${portChain(p)} {`);
    if (p.dhcp) out.push(`\t\tip daddr { 255.255.255.255, ${p.gateway} } udp sport 68 udp dport 67 accept`);
    // The source must be on the port's subnet: an answer to anything else
    // would be routed out of another interface (the WAN).
    out.push(
      `\t\tip saddr ${subnet} ip daddr ${p.gateway} tcp dport ${p.agentPort} accept`,
      `\t\tip saddr ${subnet} ip daddr ${p.gateway} icmp type echo-request accept`,
      '\t}',
    );
  }
  out.push('}', '');
  return out.join('\n');
}

/** What `nft -j list table` shows of our table (for status and the post-apply check). */
export interface FirewallState {
  chains: { name: string; hook: string | null; policy: string | null; rules: number }[];
  rules: number;
}

export interface FirewallAdaptor {
  /** Load a rendered ruleset in one transaction; throws RAP_FIREWALL (nothing changed) on failure. */
  apply(ruleset: string): Promise<void>;
  /** Parse and check against the kernel without changing anything (`nft -c`). */
  check(ruleset: string): Promise<void>;
  /** Our table as loaded, or null when it is not there. */
  read(): Promise<FirewallState | null>;
}

/**
 * The adaptor over the real `nft`. `nft` is the command prefix: tests run it
 * inside a network namespace (`ip netns exec NS nft`).
 */
export function nftAdaptor(run: Runner, nft: readonly string[] = ['nft']): FirewallAdaptor {
  const load = async (ruleset: string, check: boolean): Promise<void> => {
    try {
      await run([...nft, ...(check ? ['-c'] : []), '-f', '-'], { input: ruleset, timeoutMs: 30_000 });
    } catch (e) {
      throw new RapError('RAP_FIREWALL', `nft ${check ? 'check' : 'apply'} failed, previous ruleset kept: ${errorMessage(e)}`, {}, { cause: e });
    }
  };
  return {
    apply: (ruleset) => load(ruleset, false),
    check: (ruleset) => load(ruleset, true),
    async read() {
      let stdout: string;
      try {
        ({ stdout } = await run([...nft, '-j', 'list', 'table', 'inet', FIREWALL_TABLE], { timeoutMs: 30_000 }));
      } catch (e) {
        if (/No such file or directory|does not exist/.test(errorMessage(e))) return null;
        throw new RapError('RAP_FIREWALL', `cannot read the firewall: ${errorMessage(e)}`, {}, { cause: e });
      }
      return parseNftJson(stdout);
    },
  };
}

/** Chains and rule counts of table inet rapbox from `nft -j list table` output. */
export function parseNftJson(text: string): FirewallState {
  const doc = JSON.parse(text) as { nftables?: Record<string, Record<string, unknown>>[] };
  const chains = new Map<string, FirewallState['chains'][number]>();
  let rules = 0;
  for (const item of doc.nftables ?? []) {
    const c = item['chain'];
    if (c && c['table'] === FIREWALL_TABLE && c['family'] === 'inet') {
      chains.set(String(c['name']), {
        name: String(c['name']),
        hook: typeof c['hook'] === 'string' ? c['hook'] : null,
        policy: typeof c['policy'] === 'string' ? c['policy'] : null,
        rules: 0,
      });
    }
    const r = item['rule'];
    if (r && r['table'] === FIREWALL_TABLE && r['family'] === 'inet') {
      rules++;
      const ch = chains.get(String(r['chain']));
      if (ch) ch.rules++;
    }
  }
  return { chains: [...chains.values()], rules };
}

/**
 * Apply the ruleset and read it back: the table must be there with input and
 * forward dropping by default, or the apply is reported as failed.
 */
export async function applyFirewall(fw: FirewallAdaptor, ruleset: string): Promise<FirewallState> {
  await fw.apply(ruleset);
  const state = await fw.read();
  const policy = (hook: string): string | null => state?.chains.find((c) => c.hook === hook)?.policy ?? null;
  if (!state || policy('input') !== 'drop' || policy('forward') !== 'drop') {
    throw new RapError('RAP_FIREWALL', `firewall applied but reads back wrong: table inet ${FIREWALL_TABLE} ${state ? `has input policy ${policy('input')}, forward policy ${policy('forward')}` : 'is missing'}`);
  }
  return state;
}
