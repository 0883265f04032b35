/**
 * KernelSpan → OTLP protobuf, straight from the correlator's output: no
 * ReadableSpan, no attribute objects. Each span is encoded once, when it is made,
 * into a Span message kept in a shared arena (EncodedSpan: offsets into a chunk),
 * so the export queue holds compact bytes whose size is known exactly. A batch
 * becomes an ExportTraceServiceRequest in src/export/export-request.ts by
 * concatenation under each target's pre-encoded Resource and scope.
 *
 * The span's content comes from the same description as SpanBuilder's
 * (src/spans/span-builder.ts: attributes, events, kind, status, end clamp), and
 * the bytes are those @opentelemetry/otlp-transformer writes for the equivalent
 * ReadableSpan, field for field and in the same order (test/unit/span-encoder.test.ts).
 * Pure.
 */
import type { Attributes, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import type { Endpoint, TraceContext } from '../records/kernel-record.ts';
import type { KernelSpan } from '../spans/kernel-span.ts';
import {
  describeEventAttributes,
  describeOwnAttributes,
  describeSchedAttributes,
  describeOwnSocketAttributes,
  describeSharedSocketAttributes,
  KERNEL_ATTRIBUTE_KEYS,
  KSPAN_SCOPE,
  sameSocketAttributes,
  sharedSocketKey,
  spanAttributes,
  spanEndNs,
  spanKindOf,
  spanStatusOf,
  type AttributeSink,
  type SocketFields,
  type SpanBuilderOptions,
} from '../spans/span-builder.ts';
import { IdSource } from '../spans/span-ids.ts';
import { hrTimeToNs } from '../spans/hr-time.ts';
import {
  ProtoWriter,
  tag,
  varintSize,
  WIRE_FIXED32,
  WIRE_FIXED64,
  WIRE_LEN,
  WIRE_VARINT,
  writeAnyValue,
  writeKeyValues,
  writeOptionalString,
  writeResource,
  writeScope,
} from './proto-writer.ts';

/** Span flags (opentelemetry-proto SpanFlags): the trace flags, and whether the parent is known to be remote. */
const FLAGS_HAS_IS_REMOTE = 0x100;
const FLAGS_IS_REMOTE = 0x200;

// Span fields (opentelemetry-proto trace.proto), as one-byte tags except flags.
const SPAN_TRACE_ID = tag(1, WIRE_LEN);
const SPAN_SPAN_ID = tag(2, WIRE_LEN);
const SPAN_PARENT_SPAN_ID = tag(4, WIRE_LEN);
const SPAN_NAME = tag(5, WIRE_LEN);
const SPAN_KIND = tag(6, WIRE_VARINT);
const SPAN_START = tag(7, WIRE_FIXED64);
const SPAN_END = tag(8, WIRE_FIXED64);
const SPAN_ATTRIBUTES = tag(9, WIRE_LEN);
const SPAN_DROPPED_ATTRIBUTES = tag(10, WIRE_VARINT);
const SPAN_EVENTS = tag(11, WIRE_LEN);
const SPAN_DROPPED_EVENTS = tag(12, WIRE_VARINT);
const SPAN_DROPPED_LINKS = tag(14, WIRE_VARINT);
const SPAN_STATUS = tag(15, WIRE_LEN);
const EVENT_TIME = tag(1, WIRE_FIXED64);
const EVENT_NAME = tag(2, WIRE_LEN);
const EVENT_ATTRIBUTES = tag(3, WIRE_LEN);
const EVENT_DROPPED_ATTRIBUTES = tag(4, WIRE_VARINT);
const STATUS_MESSAGE = tag(2, WIRE_LEN);
const STATUS_CODE = tag(3, WIRE_VARINT);
const ANY_STRING = tag(1, WIRE_LEN);
const ANY_BOOL = tag(2, WIRE_VARINT);
const ANY_INT = tag(3, WIRE_VARINT);

const TWO_32 = 4_294_967_296;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** Per kernel attribute key: KeyValue.key (field 1, tag and length included) and the tag of KeyValue.value. */
const KEY_PREFIX: Uint8Array[] = KERNEL_ATTRIBUTE_KEYS.map((k) => {
  const w = new ProtoWriter(64);
  w.byte(tag(1, WIRE_LEN));
  w.string(k);
  w.byte(tag(2, WIRE_LEN));
  return Uint8Array.from(w.view());
});
const KERNEL_KEYS = new Set<string>(KERNEL_ATTRIBUTE_KEYS);

/**
 * One target's pre-encoded framing: the Resource and the scope, each with its
 * tag and length, as ResourceSpans and ScopeSpans hold them.
 */
export class EncodedTarget {
  readonly resource: Resource;
  /** ResourceSpans.resource (field 1). */
  readonly resourceField: Buffer;
  /** ResourceSpans.schema_url (field 3), or empty. */
  readonly resourceSchemaField: Buffer;
  /** ScopeSpans.scope (field 1). */
  readonly scopeField: Buffer;
  /** ScopeSpans.schema_url (field 3), or empty. */
  readonly scopeSchemaField: Buffer;
  /** The most a batch's ResourceSpans framing for this target can take (lengths at 5 bytes each). */
  readonly framingBytesMax: number;
  /** Batch sizing's and request assembly's bookkeeping (src/export/export-request.ts). */
  sizerMark = 0;
  batchMark = 0;
  batchSlot = 0;
  batchSpanBytes = 0;

  constructor(resource: Resource, scope: InstrumentationScope) {
    this.resource = resource;
    const w = new ProtoWriter(1024);
    const take = (): Buffer => {
      const b = Buffer.from(w.view());
      w.pos = 0;
      return b;
    };
    writeResource(w, 1, resource);
    this.resourceField = take();
    writeOptionalString(w, 3, resource.schemaUrl);
    this.resourceSchemaField = take();
    writeScope(w, 1, scope);
    this.scopeField = take();
    writeOptionalString(w, 3, scope.schemaUrl);
    this.scopeSchemaField = take();
    this.framingBytesMax =
      1 + 5 + this.resourceField.length + 1 + 5 + this.scopeField.length + this.scopeSchemaField.length + this.resourceSchemaField.length;
  }
}

/**
 * A piece of the encoder's arena. Spans are written one after the other; the
 * chunk goes back to the encoder's free list once every span in it is released
 * (exported or dropped) and the encoder has moved on to another chunk.
 */
export class ArenaChunk {
  readonly buf: Buffer;
  /** Spans in this chunk not yet released. */
  held = 0;

  constructor(buf: Buffer) {
    this.buf = buf;
  }
}

/**
 * One encoded span as ScopeSpans.spans holds it (tag, length, Span message), in an
 * arena chunk shared with the spans encoded before and after it.
 */
export class EncodedSpan {
  readonly target: EncodedTarget;
  readonly chunk: ArenaChunk;
  readonly start: number;
  readonly length: number;

  constructor(target: EncodedTarget, chunk: ArenaChunk, start: number, length: number) {
    this.target = target;
    this.chunk = chunk;
    this.start = start;
    this.length = length;
  }

  /** The field's bytes: tag, length, Span message (a view, valid until the span is released). */
  bytes(): Buffer {
    return this.chunk.buf.subarray(this.start, this.start + this.length);
  }
}

export interface KernelSpanEncoderOptions extends SpanBuilderOptions {
  /** Arena chunk size. Default 256 KiB. */
  chunkBytes?: number;
  /** Released chunks kept for reuse, at most. Default 16. */
  freeChunks?: number;
}

/**
 * A socket's attribute KeyValues (describeSocketAttributes), encoded once, and the
 * fields they were made from, in two parts: `shared`, the bytes of every socket
 * of the same process, role, family and local end (a server's listening address
 * and port), one copy for all of them; and `own`, the socket's, kept as a latin1
 * string, one char per byte (one heap object a socket, where a Uint8Array costs
 * three: the view, its ArrayBuffer and the buffer's native store). The fields are
 * the socket's own Endpoint objects, never changed once made
 * (src/records/decoder.ts).
 */
class SocketBlock implements SocketFields {
  readonly cookie: bigint;
  readonly pid: number;
  readonly role: KernelSpan['role'];
  readonly family: KernelSpan['family'];
  readonly peer: Endpoint;
  readonly local: Endpoint;
  readonly shared: Uint8Array;
  readonly own: string;

  constructor(k: SocketFields, shared: Uint8Array, own: string) {
    this.cookie = k.cookie;
    this.pid = k.pid;
    this.role = k.role;
    this.family = k.family;
    this.peer = k.peer;
    this.local = k.local;
    this.shared = shared;
    this.own = own;
  }
}

/** Shared parts kept at most (sharedSocketKey → bytes); emptied when full, as only new sockets look them up. */
const SHARED_SOCKET_BLOCKS = 1024;

const SCOPE_SPANS_SPAN = tag(2, WIRE_LEN);

export class KernelSpanEncoder implements AttributeSink {
  readonly #offset: () => bigint;
  readonly #resourceFor: (pid: number) => Resource;
  readonly #extra: ((span: KernelSpan) => Attributes | undefined) | undefined;
  readonly #scope: InstrumentationScope;
  readonly #ids: IdSource;
  readonly #targets = new WeakMap<Resource, EncodedTarget>();
  #lastResource: Resource | null = null;
  #lastTarget: EncodedTarget | null = null;
  /** Writes spans one after the other into arena chunks. */
  readonly #w: ProtoWriter;
  readonly #chunkBytes: number;
  readonly #freeMax: number;
  readonly #free: ArenaChunk[] = [];
  #chunk!: ArenaChunk;
  /** Per socket (keyed by its peer Endpoint object), the encoded socket attributes. */
  readonly #sockets = new WeakMap<object, SocketBlock>();
  /** Their shared parts, by sharedSocketKey. */
  readonly #shared = new Map<string, Uint8Array>();
  /** The KeyValue tag the sink writes: span attributes (9) or event attributes (3). */
  #attrTag = SPAN_ATTRIBUTES;
  /** The last parent, its ids as hex and as bytes (trace id, then span id). */
  #parent: TraceContext | null = null;
  #parentTraceHex = '';
  #parentSpanHex = '';
  readonly #parentBytes = new Uint8Array(24);
  // REALTIME − MONOTONIC split into 32-bit halves, for exact integer arithmetic on numbers.
  #offsetNs = -1n;
  #offLo = 0;
  #offHi = 0;
  #offFast = false;

  constructor(options: KernelSpanEncoderOptions) {
    const off = options.clockOffsetNs;
    this.#offset = typeof off === 'bigint' ? () => off : off;
    this.#resourceFor = options.resourceFor;
    this.#extra = options.extraAttributes;
    this.#scope = options.scope ?? KSPAN_SCOPE;
    this.#ids = options.ids ?? new IdSource();
    this.#chunkBytes = options.chunkBytes ?? 256 * 1024;
    this.#freeMax = options.freeChunks ?? 16;
    this.#w = new ProtoWriter(this.#chunkBytes, (min) => this.#nextChunk(min));
  }

  /** Gives a span's arena bytes back: call once per encoded span, when it has been exported or dropped. */
  release(span: EncodedSpan): void {
    const c = span.chunk;
    if (--c.held === 0 && c !== this.#chunk) this.#retire(c);
  }

  /** Released chunks kept for reuse, and the chunk size (tests, stats). */
  get arena(): { free: number; chunkBytes: number } {
    return { free: this.#free.length, chunkBytes: this.#chunkBytes };
  }

  #nextChunk(minBytes: number): Buffer {
    const old = this.#chunk as ArenaChunk | undefined;
    let next: ArenaChunk | undefined;
    if (minBytes <= this.#chunkBytes) next = this.#free.pop();
    next ??= new ArenaChunk(Buffer.allocUnsafeSlow(Math.max(this.#chunkBytes, minBytes)));
    this.#chunk = next;
    if (old && old.held === 0) this.#retire(old);
    return next.buf;
  }

  #retire(c: ArenaChunk): void {
    // Only standard-size chunks are kept; an oversized one (a huge span) goes to the GC.
    if (this.#free.length < this.#freeMax && c.buf.length === this.#chunkBytes) this.#free.push(c);
  }

  /** The pre-encoded framing of a Resource (one per Resource object, as the transformer groups by identity). */
  targetFor(resource: Resource): EncodedTarget {
    if (resource === this.#lastResource) return this.#lastTarget!;
    let t = this.#targets.get(resource);
    if (!t) {
      t = new EncodedTarget(resource, this.#scope);
      this.#targets.set(resource, t);
    }
    this.#lastResource = resource;
    this.#lastTarget = t;
    return t;
  }

  encode(k: KernelSpan): EncodedSpan {
    const target = this.targetFor(this.#resourceFor(k.pid));
    this.#setOffset(this.#offset());
    const w = this.#w;
    w.base = w.pos;
    w.ensure(64);
    // ScopeSpans.spans: tag, then two bytes kept for the length (a span is usually 128 B – 16 KiB).
    const buf = w.buf;
    const at = w.pos;
    buf[at] = SCOPE_SPANS_SPAN;
    w.pos = at + 1;
    const frame = w.begin(2);
    const p = k.parent;
    const self = k.self;
    // Ids as SpanBuilder chooses them: the correlator's own, else under the parent, else a new root.
    const ids = at + 3;
    buf[ids] = SPAN_TRACE_ID;
    buf[ids + 1] = 16;
    if (p) this.#parentIds(p);
    if (self) hexInto(buf, ids + 2, self.traceId, 16);
    else if (p) copy(this.#parentBytes, 0, buf, ids + 2, 16);
    else this.#ids.fill(buf, ids + 2, 16);
    buf[ids + 18] = SPAN_SPAN_ID;
    buf[ids + 19] = 8;
    if (self) hexInto(buf, ids + 20, self.spanId, 8);
    else this.#ids.fill(buf, ids + 20, 8);
    w.pos = ids + 28;
    if (p) {
      buf[ids + 28] = SPAN_PARENT_SPAN_ID;
      buf[ids + 29] = 8;
      copy(this.#parentBytes, 16, buf, ids + 30, 8);
      w.pos = ids + 38;
    }
    w.byte(SPAN_NAME);
    w.string(k.name);
    w.byte(SPAN_KIND);
    w.byte(spanKindOf(k) + 1); // OTLP counts UNSPECIFIED as 0
    w.byte(SPAN_START);
    this.#time(k.startNs);
    w.byte(SPAN_END);
    this.#time(spanEndNs(k));

    this.#attrTag = SPAN_ATTRIBUTES;
    const extra = this.#extra?.(k);
    if (extra && !mergesCleanly(extra)) {
      // An extra key replaces or reorders a kernel one: encode the merged object, as the builder makes it.
      writeKeyValues(w, 9, Object.assign(spanAttributes(k), extra));
    } else {
      if (k.sched) {
        describeSchedAttributes(k, this);
      } else {
        const b = this.#socketBlock(k);
        w.raw(b.shared);
        w.rawLatin1(b.own);
        describeOwnAttributes(k, this);
      }
      if (extra) writeKeyValues(w, 9, extra);
    }
    w.ensure(2);
    w.buf[w.pos++] = SPAN_DROPPED_ATTRIBUTES;
    w.buf[w.pos++] = 0;

    if (k.events.length) {
      this.#attrTag = EVENT_ATTRIBUTES;
      for (const e of k.events) {
        w.byte(SPAN_EVENTS);
        const m = w.begin();
        w.byte(EVENT_TIME);
        this.#time(e.tsNs);
        w.byte(EVENT_NAME);
        w.string(e.name);
        describeEventAttributes(e, this);
        w.byte(EVENT_DROPPED_ATTRIBUTES);
        w.byte(0);
        w.end(m);
      }
    }

    w.ensure(4);
    w.buf[w.pos++] = SPAN_DROPPED_EVENTS;
    w.buf[w.pos++] = 0;
    w.buf[w.pos++] = SPAN_DROPPED_LINKS;
    w.buf[w.pos++] = 0;
    writeStatusField(w, spanStatusOf(k));
    const traceFlags = self ? self.traceFlags : p ? p.traceFlags : 1;
    w.tag(16, WIRE_FIXED32); // flags: a two-byte tag
    w.fixed32((traceFlags & 0xff) | FLAGS_HAS_IS_REMOTE | (p && !k.localParent ? FLAGS_IS_REMOTE : 0));
    w.end(frame, 2);
    // The chunk may have changed while writing: the span is wherever base points now.
    const chunk = this.#chunk;
    chunk.held++;
    const span = new EncodedSpan(target, chunk, w.base, w.pos - w.base);
    w.base = w.pos;
    return span;
  }

  /**
   * A span SpanBuilder-like code already made (function spans: src/spans/call-spans.ts),
   * encoded as the transformer would: ids, parent, name, kind, times, attributes,
   * status, flags. No events or links (they have none).
   */
  encodeReadable(span: ReadableSpan): EncodedSpan {
    const target = this.targetFor(span.resource as Resource);
    const w = this.#w;
    w.base = w.pos;
    w.ensure(64);
    const buf = w.buf;
    buf[w.pos++] = SCOPE_SPANS_SPAN;
    const frame = w.begin(2);
    const ctx = span.spanContext();
    const parent = span.parentSpanContext;
    w.ensure(40);
    w.buf[w.pos++] = SPAN_TRACE_ID;
    w.buf[w.pos++] = 16;
    hexInto(w.buf, w.pos, ctx.traceId, 16);
    w.pos += 16;
    w.buf[w.pos++] = SPAN_SPAN_ID;
    w.buf[w.pos++] = 8;
    hexInto(w.buf, w.pos, ctx.spanId, 8);
    w.pos += 8;
    if (parent) {
      w.ensure(10);
      w.buf[w.pos++] = SPAN_PARENT_SPAN_ID;
      w.buf[w.pos++] = 8;
      hexInto(w.buf, w.pos, parent.spanId, 8);
      w.pos += 8;
    }
    w.byte(SPAN_NAME);
    w.string(span.name);
    w.byte(SPAN_KIND);
    w.byte(span.kind + 1); // OTLP counts UNSPECIFIED as 0
    this.#setOffset(0n);
    w.byte(SPAN_START);
    this.#time(hrTimeToNs(span.startTime));
    w.byte(SPAN_END);
    this.#time(hrTimeToNs(span.endTime));
    writeKeyValues(w, 9, span.attributes);
    w.ensure(6);
    w.buf[w.pos++] = SPAN_DROPPED_ATTRIBUTES;
    w.buf[w.pos++] = 0;
    w.buf[w.pos++] = SPAN_DROPPED_EVENTS;
    w.buf[w.pos++] = 0;
    w.buf[w.pos++] = SPAN_DROPPED_LINKS;
    w.buf[w.pos++] = 0;
    writeStatusField(w, span.status);
    w.tag(16, WIRE_FIXED32);
    w.fixed32((ctx.traceFlags & 0xff) | FLAGS_HAS_IS_REMOTE | (parent?.isRemote ? FLAGS_IS_REMOTE : 0));
    w.end(frame, 2);
    const chunk = this.#chunk;
    chunk.held++;
    const out = new EncodedSpan(target, chunk, w.base, w.pos - w.base);
    w.base = w.pos;
    return out;
  }

  /** The parent's trace and span id as bytes in #parentBytes; the spans of one request share a parent, so the last is kept. */
  #parentIds(p: TraceContext): void {
    // The same context object with the same id strings: nothing to decode (identity first, it fails fast).
    if (p === this.#parent && p.traceId === this.#parentTraceHex && p.spanId === this.#parentSpanHex) return;
    hexInto(this.#parentBytes, 0, p.traceId, 16);
    hexInto(this.#parentBytes, 16, p.spanId, 8);
    this.#parent = p;
    this.#parentTraceHex = p.traceId;
    this.#parentSpanHex = p.spanId;
  }

  /** The socket attributes' KeyValues: from the cache when this socket's were encoded already. */
  #socketBlock(k: KernelSpan): SocketBlock {
    const cached = this.#sockets.get(k.peer);
    if (cached && sameSocketAttributes(cached, k)) return cached;
    const key = sharedSocketKey(k);
    let shared = this.#shared.get(key);
    if (shared === undefined) {
      shared = Buffer.from(this.#latin1(k, describeSharedSocketAttributes), 'latin1');
      if (this.#shared.size >= SHARED_SOCKET_BLOCKS) this.#shared.clear();
      this.#shared.set(key, shared);
    }
    const block = new SocketBlock(k, shared, this.#latin1(k, describeOwnSocketAttributes));
    this.#sockets.set(k.peer, block);
    return block;
  }

  /** What `describe` writes for `k`, as a latin1 string; the writer is left where it was. */
  #latin1(k: KernelSpan, describe: (k: KernelSpan, out: AttributeSink) => void): string {
    const w = this.#w;
    const from = w.pos - w.base;
    describe(k, this);
    const bytes = w.buf.toString('latin1', w.base + from, w.pos);
    w.pos = w.base + from; // the caller writes them back with the rest
    return bytes;
  }

  #setOffset(off: bigint): void {
    if (off === this.#offsetNs) return;
    this.#offsetNs = off;
    this.#offFast = off >= 0n && off < 1n << 63n;
    this.#offLo = Number(off & 0xffff_ffffn);
    this.#offHi = Number((off >> 32n) & 0xffff_ffffn);
  }

  /** Kernel time + the clock offset as fixed64 Unix ns: exact, negative clamped to 0 (as hr-time.ts). */
  #time(mono: bigint): void {
    const m = Number(mono);
    if (this.#offFast && m >= 0 && m <= MAX_SAFE) {
      const mLo = m % TWO_32;
      let lo = this.#offLo + mLo;
      let hi = this.#offHi + (m - mLo) / TWO_32;
      if (lo >= TWO_32) {
        lo -= TWO_32;
        hi += 1;
      }
      this.#w.fixed64(lo, hi);
      return;
    }
    let t = mono + this.#offsetNs;
    if (t < 0n) t = 0n;
    this.#w.fixed64(Number(t & 0xffff_ffffn), Number((t >> 32n) & 0xffff_ffffn));
  }

  // AttributeSink: one KeyValue per call, the key pre-encoded.

  string(key: number, value: string): void {
    const w = this.#w;
    const kp = KEY_PREFIX[key];
    w.byte(this.#attrTag);
    const kv = w.begin();
    w.raw(kp);
    const any = w.begin();
    w.byte(ANY_STRING);
    w.string(value);
    w.end(any);
    w.end(kv);
  }

  number(key: number, value: number): void {
    const w = this.#w;
    const kp = KEY_PREFIX[key];
    if (value >= 0 && value < TWO_32 && Number.isInteger(value)) {
      // All lengths known up front: no patching.
      const vs = varintSize(value);
      w.ensure(kp.length + 8);
      const buf = w.buf;
      let at = w.pos;
      buf[at++] = this.#attrTag;
      buf[at++] = kp.length + 2 + vs;
      for (let i = 0; i < kp.length; i++) buf[at++] = kp[i];
      buf[at++] = 1 + vs;
      buf[at++] = ANY_INT;
      w.pos = at;
      w.varint32(value);
      return;
    }
    w.byte(this.#attrTag);
    const kv = w.begin();
    w.raw(kp);
    const any = w.begin();
    writeAnyValue(w, value);
    w.end(any);
    w.end(kv);
  }

  strings(key: number, value: readonly string[]): void {
    const w = this.#w;
    w.byte(this.#attrTag);
    const kv = w.begin();
    w.raw(KEY_PREFIX[key]);
    const any = w.begin();
    writeAnyValue(w, value);
    w.end(any);
    w.end(kv);
  }

  bool(key: number, value: boolean): void {
    const w = this.#w;
    const kp = KEY_PREFIX[key];
    w.ensure(kp.length + 5);
    const buf = w.buf;
    let at = w.pos;
    buf[at++] = this.#attrTag;
    buf[at++] = kp.length + 3;
    for (let i = 0; i < kp.length; i++) buf[at++] = kp[i];
    buf[at++] = 2;
    buf[at++] = ANY_BOOL;
    buf[at++] = value ? 1 : 0;
    w.pos = at;
  }
}

/** Span.status (field 15): the message when there is one, then the code (always, as the transformer writes it). */
export function writeStatusField(w: ProtoWriter, status: SpanStatus): void {
  w.byte(SPAN_STATUS);
  const m = w.begin();
  if (status.message) {
    w.byte(STATUS_MESSAGE);
    w.string(status.message);
  }
  w.byte(STATUS_CODE);
  w.varint32(status.code);
  w.end(m);
}

/**
 * Whether extra attributes can follow the kernel ones as they are: none of their
 * keys is a kernel key (Object.assign would replace it in place) or starts with
 * a digit (an array-index key would sort first in the builder's object).
 */
function mergesCleanly(extra: Attributes): boolean {
  for (const key in extra) {
    const c = key.charCodeAt(0);
    if ((c >= 48 && c <= 57) || KERNEL_KEYS.has(key)) return false;
  }
  return true;
}

/** Hex digit value as the transformer's hexToBinary reads it (any character: it does not validate). */
function nibble(c: number): number {
  return c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c - 55;
}

/** nibble() of the Latin-1 characters, as a table: random hex digits mispredict nibble()'s branches. */
const NIBBLE = Uint8Array.from({ length: 256 }, (_, c) => nibble(c) & 0xff);

function copy(from: Uint8Array, at: number, to: Uint8Array, toAt: number, n: number): void {
  for (let i = 0; i < n; i++) to[toAt + i] = from[at + i];
}

/** `bytes` bytes from a hex id into buf at `at`. */
function hexInto(buf: Uint8Array, at: number, hex: string, bytes: number): void {
  for (let i = 0; i < bytes; i++) {
    const hi = hex.charCodeAt(2 * i);
    const lo = hex.charCodeAt(2 * i + 1);
    buf[at + i] = (hi | lo) < 256 ? (NIBBLE[hi] << 4) | NIBBLE[lo] : (nibble(hi) << 4) | nibble(lo);
  }
}
