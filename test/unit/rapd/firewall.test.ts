import t from 'tap';
import { parseConfig } from '../../../src/rapd/config.ts';
import { applyFirewall, firewallPolicy, nftAdaptor, parseNftJson, renderFirewall, type FirewallAdaptor, type Pinhole } from '../../../src/rapd/firewall.ts';
import { RapError } from '../../../src/lib/errors.ts';
import type { Runner } from '../../../src/lib/run.ts';

const HEAD = `# rapbox firewall, rendered by rapd from its configuration; rapd replaces
# this table as a whole at every start. Do not edit: change the config.
#
# Creating the table before deleting it makes the delete succeed whether or
# not it exists (nft 1.0 has no "destroy"). The file is one transaction:
# if any of it fails, nothing changes.
table inet rapbox {}
delete table inet rapbox

table inet rapbox {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state invalid drop
		ct state established,related accept
		iifname "lo" accept
		# IPv6 neighbour discovery (on-link only: hop limit 255) and MLD queries;
		# the WAN may be IPv6. Instrument ports have no IPv6 at all.
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept
		icmpv6 type mld-listener-query ip6 saddr fe80::/10 accept
		# DHCPv6 answers to the box's own client on the WAN (sent to multicast, so not "established").
`;
const FORWARD = `	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state invalid drop
		# Nothing is forwarded except what a remote session opens there.
		jump session
	}

	# Remote-session pinholes (issue 5): empty while no session is open.
	chain session {
	}
`;

