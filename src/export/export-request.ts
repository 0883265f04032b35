/**
 * A batch of EncodedSpans (src/export/span-encoder.ts) → one
 * ExportTraceServiceRequest, by concatenation: one ResourceSpans per target in the
 * order the batch first names it (as the transformer groups by Resource
 * identity), each holding the target's pre-encoded Resource and one ScopeSpans
 * with its pre-encoded scope and the spans' fields in batch order. Sizes are
 * computed first, so the request is written once into a buffer of its exact
 * size; spans that lie next to each other in the encoder's arena are copied as
 * one block.
 *
 * Also the OpenTelemetry serializer that hands such requests to the exporters'
 * own transports, and the batch sizer that keeps batches under a byte bound
 * exactly. Pure.
 */
import { createRequire } from 'node:module';
import type { IExporterMetricsHelper, IExportTraceServiceResponse, ISerializer } from '@opentelemetry/otlp-transformer';
import type { BatchSizer } from './export-pipeline.ts';
import { varintSize } from './proto-writer.ts';
import type { EncodedSpan, EncodedTarget } from './span-encoder.ts';

const REQUEST_RESOURCE_SPANS = 0x0a; // field 1, length-delimited
const RESOURCE_SPANS_SCOPE_SPANS = 0x12; // field 2

