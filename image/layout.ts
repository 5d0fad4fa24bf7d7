// The disk layout: numbered drop-ins in image/partitions/*.json (read in name
// order), rendered to an sfdisk script by a pure function. Every identifier
// (disk label-id, partition UUIDs) is derived from a fixed string, so two
// builds give the same bytes and the boot entries can name PARTUUIDs.

import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export const GPT_TYPES = {
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  'root-x86-64': '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
  'linux-data': '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
} as const;
export type PartitionType = keyof typeof GPT_TYPES;

export interface Partition {
  label: string;
  type: PartitionType;
  sizeMiB: number;
  uuid: string;
  /** Byte offset on the disk, filled in by placePartitions. */
  offset: number;
}

/** A stable UUID (version-4 layout) from a name: same name, same UUID. */
export function stableUuid(name: string): string {
  const h = createHash('sha256').update(`rapbox:${name}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`.toUpperCase();
}

const MiB = 1024 * 1024;
/** First partition starts at 1 MiB; the backup GPT needs 33 sectors at the end. */
const START = 1 * MiB;
const TAIL = 1 * MiB;

export function parsePartition(file: string, text: string): Omit<Partition, 'offset'> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  const d = doc as Record<string, unknown>;
  if (typeof d['label'] !== 'string' || !/^[a-z0-9-]{1,36}$/.test(d['label'])) {
    throw new Error(`${file}: 'label' must be 1-36 of a-z, 0-9, "-"; got ${JSON.stringify(d['label'])}`);
  }
  if (typeof d['type'] !== 'string' || !(d['type'] in GPT_TYPES)) {
    throw new Error(`${file}: 'type' must be one of ${Object.keys(GPT_TYPES).join(', ')}; got ${JSON.stringify(d['type'])}`);
  }
  if (typeof d['sizeMiB'] !== 'number' || !Number.isInteger(d['sizeMiB']) || d['sizeMiB'] < 1) {
    throw new Error(`${file}: 'sizeMiB' must be a positive integer; got ${JSON.stringify(d['sizeMiB'])}`);
  }
  return { label: d['label'], type: d['type'] as PartitionType, sizeMiB: d['sizeMiB'], uuid: stableUuid(`partition:${d['label']}`) };
}

export function loadLayout(dir: string): Partition[] {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  return placePartitions(files.map((f) => parsePartition(f, readFileSync(join(dir, f), 'utf8'))));
}

export function placePartitions(parts: Omit<Partition, 'offset'>[]): Partition[] {
  let offset = START;
  return parts.map((p) => {
    const placed = { ...p, offset };
    offset += p.sizeMiB * MiB;
    return placed;
  });
}

export function diskSize(parts: Partition[]): number {
  const last = parts[parts.length - 1];
  return last ? last.offset + last.sizeMiB * MiB + TAIL : START + TAIL;
}

export const DISK_LABEL_ID = stableUuid('disk');

/** The sfdisk script for the layout (pure; compared whole in unit tests). */
export function renderSfdisk(parts: Partition[]): string {
  const lines = ['label: gpt', `label-id: ${DISK_LABEL_ID}`, 'unit: sectors', 'sector-size: 512', ''];
  for (const p of parts) {
    lines.push(
      `start=${p.offset / 512}, size=${(p.sizeMiB * MiB) / 512}, type=${GPT_TYPES[p.type]}, uuid=${p.uuid}, name="${p.label}"`,
    );
  }
  return `${lines.join('\n')}\n`;
}
