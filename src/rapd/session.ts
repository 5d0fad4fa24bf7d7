// Remote sessions with consent at the instrument (docs: README "Remote
// sessions", docs/instrument-protocol.md 4.6-4.8, 5.4-5.5).
//
//   requested -> prompted -> approved | denied | timed-out
//   approved -> vpn-starting -> pinhole-open -> active -> ended
//
// The center asks (a signed `session.open` command, or the local control
// socket); the person at that instrument answers; no answer in time is a
// denial. Only on "yes" does rapd start OpenVPN, then open one pinhole from
// that session's tunnel to that instrument's approved TCP ports. A session
// ends on the center's close, at its maximum duration, on the instrument's
// `session-end`, when the VPN drops, or when rapd stops; ending closes the
// pinhole first, then stops the VPN. At most one session per instrument port.
// Every step is audited (the audit shape agreed with the command channel).
//
// Everything host-facing (the agents, openvpn, the firewall, ip_forward, the
// audit log, the clock) is passed in, so the state machine is tested with
// fakes and a fake clock.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFileDurable } from '../lib/durable.ts';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import {
  MAX_SESSION_SERVICES,
  MAX_WHO_CHARS,
  MAX_WHY_CHARS,
  type ConsentAnswer,
  type ConsentRequestFrame,
} from '../protocol/instrument.ts';
import type { SessionReport } from '../protocol/control.ts';
import type { Pinhole } from './firewall.ts';
import type { VpnHandle } from './openvpn.ts';
import type { AuditEvent } from '../protocol/audit.ts';

/** What sessions need of the audit log (src/rapd/audit.ts): append, nothing back. */
export interface AuditSink {
  append(event: AuditEvent): Promise<unknown>;
}

// --- what a session manager is given ------------------------------------------

/** A port agent as the session manager sees it. */
export interface ConsentChannel {
  /** The identified instrument connected now: its address on the port and serial, or null. */
  instrument(): { address: string; serial: string } | null;
  /** Send a consent-request; false when no identified instrument is connected. */
  requestConsent(frame: ConsentRequestFrame): boolean;
  /** Tell the instrument the session is over (best effort). */
  sessionEnded(session: string, reason: string): void;
}

