/**
 * What `kspan run` tells the user about kernel spans with no parent: a target
 * that publishes no trace context gets nothing under its spans, and without
 * `--orphans` all of its kernel spans are counted and dropped, so the output
 * stays empty. Said in a sentence when the target is first described and again
 * at the end with the count. Pure: the wording and when to say it.
 */

export interface Notice {
  level: 'warn' | 'info';
  msg: string;
}

/** What the notices need of a target's description (TracingSession's onTarget). */
export interface NoticeTarget {
  pid: number;
  /** The scheme it publishes, or null for none. */
  scheme: string | null;
  /** Where BPF reads its context; null when it cannot. */
  loc: unknown;
  /** Why there is no location. */
  reason?: string;
  /** Absent when the target could not be examined. */
  process?: { resource: Record<string, unknown> };
}

const HOW = 'use --orphans to export them as root spans, or kspan events to see the records';

function label(t: NoticeTarget): string {
  const r = t.process?.resource ?? {};
  const name = r['process.executable.name'] ?? r['service.name'];
  return name === undefined ? `pid ${t.pid}` : `pid ${t.pid} (${String(name)})`;
}

/** Why the target's kernel spans have no parent; null when it publishes a context kspan reads. */
function noContext(t: NoticeTarget): string | null {
  if (t.loc) return null;
  if (!t.process) return 'could not be examined for a trace context';
  if (t.scheme === null) return 'publishes no trace context';
  return `publishes ${t.scheme} trace context that kspan cannot read (${t.reason ?? 'unknown reason'})`;
}

const spans = (n: number) => `${n} kernel span${n === 1 ? '' : 's'}`;

/** The notice for a target that was just described: only when it publishes no context at all. */
export function targetNotice(t: NoticeTarget, orphans: boolean): Notice | null {
  if (t.scheme !== null || t.loc || !t.process) return null;
  const who = `${label(t)} publishes no trace context`;
  return orphans
    ? { level: 'info', msg: `${who}: its kernel spans are exported as root spans, one trace per request/response exchange (--orphans)` }
    : { level: 'warn', msg: `${who}: its kernel spans have no parent and are dropped; ${HOW}` };
}

/** The notice at the end for a target whose kernel spans had no parent (`count` of them). */
export function stopNotice(t: NoticeTarget, count: number, orphans: boolean): Notice | null {
  if (count === 0) return null;
  const why = noContext(t);
  if (why === null) {
    // It publishes a context: these ran while no span was active (between requests, outside instrumentation).
    const what = `${label(t)}: ${spans(count)} ran while no span of it was active`;
    return { level: 'info', msg: orphans ? `${what}; exported as root spans (--orphans)` : `${what} and were dropped (--orphans exports them)` };
  }
  return orphans
    ? { level: 'info', msg: `${label(t)} ${why}: ${spans(count)} exported, one trace per request/response exchange (--orphans)` }
    : { level: 'warn', msg: `${label(t)} ${why}: ${spans(count)} had no parent and ${count === 1 ? 'was' : 'were'} dropped; ${HOW}` };
}

/** Keeps each target's latest description, says the start notice once per pid, and the end ones. */
export class OrphanNotices {
  readonly #orphans: boolean;
  readonly #targets = new Map<number, NoticeTarget>();
  readonly #told = new Set<number>();

  constructor(orphans: boolean) {
    this.#orphans = orphans;
  }

  /** A target was described (again): the notice to log now, if any. */
  target(t: NoticeTarget): Notice | null {
    this.#targets.set(t.pid, t);
    if (this.#told.has(t.pid)) return null;
    const n = targetNotice(t, this.#orphans);
    if (n) this.#told.add(t.pid);
    return n;
  }

  /** At the end: one notice per target with parentless kernel spans, from its last description. */
  atStop(orphansByPid: ReadonlyMap<number, number>): Notice[] {
    const out: Notice[] = [];
    for (const [pid, count] of orphansByPid) {
      const t = this.#targets.get(pid) ?? { pid, scheme: null, loc: null };
      const n = stopNotice(t, count, this.#orphans);
      if (n) out.push(n);
    }
    return out;
  }
}
