// A reference instrument: speaks the instrument protocol
// (docs/instrument-protocol.md) to a box the way a well-behaved instrument
// should (hello first, pipelined frames within a window of unacknowledged
// ones, polls answered, bye at the end), or breaks it on purpose in one named
// way, so the box's port agent can be tested and load-tested against it.
//
// It must never hang a test or a terminal: every wait (connect, a free slot
// in the window, a reply, a drain, the close) is bounded by `timeoutMs`, and a
// run without a bound (no count, no duration, no signal) is refused.

import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { RapError, errorMessage } from '../lib/errors.ts';
import {
  LineSplitter,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  ProtocolError,
  encodeFrame,
  parseBoxFrame,
  parseInstrumentFrame,
  type AlarmSeverity,
  type BoxFrame,
  type InstrumentFrame,
} from '../protocol/instrument.ts';

export const MISBEHAVIORS = ['none', 'garbage', 'oversized', 'slow', 'no-hello', 'flood', 'half-line'] as const;
/**
 * How the simulator breaks the protocol:
 * - none: it does not.
 * - garbage: after every third frame, one bad line (not JSON; a status whose
 *   data is an array; an unknown frame type, in turn). Expect BAD_FRAME and
 *   UNKNOWN_TYPE errors; the connection goes on.
 * - no-hello: never says hello. Expect NOT_IDENTIFIED for every frame.
 * - flood: ignores the window and the rate; writes as fast as the socket
 *   takes it. Expect every frame acknowledged anyway (the box pushes back by
 *   not reading).
 * - oversized: after the normal frames, one line of MAX_FRAME_BYTES + 1 KiB
 *   instead of bye. Expect TOO_LARGE and the box closing the connection.
 * - slow: after the normal frames, half a status line, then one byte per
 *   `slowByteMs`. Expect TIMEOUT and the box closing the connection.
 * - half-line: after the normal frames, half a status line and then our end
 *   of the connection. Expect no reply, and nothing stored for it.
 */
export type Misbehavior = (typeof MISBEHAVIORS)[number];

/** The widest window the protocol allows (the box stops reading beyond it). */
export const MAX_WINDOW = 256;

export interface SimOptions {
  host: string;
  port: number;
  serial?: string;
  model?: string;
  swVersion?: string;
  /** Status and alarm frames to send on our own (poll answers are extra). Default: unbounded, until durationMs. */
  count?: number;
  /** Stop sending new frames after this long (then drain and say bye). */
  durationMs?: number;
  /** Frames per second; 0 (default): as fast as the window allows. */
  ratePerSec?: number;
  /** Most frames sent and not yet answered (default 64, at most 256). */
  window?: number;
  /** Approximate size of a status line in bytes; its data is padded up to it (default: no padding). */
  sizeBytes?: number;
  /** Share of frames that are alarms, 0..1 (default 0); spread evenly, not random. */
  alarmRatio?: number;
  /** Send a heartbeat this often while connected (default: never). */
  heartbeatEveryMs?: number;
  /** Answer the box's polls with a status frame (default true). */
  answerPolls?: boolean;
  misbehave?: Misbehavior;
  /** 'slow': pause between the bytes of the trickled line (default 1000). */
  slowByteMs?: number;
  /** Stop sending, drain, say bye. */
  signal?: AbortSignal;
  /** Called for every ack (hello, heartbeat and bye acks have id null). */
  onAck?: (ref: string, id: string | null) => void;
  /** Bound on every single wait (default 10000). */
  timeoutMs?: number;
  /**
   * The simulated user's answer to a remote-session consent request: yes, no,
   * never, or ignore (default: never answers, as an unattended instrument).
   */
  consent?: SimConsent;
  /** Answer this long after the request arrives (default 0). */
  consentDelayMs?: number;
  /** After answering yes, end the session from the instrument (session-end) this long later. */
  endSessionAfterMs?: number;
  /** Called for every consent-request and session-ended frame from the box. */
  onSession?: (frame: BoxFrame) => void;
}

export const SIM_CONSENTS = ['yes', 'no', 'never', 'ignore'] as const;
export type SimConsent = (typeof SIM_CONSENTS)[number];

