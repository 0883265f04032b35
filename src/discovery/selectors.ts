/**
 * Which processes kspan traces: selectors that combine, with excludes. Pure:
 * the facts about a process come in (src/discovery/process-facts.ts reads them).
 *
 * A process is selected when it matches every kind of include criterion given
 * (within one kind, any of its values: `--exe A --exe B --comm C` is
 * (exe A or exe B) and comm C), matches no exclude, and, with `all`, publishes
 * trace context. Children of a selected process are selected too (in the
 * kernel, on fork: bpf/discovery.bpf.h), whatever they match.
 *
 * Kinds: pid; exe (a glob on the executable's path, minimatch with dot files); comm (exact); cmdline (a
 * regular expression on the arguments joined by spaces); container (an id or a
 * prefix of one, from the cgroup path); cgroup (a path, or one above it); pod
 * uid; port (a local or peer port of one of its TCP sockets).
 */
import { minimatch } from 'minimatch';
import type { CgroupInfo } from './cgroup-path.ts';

export interface Criteria {
  pids: readonly number[];
  exe: readonly string[];
  comm: readonly string[];
  cmdline: readonly string[];
  container: readonly string[];
  cgroup: readonly string[];
  podUid: readonly string[];
  ports: readonly number[];
}

export interface Selection {
  /** Every process that publishes trace context (node-agent mode), narrowed by the includes. */
  all: boolean;
  include: Criteria;
  exclude: Criteria;
}

export const NO_CRITERIA: Criteria = { pids: [], exe: [], comm: [], cmdline: [], container: [], cgroup: [], podUid: [], ports: [] };

/** What is known of a process when it is judged. */
export interface ProcessFacts {
  pid: number;
  exe?: string;
  comm?: string;
  /** Arguments joined by spaces. */
  cmdline?: string;
  cgroup?: CgroupInfo;
  /** Local and peer ports of its TCP sockets, when read. */
  ports?: ReadonlySet<number>;
  /** The kernel saw it use a selected port (a CHECK sent because of one). */
  portMatched?: boolean;
}

/**
 * selected: trace it. needs-context: selected once it publishes trace context
 * (`all`). needs-port: selected once it uses a selected port. excluded /
 * unmatched: not traced until it execs (the kernel stops asking).
 */
export type Verdict = 'selected' | 'needs-context' | 'needs-port' | 'excluded' | 'unmatched';

export function hasIncludes(c: Criteria): boolean {
  return Object.values(c).some((v: readonly unknown[]) => v.length > 0);
}

/** Whether a selection can ever select anything: --all, or some include. */
export function selectsAnything(s: Selection): boolean {
  return s.all || hasIncludes(s.include);
}

/** Whether this selection needs discovery (anything beyond a fixed list of pids). */
export function needsDiscovery(s: Selection): boolean {
  return s.all || hasIncludes({ ...s.include, pids: [] }) || hasIncludes(s.exclude);
}

const compiled = new Map<string, RegExp>();
function regex(src: string): RegExp {
  let re = compiled.get(src);
  if (!re) compiled.set(src, (re = new RegExp(src)));
  return re;
}

/** Checks that every cmdline value compiles; the message names the first one that does not. */
export function invalidRegex(values: readonly string[]): string | undefined {
  for (const v of values) {
    try {
      new RegExp(v);
    } catch (err) {
      return `${JSON.stringify(v)}: ${(err as Error).message}`;
    }
  }
  return undefined;
}

/** true / false, or undefined when the facts needed are unknown. */
type Match = boolean | undefined;

function anyOf<T>(values: readonly T[], test: (v: T) => Match): Match {
  let unknown = false;
  for (const v of values) {
    const m = test(v);
    if (m) return true;
    if (m === undefined) unknown = true;
  }
  return unknown ? undefined : false;
}

function known<T>(fact: T | undefined, test: (f: T) => boolean): Match {
  return fact === undefined ? undefined : test(fact);
}

function underCgroup(paths: readonly string[], want: string): boolean {
  const w = want.length > 1 ? want.replace(/\/+$/, '') : want;
  return paths.some((p) => p === w || w === '/' || p.startsWith(`${w}/`));
}

/** Per kind with values: whether the process matches one of them. */
function kindMatches(c: Criteria, f: ProcessFacts): Map<keyof Criteria, Match> {
  const out = new Map<keyof Criteria, Match>();
  if (c.pids.length) out.set('pids', c.pids.includes(f.pid));
  if (c.exe.length) out.set('exe', anyOf(c.exe, (g) => known(f.exe, (e) => minimatch(e, g, { dot: true }))));
  if (c.comm.length) out.set('comm', anyOf(c.comm, (n) => known(f.comm, (x) => x === n)));
  if (c.cmdline.length) out.set('cmdline', anyOf(c.cmdline, (r) => known(f.cmdline, (x) => regex(r).test(x))));
  if (c.container.length) {
    out.set('container', anyOf(c.container, (id) => known(f.cgroup, (g) => !!g.containerId && g.containerId.startsWith(id.toLowerCase()))));
  }
  if (c.cgroup.length) out.set('cgroup', anyOf(c.cgroup, (p) => known(f.cgroup, (g) => underCgroup(g.paths, p))));
  if (c.podUid.length) {
    out.set('podUid', anyOf(c.podUid, (u) => known(f.cgroup, (g) => g.podUid === u.toLowerCase().replaceAll('_', '-'))));
  }
  if (c.ports.length) out.set('ports', f.portMatched || anyOf(c.ports, (p) => known(f.ports, (s) => s.has(p))));
  return out;
}

export function judge(s: Selection, f: ProcessFacts): Verdict {
  for (const m of kindMatches(s.exclude, f).values()) if (m) return 'excluded';
  let needsPort = false;
  for (const [kind, m] of kindMatches(s.include, f)) {
    if (m) continue;
    if (kind === 'ports') {
      needsPort = true;
      continue;
    }
    return 'unmatched';
  }
  if (!selectsAnything(s)) return 'unmatched';
  if (needsPort) return 'needs-port';
  return s.all ? 'needs-context' : 'selected';
}

/** The settings a Selection is made of (src/core/config.ts SELECTION). */
export interface SelectionSettings {
  pids: readonly number[];
  all: boolean;
  exe: readonly string[];
  comm: readonly string[];
  cmdline: readonly string[];
  container: readonly string[];
  cgroup: readonly string[];
  k8sPodUid: readonly string[];
  port: readonly number[];
  excludePid: readonly number[];
  excludeExe: readonly string[];
  excludeComm: readonly string[];
  excludeCmdline: readonly string[];
  excludeContainer: readonly string[];
  excludeCgroup: readonly string[];
  excludeK8sPodUid: readonly string[];
  excludePort: readonly number[];
}

export function selectionFromSettings(s: SelectionSettings): Selection {
  return {
    all: s.all,
    include: { pids: s.pids, exe: s.exe, comm: s.comm, cmdline: s.cmdline, container: s.container, cgroup: s.cgroup, podUid: s.k8sPodUid, ports: s.port },
    exclude: {
      pids: s.excludePid, exe: s.excludeExe, comm: s.excludeComm, cmdline: s.excludeCmdline, container: s.excludeContainer,
      cgroup: s.excludeCgroup, podUid: s.excludeK8sPodUid, ports: s.excludePort,
    },
  };
}
