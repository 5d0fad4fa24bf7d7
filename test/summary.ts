// Prints one closing line over the TAP streams of all tiers run:
//   tests: N passed, N failed, N skipped
// counting test files (the top-level points) of each tier. Exits 1 on any
// failure or when no test ran at all.

import { readFileSync } from 'node:fs';

let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of process.argv.slice(2)) {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    // Top-level test points are unindented.
    const m = /^(ok|not ok) \d+ - (.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'not ok') failed++;
    else if (/# (SKIP|TODO)\b/i.test(m[2]!)) skipped++;
    else passed++;
  }
}
process.stdout.write(`tests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exitCode = failed > 0 || passed === 0 ? 1 : 0;
