/**
 * Batching export in front of an exporter: OTLP gRPC by default, OTLP/HTTP-protobuf
 * as an option, or the console tree. Kernel spans bound for OTLP are queued
 * already encoded (src/export/span-encoder.ts) and sent through the OpenTelemetry
 * exporters' own delegates and transports with kspan's serializer
 * (createEncodedOtlpExporter); other spans are ReadableSpans for an
 * OpenTelemetry SpanExporter.
 *
 * - Bounded: at most `maxQueueSize` spans are held (queued + in flight). A span
 *   that does not fit is dropped, counted and logged (never silently).
 * - Batches stay under `maxBatchSize` spans and `maxBatchBytes` (exact for encoded
 *   spans, estimated for ReadableSpans), well below the Collector's 4 MiB gRPC
 *   message limit.
 * - One export in flight. A batch that fails with a retryable error (gRPC
 *   UNAVAILABLE, DEADLINE_EXCEEDED, …; HTTP 429/502/503/504; connection errors) is
 *   retried with exponential backoff until it goes through or the pipeline shuts
 *   down: the gRPC exporter does not retry by itself.
 * - forceFlush() and shutdown() drain the queue.
 * - With a spool (src/export/spool.ts): a batch that fails with a retryable error
 *   goes to disk, and so does everything made while the Collector is away
 *   (every scheduledDelayMs) and whatever would overflow the queue; one spooled
 *   request at a time probes the Collector (backoff capped at retryMaxMs). Once
 *   one is acknowledged, the spool drains oldest first, alternating with live
 *   batches so that new spans keep flowing. A shutdown that cannot drain leaves
 *   the rest in the spool for the next start instead of dropping it.
 */
import type { ExportResult } from '@opentelemetry/core';
import { createOtlpNetworkExportDelegate, OTLPExporterBase } from '@opentelemetry/otlp-exporter-base';
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http';
import { convertLegacyOtlpGrpcOptions, createOtlpGrpcExporterMetrics } from '@opentelemetry/otlp-grpc-exporter-base';
import type { IExporterMetricsHelper, ISerializer, IExportTraceServiceResponse } from '@opentelemetry/otlp-transformer';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import { pino, type Logger } from 'pino';
import { loadSettings, TUNING, type Origin, type OtlpProtocol, type RawValues } from '../core/config.ts';
import { deserializeTraceResponse, EncodedSpanMetricsHelper, encodedSpanSerializer, RequestBuffers, type PartialSuccessHandler } from './export-request.ts';
import { GrpcExportTransport } from './grpc-transport.ts';
import type { EncodedSpan } from './span-encoder.ts';

export type { OtlpProtocol };

export type ExportTarget =
  | { kind: 'otlp'; protocol: OtlpProtocol; /** The URL (the OTLP/HTTP path included). */ endpoint: string | undefined }
  | { kind: 'console' };

/** The export settings of a command's configuration (src/core/config.ts). */
export interface ExportSettings {
  otlpEndpoint: string | undefined;
  otlpProtocol: OtlpProtocol;
  console: boolean;
  origins?: { otlpEndpoint?: Origin };
}

