import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { moduleName, parseModuleList, parseModulesDep, parseSoftdeps, selectModules } from '../../../image/modules.ts';

const DEP = parseModulesDep(
  [
    'kernel/drivers/net/ethernet/intel/igb/igb.ko.xz: kernel/drivers/dca/dca.ko.xz kernel/drivers/ptp/ptp.ko.xz kernel/drivers/pps/pps_core.ko.xz',
    'kernel/drivers/dca/dca.ko.xz:',
    'kernel/drivers/ptp/ptp.ko.xz: kernel/drivers/pps/pps_core.ko.xz',
    'kernel/drivers/pps/pps_core.ko.xz:',
    'kernel/drivers/net/ethernet/realtek/r8169.ko.xz: kernel/drivers/net/phy/libphy.ko.xz',
    'kernel/drivers/net/phy/libphy.ko.xz:',
    'kernel/drivers/net/phy/realtek.ko.xz: kernel/drivers/net/phy/libphy.ko.xz',
    'kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz',
    'kernel/fs/jbd2/jbd2.ko.xz:',
    'kernel/sound/core/snd.ko.xz:',
    'kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-mod.ko.xz',
    'kernel/drivers/md/dm-mod.ko.xz:',
    'kernel/drivers/md/dm-verity-extra.ko.xz:',
  ].join('\n'),
);

t.test('module names as modprobe spells them', async (t) => {
  t.equal(moduleName('kernel/drivers/md/dm-verity.ko.xz'), 'dm_verity');
  t.equal(moduleName('kernel/fs/ext4/ext4.ko'), 'ext4');
  t.equal(moduleName('kernel/drivers/hid/hid-generic.ko.zst'), 'hid_generic');
});

t.test('the list: comments and blanks dropped, bad entries rejected by line', async (t) => {
  t.same(parseModuleList('# c\nfs/ext4   # data\n\ndrivers/net/tun\n'), ['fs/ext4', 'drivers/net/tun']);
  t.throws(() => parseModuleList('fs/ext4\nfs/ext4/\n'), { message: /line 2: 'fs\/ext4\/' is not a path below kernel\// });
  t.throws(() => parseModuleList('drivers/net/tun.ko\n'), { message: /line 1: .*without \.ko/ });
  t.throws(() => parseModuleList('../../etc\n'), { message: /line 1/ });
  t.throws(() => parseModuleList('fs/ext4\nfs/ext4\n'), { message: /line 2: 'fs\/ext4' is listed twice/ });
  t.throws(() => parseModuleList('# nothing\n'), { message: /no entries/ });
});

t.test('modules.dep and modules.softdep parsers name what is wrong', async (t) => {
  t.same(DEP.get('kernel/drivers/ptp/ptp.ko.xz'), ['kernel/drivers/pps/pps_core.ko.xz']);
  t.same(DEP.get('kernel/drivers/dca/dca.ko.xz'), []);
  t.throws(() => parseModulesDep('kernel/a.ko.xz: x\nnot a line\n'), { message: /modules\.dep: line 2/ });
  const soft = parseSoftdeps('# Soft dependencies\nsoftdep r8169 pre: realtek\nsoftdep ext4 pre: crypto-crc32c\nsoftdep ext4 post: jbd2\n');
  t.same(soft.get('r8169'), ['realtek']);
  t.same(soft.get('ext4'), ['crypto_crc32c', 'jbd2']);
  t.throws(() => parseSoftdeps('alias foo bar\n'), { message: /modules\.softdep: expected "softdep/ });
});

t.test('selection: entries by module or directory, closed over hard and soft dependencies', async (t) => {
  const soft = parseSoftdeps('softdep r8169 pre: realtek\n');
  const { keep, unmatched } = selectModules(['drivers/net/ethernet/intel', 'drivers/net/ethernet/realtek/r8169', 'fs/ext4', 'drivers/md/dm-verity'], DEP, soft);
  t.same(unmatched, []);
  t.same([...keep].sort(), [
    'kernel/drivers/dca/dca.ko.xz',
    'kernel/drivers/md/dm-mod.ko.xz',
    'kernel/drivers/md/dm-verity.ko.xz',
    'kernel/drivers/net/ethernet/intel/igb/igb.ko.xz',
    'kernel/drivers/net/ethernet/realtek/r8169.ko.xz',
    'kernel/drivers/net/phy/libphy.ko.xz',
    'kernel/drivers/net/phy/realtek.ko.xz',
    'kernel/drivers/pps/pps_core.ko.xz',
    'kernel/drivers/ptp/ptp.ko.xz',
    'kernel/fs/ext4/ext4.ko.xz',
    'kernel/fs/jbd2/jbd2.ko.xz',
  ]);
  t.notOk(keep.has('kernel/sound/core/snd.ko.xz'), 'what nothing asks for goes');
  t.notOk(keep.has('kernel/drivers/md/dm-verity-extra.ko.xz'), 'a module entry is not a prefix of longer names');
});

t.test('an entry matching no module is reported (typo or kernel change)', async (t) => {
  const { unmatched } = selectModules(['fs/ext4', 'drivers/net/e1000x', 'fs/ext'], DEP, new Map());
  t.same(unmatched, ['drivers/net/e1000x', 'fs/ext']);
});

t.test('the shipped list parses and keeps what the box boots with', async (t) => {
  const list = parseModuleList(readFileSync(join(import.meta.dirname, '../../../image/kernel-modules.txt'), 'utf8'));
  for (const must of ['drivers/md/dm-verity', 'fs/squashfs', 'fs/ext4', 'drivers/net/virtio_net', 'drivers/net/tun', 'net/netfilter', 'drivers/block/virtio_blk']) {
    t.ok(list.includes(must), `${must} is kept`);
  }
});
