/**
 * Scheduler records → `thread.sched` kernel spans: one per (thread, span) the
 * kernel aggregated (bpf/sched.bpf.h), a child of that span, with the
 * `kspan.sched.*` figures, and the record's longest off-CPU interval as a
 * `thread.off_cpu` event when it lasted at least `offCpuEventNs`. Pure.
 *
 * The kernel already keeps unsampled spans to itself; a record of one (from a
 * recording made with --unsampled) is dropped and counted here too.
 */
import type { SchedRecord } from '../records/sched-record.ts';
import { syscallName } from '../records/sched-record.ts';
import { newKernelSpan, type KernelSpan } from './kernel-span.ts';

/** Default shortest off-CPU interval that becomes a `thread.off_cpu` event: 1 ms. */
export const OFF_CPU_EVENT_NS = 1_000_000n;

const NO_ENDPOINT = Object.freeze({ address: '', port: 0 });

export interface SchedSpanCounters {
  records: number;
  spans: number;
  unsampledSpans: number;
}

export class SchedSpans {
  readonly counters: SchedSpanCounters = { records: 0, spans: 0, unsampledSpans: 0 };
  readonly #emit: (k: KernelSpan) => void;
  readonly #offCpuEventNs: bigint;

  constructor(emit: (k: KernelSpan) => void, offCpuEventNs = OFF_CPU_EVENT_NS) {
    this.#emit = emit;
    this.#offCpuEventNs = offCpuEventNs;
  }

  push(r: SchedRecord): void {
    this.counters.records++;
    if (!(r.context.traceFlags & 1)) {
      this.counters.unsampledSpans++;
      return;
    }
    this.counters.spans++;
    this.#emit(schedSpan(r, this.#offCpuEventNs));
  }
}

/** The thread.sched span of one record. */
export function schedSpan(r: SchedRecord, offCpuEventNs = OFF_CPU_EVENT_NS): KernelSpan {
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
  k.sched = {
    onCpuNs: Number(r.onCpuNs),
    blockedNs: Number(r.blockedNs),
    runqNs: Number(r.runqNs),
    voluntary: r.voluntary,
    involuntary: r.involuntary,
    migrations: r.migrations,
  };
  if (r.flushed) k.incomplete = 'flushed';
  else if (r.exited) k.incomplete = 'process_exit';
  if (r.maxOffNs && r.maxOffNs >= offCpuEventNs) {
    k.events.push({
      name: 'thread.off_cpu',
      tsNs: r.maxOffStartNs,
      tcpState: 0,
      resetSent: false,
      errno: 0,
      offCpu: { ns: Number(r.maxOffNs), blocked: r.maxOffBlocked, syscall: syscallName(r.maxOffSyscall) },
    });
  }
  return k;
}
