/**
 * Runs bin/kspan as the user would, and parses `kspan events` lines exactly:
 * 64-bit integers (ts_ns) are read from the JSON source text as bigint.
 */
import { join } from 'node:path';
import { REPO_ROOT } from './build-fixture.ts';
import type { Proc, ProcessGroup } from './processes.ts';

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

/** Stops it with SIGINT and returns every record it printed; it must exit `expectedCode` (3: records were lost). */
export async function stopEvents(p: Proc, expectedCode = 0): Promise<EventLine[]> {
  p.child.kill('SIGINT');
  const { code } = await p.exited;
  if (code !== expectedCode) throw new Error(`kspan events exited ${code}, not ${expectedCode}:\n${p.stderr.join('\n')}`);
  return p.lines.filter((l) => l.startsWith('{')).map(parseEventLine);
}
