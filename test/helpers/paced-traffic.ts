/**
 * Steady load on one keep-alive connection: one request every `intervalMs`,
 * until `n` were answered. By default each carries a fresh sampled W3C
 * traceparent, for the traced server fixture (test/fixtures/tcp/traced_server.c),
 * which answers it under its own server span (kspan's tcp.recv and tcp.send hang
 * under it).
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';

export interface PacedTraffic {
  /** Requests answered so far. */
  readonly answered: number;
  done: Promise<void>;
}

/** A fresh W3C traceparent (new trace and parent ids). */
export function traceparent(sampled = true): string {
  return `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-${sampled ? '01' : '00'}`;
}

/** A request of `reqBytes` bytes: a fresh sampled traceparent, padded. */
export const traceparentRequest = (reqBytes: number) => (): Buffer => Buffer.from(traceparent().padEnd(reqBytes, ' '));

/** `request(i)` each time (default: a traceparent request of `reqBytes`); each answer is `respBytes`. */
export function pacedTraffic(
  port: number,
  n: number,
  reqBytes: number,
  respBytes: number,
  intervalMs: number,
  request: (i: number) => Buffer = traceparentRequest(reqBytes),
): PacedTraffic {
  const state = { answered: 0 };
  const done = (async () => {
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
    let pending = 0;
    let wake: (() => void) | undefined;
    sock.on('data', (b) => {
      pending -= b.length;
      if (pending <= 0) wake?.();
    });
    for (let i = 0; i < n; i++) {
      const started = Date.now();
      pending = respBytes;
      const answered = new Promise<void>((r) => (wake = r));
      sock.write(request(i));
      await answered;
      state.answered++;
      const left = intervalMs - (Date.now() - started);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
    await new Promise<void>((r) => sock.end(r));
  })();
  return {
    get answered() {
      return state.answered;
    },
    done,
  };
}
