/** A client for test/fixtures/tcp/traced_server.c: requests that start with a W3C traceparent. */
import { pacedTraffic, traceparent } from './paced-traffic.ts';

/**
 * Sends `n` requests with fresh traceparents on one connection; returns the
 * traceparents. `sampled(i)` sets request i's sampled flag (default: all sampled).
 */
export async function drive(port: number, n: number, reqBytes: number, respBytes: number, sampled: (i: number) => boolean = () => true): Promise<string[]> {
  const sent: string[] = [];
  await pacedTraffic(port, n, reqBytes, respBytes, 0, (i) => {
    const tp = traceparent(sampled(i));
    sent.push(tp);
    return Buffer.from(tp.padEnd(reqBytes, ' '));
  }).done;
  return sent;
}
