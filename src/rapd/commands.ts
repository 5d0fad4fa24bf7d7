// Command verification and routing on the box. Nothing is trusted because it
// arrived over the mutually authenticated channel: every command must carry
// an Ed25519 signature by a center command key this box trusts
// (`commands.keys`), name this box, be inside its validity window and not
// have been seen before. The checks run in one fixed order (docs/commands.md)
// and every rejection has a stable code and an audit record.
//
// Replay memory: the id and nonce of every accepted command are kept until
// the command's expiry (plus the clock-skew allowance). It is durable
// because acceptance is: a command runs only after its `command.accepted`
// audit record (with id, nonce and expiry) is fsync'd, and at start rapd
// rebuilds the memory from those records (`rememberFromAudit`). A restart
// therefore does not reopen the window.

import { RapError, errorMessage, isRapError, type RapErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { AuditRecord } from '../protocol/audit.ts';
import { MalformedCommand, decodePublicKey, parseCommand, signatureValid, type ResultFrame, type SignedCommand } from '../protocol/commands.ts';
import type { AuditSink } from './audit.ts';

/** A command that passed every check (the contract with the session manager). */
export interface VerifiedCommand {
  id: string;
  type: string;
  deviceId: string;
  issuedAt: number;
  expiresAt: number;
  args: unknown;
  keyId: string;
}

export interface CommandResult {
  status: 'ok' | 'error';
  result?: unknown;
  error?: { code: string; message: string };
}

export type CommandHandler = (cmd: VerifiedCommand) => Promise<CommandResult>;

export interface TrustedKey {
  id: string;
  /** Ed25519 public key, base64 (32 bytes). */
  publicKey: string;
}

export interface VerifyPolicy {
  deviceId: string;
  /** Trusted center command keys by key id (more than one during a rotation). */
  keys: ReadonlyMap<string, Uint8Array>;
  /** Longest expiresAt - issuedAt accepted. */
  maxLifetimeMs: number;
  /** Allowance for the box's and the center's clocks disagreeing, both ways. */
  skewMs: number;
}

/** The trusted keys from config, decoded; throws RAP_CONFIG naming a bad one. */
export function trustedKeys(keys: readonly TrustedKey[]): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  keys.forEach((k, i) => {
    try {
      out.set(k.id, decodePublicKey(k.publicKey, `commands.keys[${i}].publicKey`));
    } catch (e) {
      throw new RapError('RAP_CONFIG', `config: ${errorMessage(e)}`, { key: `commands.keys[${i}]` }, { cause: e });
    }
  });
  return out;
}

/** Ids and nonces of accepted commands, each until its expiry (+ skew). */
export class ReplayMemory {
  private readonly ids = new Map<string, number>();
  private readonly nonces = new Map<string, number>();

  seen(id: string, nonce: string, now: number): boolean {
    this.prune(now);
    return this.ids.has(id) || this.nonces.has(nonce);
  }

  remember(id: string, nonce: string, until: number): void {
    this.ids.set(id, Math.max(until, this.ids.get(id) ?? 0));
    this.nonces.set(nonce, Math.max(until, this.nonces.get(nonce) ?? 0));
  }

  size(): number {
    return this.ids.size;
  }

  private prune(now: number): void {
    for (const m of [this.ids, this.nonces]) for (const [k, until] of m) if (until < now) m.delete(k);
  }
}

/**
 * Verify a received command; returns it, or throws a RapError whose code says
 * why (RAP_CMD_*). The order is part of the contract (docs/commands.md).
 * Does not remember the command: the caller does once it is accepted.
 */
