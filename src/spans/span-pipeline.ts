/**
 * The span half of the agent in one object: KernelRecords in, exported spans out,
 * for `kspan run` (live: never blocks the ring-buffer reader; overflow is counted)
 * and `kspan replay` (a file: waits for the exporter instead of dropping).
 *
 * - To an OTLP endpoint: SocketCorrelator → KernelSpanEncoder (OTLP protobuf bytes
 *   per span) → ExportPipeline → the OpenTelemetry exporter's transport.
 * - To the console tree or a caller's SpanExporter: SocketCorrelator → SpanBuilder
 *   (ReadableSpans) → ExportPipeline → that exporter.
 */
import type { Attributes } from '@opentelemetry/api';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import type { Logger } from 'pino';
import { TUNING } from '../core/config.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { ConsoleTreeExporter } from '../export/console-tree.ts';
import { encodeExportRequest, EncodedSpanSizer } from '../export/export-request.ts';
import {
  createEncodedOtlpExporters,
  ExportPipeline,
  resolveExportTarget,
  type BatchExporter,
  type ExportCounters,
  type ExportPipelineOptions,
  type ExportTarget,
  type SpanSpool,
} from '../export/export-pipeline.ts';
import { KernelSpanEncoder, type EncodedSpan } from '../export/span-encoder.ts';
import type { KernelSpan } from './kernel-span.ts';
import { SocketCorrelator, type CorrelatorCounters, type SocketCorrelatorOptions } from './socket-correlator.ts';
import { SpanBuilder } from './span-builder.ts';
import type { SchedRingRecord } from '../records/sched-record.ts';
import type { KernelSymbols } from './kallsyms.ts';
import { SchedSpans, type SchedSpanCounters } from './sched-spans.ts';

export interface SpanPipelineOptions {
  /** The target's Resource, one object per pid. */
  resourceFor: (pid: number) => Resource;
  /** REALTIME − MONOTONIC ns (src/kernel/clock.ts KernelClock.offsetNs, or the record file header). */
  clockOffsetNs: bigint | (() => bigint);
  /** Where spans go; default resolveExportTarget() (the OTEL_EXPORTER_OTLP_* variables, else the console). Ignored with `exporter`. */
  target?: ExportTarget;
  exporter?: SpanExporter;
  /** Per-export deadline for OTLP. */
  exportTimeoutMs?: number;
  orphans?: boolean;
  extraAttributes?: (span: KernelSpan) => Attributes | undefined;
  logger?: Logger;
  /** The kernel's symbols, to name blocked stacks (thread.off_cpu events); asked for at the first one. */
  kernelSymbols?: () => KernelSymbols | null;
  /** 'live' (default): the correlator runs on the monotonic clock and ticks on a timer. 'replay': record time, backpressure. */
  mode?: 'live' | 'replay';
  /** Live: how often held spans and idle sockets are checked. Default TUNING.correlatorTickMs. */
  tickMs?: number;
  /**
   * Live: called at each tick before held spans are checked, to deliver the
   * records committed so far (the agent drains its rings: src/kernel/ring-buffer.ts,
   * drainRings()), so that a span's hold ends with every record of its time seen.
   */
  beforeTick?: () => void;
  correlator?: Partial<Omit<SocketCorrelatorOptions, 'emit' | 'orphans' | 'clock'>>;
  export?: Partial<Omit<ExportPipelineOptions, 'exporter' | 'sizer' | 'logger' | 'spool'>>;
  /** OTLP only: where spans wait while they cannot be sent (src/export/spool.ts). */
  spool?: SpanSpool;
}

/** What the export queue holds: OTLP bytes, or ReadableSpans for the console or a caller's exporter. */
type ExportItem = EncodedSpan | ReadableSpan;

export interface SpanPipelineStats {
  correlator: CorrelatorCounters;
  /** thread.sched spans from scheduler records. */
  sched: SchedSpanCounters;
  export: ExportCounters;
  /** Sockets with state in the correlator. */
  sockets: number;
  /** Spans held by the exporter (queued and in flight). */
  held: number;
}

export class SpanPipeline {
  readonly correlator: SocketCorrelator;
  readonly sched: SchedSpans;
  readonly exports: ExportPipeline<ExportItem>;
  readonly target: ExportTarget | null;
  /** The direct OTLP encoder, when spans go to an OTLP endpoint; null when they are ReadableSpans. */
  readonly encoder: KernelSpanEncoder | null;
  readonly #mode: 'live' | 'replay';
  /** KernelSpan → what the export queue holds. */
  readonly #make: (k: KernelSpan) => ExportItem;
  #timer: NodeJS.Timeout | null = null;
  /** Replay only: spans made while the export queue was full. */
  #backlog: ExportItem[] = [];

