// Unified kernel images (UKI): systemd's EFI stub with the kernel, initrd,
// command line and os-release added as PE sections (the UAPI "Unified Kernel
// Image" specification). One UKI per root slot binds that slot's dm-verity
// root hash (on the command line) to the kernel and initrd that check it:
// replacing the hash means replacing the one file the firmware starts, and
// with Secure Boot that file's signature.
//
// Why our own ~150 lines and not ukify: the build host is Debian 12, whose
// systemd (252) has no ukify, and objcopy stamps the build time into the PE
// header. Adding sections to a PE file is simple and fully deterministic:
// append section headers (the stub leaves room for them), append the data
// at the next file and memory alignment, fix SizeOfImage and the checksum.

const DOS_E_LFANEW = 0x3c;
const PE_SIGNATURE = 0x00004550; // "PE\0\0"
const COFF_HEADER_SIZE = 20;
const SECTION_HEADER_SIZE = 40;
const PE32_PLUS = 0x20b;
// Offsets inside the PE32+ optional header.
const OPT_SECTION_ALIGNMENT = 32;
const OPT_FILE_ALIGNMENT = 36;
const OPT_SIZE_OF_IMAGE = 56;
const OPT_SIZE_OF_HEADERS = 60;
const OPT_CHECKSUM = 64;
const OPT_NUMBER_OF_RVA_AND_SIZES = 108;
const OPT_DATA_DIRECTORIES = 112;
const DATA_DIRECTORY_SECURITY = 4;
/** Initialized data, readable: what every UKI payload section is. */
const SCN_DATA_READ = 0x00000040 | 0x40000000;

export interface UkiSection {
  /** Section name, at most 8 bytes (".linux", ".initrd", ".cmdline", ".osrel", ".uname"). */
  name: string;
  data: Buffer;
}

interface SectionHeader {
  name: string;
  virtualSize: number;
  virtualAddress: number;
  sizeOfRawData: number;
  pointerToRawData: number;
}

