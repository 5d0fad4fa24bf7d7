import t from 'tap';
import { renderServerConfig } from '../../../src/center/vpn.ts';

const base = {
  listenHost: '0.0.0.0',
  listenPort: 443,
  subnet: '10.200.0.0/24',
  dev: 'rapcenter0',
  caFile: '/srv/pki/ca.pem',
  certFile: '/srv/pki/server.pem',
  keyFile: '/srv/pki/server.key',
  tlsCryptFile: '/srv/vpn/tls-crypt.key',
  managementSocket: null,
};

t.test('the whole server config: same TLS policy as the boxes, client certificates required, no scripts', async (t) => {
  t.equal(
    renderServerConfig({ ...base, subnet: '10.200.7.9/22', managementSocket: '/run/rap-center/vpn.sock' }),
    `# rap-center OpenVPN server for remote sessions, rendered by \`rap-center vpn init\`.
local 0.0.0.0
port 443
proto tcp-server
dev rapcenter0
dev-type tun
topology subnet
server 10.200.4.0 255.255.252.0
ca /srv/pki/ca.pem
cert /srv/pki/server.pem
key /srv/pki/server.key
tls-crypt /srv/vpn/tls-crypt.key
dh none
verify-client-cert require
remote-cert-tls client
tls-version-min 1.2
tls-cipher TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384:TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256
tls-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256
data-ciphers AES-256-GCM:AES-128-GCM
script-security 1
ping 5
ping-restart 30
management /run/rap-center/vpn.sock unix
verb 3
`,
  );
});

t.test('a bad tunnel subnet is refused, naming it', async (t) => {
  for (const subnet of ['10.200.0.0', '10.200.0.0/30', '300.1.1.1/24', '10.0.0.0/7']) {
    t.throws(() => renderServerConfig({ ...base, subnet }), { code: 'RAP_USAGE', message: `--subnet '${subnet}': expected an IPv4 subnet a.b.c.d/8 to /29` }, subnet);
  }
});
