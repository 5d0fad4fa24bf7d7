// The uplink: forwards stored messages to rap-center as gzip'd JSON batches
// over HTTPS POST with mutual TLS, through an HTTP CONNECT or SOCKS5 proxy
// when the site has one. A message leaves the store only when the center
// answered 200 for the batch that carried it; the center de-duplicates by
// message id, so a batch re-sent after a lost answer is stored once.
//
// When to send: at once when an alarm is queued; otherwise when a batch is
// full or the oldest routine message has waited `uplink.batchMaxDelayMs`.
// On failure: exponential backoff with full jitter (1 s .. backoffMaxMs),
// Retry-After honoured up to the same bound. The store interleaves backlog
// and live messages in each batch, so a live message never waits behind days
// of backlog.

import { Agent, request, type AgentOptions } from 'node:https';
import { type Socket } from 'node:net';
import { gzipSync } from 'node:zlib';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { describeProxy, resolveProxy, type ProxySpec } from '../lib/proxy.ts';
import type { UplinkReport } from '../protocol/control.ts';
import { TELEMETRY_PATH, type TelemetryAck, type TelemetryBatch, type TelemetryMessage } from '../protocol/telemetry.ts';
import type { Config } from './config.ts';
import { centerConnector, centerTlsOptions } from './centerlink.ts';

const BACKOFF_MIN_MS = 1000;

export interface UplinkStore {
  nextBatch(opts: { maxMessages: number; maxBytes: number }): TelemetryMessage[];
  ack(ids: readonly string[]): void;
  count(): { alarm: number; routine: number };
  oldestRoutineAgeMs(): number | null;
  onAppend(listener: (m: TelemetryMessage) => void): () => void;
}

/** The uplink's part of `rapctl status` (defined once, in the control protocol). */
export type UplinkStatus = UplinkReport;

export interface UplinkDeps {
  config: Config;
  store: UplinkStore;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  now?: () => number;
  random?: () => number;
}

/** Delay before the next try: full jitter over an exponential ceiling, or Retry-After. */
export function backoffDelay(failures: number, maxMs: number, random: () => number, retryAfterMs: number | null): number {
  if (retryAfterMs !== null) return Math.min(Math.max(retryAfterMs, 0), maxMs);
  const ceiling = Math.min(maxMs, BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 30));
  return Math.max(BACKOFF_MIN_MS / 2, Math.floor(random() * ceiling));
}

/** Retry-After is seconds or an HTTP date (RFC 9110 10.2.3). */
export function parseRetryAfter(value: string | undefined, now: number): number | null {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : Math.max(0, t - now);
}

