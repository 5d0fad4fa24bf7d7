// rap-center's HTTPS endpoint: the server side of src/protocol/telemetry.ts.
//
// Boxes authenticate with a client certificate from the device CA; the TLS
// layer refuses anyone else before HTTP starts. A batch is then accepted only
// for the device named by the certificate's CN, validated whole, and stored in
// one transaction before the 200 goes out (the box deletes its copy on 200).

import { TLS_POLICY } from '../protocol/tls.ts';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createGunzip } from 'node:zlib';
import { RapError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { TELEMETRY_PATH, type TelemetryAck } from '../protocol/telemetry.ts';
import { validateBatch } from './batch.ts';
import { openCenterDb, type CenterDb } from './db.ts';
import { WebSocketServer } from 'ws';
import { COMMANDS_PATH, MAX_FRAME_BYTES } from '../protocol/commands.ts';
import { CommandHub, type SigningKey } from './commands.ts';

export const HEALTH_PATH = '/v1/health';

/**
 * FIPS 140-approved suites only: ECDHE key exchange, AES-GCM, SHA-2 (the same
 * list rapd's uplink offers). No CBC, no ChaCha20, no RSA key exchange.
 */
/** The shared TLS policy (src/protocol/tls.ts), re-exported for the center's tests. */
export const CENTER_TLS = TLS_POLICY;

/** Most bytes of a batch, compressed on the wire or after gunzip. Past it: 413. */
export const MAX_BODY_BYTES = 64 * 1024 * 1024;

/** Test-only: answer the next `count` telemetry POSTs with `status` (and Retry-After). */
export interface Fault {
  status: number;
  retryAfterSec?: number;
  count: number;
}

export interface CenterOptions {
  dbPath: string;
  host: string;
  /** 0: any free port (see the returned `port`). */
  port: number;
  key: string | Buffer;
  cert: string | Buffer;
  /** The device CA: client certificates must chain to it. */
  ca: string | Buffer;
  log: Logger;
  /** Not reachable over the wire: only the process that started the server can set it. */
  faults?: Fault;
  now?: () => Date;
  /** The key commands are signed with (null/absent: the channel accepts boxes but cannot send). */
  commandKey?: SigningKey | null;
}

export interface Center {
  port: number;
  /** The command channel: connected boxes, sign-and-send, results. */
  commands: CommandHub;
  /** Read access to the center's database (audit chains, commands) for the CLI and tests. */
  db: CenterDb;
  /** Replace the fault switch (null: off). */
  setFault(fault: Fault | null): void;
  close(): Promise<void>;
}

class HttpFail extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The request body, gunzipped when so declared, bounded both before and after. */
function readBody(req: IncomingMessage, gzip: boolean, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new HttpFail(413, `body: larger than ${limit} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let raw = 0;
    let size = 0;
    let settled = false;
    const gunzip = gzip ? createGunzip() : null;
    const fail = (e: HttpFail): void => {
      if (settled) return;
      settled = true;
      if (gunzip) {
        req.unpipe(gunzip);
        gunzip.destroy();
      }
      reject(e);
    };
    req.on('data', (c: Buffer) => {
      raw += c.length;
      if (raw > limit) fail(new HttpFail(413, `body: larger than ${limit} bytes`));
    });
    req.on('error', (e) => fail(new HttpFail(400, `body: ${e.message}`)));
    const out = gunzip ?? req;
    out.on('data', (c: Buffer) => {
      if (settled) return;
      size += c.length;
      // A small gzip can inflate to gigabytes: count while inflating, not after.
      if (size > limit) return fail(new HttpFail(413, `body: more than ${limit} bytes after gunzip`));
      chunks.push(c);
    });
    out.on('end', () => {
      if (settled) return;
      settled = true;
      resolve(Buffer.concat(chunks));
    });
    if (gunzip) {
      gunzip.on('error', (e) => fail(new HttpFail(400, `body: not valid gzip (${e.message})`)));
      req.pipe(gunzip);
    }
  });
}

export async function startCenter(opts: CenterOptions): Promise<Center> {
  const log = opts.log;
  const now = opts.now ?? (() => new Date());
  let fault: Fault | null = opts.faults ? { ...opts.faults } : null;
  const db: CenterDb = openCenterDb(opts.dbPath, { create: true });
  const hub = new CommandHub({ db, log, key: opts.commandKey ?? null, now });
  // The command channel: WebSocket upgrades on one path, for verified device certificates only.
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });

  const telemetry = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const sock = req.socket as TLSSocket;
    const remote = sock.remoteAddress ?? '';
    // rejectUnauthorized already refused unverified peers; this is belt and braces.
    const cn = sock.authorized ? sock.getPeerCertificate().subject?.CN : undefined;
    if (typeof cn !== 'string') throw new HttpFail(403, 'client certificate: no usable CN');

    if (fault && fault.count > 0) {
      fault.count--;
      const headers: Record<string, string> = fault.retryAfterSec === undefined ? {} : { 'retry-after': String(fault.retryAfterSec) };
      req.resume();
      log.info('telemetry: fault injected', { device: cn, status: fault.status, left: fault.count });
      return reply(res, fault.status, { error: `injected fault (${fault.status})` }, headers);
    }

    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') throw new HttpFail(415, 'Content-Type: expected application/json');
    const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    if (encoding !== 'gzip' && encoding !== 'identity') throw new HttpFail(415, 'Content-Encoding: expected gzip or identity');

    const body = await readBody(req, encoding === 'gzip', MAX_BODY_BYTES);
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new HttpFail(400, `body: not valid JSON (${errorMessage(e)})`);
    }
    const check = validateBatch(parsed);
    if (!check.ok) throw new HttpFail(400, check.error);
    const batch = check.batch;
    if (batch.device !== cn) {
      throw new HttpFail(403, `device: '${batch.device}' does not match the client certificate (CN '${cn}')`);
    }
    const ack: TelemetryAck = db.storeBatch(batch, {
      remoteAddress: remote,
      now: now(),
      onAuditProblem: (problem) => log.error('audit chain of a device is broken', { device: cn, problem }),
    });
    log.info('telemetry stored', { device: cn, remote, messages: batch.messages.length, ...ack });
    reply(res, 200, ack);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '').split('?')[0];
    try {
      if (path === TELEMETRY_PATH) {
        if (req.method !== 'POST') throw new HttpFail(405, `${TELEMETRY_PATH}: use POST`);
        return await telemetry(req, res);
      }
      if (path === HEALTH_PATH && (req.method === 'GET' || req.method === 'HEAD')) return reply(res, 200, { ok: true });
      throw new HttpFail(404, 'not found');
    } catch (e) {
      const status = e instanceof HttpFail ? e.status : 500;
      const message = e instanceof HttpFail ? e.message : 'internal error';
      const fields = { remote: req.socket.remoteAddress, method: req.method, path, status, error: errorMessage(e) };
      if (status >= 500) log.error('request failed', fields);
      else log.warn('request refused', fields);
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // Unread body (413, early refusals): close rather than read on a client's behalf.
      const headers: Record<string, string> = req.complete ? {} : { connection: 'close' };
      if (status === 405) headers['allow'] = 'POST';
      reply(res, status, { error: message }, headers);
      if (!req.complete) req.resume();
    }
  };

  let server: Server;
  try {
    server = createServer(
      {
        key: opts.key,
        cert: opts.cert,
        ca: opts.ca,
        requestCert: true,
        rejectUnauthorized: true,
        ...CENTER_TLS,
        honorCipherOrder: true,
        handshakeTimeout: 10_000,
        // HTTP keep-alive: a box posts every few seconds; TCP keep-alive finds dead peers.
        keepAlive: true,
        keepAliveTimeout: 65_000,
        headersTimeout: 30_000,
        requestTimeout: 120_000,
      },
      (req, res) => void handle(req, res),
    );
  } catch (e) {
    db.close();
    throw new RapError('RAP_PKI', `TLS setup failed: ${errorMessage(e)}`, {}, { cause: e });
  }

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const tls = req.socket as TLSSocket;
    const path = (req.url ?? '').split('?')[0];
    const cn = tls.authorized ? tls.getPeerCertificate().subject?.CN : undefined;
    const refuse = (status: string, why: string): void => {
      log.warn('command channel upgrade refused', { remote: tls.remoteAddress, path, why });
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    };
    if (path !== COMMANDS_PATH) return refuse('404 Not Found', 'unknown path');
    if (typeof cn !== 'string') return refuse('403 Forbidden', 'no verified device certificate');
    wss.handleUpgrade(req, socket, head, (ws) => hub.attach(ws, cn, tls.remoteAddress ?? ''));
  });

  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', (e: NodeJS.ErrnoException, s: TLSSocket) => {
    // A certificate that fails verification is dropped by node without an
    // alert (the error is then a bare ECONNRESET); the reason is on the socket.
    log.warn('TLS handshake refused', { remote: s.remoteAddress, error: e.code ?? e.message, reason: s.authorizationError });
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      db.close();
      reject(new RapError('RAP_CENTER', `cannot listen on ${opts.host}:${opts.port}: ${e.code ?? e.message}`, { host: opts.host, port: opts.port }, { cause: e }));
    };
    server.once('error', onError);
    server.listen(opts.port, opts.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  log.info('rap-center listening', { host: opts.host, port, db: opts.dbPath });

  let closing: Promise<void> | null = null;
  return {
    port,
    commands: hub,
    db,
    setFault(f) {
      fault = f ? { ...f } : null;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        // Upgraded sockets are no longer the HTTP server's: close them first.
        hub.close();
        wss.close();
        server.close(() => {
          clearTimeout(bound);
          db.close();
          resolve();
        });
        server.closeIdleConnections();
        // Requests in flight get a moment to finish; then every socket goes,
        // including ones still in the TLS handshake.
        const bound = setTimeout(() => {
          for (const s of sockets) s.destroy();
        }, 3000);
      });
      return closing;
    },
  };
}
