// Hardening rules as code (hardening/<rule-id>/, issue #6): list the rules,
// validate their rule.yml, run their fixes on a root tree, run their checks
// and judge the results. The image build applies every fix before the root
// is sealed and re-checks the sealed tree (image/build.ts, hardenTree); a
// failing check without a documented exception fails the build.
//
//   node image/hardening.ts list
//   node image/hardening.ts check ROOT [--esp DIR] [--json FILE]
//   node image/hardening.ts fix ROOT

import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { RapError, errorLine } from '../src/lib/errors.ts';
import { run, type Runner } from '../src/lib/run.ts';
import { REPO, info, stage } from './tools.ts';

export const RULES_DIR = join(REPO, 'hardening');

export const SEVERITIES = ['low', 'medium', 'high'] as const;
export type Severity = (typeof SEVERITIES)[number];

export interface Rule {
  id: string;
  title: string;
  severity: Severity;
  rationale: string;
  /** Steps outside the image (manufacturing, operations). */
  notes?: string;
  references: { stig: string[]; cis: string[]; nist: string[] };
  /**
   * A documented deviation. `build` (default): a failing check is reported
   * as excepted instead of failing the build. `runtime`: the image must still
   * pass; the deviation happens on the running box (e.g. forwarding while a
   * session is open), so the check stays a gate.
   */
  exception?: { reason: string; appliesTo: 'build' | 'runtime' };
}

export interface LoadedRule extends Rule {
  dir: string;
  /** False for a rule that is deliberately not applied (it must carry an exception). */
  hasFix: boolean;
}

export type Status = 'pass' | 'fail' | 'notapplicable' | 'excepted';

export interface RuleResult {
  id: string;
  title: string;
  severity: Severity;
  status: Status;
  /** What the check printed: one finding per line. */
  findings: string[];
  exception?: string;
  references: Rule['references'];
}

const TOP_KEYS = ['id', 'title', 'severity', 'rationale', 'notes', 'references', 'exception'];
const REF_KEYS = ['stig', 'cis', 'nist'];
const ID = /^[a-z0-9][a-z0-9-]{1,62}$/;
// DISA STIG rule versions (RHEL-09-213010, ASD V5R3's APSC-DV-000160, ...).
const STIG_ID = /^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*-\d{5,6}$/;
// NIST SP 800-53 control, optionally an enhancement: AC-6, SC-7(5).
const NIST_ID = /^[A-Z]{2}-\d{1,2}(\(\d{1,2}\))?$/;

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parse and validate one rule.yml; every error names the rule and the field. */
export function parseRule(id: string, text: string): Rule {
  const where = `hardening/${id}/rule.yml`;
  const bad = (field: string, what: string): never => {
    throw new RapError('RAP_HARDENING', `${where}: field '${field}': ${what}`, { rule: id, field });
  };
  let doc: unknown;
  try {
    doc = parseYaml(text, { strict: true, uniqueKeys: true });
  } catch (e) {
    throw new RapError('RAP_HARDENING', `${where}: not valid YAML: ${errorLine(e).split('\n')[0]}`, { rule: id }, { cause: e });
  }
  if (!isMap(doc)) throw new RapError('RAP_HARDENING', `${where}: expected a mapping of fields`, { rule: id });
  for (const k of Object.keys(doc)) if (!TOP_KEYS.includes(k)) bad(k, `unknown field (expected ${TOP_KEYS.join(', ')})`);
  const text1 = (field: string, v: unknown, max = 4000): string => {
    if (typeof v !== 'string' || v.trim() === '') return bad(field, `expected a non-empty string, got ${JSON.stringify(v)}`);
    if (v.length > max) return bad(field, `longer than ${max} characters`);
    return v.trim();
  };
  if (doc['id'] !== id) bad('id', `must be the folder name '${id}', got ${JSON.stringify(doc['id'])}`);
  if (!ID.test(id)) bad('id', `'${id}' is not lower-case letters, digits and '-'`);
  const title = text1('title', doc['title'], 120);
  const sev = doc['severity'];
  if (typeof sev !== 'string' || !(SEVERITIES as readonly string[]).includes(sev)) {
    bad('severity', `expected one of ${SEVERITIES.join(', ')}, got ${JSON.stringify(sev)}`);
  }
  const rationale = text1('rationale', doc['rationale']);
  const notes = doc['notes'] === undefined ? undefined : text1('notes', doc['notes']);
  const refs = doc['references'];
  if (!isMap(refs)) return bad('references', 'expected a mapping with stig, cis and nist lists');
  for (const k of Object.keys(refs)) if (!REF_KEYS.includes(k)) bad(`references.${k}`, `unknown field (expected ${REF_KEYS.join(', ')})`);
  const list = (k: string, re: RegExp | null, required: boolean): string[] => {
    const v = refs[k];
    if (v === undefined || v === null) return required ? bad(`references.${k}`, 'required (a list of ids)') : [];
    if (!Array.isArray(v)) return bad(`references.${k}`, `expected a list, got ${JSON.stringify(v)}`);
    return v.map((x, i) => {
      if (typeof x !== 'string' || x.trim() === '') return bad(`references.${k}[${i}]`, `expected a non-empty string, got ${JSON.stringify(x)}`);
      if (re && !re.test(x)) return bad(`references.${k}[${i}]`, `'${x}' is not a valid id (${re.source})`);
      return x;
    });
  };
  const references = { stig: list('stig', STIG_ID, false), cis: list('cis', null, false), nist: list('nist', NIST_ID, true) };
  if (references.nist.length === 0) bad('references.nist', 'at least one NIST 800-53 control is required');
  let exception: Rule['exception'];
  if (doc['exception'] !== undefined) {
    const ex = doc['exception'];
    if (!isMap(ex)) return bad('exception', 'expected a mapping with a reason');
    for (const k of Object.keys(ex)) if (k !== 'reason' && k !== 'appliesTo') bad(`exception.${k}`, 'unknown field (expected reason, appliesTo)');
    const appliesTo = ex['appliesTo'] ?? 'build';
    if (appliesTo !== 'build' && appliesTo !== 'runtime') bad('exception.appliesTo', `expected build or runtime, got ${JSON.stringify(appliesTo)}`);
    exception = { reason: text1('exception.reason', ex['reason']), appliesTo: appliesTo as 'build' | 'runtime' };
  }
  return { id, title, severity: sev as Severity, rationale, ...(notes ? { notes } : {}), references, ...(exception ? { exception } : {}) };
}