class HttpError extends Error {
  readonly status: number;
  readonly retryAfterMs: number | null;
  constructor(status: number, message: string, retryAfterMs: number | null) {
    super(message);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

export class Uplink {
  private readonly cfg: Config;
  private readonly store: UplinkStore;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly target: URL;
  private readonly proxy: ProxySpec | null;
  private readonly agent: Agent;
  private readonly sockets = new Set<Socket>();
  private closedWireBytes = 0;
  private running = false;
  private wake: (() => void) | null = null;
  private unsubscribe: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private readonly st: UplinkStatus;

  constructor(deps: UplinkDeps) {
    this.cfg = deps.config;
    this.store = deps.store;
    this.log = deps.log.child({ part: 'uplink' });
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.target = new URL(TELEMETRY_PATH, this.cfg['center.url']);
    this.proxy = resolveProxy({
      explicit: this.cfg['proxy.url'],
      fromEnvironment: this.cfg['proxy.fromEnvironment'],
      noProxy: this.cfg['proxy.noProxy'],
      env: deps.env ?? process.env,
      target: this.target,
    });
    const tlsOptions = centerTlsOptions(this.cfg, 'RAP_UPLINK', 'uplink');
    // TCP keep-alive probes after a minute of silence, not every second
    // (Node's default): idle wire traffic is a cost on metered site links.
    const agentOptions: AgentOptions = { keepAlive: true, keepAliveMsecs: 60_000, maxSockets: 1, ...tlsOptions };
    this.agent = new Agent(agentOptions);
    // Every connection goes through the proxy door (or direct), then TLS.
    (this.agent as unknown as { createConnection: unknown }).createConnection = centerConnector(
      this.target,
      this.proxy,
      tlsOptions,
      this.cfg['uplink.timeoutMs'],
      (raw) => this.track(raw),
    );
    this.st = {
      center: this.target.origin,
      proxy: describeProxy(this.proxy),
      state: 'idle',
      lastSuccessAt: null,
      lastError: null,
      consecutiveFailures: 0,
      nextAttemptAt: null,
      sentBatches: 0,
      sentMessages: 0,
      duplicatesAtCenter: 0,
      rejectedByCenter: 0,
      wireBytes: 0,
    };
  }

  private track(raw: Socket): void {
    this.sockets.add(raw);
    raw.once('close', () => {
      this.closedWireBytes += raw.bytesRead + raw.bytesWritten;
      this.sockets.delete(raw);
    });
  }

  private wireBytes(): number {
    let live = 0;
    for (const s of this.sockets) live += s.bytesRead + s.bytesWritten;
    return this.closedWireBytes + live;
  }

  status(): UplinkStatus {
    return { ...this.st, wireBytes: this.wireBytes() };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.unsubscribe = this.store.onAppend((m) => {
      // Alarms skip the batching delay; a full batch goes at once too. An
      // idle loop sleeps with no deadline, so the first message after idle
      // must wake it to start the batching clock (regression: a routine
      // message arriving just after the queue emptied waited an hour).
      if (m.kind === 'alarm' || this.st.state === 'idle' || this.store.count().routine >= this.cfg['uplink.batchMaxMessages']) {
        this.poke();
      }
    });
    this.log.info('uplink started', { center: this.st.center, proxy: this.st.proxy });
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.unsubscribe?.();
    this.poke();
    await this.loopDone;
    this.agent.destroy();
    this.st.state = 'stopped';
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** How long until a batch should go (0 = now), or null when nothing is queued. */
  private dueInMs(): number | null {
    const c = this.store.count();
    if (c.alarm > 0 || c.routine >= this.cfg['uplink.batchMaxMessages']) return 0;
    const age = this.store.oldestRoutineAgeMs();
    if (age === null) return null;
    return Math.max(0, this.cfg['uplink.batchMaxDelayMs'] - age);
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const due = this.dueInMs();
      if (due === null || due > 0) {
        this.st.state = due === null ? 'idle' : 'waiting';
        await this.sleep(due ?? 3_600_000);
        continue;
      }
      const batch = this.store.nextBatch({ maxMessages: this.cfg['uplink.batchMaxMessages'], maxBytes: this.cfg['uplink.batchMaxBytes'] });
      if (batch.length === 0) continue;
      this.st.state = 'sending';
      try {
        await this.deliver(batch);
        this.st.consecutiveFailures = 0;
        this.st.lastSuccessAt = new Date(this.now()).toISOString();
        this.st.nextAttemptAt = null;
      } catch (e) {
        this.st.consecutiveFailures++;
        this.st.lastError = errorMessage(e);
        const retryAfter = e instanceof HttpError ? e.retryAfterMs : null;
        const delay = backoffDelay(this.st.consecutiveFailures, this.cfg['uplink.backoffMaxMs'], this.random, retryAfter);
        this.st.nextAttemptAt = new Date(this.now() + delay).toISOString();
        this.st.state = 'backoff';
        this.log.warn('uplink failed; will retry', { error: this.st.lastError, failures: this.st.consecutiveFailures, retryInMs: delay });
        await this.sleep(delay);
      }
    }
  }

  /** Send a batch; a 400 for a multi-message batch is retried message by message to isolate the bad one. */
  private async deliver(batch: TelemetryMessage[]): Promise<void> {
    try {
      await this.post(batch);
    } catch (e) {
      if (!(e instanceof HttpError) || e.status !== 400) throw e;
      // Only a refusal that names the message itself ("messages[0]...") is
      // about that message; anything else (device id, envelope) is ours to
      // fix, and dropping would lose data: retry with backoff instead.
      if (batch.length === 1) {
        if (!/"?messages\[0\]/.test(e.message)) throw e;
        // The center refused this message as malformed: retrying cannot help.
        this.st.rejectedByCenter++;
        this.log.error('center rejected a message; dropping it', { id: batch[0]!.id, error: e.message });
        this.store.ack([batch[0]!.id]);
        return;
      }
      if (!/messages\[\d+\]/.test(e.message)) throw e;
      for (const m of batch) await this.deliver([m]);
    }
  }

  private post(messages: TelemetryMessage[]): Promise<void> {
    const batch: TelemetryBatch = { device: this.cfg['device.id'], sentAt: new Date(this.now()).toISOString(), messages };
    const body = gzipSync(JSON.stringify(batch));
    return new Promise((resolve, reject) => {
      const req = request(
        this.target,
        {
          method: 'POST',
          agent: this.agent,
          headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': body.length },
          timeout: this.cfg['uplink.timeoutMs'],
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8').slice(0, 2000);
            if (res.statusCode !== 200) {
              const retryAfter = parseRetryAfter(res.headers['retry-after'] as string | undefined, this.now());
              return reject(new HttpError(res.statusCode ?? 0, `center answered ${res.statusCode}: ${text}`, retryAfter));
            }
            let ack: TelemetryAck;
            try {
              ack = JSON.parse(text) as TelemetryAck;
            } catch {
              return reject(new RapError('RAP_UPLINK', `center answered 200 with an unreadable body: ${JSON.stringify(text.slice(0, 200))}`));
            }
            // Durable delete only now: the center has them.
            this.store.ack(messages.map((m) => m.id));
            this.st.sentBatches++;
            this.st.sentMessages += messages.length;
            this.st.duplicatesAtCenter += ack.duplicates ?? 0;
            resolve();
          });
        },
      );
      req.on('timeout', () => req.destroy(new RapError('RAP_UPLINK', `no answer from ${this.target.origin} within ${this.cfg['uplink.timeoutMs']} ms`)));
      req.on('error', (e) => reject(e));
      req.end(body);
    });
  }
}
