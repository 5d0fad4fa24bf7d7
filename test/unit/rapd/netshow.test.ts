import t from 'tap';
import { join } from 'node:path';
import { netShow } from '../../../src/rapd/netshow.ts';
import { parseConfig } from '../../../src/rapd/config.ts';
import { firewallPolicy, renderFirewall } from '../../../src/rapd/firewall.ts';

function call(args: string[]) {
  let out = '';
  let err = '';
  const code = netShow(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

const doc = { paths: { networkd: '/run/systemd/network' }, ports: [{ name: 'p1', interface: 'inst1' }, { name: 'dev', address: '127.0.0.1', port: 7499 }] };

t.test('show: summary, ruleset and files; --firewall is a plain nft file', async (t) => {
  const dir = t.testdir({ 'rapd.json': JSON.stringify(doc) });
  const cfg = join(dir, 'rapd.json');
  const all = call(['show', '--config', cfg]);
  t.equal(all.code, 0, all.err);
  t.match(all.out, /^# rapd net show for .*rapd\.json\n#   port p1: inst1 100\.87\.0\.0\/28, gateway 100\.87\.0\.1:7400, DHCP 100\.87\.0\.8-100\.87\.0\.14\n#   port dev: loopback\/dev port 127\.0\.0\.1:7499/);
  t.match(all.out, /### \/run\/systemd\/network\/10-rapbox-p1\.network\n# Written by rapd/);
  const fw = call(['show', `--config=${cfg}`, '--firewall']);
  t.equal(fw.out, renderFirewall(firewallPolicy(parseConfig(doc, 'x'))));
  const net = call(['show', '--config', cfg, '--network']);
  t.notMatch(net.out, /table inet/);
  t.match(net.out, /^### \/run\/systemd\/network\/10-rapbox-p1\.network\n/);
});

t.test('bad use and bad config: named, non-zero', async (t) => {
  const dir = t.testdir({ 'bad.json': JSON.stringify({ ports: [{ name: 'p1', interface: 'wan' }] }) });
  t.match(call([]), { code: 2, err: /rapd net: no command given/ });
  t.match(call(['apply']), { code: 2, err: /unknown command 'apply'/ });
  t.match(call(['show', '--firewall', '--network']), { code: 2, err: /at most one/ });
  t.match(call(['show', '--config', join(dir, 'bad.json')]), { code: 1, err: /^rapd: RAP_CONFIG: config .*bad\.json: key 'ports\[0\]\.interface': "wan" is the WAN interface/ });
});

t.test('show: the WAN file and the NTP drop-in when the site sets them', async (t) => {
  const dir = t.testdir({ 'rapd.json': JSON.stringify({ ...doc, wan: { address: '192.0.2.10/24', gateway: '192.0.2.1', ntp: 'ntp.example.org' } }) });
  const net = call(['show', '--config', join(dir, 'rapd.json'), '--network']);
  t.equal(net.code, 0, net.err);
  t.match(net.out, /### \/run\/systemd\/network\/80-wan\.network\n# Written by rapd from the site config[\s\S]*^Address=192\.0\.2\.10\/24$/m);
  t.match(net.out, /### \/run\/systemd\/timesyncd\.conf\.d\/50-rapbox-wan\.conf\n# Written by rapd[\s\S]*^NTP=ntp\.example\.org$/m);
});
