import t from 'tap';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger } from '../../../src/lib/log.ts';
import { parseMgmtLine, reapStaleVpns, renderClientConfig, type VpnClientSpec } from '../../../src/rapd/openvpn.ts';

const spec: VpnClientSpec = {
  dev: 'rapvpn0',
  remoteHost: 'center.example',
  remotePort: 443,
  serverName: 'center.example',
  caFile: '/var/lib/rapd/pki/center-ca.pem',
  certFile: '/var/lib/rapd/pki/device.pem',
  keyFile: '/var/lib/rapd/pki/device.key',
  tlsCryptFile: '/var/lib/rapd/pki/vpn-tls-crypt.key',
  proxy: null,
  proxyAuthFile: null,
  managementSocket: '/run/rapd/vpn-rapvpn0.sock',
  pidFile: '/run/rapd/vpn-rapvpn0.pid',
};

const TAIL = `ca /var/lib/rapd/pki/center-ca.pem
cert /var/lib/rapd/pki/device.pem
key /var/lib/rapd/pki/device.key
tls-crypt /var/lib/rapd/pki/vpn-tls-crypt.key
remote-cert-tls server
tls-version-min 1.2
tls-cipher TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384:TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256
tls-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256
data-ciphers AES-256-GCM:AES-128-GCM
verify-x509-name center.example name
route-nopull
pull-filter ignore "route"
pull-filter ignore "redirect-gateway"
pull-filter ignore "dhcp-option"
pull-filter ignore "block-outside-dns"
script-security 1
ping 5
ping-exit 30
management /run/rapd/vpn-rapvpn0.sock unix
management-hold
writepid /run/rapd/vpn-rapvpn0.pid
verb 3
`;
const HEAD = `# OpenVPN client of one remote session, rendered by rapd; rewritten per session.
client
dev rapvpn0
dev-type tun
proto tcp-client
remote center.example 443
nobind
connect-retry-max 1
connect-timeout 15
resolv-retry 0
`;

// State table: the whole client config for each case.
const cases: { name: string; spec: VpnClientSpec; want: string }[] = [
  { name: 'direct', spec, want: `${HEAD}${TAIL}` },
  {
    name: 'through an HTTP CONNECT proxy with credentials (in a file, never on the command line)',
    spec: { ...spec, proxy: { kind: 'http', host: 'proxy.lab', port: 3128, username: 'u', password: 'p' }, proxyAuthFile: '/run/rapd/vpn-rapvpn0.auth' },
    want: `${HEAD}http-proxy proxy.lab 3128 /run/rapd/vpn-rapvpn0.auth basic\n${TAIL}`,
  },
  {
    name: 'through a SOCKS5 proxy without credentials',
    spec: { ...spec, proxy: { kind: 'socks5', host: '10.0.0.5', port: 1080, remoteDns: true } },
    want: `${HEAD}socks-proxy 10.0.0.5 1080\n${TAIL}`,
  },
];
for (const c of cases) {
  t.test(`client config: ${c.name}`, async (t) => {
    t.equal(renderClientConfig(c.spec), c.want);
  });
}

t.test('management lines', async (t) => {
  const cases: [string, unknown][] = [
    ['>STATE:1795458312,CONNECTED,SUCCESS,10.200.0.2,198.51.100.2,443,198.51.100.1,58678', { kind: 'state', state: 'CONNECTED', detail: 'SUCCESS', localIp: '10.200.0.2' }],
    ['>STATE:1795458312,TCP_CONNECT,,,,,,', { kind: 'state', state: 'TCP_CONNECT', detail: '', localIp: null }],
    ['>STATE:1795458400,RECONNECTING,ping-restart,,,,,', { kind: 'state', state: 'RECONNECTING', detail: 'ping-restart', localIp: null }],
    ['>BYTECOUNT:2373,2316', { kind: 'bytecount', bytesIn: 2373, bytesOut: 2316 }],
    ['>HOLD:Waiting for hold release:0', { kind: 'hold' }],
    ['>FATAL:Cannot open TUN/TAP dev', { kind: 'fatal', message: 'Cannot open TUN/TAP dev' }],
    ['TCP/UDP read bytes,5504387', { kind: 'linkbytes', read: true, bytes: 5504387 }],
    ['TCP/UDP write bytes,4484', { kind: 'linkbytes', read: false, bytes: 4484 }],
    ['END', { kind: 'end' }],
    ['SUCCESS: hold release succeeded', { kind: 'other', line: 'SUCCESS: hold release succeeded' }],
    ['>BYTECOUNT:x,1', { kind: 'other', line: '>BYTECOUNT:x,1' }],
  ];
  for (const [line, want] of cases) t.strictSame(parseMgmtLine(line), want, line);
});

t.test('a leftover openvpn is stopped by its PID file only when that PID is still openvpn', async (t) => {
  const dir = t.testdir({ run: { 'vpn-rapvpn0.pid': '4242\n', 'vpn-rapvpn1.pid': '4343\n', 'vpn-rapvpn2.pid': '4444\n', 'rapd.sock.pid': '1\n' }, proc: {} });
  const proc = join(dir, 'proc');
  mkdirSync(join(proc, '4242'));
  writeFileSync(join(proc, '4242', 'comm'), 'openvpn\n');
  mkdirSync(join(proc, '4343'));
  writeFileSync(join(proc, '4343', 'comm'), 'bash\n'); // the PID was reused: not ours
  const killed: [number, string][] = [];
  const reaped = reapStaleVpns(join(dir, 'run'), proc, createLogger({ write: () => {} }), (pid, sig) => void killed.push([pid, sig]));
  t.strictSame(reaped, [4242]);
  t.strictSame(killed, [[4242, 'SIGKILL']]);
  for (const n of [0, 1, 2]) t.notOk(existsSync(join(dir, 'run', `vpn-rapvpn${n}.pid`)), `pid file ${n} removed`);
  t.ok(existsSync(join(dir, 'run', 'rapd.sock.pid')), 'other files untouched');
  t.strictSame(reapStaleVpns(join(dir, 'nothing'), proc, createLogger({ write: () => {} })), [], 'no runtime dir yet: nothing to do');
});
