// The one door for every subprocess (nft, openvpn, systemd-notify, mkfs.*,
// qemu...): argv arrays only, never a shell; LC_ALL=C so tools speak one
// language; the command is logged quoted; a failure carries argv, exit code or
// signal and the tail of stderr.

import { spawn } from 'node:child_process';
import { RapError } from './errors.ts';

export interface RunOptions {
  /** Extra environment on top of the current one (LC_ALL=C is always set). */
  env?: Record<string, string | undefined>;
  /** Replace the environment entirely (LC_ALL=C is still added). */
  cleanEnv?: boolean;
  cwd?: string;
  /** Bytes written to the child's stdin. */
  input?: string | Buffer;
  /** Kill the child (SIGKILL) after this many ms; 0 means no limit. */
  timeoutMs?: number;
  /** Exit codes that are not failures (default [0]). */
  okCodes?: number[];
  /** Called with the quoted command before it starts (for logs). */
  onStart?: (quoted: string) => void;
  /** Aborting kills the child (SIGKILL); for long-lived children such as QEMU. */
  signal?: AbortSignal;
  /**
   * capture (default): collect stdout and stderr; inherit: the terminal's
   * stdin, stdout and stderr (a person at a console); ignore: discard stdout,
   * keep a tail of stderr for the error message.
   */
  stdio?: 'capture' | 'inherit' | 'ignore';
}

export interface RunResult {
  argv: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Quote an argv for a log line or an error message, shell-style. */
export function quoteArgv(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`))
    .join(' ');
}

const STDERR_TAIL = 4000;

export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new RapError('RAP_RUN', 'run: empty argv');
  const quoted = quoteArgv(argv);
  opts.onStart?.(quoted);
  const env = { ...(opts.cleanEnv ? {} : process.env), ...opts.env, LC_ALL: 'C' };
  return new Promise((resolve, reject) => {
    const mode = opts.stdio ?? 'capture';
    const out = mode === 'capture' ? 'pipe' : mode;
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env,
      stdio: [opts.input === undefined ? (mode === 'inherit' ? 'inherit' : 'ignore') : 'pipe', out, mode === 'ignore' ? 'pipe' : out],
      signal: opts.signal,
      killSignal: 'SIGKILL',
    });
    const outChunks: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => outChunks.push(b));
    // Keep only a tail of stderr: a long-lived child may write a lot.
    child.stderr?.on('data', (b: Buffer) => {
      err.push(b);
      if (err.length > 64) err.splice(0, err.length - 64);
    });
    let timedOut = false;
    const timer =
      opts.timeoutMs && opts.timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs)
        : undefined;
    if (opts.input !== undefined) {
      // A child that exits without reading its stdin must not crash us (EPIPE).
      child.stdin?.on('error', () => {});
      child.stdin?.end(opts.input);
    }
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      // An abort is reported by 'close' as a kill, like a timeout.
      if (e.name === 'AbortError') return;
      if (e.code === 'ENOENT') {
        reject(new RapError('RAP_RUN_MISSING', `${cmd}: command not found`, { argv: [...argv] }, { cause: e }));
      } else {
        reject(new RapError('RAP_RUN', `${quoted}: ${e.message}`, { argv: [...argv] }, { cause: e }));
      }
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const result: RunResult = {
        argv: [...argv],
        code,
        signal,
        stdout: Buffer.concat(outChunks).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      const ok = code !== null && (opts.okCodes ?? [0]).includes(code);
      if (ok) return resolve(result);
      const how = timedOut
        ? `timed out after ${opts.timeoutMs} ms`
        : signal
          ? `killed by ${signal}`
          : `exited with code ${code}`;
      const tail = result.stderr.trim().slice(-STDERR_TAIL);
      reject(
        new RapError('RAP_RUN', `${quoted}: ${how}${tail ? `: ${tail}` : ''}`, {
          argv: result.argv,
          code,
          signal,
          stderr: tail,
        }),
      );
    });
  });
}

/** The signature tests and adaptors use to stand in for `run`. */
export type Runner = typeof run;