/** An instrument port that can have sessions (it has an interface). */
export interface SessionPort {
  name: string;
  iface: string;
  /** The tun interface of this port's sessions (unique per port). */
  tunnel: string;
  channel: ConsentChannel;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface SessionDeps {
  ports: SessionPort[];
  /** Starts this session's VPN client on `tunnel`. */
  startVpn(session: string, tunnel: string): Promise<VpnHandle>;
  /** Re-render and apply the whole firewall with these pinholes; throws RAP_FIREWALL (nothing changed). */
  applyPinholes(pinholes: Pinhole[]): Promise<void>;
  /** net.ipv4.ip_forward: on only while a session is active. */
  setForwarding(on: boolean): void;
  audit: AuditSink;
  log: Logger;
  /** Where "never" answers are kept (durable, on the data partition). */
  refusalsFile: string;
  consentTimeoutMs: number;
  maxDurationS: number;
  vpnConnectTimeoutMs: number;
  clock?: Clock;
}

export interface SessionRequest {
  port: string;
  services: number[];
  who: string;
  why: string;
  maxDurationS: number;
  /** Who asked, for the audit log: `center:<key id>` or `local:rapctl`. */
  actor: string;
}

export { SESSION_STATES, END_REASONS, type SessionState, type EndReason } from '../protocol/control.ts';
import type { EndReason } from '../protocol/control.ts';

/** A session as `rapctl status` shows it (defined once, in the control protocol). */
export type SessionInfo = SessionReport;

/** What `open` resolves to (the command's result). */
export type OpenResult =
  | { sessionId: string; outcome: 'active'; tunnelIp: string; services: number[]; expiresAt: string }
  | { sessionId: string; outcome: 'denied' | 'timed-out' | 'refused' | 'revoked' };

/** Grace on top of a session's lifetime for its firewall elements (rapd ends it first). */
const PINHOLE_GRACE_S = 10;

type Answer = ConsentAnswer | 'timeout' | 'revoked';

interface Session {
  info: SessionInfo;
  actor: string;
  port: SessionPort;
  answer: ((a: Answer) => void) | null;
  vpn: VpnHandle | null;
  expiry: unknown;
  ending: Promise<void> | null;
  expiresAtMs: number;
}

/** Bad requests name the field, like every parser here. */
export function checkSessionRequest(r: SessionRequest, maxDurationS: number): void {
  const bad = (field: string, what: string): never => {
    throw new RapError('RAP_SESSION', `session request ${field}: ${what}`, { field });
  };
  if (typeof r.port !== 'string' || r.port === '') bad('port', 'expected an instrument port name');
  if (!Array.isArray(r.services) || r.services.length < 1 || r.services.length > MAX_SESSION_SERVICES || !r.services.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)) {
    bad('services', `expected 1-${MAX_SESSION_SERVICES} TCP ports (1-65535)`);
  }
  if (new Set(r.services).size !== r.services.length) bad('services', 'a port is listed twice');
  if (typeof r.who !== 'string' || r.who.length < 1 || r.who.length > MAX_WHO_CHARS || /[\u0000-\u001f\u007f-\u009f]/.test(r.who)) bad('who', `expected 1-${MAX_WHO_CHARS} characters, no control characters`);
  if (typeof r.why !== 'string' || r.why.length > MAX_WHY_CHARS || /[\u0000-\u001f\u007f-\u009f]/.test(r.why)) bad('why', `expected at most ${MAX_WHY_CHARS} characters, no control characters`);
  if (!Number.isInteger(r.maxDurationS) || r.maxDurationS < 1 || r.maxDurationS > maxDurationS) bad('maxDurationS', `expected a whole number of seconds from 1 to ${maxDurationS}`);
}

export class SessionManager {
  private readonly d: SessionDeps;
  private readonly clock: Clock;
  private readonly byPort = new Map<string, Session>();
  /** Recently ended sessions, for `sessions` (bounded). */
  private readonly ended: SessionInfo[] = [];
  /** port -> requesters this port's instrument said "never" to. */
  private refusals: Record<string, string[]>;
  private stopped = false;
  /** The last firewall apply that failed (the previous ruleset stayed), until one succeeds. */
  private firewallError: string | null = null;

  constructor(deps: SessionDeps) {
    this.d = deps;
    this.clock = deps.clock ?? realClock;
    this.refusals = readRefusals(deps.refusalsFile, deps.log);
  }

  /** Why the box is degraded, or null: a pinhole change could not be applied (rapctl status shows it). */
  degraded(): string | null {
    return this.firewallError === null ? null : `firewall: the last session pinhole change failed, the previous ruleset is in place (its pinholes expire on their own): ${this.firewallError}`;
  }

  /** Every pinhole change goes through here, so a failure is remembered until one succeeds. */
  private async apply(): Promise<void> {
    try {
      await this.d.applyPinholes(this.pinholes());
      this.firewallError = null;
    } catch (e) {
      this.firewallError = errorMessage(e);
      throw e;
    }
  }

  list(): SessionInfo[] {
    return [...[...this.byPort.values()].map((s) => ({ ...s.info, bytes: s.vpn?.bytes() ?? s.info.bytes })), ...this.ended];
  }

  private audit(s: Session | null, action: string, outcome: string, details: Record<string, unknown> = {}, actor?: string, port?: string): void {
    const event: AuditEvent = {
      actor: actor ?? s?.actor ?? 'rapd',
      action,
      instrument: port ?? s?.info.port,
      outcome,
      details: s ? { session: s.info.id, serial: s.info.instrument, ...details } : details,
    };
    // The audit log must not block or break a teardown; a failure is logged loudly.
    this.d.audit.append(event).catch((e: unknown) => this.d.log.error('audit append failed', { action, error: errorMessage(e) }));
  }

