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
    '-netdev', 'user,id=wan,restrict=on',
    '-device', 'virtio-net-pci,netdev=wan,addr=0x10',
    '-no-reboot',
    '-display', 'none', '-serial', 'file:/s.log', '-monitor', 'none',
    '-smbios', `type=11,value=io.systemd.credential.binary:a.b=${Buffer.from('x,y\n').toString('base64')}`,
  ]);
});

t.test('guestfwd forwards are added to the restricted user network', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'tcg', varsFile: '/v.fd', serial: '/s.log', forwards: [{ guest: '10.0.2.100:443', host: '127.0.0.1:4000' }] });
  t.ok(argv.includes('user,id=wan,restrict=on,guestfwd=tcp:10.0.2.100:443-cmd:socat STDIO TCP:127.0.0.1:4000'));
});

t.test('instrument ports are taps at the PCI slots the image names inst1, inst2, ...', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'tcg', varsFile: '/v.fd', serial: '/s.log', instrumentTaps: ['tapA', 'tapB'] });
  const at = argv.indexOf('-no-reboot');
  t.same(argv.slice(at + 1, at + 9), [
    '-netdev', 'tap,id=inst1,ifname=tapA,script=no,downscript=no',
    '-device', 'virtio-net-pci,netdev=inst1,addr=0x11',
    '-netdev', 'tap,id=inst2,ifname=tapB,script=no,downscript=no',
    '-device', 'virtio-net-pci,netdev=inst2,addr=0x12',
  ]);
  t.throws(() => qemuArgv({ disk: '/d', accel: 'tcg', varsFile: '/v', serial: '/s', instrumentTaps: ['a', 'b', 'c', 'd', 'e'] }), { message: /at most 4 instrument ports/ });
  // The image's .link files name exactly these slots.
  const { readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const dir = join(import.meta.dirname, '../../../rootfs-overlay/usr/lib/systemd/network');
  t.match(readFileSync(join(dir, '10-rapbox-wan.link'), 'utf8'), /Path=pci-0000:00:10\.0\n[\s\S]*Name=wan/);
  for (const i of [1, 2, 3, 4]) {
    t.match(readFileSync(join(dir, `10-rapbox-inst${i}.link`), 'utf8'), new RegExp(`Path=pci-0000:00:${(0x10 + i).toString(16)}\\.0\\n[\\s\\S]*Name=inst${i}\\n`));
  }
});

t.test('KVM uses the host CPU; a person gets -nographic', async (t) => {
  const argv = qemuArgv({ disk: '/d.img', accel: 'kvm', varsFile: '/v.fd', serial: 'stdio', snapshot: false });
  t.ok(argv.includes('kvm') && argv.includes('host'));
  t.ok(argv.includes('-nographic'));
  t.ok(argv.includes('file=/d.img,format=raw,if=virtio'));
});
