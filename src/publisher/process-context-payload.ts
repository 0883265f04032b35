/**
 * Encodes the OTEP 4719 payload: ProcessContext { resource = the service's
 * Resource attributes; attributes = the threadlocal.* keys that tell a reader which
 * thread-context scheme this process writes and how to name record attributes }.
 *
 * Written with the agent's protobuf writer (src/export/proto-writer.ts), not
 * protobufjs: loading protobufjs and parsing otlp.proto cost the traced service
 * 4 MB of RSS next to the rest of the publisher (9 MB in a bare process), for
 * one small message written when the Resource is set.
 * The bytes are protobufjs's for the same message (test/unit/publisher.test.ts
 * compares them over generated attributes), but for strings with lone
 * surrogates, which become U+FFFD here.
 */
import { ProtoWriter, tag, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT } from '../export/proto-writer.ts';

/** An attribute value as OpenTelemetry JS holds it. */
export type AttributeValue =
  | string
  | number
  | boolean
  | bigint
  | readonly (string | number | boolean | null | undefined)[]
  | null
  | undefined;

export type AttributeMap = Readonly<Record<string, AttributeValue>>;

export function encodeProcessContext(resource: AttributeMap, threadlocal: AttributeMap): Uint8Array {
  const w = new ProtoWriter(1024);
  w.byte(tag(1, WIRE_LEN));
  const r = w.begin();
  writeAttributes(w, 1, resource);
  w.end(r);
  writeAttributes(w, 2, threadlocal);
  return new Uint8Array(w.view());
}

/** The attributes that have a value (a string, boolean, number, bigint or array) as repeated KeyValue field `field`. */
function writeAttributes(w: ProtoWriter, field: number, attrs: AttributeMap): void {
  for (const [key, value] of Object.entries(attrs)) {
    if (!hasAnyValue(value)) continue;
    w.tag(field, WIRE_LEN);
    const kv = w.begin();
    if (key) {
      // proto3: an empty key is the default and not written
      w.byte(tag(1, WIRE_LEN));
      w.string(key);
    }
    w.byte(tag(2, WIRE_LEN));
    const any = w.begin();
    writeAnyValue(w, value);
    w.end(any);
    w.end(kv);
  }
}

function hasAnyValue(v: unknown): boolean {
  const t = typeof v;
  return t === 'string' || t === 'boolean' || t === 'bigint' || t === 'number' || Array.isArray(v);
}

/** An AnyValue's fields: an int64 for a bigint (modulo 2^64) or a safe integer, else a double; an array's items without a value are empty AnyValues. */
function writeAnyValue(w: ProtoWriter, v: unknown): void {
  if (typeof v === 'string') {
    w.byte(tag(1, WIRE_LEN));
    w.string(v);
  } else if (typeof v === 'boolean') {
    w.byte(tag(2, WIRE_VARINT));
    w.byte(v ? 1 : 0);
  } else if (typeof v === 'bigint') {
    w.byte(tag(3, WIRE_VARINT));
    let u = BigInt.asUintN(64, v);
    while (u > 0x7fn) {
      w.byte(Number(u & 0x7fn) | 0x80);
      u >>= 7n;
    }
    w.byte(Number(u));
  } else if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) {
      w.byte(tag(3, WIRE_VARINT));
      w.varint64(v);
    } else {
      w.byte(tag(4, WIRE_FIXED64));
      w.double(v);
    }
  } else if (Array.isArray(v)) {
    w.byte(tag(5, WIRE_LEN));
    const list = w.begin();
    for (const item of v) {
      w.byte(tag(1, WIRE_LEN));
      const m = w.begin();
      if (hasAnyValue(item)) writeAnyValue(w, item);
      w.end(m);
    }
    w.end(list);
  }
}