export interface SimReport {
  /** Status and alarm frames sent, poll answers included. */
  sent: number;
  /** Of those, alarms. */
  alarms: number;
  /** Status and alarm frames acknowledged (stored by the box). */
  acked: number;
  /** Error frames received, by code. */
  errors: Record<string, number>;
  /** From sending a status/alarm frame to its ack. */
  ackLatencyMs: { p50: number; p99: number; max: number };
  /** Message ids from the acks, in the order the acks arrived. */
  ids: string[];
  /** Polls received. */
  polled: number;
  /** Consent requests received, and the sessions the box said were over (with the reason). */
  consentRequests: number;
  sessionsEnded: { session: string; reason: string }[];
  /** Lines sent that break the protocol on purpose (misbehave). */
  violations: number;
  /** Most frames (of any type) in flight at once. */
  maxInFlight: number;
  /** Frames that never got a reply. */
  unanswered: number;
  /** Lines from the box that were not valid box frames, or replies to nothing we sent. */
  badReplies: number;
  /**
   * done: ran to the end (for oversized/slow/half-line: the box closed the
   * connection after the violation, as it should); closed: the box closed the
   * connection early; timeout: a wait ran out; aborted: the signal fired.
   */
  end: 'done' | 'closed' | 'timeout' | 'aborted';
}

// --- small pieces -------------------------------------------------------------

/** Wakes waiting predicates on every event; each wait has its own deadline. */
class Waiter {
  private readonly checks = new Set<() => void>();

  notify(): void {
    for (const check of [...this.checks]) check();
  }

  /** Resolves true as soon as `pred()` holds, false if it still does not after `ms`. */
  until(pred: () => boolean, ms: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (v: boolean): void => {
        clearTimeout(timer);
        this.checks.delete(check);
        resolve(v);
      };
      const check = (): void => {
        if (pred()) done(true);
      };
      // setTimeout turns anything above 2^31-1 (or Infinity) into 1 ms.
      const timer = setTimeout(() => done(pred()), Math.min(Math.max(0, ms), 2 ** 31 - 1));
      this.checks.add(check);
    });
  }
}

function openSocket(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port });
    const fail = (why: string, cause?: unknown): void => {
      clearTimeout(timer);
      sock.destroy();
      reject(new RapError('RAP_PROTOCOL', `cannot connect to ${host}:${port}: ${why}`, { host, port }, { cause }));
    };
    const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);
    sock.once('error', (e) => fail(e.message, e));
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
  });
}

/** A connected socket with line framing, close and drain tracking. */
class Link {
  readonly sock: Socket;
  readonly waiter = new Waiter();
  closed = false;
  private needDrain = false;
  private readonly splitter = new LineSplitter(MAX_FRAME_BYTES);

  constructor(sock: Socket, onLine: (line: string) => void, onBroken: (e: ProtocolError) => void) {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = this.splitter.push(chunk);
      } catch (e) {
        onBroken(e as ProtocolError);
        sock.destroy();
        return;
      }
      for (const line of lines) if (line.trim() !== '') onLine(line);
      this.waiter.notify();
    });
    sock.on('drain', () => {
      this.needDrain = false;
      this.waiter.notify();
    });
    // An error (ECONNRESET, EPIPE) is always followed by 'close'.
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closed = true;
      this.waiter.notify();
    });
  }

  /** Queue bytes; false when the connection is gone. */
  write(data: string | Buffer): boolean {
    if (this.closed || this.sock.destroyed || this.sock.writableEnded) return false;
    // Frames written in one tick (a window refilled by a burst of acks) go
    // out in one write: one syscall and one segment instead of one per
    // frame, as an instrument's own sender would batch them. With
    // setNoDelay each write is otherwise its own segment.
    if (this.sock.writableCorked === 0) {
      this.sock.cork();
      process.nextTick(() => this.sock.uncork());
    }
    if (!this.sock.write(data)) this.needDrain = true;
    return true;
  }

  /** Wait until the socket took what we queued (or closed); false on timeout. */
  drained(timeoutMs: number): Promise<boolean> {
    return this.waiter.until(() => !this.needDrain || this.closed, timeoutMs);
  }

  /** Half-close and wait for the box to close its side; destroy if it does not. */
  async end(timeoutMs: number): Promise<void> {
    if (!this.closed) this.sock.end();
    if (!(await this.waiter.until(() => this.closed, timeoutMs))) this.sock.destroy();
  }

  destroy(): void {
    this.sock.destroy();
  }
}