/** Where spans go: the configured endpoint, else (or with `console`) the console tree. */
export function exportTarget(s: ExportSettings): ExportTarget {
  if (s.console || !s.otlpEndpoint) return { kind: 'console' };
  let endpoint = s.otlpEndpoint;
  // OTEL_EXPORTER_OTLP_ENDPOINT is a base URL to which OTLP/HTTP appends the
  // signal's path; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and --otlp-endpoint are used as given.
  if (s.otlpProtocol === 'http/protobuf' && s.origins?.otlpEndpoint?.name === 'OTEL_EXPORTER_OTLP_ENDPOINT') {
    const u = new URL(endpoint);
    u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/traces`;
    endpoint = u.toString();
  }
  return { kind: 'otlp', protocol: s.otlpProtocol, endpoint };
}

export interface ExportTargetOptions {
  /** --otlp-endpoint: overrides OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT. */
  endpoint?: string;
  /** Overrides OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL. */
  protocol?: string;
  /** --console: print trees even when an endpoint is configured. */
  console?: boolean;
}

/**
 * Where spans go, for a caller holding flag values rather than a configuration:
 * the values, else the OTEL_EXPORTER_OTLP_* variables (src/core/config.ts reads
 * them; `env` replaces process.env there), else the console tree. Throws
 * KSPAN_ERR_USAGE for a malformed value, naming where it came from.
 */
export function resolveExportTarget(options: ExportTargetOptions = {}, env?: Readonly<Record<string, string | undefined>>): ExportTarget {
  const flags: RawValues = {};
  if (options.endpoint?.trim()) flags.otlpEndpoint = options.endpoint;
  if (options.protocol?.trim()) flags.otlpProtocol = options.protocol;
  if (options.console) flags.console = true;
  return exportTarget(loadSettings(['otlpEndpoint', 'otlpProtocol', 'console'], { flags, env }));
}

export interface OtlpExporterOptions {
  /** Per-export deadline; default: OTEL_EXPORTER_OTLP_TIMEOUT or 10 s. */
  timeoutMs?: number;
  /** Called for each response that reports a partial success (ExportPipeline.countRejected). */
  onPartialSuccess?: PartialSuccessHandler;
}

/** What the export pipeline sends batches through: an OpenTelemetry SpanExporter, or one of encoded spans. */
export interface BatchExporter<T> {
  export(items: T[], resultCallback: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
}

/** The exporter's URL for a target: a bare host:port is plaintext; OTLP/HTTP gets /v1/traces when no path is given. */
export function exporterUrl(target: Extract<ExportTarget, { kind: 'otlp' }>): string | undefined {
  let url = target.endpoint;
  if (!url) return undefined;
  // A bare host:port is taken as plaintext; give https:// for TLS.
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) url = `http://${url}`;
  if (target.protocol === 'grpc') return url;
  const u = new URL(url);
  return u.pathname === '' || u.pathname === '/' ? new URL('/v1/traces', u).toString() : url;
}

const GRPC_TRACE_SERVICE = 'TraceExportService';
const GRPC_TRACE_EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

/** kspan's OTLP exporters for one target: encoded spans, and spooled requests sent as they are. */
export interface EncodedOtlpExporters {
  encoded: BatchExporter<EncodedSpan>;
  /** Shares the encoded exporter's connection (gRPC) and configuration. */
  spooled: BatchExporter<SpooledBatch>;
}

/** Spooled requests are already ExportTraceServiceRequests: sent as they are. */
function spooledSerializer(onPartialSuccess?: PartialSuccessHandler): ISerializer<SpooledBatch[], IExportTraceServiceResponse> {
  return {
    serializeRequest: (batches) => (batches.length === 1 ? batches[0].request : Buffer.concat(batches.map((b) => b.request))),
    deserializeResponse: (data) => deserializeTraceResponse(data, onPartialSuccess),
  };
}
const SpooledMetricsHelper: IExporterMetricsHelper<SpooledBatch[]> = { name: 'span', countItems: (b: SpooledBatch[]) => b.reduce((n, x) => n + x.spans, 0) };

/**
 * The OTLP exporters for spans kspan encoded itself (src/export/span-encoder.ts):
 * the same configuration as @opentelemetry/exporter-trace-otlp-grpc and -proto
 * (OTEL_EXPORTER_OTLP_* headers, TLS, compression, timeout; OTLP/HTTP's own
 * retries) and their export delegates, with our serializer in place of the
 * transformer's; over gRPC, our transport (src/export/grpc-transport.ts: bounded
 * reconnect backoff).
 */
export function createEncodedOtlpExporters(
  target: Extract<ExportTarget, { kind: 'otlp' }>,
  options: OtlpExporterOptions = {},
): EncodedOtlpExporters {
  const config = { url: exporterUrl(target), timeoutMillis: options.timeoutMs };
  if (target.protocol === 'grpc') {
    const grpc = convertLegacyOtlpGrpcOptions(config, 'TRACES');
    const buffers = new RequestBuffers();
    const transport = new GrpcExportTransport(grpc, GRPC_TRACE_SERVICE, GRPC_TRACE_EXPORT_PATH, buffers);
    const metrics = <I>(helper: IExporterMetricsHelper<I>) => createOtlpGrpcExporterMetrics('otlp_grpc_span_exporter', helper, grpc.url, undefined);
    return {
      encoded: new OTLPExporterBase(createOtlpNetworkExportDelegate(grpc, encodedSpanSerializer(buffers, options.onPartialSuccess), metrics(EncodedSpanMetricsHelper), transport)),
      spooled: new OTLPExporterBase(createOtlpNetworkExportDelegate(grpc, spooledSerializer(options.onPartialSuccess), metrics(SpooledMetricsHelper), transport)),
    };
  }
  const http = () => convertLegacyHttpOptions(config, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' });
  return {
    encoded: new OTLPExporterBase(createOtlpHttpExportDelegate(http(), encodedSpanSerializer(undefined, options.onPartialSuccess), 'otlp_http_span_exporter', EncodedSpanMetricsHelper, undefined)),
    spooled: new OTLPExporterBase(createOtlpHttpExportDelegate(http(), spooledSerializer(options.onPartialSuccess), 'otlp_http_span_exporter', SpooledMetricsHelper, undefined)),
  };
}

/** The OTLP exporter of encoded spans (createEncodedOtlpExporters' `encoded`). */
export function createEncodedOtlpExporter(
  target: Extract<ExportTarget, { kind: 'otlp' }>,
  options: OtlpExporterOptions = {},
): BatchExporter<EncodedSpan> {
  return createEncodedOtlpExporters(target, options).encoded;
}

/** Counts a batch's bytes as the pipeline builds it. */
export interface BatchSizer<T> {
  /** A new batch starts. */
  reset(): void;
  /** The bytes `item` adds to the batch so far. */
  add(item: T): number;
}

export interface ExportPipelineOptions<T = ReadableSpan> {
  exporter: BatchExporter<T>;
  /** Counts each batch's bytes; default estimateSpanBytes (ReadableSpans). */
  sizer?: BatchSizer<T>;
  /** Called once for every span that leaves: exported, dropped (counted), or refused by enqueue(). */
  release?: (span: T) => void;
  logger?: Logger;
  // Defaults and meanings: TUNING.export (src/core/config.ts).
  maxQueueSize?: number;
  maxBatchSize?: number;
  maxBatchBytes?: number;
  scheduledDelayMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
  shutdownTimeoutMs?: number;
  /** Where spans wait while they cannot be sent (see the top of this file). */
  spool?: SpoolBinding<T>;
}

/** One spooled request, as the pipeline sends it (src/export/spool.ts). */
export interface SpooledBatch {
  /** An ExportTraceServiceRequest, sent as it is. */
  readonly request: Buffer;
  readonly spans: number;
  /** Where it lies in the spool: for acknowledgement. */
  readonly segment: number;
  readonly index: number;
}

/** What the pipeline needs of the on-disk spool (SpanSpool, src/export/spool.ts: this module stays pure). */
export interface SpanSpool {
  readonly dir: string;
  readonly pendingRecords: number;
  readonly pendingSpans: number;
  readonly counters: { readonly writeFailedSpans: number; readonly droppedSpans: number };
  /** False (counted by the spool) when it could not be written. */
  append(request: Uint8Array, spans: number): boolean;
  /** The oldest request not yet acknowledged; the same one until done(). */
  next(): SpooledBatch | null;
  done(batch: SpooledBatch, delivered: boolean): void;
  close(): void;
}

/** The spool a pipeline writes to and drains. */
export interface SpoolBinding<T> {
  store: SpanSpool;
  /** A batch as the request bytes the spool keeps (what `exporter` would send). */
  encode: (batch: T[]) => Uint8Array;
  /** Sends spooled requests as they are, to the same Collector as the pipeline's exporter. */
  exporter: BatchExporter<SpooledBatch>;
}

export interface ExportCounters {
  /** Spans accepted into the queue. */
  enqueued: number;
  /** Spans the receiver acknowledged. */
  exported: number;
  /** Spans refused because the queue was full. */
  droppedQueueFull: number;
  /** Spans dropped after a non-retryable export error. */
  droppedFailed: number;
  /** Spans still held when shutdown gave up. */
  droppedShutdown: number;
  /** Export calls that succeeded. */
  batches: number;
  /** Export calls that failed (each retry counts). */
  exportFailures: number;
  retries: number;
  /** Spans written to the spool (Collector away, queue full, or left at shutdown). */
  spooled: number;
  /** Spooled spans the receiver acknowledged (those of an earlier run included). */
  replayed: number;
  /** Spans the spool could not keep: dropped oldest first at its size bound, or not written (I/O error). */
  droppedSpool: number;
  /** Spans the receiver took but rejected (an OTLP partial success: its rejected_spans). Counted in `exported` too. */
  rejected: number;
}

const RETRYABLE_GRPC = new Set([1, 4, 8, 10, 11, 14, 15]); // CANCELLED … UNAVAILABLE, DATA_LOSS
const RETRYABLE_HTTP = new Set([429, 502, 503, 504]);
const RETRYABLE_NET = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'ENOTFOUND', 'ECONNABORTED', 'UND_ERR_SOCKET',
]);