  /**
   * The whole flow for one request; resolves once the session is active or
   * was refused/denied/timed out, which may take the consent timeout.
   * Throws RAP_SESSION for a request that cannot be asked at all.
   */
  async open(req: SessionRequest): Promise<OpenResult> {
    checkSessionRequest(req, this.d.maxDurationS);
    const found = this.d.ports.find((p) => p.name === req.port);
    const refuse = (why: string): never => {
      this.audit(null, 'session.requested', 'rejected', { why, services: req.services, who: req.who }, req.actor, req.port);
      throw new RapError('RAP_SESSION', why, { port: req.port });
    };
    if (this.stopped) return refuse('rapd is stopping');
    if (!found) return refuse(`no instrument port '${req.port}' with an interface (sessions need a real port)`);
    const port: SessionPort = found;
    if (this.byPort.has(port.name)) return refuse(`port ${port.name} already has a session (${this.byPort.get(port.name)!.info.id})`);
    const inst = port.channel.instrument();
    if (!inst) return refuse(`no identified instrument is connected on port ${port.name}`);

    const now = this.clock.now();
    const s: Session = {
      info: {
        id: randomUUID(),
        port: port.name,
        instrument: inst.serial,
        address: inst.address,
        who: req.who,
        why: req.why,
        services: [...req.services],
        state: 'requested',
        requestedAt: new Date(now).toISOString(),
        activeAt: null,
        expiresAt: null,
        tunnelIp: null,
        endReason: null,
        bytes: null,
      },
      actor: req.actor,
      port,
      answer: null,
      vpn: null,
      expiry: null,
      ending: null,
      expiresAtMs: 0,
    };
    this.byPort.set(port.name, s);
    this.audit(s, 'session.requested', 'ok', { who: req.who, why: req.why, services: req.services, maxDurationS: req.maxDurationS });

    if ((this.refusals[port.name] ?? []).includes(req.who)) {
      this.audit(s, 'session.denied', 'refused', { never: true });
      this.finish(s, 'denied');
      return { sessionId: s.info.id, outcome: 'refused' };
    }

    // Ask the person at the instrument; no answer in time means no.
    const answerBy = now + this.d.consentTimeoutMs;
    const answer = new Promise<Answer>((resolve) => {
      s.answer = resolve;
    });
    const timer = this.clock.setTimeout(() => s.answer?.('timeout'), this.d.consentTimeoutMs);
    const sent = port.channel.requestConsent({
      type: 'consent-request',
      ref: `c-${s.info.id.slice(0, 8)}`,
      session: s.info.id,
      who: req.who,
      why: req.why,
      services: req.services,
      maxDurationS: req.maxDurationS,
      answerBy: new Date(answerBy).toISOString(),
    });
    if (!sent) {
      this.clock.clearTimeout(timer);
      this.audit(s, 'session.denied', 'no-instrument');
      this.finish(s, 'failed');
      throw new RapError('RAP_SESSION', `the instrument on port ${port.name} went away before it could be asked`);
    }
    s.info.state = 'prompted';
    this.audit(s, 'session.prompted', 'ok', { answerBy: new Date(answerBy).toISOString() }, `instrument:${port.name}`);
    const a = await answer;
    s.answer = null;
    this.clock.clearTimeout(timer);

    if (a !== 'yes') {
      const outcome = a === 'timeout' ? 'timed-out' : a === 'revoked' ? 'revoked' : 'denied';
      s.info.state = a === 'timeout' ? 'timed-out' : 'denied';
      if (a === 'never') this.addRefusal(port.name, req.who);
      if (a === 'timeout') this.audit(s, 'session.timeout', 'denied', { afterMs: this.d.consentTimeoutMs }, 'rapd');
      else this.audit(s, 'session.denied', a, {}, a === 'revoked' && this.stopped ? 'rapd' : `instrument:${port.name}`);
      this.finish(s, a === 'timeout' ? 'timeout' : a === 'revoked' && this.stopped ? 'rapd-stop' : 'denied');
      return { sessionId: s.info.id, outcome };
    }
    s.info.state = 'approved';
    this.audit(s, 'session.approved', 'ok', {}, `instrument:${port.name}`);

    try {
      s.info.state = 'vpn-starting';
      s.vpn = await this.d.startVpn(s.info.id, port.tunnel);
      const vpn = s.vpn;
      vpn.onLost((why) => {
        this.d.log.warn('session VPN lost', { session: s.info.id, why });
        void this.end(s.info.id, 'vpn-loss');
      });
      const { tunnelIp } = await vpn.connected(this.d.vpnConnectTimeoutMs);
      if (s.ending) throw new RapError('RAP_SESSION', 'the session ended while the tunnel came up');
      s.info.tunnelIp = tunnelIp;
      s.info.state = 'pinhole-open';
      s.expiresAtMs = this.clock.now() + req.maxDurationS * 1000;
      await this.apply();
      this.d.setForwarding(true);
    } catch (e) {
      this.d.log.error('session setup failed', { session: s.info.id, error: errorMessage(e) });
      if (!s.ending) await this.teardown(s, 'failed', errorMessage(e));
      else await s.ending;
      throw new RapError('RAP_SESSION', `session ${s.info.id} could not be set up: ${errorMessage(e)}`, { session: s.info.id }, { cause: e });
    }
    s.info.state = 'active';
    s.info.activeAt = new Date(this.clock.now()).toISOString();
    s.info.expiresAt = new Date(s.expiresAtMs).toISOString();
    s.expiry = this.clock.setTimeout(() => void this.end(s.info.id, 'expired'), req.maxDurationS * 1000);
    this.audit(s, 'session.started', 'ok', { tunnelIp: s.info.tunnelIp, services: s.info.services, expiresAt: s.info.expiresAt });
    return { sessionId: s.info.id, outcome: 'active', tunnelIp: s.info.tunnelIp!, services: s.info.services, expiresAt: s.info.expiresAt };
  }

