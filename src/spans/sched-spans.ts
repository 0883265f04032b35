/**
 * Scheduler records → `thread.sched` kernel spans: one per (thread, span) the
 * kernel aggregated (bpf/sched.bpf.h), a child of that span, with the
 * `kspan.sched.*` figures, and a `thread.off_cpu` event for each off-CPU
 * interval the kernel reported (OffCpuRecord: at least the threshold long),
 * a blocked one named by its wait channel and kernel stack. Pure: the kernel
 * symbols come from the caller.
 *
 * The interval records of a (thread, span) come on the same ring ahead of its
 * aggregate: they wait here, per (tid, span), until it comes. The kernel makes
 * at most KSPAN_SCHED_MAX_OFF_EVENTS of them per aggregate and counts the rest
 * in it (`offEvents`); what the aggregate counted and no record brought (over
 * the cap, or lost on a full ring) is `kspan.sched.off_cpu.events_dropped` on
 * the span and in the counters. Records whose aggregate never comes (lost on a
 * full ring, or unsampled) are dropped when the thread's next aggregate comes,
 * and at shutdown; counted.
 *
 * The kernel already keeps unsampled spans to itself; a record of one (from a
 * recording made with --unsampled) is dropped and counted here too.
 */
import { KspanSchedLimit } from '../records/abi.generated.ts';
import type { OffCpuRecord, SchedRecord, SchedRingRecord } from '../records/sched-record.ts';
import { syscallName } from '../records/sched-record.ts';
import type { KernelSymbols } from './kallsyms.ts';
import { newKernelSpan, type KernelSpan, type KernelSpanEvent } from './kernel-span.ts';

/** Kernel frames of a thread.off_cpu event's `kspan.sched.kernel_stack`, from the wait channel outwards. */
export const OFF_CPU_STACK_FRAMES = 8;

const NO_ENDPOINT = Object.freeze({ address: '', port: 0 });

export interface SchedSpanCounters {
  records: number;
  spans: number;
  unsampledSpans: number;
  /** thread.off_cpu events on spans. */
  offCpuEvents: number;
  /** Off-CPU intervals an aggregate counted with no event: over the per-span cap, or their record lost. */
  offCpuEventsDropped: number;
  /** Interval records whose aggregate never came (dropped). */
  offCpuOrphans: number;
  /** Blocked intervals with a stack that could not be named (no kernel symbols: kptr_restrict, or /proc/kallsyms unreadable). */
  offCpuUnsymbolized: number;
}

export interface SchedSpansOptions {
  /** The kernel's symbols, asked for at the first stack to name; null: none to be had. */
  symbols?: () => KernelSymbols | null;
}

const key = (tid: number, traceId: string, spanId: string) => `${tid}/${traceId}/${spanId}`;

export class SchedSpans {
  readonly counters: SchedSpanCounters = {
    records: 0, spans: 0, unsampledSpans: 0, offCpuEvents: 0, offCpuEventsDropped: 0, offCpuOrphans: 0, offCpuUnsymbolized: 0,
  };
  readonly #emit: (k: KernelSpan) => void;
  readonly #symbols: (() => KernelSymbols | null) | undefined;
  /** Interval records waiting for their aggregate, by (tid, span); and each tid's key (one open aggregate per thread). */
  readonly #pending = new Map<string, OffCpuRecord[]>();
  readonly #keyOfTid = new Map<number, string>();

  constructor(emit: (k: KernelSpan) => void, opts: SchedSpansOptions = {}) {
    this.#emit = emit;
    this.#symbols = opts.symbols;
  }