export interface PeLayout {
  coffOffset: number;
  optOffset: number;
  sectionTableOffset: number;
  numberOfSections: number;
  sectionAlignment: number;
  fileAlignment: number;
  sizeOfHeaders: number;
  sizeOfImage: number;
  sections: SectionHeader[];
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

function fail(what: string): never {
  throw new Error(`uki: ${what}`);
}

/** Read the headers of a PE32+ image (enough to append sections). */
export function parsePe(pe: Buffer): PeLayout {
  if (pe.length < 0x40 || pe.toString('latin1', 0, 2) !== 'MZ') fail('the stub is not a PE file (no MZ header)');
  const coffOffset = pe.readUInt32LE(DOS_E_LFANEW) + 4;
  if (coffOffset + COFF_HEADER_SIZE > pe.length || pe.readUInt32LE(coffOffset - 4) !== PE_SIGNATURE) fail('the stub has no PE signature');
  const numberOfSections = pe.readUInt16LE(coffOffset + 2);
  const sizeOfOptionalHeader = pe.readUInt16LE(coffOffset + 16);
  const optOffset = coffOffset + COFF_HEADER_SIZE;
  if (pe.readUInt16LE(optOffset) !== PE32_PLUS) fail('the stub is not PE32+ (expected an x86-64 EFI application)');
  const sectionTableOffset = optOffset + sizeOfOptionalHeader;
  const sections: SectionHeader[] = [];
  for (let i = 0; i < numberOfSections; i++) {
    const o = sectionTableOffset + i * SECTION_HEADER_SIZE;
    sections.push({
      name: pe.toString('latin1', o, o + 8).replace(/\0+$/, ''),
      virtualSize: pe.readUInt32LE(o + 8),
      virtualAddress: pe.readUInt32LE(o + 12),
      sizeOfRawData: pe.readUInt32LE(o + 16),
      pointerToRawData: pe.readUInt32LE(o + 20),
    });
  }
  return {
    coffOffset,
    optOffset,
    sectionTableOffset,
    numberOfSections,
    sectionAlignment: pe.readUInt32LE(optOffset + OPT_SECTION_ALIGNMENT),
    fileAlignment: pe.readUInt32LE(optOffset + OPT_FILE_ALIGNMENT),
    sizeOfHeaders: pe.readUInt32LE(optOffset + OPT_SIZE_OF_HEADERS),
    sizeOfImage: pe.readUInt32LE(optOffset + OPT_SIZE_OF_IMAGE),
    sections,
  };
}

/** The PE checksum (as in imagehlp's CheckSumMappedFile): 16-bit folded sum plus the file length. */
export function peChecksum(pe: Buffer, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i + 1 < pe.length; i += 2) {
    if (i === checksumOffset || i === checksumOffset + 2) continue;
    sum += pe.readUInt16LE(i);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  if (pe.length % 2) {
    sum += pe[pe.length - 1]!;
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  sum = (sum & 0xffff) + (sum >>> 16);
  return (sum + pe.length) >>> 0;
}

/**
 * The stub with `sections` appended, in the given order, after its own
 * sections. Throws if the stub is signed (appending would break the
 * signature: sign the UKI instead) or has no room for more section headers.
 */
export function buildUki(stub: Buffer, sections: readonly UkiSection[]): Buffer {
  const pe = parsePe(stub);
  const security = pe.optOffset + OPT_DATA_DIRECTORIES + DATA_DIRECTORY_SECURITY * 8;
  if (stub.readUInt32LE(pe.optOffset + OPT_NUMBER_OF_RVA_AND_SIZES) > DATA_DIRECTORY_SECURITY && stub.readUInt32LE(security + 4) !== 0) {
    fail('the stub carries an Authenticode signature; use the unsigned stub and sign the finished UKI');
  }
  const names = new Set(pe.sections.map((s) => s.name));
  for (const s of sections) {
    if (Buffer.byteLength(s.name, 'latin1') > 8 || !/^\.[a-z]+$/.test(s.name)) fail(`bad section name ${JSON.stringify(s.name)}`);
    if (names.has(s.name)) fail(`the stub already has a ${s.name} section`);
    names.add(s.name);
  }
  const headersEnd = pe.sectionTableOffset + (pe.numberOfSections + sections.length) * SECTION_HEADER_SIZE;
  if (headersEnd > pe.sizeOfHeaders) {
    fail(`no room for ${sections.length} more section headers (${headersEnd} bytes needed, SizeOfHeaders is ${pe.sizeOfHeaders})`);
  }
  // Everything after the stub's last section (its file end, its memory end).
  let fileEnd = alignUp(Math.max(pe.sizeOfHeaders, ...pe.sections.map((s) => s.pointerToRawData + s.sizeOfRawData)), pe.fileAlignment);
  let vaEnd = alignUp(Math.max(pe.sizeOfImage, ...pe.sections.map((s) => s.virtualAddress + s.virtualSize)), pe.sectionAlignment);
  if (stub.length > fileEnd) fail(`the stub has ${stub.length - fileEnd} bytes after its last section (an overlay); refusing to guess what they are`);

  const added: { header: SectionHeader; data: Buffer }[] = [];
  for (const s of sections) {
    const header = {
      name: s.name,
      virtualSize: s.data.length,
      virtualAddress: vaEnd,
      sizeOfRawData: alignUp(s.data.length, pe.fileAlignment),
      pointerToRawData: fileEnd,
    };
    added.push({ header, data: s.data });
    fileEnd += header.sizeOfRawData;
    vaEnd = alignUp(vaEnd + s.data.length, pe.sectionAlignment);
  }
  const out = Buffer.alloc(fileEnd);
  stub.copy(out);
  added.forEach(({ header, data }, i) => {
    const o = pe.sectionTableOffset + (pe.numberOfSections + i) * SECTION_HEADER_SIZE;
    out.write(header.name.padEnd(8, '\0'), o, 8, 'latin1');
    out.writeUInt32LE(header.virtualSize, o + 8);
    out.writeUInt32LE(header.virtualAddress, o + 12);
    out.writeUInt32LE(header.sizeOfRawData, o + 16);
    out.writeUInt32LE(header.pointerToRawData, o + 20);
    // relocations, line numbers: none
    out.writeUInt32LE(SCN_DATA_READ, o + 36);
    data.copy(out, header.pointerToRawData);
  });
  out.writeUInt16LE(pe.numberOfSections + sections.length, pe.coffOffset + 2);
  out.writeUInt32LE(vaEnd, pe.optOffset + OPT_SIZE_OF_IMAGE);
  const checksumOffset = pe.optOffset + OPT_CHECKSUM;
  out.writeUInt32LE(0, checksumOffset);
  out.writeUInt32LE(peChecksum(out, checksumOffset), checksumOffset);
  return out;
}