// --- connectInstrument: one frame at a time, for tests ---------------------

export interface InstrumentConnection {
  send(frame: InstrumentFrame): boolean;
  /** Any bytes, for tests of the box's handling of broken input. */
  sendRaw(data: string | Buffer): boolean;
  /**
   * The next frame from the box, or null once the box has closed the
   * connection. Rejects (RAP_PROTOCOL) when nothing comes within timeoutMs or
   * the box sent a line that is not a box frame.
   */
  next(timeoutMs?: number): Promise<BoxFrame | null>;
  /** Half-close, then wait (bounded) for the box to close. */
  end(): Promise<void>;
  destroy(): void;
  readonly closed: boolean;
}

/** Connect as an instrument and exchange frames by hand (no hello is sent). */
export async function connectInstrument(opts: { host: string; port: number; timeoutMs?: number }): Promise<InstrumentConnection> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const sock = await openSocket(opts.host, opts.port, timeoutMs);
  const queue: (BoxFrame | ProtocolError)[] = [];
  const link = new Link(
    sock,
    (line) => {
      try {
        queue.push(parseBoxFrame(line));
      } catch (e) {
        queue.push(e as ProtocolError);
      }
    },
    (e) => queue.push(e),
  );
  return {
    send: (frame) => link.write(encodeFrame(frame)),
    sendRaw: (data) => link.write(data),
    async next(ms = timeoutMs) {
      if (!(await link.waiter.until(() => queue.length > 0 || link.closed, ms))) {
        throw new RapError('RAP_PROTOCOL', `no frame from the box within ${ms} ms`);
      }
      const item = queue.shift();
      if (item === undefined) return null;
      if (item instanceof ProtocolError) {
        throw new RapError('RAP_PROTOCOL', `the box sent a bad frame: ${item.code}: ${item.message}`, {}, { cause: item });
      }
      return item;
    },
    end: () => link.end(timeoutMs),
    destroy: () => link.destroy(),
    get closed() {
      return link.closed;
    },
  };
}

// --- runSimulator -------------------------------------------------------------

interface Settings {
  host: string;
  port: number;
  hello: Extract<InstrumentFrame, { type: 'hello' }>;
  count: number;
  durationMs: number;
  ratePerSec: number;
  window: number;
  sizeBytes: number;
  alarmRatio: number;
  heartbeatEveryMs: number;
  answerPolls: boolean;
  misbehave: Misbehavior;
  slowByteMs: number;
  signal: AbortSignal | undefined;
  onAck: ((ref: string, id: string | null) => void) | undefined;
  timeoutMs: number;
  consent: SimConsent;
  consentDelayMs: number;
  endSessionAfterMs: number | null;
  onSession: ((frame: BoxFrame) => void) | undefined;
}

function usage(message: string): never {
  throw new RapError('RAP_USAGE', `instrument simulator: ${message}`);
}

