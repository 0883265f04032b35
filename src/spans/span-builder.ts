/**
 * KernelSpan (correlator output, kernel clock) → OpenTelemetry ReadableSpan, built
 * directly: no Tracer, no SpanProcessor, one small adapter class. The exporters
 * only read ReadableSpan fields, and the OTLP transformer groups spans into
 * ResourceSpans by Resource object identity, so `resourceFor(pid)` must return the
 * same object for a given target process.
 *
 * What a kernel span says (its attributes, events, kind, status, end) is
 * described once here (describe* and the *Of functions); the OTLP encoder
 * (src/export/span-encoder.ts) writes protobuf from the same description.
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
  /** Where new span and trace ids come from (tests: a seeded source). */
  ids?: IdSource;
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
  readonly #ids: IdSource;

  constructor(options: SpanBuilderOptions) {
    this.#ids = options.ids ?? new IdSource();
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
    const endNs = spanEndNs(k);
    const attributes = spanAttributes(k);
    const extra = this.#extra?.(k);
    if (extra) Object.assign(attributes, extra);
    return new KernelReadableSpan({
      name: k.name,
      kind: spanKindOf(k),
      context,
      parent,
      startTime: monotonicToHrTime(k.startNs, offset),
      endTime: monotonicToHrTime(endNs, offset),
      duration: nsToHrTime(endNs - k.startNs),
      status: spanStatusOf(k),
      attributes,
      events: k.events.length ? k.events.map((e) => timedEvent(e, offset)) : [],
      resource: this.#resourceFor(k.pid),
      scope: this.#scope,
    });
  }
}

/**
 * Every attribute key kspan sets on a kernel span or its events. The description
 * below names them by index, so a sink can keep each key pre-encoded (the OTLP
 * encoder in src/export/span-encoder.ts) or just use the string (spanAttributes).
 */
export const KERNEL_ATTRIBUTE_KEYS = [
  'network.transport',
  'network.type',
  'network.peer.address',
  'network.peer.port',
  'network.local.address',
  'network.local.port',
  'process.pid',
  'kspan.socket.cookie',
  'kspan.role',
  'client.address',
  'client.port',
  'server.address',
  'server.port',
  'thread.id',
  'kspan.bytes',
  'kspan.syscalls',
  'kspan.retransmits',
  'kspan.srtt_us',
  'kspan.accept_queue_ns',
  'kspan.wait_ns',
  'error.type',
  'kspan.incomplete',
  'kspan.incomplete.reason',
  'kspan.fallback',
  'kspan.tcp.state',
  'kspan.reset.direction',
  'kspan.errno',
  'kspan.sched.on_cpu_ns',
  'kspan.sched.blocked_ns',
  'kspan.sched.runqueue_ns',
  'kspan.sched.voluntary_switches',
  'kspan.sched.involuntary_switches',
  'kspan.sched.migrations',
  'kspan.sched.off_cpu.duration_ns',
  'kspan.sched.off_cpu.kind',
  'kspan.sched.syscall',
  'kspan.sched.wchan',
  'kspan.sched.kernel_stack',
  'kspan.sched.off_cpu.events_dropped',
] as const;

export type KernelAttributeKey = (typeof KERNEL_ATTRIBUTE_KEYS)[number];

/** Key name → index in KERNEL_ATTRIBUTE_KEYS. */
const K = Object.fromEntries(KERNEL_ATTRIBUTE_KEYS.map((k, i) => [k, i])) as { readonly [P in KernelAttributeKey]: number };

/**
 * Receives a kernel span's attributes in their order, each named by its index in
 * KERNEL_ATTRIBUTE_KEYS. A number is typed as the OTLP transformer types it: an
 * int when integral, else a double.
 */
export interface AttributeSink {
  string(key: number, value: string): void;
  number(key: number, value: number): void;
  bool(key: number, value: boolean): void;
  strings(key: number, value: readonly string[]): void;
}

/**
 * The one description of a kernel span's semantic-convention and kspan.*
 * attributes: SpanBuilder (ReadableSpans) and the OTLP encoder both read it.
 * First those of the socket, then the span's own.
 */
export function describeSpanAttributes(k: KernelSpan, out: AttributeSink): void {
  if (k.sched) {
    describeSchedAttributes(k, out);
    return;
  }
  describeSocketAttributes(k, out);
  describeOwnAttributes(k, out);
}

