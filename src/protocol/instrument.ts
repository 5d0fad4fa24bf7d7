// The local instrument protocol (docs/instrument-protocol.md): newline-
// delimited JSON over TCP between an instrument and its port agent on the box.
// Shared by the agent (rapd), the reference simulator and the tests, so the
// spec, the box and the simulator cannot drift apart.
//
// Everything an instrument sends is untrusted input on a medical network:
// every parse failure is a ProtocolError with a stable code and a message that
// names the field, never some other exception, and memory per connection is
// bounded before a line is complete (LineSplitter).

export const MAX_FRAME_BYTES = 65536;
export const PROTOCOL_VERSION = 1;
/**
 * Nesting limit for `data` objects. JSON.parse accepts any depth, but the box
 * later re-serializes the message with JSON.stringify, which is recursive and
 * overflows the stack on a 64 KiB line of "[[[[...": refuse it at the door.
 */
export const MAX_DATA_DEPTH = 32;
const MAX_ID_CHARS = 64;
const MAX_ALARM_TEXT_CHARS = 4096;
const MAX_ERROR_MESSAGE_CHARS = 4096;

export const ALARM_SEVERITIES = ['critical', 'major', 'minor', 'warning'] as const;
export type AlarmSeverity = (typeof ALARM_SEVERITIES)[number];

export type InstrumentFrame =
  | { type: 'hello'; ref: string; protocol: 1; serial: string; model: string; swVersion: string }
  | { type: 'status'; ref: string; time: string | null; data: Record<string, unknown> }
  | {
      type: 'alarm';
      ref: string;
      time: string | null;
      code: string;
      severity: AlarmSeverity;
      text: string;
      data: Record<string, unknown>;
    }
  | { type: 'heartbeat'; ref: string }
  | { type: 'bye'; ref: string }
  | { type: 'consent'; ref: string; session: string; answer: ConsentAnswer }
  | { type: 'session-end'; ref: string; session: string }
  | { type: 'consent-clear'; ref: string };

export const INSTRUMENT_FRAME_TYPES = ['hello', 'status', 'alarm', 'heartbeat', 'bye', 'consent', 'session-end', 'consent-clear'] as const;
export const BOX_FRAME_TYPES = ['ack', 'error', 'poll', 'consent-request', 'session-ended'] as const;

/**
 * The user's answer to a consent request. never: this instrument refuses
 * every later request from the same requester (`who`) until its user sends
 * `consent-clear` (docs/instrument-protocol.md 5.4).
 */
export const CONSENT_ANSWERS = ['yes', 'no', 'never'] as const;
export type ConsentAnswer = (typeof CONSENT_ANSWERS)[number];
/** Most service ports one session may open, and the longest texts shown in a prompt. */
export const MAX_SESSION_SERVICES = 8;
export const MAX_WHO_CHARS = 128;
export const MAX_WHY_CHARS = 1024;
export const MAX_REASON_CHARS = 256;

export interface ConsentRequestFrame {
  type: 'consent-request';
  ref: string;
  /** Session id (a UUID): the answer and a later session-end name it. */
  session: string;
  /** Who asks (service engineer, as the center names them). */
  who: string;
  /** Why (free text for the user at the instrument). */
  why: string;
  /** TCP ports on the instrument the session would reach. */
  services: number[];
  /** Longest the session may last once approved. */
  maxDurationS: number;
  /** No answer by then means denied. */
  answerBy: string;
}

export const PROTOCOL_ERROR_CODES = [
  'BAD_FRAME',
  'TOO_LARGE',
  'UNKNOWN_TYPE',
  'NOT_IDENTIFIED',
  'STORE_FULL',
  'TIMEOUT',
  'BUSY',
  'NO_SESSION',
] as const;
export type ProtocolErrorCode = (typeof PROTOCOL_ERROR_CODES)[number];

export type BoxFrame =
  | { type: 'ack'; ref: string; id: string | null }
  | { type: 'error'; ref: string | null; code: ProtocolErrorCode; message: string }
  | { type: 'poll'; ref: string }
  | ConsentRequestFrame
  | { type: 'session-ended'; ref: string; session: string; reason: string };

/**
 * A frame or a line that breaks the protocol. `code` is what goes into the
 * error frame; `ref` is the offending frame's ref when it could be read, so the
 * instrument can tell which of its pipelined frames was refused.
 */
export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly ref: string | null;

  constructor(code: ProtocolErrorCode, message: string, ref: string | null = null) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
    this.ref = ref;
  }
}

// --- field checks -----------------------------------------------------------

