/**
 * The program table of bpf/kspan.bpf.c: each program's hook, the feature it
 * serves, whether kspan can run without it, and what a user loses when it is
 * off. And the plan: which programs to load on a given kernel, chosen by what
 * the kernel has (tracepoints present, the argument count of each BTF
 * tracepoint's prototype), never by its version number. A program the kernel
 * has but refuses this process (a capability, tracefs's mode,
 * kernel.perf_event_paranoid) carries what to grant, so that an essential loss
 * of that kind says so (essentialLossError: KSPAN_ERR_PRIVILEGE, not "this
 * kernel lacks a hook").
 *
 * Pure: the kernel's facts come in as a KernelHooks value (live, from
 * src/kernel/kernel-features.ts; in tests, from prototypes captured on other
 * kernels). test/unit/programs.test.ts checks the table against the object.
 */
import { KspanError } from '../core/errors.ts';

export type IoPath = 'sock_length' | 'syscalls';
export type Grade = 'essential' | 'optional';

export interface ProgramSpec {
  readonly name: string;
  /** libbpf section: `tp_btf/<tracepoint>`, `tracepoint/<category>/<name>`, `syscall`, or `uprobe`/`uretprobe` (attached per binary by src/uprobes/). */
  readonly section: string;
  /** Programs that together give one thing; variants of one hook share a feature. */
  readonly feature: string;
  readonly grade: Grade;
  /** tp_btf: how many of the tracepoint's arguments the program reads. Of a
   * feature's programs on one hook, the one reading the most that the kernel's
   * prototype has is loaded; among equals, the first in the table. */
  readonly args?: number;
  /** Only on this send/recv path. */
  readonly ioPath?: IoPath;
  /** What the verifier must allow this program, probed before the load (src/kernel/program-probes.ts). */
  readonly needs?: readonly KernelCapability[];
  /** Loaded only together with this program (its partner on another hook), never without it. */
  readonly with?: string;
}

/**
 * Verifier rules that changed across kernels, beyond hooks and prototypes:
 * - bpf_loop: the helper exists (5.17+);
 * - sleepable_queue_map: a sleepable program may use a queue map (6.1 refuses:
 *   "Sleepable programs can only use array, hash, and ringbuf maps");
 * - task_pt_regs: a tracepoint program may call bpf_task_pt_regs (5.15+).
 */
export type KernelCapability = 'bpf_loop' | 'sleepable_queue_map' | 'task_pt_regs';

export interface FeatureSpec {
  readonly grade: Grade;
  /** Its programs work only together: when one cannot load, none does. */
  readonly whole?: boolean;
  /** What is missing from kspan's output while the feature is off. */
  readonly lost: string;
}

export const FEATURES = {
  'socket-state': { grade: 'essential', lost: 'handshakes and connect outcomes' },
  'send-recv': { grade: 'essential', lost: 'send/recv bytes and times' },
  close: { grade: 'essential', lost: 'close records, and freeing a closed socket\'s state' },
  retransmit: { grade: 'optional', lost: 'tcp.retransmit events' },
  'reset-sent': { grade: 'optional', lost: 'resets kspan\'s targets send' },
  'reset-received': { grade: 'optional', lost: 'resets kspan\'s targets receive' },
  accept: { grade: 'optional', lost: 'accept records: the accept-queue wait, and the server role of accepted sockets' },
  discovery: { grade: 'optional', lost: 'following processes as they exec, fork and exit: --all and the selectors other than --pid, children of targets, exits noticed at once' },
  'idle-flush': { grade: 'optional', lost: 'closing the last response of a quiet keep-alive connection before its next request or close' },
  uprobes: { grade: 'optional', lost: 'function spans from uprobes: dns.lookup, tls.handshake and --uprobe' },
  'uprobe-dns': { grade: 'optional', lost: 'the queried name and address count of dns.lookup spans (their duration and result stay)' },
  'uprobe-tls': { grade: 'optional', lost: 'the protocol version of tls.handshake spans (their duration and result stay)' },
  sched: { grade: 'optional', whole: true, lost: 'thread.sched spans: on-CPU, blocked and run-queue time per span' },
} as const satisfies Record<string, FeatureSpec>;
export type Feature = keyof typeof FEATURES;

