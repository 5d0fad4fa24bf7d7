import t from 'tap';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyFixes, checkAll, gate, loadRules, parseRule, renderResults, summarize } from '../../../image/hardening.ts';

const GOOD = `id: demo-rule
title: A demo rule
severity: low
rationale: because
references:
  stig: [RHEL-09-213010]
  cis: ["1.5.2"]
  nist: [AC-6, SC-7(5)]
`;

t.test('rule.yml: a good file parses, with exception defaults', async (t) => {
  const r = parseRule('demo-rule', GOOD);
  t.same(r, { id: 'demo-rule', title: 'A demo rule', severity: 'low', rationale: 'because', references: { stig: ['RHEL-09-213010'], cis: ['1.5.2'], nist: ['AC-6', 'SC-7(5)'] } });
  const ex = parseRule('demo-rule', `${GOOD}exception:\n  reason: a gateway\n`);
  t.same(ex.exception, { reason: 'a gateway', appliesTo: 'build' });
});

t.test('rule.yml: every bad file is refused, naming the rule and the field', async (t) => {
  const cases: { name: string; text: string; want: RegExp }[] = [
    { name: 'not yaml', text: 'id: [', want: /hardening\/demo-rule\/rule.yml: not valid YAML/ },
    { name: 'not a mapping', text: '- a\n- b\n', want: /demo-rule\/rule.yml: expected a mapping/ },
    { name: 'id differs from folder', text: GOOD.replace('id: demo-rule', 'id: other'), want: /field 'id': must be the folder name 'demo-rule', got "other"/ },
    { name: 'unknown field', text: `${GOOD}colour: red\n`, want: /field 'colour': unknown field/ },
    { name: 'bad severity', text: GOOD.replace('severity: low', 'severity: critical'), want: /field 'severity': expected one of low, medium, high, got "critical"/ },
    { name: 'empty title', text: GOOD.replace('title: A demo rule', 'title: ""'), want: /field 'title': expected a non-empty string/ },
    { name: 'no rationale', text: GOOD.replace('rationale: because\n', ''), want: /field 'rationale'/ },
    { name: 'bad stig id', text: GOOD.replace('RHEL-09-213010', 'rhel9 kptr'), want: /field 'references.stig\[0\]': 'rhel9 kptr' is not a valid id/ },
    { name: 'nist missing', text: GOOD.replace('  nist: [AC-6, SC-7(5)]\n', ''), want: /field 'references.nist': required/ },
    { name: 'nist empty', text: GOOD.replace('[AC-6, SC-7(5)]', '[]'), want: /field 'references.nist': at least one/ },
    { name: 'nist not a list', text: GOOD.replace('[AC-6, SC-7(5)]', 'AC-6'), want: /field 'references.nist': expected a list/ },
    { name: 'unknown reference kind', text: GOOD.replace('  cis:', '  iso: [x]\n  cis:'), want: /field 'references.iso': unknown field/ },
    { name: 'exception without reason', text: `${GOOD}exception:\n  why: x\n`, want: /field 'exception.why': unknown field/ },
    { name: 'exception bad scope', text: `${GOOD}exception:\n  reason: x\n  appliesTo: later\n`, want: /field 'exception.appliesTo': expected build or runtime, got "later"/ },
    { name: 'duplicate key', text: `${GOOD}title: again\n`, want: /not valid YAML/ },
  ];
  for (const c of cases) t.throws(() => parseRule('demo-rule', c.text), { code: 'RAP_HARDENING', message: c.want }, c.name);
});

/** A rules folder (ROOT/rules) with scripts that exit as told, to exercise the runner; ROOT/tree is the tree. */
function rulesDir(root: string, rules: Record<string, { check: string; fix?: string; yml?: string }>): string {
  const dir = join(root, 'rules');
  mkdirSync(join(root, 'tree'), { recursive: true });
  mkdirSync(dir, { recursive: true });
  for (const [id, r] of Object.entries(rules)) {
    mkdirSync(join(dir, id));
    writeFileSync(join(dir, id, 'rule.yml'), (r.yml ?? GOOD).replace('id: demo-rule', `id: ${id}`));
    writeFileSync(join(dir, id, 'check'), `#!/bin/sh\n${r.check}\n`);
    if (r.fix !== undefined) writeFileSync(join(dir, id, 'fix'), `#!/bin/sh\n${r.fix}\n`);
    chmodSync(join(dir, id, 'check'), 0o755);
  }
  return dir;
}