/** A thread.sched span's attributes (it has no socket): the process, the thread, the scheduler's figures. */
export function describeSchedAttributes(k: KernelSpan, out: AttributeSink): void {
  const s = k.sched!;
  out.number(K['process.pid'], k.pid);
  out.number(K['thread.id'], k.tid);
  out.number(K['kspan.sched.on_cpu_ns'], s.onCpuNs);
  out.number(K['kspan.sched.blocked_ns'], s.blockedNs);
  out.number(K['kspan.sched.runqueue_ns'], s.runqNs);
  out.number(K['kspan.sched.voluntary_switches'], s.voluntary);
  out.number(K['kspan.sched.involuntary_switches'], s.involuntary);
  out.number(K['kspan.sched.migrations'], s.migrations);
  if (s.offCpuEventsDropped) out.number(K['kspan.sched.off_cpu.events_dropped'], s.offCpuEventsDropped);
  if (k.incomplete) {
    out.bool(K['kspan.incomplete'], true);
    out.string(K['kspan.incomplete.reason'], k.incomplete);
  }
}

/**
 * The attributes every span of a socket shares, in front of the span's own: first
 * those the process's sockets of the same role, family and local end all have
 * (describeSharedSocketAttributes), then the socket's own. They read only what
 * sameSocketAttributes compares, so an encoder may reuse their bytes from one
 * span of a socket to the next, and the first part's across sockets
 * (sharedSocketKey).
 */
export function describeSocketAttributes(k: SocketFields, out: AttributeSink): void {
  describeSharedSocketAttributes(k, out);
  describeOwnSocketAttributes(k, out);
}

/**
 * Both ends are named by their roles too: on an accepted socket the peer is the
 * client and this end the server (its listening address and port, which every
 * connection it accepted shares); on a connected one the peer is the server.
 */
export function describeSharedSocketAttributes(k: SocketFields, out: AttributeSink): void {
  out.string(K['network.transport'], 'tcp');
  out.string(K['network.type'], k.family === 6 ? 'ipv6' : 'ipv4');
  out.string(K['network.local.address'], k.local.address);
  if (k.role === 'server') out.number(K['network.local.port'], k.local.port);
  out.number(K['process.pid'], k.pid);
  out.string(K['kspan.role'], k.role);
  if (k.role === 'server') {
    out.string(K['server.address'], k.local.address);
    out.number(K['server.port'], k.local.port);
  }
}

/** The socket's own: its peer, its cookie, and a connected socket's local (ephemeral) port. */
export function describeOwnSocketAttributes(k: SocketFields, out: AttributeSink): void {
  if (k.role !== 'server') out.number(K['network.local.port'], k.local.port);
  out.string(K['network.peer.address'], k.peer.address);
  out.number(K['network.peer.port'], k.peer.port);
  out.string(K['kspan.socket.cookie'], k.cookie.toString());
  if (k.role === 'server') {
    out.string(K['client.address'], k.peer.address);
    out.number(K['client.port'], k.peer.port);
  } else {
    out.string(K['server.address'], k.peer.address);
    out.number(K['server.port'], k.peer.port);
  }
}

/** Sockets whose describeSharedSocketAttributes are the same have the same key: every field it reads. */
export function sharedSocketKey(k: SocketFields): string {
  return `${k.pid} ${k.role} ${k.family} ${k.local.address} ${k.role === 'server' ? k.local.port : ''}`;
}

/** The fields describeSocketAttributes reads. */
export type SocketFields = Pick<KernelSpan, 'cookie' | 'pid' | 'role' | 'family' | 'peer' | 'local'>;

/** Whether two spans' socket attributes (describeSocketAttributes) are the same: every field they read is equal. */
export function sameSocketAttributes(a: SocketFields, b: SocketFields): boolean {
  return (
    a.cookie === b.cookie &&
    a.pid === b.pid &&
    a.role === b.role &&
    a.family === b.family &&
    a.peer.port === b.peer.port &&
    a.local.port === b.local.port &&
    a.peer.address === b.peer.address &&
    a.local.address === b.local.address
  );
}