function settings(o: SimOptions): Settings {
  if (typeof o.host !== 'string' || o.host === '') usage('host: missing');
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) usage(`port: expected 1-65535, got ${o.port}`);
  const count = o.count ?? Infinity;
  if (count !== Infinity && (!Number.isInteger(count) || count < 0)) usage(`count: expected a whole number >= 0, got ${count}`);
  const durationMs = o.durationMs ?? Infinity;
  if (!(durationMs > 0)) usage(`durationMs: expected > 0, got ${durationMs}`);
  if (count === Infinity && durationMs === Infinity && !o.signal) usage('nothing bounds the run: give count, durationMs or signal');
  const ratePerSec = o.ratePerSec ?? 0;
  if (!Number.isFinite(ratePerSec) || ratePerSec < 0) usage(`ratePerSec: expected >= 0, got ${ratePerSec}`);
  const window = o.window ?? 64;
  if (!Number.isInteger(window) || window < 1 || window > MAX_WINDOW) usage(`window: expected 1-${MAX_WINDOW}, got ${window}`);
  const sizeBytes = o.sizeBytes ?? 0;
  if (!Number.isInteger(sizeBytes) || sizeBytes < 0 || sizeBytes > MAX_FRAME_BYTES) {
    usage(`sizeBytes: expected 0-${MAX_FRAME_BYTES}, got ${sizeBytes}`);
  }
  const alarmRatio = o.alarmRatio ?? 0;
  if (!(alarmRatio >= 0 && alarmRatio <= 1)) usage(`alarmRatio: expected 0..1, got ${alarmRatio}`);
  const heartbeatEveryMs = o.heartbeatEveryMs ?? 0;
  if (!(heartbeatEveryMs >= 0) || (heartbeatEveryMs > 0 && heartbeatEveryMs < 10)) {
    usage(`heartbeatEveryMs: expected 0 (never) or >= 10, got ${heartbeatEveryMs}`);
  }
  const misbehave = o.misbehave ?? 'none';
  if (!(MISBEHAVIORS as readonly string[]).includes(misbehave)) usage(`misbehave: expected one of ${MISBEHAVIORS.join(', ')}`);
  const slowByteMs = o.slowByteMs ?? 1000;
  if (!(slowByteMs >= 1)) usage(`slowByteMs: expected >= 1, got ${slowByteMs}`);
  const timeoutMs = o.timeoutMs ?? 10_000;
  if (!(timeoutMs >= 1) || !Number.isFinite(timeoutMs)) usage(`timeoutMs: expected >= 1, got ${timeoutMs}`);
  const consent = o.consent ?? 'ignore';
  if (!(SIM_CONSENTS as readonly string[]).includes(consent)) usage(`consent: expected one of ${SIM_CONSENTS.join(', ')}`);
  const consentDelayMs = o.consentDelayMs ?? 0;
  if (!(consentDelayMs >= 0) || !Number.isFinite(consentDelayMs)) usage(`consentDelayMs: expected >= 0, got ${consentDelayMs}`);
  const endSessionAfterMs = o.endSessionAfterMs ?? null;
  if (endSessionAfterMs !== null && (!(endSessionAfterMs >= 0) || !Number.isFinite(endSessionAfterMs))) usage(`endSessionAfterMs: expected >= 0, got ${endSessionAfterMs}`);
  const hello: Extract<InstrumentFrame, { type: 'hello' }> = {
    type: 'hello',
    ref: 'h1',
    protocol: PROTOCOL_VERSION,
    serial: o.serial ?? 'SIM-0001',
    model: o.model ?? 'RAPSIM-1',
    swVersion: o.swVersion ?? '1.0.0',
  };
  // The box would refuse a bad identity; say so before connecting, in its words.
  try {
    parseInstrumentFrame(encodeFrame(hello));
  } catch (e) {
    usage(errorMessage(e));
  }
  return {
    host: o.host,
    port: o.port,
    hello,
    count,
    durationMs,
    ratePerSec,
    window,
    sizeBytes,
    alarmRatio,
    heartbeatEveryMs,
    answerPolls: o.answerPolls ?? true,
    misbehave,
    slowByteMs,
    signal: o.signal,
    onAck: o.onAck,
    timeoutMs,
    consent,
    consentDelayMs,
    endSessionAfterMs,
    onSession: o.onSession,
  };
}

type StatusFrame = Extract<InstrumentFrame, { type: 'status' }>;
type Kind = 'hello' | 'data' | 'control' | 'violation';
interface Pending {
  kind: Kind;
  sentAt: number;
}

/** Status padding, cut to length per frame (a slice, not a new string per frame). */
const PAD = 'x'.repeat(MAX_FRAME_BYTES);

const SEVERITIES: AlarmSeverity[] = ['warning', 'minor', 'major', 'critical'];

// A violation has no ref the box can read; its key cannot clash with a real
// ref, which is printable ASCII.
const VIOLATION_KEY = '\u0000violation:';

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  const v = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
  return Math.round(v * 1000) / 1000;
}

