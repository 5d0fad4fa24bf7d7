import t from 'tap';
import { join } from 'node:path';
import { loadLayout, parsePartition, placePartitions, renderSfdisk, stableUuid, diskSize } from '../../../image/layout.ts';

t.test('stableUuid is stable, distinct and well-formed', async (t) => {
  t.equal(stableUuid('x'), stableUuid('x'));
  t.not(stableUuid('x'), stableUuid('y'));
  t.match(stableUuid('x'), /^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/);
});

t.test('the shipped layout: ESP, root A, root B, data, in that order', async (t) => {
  const parts = loadLayout(join(import.meta.dirname, '../../../image/partitions'));
  t.same(parts.map((p) => [p.label, p.type]), [
    ['rapbox-esp', 'esp'],
    ['rapbox-root-a', 'root-x86-64'],
    ['rapbox-root-b', 'root-x86-64'],
    ['rapbox-data', 'linux-data'],
  ]);
  const a = parts[1]!;
  const b = parts[2]!;
  t.equal(a.sizeMiB, b.sizeMiB, 'A and B slots are the same size');
});

t.test('renderSfdisk: whole script for a two-partition layout', async (t) => {
  const parts = placePartitions([
    { label: 'esp', type: 'esp', sizeMiB: 2, uuid: 'U1' },
    { label: 'data', type: 'linux-data', sizeMiB: 3, uuid: 'U2' },
  ]);
  t.equal(
    renderSfdisk(parts),
    [
      'label: gpt',
      `label-id: ${stableUuid('disk')}`,
      'unit: sectors',
      'sector-size: 512',
      '',
      'start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=U1, name="esp"',
      'start=6144, size=6144, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=U2, name="data"',
      '',
    ].join('\n'),
  );
  t.equal(diskSize(parts), (1 + 2 + 3 + 1) * 1024 * 1024);
});

t.test('bad drop-ins name the file and the field', async (t) => {
  t.throws(() => parsePartition('10-x.json', '{'), { message: /10-x\.json: not valid JSON/ });
  t.throws(() => parsePartition('10-x.json', '{"label":"A B","type":"esp","sizeMiB":1}'), { message: /10-x\.json: 'label'/ });
  t.throws(() => parsePartition('10-x.json', '{"label":"a","type":"swap","sizeMiB":1}'), { message: /'type' must be one of esp, root-x86-64, linux-data; got "swap"/ });
  t.throws(() => parsePartition('10-x.json', '{"label":"a","type":"esp","sizeMiB":0}'), { message: /'sizeMiB' must be a positive integer/ });
});
