/**
 * The demo's spans in one plain form, whatever their source:
 *  - the application's: JSON lines printed by the driver, frontend.c and
 *    backend.cjs (the services run in their own network namespaces and cannot
 *    reach a Collector on the host, so the demo shows or exports them for them);
 *  - the kernel's: the ReadableSpans `kspan run`'s agent exported to an
 *    in-process exporter.
 * And back: plain → ReadableSpan, to export the application's spans next to
 * the kernel's when the demo is given an OTLP endpoint.
 */
import type { Attributes, HrTime, Link, SpanContext, SpanStatus } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult, type InstrumentationScope } from '@opentelemetry/core';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import type { ReadableSpan, SpanExporter, TimedEvent } from '@opentelemetry/sdk-trace';
import type { AttrValue } from '../proto/otlp.ts';
import { hrTimeToNs, nsToHrTime } from '../spans/hr-time.ts';
import { toAttributes } from '../export/target-resources.ts';

export type SpanKindName = 'internal' | 'server' | 'client' | 'producer' | 'consumer';
const KINDS: SpanKindName[] = ['internal', 'server', 'client', 'producer', 'consumer'];

export interface DemoSpanEvent {
  name: string;
  timeNs: bigint;
  attrs: Record<string, AttrValue>;
}

export interface DemoSpan {
  service: string;
  pid: number | null;
  name: string;
  kind: SpanKindName;
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  startNs: bigint;
  endNs: bigint;
  error: string | null;
  attrs: Record<string, AttrValue>;
  events: DemoSpanEvent[];
  /** Built by kspan from kernel records (not by the application). */
  kernel: boolean;
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;

/** A `{"span":{…}}` line from a demo process → DemoSpan; null when malformed. */
export function parseAppSpan(line: Record<string, unknown>, pid: number | null): DemoSpan | null {
  const s = line.span as Record<string, unknown> | undefined;
  if (!s || typeof s !== 'object') return null;
  const traceId = String(s.trace_id);
  const spanId = String(s.span_id);
  const parent = s.parent_span_id === null || s.parent_span_id === undefined ? null : String(s.parent_span_id);
  if (!HEX32.test(traceId) || !HEX16.test(spanId) || (parent !== null && !HEX16.test(parent))) return null;
  let startNs: bigint, endNs: bigint;
  try {
    startNs = BigInt(String(s.start_ns));
    endNs = BigInt(String(s.end_ns));
  } catch {
    return null;
  }
  const kind = KINDS.includes(s.kind as SpanKindName) ? (s.kind as SpanKindName) : 'internal';
  const attrs = (s.attrs && typeof s.attrs === 'object' ? s.attrs : {}) as Record<string, AttrValue>;
  return {
    service: String(s.service ?? 'unknown'),
    pid,
    name: String(s.name ?? ''),
    kind,
    traceId,
    spanId,
    parentSpanId: parent,
    startNs,
    endNs,
    error: s.status === 'error' ? String(attrs['error.type'] ?? 'error') : null,
    attrs,
    events: [],
    kernel: false,
  };
}

/** A span the agent built (a ReadableSpan) → DemoSpan. */
export function fromReadableSpan(s: ReadableSpan): DemoSpan {
  const ctx = s.spanContext();
  const attrs = s.attributes as Record<string, AttrValue>;
  const resource = s.resource.attributes;
  const pid = attrs['process.pid'] ?? resource['process.pid'];
  return {
    service: String(resource['service.name'] ?? 'unknown'),
    pid: typeof pid === 'number' ? pid : null,
    name: s.name,
    kind: KINDS[s.kind] ?? 'internal',
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    parentSpanId: s.parentSpanContext?.spanId ?? null,
    startNs: hrTimeToNs(s.startTime),
    endNs: hrTimeToNs(s.endTime),
    error: s.status.code === 2 ? (s.status.message || 'error') : null,
    attrs,
    events: s.events.map((e) => ({ name: e.name, timeNs: hrTimeToNs(e.time), attrs: (e.attributes ?? {}) as Record<string, AttrValue> })),
    kernel: s.instrumentationScope.name === 'kspan',
  };
}

/**
 * Where the demo's agent sends its kernel spans when no endpoint is given: kept
 * in this process (as DemoSpans) for the trees.
 */
export class CollectingExporter implements SpanExporter {
  readonly spans: DemoSpan[] = [];

  export(spans: ReadableSpan[], done: (r: ExportResult) => void): void {
    for (const s of spans) this.spans.push(fromReadableSpan(s));
    done({ code: ExportResultCode.SUCCESS });
  }

  async shutdown(): Promise<void> {}

  async forceFlush(): Promise<void> {}
}

const DEMO_SCOPE: InstrumentationScope = { name: 'kspan-demo', version: '0.1.0' };
/** An application span (from a JSON line) as the OpenTelemetry exporters read it. */
export class AppReadableSpan implements ReadableSpan {
  readonly name: string;
  readonly kind: number;
  readonly parentSpanContext: SpanContext | undefined;
  readonly startTime: HrTime;
  readonly endTime: HrTime;
  readonly duration: HrTime;
  readonly status: SpanStatus;
  readonly attributes: Attributes;
  readonly links: Link[] = [];
  readonly events: TimedEvent[] = [];
  readonly ended = true;
  readonly resource: Resource;
  readonly instrumentationScope = DEMO_SCOPE;
  readonly droppedAttributesCount = 0;
  readonly droppedEventsCount = 0;
  readonly droppedLinksCount = 0;
  readonly #context: SpanContext;

  constructor(s: DemoSpan, resource: Resource) {
    this.name = s.name;
    this.kind = KINDS.indexOf(s.kind);
    this.#context = { traceId: s.traceId, spanId: s.spanId, traceFlags: 1 };
    this.parentSpanContext = s.parentSpanId ? { traceId: s.traceId, spanId: s.parentSpanId, traceFlags: 1, isRemote: true } : undefined;
    this.startTime = nsToHrTime(s.startNs);
    this.endTime = nsToHrTime(s.endNs < s.startNs ? s.startNs : s.endNs);
    this.duration = nsToHrTime(s.endNs < s.startNs ? 0n : s.endNs - s.startNs);
    this.status = s.error ? { code: 2, message: s.error } : { code: 0 };
    this.attributes = toAttributes(s.attrs);
    this.resource = resource;
  }

  spanContext(): SpanContext {
    return this.#context;
  }
}

/** One Resource object per service (the OTLP transformer groups by identity). */
export class ServiceResources {
  readonly #cache = new Map<string, Resource>();

  for(service: string, pid: number | null): Resource {
    const key = `${service}\0${pid ?? ''}`;
    let r = this.#cache.get(key);
    if (!r) {
      r = resourceFromAttributes(pid === null ? { 'service.name': service } : { 'service.name': service, 'process.pid': pid });
      this.#cache.set(key, r);
    }
    return r;
  }
}
