// One agent per instrument port. It listens on the port's gateway address,
// speaks the instrument protocol (docs/instrument-protocol.md), acknowledges
// a frame only once the store has it durably, tracks presence, polls
// instruments that do not push, and reports an instrument offline after a
// configured silence.
//
// Bad input never crashes the agent: every protocol violation gets an error
// frame naming what was wrong, a counter, and (for framing or timeouts) a
// closed connection. A flooding instrument is held back by backpressure
// (at most MAX_UNACKED frames in flight per connection), so it cannot take
// the whole group commit away from the other ports.
//
// For remote sessions the agent is the consent channel (session.ts): it sends
// the consent request to the identified instrument and hands its answers,
// its session-end and its consent-clear to the session manager.

import { createServer, type Server, type Socket } from 'node:net';
import { errorMessage, isRapError, RapError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import {
  LineSplitter,
  MAX_FRAME_BYTES,
  ProtocolError,
  encodeFrame,
  parseInstrumentFrame,
  type BoxFrame,
  type ConsentAnswer,
  type ConsentRequestFrame,
  type InstrumentFrame,
  type ProtocolErrorCode,
} from '../protocol/instrument.ts';
import type { InstrumentIdentity, TelemetryMessage } from '../protocol/telemetry.ts';
import type { PortReport } from '../protocol/control.ts';
import type { PortConfig } from './config.ts';
import type { NewMessage } from './store.ts';

/** Frames in flight (received, not yet acknowledged) per connection before we stop reading. */
export const MAX_UNACKED = 256;
/** A started line must be finished within this time (slow or stuck senders). */
export const FRAME_TIMEOUT_MS = 30_000;
/** Bounds of the retry delay while a port's gateway address is not there yet. */
export const BIND_RETRY_MIN_MS = 100;
export const BIND_RETRY_MAX_MS = 5_000;

/** The session manager as an agent sees it (answers from this port's instrument). */
export interface AgentSessionHandler {
  /** False: no session of this port waits for that answer. */
  consent(port: string, session: string, answer: ConsentAnswer): boolean;
  /** Resolves once the session is torn down; false when it is not open. */
  end(port: string, session: string): Promise<boolean>;
  clear(port: string): void;
}

export interface AgentStore {
  append(msg: NewMessage): Promise<TelemetryMessage>;
}

export interface AgentDeps {
  port: PortConfig;
  store: AgentStore;
  log: Logger;
  now?: () => number;
  frameTimeoutMs?: number;
  maxUnacked?: number;
  /** How often presence and polling are checked (tests make it short). */
  tickMs?: number;
  /** Longest wait between bind retries while the address is missing (tests make it short). */
  bindRetryMaxMs?: number;
}

/** A port's part of `rapctl status` (defined once, in the control protocol). */
export type PortStatus = PortReport;

interface Conn {
  sock: Socket;
  splitter: LineSplitter;
  identity: InstrumentIdentity | null;
  inFlight: number;
  /** Lines received but not yet handled because inFlight reached the limit. */
  queue: string[];
  paused: boolean;
  said_bye: boolean;
  partialTimer: NodeJS.Timeout | undefined;
  /** Frames to send at the end of this tick. */
  out: string;
}

export class PortAgent {
  private readonly cfg: PortConfig;
  private readonly store: AgentStore;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly frameTimeoutMs: number;
  private readonly maxUnacked: number;
  private readonly server: Server;
  private readonly conns = new Set<Conn>();
  private ticker: NodeJS.Timeout | undefined;
  private instrument: InstrumentIdentity | null = null;
  private online = false;
  private lastSeen: number | null = null;
  private lastStatusAt: number | null = null;
  private lastPollAt = 0;
  /** When the instrument last said hello: the poll clock starts there, not at 0. */
  private identifiedAt: number | null = null;
  private pollSeq = 0;
  private listening = false;
  private lastBindError: string | null = null;
  private waitingSince: number | null = null;
  private bindTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly counters: PortStatus['counters'] = { frames: 0, stored: 0, polls: 0, errors: {} };
  private sessions: AgentSessionHandler | null = null;
  private endedSeq = 0;

  private constructor(deps: AgentDeps) {
    this.cfg = deps.port;
    this.store = deps.store;
    this.log = deps.log.child({ port: deps.port.name });
    this.now = deps.now ?? Date.now;
    this.frameTimeoutMs = deps.frameTimeoutMs ?? FRAME_TIMEOUT_MS;
    this.maxUnacked = deps.maxUnacked ?? MAX_UNACKED;
    this.server = createServer((sock) => this.accept(sock));
    // Errors of a listening server (accept failures) are logged, never fatal;
    // bind failures are handled by bind().
    this.server.on('error', (e) => {
      if (this.listening) this.log.warn('port agent server error', { error: errorMessage(e) });
    });
  }

  /**
   * Start listening. On a port with an interface the gateway address is put
   * there by systemd-networkd, asynchronously: while it is missing
   * (EADDRNOTAVAIL) the agent retries with a bounded backoff, says so once in
   * the log and shows it in status. Any other bind failure is fatal.
   */
  static async start(deps: AgentDeps): Promise<PortAgent> {
    const agent = new PortAgent(deps);
    const { address, port } = deps.port;
    const err = await agent.bind();
    if (err && !(err.code === 'EADDRNOTAVAIL' && deps.port.interface !== '')) {
      throw new RapError('RAP_AGENT', `port ${deps.port.name}: cannot listen on ${address}:${port}: ${errorMessage(err)}`, { port: deps.port.name }, { cause: err });
    }
    if (err) {
      agent.waitingSince = agent.now();
      agent.lastBindError = err.code ?? errorMessage(err);
      agent.log.warn('port address not there yet; retrying until it is', { listen: `${address}:${port}`, interface: deps.port.interface, error: err.code });
      agent.retryBind(BIND_RETRY_MIN_MS, deps.bindRetryMaxMs ?? BIND_RETRY_MAX_MS);
    }
    agent.ticker = setInterval(() => agent.tick(), deps.tickMs ?? 1000);
    agent.ticker.unref();
    return agent;
  }

  /** One listen attempt; the error, or null once listening. */
  private bind(): Promise<NodeJS.ErrnoException | null> {
    const { address, port } = this.cfg;
    return new Promise((resolve) => {
      // Each attempt removes both of its listeners whichever fires, or the
      // retries would pile them up on the server.
      const onError = (e: NodeJS.ErrnoException): void => {
        this.server.off('listening', onListening);
        resolve(e);
      };
      const onListening = (): void => {
        this.server.off('error', onError);
        this.listening = true;
        this.log.info('port agent listening', { listen: `${address}:${this.boundPort}`, ...(this.waitingSince === null ? {} : { waitedMs: this.now() - this.waitingSince }) });
        this.waitingSince = null;
        resolve(null);
      };
      this.server.once('error', onError);
      this.server.once('listening', onListening);
      this.server.listen({ host: address, port, exclusive: true });
    });
  }

  private retryBind(delayMs: number, maxMs: number): void {
    this.bindTimer = setTimeout(() => {
      this.bindTimer = undefined;
      if (this.stopped) return;
      void this.bind().then((e) => {
        if (this.stopped && this.listening) this.server.close();
        if (!e || this.stopped) return;
        // Still missing, or something else now (e.g. the port taken): keep
        // trying, logged only when the reason changes.
        const why = e.code ?? errorMessage(e);
        if (why !== this.lastBindError) this.log.warn('port agent cannot listen yet; retrying', { listen: `${this.cfg.address}:${this.cfg.port}`, error: errorMessage(e) });
        this.lastBindError = why;
        this.retryBind(Math.min(delayMs * 2, maxMs), maxMs);
      });
    }, delayMs);
  }

  /** The port actually bound (tests listen on port 0). */
  get boundPort(): number {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : this.cfg.port;
  }

  status(): PortStatus {
    const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
    return {
      name: this.cfg.name,
      listen: `${this.cfg.address}:${this.boundPort}`,
      listening: this.listening,
      waitingForAddressSince: iso(this.waitingSince),
      bindError: this.listening ? null : this.lastBindError,
      connections: this.conns.size,
      instrument: this.instrument,
      online: this.online,
      lastSeen: iso(this.lastSeen),
      lastStatusAt: iso(this.lastStatusAt),
      counters: { ...this.counters, errors: { ...this.counters.errors } },
    };
  }

  setSessionHandler(h: AgentSessionHandler): void {
    this.sessions = h;
  }

  /** The newest identified connection: the instrument a consent request goes to. */
  private identifiedConn(): Conn | null {
    let found: Conn | null = null;
    for (const c of this.conns) if (c.identity && !c.sock.destroyed) found = c;
    return found;
  }

  /** The identified instrument connected now (its address as seen on the port), or null. */
  sessionInstrument(): { address: string; serial: string } | null {
    const c = this.identifiedConn();
    const address = c?.sock.remoteAddress?.replace(/^::ffff:/, '');
    return c && address ? { address, serial: c.identity!.serial } : null;
  }

  requestConsent(frame: ConsentRequestFrame): boolean {
    const c = this.identifiedConn();
    if (!c) return false;
    this.log.info('asking the instrument for consent', { session: frame.session, who: frame.who, services: frame.services });
    this.send(c, frame);
    return true;
  }

  sessionEnded(session: string, reason: string): void {
    for (const c of this.conns) if (c.identity) this.send(c, { type: 'session-ended', ref: `e-${++this.endedSeq}`, session, reason });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    if (this.bindTimer) clearTimeout(this.bindTimer);
    for (const c of this.conns) {
      if (c.partialTimer) clearTimeout(c.partialTimer);
      c.sock.destroy();
    }
    if (!this.listening) return;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(sock: Socket): void {
    const conn: Conn = {
      sock,
      splitter: new LineSplitter(MAX_FRAME_BYTES),
      identity: null,
      inFlight: 0,
      queue: [],
      paused: false,
      said_bye: false,
      partialTimer: undefined,
      out: '',
    };
    this.conns.add(conn);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 30_000);
    this.log.debug('instrument connected', { from: `${sock.remoteAddress}:${sock.remotePort}` });
    sock.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    sock.on('error', (e) => this.log.debug('instrument connection error', { error: errorMessage(e) }));
    sock.on('close', () => {
      if (conn.partialTimer) clearTimeout(conn.partialTimer);
      this.conns.delete(conn);
      // An orderly goodbye: the instrument is switched off on purpose, which
      // is recorded as such and not later reported as an offline fault.
      const others = [...this.conns].some((c) => c.identity !== null);
      if (conn.said_bye && this.online && !others) {
        this.online = false;
        this.event('instrument-bye', {});
      }
      this.log.debug('instrument disconnected', { serial: conn.identity?.serial, bye: conn.said_bye });
    });
  }

  private send(conn: Conn, frame: BoxFrame): void {
    if (conn.sock.destroyed || conn.sock.writableEnded) return;
    // Acks resolved by one group commit go out in one write (one syscall,
    // one TCP segment) instead of one each: collected as one string until
    // the end of this tick (cheaper than a corked stream write per frame).
    if (conn.out === '') process.nextTick(() => this.flushOut(conn));
    conn.out += encodeFrame(frame);
  }

  private flushOut(conn: Conn): void {
    const out = conn.out;
    conn.out = '';
    if (out !== '' && !conn.sock.destroyed && !conn.sock.writableEnded) conn.sock.write(out);
  }

  private protocolError(conn: Conn, code: ProtocolErrorCode, message: string, ref: string | null, close = false): void {
    this.counters.errors[code] = (this.counters.errors[code] ?? 0) + 1;
    this.log.warn('instrument protocol error', { code, message, ref, serial: conn.identity?.serial });
    this.send(conn, { type: 'error', ref, code, message });
    if (close) {
      // What is collected for this tick goes before the end.
      this.flushOut(conn);
      conn.sock.end();
    }
  }

  private onData(conn: Conn, chunk: Buffer): void {
    let lines: string[];
    try {
      lines = conn.splitter.push(chunk);
    } catch (e) {
      const code = e instanceof ProtocolError ? e.code : 'BAD_FRAME';
      // Framing is lost after an oversized line: close.
      this.protocolError(conn, code, errorMessage(e), null, true);
      conn.sock.pause();
      return;
    }
    conn.queue.push(...lines);
    this.drain(conn);
    // A completed line ends the old partial line; a new one starts its own clock.
    if (lines.length > 0 && conn.partialTimer) {
      clearTimeout(conn.partialTimer);
      conn.partialTimer = undefined;
    }
    this.armPartialTimer(conn);
  }

  /**
   * Handle queued lines while fewer than maxUnacked frames are in flight.
   * Past the limit the socket is paused (TCP backpressure reaches the
   * instrument) and the rest waits here until acks come back.
   */
  private drain(conn: Conn): void {
    while (conn.queue.length > 0 && conn.inFlight < this.maxUnacked) {
      this.onLine(conn, conn.queue.shift()!);
    }
    const full = conn.queue.length > 0 || conn.inFlight >= this.maxUnacked;
    if (full && !conn.paused) {
      conn.paused = true;
      conn.sock.pause();
    } else if (!full && conn.paused && conn.inFlight < this.maxUnacked / 2) {
      conn.paused = false;
      conn.sock.resume();
    }
  }

  /**
   * A half-sent line must complete in time; a stuck sender is cut off. The
   * clock starts when a partial line starts and is not reset by more bytes
   * of the same line (a sender trickling one byte a second is still stuck).
   */
  private armPartialTimer(conn: Conn): void {
    if (!conn.splitter.pending) {
      if (conn.partialTimer) clearTimeout(conn.partialTimer);
      conn.partialTimer = undefined;
      return;
    }
    if (conn.partialTimer) return;
    conn.partialTimer = setTimeout(() => {
      conn.partialTimer = undefined;
      // While we hold the socket paused the sender is not to blame.
      if (conn.paused) return this.armPartialTimer(conn);
      this.protocolError(conn, 'TIMEOUT', `frame not completed within ${this.frameTimeoutMs} ms`, null, true);
    }, this.frameTimeoutMs);
  }

  private onLine(conn: Conn, line: string): void {
    if (line.trim() === '') return;
    let frame: InstrumentFrame;
    try {
      frame = parseInstrumentFrame(line);
    } catch (e) {
      if (e instanceof ProtocolError) return this.protocolError(conn, e.code, e.message, e.ref);
      return this.protocolError(conn, 'BAD_FRAME', errorMessage(e), null);
    }
    this.counters.frames++;
    if (frame.type === 'hello') {
      conn.identity = { serial: frame.serial, model: frame.model, swVersion: frame.swVersion };
      if (this.instrument?.serial !== frame.serial) this.log.info('instrument identified', { ...conn.identity });
      this.instrument = conn.identity;
      this.identifiedAt = this.now();
    }
    // Presence counts only identified instruments.
    if (conn.identity) this.seen();
    switch (frame.type) {
      case 'hello':
        this.send(conn, { type: 'ack', ref: frame.ref, id: null });
        return;
      case 'heartbeat':
        this.send(conn, { type: 'ack', ref: frame.ref, id: null });
        return;
      case 'bye':
        conn.said_bye = true;
        this.send(conn, { type: 'ack', ref: frame.ref, id: null });
        return;
      case 'consent':
      case 'session-end':
      case 'consent-clear':
        return this.onSessionFrame(conn, frame);
      case 'status':
      case 'alarm': {
        if (!conn.identity) {
          return this.protocolError(conn, 'NOT_IDENTIFIED', `${frame.type} before hello: send a hello frame first`, frame.ref);
        }
        if (frame.type === 'status') this.lastStatusAt = this.now();
        const body =
          frame.type === 'status'
            ? frame.data
            : { code: frame.code, severity: frame.severity, text: frame.text, data: frame.data };
        this.persist(conn, frame.ref, { kind: frame.type, port: this.cfg.name, instrument: conn.identity, instrumentTime: frame.time, body });
        return;
      }
    }
  }

  /** Answers about remote sessions: only from an identified instrument, acknowledged once taken. */
  private onSessionFrame(conn: Conn, frame: Extract<InstrumentFrame, { type: 'consent' | 'session-end' | 'consent-clear' }>): void {
    if (!conn.identity) return this.protocolError(conn, 'NOT_IDENTIFIED', `${frame.type} before hello: send a hello frame first`, frame.ref);
    const h = this.sessions;
    const ack = (): void => this.send(conn, { type: 'ack', ref: frame.ref, id: null });
    const none = (what: string): void => this.protocolError(conn, 'NO_SESSION', what, frame.ref);
    if (frame.type === 'consent-clear') {
      h?.clear(this.cfg.name);
      return ack();
    }
    if (frame.type === 'consent') {
      this.log.info('consent answer', { session: frame.session, answer: frame.answer, serial: conn.identity.serial });
      return h?.consent(this.cfg.name, frame.session, frame.answer) ? ack() : none(`session ${frame.session} is not waiting for an answer on this port (too late, or unknown)`);
    }
    this.log.info('session end asked by the instrument', { session: frame.session, serial: conn.identity.serial });
    if (!h) return none(`session ${frame.session} is not open on this port`);
    conn.inFlight++;
    h.end(this.cfg.name, frame.session).then(
      (ended) => (ended ? ack() : none(`session ${frame.session} is not open on this port`)),
      (e: unknown) => this.protocolError(conn, 'BUSY', `could not end session ${frame.session}: ${errorMessage(e)}`, frame.ref),
    ).finally(() => {
      conn.inFlight--;
      if (!conn.sock.destroyed) this.drain(conn);
    });
  }

  private persist(conn: Conn, ref: string, msg: NewMessage): void {
    conn.inFlight++;
    // No .finally(): one promise and one microtask less per frame.
    const settled = (): void => {
      conn.inFlight--;
      if (!conn.sock.destroyed) this.drain(conn);
    };
    this.store.append(msg).then(
      (stored) => {
        try {
          this.counters.stored++;
          this.send(conn, { type: 'ack', ref, id: stored.id });
        } finally {
          settled();
        }
      },
      (e: unknown) => {
        try {
          if (isRapError(e, 'RAP_STORE_FULL')) this.protocolError(conn, 'STORE_FULL', errorMessage(e), ref);
          else this.protocolError(conn, 'BUSY', `not stored, send again: ${errorMessage(e)}`, ref);
        } finally {
          settled();
        }
      },
    );
  }

  private seen(): void {
    this.lastSeen = this.now();
    if (!this.online && this.instrument) {
      this.online = true;
      this.event('instrument-online', {});
    }
  }

  private event(event: string, details: Record<string, unknown>): void {
    this.log.info(event, { serial: this.instrument?.serial, ...details });
    this.store
      .append({ kind: 'event', port: this.cfg.name, instrument: this.instrument, instrumentTime: null, body: { event, ...details } })
      .catch((e: unknown) => this.log.warn('could not store event', { event, error: errorMessage(e) }));
  }

  /** Presence and polling, checked every tick. */
  private tick(): void {
    const now = this.now();
    if (this.online && this.lastSeen !== null && now - this.lastSeen >= this.cfg.offlineAfterSec * 1000) {
      this.online = false;
      this.event('instrument-offline', { lastSeen: new Date(this.lastSeen).toISOString(), silentSec: Math.round((now - this.lastSeen) / 1000) });
    }
    const interval = this.cfg.pollIntervalSec * 1000;
    if (interval <= 0) return;
    // An instrument that just said hello is not overdue: it gets one interval
    // to push its first status before it is polled.
    const lastStatus = Math.max(this.lastStatusAt ?? 0, this.identifiedAt ?? 0);
    if (now - lastStatus >= interval && now - this.lastPollAt >= interval) {
      for (const c of this.conns) {
        if (!c.identity || c.sock.destroyed) continue;
        this.lastPollAt = now;
        this.counters.polls++;
        this.send(c, { type: 'poll', ref: `p-${++this.pollSeq}` });
      }
    }
  }
}
