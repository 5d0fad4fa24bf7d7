import t, { type Test } from 'tap';
import { randomUUID } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import {
  LineSplitter,
  ProtocolError,
  encodeFrame,
  parseInstrumentFrame,
  type BoxFrame,
  type InstrumentFrame,
  type ProtocolErrorCode,
} from '../../../src/protocol/instrument.ts';
import { connectInstrument, runSimulator, type SimOptions } from '../../../src/sim/simulator.ts';
import { simCliMain } from '../../../src/sim/cli.ts';
import { rapctlMain } from '../../../src/rapctl/main.ts';

// A tiny box written from docs/instrument-protocol.md alone, independent of
// rapd's agent: acknowledges what it may, polls once after hello if asked,
// enforces the line timeout and the unacknowledged-frame limit.
interface FakeBoxOptions {
  pollAfterHello?: boolean;
  /** Poll every identified connection this often. */
  pollEveryMs?: number;
  lineTimeoutMs?: number;
  ackDelayMs?: number;
  maxUnacked?: number;
  /** Reply to hello with this error instead of an ack. */
  refuseHello?: ProtocolErrorCode;
  /** Never reply to status/alarm frames. */
  silent?: boolean;
  /** Close the connection after storing this many frames. */
  closeAfter?: number;
}

interface Conn {
  sock: Socket;
  splitter: LineSplitter;
  identified: boolean;
  unacked: number;
  paused: boolean;
  /** Lines read but not yet handled because too many frames were unacknowledged. */
  queue: string[];
  lineTimer: NodeJS.Timeout | undefined;
  poller?: NodeJS.Timeout;
}

