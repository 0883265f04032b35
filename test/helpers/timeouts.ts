/**
 * Test waits scaled for slow machines: KSPAN_TEST_TIMEOUT_SCALE (default 1)
 * multiplies every timeout the helpers wait with (process lines, spans, sockets,
 * fixture start-up). `make test-kernels` sets it under TCG emulation, where
 * starting the agent alone (Node start-up plus the verifier) can take over 20 s.
 */
const raw = Number(process.env.KSPAN_TEST_TIMEOUT_SCALE);
export const TIMEOUT_SCALE = Number.isFinite(raw) && raw > 0 ? raw : 1;

/**
 * How long one CPU may stand still, in the middle of a BPF program, while
 * another runs: KSPAN_TEST_CPU_STALL_MS (default 0). `make test-kernels` sets it
 * to 100 under TCG, whose one thread runs the two vCPUs in turn, switching every
 * 100 ms. The idle flush's turn-taking with the sockets' hooks holds while a hook
 * runs for less than one flush tick (bpf/kspan.bpf.c, sock_enter()), so the test
 * of it keeps its ticks longer than this.
 */
const rawStall = Number(process.env.KSPAN_TEST_CPU_STALL_MS);
export const CPU_STALL_MS = Number.isFinite(rawStall) && rawStall > 0 ? rawStall : 0;

export function scaled(ms: number): number {
  return Math.round(ms * TIMEOUT_SCALE);
}

/** Polls `get` every 100 ms until `ok` holds for its value (returned); fails after the scaled timeout with the last value. */
export async function waitFor<T>(get: () => T, ok: (v: T) => boolean, timeoutMs: number, what: string): Promise<T> {
  const end = Date.now() + scaled(timeoutMs);
  for (;;) {
    const v = get();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