class Simulator {
  private readonly s: Settings;
  private readonly link: Link;
  private readonly inFlight = new Map<string, Pending>();
  private readonly latencies: number[] = [];
  private readonly report: Omit<SimReport, 'ackLatencyMs' | 'unanswered' | 'end'> = {
    sent: 0,
    alarms: 0,
    acked: 0,
    errors: {},
    ids: [],
    polled: 0,
    consentRequests: 0,
    sessionsEnded: [],
    violations: 0,
    maxInFlight: 0,
    badReplies: 0,
  };
  private seq = 0;
  private dataInFlight = 0;
  private answering = false;
  private aborted = false;
  private helloReply: BoxFrame | null = null;
  private heartbeat: NodeJS.Timeout | undefined;
  /** Pending answers of the simulated user (cleared when the run ends). */
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(s: Settings, sock: Socket) {
    this.s = s;
    this.link = new Link(
      sock,
      (line) => this.onLine(line),
      () => void this.report.badReplies++,
    );
  }

  private get waiter(): Waiter {
    return this.link.waiter;
  }

  // --- sending ---

  private track(key: string, kind: Kind): void {
    this.inFlight.set(key, { kind, sentAt: performance.now() });
    if (kind === 'data') this.dataInFlight++;
    this.report.maxInFlight = Math.max(this.report.maxInFlight, this.inFlight.size);
  }

  private send(frame: InstrumentFrame, kind: Kind): boolean {
    if (!this.link.write(encodeFrame(frame))) return false;
    this.track(frame.ref, kind);
    if (kind === 'data') {
      this.report.sent++;
      if (frame.type === 'alarm') this.report.alarms++;
    }
    return true;
  }

  private violate(line: string | Buffer, ref: string | null, expectReply = true): void {
    if (!this.link.write(line)) return;
    this.report.violations++;
    if (expectReply) this.track(ref ?? `${VIOLATION_KEY}${++this.seq}`, 'violation');
  }

  private statusFrame(ref: string, i: number): StatusFrame {
    const frame: StatusFrame = {
      type: 'status',
      ref,
      time: new Date().toISOString(),
      data: { seq: i, state: 'running', temperatureC: 37 + (i % 10) / 10, samplesToday: i, reagentPct: 100 - (i % 100) },
    };
    const size = Buffer.byteLength(encodeFrame(frame));
    const padding = Math.min(this.s.sizeBytes, MAX_FRAME_BYTES) - size - ',"pad":""'.length;
    if (padding > 0) frame.data['pad'] = PAD.slice(0, padding);
    return frame;
  }

  private alarmFrame(ref: string, i: number): InstrumentFrame {
    return {
      type: 'alarm',
      ref,
      time: new Date().toISOString(),
      code: `E${1000 + (i % 50)}`,
      severity: SEVERITIES[i % SEVERITIES.length]!,
      text: 'Sample probe level sense failure (simulated)',
      data: { seq: i, module: 'sample-probe' },
    };
  }

  /** Evenly spread: frame i is an alarm when it crosses the next multiple of 1/ratio. */
  private isAlarm(i: number): boolean {
    return Math.floor((i + 1) * this.s.alarmRatio) > Math.floor(i * this.s.alarmRatio);
  }

  private garbage(i: number): void {
    const ref = `g${++this.seq}`;
    switch (i % 3) {
      case 0:
        return this.violate('this is not a frame\n', null);
      case 1:
        return this.violate(`{"type":"status","ref":"${ref}","data":[1,2,3]}\n`, ref);
      default:
        return this.violate(`{"type":"reading","ref":"${ref}","value":42}\n`, ref);
    }
  }

  // --- receiving ---

  private onLine(line: string): void {
    let frame: BoxFrame;
    try {
      frame = parseBoxFrame(line);
    } catch (e) {
      // A later box may send frame types we do not know: ignore them (spec).
      if (!(e instanceof ProtocolError && e.code === 'UNKNOWN_TYPE')) this.report.badReplies++;
      return;
    }
    if (frame.type === 'poll') return this.onPoll();
    if (frame.type === 'consent-request' || frame.type === 'session-ended') return this.onSessionFrame(frame);
    const key = frame.ref ?? this.oldestViolation();
    const pending = key === undefined ? undefined : this.inFlight.get(key);
    if (frame.type === 'error') this.report.errors[frame.code] = (this.report.errors[frame.code] ?? 0) + 1;
    if (key === undefined || pending === undefined) {
      // A null-ref error with nothing of ours to blame is still counted above.
      if (!(frame.type === 'error' && frame.ref === null)) this.report.badReplies++;
      return;
    }
    this.inFlight.delete(key);
    if (pending.kind === 'data') this.dataInFlight--;
    if (pending.kind === 'hello') {
      this.helloReply = frame;
      // Polls may come right behind the hello ack, in the same chunk.
      if (frame.type === 'ack') this.answering = true;
    }
    if (frame.type !== 'ack') return;
    this.s.onAck?.(frame.ref, frame.id);
    if (pending.kind !== 'data') return;
    if (frame.id === null) {
      this.report.badReplies++; // a stored frame must get its message id
      return;
    }
    this.report.acked++;
    this.report.ids.push(frame.id);
    this.latencies.push(performance.now() - pending.sentAt);
  }