/** Whether an exporter's error is worth another try. */
export function isRetryableExportError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return true; // FAILED with no reason: try again
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'number') return RETRYABLE_GRPC.has(code) || RETRYABLE_HTTP.has(code);
  if (typeof code === 'string') return RETRYABLE_NET.has(code);
  const msg = String((err as { message?: unknown }).message ?? '');
  return /timed out|timeout|retryable status|Concurrent export limit/i.test(msg);
}

/** A cheap upper-bound-ish estimate of a ReadableSpan's OTLP size, for batch sizing. */
export function estimateSpanBytes(span: ReadableSpan): number {
  let n = 96 + span.name.length;
  const attrs = span.attributes;
  for (const k in attrs) n += 8 + k.length + valueBytes(attrs[k]);
  for (const e of span.events) {
    n += 24 + e.name.length;
    if (e.attributes) for (const k in e.attributes) n += 8 + k.length + valueBytes(e.attributes[k]);
  }
  return n;
}

function valueBytes(v: unknown): number {
  if (typeof v === 'string') return v.length * 3; // UTF-8 worst case
  if (Array.isArray(v)) return v.reduce((s: number, x) => s + 2 + valueBytes(x), 2);
  return 10;
}

const ESTIMATED_SIZER: BatchSizer<ReadableSpan> = { reset() {}, add: estimateSpanBytes };

