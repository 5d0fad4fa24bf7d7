// The single executable's entry point: the only module that wires things,
// handles signals and talks to systemd. Invoked as `rapctl` (a symlink) or as
// `rapd ctl ...` it is the operator CLI; otherwise it is the daemon.

import { basename } from 'node:path';
import { errorLine, errorMessage } from '../lib/errors.ts';
import { createLogger } from '../lib/log.ts';
import { run } from '../lib/run.ts';
import { rapctlMain } from '../rapctl/main.ts';
import { DEFAULT_CONFIG_PATH, configDocTable, loadConfig } from './config.ts';
import { netShow } from './netshow.ts';
import { provisionMain } from './provision-cli.ts';
import { startDaemon } from './daemon.ts';
import { createNotifier } from './notify.ts';
import { pathsFromConfig } from './paths.ts';
import { RAPD_VERSION } from './version.ts';

const USAGE = `usage: rapd [--config PATH]      run the daemon (default config ${DEFAULT_CONFIG_PATH})
       rapd --version
       rapd --config-doc           print the settings table (markdown)
       rapd net show [--config PATH] [--firewall | --network]
                                   print the firewall ruleset and networkd files
                                   rapd would apply (changes nothing)
       rapd provision create|check|apply ...
                                   provisioning bundles (docs/provisioning.md)
       rapd ctl ...                same as rapctl ...`;

const io = {
  out: (s: string) => void process.stdout.write(s),
  err: (s: string) => void process.stderr.write(s),
};

async function daemonMain(args: string[]): Promise<number> {
  let configPath = DEFAULT_CONFIG_PATH;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--version') {
      io.out(`rapd ${RAPD_VERSION} (node ${process.version})\n`);
      return 0;
    } else if (a === '--config-doc') {
      io.out(`${configDocTable()}\n`);
      return 0;
    } else if (a === '-h' || a === '--help') {
      io.out(`${USAGE}\n`);
      return 0;
    } else if (a === '--config') {
      const v = args[++i];
      if (!v) return fatal('--config needs a path');
      configPath = v;
    } else if (a.startsWith('--config=')) {
      configPath = a.slice('--config='.length);
    } else {
      return fatal(`unknown argument '${a}'\n${USAGE}`, 2);
    }
  }

  const log = createLogger();
  let daemon;
  try {
    const config = loadConfig(configPath);
    log.setLevel(config['log.level']);
    const notifier = createNotifier({ env: process.env, pid: process.pid, run });
    daemon = await startDaemon({ config, paths: pathsFromConfig(config), log, notifier, env: process.env });
    const timeoutMs = config['shutdown.timeoutMs'];
    await new Promise<void>((resolve) => {
      const onSignal = (sig: NodeJS.Signals): void => {
        const bound = setTimeout(() => {
          log.error('clean stop took too long; exiting anyway', { timeoutMs });
          process.exit(1);
        }, timeoutMs);
        bound.unref();
        daemon!.stop(sig).then(resolve, (e: unknown) => {
          log.error('stop failed', { error: errorMessage(e) });
          process.exit(1);
        });
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    });
    log.info('rapd stopped');
    return 0;
  } catch (e) {
    // One clear line on stderr (journald keeps it) and a non-zero exit.
    return fatal(errorLine(e));
  }
}

function fatal(message: string, code = 1): number {
  io.err(`rapd: ${message}\n`);
  return code;
}

async function main(): Promise<number> {
  // A SEA and `node bundle.js` both put the user's arguments at argv[2].
  const args = process.argv.slice(2);
  if (basename(process.argv0) === 'rapctl') return rapctlMain(args, io);
  if (args[0] === 'ctl') return rapctlMain(args.slice(1), io);
  if (args[0] === 'net') return netShow(args.slice(1), io);
  if (args[0] === 'provision') return provisionMain(args.slice(1), io);
  return daemonMain(args);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`rapd: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 70;
  },
);
