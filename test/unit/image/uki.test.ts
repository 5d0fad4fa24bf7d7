import t from 'tap';
import { buildUki, parsePe, peChecksum } from '../../../image/uki.ts';

// A minimal PE32+ EFI application: DOS header, PE header, one .text section.
function tinyPe(opts: { headerRoom?: number; signed?: boolean } = {}): Buffer {
  const sizeOfHeaders = opts.headerRoom ?? 0x400;
  const pe = Buffer.alloc(sizeOfHeaders + 0x200);
  pe.write('MZ', 0, 'latin1');
  pe.writeUInt32LE(0x80, 0x3c);
  pe.writeUInt32LE(0x4550, 0x80);
  const coff = 0x84;
  pe.writeUInt16LE(0x8664, coff);
  pe.writeUInt16LE(1, coff + 2);
  pe.writeUInt16LE(240, coff + 16);
  const opt = coff + 20;
  pe.writeUInt16LE(0x20b, opt);
  pe.writeUInt32LE(0x1000, opt + 32);
  pe.writeUInt32LE(0x200, opt + 36);
  pe.writeUInt32LE(0x2000, opt + 56);
  pe.writeUInt32LE(sizeOfHeaders, opt + 60);
  pe.writeUInt32LE(16, opt + 108);
  if (opts.signed) {
    pe.writeUInt32LE(0x600, opt + 112 + 4 * 8);
    pe.writeUInt32LE(0x10, opt + 112 + 4 * 8 + 4);
  }
  const sec = opt + 240;
  pe.write('.text', sec, 'latin1');
  pe.writeUInt32LE(0x10, sec + 8);
  pe.writeUInt32LE(0x1000, sec + 12);
  pe.writeUInt32LE(0x200, sec + 16);
  pe.writeUInt32LE(sizeOfHeaders, sec + 20);
  pe.fill(0xcc, sizeOfHeaders, sizeOfHeaders + 0x10);
  return pe;
}

t.test('sections are appended page-aligned in memory and file-aligned on disk, with their bytes', async (t) => {
  const linux = Buffer.alloc(5000, 1);
  const cmdline = Buffer.from('root=/dev/mapper/root\0');
  const uki = buildUki(tinyPe(), [
    { name: '.cmdline', data: cmdline },
    { name: '.linux', data: linux },
  ]);
  const pe = parsePe(uki);
  t.same(pe.sections.map((s) => s.name), ['.text', '.cmdline', '.linux']);
  const [, c, l] = pe.sections;
  t.equal(c!.virtualAddress, 0x2000);
  t.equal(c!.virtualSize, cmdline.length);
  t.equal(l!.virtualAddress, 0x3000);
  t.equal(l!.pointerToRawData % 0x200, 0);
  t.equal(pe.sizeOfImage, 0x3000 + 0x2000);
  t.same(uki.subarray(c!.pointerToRawData, c!.pointerToRawData + c!.virtualSize), cmdline);
  t.same(uki.subarray(l!.pointerToRawData, l!.pointerToRawData + l!.virtualSize), linux);
  t.same(uki.subarray(0x400, 0x410), Buffer.alloc(0x10, 0xcc), 'the stub itself is untouched');
  const checksumAt = 0x84 + 20 + 64;
  t.equal(uki.readUInt32LE(checksumAt), peChecksum(uki, checksumAt));
  t.same(buildUki(tinyPe(), [{ name: '.cmdline', data: cmdline }, { name: '.linux', data: linux }]), uki, 'deterministic');
});

t.test('refuses what it cannot do right, and says why', async (t) => {
  t.throws(() => buildUki(Buffer.from('not a pe'), []), { message: /not a PE file/ });
  t.throws(() => buildUki(tinyPe({ signed: true }), []), { message: /Authenticode signature/ });
  t.throws(() => buildUki(tinyPe(), [{ name: '.text', data: Buffer.alloc(1) }]), { message: /already has a \.text section/ });
  t.throws(() => buildUki(tinyPe(), [{ name: '.waytoolongname', data: Buffer.alloc(1) }]), { message: /bad section name/ });
  const full = Array.from({ length: 20 }, (_, i) => ({ name: `.s${String.fromCharCode(97 + i)}`, data: Buffer.alloc(1) }));
  t.throws(() => buildUki(tinyPe({ headerRoom: 0x200 }), full), { message: /no room for 20 more section headers/ });
});
