/**
 * Scheduler records (bpf/sched.bpf.h): the time one thread spent under one span,
 * on a CPU, blocked and waiting to run. Decoded from the `sched_events` ring, printed by
 * `kspan events` (type "sched"), made into `thread.sched` spans (src/spans/sched-spans.ts).
 * Pure.
 */
import {
  decodeKspanSchedEvent, decodeKspanSchedOff, KSPAN_SCHED_EVENT_SIZE, KSPAN_SCHED_OFF_SIZE, KspanSchedFlag as SF,
  KspanSchedOffKind, type KspanSchedEvent, type KspanSchedOff,
} from './abi.generated.ts';
import { hex, traceContext } from './decoder.ts';
import type { TraceContext } from './kernel-record.ts';

export interface SchedRecord {
  type: 'sched';
  pid: number;
  tid: number;
  /** The span the thread served; never null (threads with no span make no record). */
  context: TraceContext;
  /** CLOCK_MONOTONIC ns: start of the first run under the span. */
  startNs: bigint;
  /** CLOCK_MONOTONIC ns: the last switch-in under the span, or the switch-out that closed it. */
  endNs: bigint;
  onCpuNs: bigint;
  blockedNs: bigint;
  runqNs: bigint;
  voluntary: number;
  involuntary: number;
  migrations: number;
  /** The longest off-CPU interval: its length, start, whether it blocked, and the syscall the thread was in (-1: none). */
  maxOffNs: bigint;
  maxOffStartNs: bigint;
  maxOffBlocked: boolean;
  maxOffSyscall: number;
  /** Closed by the agent at shutdown. */
  flushed: boolean;
  /** Closed because the thread exited. */
  exited: boolean;
  /** Closed by a switch-out with no span: the last run counted is the one in which the span ended. */
  tail: boolean;
  /** Off-CPU intervals at least the event threshold long; an OffCpuRecord came ahead for each of the first KSPAN_SCHED_MAX_OFF_EVENTS. */
  offEvents: number;
}

/**
 * One off-CPU interval of a (thread, span) at least the event threshold long,
 * ahead of that (thread, span)'s SchedRecord on the same ring. A blocked one
 * carries the kernel stack it blocked in (raw return addresses, the
 * scheduler's frames included; symbolized by src/spans/kallsyms.ts).
 */
export interface OffCpuRecord {
  type: 'off_cpu';
  pid: number;
  tid: number;
  /** The span, as in its SchedRecord's context. */
  traceId: string;
  spanId: string;
  kind: 'blocked' | 'runqueue';
  /** CLOCK_MONOTONIC ns: the switch-out (blocked, preempted) or the wakeup (waiting to run after a block). */
  startNs: bigint;
  durationNs: bigint;
  /** The syscall the thread was in at the switch-out, -1: none. */
  syscall: number;
  /** Kernel return addresses, innermost first (empty: a runqueue interval, or no stack taken). */
  stack: bigint[];
}

/** Default shortest off-CPU interval that makes an OffCpuRecord (a `thread.off_cpu` event): 1 ms. */
export const OFF_CPU_EVENT_NS = 1_000_000n;

/** What the `sched_events` ring carries. */
export type SchedRingRecord = SchedRecord | OffCpuRecord;

/** A SchedRecord from a decoded record, or null when it carries no span (never made by the kernel). */
export function fromSchedEvent(e: KspanSchedEvent, extraFlags = 0): SchedRecord | null {
  const context = traceContext(e.ctx);
  if (!context) return null;
  const flags = e.flags | extraFlags;
  return {
    type: 'sched',
    pid: e.pid,
    tid: e.tid,
    context,
    startNs: e.start_ns,
    endNs: e.end_ns,
    onCpuNs: e.on_cpu_ns,
    blockedNs: e.blocked_ns,
    runqNs: e.runq_ns,
    voluntary: e.voluntary,
    involuntary: e.involuntary,
    migrations: e.migrations,
    maxOffNs: e.max_off_ns,
    maxOffStartNs: e.max_off_start_ns,
    maxOffBlocked: (flags & SF.KSPAN_SF_MAX_OFF_BLOCKED) !== 0,
    maxOffSyscall: e.max_off_syscall,
    flushed: (flags & SF.KSPAN_SF_FLUSHED) !== 0,
    exited: (flags & SF.KSPAN_SF_EXITED) !== 0,
    tail: (flags & SF.KSPAN_SF_TAIL) !== 0,
    offEvents: e.off_events,
  };
}

/** An OffCpuRecord from a decoded record. */
export function fromSchedOff(e: KspanSchedOff): OffCpuRecord {
  const stack: bigint[] = [];
  const v = new DataView(e.stack.buffer, e.stack.byteOffset, e.stack.byteLength);
  for (let i = 0; i < e.frames && i * 8 < e.stack.byteLength; i++) stack.push(v.getBigUint64(i * 8, true));
  return {
    type: 'off_cpu',
    pid: e.pid,
    tid: e.tid,
    traceId: hex(e.trace_id),
    spanId: hex(e.span_id),
    kind: e.kind === KspanSchedOffKind.KSPAN_OFF_BLOCKED ? 'blocked' : 'runqueue',
    startNs: e.start_ns,
    durationNs: e.duration_ns,
    syscall: e.syscall,
    stack,
  };
}

/**
 * One ring-buffer payload → a SchedRecord (null: no span) or an OffCpuRecord,
 * told apart by their sizes.
 */
export function decodeSchedRecord(view: DataView, offset: number, length = KSPAN_SCHED_EVENT_SIZE): SchedRingRecord | null {
  if (length === KSPAN_SCHED_OFF_SIZE) return fromSchedOff(decodeKspanSchedOff(view, offset));
  if (length !== KSPAN_SCHED_EVENT_SIZE) throw new Error(`sched_events: a ${length}-byte record is neither kspan_sched_event nor kspan_sched_off`);
  return fromSchedEvent(decodeKspanSchedEvent(view, offset));
}

/** x86_64 syscall numbers a thread commonly blocks in, by name; others are `syscall_N`. */
const SYSCALLS: Record<number, string> = {
  0: 'read', 1: 'write', 7: 'poll', 17: 'pread64', 18: 'pwrite64', 19: 'readv', 20: 'writev', 23: 'select',
  24: 'sched_yield', 34: 'pause', 35: 'nanosleep', 40: 'sendfile', 42: 'connect', 43: 'accept', 44: 'sendto',
  45: 'recvfrom', 46: 'sendmsg', 47: 'recvmsg', 61: 'wait4', 72: 'fcntl', 74: 'fsync', 75: 'fdatasync',
  202: 'futex', 228: 'clock_gettime', 230: 'clock_nanosleep', 232: 'epoll_wait', 247: 'waitid', 270: 'pselect6', 271: 'ppoll',
  281: 'epoll_pwait', 288: 'accept4', 299: 'recvmmsg', 307: 'sendmmsg', 426: 'io_uring_enter', 441: 'epoll_pwait2',
};

/** The name of the syscall a thread was in (x86_64), or null for none. */
export function syscallName(nr: number): string | null {
  if (nr < 0) return null;
  return SYSCALLS[nr] ?? `syscall_${nr}`;
}
