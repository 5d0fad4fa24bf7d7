// Rewrites the settings table in README.md from the one declaration in
// src/rapd/config.ts (between the settings:begin/end markers).
// Run: node image/readme-settings.ts (make readme).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { configDocTable } from '../src/rapd/config.ts';
import { REPO } from './tools.ts';

const path = join(REPO, 'README.md');
const text = readFileSync(path, 'utf8');
const begin = '<!-- settings:begin -->';
const end = '<!-- settings:end -->';
const a = text.indexOf(begin);
const b = text.indexOf(end);
if (a < 0 || b < a) throw new Error(`README.md: markers ${begin} ... ${end} not found`);
writeFileSync(path, `${text.slice(0, a + begin.length)}\n${configDocTable()}\n${text.slice(b)}`);
