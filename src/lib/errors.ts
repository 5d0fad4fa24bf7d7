// One error base for the whole code base. `code` is stable (tests, logs and
// the center match on it); `message` is for people; `context` carries the
// facts that explain it (argv, key, path...). Each layer may wrap an error with
// its own code and keep the original as `cause`.

export type RapErrorCode =
  | 'RAP_CONFIG'
  | 'RAP_CONFIG_READ'
  | 'RAP_STATE_DIR'
  | 'RAP_RUN'
  | 'RAP_RUN_MISSING'
  | 'RAP_NOTIFY'
  | 'RAP_CONTROL'
  | 'RAP_USAGE'
  | 'RAP_AGENT'
  | 'RAP_NET' | 'RAP_FIREWALL'
  | 'RAP_VPN' | 'RAP_SESSION'
  | 'RAP_UPLINK'
  | 'RAP_STORE' | 'RAP_STORE_FULL'
  | 'RAP_PROXY'
  | 'RAP_PROTOCOL'
  | 'RAP_CENTER' | 'RAP_PKI'
  | 'RAP_IMAGE'
  | 'RAP_HARDENING'
  | 'RAP_AUDIT'
  // Command channel and verification (docs/commands.md lists when each is used).
  | 'RAP_CHANNEL'
  | 'RAP_CMD_MALFORMED' | 'RAP_CMD_UNSIGNED' | 'RAP_CMD_UNKNOWN_KEY' | 'RAP_CMD_BAD_SIGNATURE' | 'RAP_CMD_WRONG_DEVICE'
  | 'RAP_CMD_NOT_YET_VALID' | 'RAP_CMD_EXPIRED' | 'RAP_CMD_LIFETIME' | 'RAP_CMD_REPLAYED' | 'RAP_CMD_UNKNOWN_TYPE' | 'RAP_CMD_FAILED'
  | 'RAP_PROVISION' | 'RAP_FLASH';

export class RapError extends Error {
  readonly code: RapErrorCode;
  readonly context: Record<string, unknown>;

  constructor(
    code: RapErrorCode,
    message: string,
    context: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RapError';
    this.code = code;
    this.context = context;
  }
}

export function isRapError(e: unknown, code?: RapErrorCode): e is RapError {
  return e instanceof RapError && (code === undefined || e.code === code);
}

/** "CODE: message" for a RapError (the code is what scripts and tests match), else the message. */
export function errorLine(e: unknown): string {
  return isRapError(e) ? `${e.code}: ${e.message}` : errorMessage(e);
}

/** The message of anything thrown, for one-line error reports. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
