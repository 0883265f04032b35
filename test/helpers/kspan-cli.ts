/**
 * Runs bin/kspan as the user would, and parses `kspan events` lines exactly:
 * 64-bit integers (ts_ns) are read from the JSON source text as bigint.
 */
import { join } from 'node:path';
import { REPO_ROOT } from './build-fixture.ts';
import type { Proc, ProcessGroup } from './processes.ts';
import { recordsLost } from '../../src/cli/options.ts';
import { runDataLost, type RunStopCounts } from '../../src/cli/run.ts';
import type { TracerCounters } from '../../src/kernel/tcp-tracer.ts';

export const KSPAN_BIN = join(REPO_ROOT, 'bin', 'kspan');

export type EventLine = Record<string, unknown> & {
  type: string;
  pid: number;
  tid: number;
  cookie: string;
  local: string;
  peer: string;
  ts_ns: bigint;
};

type Reviver = (this: unknown, key: string, value: unknown, ctx?: { source?: string }) => unknown;

export function parseEventLine(line: string): EventLine {
  const reviver: Reviver = (key, value, ctx) =>
    key.endsWith('ts_ns') && typeof value === 'number' && ctx?.source ? BigInt(ctx.source) : value;
  return JSON.parse(line, reviver as Parameters<typeof JSON.parse>[1]) as EventLine;
}

/** Starts `kspan events` and resolves once its programs are attached. */
export async function startEvents(group: ProcessGroup, pids: number[], extra: string[] = [], env: Record<string, string> = {}): Promise<Proc> {
  const args = ['events', ...pids.flatMap((p) => ['--pid', String(p)]), ...extra];
  const p = group.start(KSPAN_BIN, args, { env: { ...process.env, ...env } });
  await p.waitStderr(/"msg":"tracing"/, 20_000);
  return p;
}

/**
 * The agent's stop line (`events`, `record` or `run`): its last log line with counters, whatever its
 * message says (`stopped`, or `records were lost` / `stopped; data was lost` when something was).
 */
export function stopLine<T = Record<string, any>>(stderr: readonly string[]): T | undefined {
  return stderr
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { counters?: unknown; kernel?: unknown })
    .findLast((l) => l.counters ?? l.kernel) as T | undefined;
}

/** The fields of a stop line that count losses: `kspan events`' and `kspan record`'s, or `kspan run`'s. */
type StopCounts = { counters: TracerCounters; kernel?: undefined } | RunStopCounts;

/**
 * The runs the kernel skipped, by the agent's stop line (`kspan events` or `kspan run`), when they are
 * all it lost; 0 otherwise. A hook that fires while its program already runs on that CPU (a softirq
 * interrupting a run in a system call: a state change, a retransmit) is skipped by the kernel and
 * counted; kspan counts each as lost and exits 3. Under many connections on two CPUs that happens now
 * and then, so a test that expects exit 0 takes 3 when, and only when, this is not 0.
 */
export function onlySkippedRuns(stderr: readonly string[]): number {
  const stop = stopLine<StopCounts>(stderr);
  if (!stop) return 0;
  const c = stop.kernel ?? stop.counters;
  const skipped = Object.values(c.skipped_runs ?? {}).reduce((a, n) => a + n, 0);
  const lost = stop.kernel ? runDataLost(stop) : recordsLost(c);
  return skipped && lost === skipped ? skipped : 0;
}

/** The exit status of an agent run that lost nothing it could keep: 0, or 3 when the kernel's skipped runs were its only loss. */
export const cleanExit = (stderr: readonly string[]): number => (onlySkippedRuns(stderr) ? 3 : 0);

/** Stops it with SIGINT and returns every record it printed; it must exit `expectedCode` (3: records were lost). */
export async function stopEvents(p: Proc, expectedCode = 0): Promise<EventLine[]> {
  p.child.kill('SIGINT');
  const { code } = await p.exited;
  const expected = expectedCode === 0 ? cleanExit(p.stderr) : expectedCode;
  if (code !== expected) throw new Error(`kspan events exited ${code}, not ${expected}:\n${p.stderr.join('\n')}`);
  return p.lines.filter((l) => l.startsWith('{')).map(parseEventLine);
}