/** The span's own attributes, after its socket's. */
export function describeOwnAttributes(k: KernelSpan, out: AttributeSink): void {
  if (k.tid) out.number(K['thread.id'], k.tid);
  if (k.name === 'tcp.send' || k.name === 'tcp.recv') {
    out.number(K['kspan.bytes'], k.bytes);
    out.number(K['kspan.syscalls'], k.calls);
  }
  if (k.name === 'tcp.send' || k.name === 'tcp.connect' || k.retransmits) out.number(K['kspan.retransmits'], k.retransmits);
  if (k.srttUs !== null) out.number(K['kspan.srtt_us'], k.srttUs);
  if (k.acceptQueueNs !== null) out.number(K['kspan.accept_queue_ns'], Number(k.acceptQueueNs));
  if (k.waitNs !== null) out.number(K['kspan.wait_ns'], Number(k.waitNs));
  if (k.errorType) out.string(K['error.type'], k.errorType);
  if (k.incomplete) {
    out.bool(K['kspan.incomplete'], true);
    out.string(K['kspan.incomplete.reason'], k.incomplete);
  }
  if (k.fallback) out.bool(K['kspan.fallback'], true);
}

/** The attributes of a retransmit or reset event. */
export function describeEventAttributes(e: KernelSpanEvent, out: AttributeSink): void {
  if (e.offCpu) {
    out.string(K['kspan.sched.off_cpu.kind'], e.offCpu.blocked ? 'blocked' : 'runqueue');
    out.number(K['kspan.sched.off_cpu.duration_ns'], e.offCpu.ns);
    if (e.offCpu.syscall) out.string(K['kspan.sched.syscall'], e.offCpu.syscall);
    if (e.offCpu.wchan) out.string(K['kspan.sched.wchan'], e.offCpu.wchan);
    if (e.offCpu.stack?.length) out.strings(K['kspan.sched.kernel_stack'], e.offCpu.stack);
    return;
  }
  out.string(K['kspan.tcp.state'], tcpStateName(e.tcpState));
  if (e.name === 'tcp.reset') out.string(K['kspan.reset.direction'], e.resetSent ? 'sent' : 'received');
  if (e.errno) out.number(K['kspan.errno'], e.errno);
}

/** SpanKind (@opentelemetry/api numbering): an exchange root is the server or client side; the rest are internal. */
export function spanKindOf(k: KernelSpan): number {
  return k.name === 'tcp.exchange' ? (k.role === 'server' ? SPAN_KIND_SERVER : SPAN_KIND_CLIENT) : SPAN_KIND_INTERNAL;
}

const UNSET: SpanStatus = Object.freeze({ code: STATUS_UNSET });

/** The span's status: an error with its message, else unset (one shared, frozen object). */
export function spanStatusOf(k: KernelSpan): SpanStatus {
  return k.error ? { code: STATUS_ERROR, message: k.error } : UNSET;
}

/** The span's end on the kernel clock, never before its start. */
export function spanEndNs(k: KernelSpan): bigint {
  return k.endNs < k.startNs ? k.startNs : k.endNs;
}

/** An AttributeSink that fills a plain Attributes object. */
class AttributesObjectSink implements AttributeSink {
  attributes: Attributes = {};

  string(key: number, value: string): void {
    this.attributes[KERNEL_ATTRIBUTE_KEYS[key]] = value;
  }

  number(key: number, value: number): void {
    this.attributes[KERNEL_ATTRIBUTE_KEYS[key]] = value;
  }

  bool(key: number, value: boolean): void {
    this.attributes[KERNEL_ATTRIBUTE_KEYS[key]] = value;
  }

  strings(key: number, value: readonly string[]): void {
    this.attributes[KERNEL_ATTRIBUTE_KEYS[key]] = [...value];
  }
}

const objectSink = new AttributesObjectSink();

/** Semantic-convention and kspan.* attributes of a kernel span, as an object. */
export function spanAttributes(k: KernelSpan): Attributes {
  const a: Attributes = {};
  objectSink.attributes = a;
  describeSpanAttributes(k, objectSink);
  return a;
}

function timedEvent(e: KernelSpanEvent, offsetNs: bigint): TimedEvent {
  const attributes: Attributes = {};
  objectSink.attributes = attributes;
  describeEventAttributes(e, objectSink);
  return { name: e.name, time: monotonicToHrTime(e.tsNs, offsetNs), attributes };
}