export class ExportPipeline<T = ReadableSpan> {
  readonly counters: ExportCounters = {
    enqueued: 0,
    exported: 0,
    droppedQueueFull: 0,
    droppedFailed: 0,
    droppedShutdown: 0,
    batches: 0,
    exportFailures: 0,
    retries: 0,
    spooled: 0,
    replayed: 0,
    droppedSpool: 0,
    rejected: 0,
  };

  readonly #exporter: BatchExporter<T>;
  readonly #sizer: BatchSizer<T>;
  readonly #release: ((span: T) => void) | null;
  readonly #log: Logger;
  readonly #maxQueue: number;
  readonly #maxBatch: number;
  readonly #maxBatchBytes: number;
  readonly #delayMs: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #shutdownTimeoutMs: number;

  #queue: T[] = [];
  #head = 0;
  #inFlight: T[] | null = null;
  #attempt = 0;
  #timer: NodeJS.Timeout | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  /** Spans settled (exported or dropped after being queued), for flush waiters. */
  #settled = 0;
  #waiters: { target: number; resolve: () => void }[] = [];
  #roomWaiters: { limit: number; resolve: () => void }[] = [];
  #closed = false;
  readonly #dropLog = new LogEvery(10_000);
  readonly #rejectLog = new LogEvery(10_000);
  readonly #spool: SpoolBinding<T> | null;
  /** The spooled request being sent. */
  #inFlightSpool: SpooledBatch | null = null;
  /** The Collector is away: spans go to the spool, and one probe at a time tests it. */
  #outage = false;
  #outageSince = 0;
  #probeDue = false;
  /** The last request sent came from the spool: the next one is live, if any is ready. */
  #lastFromSpool = false;