  constructor(options: SpanPipelineOptions) {
    this.#mode = options.mode ?? 'live';
    this.target = options.exporter ? null : (options.target ?? resolveExportTarget());
    const spanModel = {
      clockOffsetNs: options.clockOffsetNs,
      resourceFor: options.resourceFor,
      extraAttributes: options.extraAttributes,
    };
    const target = this.target;
    if (target?.kind === 'otlp') {
      const encoder = new KernelSpanEncoder(spanModel);
      this.encoder = encoder;
      this.#make = (k) => encoder.encode(k);
      // A Collector's partial success is counted by the pipeline the exporters serve.
      let exports: ExportPipeline<EncodedSpan> | undefined;
      const exporters = createEncodedOtlpExporters(target, {
        timeoutMs: options.exportTimeoutMs,
        onPartialSuccess: (rejected, message) => exports?.countRejected(rejected, message),
      });
      exports = new ExportPipeline<EncodedSpan>({
        ...options.export,
        exporter: exporters.encoded,
        spool: options.spool && { store: options.spool, encode: (batch) => encodeExportRequest(batch), exporter: exporters.spooled },
        sizer: new EncodedSpanSizer(),
        release: (s) => encoder.release(s),
        logger: options.logger,
      });
      this.exports = exports as ExportPipeline<ExportItem>;
    } else {
      this.encoder = null;
      const builder = new SpanBuilder(spanModel);
      this.#make = (k) => builder.build(k);
      const exporter: BatchExporter<ReadableSpan> = options.exporter ?? new ConsoleTreeExporter();
      this.exports = new ExportPipeline<ReadableSpan>({ ...options.export, exporter, logger: options.logger }) as ExportPipeline<ExportItem>;
    }
    this.correlator = new SocketCorrelator({
      ...options.correlator,
      orphans: options.orphans,
      clock: this.#mode === 'replay' ? 'records' : undefined,
      emit: (k) => this.#emit(k),
    });
    this.sched = new SchedSpans((k) => this.#emit(k), { symbols: options.kernelSymbols });
    if (this.#mode === 'live') {
      const beforeTick = options.beforeTick;
      this.#timer = setInterval(() => {
        beforeTick?.();
        this.correlator.tick();
      }, options.tickMs ?? TUNING.correlatorTickMs);
      this.#timer.unref();
    }
  }

  push(record: KernelRecord): void {
    this.correlator.push(record);
  }

  /** A scheduler record: its thread.sched span goes straight to export. */
  pushSched(record: SchedRingRecord): void {
    this.sched.push(record);
  }

  /** A span made outside the correlator (function spans, src/spans/call-spans.ts), to the same export queue. */
  pushSpan(span: ReadableSpan): void {
    this.exports.enqueue(this.encoder ? this.encoder.encodeReadable(span) : span);
  }

  processExited(pid: number): void {
    this.correlator.processExited(pid);
  }

  /** Feeds a recording through, waiting for the exporter whenever its queue is full. */
  async replay(records: AsyncIterable<KernelRecord> | Iterable<KernelRecord>): Promise<void> {
    for await (const r of records) {
      this.correlator.push(r);
      if (this.#backlog.length) await this.#drainBacklog();
    }
  }

  /** Ends every open span, drains the export queue, shuts the exporter down. */
  async shutdown(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.correlator.flush('shutdown');
    this.sched.flush();
    await this.#drainBacklog();
    await this.exports.shutdown();
  }

  stats(): SpanPipelineStats {
    return {
      correlator: this.correlator.counters,
      sched: this.sched.counters,
      export: this.exports.counters,
      sockets: this.correlator.socketCount,
      held: this.exports.held,
    };
  }

  #emit(k: KernelSpan): void {
    // Live, a span the full queue would refuse is counted without being made.
    if (this.#mode === 'live' && this.exports.dropIfFull()) return;
    const span = this.#make(k);
    if (this.#mode === 'replay' && (this.#backlog.length || this.exports.held >= this.exports.maxQueueSize)) {
      this.#backlog.push(span);
      return;
    }
    this.exports.enqueue(span);
  }

  async #drainBacklog(): Promise<void> {
    let i = 0;
    while (i < this.#backlog.length) {
      if (this.exports.held >= this.exports.maxQueueSize && !this.exports.closed) {
        await this.exports.waitForRoom();
        continue;
      }
      // After shutdown enqueue refuses, and counts each refusal.
      this.exports.enqueue(this.#backlog[i++]);
    }
    this.#backlog = [];
  }
}