t.test('runner: fixes change the tree, checks judge it; statuses, summary, gate', async (t) => {
  const dir = rulesDir(t.testdir(), {
    'a-pass-after-fix': { check: '[ -f "$1/fixed" ] || { echo "not fixed"; exit 1; }', fix: 'touch "$1/fixed"' },
    'b-not-applicable': { check: 'echo "no cron"; exit 2', fix: 'true' },
    'c-excepted': { check: 'echo "hidepid off"; exit 1', yml: `${GOOD}exception:\n  reason: systemd needs /proc\n` },
    'd-fails': { check: 'echo "first"; echo "second"; exit 1', fix: 'true' },
    'e-runtime-exception-still-gates': { check: 'echo "forwarding on"; exit 1', fix: 'true', yml: `${GOOD}exception:\n  reason: pinholes\n  appliesTo: runtime\n` },
  });
  const rules = loadRules(dir);
  t.same(rules.map((r) => [r.id, r.hasFix]), [['a-pass-after-fix', true], ['b-not-applicable', true], ['c-excepted', false], ['d-fails', true], ['e-runtime-exception-still-gates', true]]);
  const tree = join(dir, '../tree');
  await applyFixes(rules, tree);
  const results = await checkAll(rules, tree);
  t.same(results.map((r) => [r.id, r.status, r.findings]), [
    ['a-pass-after-fix', 'pass', []],
    ['b-not-applicable', 'notapplicable', ['no cron']],
    ['c-excepted', 'excepted', ['hidepid off']],
    ['d-fails', 'fail', ['first', 'second']],
    ['e-runtime-exception-still-gates', 'fail', ['forwarding on']],
  ]);
  t.same(summarize(results), { pass: 1, fail: 2, notapplicable: 1, excepted: 1 });
  t.throws(() => gate(results), { code: 'RAP_HARDENING', message: /2 hardening rule\(s\) failed.*\n  d-fails: A demo rule\n      first\n      second\n  e-runtime/s });
  t.doesNotThrow(() => gate(results.filter((r) => r.status !== 'fail')));
  const json = JSON.parse(renderResults(results)) as { summary: unknown; rules: { id: string; exception?: string }[] };
  t.same(json.summary, { pass: 1, fail: 2, notapplicable: 1, excepted: 1 });
  t.equal(json.rules[2]!.exception, 'build: systemd needs /proc');
  t.equal(renderResults(results), renderResults(results), 'deterministic');
});

t.test('runner: a check that errors (exit 3, usage) is an error naming the rule, never a verdict', async (t) => {
  const dir = rulesDir(t.testdir(), { broken: { check: 'echo "error: bad root" >&2; exit 3', fix: 'true' } });
  await t.rejects(checkAll(loadRules(dir), join(dir, '../tree')), { code: 'RAP_HARDENING', message: /hardening\/broken\/check: .*exited with code 3: error: bad root/ });
});

t.test('runner: a rule without a fix needs a build exception; a bad rule.yml stops the listing', async (t) => {
  const root = t.testdir();
  t.throws(() => loadRules(rulesDir(join(root, 'a'), { nofix: { check: 'exit 0' } })), { message: /hardening\/nofix: no fix script, and no build exception/ });
  t.throws(() => loadRules(rulesDir(join(root, 'b'), { bad: { check: 'exit 0', fix: 'true', yml: GOOD.replace('low', 'urgent') } })), { message: /hardening\/bad\/rule.yml: field 'severity'/ });
});

t.test("the shipped rules: all load, and refuse to judge the host's /", async (t) => {
  const rules = loadRules();
  t.ok(rules.length >= 25, `${rules.length} rules`);
  for (const id of ['sysctl-kernel', 'modules-blacklist', 'services-preset-justified', 'bootloader-editor-off', 'mount-tmp-options']) {
    t.ok(rules.some((r) => r.id === id), id);
  }
  await t.rejects(checkAll(rules.slice(0, 1), '/'), { message: /refusing to run on the host's \// });
});
