/**
 * What the correlator produces: one kernel span, still on the kernel's clock
 * (CLOCK_MONOTONIC, bigint ns) and still tied to its socket. The span builder
 * (span-builder.ts) turns it into an OpenTelemetry ReadableSpan. Pure.
 */
import type { SocketIdentity, TraceContext } from '../records/kernel-record.ts';

export type KernelSpanName =
  | 'tcp.accept'
  | 'tcp.connect'
  | 'tcp.send'
  | 'tcp.recv'
  /** Standalone: retransmits whose data-owning span was already gone. */
  | 'tcp.retransmit'
  /** Standalone: a reset with no span left to carry it. */
  | 'tcp.reset'
  /** With `orphans`: the root of one request/response exchange whose spans had no context. */
  | 'tcp.exchange'
  /** Scheduler time of one thread under its span (src/spans/sched-spans.ts); no socket. */
  | 'thread.sched';

export type KernelEventName = 'tcp.retransmit' | 'tcp.reset' | 'thread.off_cpu';

export interface KernelSpanEvent {
  name: KernelEventName;
  tsNs: bigint;
  /** TCP state number when it happened (include/net/tcp_states.h). */
  tcpState: number;
  /** tcp.reset: this side sent the RST. */
  resetSent: boolean;
  /** tcp.retransmit: the kernel's err for the retransmission (0 = sent). */
  errno: number;
  /** thread.off_cpu: how long the thread was off its CPU, whether it blocked (else waited to run), the syscall it was in,
   * and for a blocked interval what it blocked in: the wait channel and the kernel frames from it outwards (when known). */
  offCpu?: { ns: number; blocked: boolean; syscall: string | null; wchan?: string | null; stack?: readonly string[] };
}

/** thread.sched: what the scheduler did to one thread while it served the span. */
export interface SchedFigures {
  onCpuNs: number;
  blockedNs: number;
  runqNs: number;
  voluntary: number;
  involuntary: number;
  migrations: number;
  /** Off-CPU intervals at least the event threshold long that have no thread.off_cpu event (over the cap, or lost on the way). */
  offCpuEventsDropped?: number;
}

/** Why a span was ended by the agent rather than by what the kernel saw. */
export type IncompleteReason = 'process_exit' | 'evicted' | 'idle' | 'shutdown' | 'flushed';

export interface KernelSpan extends SocketIdentity {
  name: KernelSpanName;
  /** The application span this one hangs under; null for an orphan (root) span. */
  parent: TraceContext | null;
  /** The parent is a kernel span of kspan's own (a tcp.exchange root), not the target's. */
  localParent: boolean;
  /** The span's own ids when the correlator chose them (a tcp.exchange root, named by its spans); else null. */
  self: TraceContext | null;
  startNs: bigint;
  endNs: bigint;
  role: 'server' | 'client';
  /** send/recv: bytes and syscalls; 0 for the others. */
  bytes: number;
  calls: number;
  /** Retransmit and reset events, in time order. */
  events: KernelSpanEvent[];
  /** Number of tcp.retransmit events. */
  retransmits: number;
  /** Smoothed RTT, known when the socket closed while the span was still held. */
  srttUs: number | null;
  /** tcp.accept: handshake complete → accept() returned; null when the handshake was not seen. */
  acceptQueueNs: bigint | null;
  /** Client tcp.recv: the wait from the end of the request to the first response byte. */
  waitNs: bigint | null;
  /** Status message when the span is an error (connect failure, reset). */
  error: string | null;
  /** `error.type`: refused, timed_out, reset, … */
  errorType: string | null;
  incomplete: IncompleteReason | null;
  /** send/recv counted by the syscall-tracepoint fallback (kernels < 6.3). */
  fallback: boolean;
  /** thread.sched only (its socket fields are empty); null for the TCP spans. */
  sched: SchedFigures | null;
}

/** What a new span is given: what it is about, its times and its parent. */
export type SpanSubject = SocketIdentity & Pick<KernelSpan, 'name' | 'parent' | 'startNs' | 'endNs' | 'role' | 'srttUs'>;

/** A span about `s` with nothing counted yet: no bytes, events, waits or error (the correlator adds them). */
export function newKernelSpan(s: SpanSubject): KernelSpan {
  return {
    name: s.name,
    parent: s.parent,
    localParent: false,
    self: null,
    startNs: s.startNs,
    endNs: s.endNs,
    cookie: s.cookie,
    pid: s.pid,
    tid: s.tid,
    family: s.family,
    local: s.local,
    peer: s.peer,
    role: s.role,
    bytes: 0,
    calls: 0,
    events: [],
    retransmits: 0,
    srttUs: s.srttUs,
    acceptQueueNs: null,
    waitNs: null,
    error: null,
    errorType: null,
    incomplete: null,
    fallback: false,
    sched: null,
  };
}
