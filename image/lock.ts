// image/packages.lock: the exact Debian package versions in the image. The
// build pins every one through an apt preferences file (so mmdebstrap's
// essential set is pinned too), then compares what was installed with the
// lock: the mirror moves on after each point release, and a version it no
// longer has must fail the build by name, not slip in a different one.
//
// Format: one "package version" per line, sorted; `#` comments.
// `make lock` rewrites it from a fresh, unpinned build.

export type Lock = Map<string, string>;

export function parseLock(text: string, source = 'image/packages.lock'): Lock {
  const lock: Lock = new Map();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const m = /^([a-z0-9][a-z0-9+.-]+)\s+([A-Za-z0-9.+~:-]+)$/.exec(line);
    if (!m) throw new Error(`${source}: line ${i + 1}: expected "package version", got ${JSON.stringify(raw)}`);
    if (lock.has(m[1]!)) throw new Error(`${source}: line ${i + 1}: ${m[1]} is listed twice`);
    lock.set(m[1]!, m[2]!);
  });
  return lock;
}

export function renderLock(installed: Lock, suite: string): string {
  const lines = [...installed].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([p, v]) => `${p} ${v}`);
  return `# Exact Debian ${suite} package versions in the image (make lock rewrites this file).\n${lines.join('\n')}\n`;
}

/** apt preferences pinning every locked version above anything else. */
export function renderPreferences(lock: Lock): string {
  return [...lock].map(([p, v]) => `Package: ${p}\nPin: version ${v}\nPin-Priority: 1001\n`).join('\n');
}

/** Parse `dpkg-query -W -f '${Package} ${Version}\n'` output. */
export function parseInstalled(text: string): Lock {
  const out: Lock = new Map();
  for (const line of text.split('\n')) {
    const [p, v] = line.trim().split(/\s+/);
    if (p && v) out.set(p, v);
  }
  return out;
}

/** Every way the installed set differs from the lock, one line each (empty: identical). */
export function lockMismatches(lock: Lock, installed: Lock): string[] {
  const problems: string[] = [];
  for (const [p, v] of lock) {
    const got = installed.get(p);
    if (got === undefined) problems.push(`${p} ${v} is locked but was not installed`);
    else if (got !== v) problems.push(`${p}: locked ${v}, installed ${got} (the mirror no longer has ${v}?)`);
  }
  for (const [p, v] of installed) if (!lock.has(p)) problems.push(`${p} ${v} was installed but is not in the lock`);
  return problems;
}
