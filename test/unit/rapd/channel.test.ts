// The command channel's own behaviour without a center: it never gives up,
// backs off within its bound, reports why, and stops at once. (The channel
// against a real rap-center, directly and through proxies, is
// test/integration/commands.test.ts.)

import t from 'tap';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { createLogger } from '../../../src/lib/log.ts';
import { parseConfig } from '../../../src/rapd/config.ts';
import { CommandChannel } from '../../../src/rapd/channel.ts';

const quiet = createLogger({ write: () => {}, syslogPrefix: false });

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

t.test('no center: backoff within commands.reconnectMaxMs, the reason reported, stop() at once', async (t) => {
  const dir = t.testdir({ 'ca.pem': 'x', 'cert.pem': 'x', 'key.pem': 'x' });
  const port = await closedPort();
  const config = parseConfig(
    {
      device: { id: 'box-1' },
      center: { url: `https://127.0.0.1:${port}`, caFile: join(dir, 'ca.pem') },
      tls: { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') },
      proxy: { fromEnvironment: false },
      commands: { reconnectMaxMs: 1000 },
    },
    'test',
  );
  const delays: number[] = [];
  const ch = new CommandChannel({ config, router: { handle: async () => ({ t: 'result', id: '', status: 'ok' }) }, log: quiet, auditHead: () => null, random: () => 0.999 });
  t.match(ch.status(), { state: 'idle', url: `wss://127.0.0.1:${port}/v1/commands`, proxy: 'direct' });
  ch.start();
  const deadline = Date.now() + 10_000;
  let last = 0;
  while (Date.now() < deadline && ch.status().consecutiveFailures < 3) {
    const s = ch.status();
    if (s.consecutiveFailures > last && s.nextAttemptAt) {
      delays.push(Date.parse(s.nextAttemptAt) - Date.now());
      last = s.consecutiveFailures;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const s = ch.status();
  t.ok(s.consecutiveFailures >= 3, `kept trying (${s.consecutiveFailures} failures)`);
  t.match(s.lastError, /ECONNREFUSED/, 'says why');
  t.ok(delays.every((d) => d <= 1000), `every wait within the bound: ${delays.join(', ')} ms`);
  const t0 = Date.now();
  await ch.stop();
  t.ok(Date.now() - t0 < 1000, 'stop does not wait for the backoff');
  t.equal(ch.status().state, 'stopped');
});

t.test('unreadable certificate files fail at construction with RAP_CHANNEL', async (t) => {
  const dir = t.testdir({ 'ca.pem': 'x', 'cert.pem': 'x' });
  const config = parseConfig(
    { device: { id: 'box-1' }, center: { url: 'https://127.0.0.1:1', caFile: join(dir, 'ca.pem') }, tls: { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'nope.key') } },
    'test',
  );
  t.throws(() => new CommandChannel({ config, router: { handle: async () => ({ t: 'result', id: '', status: 'ok' }) }, log: quiet, auditHead: () => null }), {
    code: 'RAP_CHANNEL',
    message: /command channel: cannot read tls\.keyFile .*nope\.key/,
  });
});
