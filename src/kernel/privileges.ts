/**
 * What kspan may do here, as the kernel will judge it: the capabilities in
 * effect (CapEff, never the uid: root without capabilities cannot load BPF, and
 * a user with them can), whether tracefs can be read, and which capability a
 * refused /proc or file read lacks. Everything that tells a user to grant a
 * capability asks here first, so it never asks for one that was granted.
 *
 * The minimal set per command (README, "Requirements and privileges"):
 *
 * - run, events, record: CAP_BPF + CAP_PERFMON (load, attach, ring buffer,
 *   bpf_probe_read_user of the targets' TLS); CAP_DAC_READ_SEARCH (tracefs is
 *   mounted 0700: the ids of the classic tracepoints, accept() and, before Linux
 *   6.3, send/recv; and a target's ELF files it cannot read otherwise);
 *   CAP_SYS_PTRACE (/proc/PID/mem, maps, exe, environ and root of processes of
 *   other users).
 * - doctor: the same set (it loads the real programs).
 * - replay: none.
 * - demo: root (network namespaces, iptables).
 *
 * Node's fs.existsSync is access(2), which the kernel judges with the real uid
 * and no capabilities: a user holding CAP_DAC_READ_SEARCH is told "missing".
 * Paths here are looked at with stat(2), which honours them.
 */
import { readFileSync, statSync } from 'node:fs';

/** Capability numbers (include/uapi/linux/capability.h) of those kspan uses or names. */
export const CAPABILITY = {
  CAP_DAC_OVERRIDE: 1,
  CAP_DAC_READ_SEARCH: 2,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_RESOURCE: 24,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
  CAP_CHECKPOINT_RESTORE: 40,
} as const;
export type CapabilityName = keyof typeof CAPABILITY;

/** The documented minimal set for the tracing commands (run, events, record, doctor). */
export const TRACING_CAPABILITIES: readonly CapabilityName[] = ['CAP_BPF', 'CAP_PERFMON', 'CAP_DAC_READ_SEARCH', 'CAP_SYS_PTRACE'];

/** The effective capability mask of this process (CapEff in /proc/self/status). */
export function effectiveMask(status = readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

export class Capabilities {
  readonly mask: bigint;
  readonly uid: number;
  constructor(mask = effectiveMask(), uid = process.geteuid?.() ?? -1) {
    this.mask = mask;
    this.uid = uid;
  }

  has(name: CapabilityName): boolean {
    return ((this.mask >> BigInt(CAPABILITY[name])) & 1n) === 1n;
  }

  /** CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (and kernels before 5.8 know only it). */
  canLoadBpf(): boolean {
    return this.has('CAP_SYS_ADMIN') || (this.has('CAP_BPF') && this.has('CAP_PERFMON'));
  }

  /** Of `names`, those not in effect. */
  missing(names: readonly CapabilityName[]): CapabilityName[] {
    return names.filter((n) => !this.has(n));
  }

  /** "uid 65534, CAP_BPF CAP_PERFMON" (or "all capabilities"). */
  describe(): string {
    const held = (Object.keys(CAPABILITY) as CapabilityName[]).filter((n) => this.has(n));
    return `uid ${this.uid}, ${held.length ? held.join(' ') : 'none of the capabilities kspan uses'}`;
  }
}

export type PathAccess = 'ok' | 'missing' | 'denied';

/** Whether `path` can be looked at (stat(2): capabilities count, unlike access(2)). */
export function pathAccess(path: string): PathAccess {
  try {
    return statSync(path, { throwIfNoEntry: false }) ? 'ok' : 'missing';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') return 'denied';
    if (code === 'ENOTDIR') return 'missing';
    throw err;
  }
}

/** The mode bits of `path` in octal, or undefined when it cannot be stat'ed. */
function modeOf(path: string): string | undefined {
  try {
    return (statSync(path).mode & 0o7777).toString(8).padStart(4, '0');
  } catch {
    return undefined;
  }
}

export const TRACEFS_DIR = '/sys/kernel/tracing';

export interface TracefsState {
  state: 'ok' | 'not-mounted' | 'denied';
  /** One sentence: what was found. */
  detail: string;
  /** What to do, when not ok. */
  fix?: string;
}

/** Is tracefs mounted (/proc/mounts), and can this process read its event ids? */
export function tracefsState(caps = new Capabilities(), mounts = readMounts()): TracefsState {
  const mounted = mounts.some((m) => m.type === 'tracefs' && m.dir === TRACEFS_DIR);
  const events = pathAccess(`${TRACEFS_DIR}/events`);
  if (events === 'ok') return { state: 'ok', detail: `mounted at ${TRACEFS_DIR}` };
  if (events === 'denied' || (mounted && events !== 'missing')) {
    const mode = modeOf(TRACEFS_DIR);
    return {
      state: 'denied',
      detail: `mounted at ${TRACEFS_DIR}${mode ? ` with mode ${mode}` : ''}, not readable by ${caps.describe()}`,
      fix: caps.has('CAP_DAC_READ_SEARCH')
        ? `CAP_DAC_READ_SEARCH is in effect and still refused: check the LSM policy (SELinux, AppArmor) for ${TRACEFS_DIR}`
        : 'grant CAP_DAC_READ_SEARCH (libbpf reads the ids of classic tracepoints there), or run as root',
    };
  }
  if (mounted) {
    return { state: 'not-mounted', detail: `mounted at ${TRACEFS_DIR} but it has no events/ directory`, fix: 'this kernel was built without tracepoint events (CONFIG_TRACEPOINTS)' };
  }
  return { state: 'not-mounted', detail: 'not mounted', fix: `mount tracefs: mount -t tracefs tracefs ${TRACEFS_DIR}` };
}

export interface Mount {
  dir: string;
  type: string;
}

export function readMounts(): Mount[] {
  try {
    return readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const f = l.split(' ');
        return { dir: f[1], type: f[2] };
      });
  } catch {
    return [];
  }
}

