// make bench-session: remote sessions through the real components (the
// namespace lab of test/integration/sessionlab.ts: rap-center's openvpn
// server, the built rapd with real nft and openvpn, the simulator answering
// yes at once, so the human is left out):
//   - setup time: session request -> the instrument's port answers through
//     the tunnel (median of RUNS);
//   - teardown time: session close -> answered (pinhole, forwarding and
//     openvpn gone);
//   - bulk throughput through the tunnel vs the same transfer over the same
//     namespaces without tunnel or firewall (measured before rapd starts):
//     the ratio is the number to watch; the floor is 128 kbit/s.
// Prints a table and writes out/bench-session.json (rows as make bench).
// Not a test: it fails only when the bench itself cannot run.

import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { callControl } from '../../src/rapctl/client.ts';
import { ADDR, PROBE } from '../integration/netns.ts';
import { REPO, waitFor } from '../integration/helpers.ts';
import { SYS_PATH, makeSessionLab, sessionLabSkipReason } from '../integration/sessionlab.ts';
import type { Row } from './rows.ts';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const BULK_BYTES = Number(process.env['BENCH_BULK_BYTES'] ?? 64 * 1024 * 1024);
const SERVICE = 5901;
/** A service that answers at once (the sink waits for the sender to finish). */
const ANSWERS = 5902;


const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const log = (s: string): void => void process.stderr.write(`bench-session: ${s}\n`);

async function main(): Promise<number> {
  const skip = sessionLabSkipReason();
  if (skip) {
    log(`cannot run: ${skip}`);
    return 1;
  }
  const teardowns: (() => unknown)[] = [];
  const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };
  try {
    const s = await makeSessionLab(t as never, { logLevel: 'info' });
    const { lab, ns } = s;
    const sink = lab.spawn(ns.i1, [process.execPath, PROBE, 'sink', `${ADDR.inst1}:${SERVICE}`], { PATH: SYS_PATH });
    let sinkOut = '';
    sink.stdout!.on('data', (b: Buffer) => (sinkOut += b.toString()));
    await waitFor('the sink', () => sinkOut.includes('ready'), 10_000);
    await lab.listen(ns.i1, 'svc', [`${ADDR.inst1}:${ANSWERS}`]);
    // What one probe costs by itself (a process started in a namespace), measured on the direct path.
    const probeCosts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      if ((await lab.probe(ns.wan, ADDR.inst1, ANSWERS, 2000)) !== 'connected svc') throw new Error('direct probe failed');
      probeCosts.push(performance.now() - t0);
    }
    const probeCost = median(probeCosts);
    const bulk = async (host: string): Promise<number> => {
      const out = (await lab.exec(ns.wan, [process.execPath, PROBE, 'send', host, String(SERVICE), String(BULK_BYTES), '120000'])).trim();
      const r = JSON.parse(out) as { bytes: number; ms: number };
      return (r.bytes * 8) / 1e6 / (r.ms / 1000);
    };

    // Without tunnel and firewall: the lab routes the WAN namespace to the instruments.
    log(`direct bulk transfer of ${BULK_BYTES} bytes...`);
    const direct = median([await bulk(ADDR.inst1), await bulk(ADDR.inst1)]);

    await s.startRapd();
    const sim = await s.startSim(ns.i1, ADDR.gw1, 'yes');
    const setups: number[] = [];
    const teardownsMs: number[] = [];
    let tunnel = 0;
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      const r = await s.open('p1', [SERVICE, ANSWERS]);
      const opened = performance.now() - t0;
      if (r.outcome !== 'active' || !r.tunnelIp) throw new Error(`session not active: ${JSON.stringify(r)}`);
      // Reachable = a connection through the tunnel is accepted by the instrument's service.
      let tries = 0;
      for (; ; tries++) {
        if ((await lab.probe(ns.wan, r.tunnelIp, ANSWERS, 2000)) === 'connected svc') break;
        if (tries > 20) throw new Error('the service never answered through the tunnel');
      }
      setups.push(performance.now() - t0);
      if (i === 0) {
        log(`tunnel bulk transfer of ${BULK_BYTES} bytes...`);
        tunnel = await bulk(r.tunnelIp);
      }
      const t1 = performance.now();
      const closed = await callControl(s.socket, { method: 'session-close', args: { sessionId: r.sessionId } }, 30_000);
      if (!closed.ok) throw new Error(closed.error.message);
      teardownsMs.push(performance.now() - t1);
      log(`run ${i + 1}: setup ${setups.at(-1)!.toFixed(0)} ms (session active after ${opened.toFixed(0)} ms, ${tries + 1} probe(s)), teardown ${teardownsMs.at(-1)!.toFixed(0)} ms`);
    }
    await s.stopSim(sim);

    const rows: Row[] = [
      { name: 'session setup (request -> port reachable, no human)', value: median(setups), unit: 'ms', ceiling: null, ratio: null, better: 'lower', target: null, note: `median of ${RUNS}; consent answered at once; includes one probe process, ${probeCost.toFixed(0)} ms on the direct path` },
      { name: 'session teardown (close -> pinhole, forwarding, openvpn gone)', value: median(teardownsMs), unit: 'ms', ceiling: null, ratio: null, better: 'lower', target: '< 2000 ms' },
      { name: 'bulk throughput through the session tunnel', value: tunnel, unit: 'Mbit/s', ceiling: direct, ratio: tunnel / direct, better: 'higher', target: '>= 0.128 Mbit/s (128 kbit/s)', note: 'ceiling: the same transfer between the same namespaces without tunnel or firewall' },
    ];
    mkdirSync(join(REPO, 'out'), { recursive: true });
    writeFileSync(join(REPO, 'out/bench-session.json'), `${JSON.stringify(rows, null, 2)}\n`);
    const fmt = (x: number | null): string => (x === null ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(2));
    for (const r of rows) process.stdout.write(`${r.name.padEnd(64)} ${fmt(r.value).padStart(9)} ${r.unit.padEnd(7)} ceiling ${fmt(r.ceiling).padStart(8)}  ratio ${fmt(r.ratio)}\n`);
    return 0;
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => {});
    spawnSync('sync');
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    log(`FAILED: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