const SYSCALL_IO = ['write', 'writev', 'sendto', 'sendmsg', 'read', 'readv', 'recvfrom', 'recvmsg'] as const;

export const PROGRAMS: readonly ProgramSpec[] = [
  { name: 'on_set_state', section: 'tp_btf/inet_sock_set_state', feature: 'socket-state', grade: 'essential', args: 3 },
  { name: 'on_send_length', section: 'tp_btf/sock_send_length', feature: 'send-recv', grade: 'essential', args: 3, ioPath: 'sock_length' },
  { name: 'on_recv_length', section: 'tp_btf/sock_recv_length', feature: 'send-recv', grade: 'essential', args: 3, ioPath: 'sock_length' },
  // The fallback: one program at each syscall's exit, the fd from the saved registers; where
  // bpf_task_pt_regs is missing (before 5.15), an entry program keeps the fd for a paired exit.
  ...SYSCALL_IO.flatMap((sc): ProgramSpec[] => [
    { name: `on_${sc}_exit`, section: `tracepoint/syscalls/sys_exit_${sc}`, feature: 'send-recv', grade: 'essential', ioPath: 'syscalls', needs: ['task_pt_regs'] },
    { name: `paired_${sc}_exit`, section: `tracepoint/syscalls/sys_exit_${sc}`, feature: 'send-recv', grade: 'essential', ioPath: 'syscalls' },
    { name: `on_${sc}_enter`, section: `tracepoint/syscalls/sys_enter_${sc}`, feature: 'send-recv', grade: 'essential', ioPath: 'syscalls', with: `paired_${sc}_exit` },
  ]),
  { name: 'on_destroy_sock', section: 'tp_btf/tcp_destroy_sock', feature: 'close', grade: 'essential', args: 1 },
  { name: 'on_retransmit', section: 'tp_btf/tcp_retransmit_skb', feature: 'retransmit', grade: 'optional', args: 3 },
  { name: 'on_retransmit_noerr', section: 'tp_btf/tcp_retransmit_skb', feature: 'retransmit', grade: 'optional', args: 2 },
  { name: 'on_send_reset', section: 'tp_btf/tcp_send_reset', feature: 'reset-sent', grade: 'optional', args: 1 },
  { name: 'on_receive_reset', section: 'tp_btf/tcp_receive_reset', feature: 'reset-received', grade: 'optional', args: 1 },
  { name: 'on_accept4_exit', section: 'tracepoint/syscalls/sys_exit_accept4', feature: 'accept', grade: 'optional' },
  { name: 'on_accept_exit', section: 'tracepoint/syscalls/sys_exit_accept', feature: 'accept', grade: 'optional' },
  // Variants without prototypes: the first whose needs the kernel meets is loaded.
  { name: 'flush_idle', section: 'syscall', feature: 'idle-flush', grade: 'optional', needs: ['bpf_loop', 'sleepable_queue_map'] },
  { name: 'flush_idle_walk', section: 'syscall', feature: 'idle-flush', grade: 'optional' },
  { name: 'on_proc_exec', section: 'tp_btf/sched_process_exec', feature: 'discovery', grade: 'optional', args: 1 },
  { name: 'on_proc_fork', section: 'tp_btf/sched_process_fork', feature: 'discovery', grade: 'optional', args: 2 },
  { name: 'on_proc_exit', section: 'tp_btf/sched_process_exit', feature: 'discovery', grade: 'optional', args: 1 },
  // Function spans (bpf/uprobes.bpf.h): the uprobes are attached by src/uprobes/, per binary.
  { name: 'uprobe_call_entry', section: 'uprobe', feature: 'uprobes', grade: 'optional' },
  { name: 'uprobe_call_return', section: 'uretprobe', feature: 'uprobes', grade: 'optional' },
  { name: 'uprobe_dns_return', section: 'uretprobe', feature: 'uprobe-dns', grade: 'optional' },
  { name: 'uprobe_tls_return', section: 'uretprobe', feature: 'uprobe-tls', grade: 'optional' },
  { name: 'calls_on_exit', section: 'tp_btf/sched_process_exit', feature: 'uprobes', grade: 'optional', args: 1 },
  { name: 'calls_on_exec', section: 'tp_btf/sched_process_exec', feature: 'uprobes', grade: 'optional', args: 1 },
  // bpf/sched.bpf.h: one feature, all three or none.
  { name: 'on_sched_switch', section: 'tp_btf/sched_switch', feature: 'sched', grade: 'optional', args: 4 },
  { name: 'on_sched_wakeup', section: 'tp_btf/sched_wakeup', feature: 'sched', grade: 'optional', args: 1 },
  // Refused (no bpf_get_task_stack for tp_btf): thread.off_cpu events without the kernel stack and wchan.
  { name: 'on_sched_wakeup_nostack', section: 'tp_btf/sched_wakeup', feature: 'sched', grade: 'optional', args: 1 },
  { name: 'on_sched_wakeup_new', section: 'tp_btf/sched_wakeup_new', feature: 'sched', grade: 'optional', args: 1 },
];

