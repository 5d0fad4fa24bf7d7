import t from 'tap';
import { broadcastOf, contains, formatIPv4, formatSubnet, overlaps, parseCidr, parseIPv4, subnetOf } from '../../../src/lib/ipv4.ts';

t.test('parse and format round-trip, bad input is null', async (t) => {
  for (const s of ['0.0.0.0', '100.87.0.1', '255.255.255.255', '10.0.0.10']) t.equal(formatIPv4(parseIPv4(s)!), s);
  for (const s of ['256.1.1.1', '1.2.3', '::1', '01.2.3.4', '', '1.2.3.4/8']) t.equal(parseIPv4(s), null, s);
  t.same(parseCidr('100.87.0.0/24'), { address: parseIPv4('100.87.0.0'), prefix: 24 });
  t.equal(parseCidr('100.87.0.0/33'), null);
  t.equal(parseCidr('100.87.0.0'), null);
});

t.test('subnets: network, broadcast, contains, overlaps', async (t) => {
  const s = subnetOf(parseIPv4('100.87.0.17')!, 28);
  t.equal(formatSubnet(s), '100.87.0.16/28');
  t.equal(formatIPv4(broadcastOf(s)), '100.87.0.31');
  t.ok(contains(s, parseIPv4('100.87.0.31')!));
  t.notOk(contains(s, parseIPv4('100.87.0.32')!));
  const wide = subnetOf(parseIPv4('100.87.0.0')!, 24);
  t.ok(overlaps(s, wide) && overlaps(wide, s));
  t.notOk(overlaps(s, subnetOf(parseIPv4('100.87.0.32')!, 28)));
  t.equal(formatSubnet(subnetOf(parseIPv4('255.255.255.254')!, 30)), '255.255.255.252/30', 'no sign trouble at the top');
});
