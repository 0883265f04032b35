/**
 * kernel.perf_event_paranoid, which Debian's kernels default to 3: no perf event
 * (what a classic tracepoint attaches through) for a process without
 * CAP_SYS_ADMIN. kspan's documented capabilities need 2 or less there (README,
 * "Least privilege"). Tests that run kspan without CAP_SYS_ADMIN set it and put
 * it back. Root only.
 */
import { readFileSync, writeFileSync } from 'node:fs';

export const PERF_PARANOID = '/proc/sys/kernel/perf_event_paranoid';

/** The sysctl's value now, as the file gives it. */
export function perfParanoid(): string {
  return readFileSync(PERF_PARANOID, 'latin1').trim();
}

/** Sets the sysctl to 2 where it restricts more; returns what puts back the value it had. */
export function allowPerfEvents(): () => void {
  const was = perfParanoid();
  if (Number(was) > 2) writeFileSync(PERF_PARANOID, '2');
  return () => writeFileSync(PERF_PARANOID, was);
}