/**
 * What to grant when reading a target's /proc file or one of its mapped files
 * was refused: CAP_SYS_PTRACE for another user's /proc/PID, CAP_DAC_READ_SEARCH
 * for a file the agent's uid may not read; never one already in effect.
 */
export function targetReadHint(path: string | undefined, caps = new Capabilities()): string {
  const need: CapabilityName[] = [];
  if (!caps.has('CAP_SYS_PTRACE') && !caps.has('CAP_SYS_ADMIN')) need.push('CAP_SYS_PTRACE');
  // A file (also one reached through /proc/PID/root/) is judged by its own mode bits.
  const file = path !== undefined && !/^\/proc\/\d+\/[a-z_]+$/.test(path) && !/^\/proc\/\d+\/map_files\//.test(path);
  if (file && !caps.has('CAP_DAC_READ_SEARCH') && !caps.has('CAP_DAC_OVERRIDE')) need.push('CAP_DAC_READ_SEARCH');
  if (need.length) return `grant ${need.join(' and ')} (kspan has ${caps.describe()}), or run as root`;
  return `${caps.describe()} holds what kspan asks for and was still refused: the target may be in another user namespace, or an LSM (SELinux, AppArmor, Yama) forbids it`;
}

/** What to do when the kernel refused to load BPF (EPERM/EACCES), given what is in effect. */
export function loadRefusedHint(caps = new Capabilities()): string {
  if (!caps.canLoadBpf()) {
    return `grant ${caps.missing(['CAP_BPF', 'CAP_PERFMON']).join(' and ')} (kspan has ${caps.describe()}), or run as root`;
  }
  return `${caps.describe()} may load BPF and was still refused: an LSM (lockdown, SELinux) forbids it, or the kernel is older than 5.11 (grant CAP_SYS_RESOURCE for the locked-memory limit)`;
}

/** What to do when the kernel refused to attach a program of section `section` (EPERM/EACCES). */
export function attachRefusedHint(section: string, caps = new Capabilities()): string {
  if (section.startsWith('tracepoint/')) {
    const t = tracefsState(caps);
    if (t.state !== 'ok') return t.fix!;
    const restricted = perfEventsRestricted(caps);
    if (restricted) return restricted;
  }
  if (section.startsWith('uprobe') && caps.canLoadBpf() && !caps.has('CAP_SYS_ADMIN')) {
    return 'this kernel attaches uprobes for CAP_SYS_ADMIN only (CAP_BPF and CAP_PERFMON are not enough); kspan\'s agent uses none';
  }
  return loadRefusedHint(caps);
}

/** kernel.perf_event_paranoid, or undefined when it cannot be read. */
export function perfEventParanoid(): number | undefined {
  try {
    const v = Number(readFileSync('/proc/sys/kernel/perf_event_paranoid', 'latin1').trim());
    return Number.isInteger(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Debian's kernels (and Ubuntu's, Android's) take kernel.perf_event_paranoid 3,
 * their default, to refuse perf_event_open(2) with EACCES to any process without
 * CAP_SYS_ADMIN: CAP_PERFMON is not enough there. Classic tracepoints (accept(),
 * and before Linux 6.3 send/recv) attach through a perf event. Says so, and the
 * fix, when this process is refused so; undefined otherwise.
 */
export function perfEventsRestricted(caps = new Capabilities(), paranoid = perfEventParanoid()): string | undefined {
  if (paranoid === undefined || paranoid <= 2 || caps.has('CAP_SYS_ADMIN')) return undefined;
  return `kernel.perf_event_paranoid is ${paranoid}, which on this kernel lets only CAP_SYS_ADMIN open the perf events classic tracepoints attach through: ${HINT_PERF_PARANOID}`;
}

/** What to do when perfEventsRestricted() says so. */
export const HINT_PERF_PARANOID = 'set sysctl kernel.perf_event_paranoid=2, or grant CAP_SYS_ADMIN';
