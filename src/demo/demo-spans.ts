/**
 * The demo's spans in one plain form, whatever their source:
 *  - the application's: JSON lines printed by the driver, frontend.c and
 *    backend.cjs (the services run in their own network namespaces and cannot
 *    reach a Collector on the host, so the demo shows or exports them for them);
 *  - the kernel's: what `kspan run`'s agent exported, received over OTLP/HTTP by
 *    a small in-process sink that stands in for a Collector.
 * And back: plain → ReadableSpan, to export the application's spans next to
 * the kernel's when the demo is given an OTLP endpoint.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Attributes, AttributeValue, HrTime, Link, SpanContext, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';
import {
  attributesToObject,
  ExportTraceServiceRequestType,
  ExportTraceServiceResponseType,
  TO_OBJECT,
  type AttrValue,
  type PlainKeyValue,
} from '../proto/otlp.ts';

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

interface PlainSpan {
  traceId?: Uint8Array;
  spanId?: Uint8Array;
  parentSpanId?: Uint8Array;
  name?: string;
  kind?: number;
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
  attributes?: PlainKeyValue[];
  events?: { name?: string; timeUnixNano?: string; attributes?: PlainKeyValue[] }[];
  status?: { code?: number; message?: string };
}
interface PlainRequest {
  resourceSpans?: {
    resource?: { attributes?: PlainKeyValue[] };
    scopeSpans?: { scope?: { name?: string }; spans?: PlainSpan[] }[];
  }[];
}

const hex = (b: Uint8Array | undefined): string => (b ? Buffer.from(b).toString('hex') : '');

/** An OTLP ExportTraceServiceRequest → DemoSpans (kernel spans: scope "kspan"). */
export function decodeExportRequest(bytes: Uint8Array): DemoSpan[] {
  const req = ExportTraceServiceRequestType.toObject(ExportTraceServiceRequestType.decode(bytes), TO_OBJECT) as PlainRequest;
  const out: DemoSpan[] = [];
  for (const rs of req.resourceSpans ?? []) {
    const resource = attributesToObject(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        const attrs = attributesToObject(s.attributes);
        const parent = hex(s.parentSpanId);
        const pid = attrs['process.pid'] ?? resource['process.pid'];
        out.push({
          service: String(resource['service.name'] ?? 'unknown'),
          pid: typeof pid === 'number' ? pid : null,
          name: s.name ?? '',
          kind: KINDS[(s.kind ?? 1) - 1] ?? 'internal',
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: parent || null,
          startNs: BigInt(s.startTimeUnixNano ?? 0),
          endNs: BigInt(s.endTimeUnixNano ?? 0),
          error: s.status?.code === 2 ? (s.status.message || 'error') : null,
          attrs,
          events: (s.events ?? []).map((e) => ({
            name: e.name ?? '',
            timeNs: BigInt(e.timeUnixNano ?? 0),
            attrs: attributesToObject(e.attributes),
          })),
          kernel: ss.scope?.name === 'kspan',
        });
      }
    }
  }
  return out;
}

/**
 * A minimal OTLP/HTTP-protobuf trace receiver on 127.0.0.1 (POST /v1/traces):
 * where the demo's agent sends its kernel spans when no endpoint is given.
 */
export class OtlpSpanSink {
  readonly spans: DemoSpan[] = [];
  decodeErrors = 0;
  readonly #server: http.Server;

  private constructor(server: http.Server) {
    this.#server = server;
  }

  static async start(): Promise<OtlpSpanSink> {
    let sink: OtlpSpanSink | undefined = undefined;
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        try {
          sink!.spans.push(...decodeExportRequest(Buffer.concat(chunks)));
        } catch {
          sink!.decodeErrors++;
          res.writeHead(400).end();
          return;
        }
        const body = ExportTraceServiceResponseType.encode(ExportTraceServiceResponseType.create({})).finish();
        res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': body.length }).end(body);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    sink = new OtlpSpanSink(server);
    return sink;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

const DEMO_SCOPE: InstrumentationScope = { name: 'kspan-demo', version: '0.1.0' };
const hrTime = (ns: bigint): HrTime => [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];

function toAttributes(attrs: Record<string, AttrValue>): Attributes {
  const out: Attributes = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = v;
    else if (Array.isArray(v) && v.every((x) => typeof x === 'string')) out[k] = v as AttributeValue;
  }
  return out;
}

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
    this.startTime = hrTime(s.startNs);
    this.endTime = hrTime(s.endNs < s.startNs ? s.startNs : s.endNs);
    this.duration = hrTime(s.endNs < s.startNs ? 0n : s.endNs - s.startNs);
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
