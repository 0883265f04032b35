/** A client for test/fixtures/tcp/traced_server.c: requests that start with a W3C traceparent. */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

/**
 * Sends `n` requests with fresh traceparents on one connection; returns the
 * traceparents. `sampled(i)` sets request i's sampled flag (default: all sampled).
 */
export async function drive(port: number, n: number, reqBytes: number, respBytes: number, sampled: (i: number) => boolean = () => true): Promise<string[]> {
  const sock: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  const sent: string[] = [];
  let pending = 0;
  let done: (() => void) | undefined;
  sock.on('data', (b) => {
    pending -= b.length;
    if (pending <= 0) done?.();
  });
  for (let i = 0; i < n; i++) {
    const tp = `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-${sampled(i) ? '01' : '00'}`;
    sent.push(tp);
    pending = respBytes;
    const wait = new Promise<void>((r) => (done = r));
    sock.write(Buffer.from(tp.padEnd(reqBytes, ' ')));
    await wait;
  }
  sock.end();
  return sent;
}