  private pinholes(): Pinhole[] {
    const now = this.clock.now();
    return [...this.byPort.values()]
      .filter((s) => s.info.tunnelIp !== null && s.ending === null && (s.info.state === 'pinhole-open' || s.info.state === 'active'))
      .map((s) => ({
        session: s.info.id,
        port: s.port.name,
        iface: s.port.iface,
        tunnel: s.port.tunnel,
        instrument: s.info.address,
        services: s.info.services,
        timeoutS: Math.max(1, Math.ceil((s.expiresAtMs - now) / 1000)) + PINHOLE_GRACE_S,
      }));
  }

  /** The instrument answered (agent). False: no session of that port is waiting for an answer. */
  consent(port: string, session: string, answer: ConsentAnswer): boolean {
    const s = this.byPort.get(port);
    if (!s || s.info.id !== session || !s.answer) return false;
    s.answer(answer);
    return true;
  }

  /** The instrument's clear of its "never" answers. */
  clearRefusals(port: string): void {
    if (!this.refusals[port]) return;
    delete this.refusals[port];
    writeFileDurable(this.d.refusalsFile, `${JSON.stringify(this.refusals)}\n`, 0o600);
    this.audit(null, 'session.refusals-cleared', 'ok', {}, `instrument:${port}`, port);
  }

  private addRefusal(port: string, who: string): void {
    const list = (this.refusals[port] ??= []);
    if (!list.includes(who)) list.push(who);
    try {
      writeFileDurable(this.d.refusalsFile, `${JSON.stringify(this.refusals)}\n`, 0o600);
    } catch (e) {
      this.d.log.error('could not store a "never" answer (kept until rapd restarts)', { error: errorMessage(e) });
    }
  }

