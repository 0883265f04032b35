/**
 * The nodejs_v1_dev walk over a synthetic V8 heap: every branch a real process
 * rarely shows (chains, rehash, bad counts, torn records, G1/G2 layouts) must give
 * "no context" or a rejection, never a wrong context.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeRecordAttributes } from '../../src/context/record-attributes.ts';
import {
  MAX_CHAIN_HOPS,
  nodeLayoutFromProcessContext,
  walkNodeContext,
  type MemoryReader,
  type NodeWalkLayout,
} from '../../src/context/nodejs/v8-walk.ts';

class FakeMemory implements MemoryReader {
  readonly regions = new Map<bigint, Buffer>();
  reads = 0;
  onRead?: (addr: bigint, n: number) => void;
  region(addr: bigint, size: number): Buffer {
    const b = Buffer.alloc(size);
    this.regions.set(addr, b);
    return b;
  }
  tryRead(addr: bigint, n: number): Buffer | undefined {
    this.reads++;
    this.onRead?.(addr, n);
    for (const [base, buf] of this.regions) {
      if (addr >= base && addr + BigInt(n) <= base + BigInt(buf.length)) {
        const off = Number(addr - base);
        return Buffer.from(buf.subarray(off, off + n));
      }
    }
    return undefined;
  }
}

const smi = (n: number) => BigInt.asUintN(64, BigInt(n) << 32n);
const TLS = 0x1000n;
const CPED = 0x2000n;
const ALS_HANDLE = 0x2100n;
const ALS = 0x5001n;
const OTHER_KEY = 0x5101n;
const UNDEFINED = 0x9001n;
const FRAME = 0x3000n;
const TABLE = 0x4000n;
const WRAPPER = 0x6000n;
const RECORD = 0x7000n;
const TRACE = Buffer.from('0af7651916cd43dd8448eb211c80319c', 'hex');
const SPAN = Buffer.from('b7ad6b7169203331', 'hex');

interface Heap {
  mem: FakeMemory;
  tls: Buffer;
  table: Buffer;
  wrapper: Buffer;
  record: Buffer;
  /** Entry address for index i. */
  entry(i: number): number;
  F: number;
}

/** A frame whose map has `entries` ({key, value, next}) in `buckets` buckets. */
function heap(opts: {
  hash?: number;
  buckets?: number;
  heads?: number[];
  entries?: [bigint, bigint, number][];
  slotByte?: number;
  recordSlot?: number;
  valid?: number;
  attrs?: Buffer;
} = {}): Heap {
  const mem = new FakeMemory();
  const buckets = opts.buckets ?? 2;
  const entries = opts.entries ?? [[ALS, WRAPPER | 1n, -1]];
  const heads = opts.heads ?? [0, -1];
  const tls = mem.region(TLS, 32);
  tls.writeBigUInt64LE(CPED, 0);
  tls.writeBigUInt64LE(ALS_HANDLE, 8);
  tls.writeInt32LE(opts.hash ?? 0x1234, 16); // bucket 0 of 2
  tls.writeUInt8(opts.slotByte ?? 32, 20);
  tls.writeBigUInt64LE(UNDEFINED, 24);
  mem.region(CPED, 8).writeBigUInt64LE(FRAME | 1n);
  mem.region(ALS_HANDLE, 8).writeBigUInt64LE(ALS);
  mem.region(FRAME, 32).writeBigUInt64LE(TABLE | 1n, 24);
  const F = 16;
  const table = mem.region(TABLE, F + 24 + 8 * buckets + 24 * Math.max(entries.length, 2 * buckets));
  table.writeBigUInt64LE(smi(entries.length), F);
  table.writeBigUInt64LE(smi(0), F + 8);
  table.writeBigUInt64LE(smi(buckets), F + 16);
  heads.forEach((h, i) => table.writeBigUInt64LE(smi(h), F + 24 + 8 * i));
  const entryOff = (i: number) => F + 24 + 8 * buckets + 24 * i;
  entries.forEach(([k, v, next], i) => {
    table.writeBigUInt64LE(k, entryOff(i));
    table.writeBigUInt64LE(v, entryOff(i) + 8);
    table.writeBigUInt64LE(smi(next), entryOff(i) + 16);
  });
  const wrapper = mem.region(WRAPPER, 64);
  wrapper.writeBigUInt64LE(RECORD, opts.recordSlot ?? 32);
  const attrs = opts.attrs ?? Buffer.alloc(0);
  const record = mem.region(RECORD, 28 + attrs.length);
  TRACE.copy(record, 0);
  SPAN.copy(record, 16);
  record[24] = opts.valid ?? 1;
  record[25] = 1;
  record.writeUInt16LE(attrs.length, 26);
  attrs.copy(record, 28);
  return { mem, tls, table, wrapper, record, entry: entryOff, F };
}

