// The rendered firewall loaded by real nft into a "box" network namespace
// wired like the appliance: instruments reach their own gateway's agent port
// and nothing else, the WAN reaches nothing, with IPv4 forwarding on (so it
// is the ruleset, not routing, that keeps the islands apart). Every negative
// probe is first shown to succeed without the ruleset.

import t from 'tap';
import { run } from '../../src/lib/run.ts';
import { parseConfig } from '../../src/rapd/config.ts';
import { applyFirewall, firewallPolicy, nftAdaptor, renderFirewall } from '../../src/rapd/firewall.ts';
import { ADDR, makeLab, netnsSkipReason } from './netns.ts';

const skip = netnsSkipReason();

const configFor = (p1Port: number) =>
  parseConfig({ ports: [{ name: 'p1', interface: 'inst1', port: p1Port }, { name: 'p2', interface: 'inst2' }, { name: 'dev', address: '127.0.0.1', port: 7499 }] }, 'test');

t.test('islands: real nft in a network namespace', { skip: skip ?? false }, async (t) => {
  const lab = await makeLab(t);
  const { ns } = lab;
  // The config's plan gives exactly the addresses the lab wires up.
  t.same(configFor(7400)['ports'].map((p) => p.address), [ADDR.gw1, ADDR.gw2, '127.0.0.1']);
  await lab.listen(ns.box, 'box', ['0.0.0.0:7400', '0.0.0.0:7401', '0.0.0.0:22']);
  await lab.listen(ns.i1, 'i1', ['0.0.0.0:7000']);
  await lab.listen(ns.i2, 'i2', ['0.0.0.0:7000']);
  await lab.listen(ns.wan, 'wan', ['0.0.0.0:443']);

  // Each path, its (namespace, host, port), and whether the ruleset lets it through.
  const paths: [string, string, string, number, boolean][] = [
    ['instrument 1 -> its gateway, agent port', ns.i1, ADDR.gw1, 7400, true],
    ['instrument 2 -> its gateway, agent port', ns.i2, ADDR.gw2, 7400, true],
    ['instrument 1 -> its gateway, another port', ns.i1, ADDR.gw1, 22, false],
    ['instrument 1 -> gateway 2', ns.i1, ADDR.gw2, 7400, false],
    ['instrument 1 -> the box WAN address', ns.i1, ADDR.boxWan, 22, false],
    ['instrument 1 -> instrument 2 (forwarded)', ns.i1, ADDR.inst2, 7000, false],
    ['instrument 1 -> the WAN side (forwarded)', ns.i1, ADDR.wanPeer, 443, false],
    ['WAN -> the box WAN address', ns.wan, ADDR.boxWan, 22, false],
    ['WAN -> the box agent port on gateway 1', ns.wan, ADDR.gw1, 7400, false],
    ['WAN -> instrument 1 (forwarded)', ns.wan, ADDR.inst1, 7000, false],
  ];
  const owner = (host: string): string => (host === ADDR.inst1 ? 'i1' : host === ADDR.inst2 ? 'i2' : host === ADDR.wanPeer ? 'wan' : 'box');
  const probeAll = () => Promise.all(paths.map(([, n, host, port]) => lab.probe(n, host, port)));

  const open = await probeAll();
  paths.forEach(([what, , host], i) => t.equal(open[i], `connected ${owner(host)}`, `without the ruleset: ${what} works (control)`));

  const fw = nftAdaptor(run, ['ip', 'netns', 'exec', ns.box, 'nft']);
  const ruleset = renderFirewall(firewallPolicy(configFor(7400)));
  await fw.check(ruleset);
  t.equal(await fw.read(), null, 'nft -c changed nothing');
  const state = await applyFirewall(fw, ruleset);
  t.same(state.chains.map((c) => `${c.name}:${c.policy ?? '-'}`), ['input:drop', 'forward:drop', 'session:-', 'output:accept', 'to_instrument:-', 'port_p1:-', 'port_p2:-']);

  const closed = await probeAll();
  paths.forEach(([what, , host, , allowed], i) => t.equal(closed[i], allowed ? `connected ${owner(host)}` : 'timeout', `with the ruleset: ${what} ${allowed ? 'works' : 'is dropped'}`));

  // A later apply replaces the table in one transaction: p1's agent moves to 7401.
  const moved = renderFirewall(firewallPolicy(configFor(7401)));
  await applyFirewall(fw, moved);
  t.equal(await lab.probe(ns.i1, ADDR.gw1, 7401), 'connected box', 'new rule in force');
  t.equal(await lab.probe(ns.i1, ADDR.gw1, 7400), 'timeout', 'old rule gone');
  const tables = await lab.exec(ns.box, ['nft', 'list', 'tables']);
  t.equal(tables, 'table inet rapbox\n', 'one table, replaced rather than added');
  const before = await lab.exec(ns.box, ['nft', 'list', 'table', 'inet', 'rapbox']);

  // A ruleset the kernel rejects half-way, after the table was deleted in the
  // same transaction (a jump loop: nft's parser lets it pass, the kernel says
  // "Too many links"), changes nothing: the whole transaction is rolled back.
  const broken = moved
    .replace('\tchain session {\n', '\tchain session {\n\t\tjump late\n')
    .replace(/\}\n$/, '\tchain late {\n\t\tjump session\n\t}\n}\n');
  t.not(broken, moved);
  await t.rejects(applyFirewall(fw, broken), { code: 'RAP_FIREWALL', message: /previous ruleset kept: .*Too many links/ });
  t.equal(await lab.exec(ns.box, ['nft', 'list', 'table', 'inet', 'rapbox']), before, 'previous table intact after a failed apply');
  t.equal(await lab.probe(ns.i1, ADDR.gw1, 7401), 'connected box', 'and still in force');
  t.equal(await lab.probe(ns.i1, ADDR.inst2, 7000), 'timeout', 'and still closed');
});