// State table: the whole rendered ruleset for each config.
const cases: { name: string; input: unknown; pinholes?: Pinhole[]; want: string }[] = [
  {
    name: 'no port with an interface: the static default-deny table',
    input: { ports: [{ name: 'dev', address: '127.0.0.1' }] },
    want: `${HEAD}		iifname "wan" ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept
		# Everything else, the WAN included, falls to the policy: drop.
	}

${FORWARD}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
`,
  },
  {
    name: 'two islands (DHCP and static), a renamed WAN, a dev port left out',
    input: {
      network: { wanInterface: 'eth0' },
      ports: [
        { name: 'lab-a', interface: 'inst1', port: 7401 },
        { name: 'dev', address: '127.0.0.1' },
        { name: 'b', interface: 'inst2', address: '10.20.0.1/30', dhcp: false },
      ],
    },
    want: `${HEAD}		iifname "eth0" ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept
		# Each instrument port has its own chain; what it does not accept is dropped.
		iifname vmap { "inst1" : jump port_lab_a, "inst2" : jump port_b }
		# Everything else, the WAN included, falls to the policy: drop.
	}

${FORWARD}
	chain output {
		type filter hook output priority filter; policy accept;
		oifname { "inst1", "inst2" } jump to_instrument
	}

	# The box only answers on an instrument port: it starts nothing there.
	chain to_instrument {
		ct state established,related accept
		udp sport 67 udp dport 68 accept
		drop
	}

	# instrument port lab-a on inst1: 100.87.0.0/28, gateway 100.87.0.1
	chain port_lab_a {
		ip daddr { 255.255.255.255, 100.87.0.1 } udp sport 68 udp dport 67 accept
		ip saddr 100.87.0.0/28 ip daddr 100.87.0.1 tcp dport 7401 accept
		ip saddr 100.87.0.0/28 ip daddr 100.87.0.1 icmp type echo-request accept
	}

	# instrument port b on inst2: 10.20.0.0/30, gateway 10.20.0.1
	chain port_b {
		ip saddr 10.20.0.0/30 ip daddr 10.20.0.1 tcp dport 7400 accept
		ip saddr 10.20.0.0/30 ip daddr 10.20.0.1 icmp type echo-request accept
	}
}
`,
  },
];
cases.push({
  name: 'two open sessions (two services on p1, one on p2): the set with timeouts, DNAT and masquerade per tunnel',
  input: { ports: [{ name: 'p1', interface: 'inst1' }, { name: 'p2', interface: 'inst2', dhcp: false }] },
  pinholes: [
    { session: 's-1', port: 'p1', iface: 'inst1', tunnel: 'rapvpn0', instrument: '100.87.0.9', services: [5900, 22], timeoutS: 3599.2 },
    { session: 's-2', port: 'p2', iface: 'inst2', tunnel: 'rapvpn1', instrument: '100.87.0.18', services: [3389], timeoutS: 0.2 },
  ],
  want: `${HEAD}		iifname "wan" ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept
		# Each instrument port has its own chain; what it does not accept is dropped.
		iifname vmap { "inst1" : jump port_p1, "inst2" : jump port_p2 }
		# Everything else, the WAN included, falls to the policy: drop.
	}

	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state invalid drop
		# Nothing is forwarded except what a remote session opens there.
		jump session
	}

	# Remote-session pinholes (issue 5): empty while no session is open.
	chain session {
		# session s-1: port p1, 100.87.0.9 tcp 5900, 22
		# session s-2: port p2, 100.87.0.18 tcp 3389
		iifname . ip daddr . tcp dport @session_pinholes accept
		oifname . ip saddr . tcp sport @session_pinholes accept
	}

	# One element per approved service of an open session; each expires on its own.
	set session_pinholes {
		type ifname . ipv4_addr . inet_service
		flags timeout
		elements = { "rapvpn0" . 100.87.0.9 . 5900 timeout 3600s, "rapvpn0" . 100.87.0.9 . 22 timeout 3600s, "rapvpn1" . 100.87.0.18 . 3389 timeout 1s }
	}

	# The center connects to the box's tunnel address; the approved ports go to the instrument.
	chain session_dnat {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "rapvpn0" tcp dport { 5900, 22 } dnat ip to 100.87.0.9
		iifname "rapvpn1" tcp dport { 3389 } dnat ip to 100.87.0.18
	}

	# The instrument sees its own gateway as the peer: no route back needed.
	chain session_snat {
		type nat hook postrouting priority srcnat; policy accept;
		iifname "rapvpn0" oifname "inst1" ip daddr 100.87.0.9 masquerade
		iifname "rapvpn1" oifname "inst2" ip daddr 100.87.0.18 masquerade
	}

	chain output {
		type filter hook output priority filter; policy accept;
		oifname { "inst1", "inst2" } jump to_instrument
	}

	# The box only answers on an instrument port: it starts nothing there.
	chain to_instrument {
		ct state established,related accept
		udp sport 67 udp dport 68 accept
		drop
	}

	# instrument port p1 on inst1: 100.87.0.0/28, gateway 100.87.0.1
	chain port_p1 {
		ip daddr { 255.255.255.255, 100.87.0.1 } udp sport 68 udp dport 67 accept
		ip saddr 100.87.0.0/28 ip daddr 100.87.0.1 tcp dport 7400 accept
		ip saddr 100.87.0.0/28 ip daddr 100.87.0.1 icmp type echo-request accept
	}

	# instrument port p2 on inst2: 100.87.0.16/28, gateway 100.87.0.17
	chain port_p2 {
		ip saddr 100.87.0.16/28 ip daddr 100.87.0.17 tcp dport 7400 accept
		ip saddr 100.87.0.16/28 ip daddr 100.87.0.17 icmp type echo-request accept
	}
}
`,
});
for (const c of cases) {
  t.test(`render: ${c.name}`, async (t) => {
    t.equal(renderFirewall(firewallPolicy(parseConfig(c.input, 'test'), c.pinholes)), c.want);
  });
}

function fakeNft(reply: (argv: string[]) => string | Error) {
  const calls: { argv: string[]; input?: string }[] = [];
  const run = (async (argv: readonly string[], opts?: { input?: string | Buffer }) => {
    calls.push({ argv: [...argv], input: opts?.input?.toString() });
    const r = reply([...argv]);
    if (r instanceof Error) throw r;
    return { argv: [...argv], code: 0, signal: null, stdout: r, stderr: '' };
  }) as Runner;
  return { run, calls };
}

