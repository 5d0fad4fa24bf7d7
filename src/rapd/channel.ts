// The command channel: one outbound WebSocket from rapd to rap-center
// (wss://{center.url}/v1/commands), over the same mutual TLS and the same
// HTTP CONNECT / SOCKS5 proxy as the uplink. Nothing listens on the box's
// WAN side; the center reaches the box only down this socket.
//
// Commands are verified and run by the CommandRouter; each runs on its own
// (a session open waits minutes for a person at the instrument), so the
// channel never blocks on one. Results go back with the command id. A result
// whose socket closed meanwhile waits in a small outbox and goes on the next
// connection (the audit log has it durably in any case).
//
// Reconnects: exponential backoff with full jitter from 1 s up to
// `commands.reconnectMaxMs`, reset once a connection opened. Both ends ping:
// a connection that stops answering for PING_EVERY_MS * 2 is dropped.

import WebSocket from 'ws';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { describeProxy, resolveProxy, type ProxySpec } from '../lib/proxy.ts';
import { COMMANDS_PATH, MAX_FRAME_BYTES, type HelloFrame, type ResultFrame } from '../protocol/commands.ts';
import type { ChannelReport } from '../protocol/control.ts';
import type { ChainHead } from '../protocol/audit.ts';
import { centerConnector, centerTlsOptions } from './centerlink.ts';
import type { CommandRouter } from './commands.ts';
import type { Config } from './config.ts';
import { backoffDelay } from './uplink.ts';
import { RAPD_VERSION } from './version.ts';

export const PING_EVERY_MS = 30_000;
/** Results kept while disconnected; past it the oldest are dropped (they are in the audit log). */
const OUTBOX_MAX = 256;

export interface ChannelDeps {
  config: Config;
  router: Pick<CommandRouter, 'handle'>;
  log: Logger;
  auditHead: () => ChainHead | null;
  env?: NodeJS.ProcessEnv;
  random?: () => number;
  now?: () => number;
}

export class CommandChannel {
  private readonly cfg: Config;
  private readonly router: Pick<CommandRouter, 'handle'>;
  private readonly log: Logger;
  private readonly auditHead: () => ChainHead | null;
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly url: URL;
  private readonly proxy: ProxySpec | null;
  private ws: WebSocket | null = null;
  private running = false;
  private timer: NodeJS.Timeout | null = null;
  private pinger: NodeJS.Timeout | null = null;
  private readonly outbox: ResultFrame[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly st: ChannelReport;

  constructor(deps: ChannelDeps) {
    this.cfg = deps.config;
    this.router = deps.router;
    this.log = deps.log.child({ part: 'channel' });
    this.auditHead = deps.auditHead;
    this.random = deps.random ?? Math.random;
    this.now = deps.now ?? Date.now;
    const base = new URL(COMMANDS_PATH, this.cfg['center.url']);
    this.url = new URL(base.href.replace(/^https:/, 'wss:'));
    this.proxy = resolveProxy({
      explicit: this.cfg['proxy.url'],
      fromEnvironment: this.cfg['proxy.fromEnvironment'],
      noProxy: this.cfg['proxy.noProxy'],
      env: deps.env ?? process.env,
      target: base,
    });
    // Fail at start, like the uplink, when the certificate files are unreadable.
    centerTlsOptions(this.cfg, 'RAP_CHANNEL', 'command channel');
    this.st = {
      url: this.url.origin + this.url.pathname,
      proxy: describeProxy(this.proxy),
      state: 'idle',
      connectedSince: null,
      lastError: null,
      consecutiveFailures: 0,
      nextAttemptAt: null,
      commandsReceived: 0,
      resultsSent: 0,
    };
  }

  status(): ChannelReport {
    return { ...this.st };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    if (this.pinger) clearInterval(this.pinger);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      ws.close(1001, 'rapd stopping');
      // A peer that does not answer the close must not hold up the stop.
      const bound = setTimeout(() => ws.terminate(), 1000);
      await closed;
      clearTimeout(bound);
    }
    this.st.state = 'stopped';
  }

