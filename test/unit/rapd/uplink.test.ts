import t from 'tap';
import { backoffDelay, parseRetryAfter } from '../../../src/rapd/uplink.ts';

t.test('backoff: full jitter under an exponential ceiling, capped', async (t) => {
  const max = () => 0.999999;
  const min = () => 0;
  t.equal(backoffDelay(1, 300_000, max, null), 999, 'first retry within 1 s');
  t.equal(backoffDelay(4, 300_000, max, null), 7999, 'ceiling doubles per failure');
  t.equal(backoffDelay(40, 300_000, max, null), 299_999, 'capped at backoffMaxMs');
  t.equal(backoffDelay(40, 300_000, min, null), 500, 'never a tight loop');
});

t.test('backoff: Retry-After wins, within the cap', async (t) => {
  t.equal(backoffDelay(1, 300_000, () => 0.5, 7000), 7000);
  t.equal(backoffDelay(1, 5000, () => 0.5, 7000), 5000);
});

t.test('Retry-After: seconds or an HTTP date', async (t) => {
  const now = Date.parse('2026-11-23T12:00:00Z');
  t.equal(parseRetryAfter('120', now), 120_000);
  t.equal(parseRetryAfter('Mon, 23 Nov 2026 12:00:30 GMT', now), 30_000);
  t.equal(parseRetryAfter('Mon, 23 Nov 2026 11:00:00 GMT', now), 0, 'a date in the past means now');
  t.equal(parseRetryAfter('soon', now), null);
  t.equal(parseRetryAfter(undefined, now), null);
});

t.test('regression: the first routine message after idle wakes the loop (it used to sleep an hour)', async (t) => {
  const { Uplink } = await import('../../../src/rapd/uplink.ts');
  const { parseConfig } = await import('../../../src/rapd/config.ts');
  const { createLogger } = await import('../../../src/lib/log.ts');
  const { join } = await import('node:path');
  const dir = t.testdir({ 'ca.pem': 'x', 'dev.pem': 'x', 'dev.key': 'x' });
  const config = parseConfig(
    {
      device: { id: 'box-1' },
      center: { url: 'https://127.0.0.1:9', caFile: join(dir, 'ca.pem') },
      tls: { certFile: join(dir, 'dev.pem'), keyFile: join(dir, 'dev.key') },
      uplink: { batchMaxDelayMs: 60_000 },
      proxy: { fromEnvironment: false },
    },
    'test',
  );
  const queued: { receivedAt: number }[] = [];
  const listeners: ((m: never) => void)[] = [];
  const store = {
    nextBatch: () => [],
    ack: () => {},
    count: () => ({ alarm: 0, routine: queued.length }),
    oldestRoutineAgeMs: () => (queued.length ? Date.now() - queued[0]!.receivedAt : null),
    onAppend: (l: (m: never) => void) => (listeners.push(l), () => {}),
  };
  const up = new Uplink({ config, store, log: createLogger({ write: () => {}, syslogPrefix: false }) });
  up.start();
  t.teardown(() => up.stop());
  await new Promise((r) => setTimeout(r, 20));
  t.equal(up.status().state, 'idle');
  queued.push({ receivedAt: Date.now() });
  for (const l of listeners) l({ kind: 'status' } as never);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(up.status().state, 'waiting', 'now waiting out the batching delay, not the idle hour');
});
