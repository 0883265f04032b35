/**
 * Kernel time (CLOCK_MONOTONIC ns, bigint) → OpenTelemetry HrTime [seconds, nanos]
 * since the epoch, exactly: no float in between. The offset (REALTIME − MONOTONIC)
 * is measured by src/clock.ts and passed in; this module stays pure.
 */
import type { HrTime } from '@opentelemetry/api';

const NS_PER_SEC = 1_000_000_000n;

/** Monotonic ns + offset ns → [sec, nsec] wall-clock time. */
export function monotonicToHrTime(monoNs: bigint, offsetNs: bigint): HrTime {
  return nsToHrTime(monoNs + offsetNs);
}

/** Non-negative ns → [sec, nsec]. */
export function nsToHrTime(ns: bigint): HrTime {
  if (ns < 0n) ns = 0n;
  return [Number(ns / NS_PER_SEC), Number(ns % NS_PER_SEC)];
}

export function hrTimeToNs(t: HrTime): bigint {
  return BigInt(t[0]) * NS_PER_SEC + BigInt(t[1]);
}
