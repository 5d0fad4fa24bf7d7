import t from 'tap';
import { readFileSync } from 'node:fs';
import { loadRules } from '../../../image/hardening.ts';
import { renderSecurityDoc, rulesTable, SECURITY_DOC } from '../../../image/security-doc.ts';

t.test('docs/security.md carries the current rules table (make readme rewrites it)', async (t) => {
  const text = readFileSync(SECURITY_DOC, 'utf8');
  t.equal(renderSecurityDoc(text, loadRules()), text, 'stale: run make readme');
});

t.test('the table: one row per rule, exceptions spelled out, pipes escaped; missing markers are an error', async (t) => {
  const rule = {
    id: 'demo', title: 'A | B', severity: 'low' as const, rationale: 'r',
    references: { stig: ['RHEL-09-213010'], cis: ['1.5.2'], nist: ['AC-6'] },
    exception: { reason: 'a\n  gateway', appliesTo: 'runtime' as const },
  };
  t.equal(rulesTable([rule]).split('\n')[2], '| `demo` | A \\| B | low | RHEL-09-213010, CIS 1.5.2, NIST AC-6 | deviation on the running box: a gateway |');
  t.throws(() => renderSecurityDoc('no markers', [rule]), { message: /markers/ });
});