  constructor(options: ExportPipelineOptions<T>) {
    this.#exporter = options.exporter;
    this.#sizer = options.sizer ?? (ESTIMATED_SIZER as unknown as BatchSizer<T>);
    this.#release = options.release ?? null;
    this.#log = options.logger ?? pino({ level: 'info' }, pino.destination(2));
    const d = TUNING.export;
    this.#maxQueue = options.maxQueueSize ?? d.maxQueueSize;
    this.#maxBatch = options.maxBatchSize ?? d.maxBatchSize;
    this.#maxBatchBytes = options.maxBatchBytes ?? d.maxBatchBytes;
    this.#delayMs = options.scheduledDelayMs ?? d.scheduledDelayMs;
    this.#retryInitialMs = options.retryInitialMs ?? d.retryInitialMs;
    this.#retryMaxMs = options.retryMaxMs ?? d.retryMaxMs;
    this.#shutdownTimeoutMs = options.shutdownTimeoutMs ?? d.shutdownTimeoutMs;
    this.#spool = options.spool ?? null;
    // What an earlier run left in the spool goes out without waiting for new spans.
    if (this.#spool?.store.pendingRecords) setImmediate(() => this.#pump(true));
  }

  /** The spool's counters (dropped, torn, recovered), when there is one. */
  get spool(): SpanSpool | null {
    return this.#spool?.store ?? null;
  }

  /** Spans held at most (queued and in flight). */
  get maxQueueSize(): number {
    return this.#maxQueue;
  }

  /** Spans held now (queued and in flight). */
  get held(): number {
    return this.#queue.length - this.#head + (this.#inFlight?.length ?? 0);
  }

  /** True once shutdown() has run: nothing more is accepted. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Whether a span offered now would be dropped (the queue full with no spool to
   * take the overflow, or closed); if so it is counted and logged as enqueue()
   * counts it. A producer asks before making a span (encoding it) that would only
   * be thrown away: at saturation that CPU goes to the export instead.
   */
  dropIfFull(): boolean {
    if (!this.#closed && (this.#spool || this.held < this.#maxQueue)) return false;
    this.counters.droppedQueueFull++;
    this.#logDrop();
    return true;
  }

  /** Queues a span; false (counted, logged) when the queue is full or closed. */
  enqueue(span: T): boolean {
    if (this.#spool && !this.#closed && this.held >= this.#maxQueue) this.#spill();
    if (this.#closed || this.held >= this.#maxQueue) {
      this.counters.droppedQueueFull++;
      this.#logDrop();
      this.#release?.(span);
      return false;
    }
    this.#queue.push(span);
    this.counters.enqueued++;
    if (this.#queue.length - this.#head >= this.#maxBatch) this.#pump();
    else if (!this.#timer && !this.#inFlight) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#pump(true);
      }, this.#delayMs);
      if (!this.#waiters.length) this.#timer.unref();
    }
    return true;
  }

  /**
   * Resolves once at most `limit` spans are held (default: half the queue): a
   * producer that can wait (replay, benchmarks) uses it instead of dropping.
   */
  waitForRoom(limit = Math.floor(this.#maxQueue / 2)): Promise<void> {
    if (this.held <= limit || this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.#roomWaiters.push({ limit, resolve });
      this.#timer?.ref();
      this.#retryTimer?.ref();
      this.#pump(true);
    });
  }

  /**
   * Exports everything queued so far. Resolves true once it is settled (exported, or
   * dropped after a non-retryable error), false when timeoutMs passes first.
   */
  forceFlush(timeoutMs = Infinity): Promise<boolean> {
    const target = this.counters.enqueued;
    if (this.#flushed(target)) return Promise.resolve(true);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | null = null;
      const waiter = {
        target,
        resolve: () => {
          if (timer) clearTimeout(timer);
          resolve(true);
        },
      };
      this.#waiters.push(waiter);
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          this.#waiters = this.#waiters.filter((w) => w !== waiter);
          resolve(false);
        }, timeoutMs);
      }
      // Waiting keeps the process alive: make the pending timers count.
      this.#timer?.ref();
      this.#retryTimer?.ref();
      this.#pump(true);
    });
  }

