/**
 * A protobuf wire-format writer over one growable, reused Buffer, and the OTLP
 * common messages written with it (AnyValue, KeyValue, Resource,
 * InstrumentationScope). The field numbers are opentelemetry-proto's (see
 * src/proto/otlp.proto). Values are typed as @opentelemetry/otlp-transformer
 * types JS values, so both produce the same bytes:
 * string → string_value, boolean → bool_value, an integral number in
 * [−2^63, 2^63) → int_value, any other number → double_value, Uint8Array →
 * bytes_value, array → array_value, other object → kvlist_value, anything else
 * → an empty AnyValue. Pure.
 */
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';

export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LEN = 2;
export const WIRE_FIXED32 = 5;

const TWO_32 = 4_294_967_296;
const TWO_63 = 2 ** 63;

/** The byte length of v (0 ≤ v < 2^32) as a varint. */
export function varintSize(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x20_0000 ? 3 : v < 0x1000_0000 ? 4 : 5;
}

/** A field's tag as one number (fields 1–15 fit one byte, 16–2047 two). */
export function tag(field: number, wire: number): number {
  return (field << 3) | wire;
}

/**
 * Writes into `buf` from `pos`. Marks from begin() are relative to `base`, so a
 * message under construction can be moved: in arena mode (`nextChunk` given) the
 * writer never reallocates what came before `base`; when a chunk fills it takes
 * the next one and carries only the bytes from `base` on (the span being written).
 */
export class ProtoWriter {
  buf: Buffer;
  pos = 0;
  /** Where the message under construction starts; marks are relative to it. */
  base = 0;
  readonly #nextChunk: ((minBytes: number) => Buffer) | null;

  /** `size`: the initial buffer, unless `nextChunk` (arena mode) provides every buffer. */
  constructor(size = 64 * 1024, nextChunk: ((minBytes: number) => Buffer) | null = null) {
    this.#nextChunk = nextChunk;
    this.buf = nextChunk ? nextChunk(size) : Buffer.allocUnsafe(size);
  }