  private connect(): void {
    if (!this.running) return;
    this.st.state = 'connecting';
    let tls;
    try {
      tls = centerTlsOptions(this.cfg, 'RAP_CHANNEL', 'command channel');
    } catch (e) {
      this.failed(e);
      return;
    }
    const timeoutMs = this.cfg['uplink.timeoutMs'];
    const ws = new WebSocket(this.url, {
      createConnection: centerConnector(this.url, this.proxy, tls, timeoutMs) as never,
      handshakeTimeout: timeoutMs,
      maxPayload: MAX_FRAME_BYTES,
      perMessageDeflate: false,
      followRedirects: false,
    });
    this.ws = ws;
    let opened = false;
    let alive = true;
    // The first error of this attempt says why; later ones ("closed before established") only follow from it.
    let attemptError: string | null = null;
    ws.on('open', () => {
      opened = true;
      this.st.state = 'connected';
      this.st.connectedSince = new Date(this.now()).toISOString();
      this.st.consecutiveFailures = 0;
      this.st.nextAttemptAt = null;
      this.log.info('command channel open', { url: this.st.url, proxy: this.st.proxy });
      const hello: HelloFrame = { t: 'hello', device: this.cfg['device.id'], version: RAPD_VERSION, auditHead: this.auditHead() };
      ws.send(JSON.stringify(hello));
      for (const r of this.outbox.splice(0)) this.send(r);
      this.pinger = setInterval(() => {
        if (!alive) {
          this.log.warn('command channel: no pong; reconnecting');
          ws.terminate();
          return;
        }
        alive = false;
        ws.ping();
      }, PING_EVERY_MS);
    });
    ws.on('pong', () => (alive = true));
    ws.on('ping', () => (alive = true));
    ws.on('message', (data, isBinary) => {
      alive = true;
      if (isBinary) return this.log.warn('command channel: binary frame ignored');
      this.onFrame(data.toString());
    });
    ws.on('unexpected-response', (_req, res) => {
      attemptError ??= `center answered ${res.statusCode} to the WebSocket upgrade`;
      res.resume();
      ws.terminate();
    });
    ws.on('error', (e) => {
      attemptError ??= errorMessage(e);
    });
    ws.on('close', (code) => {
      if (this.pinger) clearInterval(this.pinger);
      this.pinger = null;
      if (this.ws === ws) this.ws = null;
      this.st.connectedSince = null;
      if (!this.running) return;
      const why = attemptError ?? `closed (${code})`;
      if (opened) this.log.warn('command channel closed; reconnecting', { code, error: why });
      this.failed(new Error(why));
    });
  }

  private failed(e: unknown): void {
    this.st.consecutiveFailures++;
    this.st.lastError = errorMessage(e);
    const delay = backoffDelay(this.st.consecutiveFailures, this.cfg['commands.reconnectMaxMs'], this.random, null);
    this.st.state = 'backoff';
    this.st.nextAttemptAt = new Date(this.now() + delay).toISOString();
    if (this.st.consecutiveFailures <= 3 || this.st.consecutiveFailures % 10 === 0) {
      this.log.warn('command channel: cannot connect; will retry', { error: this.st.lastError, failures: this.st.consecutiveFailures, retryInMs: delay });
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  private onFrame(text: string): void {
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch (e) {
      this.log.warn('command channel: frame is not JSON; ignored', { error: errorMessage(e) });
      return;
    }
    const f = frame as { t?: unknown; command?: unknown } | null;
    if (f === null || typeof f !== 'object' || f.t !== 'command') {
      this.log.warn('command channel: unknown frame; ignored', { t: f?.t });
      return;
    }
    this.st.commandsReceived++;
    // Not awaited: each command runs on its own.
    const p = this.router.handle(f.command).then(
      (res) => this.send(res),
      (e: unknown) => this.log.error('command handling failed', { error: errorMessage(e) }),
    );
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private send(res: ResultFrame): void {
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(res));
      this.st.resultsSent++;
      return;
    }
    this.outbox.push(res);
    if (this.outbox.length > OUTBOX_MAX) this.outbox.shift();
  }
}