  private oldestViolation(): string | undefined {
    for (const [key, p] of this.inFlight) if (p.kind === 'violation') return key;
    return undefined;
  }

  /** The simulated user at the instrument: answers as configured, may end the session later. */
  private onSessionFrame(frame: Extract<BoxFrame, { type: 'consent-request' | 'session-ended' }>): void {
    this.s.onSession?.(frame);
    if (frame.type === 'session-ended') {
      this.report.sessionsEnded.push({ session: frame.session, reason: frame.reason });
      return;
    }
    this.report.consentRequests++;
    const answer = this.s.consent;
    if (answer === 'ignore') return;
    const session = frame.session;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.send({ type: 'consent', ref: `k${++this.seq}`, session, answer }, 'control');
      if (answer !== 'yes' || this.s.endSessionAfterMs === null) return;
      const end = setTimeout(() => {
        this.timers.delete(end);
        this.send({ type: 'session-end', ref: `k${++this.seq}`, session }, 'control');
      }, this.s.endSessionAfterMs);
      this.timers.add(end);
    }, this.s.consentDelayMs);
    this.timers.add(timer);
  }

  private onPoll(): void {
    this.report.polled++;
    if (!this.answering || !this.s.answerPolls) return;
    const i = ++this.seq;
    this.send(this.statusFrame(`q${i}`, i), 'data');
  }

  // --- the run ---

  private stopped(): boolean {
    return this.link.closed || this.aborted;
  }

  async run(): Promise<SimReport> {
    const s = this.s;
    const onAbort = (): void => {
      this.aborted = true;
      this.waiter.notify();
    };
    if (s.signal?.aborted) this.aborted = true;
    s.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (s.misbehave === 'no-hello') this.answering = true;
      else await this.hello();
      if (s.heartbeatEveryMs > 0) {
        this.heartbeat = setInterval(() => {
          if (this.answering) this.send({ type: 'heartbeat', ref: `b${++this.seq}` }, 'control');
        }, s.heartbeatEveryMs);
      }
      const end = await this.sendAll();
      return this.finish(end ?? (await this.ending()));
    } finally {
      this.answering = false;
      clearInterval(this.heartbeat);
      for (const tm of this.timers) clearTimeout(tm);
      s.signal?.removeEventListener('abort', onAbort);
      this.link.destroy();
    }
  }

  private async hello(): Promise<void> {
    const { hello, timeoutMs } = this.s;
    this.send(hello, 'hello');
    const answered = await this.waiter.until(() => this.helloReply !== null || this.link.closed, timeoutMs);
    const reply = this.helloReply as BoxFrame | null;
    if (reply?.type === 'ack') return;
    const why = reply?.type === 'error'
      ? `refused it: ${reply.code}: ${reply.message}`
      : answered
        ? 'closed the connection'
        : `did not answer within ${timeoutMs} ms`;
    throw new RapError('RAP_PROTOCOL', `hello to ${this.s.host}:${this.s.port}: the box ${why}`, { host: this.s.host, port: this.s.port });
  }

  /** Our own frames; returns an end reason if the run cannot go on. */
  private async sendAll(): Promise<SimReport['end'] | undefined> {
    const s = this.s;
    const flood = s.misbehave === 'flood';
    const start = performance.now();
    const deadline = start + s.durationMs;
    for (let i = 0; i < s.count; i++) {
      if (this.stopped() || performance.now() >= deadline) break;
      if (s.ratePerSec > 0 && !flood) {
        const due = Math.min(start + (i * 1000) / s.ratePerSec, deadline);
        await this.waiter.until(() => this.stopped(), due - performance.now());
        if (this.stopped() || performance.now() >= deadline) break;
      }
      const room = flood ? () => true : () => this.dataInFlight < s.window;
      if (!(await this.waiter.until(() => this.stopped() || room(), s.timeoutMs))) return 'timeout';
      // Never queue without bound in user space, even when flooding.
      if (!(await this.link.drained(s.timeoutMs))) return 'timeout';
      if (this.stopped()) break;
      const ref = `${this.isAlarm(i) ? 'a' : 's'}${++this.seq}`;
      this.send(this.isAlarm(i) ? this.alarmFrame(ref, i) : this.statusFrame(ref, i), 'data');
      if (s.misbehave === 'garbage' && i % 3 === 2) this.garbage(Math.floor(i / 3));
    }
    if (this.link.closed) return 'closed';
    return undefined;
  }

  /** Wait for every reply, then leave: politely, or in the chosen wrong way. */
  private async ending(): Promise<SimReport['end']> {
    const s = this.s;
    // No more heartbeats: when they come faster than the round trip, there is
    // always one in flight and the drain below would never see zero.
    clearInterval(this.heartbeat);
    const answered = await this.waiter.until(() => this.inFlight.size === 0 || this.link.closed, s.timeoutMs);
    if (this.link.closed) return 'closed';
    if (!answered) return 'timeout';
    // From here on nothing else may be written: a poll answer in the middle
    // of a trickled or half line would corrupt it (and be a different test).
    this.answering = false;
    // Aborted: leave politely whatever the chosen misbehaviour.
    switch (this.aborted ? 'none' : s.misbehave) {
      case 'oversized': {
        const frame = this.statusFrame(`o${++this.seq}`, 0);
        frame.data['pad'] = 'x'.repeat(MAX_FRAME_BYTES + 1024);
        this.violate(encodeFrame(frame), null);
        return (await this.waiter.until(() => this.link.closed, s.timeoutMs)) ? 'done' : 'timeout';
      }
      case 'slow':
        return this.trickle();
      case 'half-line': {
        const line = encodeFrame(this.statusFrame(`c${++this.seq}`, 0));
        this.violate(line.slice(0, Math.floor(line.length / 2)), null, false);
        await this.link.end(s.timeoutMs);
        return 'done';
      }
      default: {
        this.send({ type: 'bye', ref: `x${++this.seq}` }, 'control');
        const byeAnswered = await this.waiter.until(() => this.inFlight.size === 0 || this.link.closed, s.timeoutMs);
        await this.link.end(s.timeoutMs);
        if (!byeAnswered) return 'timeout';
        return this.aborted ? 'aborted' : 'done';
      }
    }
  }

  /** Half a line, then a byte at a time until the box cuts us off. */
  private async trickle(): Promise<SimReport['end']> {
    const s = this.s;
    const line = Buffer.from(encodeFrame(this.statusFrame(`w${++this.seq}`, 0)));
    const half = Math.floor(line.length / 2);
    this.violate(line.subarray(0, half), null);
    const giveUp = performance.now() + s.timeoutMs;
    for (let at = half; at < line.length; at++) {
      await this.waiter.until(() => this.link.closed, Math.min(s.slowByteMs, giveUp - performance.now()));
      if (this.link.closed) return 'done';
      if (performance.now() >= giveUp) return 'timeout';
      this.link.write(line.subarray(at, at + 1));
    }
    // The whole line went through without a TIMEOUT: the box was lenient.
    await this.waiter.until(() => this.link.closed, s.timeoutMs);
    return 'timeout';
  }

  private finish(end: SimReport['end']): SimReport {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    if (end === 'done' && this.aborted) end = 'aborted';
    return {
      ...this.report,
      ackLatencyMs: { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: percentile(sorted, 1) },
      unanswered: this.inFlight.size,
      end,
    };
  }
}

/**
 * Run one instrument session against a box. Rejects (RAP_USAGE) on bad
 * options and (RAP_PROTOCOL) when it cannot connect or the box refuses the
 * hello; everything after that ends up in the report.
 */
export async function runSimulator(opts: SimOptions): Promise<SimReport> {
  const s = settings(opts);
  const sock = await openSocket(s.host, s.port, s.timeoutMs);
  return new Simulator(s, sock).run();
}
