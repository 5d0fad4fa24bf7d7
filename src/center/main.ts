// rap-center's entry point (out/rap-center): the only module that wires
// process signals and exit codes; everything else is in cli.ts.

import { createLogger } from '../lib/log.ts';
import { run } from '../lib/run.ts';
import { centerMain } from './cli.ts';

/** Bound on a clean stop after SIGTERM; past it we exit non-zero. */
const STOP_TIMEOUT_MS = 10_000;

const io = {
  out: (s: string) => void process.stdout.write(s),
  err: (s: string) => void process.stderr.write(s),
};

function main(): Promise<number> {
  const args = process.argv.slice(2);
  const log = createLogger();
  // Only `serve` lives on; other commands keep the default (die on SIGTERM).
  const stopSignal =
    args[0] === 'serve'
      ? (() => {
          const stopped = new Promise<string>((resolve) => {
            const onSignal = (sig: NodeJS.Signals): void => {
              const bound = setTimeout(() => {
                log.error('clean stop took too long; exiting anyway', { timeoutMs: STOP_TIMEOUT_MS });
                process.exit(1);
              }, STOP_TIMEOUT_MS);
              bound.unref();
              resolve(sig);
            };
            process.once('SIGTERM', onSignal);
            process.once('SIGINT', onSignal);
          });
          return () => stopped;
        })()
      : undefined;
  return centerMain(args, io, { run, log, stopSignal });
}

main().then(
  (code) => {
    process.exitCode = code;
    // serve's signal handlers are the only thing that could keep us; nothing should.
  },
  (e: unknown) => {
    process.stderr.write(`rap-center: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 70;
  },
);