/** Every rule folder (one with a rule.yml) below `dir`, sorted by id, validated. */
export function loadRules(dir = RULES_DIR): LoadedRule[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(dir, e.name, 'rule.yml')))
    .map((e) => e.name)
    .sort()
    .map((id) => {
      const ruleDir = join(dir, id);
      const rule = parseRule(id, readFileSync(join(ruleDir, 'rule.yml'), 'utf8'));
      if (!existsSync(join(ruleDir, 'check'))) throw new RapError('RAP_HARDENING', `hardening/${id}: no check script`, { rule: id });
      const hasFix = existsSync(join(ruleDir, 'fix'));
      if (!hasFix && rule.exception?.appliesTo !== 'build') {
        throw new RapError('RAP_HARDENING', `hardening/${id}: no fix script, and no build exception saying why it is not applied`, { rule: id });
      }
      return { ...rule, dir: ruleDir, hasFix };
    });
}

export interface RunScriptOptions {
  /** The ESP staging directory, for rules that judge the boot loader. */
  esp?: string;
  runner?: Runner;
}

const SCRIPT_TIMEOUT_MS = 5 * 60_000;

/** Run one of a rule's scripts (check, fix, fixture) on `root`: exit 0/1/2 are verdicts, anything else an error. */
export async function runRuleScript(rule: LoadedRule, script: 'check' | 'fix' | 'fixture', root: string, opts: RunScriptOptions = {}): Promise<{ code: number; out: string }> {
  const r = await (opts.runner ?? run)(['sh', join(rule.dir, script), root], {
    env: { HARDENING_ESP: opts.esp, HARDENING_ROOT: undefined },
    okCodes: script === 'check' ? [0, 1, 2] : [0],
    timeoutMs: SCRIPT_TIMEOUT_MS,
  }).catch((e: unknown) => {
    throw new RapError('RAP_HARDENING', `hardening/${rule.id}/${script}: ${errorLine(e)}`, { rule: rule.id, script }, { cause: e });
  });
  return { code: r.code ?? -1, out: `${r.stdout}${r.stderr}`.trim() };
}

/** Apply every rule's fix to the tree, in id order. */
export async function applyFixes(rules: LoadedRule[], root: string, opts: RunScriptOptions = {}): Promise<void> {
  for (const rule of rules) if (rule.hasFix) await runRuleScript(rule, 'fix', root, opts);
}

