/**
 * Kernel timestamps (bpf_ktime_get_ns: CLOCK_MONOTONIC) to wall-clock time. The
 * offset REALTIME − MONOTONIC is measured with clock_gettime, bracketing a
 * monotonic read between two realtime reads and keeping the tightest of several
 * tries; `refresh()` re-measures it (NTP slews the realtime clock).
 */
import { c, CLOCK_MONOTONIC, CLOCK_REALTIME } from './native.ts';

const ts = Buffer.alloc(16);

function now(clock: number): bigint {
  c.clockGettime(clock, ts);
  return ts.readBigInt64LE(0) * 1_000_000_000n + ts.readBigInt64LE(8);
}

/** Nanoseconds to add to a CLOCK_MONOTONIC time to get nanoseconds since the epoch. */
export function measureClockOffset(tries = 7): bigint {
  let best: { gap: bigint; offset: bigint } | undefined;
  for (let i = 0; i < tries; i++) {
    const r1 = now(CLOCK_REALTIME);
    const m = now(CLOCK_MONOTONIC);
    const r2 = now(CLOCK_REALTIME);
    const gap = r2 - r1;
    if (!best || gap < best.gap) best = { gap, offset: (r1 + r2) / 2n - m };
  }
  return best!.offset;
}

export class KernelClock {
  #offset = measureClockOffset();

  get offsetNs(): bigint {
    return this.#offset;
  }

  /** Measures the offset again; returns how far it moved (a realtime clock step or slew since the last). */
  refresh(): bigint {
    const before = this.#offset;
    this.#offset = measureClockOffset();
    return this.#offset - before;
  }
}