type Doc = Record<string, unknown>;

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n)}...`;
}

function isObject(v: unknown): v is Doc {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// Identifiers (ref, serial, alarm code) are printable ASCII: they end up in
// logs, file names and the center's search box, where control characters and
// look-alike letters do harm.
const PRINTABLE_ASCII = /^[\x20-\x7e]{1,64}$/;
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function isRef(v: unknown): v is string {
  return typeof v === 'string' && PRINTABLE_ASCII.test(v);
}

/** 1-64 code points, no control characters (model names, software versions). */
function isLabel(v: unknown): v is string {
  if (typeof v !== 'string' || CONTROL_CHARS.test(v)) return false;
  const n = codePoints(v);
  return n >= 1 && n <= MAX_ID_CHARS;
}

/** Length in characters (code points), as a vendor would count them, not UTF-16 units. */
function codePoints(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

// ISO 8601 extended date-time as in RFC 3339, except that the UTC offset may be
// left out (an instrument that only knows its local wall clock). Kept as sent.
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|[+-](\d{2}):(\d{2}))?$/;

/** True when `s` is a date-time the protocol accepts (see docs/instrument-protocol.md). */
export function isProtocolTime(s: string): boolean {
  const m = DATE_TIME.exec(s);
  if (!m) return false;
  // Fields by hand, not slice().map(): this runs for every frame a box receives.
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  const hour = Number(m[4]);
  const minute = Number(m[5]);
  const second = Number(m[6]);
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return false;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;
  if (day < 1 || day > days) return false;
  if (m[7] !== undefined && (Number(m[7]) > 23 || Number(m[8]) > 59)) return false;
  return true;
}

/**
 * The first problem inside a data object (too deep, a number JSON.parse turned
 * into Infinity), as [path, problem], or null. Iterative over a bounded depth,
 * so it cannot overflow the stack itself. Paths are only built on the second
 * pass, once something is wrong: the first one runs for every frame.
 */
function dataProblem(root: Doc, path: string): [string, string] | null {
  return walk(root, null) ? walk(root, path) : null;
}

function walk(root: Doc, path: null): true | null;
function walk(root: Doc, path: string): [string, string] | null;
function walk(root: Doc, path: string | null): [string, string] | true | null {
  const stack: [unknown, string, number][] = [[root, path ?? '', 1]];
  while (stack.length > 0) {
    const [v, p, depth] = stack.pop()!;
    if (typeof v === 'number' && !Number.isFinite(v)) return path === null ? true : [p, 'number out of range'];
    if (v === null || typeof v !== 'object') continue;
    if (depth > MAX_DATA_DEPTH) return path === null ? true : [path, `nested deeper than ${MAX_DATA_DEPTH} levels`];
    // Keys are clipped so that an error message stays short whatever was sent.
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push([v[i], path === null ? '' : `${p}[${i}]`, depth + 1]);
    } else {
      for (const k of Object.keys(v)) stack.push([(v as Doc)[k], path === null ? '' : `${p}.${clip(k, 32)}`, depth + 1]);
    }
  }
  return null;
}

/** Reads fields of one frame; every failure names `<type>.<field>`. */
class Fields {
  readonly doc: Doc;
  readonly type: string;
  readonly ref: string | null;

  constructor(doc: Doc, type: string, ref: string | null) {
    this.doc = doc;
    this.type = type;
    this.ref = ref;
  }

  fail(field: string, problem: string): never {
    throw new ProtocolError('BAD_FRAME', `${this.type}.${field}: ${problem}`, this.ref);
  }

  /** The value, or a "missing" failure when absent (null counts as present). */
  required(field: string): unknown {
    if (!Object.hasOwn(this.doc, field) || this.doc[field] === undefined) this.fail(field, 'missing');
    return this.doc[field];
  }

  refField(): string {
    const v = this.required('ref');
    if (!isRef(v)) this.fail('ref', 'expected 1-64 printable ASCII characters');
    return v;
  }

  ascii(field: string): string {
    const v = this.required(field);
    if (!isRef(v)) this.fail(field, 'expected 1-64 printable ASCII characters');
    return v;
  }

  label(field: string): string {
    const v = this.required(field);
    if (!isLabel(v)) this.fail(field, 'expected 1-64 characters, no control characters');
    return v;
  }

  session(): string {
    const v = this.required('session');
    if (typeof v !== 'string' || !UUID.test(v)) this.fail('session', 'expected a session id (UUID)');
    return v;
  }

  text(field: string, max: number, min = 0): string {
    const v = this.required(field);
    if (typeof v !== 'string' || CONTROL_CHARS.test(v) || codePoints(v) < min || codePoints(v) > max) {
      this.fail(field, `expected ${min}-${max} characters, no control characters`);
    }
    return v;
  }

  time(): string | null {
    const v = this.doc['time'];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string' || !isProtocolTime(v)) {
      this.fail('time', 'expected an ISO 8601 date-time such as 2026-11-23T14:05:09.250Z');
    }
    return v;
  }

  data(optional: boolean): Record<string, unknown> {
    const v = optional ? (this.doc['data'] ?? {}) : this.required('data');
    if (!isObject(v)) this.fail('data', 'expected a JSON object');
    const problem = dataProblem(v, 'data');
    if (problem) this.fail(problem[0], problem[1]);
    return v;
  }
}

function parseDoc(line: string): Doc {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (e) {
    throw new ProtocolError('BAD_FRAME', `frame is not valid JSON: ${clip((e as Error).message, 200)}`);
  }
  if (!isObject(doc)) throw new ProtocolError('BAD_FRAME', 'frame: expected a JSON object');
  return doc;
}

/**
 * The frame type, after checking it is one of `known`. The ref is recovered
 * first so that even an unknown type can be answered with it.
 */
function frameType<T extends string>(doc: Doc, known: readonly T[]): { type: T; ref: string | null } {
  const ref = isRef(doc['ref']) ? doc['ref'] : null;
  const type = doc['type'];
  if (type === undefined) throw new ProtocolError('BAD_FRAME', 'type: missing', ref);
  if (typeof type !== 'string') throw new ProtocolError('BAD_FRAME', 'type: expected a string', ref);
  if (!(known as readonly string[]).includes(type)) {
    throw new ProtocolError(
      'UNKNOWN_TYPE',
      `type: unknown frame type ${JSON.stringify(clip(type, 64))} (known: ${known.join(', ')})`,
      ref,
    );
  }
  return { type: type as T, ref };
}

// --- instrument -> box ------------------------------------------------------

/**
 * Parse one line (without its terminator) from an instrument. Unknown fields
 * are ignored so later instruments can add some; wrong types are errors.
 * Throws ProtocolError (BAD_FRAME or UNKNOWN_TYPE) and nothing else.
 */
export function parseInstrumentFrame(line: string): InstrumentFrame {
  const doc = parseDoc(line);
  const { type, ref: maybeRef } = frameType(doc, INSTRUMENT_FRAME_TYPES);
  const f: Fields = new Fields(doc, type, maybeRef);
  const ref = f.refField();
  switch (type) {
    case 'hello': {
      const protocol = f.required('protocol');
      if (typeof protocol !== 'number') f.fail('protocol', `expected the number ${PROTOCOL_VERSION}`);
      if (protocol !== PROTOCOL_VERSION) {
        f.fail('protocol', `unsupported version ${protocol} (this box speaks ${PROTOCOL_VERSION})`);
      }
      return {
        type,
        ref,
        protocol: PROTOCOL_VERSION,
        serial: f.ascii('serial'),
        model: f.label('model'),
        swVersion: f.label('swVersion'),
      };
    }
    case 'status':
      return { type, ref, time: f.time(), data: f.data(false) };
    case 'alarm': {
      const time = f.time();
      const code = f.ascii('code');
      const severity = f.required('severity');
      if (typeof severity !== 'string' || !(ALARM_SEVERITIES as readonly string[]).includes(severity)) {
        f.fail('severity', `expected one of ${ALARM_SEVERITIES.join(', ')}`);
      }
      const text = f.required('text');
      if (typeof text !== 'string' || codePoints(text) > MAX_ALARM_TEXT_CHARS) {
        f.fail('text', `expected a string of at most ${MAX_ALARM_TEXT_CHARS} characters`);
      }
      return { type, ref, time, code, severity: severity as AlarmSeverity, text, data: f.data(true) };
    }
    case 'heartbeat':
    case 'bye':
    case 'consent-clear':
      return { type, ref };
    case 'consent': {
      const session = f.session();
      const answer = f.required('answer');
      if (typeof answer !== 'string' || !(CONSENT_ANSWERS as readonly string[]).includes(answer)) {
        f.fail('answer', `expected one of ${CONSENT_ANSWERS.join(', ')}`);
      }
      return { type, ref, session, answer: answer as ConsentAnswer };
    }
    case 'session-end':
      return { type, ref, session: f.session() };
  }
}

// --- box -> instrument ------------------------------------------------------

/** Parse one line from the box (the simulator's side). Throws ProtocolError. */
export function parseBoxFrame(line: string): BoxFrame {
  const doc = parseDoc(line);
  const { type, ref: maybeRef } = frameType(doc, BOX_FRAME_TYPES);
  const f: Fields = new Fields(doc, type, maybeRef);
  switch (type) {
    case 'ack': {
      const ref = f.refField();
      const id = f.required('id');
      if (id !== null && (typeof id !== 'string' || !UUID.test(id))) f.fail('id', 'expected a UUID or null');
      return { type, ref, id };
    }
    case 'error': {
      const ref = f.required('ref');
      if (ref !== null && !isRef(ref)) f.fail('ref', 'expected 1-64 printable ASCII characters or null');
      const code = f.required('code');
      if (typeof code !== 'string' || !(PROTOCOL_ERROR_CODES as readonly string[]).includes(code)) {
        f.fail('code', `expected one of ${PROTOCOL_ERROR_CODES.join(', ')}`);
      }
      const message = f.required('message');
      if (typeof message !== 'string' || message.length > MAX_ERROR_MESSAGE_CHARS) {
        f.fail('message', `expected a string of at most ${MAX_ERROR_MESSAGE_CHARS} characters`);
      }
      return { type, ref, code: code as ProtocolErrorCode, message };
    }
    case 'poll':
      return { type, ref: f.refField() };
    case 'consent-request': {
      const ref = f.refField();
      const session = f.session();
      const who = f.text('who', MAX_WHO_CHARS, 1);
      const why = f.text('why', MAX_WHY_CHARS);
      const services = f.required('services');
      if (
        !Array.isArray(services) || services.length < 1 || services.length > MAX_SESSION_SERVICES ||
        !services.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)
      ) {
        f.fail('services', `expected 1-${MAX_SESSION_SERVICES} TCP ports (1-65535)`);
      }
      const maxDurationS = f.required('maxDurationS');
      if (typeof maxDurationS !== 'number' || !Number.isInteger(maxDurationS) || maxDurationS < 1) {
        f.fail('maxDurationS', 'expected a whole number of seconds >= 1');
      }
      const answerBy = f.required('answerBy');
      if (typeof answerBy !== 'string' || !isProtocolTime(answerBy)) f.fail('answerBy', 'expected an ISO 8601 date-time');
      return { type, ref, session, who, why, services: services as number[], maxDurationS, answerBy };
    }
    case 'session-ended':
      return { type, ref: f.refField(), session: f.session(), reason: f.text('reason', MAX_REASON_CHARS, 1) };
  }
}

/**
 * One frame as a line: JSON plus '\n'. JSON.stringify escapes every newline
 * and lone surrogate, so the result is always exactly one valid UTF-8 line.
 */
export function encodeFrame(f: InstrumentFrame | BoxFrame): string {
  return `${JSON.stringify(f)}\n`;
}

// --- framing ----------------------------------------------------------------

const LF = 0x0a;
const CR = 0x0d;

/**
 * Splits a byte stream into lines with bounded memory. A line longer than
 * `maxBytes` (not counting its "\n" or "\r\n") throws TOO_LARGE as soon as the
 * buffered part exceeds the bound, so a peer that never sends "\n" cannot make
 * us hold more than maxBytes + one chunk. After that the stream has no
 * framing left: every later push throws again.
 *
 * Lines are decoded as UTF-8 (invalid sequences become U+FFFD); empty lines
 * are returned as "" and left to the caller to skip.
 *
 * For the slow-sender limit: `pending` is true while a partial line is
 * buffered; a new partial line starts whenever push() returned lines and
 * `pending` is still true.
 */
export class LineSplitter {
  private readonly maxBytes: number;
  private parts: Buffer[] = [];
  private size = 0;
  private broken: ProtocolError | null = null;

  constructor(maxBytes: number = MAX_FRAME_BYTES) {
    this.maxBytes = maxBytes;
  }

  get pending(): boolean {
    return this.size > 0;
  }

  push(chunk: Buffer): string[] {
    if (this.broken) throw this.broken;
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(LF, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      const line = this.parts.length === 0 ? piece : Buffer.concat([...this.parts, piece], this.size + piece.length);
      this.parts = [];
      this.size = 0;
      const end = line.length > 0 && line[line.length - 1] === CR ? line.length - 1 : line.length;
      if (end > this.maxBytes) this.fail();
      lines.push(line.toString('utf8', 0, end));
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      const size = this.size + rest.length;
      // One byte of slack: a full-size line whose "\r" arrived but whose "\n" did not yet.
      if (size > this.maxBytes && !(size === this.maxBytes + 1 && rest[rest.length - 1] === CR)) this.fail();
      // Copy: a subarray would keep the whole (possibly large) chunk alive.
      this.parts.push(Buffer.from(rest));
      this.size = size;
    }
    return lines;
  }

  private fail(): never {
    this.parts = [];
    this.size = 0;
    this.broken = new ProtocolError('TOO_LARGE', `line longer than ${this.maxBytes} bytes`);
    throw this.broken;
  }
}
