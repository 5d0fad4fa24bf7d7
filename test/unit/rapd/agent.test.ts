// The port agent against a fake store and a raw TCP client on 127.0.0.1.
import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { PortAgent } from '../../../src/rapd/agent.ts';
import { createLogger } from '../../../src/lib/log.ts';
import { RapError } from '../../../src/lib/errors.ts';
import type { NewMessage } from '../../../src/rapd/store.ts';
import type { TelemetryMessage } from '../../../src/protocol/telemetry.ts';

const quiet = createLogger({ write: () => {}, syslogPrefix: false });

class FakeStore {
  messages: TelemetryMessage[] = [];
  full = false;
  /** When set, appends wait until release() (to test backpressure). */
  gate: Promise<void> | null = null;
  private open: (() => void) | null = null;
  hold(): void {
    this.gate = new Promise((r) => (this.open = r));
  }
  release(): void {
    this.open?.();
    this.gate = null;
  }
  async append(m: NewMessage): Promise<TelemetryMessage> {
    if (this.gate) await this.gate;
    if (this.full && m.kind !== 'alarm') throw new RapError('RAP_STORE_FULL', 'data partition has 1 MiB free, below store.minFreeBytes');
    const stored = { ...m, id: randomUUID(), receivedAt: new Date().toISOString() };
    this.messages.push(stored);
    return stored;
  }
}

async function setup(t: Test, over: Partial<{ pollIntervalSec: number; offlineAfterSec: number; frameTimeoutMs: number; maxUnacked: number }> = {}) {
  const store = new FakeStore();
  const agent = await PortAgent.start({
    port: { name: 'p1', address: '127.0.0.1', port: 0, pollIntervalSec: over.pollIntervalSec ?? 0, offlineAfterSec: over.offlineAfterSec ?? 3600, interface: '', prefix: 0, dhcp: false },
    store,
    log: quiet,
    tickMs: 20,
    frameTimeoutMs: over.frameTimeoutMs,
    maxUnacked: over.maxUnacked,
  });
  t.teardown(() => agent.stop());
  return { store, agent };
}