export function programSpec(name: string): ProgramSpec | undefined {
  return PROGRAMS.find((p) => p.name === name);
}

/** Whether another program of the table serves the same hook for the same feature (a variant to try when this one is refused). */
export function hasOtherVariant(name: string, programs: readonly ProgramSpec[] = PROGRAMS): boolean {
  const p = programs.find((x) => x.name === name);
  return !!p && programs.some((x) => x !== p && x.section === p.section && x.feature === p.feature && x.ioPath === p.ioPath);
}

/** What the running kernel offers to the programs. */
export interface KernelHooks {
  /** Argument count of BTF tracepoint `name`; undefined when the kernel lacks it. */
  tracepointArgs(name: string): number | undefined;
  /** Whether classic tracepoint `category/name` exists. */
  hasTracepoint(category: string, name: string): boolean;
  /** Set when classic tracepoints cannot be looked up at all (tracefs not readable): why, and what to grant. */
  tracepointsUnreadable?: { reason: string; privilege: string };
  /** Whether the verifier allows `cap`; asked only for programs the plan would otherwise load. */
  can(cap: KernelCapability): boolean;
}

/**
 * Why a program cannot load or attach here. `privilege`, when the kernel has the
 * hook but refused this process for want of a privilege (a capability, tracefs's
 * mode, kernel.perf_event_paranoid): what to grant.
 */
export interface Refusal {
  reason: string;
  privilege?: string;
}

export type ProgramDecision =
  | { load: true }
  /** Not wanted here: the other I/O path, a variant for another prototype, or a feature switched off by the user. No loss. */
  | { load: false; why: 'other-path' | 'other-variant' | 'disabled'; reason: string }
  /** Wanted, but the kernel lacks the hook or refused the program: a loss. */
  | ({ load: false; why: 'missing' | 'rejected' } & Refusal);

export interface FeatureOff {
  feature: Feature;
  grade: Grade;
  lost: string;
  /** The programs that could not load, each with the reason (and what to grant, when a privilege was lacking). */
  programs: ({ name: string } & Refusal)[];
}

export interface ProgramPlan {
  readonly ioPath: IoPath;
  readonly decisions: ReadonlyMap<string, ProgramDecision>;
  /** Features with a program that cannot load; essential ones stop kspan. */
  readonly off: readonly FeatureOff[];
  load(name: string): boolean;
}

