// Prints one closing line over the TAP streams of all tiers run:
//   tests: N passed, N failed, N skipped
// summing the assertion counts tap prints at the end of each stream
// ("# { total: 119, pass: 119, fail: 0, skip: 0 }"). A test file that failed
// or crashed (an unindented "not ok") counts as a failure even when its
// assertions did not. Exits 1 on any failure, or when nothing ran.

import { readFileSync } from 'node:fs';

let passed = 0;
let failed = 0;
let skipped = 0;
let failedFiles = 0;
for (const file of process.argv.slice(2)) {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (/^not ok \d+ - /.test(line)) failedFiles++;
    const m = /^# \{ total: \d+(.*) \}$/.exec(line);
    if (!m) continue;
    const count = (k: string): number => Number(new RegExp(`${k}: (\\d+)`).exec(m[1]!)?.[1] ?? 0);
    passed += count('pass');
    failed += count('fail');
    skipped += count('skip') + count('todo');
  }
}
if (failed === 0 && failedFiles > 0) failed = failedFiles;
process.stdout.write(`tests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exitCode = failed > 0 || passed === 0 ? 1 : 0;