const G3 = (() => {
  const r = nodeLayoutFromProcessContext({ 'threadlocal.schema_version': 'nodejs_v1_dev', 'threadlocal.attribute_key_map': [] });
  assert.ok(r.ok);
  return r.layout;
})();

test('walks to the record: ids, flags, and the path taken', () => {
  const h = heap();
  const w = walkNodeContext(h.mem, TLS, G3);
  assert.equal(w.status, 'context');
  if (w.status !== 'context') return;
  assert.deepEqual([w.traceId, w.spanId, w.traceFlags], [TRACE, SPAN, 1]);
  assert.deepEqual(
    { frame: w.trace.frame, table: w.trace.table, buckets: w.trace.buckets, entryIndex: w.trace.entryIndex, hops: w.trace.hops, wrapper: w.trace.wrapper, record: w.trace.record },
    { frame: FRAME | 1n, table: TABLE, buckets: 2, entryIndex: 0, hops: 1, wrapper: WRAPPER, record: RECORD },
  );
});

test('follows a bucket chain and picks its own ALS by identity, not the first key', () => {
  // Both keys in bucket 0: entry 0 (another ALS) chains to entry 1 (ours).
  const h = heap({ entries: [[OTHER_KEY, 0x8801n, 1], [ALS, WRAPPER | 1n, -1]], heads: [0, -1], buckets: 2 });
  const w = walkNodeContext(h.mem, TLS, G3);
  assert.equal(w.status, 'context');
  assert.equal(w.trace.entryIndex, 1);
  assert.equal(w.trace.hops, 2);
});

test('uses hash & (buckets - 1) to choose the bucket', () => {
  const h = heap({ hash: 0x1235, entries: [[OTHER_KEY, 0x8801n, -1], [ALS, WRAPPER | 1n, -1]], heads: [0, 1] });
  const w = walkNodeContext(h.mem, TLS, G3);
  assert.equal(w.status, 'context');
  assert.equal(w.trace.entryIndex, 1);
});

test('no context: uninitialized struct, undefined frame, missing key, undefined value, zero record pointer', () => {
  let h = heap();
  h.tls.writeBigUInt64LE(0n, 24); // undefined_addr not yet stored
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'none', reason: 'not-initialized' });

  h = heap();
  h.mem.regions.get(CPED)!.writeBigUInt64LE(UNDEFINED);
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'none', reason: 'no-frame' });

  h = heap({ entries: [[OTHER_KEY, WRAPPER | 1n, -1]] });
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'none', reason: 'no-entry' });

  h = heap({ entries: [[ALS, UNDEFINED, -1]] });
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'none', reason: 'undefined-value' });

  h = heap();
  h.wrapper.writeBigUInt64LE(0n, 32);
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'none', reason: 'no-record' });
});

test('rejects what a rehash, a GC copy or garbage looks like', () => {
  let h = heap();
  h.table.writeBigUInt64LE(TABLE | 0x41n, h.F); // element count is a forwarding pointer
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'rehashing' });

  for (const buckets of [0, 3, 2048]) {
    h = heap();
    h.table.writeBigUInt64LE(smi(buckets), h.F + 16);
    assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'bad-bucket-count' }, `buckets ${buckets}`);
  }

  h = heap({ heads: [5, -1] }); // beyond elements + deleted
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'bad-index' });

  h = heap({ entries: [[OTHER_KEY, 0n, 0]], heads: [0, -1], buckets: 2 }); // a chain that loops on itself
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'chain-too-long' });
  assert.ok(h.mem.reads < 20 + MAX_CHAIN_HOPS);

  h = heap({ entries: [[ALS, WRAPPER, -1]] }); // value is not a heap object
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'untagged-value' });

  h = heap({ slotByte: 0 }); // a G1-era struct (byte 20 is padding) read as G3
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'rejected', reason: 'bad-record-slot' });

  h = heap();
  h.mem.regions.delete(TABLE);
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'fault', at: 'table' });
});

