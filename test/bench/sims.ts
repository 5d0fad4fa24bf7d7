// make bench: the simulated instruments, in a process of their own.
//
// Real instruments are separate devices. Run inside the bench process, the
// simulators shared its event loop (and its timers, sampling and IPC) and were
// measured as part of "the bench"; here they are one child process (one
// process for all eight costs the least CPU on a 2-core machine: one event
// loop, no extra context switches), started by runSims() in procs.ts.
//
// Protocol with the parent (IPC): the parent sends nothing; this process
// sends {acked} every PROGRESS_MS (acks carrying a message id so far, for
// the rate's steady window), then once {reports, cpuSeconds} and exits.
// argv[2] is a JSON array of SimOptions without the callbacks. An entry
// point: import only its types.

import { runSimulator, type SimOptions, type SimReport } from '../../src/sim/simulator.ts';

/** How often the parent hears the ack count. */
const PROGRESS_MS = 50;

/** A report as it crosses IPC: without the (large) list of message ids. */
export type SimSummary = Omit<SimReport, 'ids'>;

export type SimsMessage = { acked: number } | { acked: number; reports: SimSummary[]; cpuSeconds: number } | { error: string };

async function main(): Promise<void> {
  const send = process.send?.bind(process);
  if (!send) throw new Error('test/bench/sims.ts: run by runSims() (procs.ts), with an IPC channel');
  const opts = JSON.parse(process.argv[2] ?? '') as SimOptions[];
  if (!Array.isArray(opts) || opts.length === 0) throw new Error('test/bench/sims.ts: argv[2]: expected a JSON array of simulator options');
  let acked = 0;
  const progress = setInterval(() => send({ acked } satisfies SimsMessage), PROGRESS_MS);
  try {
    const reports = await Promise.all(opts.map((o) => runSimulator({ ...o, onAck: (_ref, id) => void (id !== null && acked++) })));
    const cpu = process.cpuUsage();
    const summaries = reports.map(({ ids: _ids, ...rest }) => rest);
    await new Promise<void>((resolve) => send({ acked, reports: summaries, cpuSeconds: (cpu.user + cpu.system) / 1e6 } satisfies SimsMessage, () => resolve()));
  } finally {
    clearInterval(progress);
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    const error = e instanceof Error ? e.message : String(e);
    if (process.send) process.send({ error } satisfies SimsMessage, () => process.exit(1));
    else {
      process.stderr.write(`${error}\n`);
      process.exit(1);
    }
  },
);