export function judge(rule: Rule, code: number, out: string): RuleResult {
  const status: Status = code === 0 ? 'pass' : code === 2 ? 'notapplicable' : rule.exception?.appliesTo === 'build' ? 'excepted' : 'fail';
  return {
    id: rule.id,
    title: rule.title,
    severity: rule.severity,
    status,
    findings: out === '' ? [] : out.split('\n'),
    ...(rule.exception ? { exception: `${rule.exception.appliesTo}: ${rule.exception.reason}` } : {}),
    references: rule.references,
  };
}

/** Run every rule's check on the tree (read-only). */
export async function checkAll(rules: LoadedRule[], root: string, opts: RunScriptOptions = {}): Promise<RuleResult[]> {
  const results: RuleResult[] = [];
  for (const rule of rules) {
    const { code, out } = await runRuleScript(rule, 'check', root, opts);
    results.push(judge(rule, code, out));
  }
  return results;
}

export function summarize(results: RuleResult[]): Record<Status, number> {
  const s: Record<Status, number> = { pass: 0, fail: 0, notapplicable: 0, excepted: 0 };
  for (const r of results) s[r.status]++;
  return s;
}

/** Throws, naming each rule (id and title) and its findings, when any check failed without an exception. */
export function gate(results: RuleResult[]): void {
  const failed = results.filter((r) => r.status === 'fail');
  if (failed.length === 0) return;
  throw new RapError(
    'RAP_HARDENING',
    `${failed.length} hardening rule(s) failed on the sealed tree:\n` +
      failed.map((r) => `  ${r.id}: ${r.title}\n${r.findings.map((f) => `      ${f}`).join('\n')}`).join('\n'),
    { rules: failed.map((r) => r.id) },
  );
}

/** rules.json: deterministic (no times, no host paths), so a rebuild gives the same bytes. */
export function renderResults(results: RuleResult[]): string {
  return `${JSON.stringify({ schema: 'rapbox-hardening-results/1', summary: summarize(results), rules: results }, null, 2)}\n`;
}

/** Image build, before the root is sealed: every rule's fix, applied to the root tree. */
export async function applyHardening(tree: string): Promise<void> {
  const rules = loadRules();
  stage(`hardening: apply ${rules.filter((r) => r.hasFix).length} fixes (hardening/*/fix) to the root tree`);
  await applyFixes(rules, tree);
}

/**
 * Image build, after sealing: every check on the tree that was fed to
 * mksquashfs (and the ESP staging directory); the results go to `json`
 * (rules.json) whatever they are, then a failure without a build exception
 * fails the build, naming each rule.
 */
export async function verifyHardening(tree: string, esp: string, json: string): Promise<RuleResult[]> {
  const rules = loadRules();
  stage(`hardening: ${rules.length} checks on the sealed tree`);
  const results = await checkAll(rules, tree, { esp });
  writeFileSync(json, renderResults(results));
  const s = summarize(results);
  info(`${s.pass} pass, ${s.fail} fail, ${s.excepted} excepted, ${s.notapplicable} not applicable -> ${json}`);
  gate(results);
  return results;
}

async function main(argv: string[]): Promise<void> {
  const [cmd, root, ...rest] = argv;
  const opt = (name: string): string | undefined => {
    const i = rest.indexOf(name);
    return i >= 0 ? rest[i + 1] : undefined;
  };
  const rules = loadRules();
  if (cmd === 'list') {
    for (const r of rules) process.stdout.write(`${r.id.padEnd(32)} ${r.severity.padEnd(6)} ${r.exception ? `(${r.exception.appliesTo} exception) ` : ''}${r.title}\n`);
    return;
  }
  if (!root || (cmd !== 'check' && cmd !== 'fix')) throw new RapError('RAP_USAGE', 'usage: hardening.ts list | check ROOT [--esp DIR] [--json FILE] | fix ROOT');
  const esp = opt('--esp');
  if (cmd === 'fix') return applyFixes(rules, root, { esp });
  const results = await checkAll(rules, root, { esp });
  for (const r of results) process.stdout.write(`${r.status.padEnd(13)} ${r.id}${r.status === 'pass' ? '' : r.findings.map((f) => `\n              ${f}`).join('')}\n`);
  const json = opt('--json');
  if (json) writeFileSync(json, renderResults(results));
  gate(results);
}

if (import.meta.main) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`hardening: ${errorLine(e)}\n`);
    process.exit(1);
  });
}
