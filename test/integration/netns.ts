// Network namespaces for the firewall tests: a "box" with a WAN veth and
// instrument veths named like the real ports, one namespace per instrument
// and one for the WAN side. Names are unique per run; teardown kills the
// processes the test started (by PID) and deletes exactly these namespaces.
// No address here is reachable from outside these namespaces.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Test } from 'tap';
import { run } from '../../src/lib/run.ts';

export const PROBE = join(import.meta.dirname, 'netprobe.ts');

/** Why these tests cannot run here, or null. */
export function netnsSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (creates network namespaces)';
  for (const tool of ['ip', 'nft', 'sysctl']) {
    if (!['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(join(d, tool)))) return `${tool} is missing (make integration installs it: image/deps.sh integration)`;
  }
  return null;
}

export interface Lab {
  ns: { box: string; i1: string; i2: string; wan: string };
  /** Run `argv` inside a namespace through the one subprocess door. */
  exec(ns: string, argv: string[]): Promise<string>;
  /** Start a TCP peer answering with its name; resolves once it listens. */
  listen(ns: string, name: string, endpoints: string[]): Promise<ChildProcess>;
  /** Start a long-lived process inside a namespace (killed by PID at teardown). */
  spawn(ns: string, argv: string[], env: Record<string, string>): ChildProcess;
  /** "connected NAME", "refused" or "timeout" (bounded by ms). */
  probe(ns: string, host: string, port: number, ms?: number): Promise<string>;
}

/** From namespace `ns`: "connected NAME", "refused" or "timeout" (bounded by ms). */
export async function probe(ns: string, host: string, port: number, ms = 1500): Promise<string> {
  const r = await run(['ip', 'netns', 'exec', ns, process.execPath, PROBE, 'connect', host, String(port), String(ms)], { okCodes: [0, 1], timeoutMs: ms + 10_000 });
  return r.stdout.trim();
}

export const ADDR = {
  gw1: '100.87.0.1',
  inst1: '100.87.0.2',
  gw2: '100.87.0.17',
  inst2: '100.87.0.18',
  boxWan: '198.51.100.1',
  wanPeer: '198.51.100.2',
};

/**
 * `boxAddresses: false` leaves the box's gateway addresses off (systemd-networkd
 * adds them on the appliance; the test adds them when it wants).
 */
export async function makeLab(t: Pick<Test, 'teardown'>, opts: { boxAddresses?: boolean } = {}): Promise<Lab> {
  const id = `rb${randomBytes(3).toString('hex')}`;
  const ns = { box: `${id}-box`, i1: `${id}-i1`, i2: `${id}-i2`, wan: `${id}-wan` };
  const children: ChildProcess[] = [];
  const made: string[] = [];
  t.teardown(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('close', r)) : null)));
    // Deleting a namespace removes its veth ends too.
    for (const n of made) await run(['ip', 'netns', 'del', n], { okCodes: [0, 1], timeoutMs: 10_000 });
  });
  const ip = (...a: string[]) => run(['ip', ...a], { timeoutMs: 10_000 });
  for (const n of Object.values(ns)) {
    await ip('netns', 'add', n);
    made.push(n);
    await ip('-n', n, 'link', 'set', 'lo', 'up');
  }
  // box interface, peer namespace, box address, peer address, peer's route towards the box
  const links: [string, string, string, string, string[]][] = [
    ['inst1', ns.i1, `${ADDR.gw1}/28`, `${ADDR.inst1}/28`, ['default', 'via', ADDR.gw1]],
    ['inst2', ns.i2, `${ADDR.gw2}/28`, `${ADDR.inst2}/28`, ['default', 'via', ADDR.gw2]],
    ['wan', ns.wan, `${ADDR.boxWan}/24`, `${ADDR.wanPeer}/24`, ['100.87.0.0/24', 'via', ADDR.boxWan]],
  ];
  for (const [boxIf, peer, boxAddr, peerAddr, route] of links) {
    await ip('-n', ns.box, 'link', 'add', boxIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer);
    if (opts.boxAddresses !== false || boxIf === 'wan') await ip('-n', ns.box, 'addr', 'add', boxAddr, 'dev', boxIf);
    await ip('-n', ns.box, 'link', 'set', boxIf, 'up');
    await ip('-n', peer, 'addr', 'add', peerAddr, 'dev', 'eth0');
    await ip('-n', peer, 'link', 'set', 'eth0', 'up');
    await ip('-n', peer, 'route', 'add', ...route);
  }
  // The box routes between its interfaces: only the firewall keeps the islands apart.
  await run(['ip', 'netns', 'exec', ns.box, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'], { timeoutMs: 10_000 });

  const exec = async (n: string, argv: string[]): Promise<string> => (await run(['ip', 'netns', 'exec', n, ...argv], { timeoutMs: 30_000 })).stdout;
  return {
    ns,
    exec,
    spawn(n, argv, env) {
      const child = spawn('ip', ['netns', 'exec', n, ...argv], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      return child;
    },
    listen(n, name, endpoints) {
      // Long-lived: spawned directly and killed by PID at teardown.
      const child = spawn('ip', ['netns', 'exec', n, process.execPath, PROBE, 'listen', name, ...endpoints], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      return new Promise((resolve, reject) => {
        let out = '';
        let err = '';
        const timer = setTimeout(() => reject(new Error(`listener ${name} in ${n} not ready after 10 s: ${err}`)), 10_000);
        child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
        child.stdout!.on('data', (b: Buffer) => {
          out += b.toString();
          if (out.includes('ready')) {
            clearTimeout(timer);
            resolve(child);
          }
        });
        child.once('close', (code) => {
          clearTimeout(timer);
          reject(new Error(`listener ${name} in ${n} exited ${code}: ${err}`));
        });
      });
    },
    probe,
  };
}
