import t from 'tap';
import { qemuArgv } from '../../../image/qemu.ts';

t.test('TCG, serial to a file, snapshot, restricted user network, credentials', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'tcg', varsFile: '/v.fd', serial: '/s.log', credentials: { 'a.b': 'x,y\n' } });
  t.same(argv, [
    'qemu-system-x86_64', '-machine', 'q35', '-m', '1024', '-smp', '2',
    '-accel', 'tcg,thread=multi', '-cpu', 'max',
    '-drive', 'if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd',
    '-drive', 'if=pflash,format=raw,file=/v.fd',
    '-drive', 'file=/d.img,format=raw,if=virtio,snapshot=on',
    '-nic', 'user,model=virtio-net-pci,restrict=on',
    '-no-reboot',
    '-display', 'none', '-serial', 'file:/s.log', '-monitor', 'none',
    '-smbios', `type=11,value=io.systemd.credential.binary:a.b=${Buffer.from('x,y\n').toString('base64')}`,
  ]);
});

t.test('guestfwd forwards are added to the restricted user network', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'tcg', varsFile: '/v.fd', serial: '/s.log', forwards: [{ guest: '10.0.2.100:443', host: '127.0.0.1:4000' }] });
  t.ok(argv.includes('user,model=virtio-net-pci,restrict=on,guestfwd=tcp:10.0.2.100:443-cmd:socat STDIO TCP:127.0.0.1:4000'));
});

t.test('KVM uses the host CPU; a person gets -nographic', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'kvm', varsFile: '/v.fd', serial: 'stdio', snapshot: false });
  t.ok(argv.includes('kvm') && argv.includes('host'));
  t.ok(argv.includes('-nographic'));
  t.ok(argv.includes('file=/d.img,format=raw,if=virtio'));
});
