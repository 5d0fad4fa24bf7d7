// The control socket: rapctl's way in. A unix socket in the owner-only
// runtime directory, itself mode 0600, so only root (rapd's user) can talk
// to it; nothing about it is reachable from any network.

import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { RapError, errorMessage, isRapError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { AuditRecord, VerifyReport } from '../protocol/audit.ts';
import { MAX_REQUEST_BYTES, parseControlRequest, type ControlResponse, type StatusReport } from '../protocol/control.ts';

export interface ControlHandlers {
  status(): StatusReport;
  auditRead(after: number, limit: number): AuditRecord[];
  auditVerify(): VerifyReport;
}

export interface ControlServer {
  close(): Promise<void>;
}

/** Remove a socket left by a previous run; refuse to delete anything else. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw new RapError('RAP_CONTROL', `control socket path ${path} exists and is not a socket; refusing to replace it`, { path });
  }
  unlinkSync(path);
}

export async function startControlServer(path: string, handlers: ControlHandlers, log: Logger): Promise<ControlServer> {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // The directory may pre-exist (systemd RuntimeDirectory=); enforce owner-only.
  chmodSync(dir, 0o700);
  removeStaleSocket(path);

  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.setTimeout(10_000, () => sock.destroy());
    let buf = '';
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST_BYTES) reply(sock, fail(`request longer than ${MAX_REQUEST_BYTES} bytes`));
        return;
      }
      const line = buf.slice(0, nl);
      buf = '';
      reply(sock, handle(line));
    });
  });

  const fail = (message: string, code = 'RAP_CONTROL'): ControlResponse<unknown> => ({ ok: false, error: { code, message } });
  const handle = (line: string): ControlResponse<unknown> => {
    let req;
    try {
      req = parseControlRequest(line);
    } catch (e) {
      log.warn('control request rejected', { error: errorMessage(e) });
      return fail(errorMessage(e));
    }
    try {
      switch (req.method) {
        case 'status':
          return { ok: true, result: handlers.status() };
        case 'audit.read':
          return { ok: true, result: handlers.auditRead(req.after, req.limit) };
        case 'audit.verify':
          return { ok: true, result: handlers.auditVerify() };
      }
    } catch (e) {
      log.warn('control request failed', { method: req.method, error: errorMessage(e) });
      return fail(errorMessage(e), isRapError(e) ? e.code : 'RAP_CONTROL');
    }
  };
  const reply = (sock: Socket, res: ControlResponse<unknown>): void => {
    sock.end(`${JSON.stringify(res)}\n`);
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) =>
      reject(new RapError('RAP_CONTROL', `cannot listen on control socket ${path}: ${errorMessage(e)}`, { path }, { cause: e })),
    );
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  log.debug('control socket listening', { path });

  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => {
          try {
            unlinkSync(path);
          } catch {
            // already gone
          }
          resolve();
        });
      }),
  };
}
