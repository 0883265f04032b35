/**
 * Kernel time (CLOCK_MONOTONIC ns, bigint) → OpenTelemetry HrTime [seconds, nanos]
 * since the epoch, exactly: no rounding anywhere. The offset (REALTIME − MONOTONIC)
 * is measured by src/kernel/clock.ts and passed in; this module stays pure.
 *
 * Fast path: the offset is split into [sec, nsec] once (cached per offset value)
 * and the monotonic time, below 2^53 ns (104 days of uptime), is split with exact
 * float arithmetic; beyond that, bigint division.
 */
import type { HrTime } from '@opentelemetry/api';

const NS_PER_SEC = 1_000_000_000n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

let cachedOffset = 0n;
let offSec = 0;
let offNsec = 0;

/** Monotonic ns + offset ns → [sec, nsec] wall-clock time. */
export function monotonicToHrTime(monoNs: bigint, offsetNs: bigint): HrTime {
  if (monoNs < 0n || monoNs > MAX_SAFE || offsetNs < 0n) return nsToHrTime(monoNs + offsetNs);
  if (offsetNs !== cachedOffset) {
    cachedOffset = offsetNs;
    offSec = Number(offsetNs / NS_PER_SEC);
    offNsec = Number(offsetNs % NS_PER_SEC);
  }
  const [s, n] = splitSafe(Number(monoNs));
  let sec = offSec + s;
  let nsec = offNsec + n;
  if (nsec >= 1e9) {
    sec += 1;
    nsec -= 1e9;
  }
  return [sec, nsec];
}

/** Non-negative ns → [sec, nsec] (negative clamps to 0). */
export function nsToHrTime(ns: bigint): HrTime {
  if (ns < 0n) return [0, 0];
  if (ns <= MAX_SAFE) return splitSafe(Number(ns));
  return [Number(ns / NS_PER_SEC), Number(ns % NS_PER_SEC)];
}

/** An integer in [0, 2^53) → [sec, nsec], exact: the float quotient is corrected. */
function splitSafe(n: number): HrTime {
  let sec = Math.floor(n / 1e9);
  let nsec = n - sec * 1e9; // exact: every term is an integer below 2^53
  if (nsec < 0) {
    sec -= 1;
    nsec += 1e9;
  } else if (nsec >= 1e9) {
    sec += 1;
    nsec -= 1e9;
  }
  return [sec, nsec];
}

export function hrTimeToNs(t: HrTime): bigint {
  return BigInt(t[0]) * NS_PER_SEC + BigInt(t[1]);
}