async function fakeBox(t: Test, opts: FakeBoxOptions = {}) {
  const stored: { id: string; frame: InstrumentFrame; bytes: number }[] = [];
  const frames: InstrumentFrame[] = [];
  const errorsSent: { code: ProtocolErrorCode; ref: string | null }[] = [];
  const ends: { pendingAtEnd: boolean }[] = [];
  let maxUnackedSeen = 0;
  const conns = new Set<Conn>();

  const send = (c: Conn, f: BoxFrame): void => {
    if (!c.sock.destroyed && !c.sock.writableEnded) c.sock.write(encodeFrame(f));
  };
  const error = (c: Conn, code: ProtocolErrorCode, message: string, ref: string | null, close = false): void => {
    errorsSent.push({ code, ref });
    send(c, { type: 'error', ref, code, message });
    if (close) {
      c.sock.pause();
      c.sock.end();
    }
  };
  // Backpressure: past the limit, stop handling lines and stop reading; go on
  // as acks free room. A chunk can hold hundreds of lines, so pausing the
  // socket alone would overshoot.
  const pump = (c: Conn): void => {
    const limit = opts.maxUnacked ?? 256;
    while (c.queue.length > 0 && c.unacked < limit) onLine(c, c.queue.shift()!);
    const full = c.unacked >= limit;
    if (full && !c.paused) c.sock.pause();
    if (!full && c.paused) c.sock.resume();
    c.paused = full;
  };
  const settle = (c: Conn): void => {
    c.unacked--;
    pump(c);
  };

  const onLine = (c: Conn, line: string): void => {
    if (line.trim() === '') return;
    let f: InstrumentFrame;
    try {
      f = parseInstrumentFrame(line);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return error(c, e.code, e.message, e.ref);
    }
    frames.push(f);
    switch (f.type) {
      case 'hello':
        if (opts.refuseHello) return error(c, opts.refuseHello, 'not now', f.ref);
        c.identified = true;
        send(c, { type: 'ack', ref: f.ref, id: null });
        if (opts.pollAfterHello) send(c, { type: 'poll', ref: 'p-1' });
        if (opts.pollEveryMs && !c.poller) {
          let n = 0;
          c.poller = setInterval(() => send(c, { type: 'poll', ref: `p-${++n}` }), opts.pollEveryMs);
        }
        return;
      case 'heartbeat':
      case 'bye':
        return send(c, { type: 'ack', ref: f.ref, id: null });
      case 'status':
      case 'alarm': {
        if (!c.identified) return error(c, 'NOT_IDENTIFIED', `${f.type} before hello`, f.ref);
        if (opts.silent) return;
        const id = randomUUID();
        stored.push({ id, frame: f, bytes: Buffer.byteLength(line) });
        c.unacked++;
        maxUnackedSeen = Math.max(maxUnackedSeen, c.unacked);
        const ack = (): void => {
          send(c, { type: 'ack', ref: f.ref, id });
          settle(c);
          if (opts.closeAfter !== undefined && stored.length >= opts.closeAfter) c.sock.destroy();
        };
        if (opts.ackDelayMs) setTimeout(ack, opts.ackDelayMs);
        else ack();
      }
    }
  };

  const server = createServer((sock) => {
    const c: Conn = { sock, splitter: new LineSplitter(), identified: false, unacked: 0, paused: false, queue: [], lineTimer: undefined };
    conns.add(c);
    sock.setNoDelay(true);
    sock.on('error', () => {});
    sock.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = c.splitter.push(chunk);
      } catch (e) {
        return error(c, (e as ProtocolError).code, (e as Error).message, null, true);
      }
      c.queue.push(...lines);
      pump(c);
      // The clock runs from the first byte of a line, not from the last chunk:
      // a sender trickling one byte at a time must not keep a line open forever.
      if (!c.splitter.pending) {
        clearTimeout(c.lineTimer);
        c.lineTimer = undefined;
      } else if (lines.length > 0 || c.lineTimer === undefined) {
        clearTimeout(c.lineTimer);
        c.lineTimer = setTimeout(() => error(c, 'TIMEOUT', 'line not completed in time', null, true), opts.lineTimeoutMs ?? 30_000);
      }
    });
    sock.on('end', () => ends.push({ pendingAtEnd: c.splitter.pending }));
    sock.on('close', () => {
      clearTimeout(c.lineTimer);
      clearInterval(c.poller);
      conns.delete(c);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  t.teardown(async () => {
    for (const c of conns) c.sock.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port,
    stored,
    frames,
    errorsSent,
    ends,
    get maxUnackedSeen() {
      return maxUnackedSeen;
    },
    types: () => frames.map((f) => f.type),
  };
}

const base = (port: number): SimOptions => ({ host: '127.0.0.1', port, timeoutMs: 5000 });

t.test('a normal session: hello, frames within the window, a poll answered, bye', async (t) => {
  const box = await fakeBox(t, { pollAfterHello: true, ackDelayMs: 1 });
  const acks: string[] = [];
  const r = await runSimulator({
    ...base(box.port),
    serial: 'DXH-42',
    model: 'DxH 900',
    swVersion: '3.2.1',
    count: 50,
    window: 8,
    sizeBytes: 500,
    alarmRatio: 0.2,
    onAck: (ref) => void acks.push(ref),
  });
  t.equal(r.end, 'done');
  t.equal(r.sent, 51, '50 frames + 1 poll answer');
  t.equal(r.alarms, 10, 'alarm ratio 0.2 of 50, spread evenly');
  t.equal(r.acked, 51);
  t.equal(r.polled, 1);
  t.equal(r.unanswered, 0);
  t.equal(r.violations, 0);
  t.equal(r.badReplies, 0);
  t.strictSame(r.errors, {});
  t.strictSame([...r.ids].sort(), box.stored.map((s) => s.id).sort(), 'ids are the ones the box assigned');
  t.equal(new Set(r.ids).size, 51);
  t.ok(r.maxInFlight <= 8 + 1, `window respected (max in flight ${r.maxInFlight})`);
  t.ok(r.ackLatencyMs.p50 > 0 && r.ackLatencyMs.p50 <= r.ackLatencyMs.p99 && r.ackLatencyMs.p99 <= r.ackLatencyMs.max);
  t.equal(acks.length, 53, 'onAck for hello, 51 frames and bye');

  const types = box.types();
  t.equal(types[0], 'hello');
  t.equal(types.at(-1), 'bye');
  t.match(box.frames[0], { serial: 'DXH-42', model: 'DxH 900', swVersion: '3.2.1', protocol: 1 });
  const statuses = box.stored.filter((s) => s.frame.type === 'status');
  for (const s of statuses) t.ok(Math.abs(s.bytes - 500) <= 10, `status line ~500 bytes (${s.bytes})`);
  const alarms = box.stored.filter((s) => s.frame.type === 'alarm');
  t.equal(alarms.length, 10);
  t.match(alarms[0]!.frame, { code: /^E\d+$/, severity: /^(critical|major|minor|warning)$/, time: /^\d{4}-/ });
  t.same(box.ends, [{ pendingAtEnd: false }], 'clean end of the connection');
});

t.test('polls are left alone when answerPolls is false', async (t) => {
  const box = await fakeBox(t, { pollAfterHello: true });
  const r = await runSimulator({ ...base(box.port), count: 5, answerPolls: false });
  t.equal(r.polled, 1);
  t.equal(r.sent, 5);
  t.equal(r.acked, 5);
});

t.test('rate and duration bound the run', async (t) => {
  const box = await fakeBox(t);
  const started = Date.now();
  const r = await runSimulator({ ...base(box.port), ratePerSec: 100, durationMs: 200 });
  const took = Date.now() - started;
  t.equal(r.end, 'done');
  // Paced, not unbounded (an unpaced run sends thousands in 200 ms); timer
  // granularity on a loaded machine allows a few either way.
  t.ok(r.sent >= 5 && r.sent <= 40, `about 20 frames in 200 ms at 100/s (${r.sent})`);
  t.equal(r.acked, r.sent);
  t.ok(took >= 180 && took < 2000, `took ${took} ms`);
});

t.test('heartbeats are sent and acknowledged, not stored', async (t) => {
  const box = await fakeBox(t);
  const r = await runSimulator({ ...base(box.port), heartbeatEveryMs: 20, ratePerSec: 50, count: 10 });
  const beats = box.types().filter((x) => x === 'heartbeat').length;
  t.ok(beats >= 2, `${beats} heartbeats`);
  t.equal(box.stored.length, 10);
  t.equal(r.unanswered, 0);
});

t.test('misbehave garbage: bad lines get BAD_FRAME / UNKNOWN_TYPE, the rest goes on', async (t) => {
  const box = await fakeBox(t);
  const r = await runSimulator({ ...base(box.port), count: 9, misbehave: 'garbage' });
  t.equal(r.end, 'done');
  t.equal(r.violations, 3);
  t.strictSame(r.errors, { BAD_FRAME: 2, UNKNOWN_TYPE: 1 });
  t.equal(r.acked, 9);
  t.equal(r.unanswered, 0, 'each error matched to its line, the null-ref one too');
  t.strictSame(
    box.errorsSent.map((e) => e.ref === null),
    [true, false, false],
    'not-JSON cannot name a ref; the other two can',
  );
});

t.test('misbehave no-hello: every frame refused with NOT_IDENTIFIED', async (t) => {
  const box = await fakeBox(t);
  const r = await runSimulator({ ...base(box.port), count: 5, misbehave: 'no-hello' });
  t.equal(r.end, 'done');
  t.strictSame(r.errors, { NOT_IDENTIFIED: 5 });
  t.equal(r.acked, 0);
  t.equal(box.stored.length, 0);
  t.notOk(box.types().includes('hello'));
});

t.test('misbehave flood: ignores the window; the box pushes back, nothing is lost', async (t) => {
  const box = await fakeBox(t, { ackDelayMs: 2, maxUnacked: 64 });
  const r = await runSimulator({ ...base(box.port), count: 2000, window: 4, misbehave: 'flood' });
  t.equal(r.end, 'done');
  t.equal(r.acked, 2000);
  t.ok(r.maxInFlight > 4, `window ignored (max in flight ${r.maxInFlight})`);
  t.ok(box.maxUnackedSeen <= 64, `box held it to its limit (${box.maxUnackedSeen})`);
});

t.test('misbehave oversized: TOO_LARGE, the box closes, earlier frames stored', async (t) => {
  const box = await fakeBox(t);
  const r = await runSimulator({ ...base(box.port), count: 3, misbehave: 'oversized' });
  t.equal(r.end, 'done');
  t.equal(r.acked, 3);
  t.strictSame(r.errors, { TOO_LARGE: 1 });
  t.equal(r.violations, 1);
  t.equal(r.unanswered, 0);
  t.equal(box.stored.length, 3);
});

t.test('misbehave slow: a line trickled byte by byte gets TIMEOUT from its first byte', async (t) => {
  // Regression: poll answers used to be written into the middle of the
  // trickled line, which turned the expected TIMEOUT into BAD_FRAMEs.
  const box = await fakeBox(t, { lineTimeoutMs: 300, pollEveryMs: 25 });
  const started = Date.now();
  const r = await runSimulator({ ...base(box.port), count: 1, misbehave: 'slow', slowByteMs: 20 });
  t.equal(r.end, 'done');
  t.strictSame(r.errors, { TIMEOUT: 1 });
  t.equal(box.stored.length, 1, 'the trickled frame is not stored');
  t.ok(Date.now() - started < 3000, 'cut off by the line timeout, not by our bound');
});

t.test('misbehave half-line: our end comes mid-line; nothing stored for it', async (t) => {
  const box = await fakeBox(t);
  const r = await runSimulator({ ...base(box.port), count: 2, misbehave: 'half-line' });
  t.equal(r.end, 'done');
  t.equal(r.violations, 1);
  t.equal(box.stored.length, 2);
  t.notOk(box.types().includes('bye'));
  t.same(box.ends, [{ pendingAtEnd: true }]);
});

t.test('abort: stops sending, drains, says bye', async (t) => {
  const box = await fakeBox(t);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const r = await runSimulator({ ...base(box.port), ratePerSec: 100, signal: ac.signal });
  t.equal(r.end, 'aborted');
  t.ok(r.sent > 0 && r.sent === r.acked);
  t.equal(box.types().at(-1), 'bye');
});

t.test('never hangs', async (t) => {
  t.test('a box that never acknowledges: timeout, with the unanswered frames counted', async (t) => {
    const box = await fakeBox(t, { silent: true });
    const started = Date.now();
    const r = await runSimulator({ ...base(box.port), count: 20, window: 4, timeoutMs: 200 });
    t.equal(r.end, 'timeout');
    t.equal(r.sent, 4);
    t.equal(r.unanswered, 4);
    t.ok(Date.now() - started < 2000);
  });

  t.test('a box that closes early', async (t) => {
    const box = await fakeBox(t, { closeAfter: 3 });
    const r = await runSimulator({ ...base(box.port), count: 100, window: 1 });
    t.equal(r.end, 'closed');
    t.equal(r.acked, 3);
  });

  t.test('a box that refuses the hello', async (t) => {
    const box = await fakeBox(t, { refuseHello: 'BUSY' });
    await t.rejects(runSimulator({ ...base(box.port), count: 1 }), { code: 'RAP_PROTOCOL', message: /hello to 127\.0\.0\.1:\d+: the box refused it: BUSY: not now/ });
  });

  t.test('a peer that accepts but never answers the hello', async (t) => {
    const server = createServer(() => {});
    const socks = new Set<Socket>();
    server.on('connection', (s) => socks.add(s));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.teardown(() => {
      for (const s of socks) s.destroy();
      server.close();
    });
    const { port } = server.address() as { port: number };
    await t.rejects(runSimulator({ ...base(port), count: 1, timeoutMs: 150 }), { code: 'RAP_PROTOCOL', message: /did not answer within 150 ms/ });
  });

  t.test('nobody listening', async (t) => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await t.rejects(runSimulator({ ...base(port), count: 1 }), { code: 'RAP_PROTOCOL', message: /cannot connect to 127\.0\.0\.1:\d+: .*ECONNREFUSED/ });
  });
});

t.test('bad options are refused before connecting', async (t) => {
  const cases: [Partial<SimOptions>, RegExp][] = [
    [{}, /nothing bounds the run/],
    [{ count: 1, window: 300 }, /window: expected 1-256/],
    [{ count: 1, alarmRatio: 2 }, /alarmRatio/],
    [{ count: 1, sizeBytes: 70000 }, /sizeBytes/],
    [{ count: 1, serial: 'bad\u0001serial' }, /hello\.serial: expected 1-64 printable ASCII/],
    [{ count: 1, misbehave: 'rude' as SimOptions['misbehave'] }, /misbehave: expected one of/],
    [{ count: -1 }, /count/],
  ];
  for (const [o, want] of cases) {
    await t.rejects(runSimulator({ host: '127.0.0.1', port: 9, ...o }), { code: 'RAP_USAGE', message: want }, want.source);
  }
});

t.test('connectInstrument: frame by frame', async (t) => {
  const box = await fakeBox(t, { pollAfterHello: true });
  const c = await connectInstrument({ host: '127.0.0.1', port: box.port, timeoutMs: 2000 });
  t.teardown(() => c.destroy());
  c.send({ type: 'status', ref: 's0', time: null, data: {} });
  t.strictSame(await c.next(), { type: 'error', ref: 's0', code: 'NOT_IDENTIFIED', message: 'status before hello' });
  c.send({ type: 'hello', ref: 'h1', protocol: 1, serial: 'S', model: 'M', swVersion: 'V' });
  t.strictSame(await c.next(), { type: 'ack', ref: 'h1', id: null });
  t.strictSame(await c.next(), { type: 'poll', ref: 'p-1' });
  c.sendRaw('{"type":"status","ref":"s1","data":{"x":1}}\r\n');
  const ack = await c.next();
  t.match(ack, { type: 'ack', ref: 's1', id: /^[0-9a-f-]{36}$/ });
  await t.rejects(c.next(100), { code: 'RAP_PROTOCOL', message: /no frame from the box within 100 ms/ });
  await c.end();
  t.equal(await c.next(), null, 'null once the box closed');
  t.ok(c.closed);
});

t.test('rapctl instrument-sim', async (t) => {
  const run = async (args: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await simCliMain(args, { out: (s) => void out.push(s), err: (s) => void err.push(s) });
    return { code, out: out.join(''), err: err.join('') };
  };

  t.test('summary', async (t) => {
    const box = await fakeBox(t);
    const r = await run(['--connect', `127.0.0.1:${box.port}`, '--count', '20', '--alarm-ratio', '0.5', '--serial', 'CLI-1']);
    t.equal(r.code, 0, r.err);
    t.match(r.out, /CLI-1 -> 127\.0\.0\.1:\d+/);
    t.match(r.out, /sent: +20 frames \(10 alarms\), 20 acked, 0 unanswered/);
    t.match(r.out, /errors: +none/);
    t.match(r.out, /ended: +done/);
    t.equal(box.stored.length, 20);
  });

  t.test('--json, without ids; errors are not a failure of the run', async (t) => {
    const box = await fakeBox(t);
    const r = await run(['--connect', `127.0.0.1:${box.port}`, '--count', '6', '--misbehave', 'garbage', '--json']);
    t.equal(r.code, 0, r.err);
    const rep = JSON.parse(r.out);
    t.equal(rep.sent, 6);
    t.equal(rep.violations, 2);
    t.notOk('ids' in rep);
    t.equal(rep.end, 'done');
  });

  t.test('a run that did not end as planned exits 1', async (t) => {
    const box = await fakeBox(t, { silent: true });
    const r = await run(['--connect', `127.0.0.1:${box.port}`, '--count', '2', '--timeout', '0.2']);
    t.equal(r.code, 1);
    t.match(r.out, /ended: +timeout/);
  });

  t.test('cannot connect exits 1', async (t) => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const r = await run(['--connect', `127.0.0.1:${port}`, '--count', '1']);
    t.equal(r.code, 1);
    t.match(r.err, /cannot connect/);
  });

  t.test('usage errors exit 2', async (t) => {
    const cases: [string[], RegExp][] = [
      [[], /--connect HOST:PORT is required/],
      [['--connect', 'nohost'], /--connect: expected HOST:PORT, got 'nohost'/],
      [['--connect', '127.0.0.1:70000'], /expected HOST:PORT/],
      [['--connect', '127.0.0.1:7400', '--count', 'many'], /--count: expected a whole number/],
      [['--connect', '127.0.0.1:7400', '--count', '1.5'], /--count: expected a whole number/],
      [['--connect', '127.0.0.1:7400', '--alarm-ratio', '1.5'], /--alarm-ratio: expected a number from 0 to 1/],
      [['--connect', '127.0.0.1:7400', '--window', '0'], /--window/],
      [['--connect', '127.0.0.1:7400', '--misbehave', 'rude'], /--misbehave: expected one of none, garbage/],
      [['--connect', '127.0.0.1:7400', '--serial'], /--serial needs a value/],
      [['--connect', '127.0.0.1:7400', '--serial', 'a\tb'], /hello\.serial/],
      [['--connect', '127.0.0.1:7400', '--frobnicate'], /unknown option '--frobnicate'/],
      [['--connect', '127.0.0.1:7400', 'extra'], /unexpected argument 'extra'/],
    ];
    for (const [args, want] of cases) {
      const r = await run(args);
      t.equal(r.code, 2, args.join(' '));
      t.match(r.err, want, args.join(' '));
    }
  });

  t.test('--help, and IPv6 addresses', async (t) => {
    const r = await run(['--help']);
    t.equal(r.code, 0);
    t.match(r.out, /usage: rapctl instrument-sim --connect HOST:PORT/);
    const v6 = await run(['--connect', '[::1]:notaport']);
    t.equal(v6.code, 2);
  });

  t.test('reached through rapctl', async (t) => {
    const out: string[] = [];
    const code = await rapctlMain(['instrument-sim', '--help'], { out: (s) => void out.push(s), err: () => {} });
    t.equal(code, 0);
    t.match(out.join(''), /usage: rapctl instrument-sim/);
  });
});
