/**
 * kspan's own metrics, in one table (METRICS): each metric's OpenTelemetry name,
 * instrument, unit, attributes and meaning, and where its value comes from. The
 * values are not counted again here: every one is read, at collection time,
 * from the counter that already exists (the kernel's per-CPU `counters` map,
 * the correlator's and the export pipeline's counters, the context reader's
 * stats, the targets map, each BPF program's bpf_prog_info), plus the process's
 * own CPU time and RSS. docs/METRICS.md documents the table (a unit test keeps
 * the two equal).
 *
 * Names follow the OpenTelemetry conventions (dotted, no unit in the name, the
 * unit in UCUM, `process.*` from the semantic conventions); the Prometheus
 * names derived from them (src/metrics/prometheus-names.ts) follow Prometheus'
 * (`_total` on counters, the unit as a suffix).
 */
import type { Attributes, BatchObservableResult, Meter, Observable } from '@opentelemetry/api';
import type { ThreadContextReaderStats } from '../context/thread-context-reader.ts';
import type { TracerCounters } from '../kernel/tcp-tracer.ts';
import type { SpanPipelineStats } from '../spans/span-pipeline.ts';
import type { ProgramStats } from './bpf-program-stats.ts';

/** What one collection reads, once, for every metric. */
export interface AgentSnapshot {
  kernel: TracerCounters;
  context: ThreadContextReaderStats;
  spans: SpanPipelineStats;
  /** Spans the export queue holds at most. */
  exportQueueCapacity: number;
  /** Spans with no context are exported (--orphans), not dropped. */
  orphansExported: boolean;
  targets: TargetCounts;
  /** Each loaded program's bpf_prog_info counters. */
  programs: ProgramStats[];
  /** The kernel counts runs and run time (BPF statistics on); else those read 0 and are not reported. */
  bpfStatsEnabled: boolean;
  cpu: NodeJS.CpuUsage;
  rssBytes: number;
}

export interface TargetCounts {
  /** Processes traced now. */
  traced: number;
  /** Processes that became targets since start. */
  found: number;
  /** Targets forgotten since start (exited, or deselected), their state freed. */
  forgotten: number;
}

type Point = [value: number, attributes?: Attributes];

export interface MetricSpec {
  /** OpenTelemetry name. */
  name: string;
  instrument: 'counter' | 'gauge' | 'updowncounter';
  /** UCUM unit: `s`, `By`, `{record}`. */
  unit: string;
  /** Attribute keys the points carry, with their values (for the docs). */
  attributes?: Record<string, readonly string[] | string>;
  description: string;
  read: (s: AgentSnapshot) => Point[];
}

const DROP_REASON = 'kspan.drop.reason';

/** Kernel records that never reached the correlator, by cause (true losses first, then the ones policy chose). */
const RECORD_DROPS: [reason: string, read: (k: TracerCounters) => number][] = [
  ['ring_full', (k) => k.KSPAN_C_RINGBUF_FULL],
  ['socket_table_full', (k) => k.KSPAN_C_SOCK_TABLE_FULL],
  ['no_cookie', (k) => k.KSPAN_C_NO_COOKIE],
  ['undecodable', (k) => k.decode_errors],
  ['handler_error', (k) => k.ring_handler_errors],
  ['unsampled', (k) => k.KSPAN_C_UNSAMPLED],
  ['orphans_ratio', (k) => k.KSPAN_C_ORPHAN_SKIPPED],
];

const CONTEXT_REFUSALS: [outcome: string, read: (k: TracerCounters) => number][] = [
  ['torn', (k) => k.KSPAN_C_CTX_TORN],
  ['invalid', (k) => k.KSPAN_C_CTX_INVALID],
  ['fault', (k) => k.KSPAN_C_CTX_FAULT],
  ['node_rejected', (k) => k.KSPAN_C_CTX_NODE_REJECTED],
  ['suspect', (k) => k.KSPAN_C_CTX_SUSPECT],
];