const LISTED = JSON.stringify({
  nftables: [
    { metainfo: { version: '1.0.6' } },
    { table: { family: 'inet', name: 'rapbox', handle: 5 } },
    { chain: { family: 'inet', table: 'rapbox', name: 'input', type: 'filter', hook: 'input', prio: 0, policy: 'drop' } },
    { chain: { family: 'inet', table: 'rapbox', name: 'forward', type: 'filter', hook: 'forward', prio: 0, policy: 'drop' } },
    { chain: { family: 'inet', table: 'rapbox', name: 'session' } },
    { rule: { family: 'inet', table: 'rapbox', chain: 'input', expr: [] } },
    { rule: { family: 'inet', table: 'rapbox', chain: 'input', expr: [] } },
    { rule: { family: 'inet', table: 'rapbox', chain: 'forward', expr: [] } },
    { rule: { family: 'inet', table: 'other', chain: 'input', expr: [] } },
  ],
});

t.test('parseNftJson counts our chains and rules only', async (t) => {
  t.same(parseNftJson(LISTED), {
    chains: [
      { name: 'input', hook: 'input', policy: 'drop', rules: 2 },
      { name: 'forward', hook: 'forward', policy: 'drop', rules: 1 },
      { name: 'session', hook: null, policy: null, rules: 0 },
    ],
    rules: 3,
  });
});

t.test('adaptor: argv through the prefix, ruleset on stdin, read-back', async (t) => {
  const { run, calls } = fakeNft((argv) => (argv.includes('list') ? LISTED : ''));
  const fw = nftAdaptor(run, ['ip', 'netns', 'exec', 'box', 'nft']);
  const state = await applyFirewall(fw, 'RULESET');
  t.equal(state.rules, 3);
  await fw.check('RULESET2');
  t.same(calls, [
    { argv: ['ip', 'netns', 'exec', 'box', 'nft', '-f', '-'], input: 'RULESET' },
    { argv: ['ip', 'netns', 'exec', 'box', 'nft', '-j', 'list', 'table', 'inet', 'rapbox'], input: undefined },
    { argv: ['ip', 'netns', 'exec', 'box', 'nft', '-c', '-f', '-'], input: 'RULESET2' },
  ]);
});

t.test('adaptor: a rejected ruleset is RAP_FIREWALL saying the previous one is kept', async (t) => {
  const { run } = fakeNft(() => new RapError('RAP_RUN', "nft -f -: exited with code 1: Error: syntax error, unexpected junk"));
  await t.rejects(applyFirewall(nftAdaptor(run), 'junk'), { code: 'RAP_FIREWALL', message: /nft apply failed, previous ruleset kept: .*syntax error/ });
});

t.test('adaptor: a missing table reads as null; applyFirewall then fails', async (t) => {
  const { run } = fakeNft((argv) => (argv.includes('list') ? new RapError('RAP_RUN', 'nft -j list table inet rapbox: exited with code 1: Error: No such file or directory') : ''));
  t.equal(await nftAdaptor(run).read(), null);
  await t.rejects(applyFirewall(nftAdaptor(run), 'x'), { code: 'RAP_FIREWALL', message: /reads back wrong: table inet rapbox is missing/ });
});

t.test('applyFirewall refuses a table whose hooks do not drop by default', async (t) => {
  const open: FirewallAdaptor = {
    apply: async () => {},
    check: async () => {},
    read: async () => ({ chains: [{ name: 'input', hook: 'input', policy: 'accept', rules: 0 }, { name: 'forward', hook: 'forward', policy: 'drop', rules: 0 }], rules: 0 }),
  };
  await t.rejects(applyFirewall(open, 'x'), { code: 'RAP_FIREWALL', message: /input policy accept, forward policy drop/ });
});
