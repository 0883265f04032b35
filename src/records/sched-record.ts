/**
 * Scheduler records (bpf/sched.bpf.h): the time one thread spent under one span,
 * on a CPU, blocked and waiting to run. Decoded from the `sched_events` ring, printed by
 * `kspan events` (type "sched"), made into `thread.sched` spans (src/spans/sched-spans.ts).
 * Pure.
 */
import { decodeKspanSchedEvent, KspanSchedFlag as SF, type KspanSchedEvent } from './abi.generated.ts';
import { traceContext } from './decoder.ts';
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
}

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
  };
}

/** One ring-buffer payload → a SchedRecord (null: no span). */
export function decodeSchedRecord(view: DataView, offset: number): SchedRecord | null {
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