export function verifyCommand(raw: unknown, policy: VerifyPolicy, now: number, replay: ReplayMemory): { cmd: VerifiedCommand; nonce: string } {
  let c: SignedCommand;
  try {
    c = parseCommand(raw);
  } catch (e) {
    if (e instanceof MalformedCommand) throw new RapError('RAP_CMD_MALFORMED', `malformed command: ${e.message}`);
    throw e;
  }
  const fail = (code: RapErrorCode, message: string): never => {
    throw new RapError(code, message, { id: c.id, type: c.type, keyId: c.keyId });
  };
  if (c.sig === undefined) fail('RAP_CMD_UNSIGNED', `command ${c.id}: not signed`);
  const key = policy.keys.get(c.keyId);
  if (!key) fail('RAP_CMD_UNKNOWN_KEY', `command ${c.id}: key '${c.keyId}' is not trusted (trusted: ${[...policy.keys.keys()].join(', ') || 'none'})`);
  if (!signatureValid(c, key!)) fail('RAP_CMD_BAD_SIGNATURE', `command ${c.id}: signature does not verify with key '${c.keyId}'`);
  if (c.deviceId !== policy.deviceId) fail('RAP_CMD_WRONG_DEVICE', `command ${c.id}: for device '${c.deviceId}', this is '${policy.deviceId}'`);
  if (c.issuedAt > now + policy.skewMs) {
    fail('RAP_CMD_NOT_YET_VALID', `command ${c.id}: issued ${c.issuedAt - now} ms in the future (allowed skew ${policy.skewMs} ms)`);
  }
  if (now > c.expiresAt + policy.skewMs) fail('RAP_CMD_EXPIRED', `command ${c.id}: expired ${now - c.expiresAt} ms ago (allowed skew ${policy.skewMs} ms)`);
  if (c.expiresAt - c.issuedAt > policy.maxLifetimeMs) {
    fail('RAP_CMD_LIFETIME', `command ${c.id}: valid for ${c.expiresAt - c.issuedAt} ms, longer than the ${policy.maxLifetimeMs} ms allowed`);
  }
  if (replay.seen(c.id, c.nonce, now)) fail('RAP_CMD_REPLAYED', `command ${c.id}: already received (same id or nonce)`);
  const { id, type, deviceId, issuedAt, expiresAt, args, keyId } = c;
  return { cmd: { id, type, deviceId, issuedAt, expiresAt, args, keyId }, nonce: c.nonce };
}

export interface RouterDeps {
  policy: VerifyPolicy;
  audit: AuditSink;
  log: Logger;
  now?: () => number;
}

/** A readable id of a command that failed verification, for the result frame (may be forged). */
function claimedId(raw: unknown): string {
  const id = (raw as { id?: unknown } | null)?.id;
  return typeof id === 'string' && id.length <= 128 ? id : '';
}

export class CommandRouter {
  private readonly policy: VerifyPolicy;
  private readonly audit: AuditSink;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly handlers = new Map<string, CommandHandler>();
  readonly replay = new ReplayMemory();
  private readonly counts = { accepted: 0, rejected: 0, inFlight: 0 };

  constructor(deps: RouterDeps) {
    this.policy = deps.policy;
    this.audit = deps.audit;
    this.log = deps.log.child({ part: 'commands' });
    this.now = deps.now ?? Date.now;
  }

  register(type: string, handler: CommandHandler): void {
    if (this.handlers.has(type)) throw new RapError('RAP_CHANNEL', `command type '${type}' has a handler already`);
    this.handlers.set(type, handler);
  }

  types(): string[] {
    return [...this.handlers.keys()].sort();
  }

  stats(): { accepted: number; rejected: number; inFlight: number; remembered: number } {
    return { ...this.counts, remembered: this.replay.size() };
  }

  /** Feed the replay memory from an audit record read at start. */
  rememberFromAudit(r: AuditRecord): void {
    if (r.action !== 'command.accepted') return;
    const { id, nonce, expiresAt } = r.details as { id?: unknown; nonce?: unknown; expiresAt?: unknown };
    if (typeof id !== 'string' || typeof nonce !== 'string' || typeof expiresAt !== 'number') return;
    this.replay.remember(id, nonce, expiresAt + this.policy.skewMs);
  }