const SPAN_DROPS: [reason: string, read: (s: AgentSnapshot) => number][] = [
  ['unsampled', (s) => s.spans.correlator.unsampledSpans],
  ['no_context', (s) => (s.orphansExported ? 0 : s.spans.correlator.orphanSpans)],
  ['queue_full', (s) => s.spans.export.droppedQueueFull],
  ['export_failed', (s) => s.spans.export.droppedFailed],
  ['shutdown', (s) => s.spans.export.droppedShutdown],
  ['spool_full', (s) => s.spans.export.droppedSpool],
  ['collector_rejected', (s) => s.spans.export.rejected],
];

const RECORD_TYPES = ['accept', 'connect', 'send', 'recv', 'retransmit', 'reset', 'close'] as const;

export const METRICS: readonly MetricSpec[] = [
  {
    name: 'kspan.records', instrument: 'counter', unit: '{record}',
    attributes: { 'kspan.record.type': RECORD_TYPES },
    description: 'Kernel records received from the ring buffer, by type.',
    read: (s) => RECORD_TYPES.map((t) => [s.spans.correlator.recordsByType[t], { 'kspan.record.type': t }]),
  },
  {
    name: 'kspan.records.dropped', instrument: 'counter', unit: '{record}',
    attributes: { [DROP_REASON]: RECORD_DROPS.map(([r]) => r) },
    description:
      'Kernel records not delivered, by cause: lost (ring_full: ring buffer full; socket_table_full: no room for the socket\'s state; ' +
      'no_cookie: a socket without a cookie on the syscall path; undecodable; handler_error) or left in the kernel by policy ' +
      '(unsampled: one per send/recv aggregate of an unsampled context; orphans_ratio: --orphans-ratio).',
    read: (s) => RECORD_DROPS.map(([reason, f]) => [f(s.kernel), { [DROP_REASON]: reason }]),
  },
  {
    name: 'kspan.context.reads.refused', instrument: 'counter', unit: '{read}',
    attributes: { 'kspan.context.outcome': CONTEXT_REFUSALS.map(([o]) => o) },
    description:
      "Thread-context reads in the kernel whose context was not used, by outcome: torn (changed while copied), invalid (valid != 1), " +
      'fault (unreadable memory), node_rejected (the Node.js walk refused a V8 structure), suspect (a server response changed context ' +
      'with no request read in between; kept under the first).',
    read: (s) => CONTEXT_REFUSALS.map(([outcome, f]) => [f(s.kernel), { 'kspan.context.outcome': outcome }]),
  },
  {
    name: 'kspan.context.resolutions', instrument: 'counter', unit: '{resolution}',
    attributes: { 'kspan.context.outcome': ['resolved', 'not_ready', 'failed'] },
    description: "Looks at a target's memory for where its threads keep their span, by outcome.",
    read: (s) => [
      [s.context.resolved, { 'kspan.context.outcome': 'resolved' }],
      [s.context.notReady, { 'kspan.context.outcome': 'not_ready' }],
      [s.context.failed, { 'kspan.context.outcome': 'failed' }],
    ],
  },
  {
    name: 'kspan.spans.created', instrument: 'counter', unit: '{span}',
    description: 'Kernel spans the correlator completed (exported or not).',
    read: (s) => {
      const c = s.spans.correlator;
      return [[c.spans + c.unsampledSpans + (s.orphansExported ? 0 : c.orphanSpans)]];
    },
  },
  {
    name: 'kspan.sched.off_cpu.events', instrument: 'counter', unit: '{event}',
    attributes: { 'kspan.sched.off_cpu.outcome': ['on_span', 'dropped', 'orphaned'] },
    description:
      'Off-CPU intervals at least --off-cpu-event-ms long, by outcome: on_span (a thread.off_cpu event), dropped (over the 32 per ' +
      'thread.sched span, or their record lost; also kspan.sched.off_cpu.events_dropped on the span), orphaned (their span\'s ' +
      'scheduler record never came).',
    read: (s) => [
      [s.spans.sched.offCpuEvents, { 'kspan.sched.off_cpu.outcome': 'on_span' }],
      [s.spans.sched.offCpuEventsDropped, { 'kspan.sched.off_cpu.outcome': 'dropped' }],
      [s.spans.sched.offCpuOrphans, { 'kspan.sched.off_cpu.outcome': 'orphaned' }],
    ],
  },
  {
    name: 'kspan.spans.exported', instrument: 'counter', unit: '{span}',
    description: 'Kernel spans the OTLP receiver (or the console) acknowledged, those it reported rejected included (kspan.spans.dropped, collector_rejected).',
    read: (s) => [[s.spans.export.exported]],
  },
  {
    name: 'kspan.spans.dropped', instrument: 'counter', unit: '{span}',
    attributes: { [DROP_REASON]: SPAN_DROPS.map(([r]) => r) },
    description:
      'Kernel spans not exported, by cause: unsampled (parent not sampled), no_context (no parent, without --orphans), queue_full ' +
      '(export queue full), export_failed (non-retryable export error), shutdown (still queued when the stop deadline passed), ' +
      'spool_full (--spool: dropped oldest first at --spool-max-mb, or not written), collector_rejected (the Collector took the request ' +
      'but rejected them: an OTLP partial success).',
    read: (s) => SPAN_DROPS.map(([reason, f]) => [f(s), { [DROP_REASON]: reason }]),
  },
  {
    name: 'kspan.spans.incomplete', instrument: 'counter', unit: '{span}',
    description: 'Spans kspan ended itself (connection evicted, process exit, shutdown), flagged kspan.incomplete.',
    read: (s) => [[s.spans.correlator.incompleteSpans]],
  },
  {
    name: 'kspan.export.batches', instrument: 'counter', unit: '{batch}',
    description: 'Export calls that succeeded.',
    read: (s) => [[s.spans.export.batches]],
  },
  {
    name: 'kspan.export.failures', instrument: 'counter', unit: '{batch}',
    description: 'Export calls that failed (each failed attempt counts).',
    read: (s) => [[s.spans.export.exportFailures]],
  },
  {
    name: 'kspan.export.retries', instrument: 'counter', unit: '{batch}',
    description: 'Export calls retried after a retryable failure.',
    read: (s) => [[s.spans.export.retries]],
  },
  {
    name: 'kspan.export.queue.size', instrument: 'gauge', unit: '{span}',
    description: 'Spans held by the exporter now, queued and in flight.',
    read: (s) => [[s.spans.held]],
  },
  {
    name: 'kspan.export.queue.capacity', instrument: 'gauge', unit: '{span}',
    description: 'Spans the exporter holds at most; beyond, spans are dropped (queue_full).',
    read: (s) => [[s.exportQueueCapacity]],
  },
  {
    name: 'kspan.targets', instrument: 'updowncounter', unit: '{process}',
    description: 'Processes traced now.',
    read: (s) => [[s.targets.traced]],
  },
  {
    name: 'kspan.targets.found', instrument: 'counter', unit: '{process}',
    description: 'Processes that became targets since start.',
    read: (s) => [[s.targets.found]],
  },
  {
    name: 'kspan.targets.forgotten', instrument: 'counter', unit: '{process}',
    description: 'Targets no longer traced (exited), their state freed.',
    read: (s) => [[s.targets.forgotten]],
  },
  {
    name: 'kspan.connections', instrument: 'updowncounter', unit: '{connection}',
    description: "TCP connections whose state the correlator keeps now (at most --max-sockets).",
    read: (s) => [[s.spans.sockets]],
  },
  {
    name: 'kspan.connections.evicted', instrument: 'counter', unit: '{connection}',
    attributes: { 'kspan.eviction.reason': ['lru', 'idle'] },
    description: 'Connections whose state the correlator dropped before they closed: lru (table full), idle (no record for 300 s).',
    read: (s) => [
      [s.spans.correlator.evictedLru, { 'kspan.eviction.reason': 'lru' }],
      [s.spans.correlator.evictedIdle, { 'kspan.eviction.reason': 'idle' }],
    ],
  },
  {
    name: 'kspan.bpf.stats.enabled', instrument: 'gauge', unit: '1',
    description: 'Whether the kernel counts BPF program runs and run time (1) or not (0: kspan.bpf.program.runs and .run.time are absent).',
    read: (s) => [[s.bpfStatsEnabled ? 1 : 0]],
  },
  {
    name: 'kspan.bpf.program.runs', instrument: 'counter', unit: '{run}',
    attributes: { 'kspan.bpf.program.name': 'the program', 'kspan.bpf.program.id': 'its kernel id (bpftool prog show)' },
    description: "Runs of each of kspan's BPF programs (bpf_prog_info.run_cnt), system-wide: every hit of its hook, traced or not.",
    read: (s) => (s.bpfStatsEnabled ? s.programs : []).map((p) => [Number(p.runCount), programAttributes(p)]),
  },
  {
    name: 'kspan.bpf.program.run.time', instrument: 'counter', unit: 's',
    attributes: { 'kspan.bpf.program.name': 'the program', 'kspan.bpf.program.id': 'its kernel id' },
    description: "Time spent in each of kspan's BPF programs (bpf_prog_info.run_time_ns), on whichever CPU and task hit the hook.",
    read: (s) => (s.bpfStatsEnabled ? s.programs : []).map((p) => [Number(p.runTimeNs) / 1e9, programAttributes(p)]),
  },
  {
    name: 'kspan.bpf.program.recursion_misses', instrument: 'counter', unit: '{run}',
    attributes: { 'kspan.bpf.program.name': 'the program', 'kspan.bpf.program.id': 'its kernel id' },
    description:
      'Hits of the hook where the program did not run, because it was already running on that CPU (a softirq interrupting it): ' +
      'what that run would have recorded is lost (counted with the lost records at exit). Counted whether or not BPF statistics are on.',
    read: (s) => s.programs.map((p) => [Number(p.recursionMisses), programAttributes(p)]),
  },
  {
    name: 'process.cpu.time', instrument: 'counter', unit: 's',
    attributes: { 'cpu.mode': ['user', 'system'] },
    description: "The agent's own CPU time (all its threads); BPF run time is not in it (see kspan.bpf.program.run.time).",
    read: (s) => [
      [s.cpu.user / 1e6, { 'cpu.mode': 'user' }],
      [s.cpu.system / 1e6, { 'cpu.mode': 'system' }],
    ],
  },
  {
    name: 'process.memory.usage', instrument: 'updowncounter', unit: 'By',
    description: "The agent's resident memory (RSS).",
    read: (s) => [[s.rssBytes]],
  },
];

function programAttributes(p: ProgramStats): Attributes {
  return { 'kspan.bpf.program.name': p.name, 'kspan.bpf.program.id': p.id };
}

/**
 * Registers every metric of METRICS on `meter`, observed together: one
 * snapshot per collection. Returns a function that unregisters them.
 */
export function registerMetrics(meter: Meter, snapshot: () => AgentSnapshot): () => void {
  const observables = new Map<MetricSpec, Observable>();
  for (const m of METRICS) {
    const opts = { description: m.description, unit: m.unit };
    const o =
      m.instrument === 'counter'
        ? meter.createObservableCounter(m.name, opts)
        : m.instrument === 'gauge'
          ? meter.createObservableGauge(m.name, opts)
          : meter.createObservableUpDownCounter(m.name, opts);
    observables.set(m, o);
  }
  const all = [...observables.values()];
  const callback = (result: BatchObservableResult) => {
    const s = snapshot();
    for (const [m, o] of observables) for (const [v, attrs] of m.read(s)) result.observe(o, v, attrs);
  };
  meter.addBatchObservableCallback(callback, all);
  return () => meter.removeBatchObservableCallback(callback, all);
}
