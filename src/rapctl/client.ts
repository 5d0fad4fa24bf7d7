// rapctl's side of the control socket: one request, one response, bounded.

import { connect } from 'node:net';
import { RapError } from '../lib/errors.ts';
import type { ControlRequest, ControlResponse, ControlResults } from '../protocol/control.ts';

export function callControl<R extends ControlRequest>(socketPath: string, req: R, timeoutMs = 5000): Promise<ControlResponse<ControlResults[R['method']]>> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new RapError('RAP_CONTROL', `no answer from rapd on ${socketPath} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on('data', (b: Buffer) => {
      buf += b.toString('utf8');
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why =
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? 'rapd is not running (no control socket)'
          : e.code === 'EACCES'
            ? 'permission denied (run as root)'
            : e.message;
      reject(new RapError('RAP_CONTROL', `cannot reach rapd on ${socketPath}: ${why}`, { path: socketPath }, { cause: e }));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      const line = buf.split('\n')[0] ?? '';
      try {
        resolve(JSON.parse(line) as ControlResponse<ControlResults[R['method']]>);
      } catch {
        reject(new RapError('RAP_CONTROL', `rapd sent an unreadable answer: ${JSON.stringify(line.slice(0, 200))}`));
      }
    });
  });
}
