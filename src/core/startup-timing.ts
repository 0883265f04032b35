/**
 * Where the agent's start-up goes, for the debug log line "start-up": node's own
 * bootstrap, kspan's module imports, and each phase kspan times (BTF lookups and
 * verifier probes, object open, the verifier's load, attach, the first scan of
 * the targets' /proc files and binaries). On a small VM the verifier and the
 * interpreter dominate; this line says which.
 */
import { performance } from 'node:perf_hooks';

const phases: Record<string, number> = {};

const ms = (x: number) => Math.round(x * 10) / 10;

/** Runs `fn`, adding its duration to phase `name` (phases repeat: an optional program refused reloads the object). */
export function timed<T>(name: string, fn: () => T): T {
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    phases[name] = ms((phases[name] ?? 0) + performance.now() - t0);
  }
}

/** The phases so far, in milliseconds: `since_start` counts from the process's start. */
export function startupTimings(): Record<string, number> {
  const boot = performance.nodeTiming.bootstrapComplete;
  return { since_start: ms(performance.now()), node_bootstrap: ms(boot), ...phases };
}
