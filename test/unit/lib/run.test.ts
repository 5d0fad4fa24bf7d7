import t from 'tap';
import { quoteArgv, run } from '../../../src/lib/run.ts';

t.test('quoteArgv quotes only what needs it', async (t) => {
  t.equal(quoteArgv(['nft', '-f', '/tmp/x.nft']), 'nft -f /tmp/x.nft');
  t.equal(quoteArgv(['sh', '-c', "echo 'hi' there"]), `sh -c 'echo '\\''hi'\\'' there'`);
});

t.test('captures stdout, passes LC_ALL=C and stdin', async (t) => {
  const r = await run(['sh', '-c', 'printf "%s|" "$LC_ALL"; cat'], { input: 'in' });
  t.equal(r.stdout, 'C|in');
  t.equal(r.code, 0);
});

t.test('failure carries argv, exit code and stderr', async (t) => {
  await t.rejects(run(['sh', '-c', 'echo nope >&2; exit 3']), {
    code: 'RAP_RUN',
    message: /sh -c .*exited with code 3: nope/,
    context: { code: 3, stderr: 'nope' },
  });
});

t.test('okCodes accepts other exit codes', async (t) => {
  const r = await run(['sh', '-c', 'exit 2'], { okCodes: [0, 2] });
  t.equal(r.code, 2);
});

t.test('a missing command is RAP_RUN_MISSING', async (t) => {
  await t.rejects(run(['/nonexistent/tool', 'x']), { code: 'RAP_RUN_MISSING', message: /command not found/ });
});

t.test('timeouts kill the child and say so', async (t) => {
  await t.rejects(run(['sleep', '10'], { timeoutMs: 100 }), { code: 'RAP_RUN', message: /timed out after 100 ms/ });
});

t.test('a signal is reported', async (t) => {
  await t.rejects(run(['sh', '-c', 'kill -TERM $$']), { message: /killed by SIGTERM/ });
});

t.test('an abort signal kills a long-lived child and reports the kill', async (t) => {
  const stop = new AbortController();
  const p = run(['sleep', '30'], { signal: stop.signal, stdio: 'ignore' });
  setTimeout(() => stop.abort(), 50);
  await t.rejects(p, { code: 'RAP_RUN', message: /killed by SIGKILL/ });
});