/** Why the kernel cannot give this program its hook, or undefined when it can. */
function hookMissing(p: ProgramSpec, hooks: KernelHooks): Refusal | undefined {
  const [kind, a, b] = p.section.split('/');
  if (kind === 'tp_btf') {
    const n = hooks.tracepointArgs(a);
    if (n === undefined) return { reason: `the kernel has no BTF tracepoint ${a}` };
    if (p.args !== undefined && n < p.args) return { reason: `the kernel's ${a} has ${n} argument(s); the program reads ${p.args}` };
  } else if (kind === 'tracepoint' && hooks.tracepointsUnreadable) {
    const { reason, privilege } = hooks.tracepointsUnreadable;
    return { reason: `${reason}: ${privilege}`, privilege };
  } else if (kind === 'tracepoint' && !hooks.hasTracepoint(a, b)) return { reason: `the kernel has no tracepoint ${a}:${b}` };
  const lacking = p.needs?.find((cap) => !hooks.can(cap));
  if (lacking) return { reason: `the kernel's verifier does not allow ${CAPABILITY_TEXT[lacking]}` };
  return undefined;
}

const CAPABILITY_TEXT: Record<KernelCapability, string> = {
  bpf_loop: 'bpf_loop',
  sleepable_queue_map: 'a queue map in a sleepable program',
  task_pt_regs: 'bpf_task_pt_regs in a tracepoint program',
};

/**
 * Plans the load: for each program, load it or say why not. `rejected` holds
 * programs the kernel already refused (name → why): they stay off, and the
 * next variant of their hook, if any, is tried instead.
 */
export function planPrograms(
  hooks: KernelHooks,
  ioPath: IoPath,
  rejected: ReadonlyMap<string, Refusal> = new Map(),
  programs: readonly ProgramSpec[] = PROGRAMS,
  disabled: ReadonlySet<string> = new Set(),
): ProgramPlan {
  const decisions = new Map<string, ProgramDecision>();
  const bySection = new Map<string, ProgramSpec[]>();
  for (const p of programs) {
    if (disabled.has(p.feature)) {
      decisions.set(p.name, { load: false, why: 'disabled', reason: `${p.feature} switched off` });
      continue;
    }
    if (p.ioPath && p.ioPath !== ioPath) {
      decisions.set(p.name, { load: false, why: 'other-path', reason: `send/recv path ${p.ioPath} not in use (${ioPath})` });
      continue;
    }
    const key = `${p.feature} ${p.section}`;
    bySection.set(key, [...(bySection.get(key) ?? []), p]);
  }
  for (const group of bySection.values()) {
    // Variants of one hook: the one reading the most arguments goes first.
    const ordered = [...group].sort((x, y) => (y.args ?? 0) - (x.args ?? 0));
    let chosen: ProgramSpec | undefined;
    for (const p of ordered) {
      const refused = rejected.get(p.name);
      const missing = refused === undefined && !chosen ? hookMissing(p, hooks) : undefined;
      if (chosen) {
        decisions.set(p.name, { load: false, why: 'other-variant', reason: `${chosen.name} serves ${p.section} here` });
      } else if (refused !== undefined) {
        decisions.set(p.name, { load: false, why: 'rejected', ...refused });
      } else if (missing !== undefined) {
        decisions.set(p.name, { load: false, why: 'missing', ...missing });
      } else {
        chosen = p;
        decisions.set(p.name, { load: true });
      }
    }
    // A hook with a working variant loses nothing: its other variants are not losses.
    if (chosen) {
      for (const p of ordered) {
        const d = decisions.get(p.name)!;
        if (!d.load && (d.why === 'missing' || d.why === 'rejected')) {
          decisions.set(p.name, { load: false, why: 'other-variant', reason: `${chosen.name} serves ${p.section} here (${d.reason})` });
        }
      }
    }
  }
  // A program that goes with a partner follows the partner's decision.
  for (const p of programs) {
    if (!p.with || !decisions.get(p.name)?.load) continue;
    if (!decisions.get(p.with)?.load) decisions.set(p.name, { load: false, why: 'other-variant', reason: `goes with ${p.with}, not loaded here` });
  }
  // A feature whose programs work only together loses all of them with one.
  for (const [feature, spec] of Object.entries(FEATURES) as [Feature, FeatureSpec][]) {
    if (!spec.whole) continue;
    const own = programs.filter((p) => p.feature === feature);
    const lost = own.find((p) => {
      const d = decisions.get(p.name);
      return d && !d.load && (d.why === 'missing' || d.why === 'rejected');
    });
    if (!lost) continue;
    for (const p of own) {
      if (decisions.get(p.name)?.load) decisions.set(p.name, { load: false, why: 'rejected', reason: `goes with ${lost.name}, which cannot load` });
    }
  }
  const offByFeature = new Map<Feature, FeatureOff>();
  for (const p of programs) {
    const d = decisions.get(p.name)!;
    if (d.load || d.why === 'other-path' || d.why === 'other-variant' || d.why === 'disabled') continue;
    const feature = p.feature as Feature;
    let off = offByFeature.get(feature);
    if (!off) {
      off = { feature, grade: FEATURES[feature].grade, lost: FEATURES[feature].lost, programs: [] };
      offByFeature.set(feature, off);
    }
    const privilege = d.why === 'missing' || d.why === 'rejected' ? d.privilege : undefined;
    off.programs.push({ name: p.name, reason: d.reason, ...(privilege !== undefined ? { privilege } : {}) });
  }
  return {
    ioPath,
    decisions,
    off: [...offByFeature.values()],
    load: (name) => decisions.get(name)?.load === true,
  };
}

