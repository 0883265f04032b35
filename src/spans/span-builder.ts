/**
 * KernelSpan (correlator output, kernel clock) → OpenTelemetry ReadableSpan, built
 * directly: no Tracer, no SpanProcessor, one small adapter class. The exporters
 * only read ReadableSpan fields, and the OTLP transformer groups spans into
 * ResourceSpans by Resource object identity, so `resourceFor(pid)` must return the
 * same object for a given target process.
 */
import type { Attributes, HrTime, Link, SpanContext, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';
import { KSPAN_VERSION } from '../core/version.ts';
import { tcpStateName } from '../records/kernel-record.ts';
import { monotonicToHrTime, nsToHrTime } from './hr-time.ts';
import type { KernelSpan, KernelSpanEvent } from './kernel-span.ts';
import { IdSource } from './span-ids.ts';

/** SpanKind and SpanStatusCode values of @opentelemetry/api (enums are not erasable). */
const SPAN_KIND_INTERNAL = 0;
const SPAN_KIND_SERVER = 1;
const SPAN_KIND_CLIENT = 2;
const STATUS_UNSET = 0;
const STATUS_ERROR = 2;

export const KSPAN_SCOPE: InstrumentationScope = { name: 'kspan', version: KSPAN_VERSION };

export interface SpanBuilderOptions {
  /** REALTIME − MONOTONIC in ns; a function when it is re-measured while running. */
  clockOffsetNs: bigint | (() => bigint);
  /** The target's Resource: one object per process (grouping is by identity). */
  resourceFor: (pid: number) => Resource;
  /** Attributes decoded from the thread-context record, or anything else per span. */
  extraAttributes?: (span: KernelSpan) => Attributes | undefined;
  scope?: InstrumentationScope;
}

/** The one adapter: a finished span, as the exporters read it. */
export class KernelReadableSpan implements ReadableSpan {
  readonly name: string;
  readonly kind: number;
  readonly parentSpanContext: SpanContext | undefined;
  readonly startTime: HrTime;
  readonly endTime: HrTime;
  readonly status: SpanStatus;
  readonly attributes: Attributes;
  readonly links: Link[] = [];
  readonly events: TimedEvent[];
  readonly duration: HrTime;
  readonly ended = true;
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  readonly droppedAttributesCount = 0;
  readonly droppedEventsCount = 0;
  readonly droppedLinksCount = 0;
  readonly #context: SpanContext;

  constructor(fields: {
    name: string;
    kind: number;
    context: SpanContext;
    parent: SpanContext | undefined;
    startTime: HrTime;
    endTime: HrTime;
    duration: HrTime;
    status: SpanStatus;
    attributes: Attributes;
    events: TimedEvent[];
    resource: Resource;
    scope: InstrumentationScope;
  }) {
    this.name = fields.name;
    this.kind = fields.kind;
    this.#context = fields.context;
    this.parentSpanContext = fields.parent;
    this.startTime = fields.startTime;
    this.endTime = fields.endTime;
    this.duration = fields.duration;
    this.status = fields.status;
    this.attributes = fields.attributes;
    this.events = fields.events;
    this.resource = fields.resource;
    this.instrumentationScope = fields.scope;
  }

  spanContext(): SpanContext {
    return this.#context;
  }
}

export class SpanBuilder {
  readonly #offset: () => bigint;
  readonly #resourceFor: (pid: number) => Resource;
  readonly #extra: ((span: KernelSpan) => Attributes | undefined) | undefined;
  readonly #scope: InstrumentationScope;
  readonly #ids = new IdSource();

  constructor(options: SpanBuilderOptions) {
    const off = options.clockOffsetNs;
    this.#offset = typeof off === 'bigint' ? () => off : off;
    this.#resourceFor = options.resourceFor;
    this.#extra = options.extraAttributes;
    this.#scope = options.scope ?? KSPAN_SCOPE;
  }

  build(k: KernelSpan): KernelReadableSpan {
    const offset = this.#offset();
    const p = k.parent;
    const context: SpanContext = k.self
      ? { traceId: k.self.traceId, spanId: k.self.spanId, traceFlags: k.self.traceFlags & 0xff, isRemote: false }
      : p
        ? { traceId: p.traceId, spanId: this.#ids.hex(8), traceFlags: p.traceFlags & 0xff, isRemote: false }
        : { traceId: this.#ids.hex(16), spanId: this.#ids.hex(8), traceFlags: 1, isRemote: false };
    // The parent lives in the target process (remote), unless it is an exchange root of ours.
    const parent: SpanContext | undefined = p
      ? { traceId: p.traceId, spanId: p.spanId, traceFlags: p.traceFlags & 0xff, isRemote: !k.localParent }
      : undefined;
    const endNs = k.endNs < k.startNs ? k.startNs : k.endNs;
    const attributes = spanAttributes(k);
    const extra = this.#extra?.(k);
    if (extra) Object.assign(attributes, extra);
    return new KernelReadableSpan({
      name: k.name,
      kind: k.name === 'tcp.exchange' ? (k.role === 'server' ? SPAN_KIND_SERVER : SPAN_KIND_CLIENT) : SPAN_KIND_INTERNAL,
      context,
      parent,
      startTime: monotonicToHrTime(k.startNs, offset),
      endTime: monotonicToHrTime(endNs, offset),
      duration: nsToHrTime(endNs - k.startNs),
      status: k.error ? { code: STATUS_ERROR, message: k.error } : { code: STATUS_UNSET },
      attributes,
      events: k.events.length ? k.events.map((e) => timedEvent(e, offset)) : [],
      resource: this.#resourceFor(k.pid),
      scope: this.#scope,
    });
  }
}

/** Semantic-convention and kspan.* attributes of a kernel span. */
export function spanAttributes(k: KernelSpan): Attributes {
  // One literal for the common part keeps every span's attributes on one shape.
  const a: Attributes = {
    'network.transport': 'tcp',
    'network.type': k.family === 6 ? 'ipv6' : 'ipv4',
    'network.peer.address': k.peer.address,
    'network.peer.port': k.peer.port,
    'network.local.address': k.local.address,
    'network.local.port': k.local.port,
    'process.pid': k.pid,
    'kspan.socket.cookie': k.cookie.toString(),
    'kspan.role': k.role,
  };
  // Both ends named by their roles: on an accepted socket the peer is the client and
  // this end the server; on a connected one the peer is the server.
  if (k.role === 'server') {
    a['client.address'] = k.peer.address;
    a['client.port'] = k.peer.port;
    a['server.address'] = k.local.address;
    a['server.port'] = k.local.port;
  } else {
    a['server.address'] = k.peer.address;
    a['server.port'] = k.peer.port;
  }
  if (k.tid) a['thread.id'] = k.tid;
  if (k.name === 'tcp.send' || k.name === 'tcp.recv') {
    a['kspan.bytes'] = k.bytes;
    a['kspan.syscalls'] = k.calls;
  }
  if (k.name === 'tcp.send' || k.name === 'tcp.connect' || k.retransmits) a['kspan.retransmits'] = k.retransmits;
  if (k.srttUs !== null) a['kspan.srtt_us'] = k.srttUs;
  if (k.acceptQueueNs !== null) a['kspan.accept_queue_ns'] = Number(k.acceptQueueNs);
  if (k.waitNs !== null) a['kspan.wait_ns'] = Number(k.waitNs);
  if (k.errorType) a['error.type'] = k.errorType;
  if (k.incomplete) {
    a['kspan.incomplete'] = true;
    a['kspan.incomplete.reason'] = k.incomplete;
  }
  if (k.fallback) a['kspan.fallback'] = true;
  return a;
}

function timedEvent(e: KernelSpanEvent, offsetNs: bigint): TimedEvent {
  const attributes: Attributes = { 'kspan.tcp.state': tcpStateName(e.tcpState) };
  if (e.name === 'tcp.reset') attributes['kspan.reset.direction'] = e.resetSent ? 'sent' : 'received';
  if (e.errno) attributes['kspan.errno'] = e.errno;
  return { name: e.name, time: monotonicToHrTime(e.tsNs, offsetNs), attributes };
}