  /** Interval records waiting for their aggregate. */
  get pending(): number {
    let n = 0;
    for (const l of this.#pending.values()) n += l.length;
    return n;
  }

  push(r: SchedRingRecord): void {
    if (r.type === 'off_cpu') {
      this.#hold(r);
      return;
    }
    this.counters.records++;
    const k = key(r.tid, r.context.traceId, r.context.spanId);
    const intervals = this.#pending.get(k) ?? [];
    this.#pending.delete(k);
    this.#keyOfTid.delete(r.tid);
    if (!(r.context.traceFlags & 1)) {
      this.counters.unsampledSpans++;
      this.counters.offCpuOrphans += intervals.length;
      return;
    }
    this.counters.spans++;
    const span = schedSpan(r, intervals, this.#symbols);
    this.counters.offCpuEvents += span.events.length;
    this.counters.offCpuEventsDropped += span.sched!.offCpuEventsDropped ?? 0;
    this.counters.offCpuUnsymbolized += span.events.filter((e) => e.offCpu?.wchan === null).length;
    this.#emit(span);
  }

  /** At shutdown, after the last aggregates: records still waiting will get none. */
  flush(): void {
    this.counters.offCpuOrphans += this.pending;
    this.#pending.clear();
    this.#keyOfTid.clear();
  }

  #hold(r: OffCpuRecord): void {
    const k = key(r.tid, r.traceId, r.spanId);
    const was = this.#keyOfTid.get(r.tid);
    if (was !== k) {
      // The thread's earlier aggregate never came (the ring was full): its records never will be used.
      if (was !== undefined) {
        this.counters.offCpuOrphans += this.#pending.get(was)?.length ?? 0;
        this.#pending.delete(was);
      }
      this.#keyOfTid.set(r.tid, k);
    }
    const list = this.#pending.get(k);
    if (list) {
      // The kernel caps them per aggregate; a longer list is a tid reused under the same span.
      if (list.length < KspanSchedLimit.KSPAN_SCHED_MAX_OFF_EVENTS) list.push(r);
      else this.counters.offCpuOrphans++;
    } else this.#pending.set(k, [r]);
  }
}

/** A thread.off_cpu event of an interval record; `symbols` names a blocked one's stack. */
export function offCpuEvent(r: OffCpuRecord, symbols?: () => KernelSymbols | null): KernelSpanEvent {
  const blocked = r.kind === 'blocked';
  const offCpu: NonNullable<KernelSpanEvent['offCpu']> = { ns: Number(r.durationNs), blocked, syscall: syscallName(r.syscall) };
  if (blocked && r.stack.length) {
    const table = symbols?.() ?? null;
    if (table && !table.restricted) {
      const named = table.describe(r.stack, OFF_CPU_STACK_FRAMES);
      offCpu.wchan = named.wchan;
      offCpu.stack = named.frames;
    } else offCpu.wchan = null;
  }
  return { name: 'thread.off_cpu', tsNs: r.startNs, tcpState: 0, resetSent: false, errno: 0, offCpu };
}

/** The thread.sched span of one aggregate, with a thread.off_cpu event per interval record of it. */
export function schedSpan(r: SchedRecord, intervals: readonly OffCpuRecord[] = [], symbols?: () => KernelSymbols | null): KernelSpan {
  const k = newKernelSpan({
    name: 'thread.sched',
    parent: r.context,
    startNs: r.startNs,
    endNs: r.endNs,
    cookie: 0n,
    pid: r.pid,
    tid: r.tid,
    family: 4,
    local: NO_ENDPOINT,
    peer: NO_ENDPOINT,
    role: 'client',
    srttUs: null,
  });
  const dropped = Math.max(0, r.offEvents - intervals.length);
  k.sched = {
    onCpuNs: Number(r.onCpuNs),
    blockedNs: Number(r.blockedNs),
    runqNs: Number(r.runqNs),
    voluntary: r.voluntary,
    involuntary: r.involuntary,
    migrations: r.migrations,
  };
  if (dropped) k.sched.offCpuEventsDropped = dropped;
  if (r.flushed) k.incomplete = 'flushed';
  else if (r.exited) k.incomplete = 'process_exit';
  for (const i of intervals) k.events.push(offCpuEvent(i, symbols));
  return k;
}