/** A line-oriented client: send frames, read replies (bounded waits). */
async function client(t: Test, port: number) {
  const sock: Socket = connect(port, '127.0.0.1');
  t.teardown(() => sock.destroy());
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  let closed = false;
  sock.on('data', (b: Buffer) => {
    buf += b.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  sock.on('close', () => (closed = true));
  sock.on('error', () => {});
  const waitFor = async (n: number, ms = 5000) => {
    const end = Date.now() + ms;
    while (lines.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    if (lines.length < n) throw new Error(`got ${lines.length} of ${n} replies: ${JSON.stringify(lines)}`);
    return lines;
  };
  return {
    sock,
    lines,
    waitFor,
    isClosed: () => closed,
    send: (o: unknown) => sock.write(`${typeof o === 'string' ? o : JSON.stringify(o)}\n`),
  };
}

const hello = { type: 'hello', ref: 'h1', protocol: 1, serial: 'SN1', model: 'DxH 900', swVersion: '3.1' };

t.test('hello, status, alarm, heartbeat: acked after the store has them', async (t) => {
  const { store, agent } = await setup(t);
  const c = await client(t, agent.boundPort);
  c.send(hello);
  c.send({ type: 'status', ref: 's1', data: { temp: 37 } });
  c.send({ type: 'alarm', ref: 'a1', code: 'E12', severity: 'major', text: 'reagent low' });
  c.send({ type: 'heartbeat', ref: 'b1' });
  const r = await c.waitFor(4);
  const byRef = Object.fromEntries(r.map((f) => [f['ref'], f]));
  t.same(byRef['h1'], { type: 'ack', ref: 'h1', id: null });
  t.same(byRef['b1'], { type: 'ack', ref: 'b1', id: null });
  const kinds = store.messages.filter((m) => m.kind !== 'event');
  t.equal(byRef['s1']!['id'], kinds.find((m) => m.kind === 'status')!.id, 'ack carries the stored id');
  t.equal(byRef['a1']!['id'], kinds.find((m) => m.kind === 'alarm')!.id);
  const alarm = kinds.find((m) => m.kind === 'alarm')!;
  t.same(alarm.body, { code: 'E12', severity: 'major', text: 'reagent low', data: {} });
  t.same(alarm.instrument, { serial: 'SN1', model: 'DxH 900', swVersion: '3.1' });
  t.equal(alarm.port, 'p1');
  const st = agent.status();
  t.equal(st.online, true);
  t.equal(st.instrument?.serial, 'SN1');
  t.equal(st.counters.stored, 2);
  t.ok(store.messages.some((m) => m.kind === 'event' && m.body['event'] === 'instrument-online'), 'online event stored');
});

t.test('bad input: an error naming the problem, a counter, and the connection goes on', async (t) => {
  const { store, agent } = await setup(t);
  const c = await client(t, agent.boundPort);
  c.send({ type: 'status', ref: 's0', data: {} });
  c.send('{not json');
  c.send({ type: 'teleport', ref: 'x1' });
  c.send(hello);
  c.send({ type: 'status', ref: 's1', data: [] });
  c.send({ type: 'status', ref: 's2', data: { ok: true } });
  const r = await c.waitFor(6);
  t.same(r.map((f) => [f['type'], f['code'] ?? null, f['ref']]), [
    ['error', 'NOT_IDENTIFIED', 's0'],
    ['error', 'BAD_FRAME', null],
    ['error', 'UNKNOWN_TYPE', 'x1'],
    ['ack', null, 'h1'],
    ['error', 'BAD_FRAME', 's1'],
    ['ack', null, 's2'],
  ]);
  for (const f of r.filter((x) => x['type'] === 'error')) t.type(f['message'], 'string');
  t.equal(store.messages.filter((m) => m.kind === 'status').length, 1, 'only the good status stored');
  t.same(agent.status().counters.errors, { NOT_IDENTIFIED: 1, BAD_FRAME: 2, UNKNOWN_TYPE: 1 });
  t.notOk(c.isClosed());
});

t.test('an oversized frame is refused and the connection closed, memory bounded', async (t) => {
  const { agent } = await setup(t);
  const c = await client(t, agent.boundPort);
  c.send(hello);
  c.sock.write('{"type":"status","ref":"big","data":{"x":"' + 'A'.repeat(200_000));
  const r = await c.waitFor(2);
  t.equal(r[1]!['code'], 'TOO_LARGE');
  const end = Date.now() + 3000;
  while (!c.isClosed() && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
  t.ok(c.isClosed(), 'closed after TOO_LARGE');
  t.equal(agent.status().counters.errors['TOO_LARGE'], 1);
});

t.test('a slow sender that leaves a line half-sent is timed out', async (t) => {
  const { agent } = await setup(t, { frameTimeoutMs: 150 });
  const c = await client(t, agent.boundPort);
  c.sock.write('{"type":"hello"');
  const r = await c.waitFor(1);
  t.equal(r[0]!['code'], 'TIMEOUT');
});

t.test('a sender trickling one line byte by byte is still timed out (regression: the clock was reset per chunk)', async (t) => {
  const { agent } = await setup(t, { frameTimeoutMs: 300 });
  const c = await client(t, agent.boundPort);
  const line = JSON.stringify(hello);
  let i = 0;
  const trickle = setInterval(() => {
    if (i < line.length && !c.isClosed()) c.sock.write(line[i++]!);
  }, 30);
  t.teardown(() => clearInterval(trickle));
  const r = await c.waitFor(1, 3000);
  t.equal(r[0]!['code'], 'TIMEOUT');
  t.ok(i < line.length, 'cut off before the line was done');
});

t.test('bye: the instrument leaves in order, recorded as a goodbye, not as offline', async (t) => {
  const { store, agent } = await setup(t, { offlineAfterSec: 1 });
  const c = await client(t, agent.boundPort);
  c.send(hello);
  c.send({ type: 'bye', ref: 'x1' });
  await c.waitFor(2);
  c.sock.end();
  await new Promise((r) => setTimeout(r, 1500));
  const ev = store.messages.filter((m) => m.kind === 'event').map((m) => m.body['event']);
  t.same(ev, ['instrument-online', 'instrument-bye']);
  t.equal(agent.status().online, false);
});

t.test('store full: routine refused with STORE_FULL, alarm still stored', async (t) => {
  const { store, agent } = await setup(t);
  store.full = true;
  const c = await client(t, agent.boundPort);
  c.send(hello);
  c.send({ type: 'status', ref: 's1', data: {} });
  c.send({ type: 'alarm', ref: 'a1', code: 'E1', severity: 'critical', text: 'x' });
  const r = await c.waitFor(3);
  const byRef = Object.fromEntries(r.map((f) => [f['ref'], f]));
  t.equal(byRef['s1']!['code'], 'STORE_FULL');
  t.match(byRef['s1']!['message'], /below store\.minFreeBytes/);
  t.equal(byRef['a1']!['type'], 'ack');
});

t.test('backpressure: a flooding connection stops being read at maxUnacked', async (t) => {
  const { store, agent } = await setup(t, { maxUnacked: 8 });
  const c = await client(t, agent.boundPort);
  c.send(hello);
  await c.waitFor(1);
  store.hold();
  for (let i = 0; i < 500; i++) c.send({ type: 'status', ref: `s${i}`, data: { i } });
  await new Promise((r) => setTimeout(r, 200));
  t.ok(agent.status().counters.frames <= 1 + 8 + 64, `frames read while the store is held: ${agent.status().counters.frames}`);
  store.release();
  await c.waitFor(501, 10_000);
  t.equal(store.messages.filter((m) => m.kind === 'status').length, 500, 'all stored once released');
});

t.test('polls a quiet instrument; reports it offline after silence, online again when heard', async (t) => {
  const { store, agent } = await setup(t, { pollIntervalSec: 1, offlineAfterSec: 1 });
  const c = await client(t, agent.boundPort);
  c.send(hello);
  await c.waitFor(2, 3000); // the ack, then a poll (no status yet)
  t.ok(c.lines.some((f) => f['type'] === 'poll'), 'poll sent');
  const end = Date.now() + 4000;
  while (agent.status().online && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  t.equal(agent.status().online, false, 'offline after silence');
  const ev = store.messages.filter((m) => m.kind === 'event').map((m) => m.body['event']);
  t.same(ev, ['instrument-online', 'instrument-offline']);
  c.send({ type: 'heartbeat', ref: 'b9' });
  const end2 = Date.now() + 2000;
  while (!agent.status().online && Date.now() < end2) await new Promise((r) => setTimeout(r, 20));
  t.equal(agent.status().online, true, 'online again');
});

t.test('a newly identified instrument gets one poll interval to push before it is polled', async (t) => {
  const { agent } = await setup(t, { pollIntervalSec: 1 });
  const c = await client(t, agent.boundPort);
  c.send(hello);
  await c.waitFor(1, 3000);
  // Ticks run every 20 ms; without the grace the first one would poll at once.
  await new Promise((r) => setTimeout(r, 500));
  t.same(c.lines.map((f) => f['type']), ['ack'], 'no poll within half an interval of the hello');
  await c.waitFor(2, 3000);
  t.equal(c.lines[1]?.['type'], 'poll', 'polled once the interval passed without a status');
});

t.test('listen failure names the port and address', async (t) => {
  const { agent } = await setup(t);
  await t.rejects(
    PortAgent.start({ port: { name: 'p2', address: '127.0.0.1', port: agent.boundPort, pollIntervalSec: 0, offlineAfterSec: 60, interface: '', prefix: 0, dhcp: false }, store: new FakeStore(), log: quiet }),
    { code: 'RAP_AGENT', message: /port p2: cannot listen on 127\.0\.0\.1:\d+/ },
  );
});

// 192.0.2.1 (TEST-NET-1) is on no interface of this host: binding it is EADDRNOTAVAIL.
t.test('a port with an interface waits for its address instead of failing', async (t) => {
  const lines: string[] = [];
  const log = createLogger({ write: (l) => void lines.push(l), syslogPrefix: false });
  const agent = await PortAgent.start({
    port: { name: 'p1', address: '192.0.2.1', port: 7400, pollIntervalSec: 0, offlineAfterSec: 60, interface: 'inst1', prefix: 28, dhcp: true },
    store: new FakeStore(),
    log,
    bindRetryMaxMs: 20,
  });
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(w.name);
  process.on('warning', onWarning);
  // Past 10 retries: each attempt must take its listeners off the server again.
  await new Promise((r) => setTimeout(r, 600));
  process.off('warning', onWarning);
  t.same(warnings, [], 'no listener pile-up over the retries (MaxListenersExceededWarning)');
  const s = agent.status();
  t.equal(s.listening, false);
  t.equal(s.bindError, 'EADDRNOTAVAIL');
  t.match(s.waitingForAddressSince, /^\d{4}-\d\d-\d\dT/);
  const warned = lines.filter((l) => l.includes('port address not there yet'));
  t.equal(warned.length, 1, `logged once over several retries: ${lines.join('')}`);
  t.equal(lines.length, 1, 'retries are silent while the reason stays the same');
  await agent.stop();
  t.equal(agent.status().listening, false, 'stopped while waiting: nothing bound later');
});

t.test('a loopback/dev port with a missing address still fails at once', async (t) => {
  await t.rejects(
    PortAgent.start({ port: { name: 'dev', address: '192.0.2.1', port: 7400, pollIntervalSec: 0, offlineAfterSec: 60, interface: '', prefix: 0, dhcp: false }, store: new FakeStore(), log: quiet }),
    { code: 'RAP_AGENT', message: /port dev: cannot listen on 192\.0\.2\.1:7400: .*EADDRNOTAVAIL/ },
  );
});

t.test('remote sessions: the agent is the consent channel between the session manager and the simulated user', async (t) => {
  const { agent } = await setup(t);
  const { runSimulator } = await import('../../../src/sim/simulator.ts');
  const SESSION = '6b0f3f5e-3c2a-4d8e-9a51-2f7c1e0d9b44';
  const calls: string[] = [];
  let waiting = true;
  agent.setSessionHandler({
    consent(port, session, answer) {
      calls.push(`consent ${port} ${session === SESSION ? 'S' : session} ${answer}`);
      const ok = waiting;
      waiting = false;
      return ok;
    },
    async end(port, session) {
      calls.push(`end ${port} ${session === SESSION ? 'S' : session}`);
      agent.sessionEnded(session, 'local-revoke');
      return true;
    },
    clear(port) {
      calls.push(`clear ${port}`);
    },
  });
  t.equal(agent.sessionInstrument(), null, 'nobody to ask before an instrument identified itself');
  t.notOk(agent.requestConsent({ type: 'consent-request', ref: 'c-1', session: SESSION, who: 'w', why: '', services: [5900], maxDurationS: 60, answerBy: new Date().toISOString() }));

  const sim = runSimulator({ host: '127.0.0.1', port: agent.boundPort, count: 4, ratePerSec: 4, consent: 'yes', endSessionAfterMs: 100 });
  const deadline = Date.now() + 5000;
  while (!agent.sessionInstrument() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.match(agent.sessionInstrument(), { address: '127.0.0.1', serial: 'SIM-0001' });
  t.ok(agent.requestConsent({ type: 'consent-request', ref: 'c-1', session: SESSION, who: 'center:j.doe', why: 'E1042', services: [5900], maxDurationS: 60, answerBy: new Date(Date.now() + 120_000).toISOString() }));
  const report = await sim;
  t.strictSame(calls, ['consent p1 S yes', 'end p1 S']);
  t.equal(report.consentRequests, 1);
  t.strictSame(report.sessionsEnded, [{ session: SESSION, reason: 'local-revoke' }], 'the instrument is told the session ended');
  t.equal(report.unanswered, 0, 'consent and session-end were acknowledged');
  t.strictSame(report.errors, {});
});

t.test('remote sessions: late or unknown answers get NO_SESSION, answers before hello NOT_IDENTIFIED', async (t) => {
  const { agent } = await setup(t);
  agent.setSessionHandler({ consent: () => false, end: async () => false, clear: () => {} });
  const c = await client(t, agent.boundPort);
  const S = '6b0f3f5e-3c2a-4d8e-9a51-2f7c1e0d9b44';
  c.send({ type: 'consent', ref: 'k0', session: S, answer: 'yes' });
  c.send(hello);
  c.send({ type: 'consent', ref: 'k1', session: S, answer: 'yes' });
  c.send({ type: 'session-end', ref: 'k2', session: S });
  c.send({ type: 'consent-clear', ref: 'k3' });
  // session-end is answered once the manager has ended it (asynchronously): replies may come out of order.
  const replies = [...(await c.waitFor(5))].sort((a, b) => String(a['ref']).localeCompare(String(b['ref'])));
  t.strictSame(replies, [
    { type: 'ack', ref: 'h1', id: null },
    { type: 'error', ref: 'k0', code: 'NOT_IDENTIFIED', message: 'consent before hello: send a hello frame first' },
    { type: 'error', ref: 'k1', code: 'NO_SESSION', message: `session ${S} is not waiting for an answer on this port (too late, or unknown)` },
    { type: 'error', ref: 'k2', code: 'NO_SESSION', message: `session ${S} is not open on this port` },
    { type: 'ack', ref: 'k3', id: null },
  ]);
});
