/**
 * Steady load on the traced server fixture (test/fixtures/tcp/traced_server.c):
 * one keep-alive connection, one request every `intervalMs`, each with a fresh
 * sampled W3C traceparent, until `n` requests were answered. The fixture answers
 * each under its own server span, which kspan's tcp.recv and tcp.send hang under.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';

export interface PacedTraffic {
  /** Requests answered so far. */
  readonly answered: number;
  done: Promise<void>;
}

export function pacedTraffic(port: number, n: number, reqBytes: number, respBytes: number, intervalMs: number): PacedTraffic {
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
      const tp = `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`;
      pending = respBytes;
      const answered = new Promise<void>((r) => (wake = r));
      sock.write(Buffer.from(tp.padEnd(reqBytes, ' ')));
      await answered;
      state.answered++;
      const left = intervalMs - (Date.now() - started);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
    sock.end();
  })();
  return {
    get answered() {
      return state.answered;
    },
    done,
  };
}
