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
