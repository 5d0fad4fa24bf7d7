// Rewrites the hardening table in docs/security.md (between the rules:begin
// and rules:end markers) from the rules' own metadata (hardening/*/rule.yml),
// so the document hospital IT reads and the checks the build runs cannot
// drift apart. Run: node image/security-doc.ts (make readme); a unit test
// fails when the table is stale.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadRules, type Rule } from './hardening.ts';
import { REPO } from './tools.ts';

export const SECURITY_DOC = join(REPO, 'docs/security.md');
const BEGIN = '<!-- rules:begin -->';
const END = '<!-- rules:end -->';

const cell = (s: string): string => s.replace(/\s+/g, ' ').replaceAll('|', '\\|').trim();

/** One row per rule: id, what it ensures, severity, references, and any exception. */
export function rulesTable(rules: Rule[]): string {
  const rows = rules.map((r) => {
    const refs = [...r.references.stig, ...r.references.cis.map((c) => `CIS ${c}`), ...r.references.nist.map((n) => `NIST ${n}`)].join(', ');
    const ex = r.exception ? `${r.exception.appliesTo === 'build' ? 'not applied' : 'deviation on the running box'}: ${cell(r.exception.reason)}` : '';
    return `| \`${r.id}\` | ${cell(r.title)} | ${r.severity} | ${cell(refs)} | ${ex} |`;
  });
  return ['| rule | ensures | severity | references | exception |', '|---|---|---|---|---|', ...rows].join('\n');
}

/** The document with its table replaced; throws when the markers are missing. */
export function renderSecurityDoc(text: string, rules: Rule[]): string {
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error(`docs/security.md: markers ${BEGIN} ... ${END} not found`);
  return `${text.slice(0, a + BEGIN.length)}\n${rulesTable(rules)}\n${text.slice(b)}`;
}

if (import.meta.main) {
  writeFileSync(SECURITY_DOC, renderSecurityDoc(readFileSync(SECURITY_DOC, 'utf8'), loadRules()));
}
