/**
 * Test waits scaled for slow machines: KSPAN_TEST_TIMEOUT_SCALE (default 1)
 * multiplies every timeout the helpers wait with (process lines, spans, sockets,
 * fixture start-up). `make test-kernels` sets it under TCG emulation, where
 * starting the agent alone (Node start-up plus the verifier) can take over 20 s.
 */
const raw = Number(process.env.KSPAN_TEST_TIMEOUT_SCALE);
export const TIMEOUT_SCALE = Number.isFinite(raw) && raw > 0 ? raw : 1;

export function scaled(ms: number): number {
  return Math.round(ms * TIMEOUT_SCALE);
}
