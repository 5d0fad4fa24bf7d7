// One test per hardening rule (hardening/<id>/), generated from the folder
// list: a blank temp tree is made non-compliant by the rule's fixture, the
// check must fail, the fix must make it pass, and a second fix must change
// nothing (idempotent). Nothing outside the temp tree is touched: every
// script refuses the host's /.
import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { loadRules, runRuleScript } from '../../../image/hardening.ts';

/** Every path below `dir` with its type, mode, owner and content (or link target). */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = join(rel, name);
      const p = join(dir, r);
      const st = lstatSync(p);
      const what = st.isSymbolicLink()
        ? `-> ${readlinkSync(p)}`
        : st.isDirectory()
          ? 'dir'
          : createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16);
      out.push(`${r} ${(st.mode & 0o7777).toString(8)} ${st.uid} ${what}`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('.');
  return out;
}

const asRoot = process.getuid?.() === 0;

for (const rule of loadRules()) {
  // Rules that judge file ownership need files owned by root in the tree.
  const needsRoot = /\buid_of\b|chown/.test(readFileSync(join(rule.dir, 'check'), 'utf8'));
  t.test(`${rule.id}: blank -> non-compliant -> fixed -> passes`, { skip: needsRoot && !asRoot ? 'checks file ownership: needs root' : false }, async (t) => {
    t.ok(existsSync(join(rule.dir, 'fixture')), 'has a fixture');
    const tree = t.testdir();
    await runRuleScript(rule, 'fixture', tree);
    const before = await runRuleScript(rule, 'check', tree);
    t.equal(before.code, 1, `the fixture is non-compliant: ${before.out}`);
    t.not(before.out, '', 'the failing check says what is wrong');
    if (!rule.hasFix) {
      t.equal(rule.exception?.appliesTo, 'build', 'not applied: carries a build exception');
      return;
    }
    await runRuleScript(rule, 'fix', tree);
    const after = await runRuleScript(rule, 'check', tree);
    t.equal(after.code, 0, `fixed: ${after.out}`);
    const once = snapshot(tree);
    await runRuleScript(rule, 'fix', tree);
    t.same(snapshot(tree), once, 'a second fix changes nothing');
    t.equal((await runRuleScript(rule, 'check', tree)).code, 0);
  });
}
