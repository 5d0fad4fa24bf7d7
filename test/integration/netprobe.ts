// A tiny TCP peer for the network-namespace tests, run inside a namespace
// with `ip netns exec NS node netprobe.ts ...`:
//   listen NAME HOST:PORT...   answer every connection with "NAME\n" and close;
//                              prints "ready" once all are listening
//   connect HOST PORT MS       prints "connected NAME" (exit 0; "connected" when
//                              the peer says nothing within MS, like rapd's agent),
//                              or "refused"/"timeout"/"error CODE" (exit 1)
//   sink HOST:PORT             count the bytes of each connection until its end,
//                              answer the count and close; prints "ready"
//   send HOST PORT BYTES MS    send BYTES, half-close, wait for the count;
//                              prints {"bytes":N,"ms":T} (exit 1 on error or after MS)
// Bounded: a connect gives up after MS; a listener lives until it is killed.

import { connect, createServer } from 'node:net';

const [mode, ...args] = process.argv.slice(2);

if (mode === 'listen') {
  const [name, ...endpoints] = args;
  let pending = endpoints.length;
  for (const ep of endpoints) {
    const i = ep.lastIndexOf(':');
    // A peer that resets at once (nmap's connect scan) must not kill the listener (EPIPE/ECONNRESET).
    createServer((s) => s.on('error', () => {}).end(`${name}\n`))
      .on('error', (e) => {
        process.stderr.write(`listen ${ep}: ${e.message}\n`);
        process.exit(2);
      })
      .listen({ host: ep.slice(0, i), port: Number(ep.slice(i + 1)) }, () => {
        if (--pending === 0) process.stdout.write('ready\n');
      });
  }
} else if (mode === 'connect') {
  const [host, port, ms] = args;
  const done = (line: string, code: number): void => {
    process.stdout.write(`${line}\n`);
    process.exit(code);
  };
  let connected = false;
  const timer = setTimeout(() => (connected ? done('connected', 0) : done('timeout', 1)), Number(ms));
  let got = '';
  const s = connect({ host: host!, port: Number(port) });
  s.on('connect', () => (connected = true));
  s.on('data', (b) => (got += b.toString()));
  s.on('end', () => {
    clearTimeout(timer);
    done(`connected ${got.trim()}`, 0);
  });
  s.on('error', (e: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    done(e.code === 'ECONNREFUSED' ? 'refused' : `error ${e.code ?? e.message}`, 1);
  });
} else if (mode === 'sink') {
  const ep = args[0]!;
  const i = ep.lastIndexOf(':');
  createServer((s) => {
    let n = 0;
    s.on('error', () => {});
    s.on('data', (b: Buffer) => (n += b.length));
    s.on('end', () => s.end(`${n}\n`));
  }).listen({ host: ep.slice(0, i), port: Number(ep.slice(i + 1)) }, () => process.stdout.write('ready\n'));
} else if (mode === 'send') {
  const [host, port, bytes, ms] = args;
  const total = Number(bytes);
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  const timer = setTimeout(() => {
    process.stdout.write('timeout\n');
    process.exit(1);
  }, Number(ms));
  const t0 = performance.now();
  const s = connect({ host: host!, port: Number(port) }, () => {
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        const n = Math.min(chunk.length, total - sent);
        sent += n;
        if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void s.once('drain', pump);
      }
      s.end();
    };
    pump();
  });
  let reply = '';
  s.on('data', (b: Buffer) => (reply += b.toString()));
  s.on('end', () => {
    clearTimeout(timer);
    const got = Number(reply.trim());
    process.stdout.write(`${JSON.stringify({ bytes: got, ms: performance.now() - t0 })}\n`);
    process.exit(got === total ? 0 : 1);
  });
  s.on('error', (e: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    process.stdout.write(`error ${e.code ?? e.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write('usage: netprobe.ts listen NAME HOST:PORT... | connect HOST PORT MS | sink HOST:PORT | send HOST PORT BYTES MS\n');
  process.exit(2);
}