  /** Room for n more bytes. */
  ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.#grow(n);
  }

  #grow(n: number): void {
    if (this.#nextChunk) {
      const used = this.pos - this.base;
      const next = this.#nextChunk(2 * (used + n));
      next.set(this.buf.subarray(this.base, this.pos), 0);
      this.buf = next;
      this.base = 0;
      this.pos = used;
      return;
    }
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    next.set(this.buf.subarray(0, this.pos), 0);
    this.buf = next;
  }

  /** The bytes written so far (a view, valid until the next write). */
  view(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  /** A tag as its varint (one or two bytes). */
  tag(field: number, wire: number): void {
    this.varint32((field << 3) | wire);
  }

  /** 0 ≤ v < 2^32. */
  varint32(v: number): void {
    this.ensure(5);
    const buf = this.buf;
    let p = this.pos;
    while (v > 0x7f) {
      buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[p++] = v;
    this.pos = p;
  }

  /** An integral number below 2^63 in magnitude, as int64 (two's complement: 10 bytes when negative). */
  varint64(v: number): void {
    if (v >= 0 && v < TWO_32) return this.varint32(v);
    this.ensure(10);
    let lo: number;
    let hi: number;
    if (v >= 0) {
      lo = v >>> 0;
      hi = (v / TWO_32) >>> 0;
    } else {
      const a = -v;
      lo = ~(a >>> 0) >>> 0;
      hi = ~((a / TWO_32) >>> 0) >>> 0;
      lo = (lo + 1) >>> 0;
      if (lo === 0) hi = (hi + 1) >>> 0;
    }
    const buf = this.buf;
    let p = this.pos;
    while (hi > 0 || lo > 0x7f) {
      buf[p++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    buf[p++] = lo;
    this.pos = p;
  }

  fixed32(v: number): void {
    this.ensure(4);
    const buf = this.buf;
    const p = this.pos;
    buf[p] = v;
    buf[p + 1] = v >>> 8;
    buf[p + 2] = v >>> 16;
    buf[p + 3] = v >>> 24;
    this.pos = p + 4;
  }

  /** A 64-bit little-endian value from its two 32-bit halves. */
  fixed64(lo: number, hi: number): void {
    this.ensure(8);
    const buf = this.buf;
    const p = this.pos;
    buf[p] = lo;
    buf[p + 1] = lo >>> 8;
    buf[p + 2] = lo >>> 16;
    buf[p + 3] = lo >>> 24;
    buf[p + 4] = hi;
    buf[p + 5] = hi >>> 8;
    buf[p + 6] = hi >>> 16;
    buf[p + 7] = hi >>> 24;
    this.pos = p + 8;
  }

  double(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  /** Raw bytes, no length. */
  raw(b: Uint8Array): void {
    const n = b.length;
    this.ensure(n);
    const buf = this.buf;
    const p = this.pos;
    if (n <= 64) for (let i = 0; i < n; i++) buf[p + i] = b[i];
    else buf.set(b, p);
    this.pos = p + n;
  }

  /** Raw bytes held as a latin1 string (one char per byte, as Buffer#toString('latin1') makes it), no length. */
  rawLatin1(s: string): void {
    const n = s.length;
    this.ensure(n);
    this.buf.write(s, this.pos, n, 'latin1');
    this.pos += n;
  }

  /** Length-delimited bytes. */
  bytes(b: Uint8Array): void {
    this.varint32(b.length);
    this.raw(b);
  }

  /** A length-delimited UTF-8 string (ASCII in one pass; lone surrogates become U+FFFD, as TextEncoder does). */
  string(s: string): void {
    const n = s.length;
    if (n < 0x80) {
      this.ensure(n + 1);
      const buf = this.buf;
      const at = this.pos;
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c > 0x7f) return this.#utf8(s);
        buf[at + 1 + i] = c;
      }
      buf[at] = n;
      this.pos = at + 1 + n;
      return;
    }
    this.#utf8(s);
  }

  #utf8(s: string): void {
    const len = Buffer.byteLength(s, 'utf8');
    this.varint32(len);
    this.ensure(len);
    this.pos += this.buf.write(s, this.pos, len, 'utf8');
  }

  /** Starts a length-delimited body, keeping `reserved` bytes for its length. Returns the mark for end(). */
  begin(reserved = 1): number {
    this.ensure(reserved);
    const mark = this.pos - this.base;
    this.pos += reserved;
    return mark;
  }

  /** Ends the body begun at `mark`: writes its length, moving the body when the length's size is not what was reserved. */
  end(mark: number, reserved = 1): void {
    let at = this.base + mark;
    const len = this.pos - at - reserved;
    if (len < 0x80 && reserved === 1) {
      this.buf[at] = len;
      return;
    }
    const size = varintSize(len);
    if (size !== reserved) {
      if (size > reserved) {
        this.ensure(size - reserved); // may move the message to a new chunk
        at = this.base + mark;
      }
      this.buf.copyWithin(at + size, at + reserved, this.pos);
      this.pos += size - reserved;
    }
    const buf = this.buf;
    let v = len;
    let p = at;
    while (v > 0x7f) {
      buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[p] = v;
  }
}

/** An AnyValue's fields (the body, without its own tag and length). */
export function writeAnyValue(w: ProtoWriter, v: unknown): void {
  switch (typeof v) {
    case 'string':
      w.byte(tag(1, WIRE_LEN));
      w.string(v);
      return;
    case 'boolean':
      w.byte(tag(2, WIRE_VARINT));
      w.byte(v ? 1 : 0);
      return;
    case 'number':
      if (Number.isInteger(v) && v >= -TWO_63 && v < TWO_63) {
        w.byte(tag(3, WIRE_VARINT));
        w.varint64(v);
      } else {
        w.byte(tag(4, WIRE_FIXED64));
        w.double(v);
      }
      return;
    case 'object': {
      if (v === null) return;
      if (v instanceof Uint8Array) {
        w.byte(tag(7, WIRE_LEN));
        w.bytes(v);
        return;
      }
      if (Array.isArray(v)) {
        w.byte(tag(5, WIRE_LEN));
        const list = w.begin();
        for (const item of v) {
          w.byte(tag(1, WIRE_LEN));
          const m = w.begin();
          writeAnyValue(w, item);
          w.end(m);
        }
        w.end(list);
        return;
      }
      w.byte(tag(6, WIRE_LEN));
      const list = w.begin();
      writeKeyValues(w, 1, v as Record<string, unknown>);
      w.end(list);
      return;
    }
    default:
      // undefined, bigint, function, symbol: an empty AnyValue.
      return;
  }
}

/** One KeyValue as field `field` of the enclosing message. */
export function writeKeyValue(w: ProtoWriter, field: number, key: string, value: unknown): void {
  w.tag(field, WIRE_LEN);
  const kv = w.begin();
  w.byte(tag(1, WIRE_LEN));
  w.string(key);
  w.byte(tag(2, WIRE_LEN));
  const any = w.begin();
  writeAnyValue(w, value);
  w.end(any);
  w.end(kv);
}

/** Every own enumerable property of `attrs` as a repeated KeyValue field, in iteration order. */
export function writeKeyValues(w: ProtoWriter, field: number, attrs: Readonly<Record<string, unknown>>): void {
  for (const key in attrs) {
    if (Object.hasOwn(attrs, key)) writeKeyValue(w, field, key, attrs[key]);
  }
}

/** Field `field`: a Resource message (attributes, then dropped_attributes_count 0, as the transformer writes it). */
export function writeResource(w: ProtoWriter, field: number, resource: Resource): void {
  w.tag(field, WIRE_LEN);
  const m = w.begin();
  writeKeyValues(w, 1, resource.attributes);
  w.byte(tag(2, WIRE_VARINT));
  w.byte(0);
  w.end(m);
}

/** Field `field`: an InstrumentationScope message. */
export function writeScope(
  w: ProtoWriter,
  field: number,
  scope: InstrumentationScope & { attributes?: Record<string, unknown>; droppedAttributesCount?: number },
): void {
  w.tag(field, WIRE_LEN);
  const m = w.begin();
  w.byte(tag(1, WIRE_LEN));
  w.string(scope.name);
  if (scope.version) {
    w.byte(tag(2, WIRE_LEN));
    w.string(scope.version);
  }
  if (scope.attributes) writeKeyValues(w, 3, scope.attributes);
  if (scope.droppedAttributesCount) {
    w.byte(tag(4, WIRE_VARINT));
    w.varint32(scope.droppedAttributesCount);
  }
  w.end(m);
}

/** Field `field` as a length-delimited string, when the string is not empty. */
export function writeOptionalString(w: ProtoWriter, field: number, s: string | undefined): void {
  if (!s) return;
  w.tag(field, WIRE_LEN);
  w.string(s);
}