function writeVarint(out: Buffer, at: number, v: number): number {
  while (v > 0x7f) {
    out[at++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[at++] = v;
  return at;
}

/** Marks a target as seen in the batch being sized or assembled. */
let batchEpoch = 0;

/**
 * The ExportTraceServiceRequest holding `spans`, in a new buffer or in one from
 * `alloc` (given the exact size it must return at least that many bytes).
 */
export function encodeExportRequest(spans: readonly EncodedSpan[], alloc: (size: number) => Buffer = Buffer.allocUnsafe): Buffer {
  // Pass 1: the targets in first-seen order, and each one's span bytes.
  const epoch = ++batchEpoch;
  const targets: EncodedTarget[] = [];
  for (const s of spans) {
    const t = s.target;
    if (t.batchMark !== epoch) {
      t.batchMark = epoch;
      t.batchSlot = targets.length;
      t.batchSpanBytes = 0;
      targets.push(t);
    }
    t.batchSpanBytes += s.length;
  }
  // Sizes: ScopeSpans and ResourceSpans bodies, then the whole request.
  const scopeLen = new Array<number>(targets.length);
  const resourceLen = new Array<number>(targets.length);
  let total = 0;
  for (let g = 0; g < targets.length; g++) {
    const t = targets[g];
    const ss = t.scopeField.length + t.batchSpanBytes + t.scopeSchemaField.length;
    const rs = t.resourceField.length + 1 + varintSize(ss) + ss + t.resourceSchemaField.length;
    scopeLen[g] = ss;
    resourceLen[g] = rs;
    total += 1 + varintSize(rs) + rs;
  }
  const out = alloc(total);
  // One target (the usual case): the spans in order. Several: each target's spans in batch order.
  let order: readonly EncodedSpan[] = spans;
  let starts: number[] | null = null;
  if (targets.length > 1) {
    starts = new Array<number>(targets.length + 1).fill(0);
    for (const s of spans) starts[s.target.batchSlot + 1]++;
    for (let g = 0; g < targets.length; g++) starts[g + 1] += starts[g];
    const next = starts.slice();
    const sorted = new Array<EncodedSpan>(spans.length);
    for (const s of spans) sorted[next[s.target.batchSlot]++] = s;
    order = sorted;
  }
  let pos = 0;
  for (let g = 0; g < targets.length; g++) {
    const t = targets[g];
    out[pos++] = REQUEST_RESOURCE_SPANS;
    pos = writeVarint(out, pos, resourceLen[g]);
    out.set(t.resourceField, pos);
    pos += t.resourceField.length;
    out[pos++] = RESOURCE_SPANS_SCOPE_SPANS;
    pos = writeVarint(out, pos, scopeLen[g]);
    out.set(t.scopeField, pos);
    pos += t.scopeField.length;
    const from = starts ? starts[g] : 0;
    const to = starts ? starts[g + 1] : order.length;
    // Runs of spans adjacent in one arena chunk go in one copy.
    let chunk: Buffer | null = null;
    let runStart = 0;
    let runEnd = 0;
    for (let i = from; i < to; i++) {
      const s = order[i];
      if (s.chunk.buf === chunk && s.start === runEnd) {
        runEnd += s.length;
        continue;
      }
      if (chunk) {
        out.set(chunk.subarray(runStart, runEnd), pos);
        pos += runEnd - runStart;
      }
      chunk = s.chunk.buf;
      runStart = s.start;
      runEnd = s.start + s.length;
    }
    if (chunk) {
      out.set(chunk.subarray(runStart, runEnd), pos);
      pos += runEnd - runStart;
    }
    out.set(t.scopeSchemaField, pos);
    pos += t.scopeSchemaField.length;
    out.set(t.resourceSchemaField, pos);
    pos += t.resourceSchemaField.length;
  }
  if (pos !== total) throw new Error(`OTLP request size mismatch: wrote ${pos} of ${total} bytes`);
  return out.length === total ? out : out.subarray(0, total);
}

/**
 * Batch sizing for EncodedSpans: exact for the spans, and each target's
 * ResourceSpans framing counted once per batch at its largest (5-byte lengths),
 * so a batch's request never exceeds the sum.
 */
export class EncodedSpanSizer implements BatchSizer<EncodedSpan> {
  #epoch = 0;

  reset(): void {
    // Epochs are unique across sizers and request assembly: a batch is sized in one go.
    this.#epoch = ++batchEpoch;
  }

  add(s: EncodedSpan): number {
    let n = s.length;
    if (s.target.sizerMark !== this.#epoch) {
      s.target.sizerMark = this.#epoch;
      n += s.target.framingBytesMax;
    }
    return n;
  }
}

/**
 * Request buffers lent to a transport and given back when its call is over, so
 * that a steady export writes every request into one of the same two or three
 * buffers: no megabyte allocation per request (each one external memory that
 * moves V8 towards a full collection), and no copy in the transport. A buffer
 * is lent until `give` (the transport calls it once the call has completed,
 * when the gRPC library has framed its own copy of the message); while lent it
 * is never handed out again. Pure.
 */
export class RequestBuffers {
  readonly #free: Buffer[] = [];
  readonly #lent = new Set<ArrayBufferLike>();
  readonly #keep: number;

  /** `keep`: free buffers kept for reuse (more are left to the collector). */
  constructor(keep = 2) {
    this.#keep = keep;
  }

  /** A buffer of at least `size` bytes, lent until `give`. */
  take(size: number): Buffer {
    let buf: Buffer | undefined;
    for (let i = 0; i < this.#free.length; i++) {
      if (this.#free[i].length >= size) {
        buf = this.#free[i];
        this.#free.splice(i, 1);
        break;
      }
    }
    if (!buf) {
      // None fits: one that is too small goes, so that the pool follows the requests' size.
      this.#free.shift();
      // Room to grow: the next request of a similar size fits without another allocation.
      buf = Buffer.allocUnsafeSlow(Math.max(64 * 1024, size + (size >> 3)));
    }
    this.#lent.add(buf.buffer);
    return buf;
  }

  /** Whether `data` lies in a buffer lent by this pool (and not yet given back). */
  owns(data: Uint8Array): boolean {
    return this.#lent.has(data.buffer);
  }

  /** Gives back the lent buffer `data` lies in; false (and nothing done) for any other bytes. */
  give(data: Uint8Array): boolean {
    if (!this.#lent.delete(data.buffer)) return false;
    if (this.#free.length < this.#keep) this.#free.push(Buffer.from(data.buffer as ArrayBuffer));
    return true;
  }

  /** Buffers lent and not given back. */
  get lent(): number {
    return this.#lent.size;
  }
}

/**
 * The serializer the OTLP export delegates call: our request bytes, their
 * response decoding. With `buffers`, each request is written into a buffer lent
 * from it, for a transport that gives the buffer back when its call is over (the
 * gRPC transport does); without, into a new buffer each time (OTLP/HTTP keeps the
 * request for its own retries).
 */
export function encodedSpanSerializer(
  buffers?: RequestBuffers,
  onPartialSuccess?: PartialSuccessHandler,
): ISerializer<EncodedSpan[], IExportTraceServiceResponse> {
  const alloc = buffers ? (size: number): Buffer => buffers.take(size) : Buffer.allocUnsafe;
  return {
    serializeRequest: (spans) => encodeExportRequest(spans, alloc),
    deserializeResponse: (data) => deserializeTraceResponse(data, onPartialSuccess),
  };
}

/**
 * A Collector's partial success: it took the request but rejected
 * `rejectedSpans` of its spans (0: a warning only), with its reason.
 */
export type PartialSuccessHandler = (rejectedSpans: number, errorMessage: string) => void;

const requireCjs = createRequire(import.meta.url);

/**
 * An ExportTraceServiceResponse as the OpenTelemetry transformer decodes it.
 * A Collector that took every span answers with an empty message, `{}`; only a
 * partial success has a body, and the transformer (its protobuf runtime and
 * generated code: about 3 MB of the agent's RSS) is loaded the first time one
 * comes (BENCHMARKS.md, "The export path's modules").
 */
export function deserializeTraceResponse(data: Uint8Array, onPartialSuccess?: PartialSuccessHandler): IExportTraceServiceResponse {
  if (data.length === 0) return {};
  const transformer = requireCjs('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
  const response = transformer.ProtobufTraceSerializer.deserializeResponse(data);
  // The exporters' own handler only logs it through the OpenTelemetry diag
  // logger, which kspan does not install: the spans it rejected are counted here.
  const partial = response.partialSuccess;
  if (partial && onPartialSuccess) {
    const rejected = Number(partial.rejectedSpans ?? 0);
    const message = partial.errorMessage ?? '';
    if (rejected > 0 || message) onPartialSuccess(rejected, message);
  }
  return response;
}

/** For the exporters' self-observability metrics: a batch counts its spans. */
export const EncodedSpanMetricsHelper: IExporterMetricsHelper<EncodedSpan[]> = {
  name: 'span',
  countItems: (spans) => spans.length,
};