  /**
   * Verify, audit and run one received command; resolves with the frame to
   * send back. Never rejects. Several may run at once (a session open waits
   * minutes for consent).
   */
  async handle(raw: unknown): Promise<ResultFrame> {
    const now = this.now();
    let verified: { cmd: VerifiedCommand; nonce: string };
    try {
      verified = verifyCommand(raw, this.policy, now, this.replay);
      if (!this.handlers.has(verified.cmd.type)) {
        const { id, type, keyId } = verified.cmd;
        throw new RapError('RAP_CMD_UNKNOWN_TYPE', `command ${id}: no handler for type '${type}' (known: ${this.types().join(', ')})`, { id, type, keyId });
      }
    } catch (e) {
      if (!isRapError(e) || !e.code.startsWith('RAP_CMD_')) throw e;
      return this.reject(raw, e);
    }
    const { cmd, nonce } = verified;
    // Remember before the first await: a copy arriving meanwhile is a replay.
    this.replay.remember(cmd.id, nonce, cmd.expiresAt + this.policy.skewMs);
    const actor = `center:${cmd.keyId}`;
    try {
      await this.audit.append({
        actor,
        action: 'command.accepted',
        outcome: 'ok',
        details: { id: cmd.id, type: cmd.type, keyId: cmd.keyId, nonce, issuedAt: cmd.issuedAt, expiresAt: cmd.expiresAt, args: cmd.args },
      });
    } catch (e) {
      // Not recorded, not run: an action without its audit record must not happen.
      this.log.error('command not run: audit record failed', { id: cmd.id, error: errorMessage(e) });
      return { t: 'result', id: cmd.id, status: 'error', error: { code: 'RAP_AUDIT', message: `not run: ${errorMessage(e)}` } };
    }
    this.counts.accepted++;
    this.counts.inFlight++;
    let res: CommandResult;
    try {
      res = await this.handlers.get(cmd.type)!(cmd);
    } catch (e) {
      res = { status: 'error', error: { code: isRapError(e) ? e.code : 'RAP_CMD_FAILED', message: errorMessage(e) } };
    } finally {
      this.counts.inFlight--;
    }
    this.log.info('command done', { id: cmd.id, type: cmd.type, status: res.status, error: res.error?.code });
    await this.audit
      .append({ actor, action: 'command.completed', outcome: res.status, details: { id: cmd.id, type: cmd.type, ...(res.error ? { error: res.error } : {}) } })
      .catch((e: unknown) => this.log.error('audit record of a command result failed', { id: cmd.id, error: errorMessage(e) }));
    const frame: ResultFrame = { t: 'result', id: cmd.id, status: res.status };
    if (res.result !== undefined) frame.result = res.result;
    if (res.error) frame.error = res.error;
    return frame;
  }

  private async reject(raw: unknown, e: RapError): Promise<ResultFrame> {
    this.counts.rejected++;
    const id = claimedId(raw);
    const ctx = e.context as { type?: string; keyId?: string };
    this.log.warn('command rejected', { id, code: e.code, reason: e.message });
    // The claimed key id is unauthenticated for some rejections; the details say which check failed.
    await this.audit
      .append({
        actor: `center:${ctx.keyId ?? 'unknown'}`,
        action: 'command.rejected',
        outcome: 'rejected',
        details: { id, ...(ctx.type ? { type: ctx.type } : {}), code: e.code, reason: e.message },
      })
      .catch((err: unknown) => this.log.error('audit record of a rejection failed', { id, error: errorMessage(err) }));
    return { t: 'result', id, status: 'rejected', error: { code: e.code, message: e.message } };
  }
}

/**
 * The built-in commands that prove the path: `ping` echoes its args;
 * `audit.head` answers the audit chain's head and the anchor that reached
 * the store (the center compares them with its own copy).
 */
export function registerBuiltins(router: CommandRouter, audit: { headNow(): unknown }, anchor: () => unknown, now: () => number = Date.now): void {
  router.register('ping', async (cmd) => ({ status: 'ok', result: { pong: cmd.args, at: now() } }));
  router.register('audit.head', async () => ({ status: 'ok', result: { head: audit.headNow(), anchor: anchor() } }));
}