/**
 * One sentence per feature that is off, for warnings and doctor. Programs kept
 * off for the same reason share it (a closed tracefs keeps the fallback's 24
 * send/recv programs off for one reason).
 */
export function describeOff(off: FeatureOff): string {
  const byReason = new Map<string, string[]>();
  for (const p of off.programs) byReason.set(p.reason, [...(byReason.get(p.reason) ?? []), p.name]);
  const why = [...byReason].map(([reason, names]) => `${names.join(', ')}: ${reason}`).join('; ');
  return `${off.feature} is off (${why}); lost: ${off.lost}`;
}

/**
 * An essential feature the plan cannot give: kspan cannot run. KSPAN_ERR_PRIVILEGE
 * with what to grant when every one of its programs was refused for want of a
 * privilege, else KSPAN_ERR_KERNEL.
 */
export function essentialLossError(off: FeatureOff, ioPath: IoPath, forced: boolean): KspanError {
  // Refused for want of a privilege, not for want of a hook (also on a forced
  // path: it exists, this process may not use it): say what to grant.
  const grants = off.programs.map((p) => p.privilege);
  if (grants.length && grants.every((g) => g !== undefined)) {
    return new KspanError('KSPAN_ERR_PRIVILEGE', `not allowed to attach the programs kspan needs: ${describeOff(off)}`, {
      hint: [...new Set(grants)].join('; '),
      details: { feature: off.feature, programs: off.programs },
    });
  }
  if (off.feature === 'send-recv' && forced) {
    return new KspanError('KSPAN_ERR_KERNEL', `the forced send/recv path ${ioPath} is not available: ${describeOff(off)}`, {
      hint: 'leave --io-hooks at auto: kspan picks the path this kernel has',
    });
  }
  return new KspanError('KSPAN_ERR_KERNEL', `this kernel lacks a hook kspan needs: ${describeOff(off)}`, {
    hint: 'kspan needs Linux 5.12 or later with BTF; run `kspan doctor` for the details',
    details: { feature: off.feature, programs: off.programs },
  });
}