  /** Drains (up to shutdownTimeoutMs), counts what is left, shuts the exporter down. */
  async shutdown(): Promise<void> {
    if (this.#closed) return;
    const drained = await this.forceFlush(this.#shutdownTimeoutMs);
    this.#closed = true;
    for (const w of this.#roomWaiters.splice(0)) w.resolve();
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#timer = this.#retryTimer = null;
    // A spooled request still in flight stays in the spool (sent again at the next start if it did arrive).
    this.#inFlightSpool = null;
    if (!drained && this.#spool) {
      // Kept for the next start: the batch in flight (it may yet arrive, and then twice), then the queue.
      if (this.#inFlight) {
        this.#queue = [...this.#inFlight, ...this.#queue.slice(this.#head)];
        this.#head = 0;
        this.#inFlight = null;
      }
      const before = this.counters.spooled;
      this.#spill();
      this.#log.warn(
        { spooled: this.counters.spooled - before, pending: this.#spool.store.pendingSpans, dir: this.#spool.store.dir },
        'export: shutdown before the spool drained; its spans are sent at the next start',
      );
    } else if (!drained) {
      const left = this.held;
      this.counters.droppedShutdown += left;
      this.#log.error(
        { dropped: left, exportFailures: this.counters.exportFailures },
        'export: shutdown timed out; spans still queued were dropped',
      );
      if (this.#release) {
        for (let i = this.#head; i < this.#queue.length; i++) this.#release(this.#queue[i]);
        if (this.#inFlight) for (const s of this.#inFlight) this.#release(s);
      }
      this.#queue = [];
      this.#head = 0;
      this.#inFlight = null;
    }
    try {
      await this.#exporter.shutdown();
      await this.#spool?.exporter.shutdown();
    } catch (err) {
      this.#log.warn({ err }, 'export: exporter shutdown failed');
    }
    this.#spool?.store.close();
  }

  #pump(force = false): void {
    if (this.#inFlight || this.#inFlightSpool || this.#closed) return;
    let queued = this.#queue.length - this.#head;
    const sp = this.#spool;
    if (sp && this.#outage) {
      // The Collector is away: spans wait on disk, not in memory, and only a probe goes out.
      if (queued > 0 && (force || queued >= this.#maxBatch)) {
        this.#spill();
        queued = 0;
      }
      if (!this.#probeDue) return;
    }
    if (sp && sp.store.pendingRecords > 0) {
      const liveReady = queued > 0 && (force || queued >= this.#maxBatch || this.#waiters.length > 0);
      if (!liveReady || this.#lastFromSpool === false) {
        const batch = sp.store.next();
        if (batch) {
          this.#probeDue = false;
          this.#sendSpooled(batch);
          return;
        }
      }
    }
    if (queued === 0) return;
    if (!force && queued < this.#maxBatch && !this.#waiters.length) return;
    this.#probeDue = false;
    const batch = this.#takeBatch();
    this.#inFlight = batch;
    if (!this.#outage) this.#attempt = 0;
    this.#send(batch);
  }

  /** The next batch from the queue, within the span and byte bounds (at least one span). */
  #takeBatch(): T[] {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    let end = this.#head;
    let bytes = 0;
    const limit = Math.min(this.#queue.length, this.#head + this.#maxBatch);
    this.#sizer.reset();
    while (end < limit) {
      const b = this.#sizer.add(this.#queue[end]);
      if (end > this.#head && bytes + b > this.#maxBatchBytes) break;
      bytes += b;
      end++;
    }
    const batch = this.#queue.slice(this.#head, end);
    this.#head = end;
    if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return batch;
  }

  /** Writes every queued span to the spool, in batches as they would be sent. */
  #spill(): void {
    while (this.#queue.length > this.#head) this.#toSpool(this.#takeBatch());
  }

  /** One batch to the spool; it leaves the queue either way (a failed write is counted). */
  #toSpool(batch: T[]): void {
    const sp = this.#spool!;
    if (sp.store.append(sp.encode(batch), batch.length)) this.counters.spooled += batch.length;
    // The spool's own count: spans it could not write, and older ones it dropped to make room.
    this.counters.droppedSpool = sp.store.counters.writeFailedSpans + sp.store.counters.droppedSpans;
    this.#account(batch);
  }

  #sendSpooled(batch: SpooledBatch): void {
    this.#inFlightSpool = batch;
    let called = false;
    const done = (result: ExportResult) => {
      if (called) return;
      called = true;
      setImmediate(() => this.#onSpooledResult(batch, result));
    };
    try {
      this.#spool!.exporter.export([batch], done);
    } catch (err) {
      done({ code: 1, error: err as Error });
    }
  }

  #onSpooledResult(batch: SpooledBatch, result: ExportResult): void {
    if (this.#inFlightSpool !== batch) return;
    this.#inFlightSpool = null;
    const c = this.counters;
    const store = this.#spool!.store;
    if (result.code === 0) {
      store.done(batch, true);
      c.batches++;
      c.replayed += batch.spans;
      this.#recovered(batch.spans);
      this.#lastFromSpool = true;
      this.#continue();
      return;
    }
    c.exportFailures++;
    if (!isRetryableExportError(result.error)) {
      store.done(batch, false);
      c.droppedFailed += batch.spans;
      this.#log.error({ err: result.error, spans: batch.spans }, 'export: non-retryable error, spooled batch dropped');
      this.#continue();
      return;
    }
    // Left in the spool: the next probe sends it again.
    this.#enterOutage(result.error);
    this.#continue();
  }

  /** A request went through: leave the outage. */
  #recovered(spans: number): void {
    if (this.#attempt > 0 || this.#outage) {
      const fields: Record<string, unknown> = { retries: this.#attempt, spans };
      if (this.#outage) {
        // Everything made while the Collector was away goes out oldest first, through the spool;
        // what is made from now on flows alongside.
        this.#spill();
        fields.outageMs = Date.now() - this.#outageSince;
        fields.spooled = this.#spool!.store.pendingSpans;
      }
      this.#log.info(fields, 'export: recovered');
    }
    this.#outage = false;
    this.#attempt = 0;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  /** The Collector did not answer: spool from now on, and probe it with backoff. */
  #enterOutage(err: unknown): void {
    const base = Math.min(this.#retryMaxMs, this.#retryInitialMs * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    const fields = { err: errSummary(err), attempt: this.#attempt + 1, retryInMs: delay, spooled: this.#spool!.store.pendingSpans };
    if (!this.#outage) {
      this.#outage = true;
      this.#outageSince = Date.now();
      this.#log.warn({ ...fields, dir: this.#spool!.store.dir }, 'export failed; spans go to the spool until the Collector answers');
    } else this.#log.debug(fields, 'export failed again, retrying');
    this.#attempt++;
    this.counters.retries++;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#probeDue = true;
      this.#pump(true);
    }, delay);
    if (!this.#waiters.length) this.#retryTimer.unref();
  }

  #send(batch: T[]): void {
    let called = false;
    try {
      this.#exporter.export(batch, (result) => {
        if (called) return;
        called = true;
        // The exporter may call back synchronously: continue on a fresh tick.
        setImmediate(() => this.#onResult(batch, result));
      });
    } catch (err) {
      if (!called) {
        called = true;
        setImmediate(() => this.#onResult(batch, { code: 1, error: err as Error }));
      }
    }
  }

  #onResult(batch: T[], result: ExportResult): void {
    if (this.#inFlight !== batch) return; // dropped by shutdown meanwhile
    const c = this.counters;
    if (result.code === 0) {
      this.#recovered(batch.length);
      c.batches++;
      c.exported += batch.length;
      this.#lastFromSpool = false;
      this.#settle(batch);
      return;
    }
    c.exportFailures++;
    const err = result.error;
    if (!isRetryableExportError(err)) {
      c.droppedFailed += batch.length;
      this.#log.error({ err, spans: batch.length }, 'export: non-retryable error, batch dropped');
      this.#settle(batch);
      return;
    }
    if (this.#spool) {
      this.#inFlight = null;
      this.#toSpool(batch);
      this.#enterOutage(err);
      this.#continue();
      return;
    }
    const base = Math.min(this.#retryMaxMs, this.#retryInitialMs * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    const fields = { err: errSummary(err), attempt: this.#attempt + 1, retryInMs: delay, held: this.held };
    if (this.#attempt === 0) this.#log.warn(fields, 'export failed, retrying');
    else this.#log.debug(fields, 'export failed again, retrying');
    this.#attempt++;
    c.retries++;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#inFlight === batch) this.#send(batch);
    }, delay);
    if (!this.#waiters.length) this.#retryTimer.unref();
  }

  #settle(batch: T[]): void {
    this.#inFlight = null;
    this.#account(batch);
    this.#continue();
  }

  /** Spans that left the queue (exported, dropped or spooled): released, counted for flush waiters. */
  #account(batch: T[]): void {
    if (this.#release) for (const s of batch) this.#release(s);
    this.#settled += batch.length;
    this.#wakeFlushWaiters();
  }

  /** Everything enqueued up to `target` has left the queue, and the spool is empty. */
  #flushed(target: number): boolean {
    if (this.#settled < target) return false;
    return !this.#spool || (this.#spool.store.pendingRecords === 0 && !this.#inFlightSpool);
  }

  #wakeFlushWaiters(): void {
    if (!this.#waiters.length) return;
    const done = this.#waiters.filter((w) => this.#flushed(w.target));
    this.#waiters = this.#waiters.filter((w) => !this.#flushed(w.target));
    for (const w of done) w.resolve();
  }

  /** After a request settled: the next one, room for waiting producers, the timer for a partial batch. */
  #continue(): void {
    this.#wakeFlushWaiters();
    const spoolPending = (this.#spool?.store.pendingRecords ?? 0) > 0 && !this.#outage;
    this.#pump(this.#waiters.length > 0 || this.#roomWaiters.length > 0 || spoolPending);
    if (this.#roomWaiters.length) {
      const held = this.held;
      const ready = this.#roomWaiters.filter((w) => held <= w.limit);
      this.#roomWaiters = this.#roomWaiters.filter((w) => held > w.limit);
      for (const w of ready) w.resolve();
    }
    // A partial batch left behind waits for the timer.
    if (!this.#inFlight && !this.#timer && this.#queue.length > this.#head && !this.#closed) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#pump(true);
      }, this.#delayMs);
      if (!this.#waiters.length) this.#timer.unref();
    }
  }

  /**
   * A response's partial success (OtlpExporterOptions.onPartialSuccess): the
   * Collector rejected `spans` of the batch. Counted, and logged with its
   * reason at most every 10 s.
   */
  countRejected(spans: number, message: string): void {
    this.counters.rejected += spans;
    const rejected = this.#rejectLog.add(spans);
    if (rejected === null) return;
    this.#log.warn({ rejected, rejectedTotal: this.counters.rejected, reason: message }, 'export: the Collector rejected spans (partial success)');
  }

  #logDrop(): void {
    const dropped = this.#dropLog.add(1);
    if (dropped === null) return;
    this.#log.warn({ dropped, droppedTotal: this.counters.droppedQueueFull, maxQueueSize: this.#maxQueue }, 'export queue full: spans dropped');
  }
}

/** A count logged at most once per period: add() gives what built up since the last line when one is due, else null. */
class LogEvery {
  readonly #periodMs: number;
  #lastAt = 0;
  #since = 0;

  constructor(periodMs: number) {
    this.#periodMs = periodMs;
  }

  add(n: number, now = Date.now()): number | null {
    this.#since += n;
    if (now - this.#lastAt < this.#periodMs) return null;
    const since = this.#since;
    this.#lastAt = now;
    this.#since = 0;
    return since;
  }
}

/** Spans the export path lost (the `data was lost` of exit status 3); `rejected` ones were acknowledged, then refused. */
export function exportSpansLost(c: ExportCounters): number {
  return c.droppedQueueFull + c.droppedFailed + c.droppedShutdown + c.droppedSpool + c.rejected;
}

function errSummary(err: unknown): unknown {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; message?: unknown };
    return { code: e.code, message: e.message };
  }
  return err;
}