test('record: valid != 1 is no context; a valid flip or a swapped record during the copy is torn', () => {
  let h = heap({ valid: 0 });
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'invalid', valid: 0 });

  h = heap();
  let recordReads = 0;
  h.mem.onRead = (addr) => {
    if (addr === RECORD && ++recordReads === 2) h.record[24] = 0; // invalidated between the copies
  };
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'torn' });

  h = heap();
  recordReads = 0;
  h.mem.onRead = (addr) => {
    if (addr === RECORD && ++recordReads === 2) h.record.fill(0xee, 16, 24); // span id rewritten mid-copy
  };
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'torn' });

  h = heap();
  recordReads = 0;
  h.mem.onRead = (addr) => {
    if (addr === RECORD && ++recordReads === 2) h.wrapper.writeBigUInt64LE(RECORD + 0x100n, 32); // appendAttributes reallocated
  };
  assert.deepEqual(pick(walkNodeContext(h.mem, TLS, G3)), { status: 'torn' });
});

test('attributes: copied, clamped to whole entries, decoded through the key map with unknown keys counted', () => {
  const attrs = Buffer.concat([Buffer.from([1, 3]), Buffer.from('GET'), Buffer.from([0, 5]), Buffer.from('/x/yz'), Buffer.from([9, 1, 0x41])]);
  const h = heap({ attrs });
  const w = walkNodeContext(h.mem, TLS, G3);
  assert.equal(w.status, 'context');
  if (w.status !== 'context') return;
  assert.deepEqual(w.attributes, attrs);
  assert.deepEqual(decodeRecordAttributes(w.attributes, ['http.route', 'http.request.method']), {
    attributes: { 'http.request.method': 'GET', 'http.route': '/x/yz' },
    unknownKeys: 1,
    truncated: false,
  });
  const big = Buffer.concat(Array.from({ length: 3 }, (_, i) => Buffer.concat([Buffer.from([i, 120]), Buffer.alloc(120, 0x61)])));
  const w2 = walkNodeContext(heap({ attrs: big }).mem, TLS, G3);
  assert.equal(w2.status, 'context');
  if (w2.status === 'context') assert.equal(w2.attributes.length, 244, 'two whole entries of 122 fit in 256');
});

test('layouts: G3 by default, G2 from js_object_record_offset, G1 two hops; refuses pointer compression and other schemas', () => {
  const base = { 'threadlocal.schema_version': 'nodejs_v1_dev' };
  const g2 = nodeLayoutFromProcessContext({ ...base, 'threadlocal.js_object_record_offset': 24, 'threadlocal.tagged_size': 8 });
  assert.ok(g2.ok);
  assert.deepEqual(g2.layout.record, { kind: 'direct', slot: 24 });
  assert.equal(g2.layout.generation, 'G2');
  const w2 = walkNodeContext(heap({ recordSlot: 24, slotByte: 0 }).mem, TLS, g2.layout);
  assert.equal(w2.status, 'context');

  const g1 = nodeLayoutFromProcessContext({
    ...base,
    'threadlocal.tagged_size': 8,
    'threadlocal.js_map_table_offset': 24,
    'threadlocal.ordered_hash_map_header_size': 16,
    'threadlocal.wrapped_object_offset': 24,
    'threadlocal.native_wrap_fields_offset': 16,
  });
  assert.ok(g1.ok);
  assert.equal(g1.layout.generation, 'G1');
  const h = heap({ slotByte: 0 });
  const NATIVE = 0xa000n;
  h.wrapper.writeBigUInt64LE(NATIVE, 24); // internal field 0: the native ObjectWrap
  h.mem.region(NATIVE, 32).writeBigUInt64LE(RECORD, 16);
  const w1 = walkNodeContext(h.mem, TLS, g1.layout as NodeWalkLayout);
  assert.equal(w1.status, 'context');

  assert.match(String(rejectReason({ ...base, 'threadlocal.tagged_size': 4 })), /pointer compression/);
  assert.match(String(rejectReason({ 'threadlocal.schema_version': 'otel_thread_ctx_v1' })), /not a Node.js schema/);
  assert.match(String(rejectReason({ ...base, 'threadlocal.js_object_record_offset': 7 })), /js_object_record_offset/);
  assert.match(String(rejectReason({ ...base, 'threadlocal.wrapped_object_offset': 24 })), /incomplete/);
});

function rejectReason(attrs: Record<string, string | number>): string | undefined {
  const r = nodeLayoutFromProcessContext(attrs);
  return r.ok ? undefined : r.reason;
}

function pick(w: ReturnType<typeof walkNodeContext>): Record<string, unknown> {
  const { trace: _trace, ...rest } = w as { trace: unknown } & Record<string, unknown>;
  if (rest.status === 'context') return { status: 'context' };
  return rest;
}