  /** End by id (center close, local control). False when no such session is open. */
  async end(id: string, reason: EndReason): Promise<boolean> {
    const s = [...this.byPort.values()].find((x) => x.info.id === id);
    if (!s) return false;
    if (s.answer) {
      // Still asking: withdraw the request.
      s.answer('revoked');
      return true;
    }
    await this.teardown(s, reason);
    return true;
  }

  /** The instrument's session-end: only for a session of its own port. */
  async endFromInstrument(port: string, session: string): Promise<boolean> {
    const s = this.byPort.get(port);
    if (!s || s.info.id !== session) return false;
    return this.end(session, 'local-revoke');
  }

  /** rapd stops: every session ends, nothing stays open. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.byPort.values()].map((s) => this.end(s.info.id, 'rapd-stop')));
  }

  /** Close the pinhole first, then stop the VPN; audited with the byte counts. */
  private teardown(s: Session, reason: EndReason, error?: string): Promise<void> {
    s.ending ??= (async () => {
      if (s.expiry !== null) this.clock.clearTimeout(s.expiry);
      const hadPinhole = s.info.state === 'pinhole-open' || s.info.state === 'active';
      s.info.state = 'ended';
      if (hadPinhole) {
        if (this.pinholes().length === 0) this.safely('ip_forward off', () => this.d.setForwarding(false));
        try {
          await this.apply();
        } catch (e) {
          // The previous ruleset stays; its element for this session still expires on its own.
          this.d.log.error('firewall degraded: could not close a session pinhole', { session: s.info.id, error: errorMessage(e) });
          this.audit(s, 'firewall.applied', 'failed', { error: errorMessage(e) }, 'rapd');
        }
      }
      if (s.vpn) {
        await s.vpn.stop().catch((e: unknown) => this.d.log.error('openvpn did not stop cleanly', { error: errorMessage(e) }));
        s.info.bytes = s.vpn.bytes();
      }
      const activeMs = s.info.activeAt ? this.clock.now() - Date.parse(s.info.activeAt) : 0;
      this.audit(s, 'session.ended', reason, {
        reason,
        ...(error ? { error } : {}),
        bytesIn: s.info.bytes?.in ?? 0,
        bytesOut: s.info.bytes?.out ?? 0,
        activeS: Math.round(activeMs / 1000),
      }, reason === 'center-close' ? s.actor : reason === 'local-revoke' ? `instrument:${s.port.name}` : 'rapd');
      this.finish(s, reason);
    })();
    return s.ending;
  }

  private finish(s: Session, reason: EndReason): void {
    s.info.state = 'ended';
    s.info.endReason = reason;
    if (this.byPort.get(s.port.name) === s) this.byPort.delete(s.port.name);
    this.ended.unshift({ ...s.info });
    this.ended.splice(20);
    this.safely('tell the instrument', () => s.port.channel.sessionEnded(s.info.id, reason));
    this.d.log.info('session ended', { session: s.info.id, port: s.port.name, reason, bytes: s.info.bytes });
  }

  private safely(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.d.log.error(`session: ${what} failed`, { error: errorMessage(e) });
    }
  }
}

function readRefusals(path: string, log: Logger): Record<string, string[]> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return {};
  }
  try {
    const doc = JSON.parse(text) as unknown;
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new Error('expected a JSON object');
    const out: Record<string, string[]> = {};
    for (const [k, v] of Object.entries(doc)) {
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`${k}: expected a list of requesters`);
      out[k] = v as string[];
    }
    return out;
  } catch (e) {
    // A damaged file must not open the box: it only ever makes rapd refuse more.
    log.error('session refusals file unreadable; starting with none (every request is still asked)', { path, error: errorMessage(e) });
    return {};
  }
}
