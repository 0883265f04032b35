/**
 * The `nodejs_v1_dev` walk, in TypeScript: from a thread's
 * `otel_thread_ctx_nodejs_v1` TLS struct, through V8's AsyncContextFrame, to the
 * OTEP 4947 record of the span that thread has active. Pure: it reads memory
 * through a MemoryReader (another process's, through proc-mem.ts's
 * ProcessMemory), and is both a verification tool and the reference for the BPF
 * reader (bpf/nodejs_ctx.bpf.h): every bound below is mirrored there.
 *
 * TLS struct (32 bytes):
 *   @0 cped_slot: address of the isolate's ContinuationPreservedEmbedderData field
 *   @8 als_handle: V8 Global handle (a pointer to the slot holding the ALS object)
 *   @16 als_identity_hash i32   @20 record_slot_offset u8 (G3)   @24 undefined_addr
 *
 * The walk (64-bit V8, no pointer compression; "tagged" = heap object | 1):
 *   frame = *cped_slot                           (undefined / untagged: no context)
 *   table = *(frame + js_map_table_offset)       OrderedHashMap (a FixedArray)
 *   F = table + ordered_hash_map_header_size     elements, deleted, buckets (Smis)
 *   heads at F+24 (8 bytes each), entries at F+24+8*buckets: {key, value, next} (24 bytes)
 *   chain from heads[hash & (buckets-1)], comparing keys with *als_handle
 *   wrapper = value (undefined: no context)
 *   record  = *(wrapper + record slot)           (0: being torn down)
 *   G1 only: record = *(*(wrapper + wrapped_object_offset) + native_wrap_fields_offset)
 *
 * A miss (rehash, GC copy, disable()) gives "no context", never a wrong one: every
 * read is checked, counts and indexes are bounded, and the record's `valid` byte and
 * the wrapper's record pointer are read again after the copy.
 */
import type { AttrValue } from '../../proto/otlp.ts';
import { wholeEntriesLength } from '../record-attributes.ts';

export const NODE_SCHEMA_VERSIONS = ['nodejs_v1_dev', 'nodejs_v1'] as const;
export const NODE_TLS_SYMBOL = 'otel_thread_ctx_nodejs_v1';
export const NODE_TLS_STRUCT_SIZE = 32;
export const RECORD_HEADER_SIZE = 28;
/** Bounds shared with the BPF reader. */
export const MAX_BUCKETS = 1024;
export const MAX_CHAIN_HOPS = 8;
export const MAX_ATTRS_SIZE = 256;

/** What a reader needs to know about the target's V8 and writer, from its process context. */
export interface NodeWalkLayout {
  /** G1/G2/G3: which contract generation the process context declares. */
  generation: 'G1' | 'G2' | 'G3';
  taggedSize: number;
  mapTableOffset: number;
  hashMapHeaderSize: number;
  /**
   * Where the record pointer sits in the wrapper object:
   * - `direct`: at wrapper + slot (G2: published key);
   * - `tls`: at wrapper + the u8 at TLS byte 20 (G3);
   * - `native`: two hops, *(*(wrapper + wrappedObjectOffset) + nativeFieldOffset) (G1).
   */
  record:
    | { kind: 'direct'; slot: number }
    | { kind: 'tls' }
    | { kind: 'native'; wrappedObjectOffset: number; nativeFieldOffset: number };
}

export type LayoutResult = { ok: true; layout: NodeWalkLayout } | { ok: false; reason: string };

/** G3's fixed values (design doc rev-C), also the defaults G1/G2 keys override. */
const FIXED = { taggedSize: 8, mapTableOffset: 24, hashMapHeaderSize: 16 };

function intAttr(attrs: Record<string, AttrValue>, key: string): number | undefined {
  const v = attrs[`threadlocal.${key}`];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'string' ? Number(v) : v;
  return typeof n === 'number' && Number.isInteger(n) ? n : NaN;
}

/**
 * Chooses the walk from a process context's attributes (field 2 of ProcessContext,
 * decoded to a plain object). Rejects what cannot be walked instead of guessing.
 */
export function nodeLayoutFromProcessContext(attrs: Record<string, AttrValue>): LayoutResult {
  const schema = attrs['threadlocal.schema_version'];
  if (typeof schema !== 'string' || !(NODE_SCHEMA_VERSIONS as readonly string[]).includes(schema)) {
    return { ok: false, reason: `threadlocal.schema_version is ${JSON.stringify(schema)}, not a Node.js schema` };
  }
  const taggedSize = intAttr(attrs, 'tagged_size') ?? FIXED.taggedSize;
  const mapTableOffset = intAttr(attrs, 'js_map_table_offset') ?? FIXED.mapTableOffset;
  const hashMapHeaderSize = intAttr(attrs, 'ordered_hash_map_header_size') ?? FIXED.hashMapHeaderSize;
  if (taggedSize !== 8) {
    return {
      ok: false,
      reason: `threadlocal.tagged_size is ${taggedSize}: pointer compression (or the V8 sandbox) makes the walk impossible`,
    };
  }
  for (const [k, v] of [['js_map_table_offset', mapTableOffset], ['ordered_hash_map_header_size', hashMapHeaderSize]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 256 || v % 8 !== 0) {
      return { ok: false, reason: `threadlocal.${k} is ${v}, not a plausible V8 offset` };
    }
  }
  const base = { taggedSize, mapTableOffset, hashMapHeaderSize };
  const direct = intAttr(attrs, 'js_object_record_offset');
  if (direct !== undefined) {
    if (!plausibleSlot(direct)) return { ok: false, reason: `threadlocal.js_object_record_offset is ${direct}` };
    return { ok: true, layout: { generation: 'G2', ...base, record: { kind: 'direct', slot: direct } } };
  }
  const wrapped = intAttr(attrs, 'wrapped_object_offset');
  const nativeField = intAttr(attrs, 'native_wrap_fields_offset');
  if (wrapped !== undefined || nativeField !== undefined) {
    if (wrapped === undefined || nativeField === undefined || !plausibleSlot(wrapped) || !plausibleSlot(nativeField)) {
      return { ok: false, reason: 'G1 keys wrapped_object_offset / native_wrap_fields_offset are incomplete or implausible' };
    }
    return {
      ok: true,
      layout: { generation: 'G1', ...base, record: { kind: 'native', wrappedObjectOffset: wrapped, nativeFieldOffset: nativeField } },
    };
  }
  return { ok: true, layout: { generation: 'G3', ...base, record: { kind: 'tls' } } };
}

function plausibleSlot(n: number): boolean {
  return Number.isInteger(n) && n >= 8 && n <= 248 && n % 8 === 0;
}

export interface NodeTlsStruct {
  cpedSlot: bigint;
  alsHandle: bigint;
  alsIdentityHash: number;
  /** G3: the wrapper's record slot; 0 from writers that leave it as padding. */
  recordSlotOffset: number;
  undefinedAddr: bigint;
}

export function parseNodeTlsStruct(buf: Buffer): NodeTlsStruct {
  return {
    cpedSlot: buf.readBigUInt64LE(0),
    alsHandle: buf.readBigUInt64LE(8),
    alsIdentityHash: buf.readInt32LE(16),
    recordSlotOffset: buf.readUInt8(20),
    undefinedAddr: buf.readBigUInt64LE(24),
  };
}

/** What the walk reads through; ProcessMemory (proc-mem.ts) is one. */
export interface MemoryReader {
  /** `length` bytes at `address`, or undefined when any of it is not mapped. */
  tryRead(address: bigint, length: number): Buffer | undefined;
}

export type NoContextReason =
  | 'not-initialized' // cped_slot, als_handle or undefined_addr still 0
  | 'no-frame' // *cped_slot is undefined or not a heap object
  | 'no-entry' // the ALS is not a key of the frame
  | 'undefined-value' // the ALS maps to undefined (context cleared)
  | 'no-record'; // the wrapper's record pointer is 0

export type RejectReason =
  | 'untagged-value'
  | 'bad-table'
  | 'rehashing'
  | 'bad-bucket-count'
  | 'bad-index'
  | 'chain-too-long'
  | 'bad-record-slot'
  | 'bad-attrs-size';

/** Addresses met along the walk, for verification and debugging. */
export interface WalkTrace {
  tls?: NodeTlsStruct;
  frame?: bigint;
  table?: bigint;
  elements?: number;
  deleted?: number;
  buckets?: number;
  entryIndex?: number;
  hops?: number;
  wrapper?: bigint;
  recordSlot?: number;
  record?: bigint;
}

export type NodeWalkResult =
  | {
      status: 'context';
      traceId: Buffer;
      spanId: Buffer;
      traceFlags: number;
      /** Raw OTEP 4947 attributes ({key u8, len u8, val}...), clamped to MAX_ATTRS_SIZE. */
      attributes: Buffer;
      trace: WalkTrace;
    }
  | { status: 'none'; reason: NoContextReason; trace: WalkTrace }
  /** valid != 1: the span ended (invalidate()) or the record is being written. */
  | { status: 'invalid'; valid: number; trace: WalkTrace }
  /** The record or the wrapper's record pointer changed during the copy. */
  | { status: 'torn'; trace: WalkTrace }
  | { status: 'fault'; at: string; trace: WalkTrace }
  | { status: 'rejected'; reason: RejectReason; trace: WalkTrace };

const TAG = 1n;
const SMI_LOW = 0xffff_ffffn;

function isHeapObject(w: bigint): boolean {
  return (w & TAG) === TAG;
}
/** A Smi without pointer compression: value in the high 32 bits, low 32 bits zero. */
function smi(w: bigint): number | undefined {
  if ((w & SMI_LOW) !== 0n) return undefined;
  return Number(BigInt.asIntN(64, w) >> 32n);
}

/** Walks from the TLS struct at `tlsAddress` (one thread) to its active record. */
export function walkNodeContext(mem: MemoryReader, tlsAddress: bigint, layout: NodeWalkLayout): NodeWalkResult {
  const trace: WalkTrace = {};
  const tlsBuf = mem.tryRead(tlsAddress, NODE_TLS_STRUCT_SIZE);
  if (!tlsBuf) return { status: 'fault', at: 'tls', trace };
  const tls = parseNodeTlsStruct(tlsBuf);
  trace.tls = tls;
  // Writers store cped_slot before undefined_addr without fences: all three must be set.
  if (tls.cpedSlot === 0n || tls.alsHandle === 0n || tls.undefinedAddr === 0n) {
    return { status: 'none', reason: 'not-initialized', trace };
  }
  const u64 = (addr: bigint): bigint | undefined => mem.tryRead(addr, 8)?.readBigUInt64LE(0);

  const frame = u64(tls.cpedSlot);
  if (frame === undefined) return { status: 'fault', at: 'cped_slot', trace };
  trace.frame = frame;
  if (frame === tls.undefinedAddr || !isHeapObject(frame)) return { status: 'none', reason: 'no-frame', trace };

  const tableWord = u64((frame & ~TAG) + BigInt(layout.mapTableOffset));
  if (tableWord === undefined) return { status: 'fault', at: 'frame', trace };
  if (!isHeapObject(tableWord)) return { status: 'rejected', reason: 'bad-table', trace };
  const table = tableWord & ~TAG;
  trace.table = table;

  const F = table + BigInt(layout.hashMapHeaderSize);
  const counts = mem.tryRead(F, 24);
  if (!counts) return { status: 'fault', at: 'table', trace };
  const elements = smi(counts.readBigUInt64LE(0));
  const deleted = smi(counts.readBigUInt64LE(8));
  const buckets = smi(counts.readBigUInt64LE(16));
  // A non-Smi element count is V8's forwarding pointer during a rehash.
  if (elements === undefined) return { status: 'rejected', reason: 'rehashing', trace };
  if (deleted === undefined || elements < 0 || deleted < 0) return { status: 'rejected', reason: 'bad-table', trace };
  if (buckets === undefined || buckets < 1 || buckets > MAX_BUCKETS || (buckets & (buckets - 1)) !== 0) {
    return { status: 'rejected', reason: 'bad-bucket-count', trace };
  }
  Object.assign(trace, { elements, deleted, buckets });

  const used = Math.min(elements + deleted, 2 * buckets);
  const headAddr = F + 24n + 8n * BigInt(tls.alsIdentityHash & (buckets - 1));
  const head = u64(headAddr);
  if (head === undefined) return { status: 'fault', at: 'bucket', trace };
  let index = smi(head);
  if (index === undefined) return { status: 'rejected', reason: 'bad-index', trace };

  const alsObject = u64(tls.alsHandle);
  if (alsObject === undefined) return { status: 'fault', at: 'als_handle', trace };

  const entries = F + 24n + 8n * BigInt(buckets);
  let value: bigint | undefined;
  let hops = 0;
  while (index !== -1) {
    if (index < 0 || index >= used) return { status: 'rejected', reason: 'bad-index', trace };
    if (hops++ >= MAX_CHAIN_HOPS) return { status: 'rejected', reason: 'chain-too-long', trace };
    const entry = mem.tryRead(entries + 24n * BigInt(index), 24);
    if (!entry) return { status: 'fault', at: 'entry', trace };
    if (entry.readBigUInt64LE(0) === alsObject) {
      value = entry.readBigUInt64LE(8);
      trace.entryIndex = index;
      break;
    }
    const next = smi(entry.readBigUInt64LE(16));
    if (next === undefined) return { status: 'rejected', reason: 'bad-index', trace };
    index = next;
  }
  trace.hops = hops;
  if (value === undefined) return { status: 'none', reason: 'no-entry', trace };
  if (value === tls.undefinedAddr) return { status: 'none', reason: 'undefined-value', trace };
  if (!isHeapObject(value)) return { status: 'rejected', reason: 'untagged-value', trace };
  const wrapper = value & ~TAG;
  trace.wrapper = wrapper;

  // Where the record pointer is, per generation.
  let slotAddr: bigint;
  if (layout.record.kind === 'native') {
    const native = u64(wrapper + BigInt(layout.record.wrappedObjectOffset));
    if (native === undefined) return { status: 'fault', at: 'wrapper', trace };
    if (native === 0n) return { status: 'none', reason: 'no-record', trace };
    slotAddr = native + BigInt(layout.record.nativeFieldOffset);
  } else {
    const slot = layout.record.kind === 'direct' ? layout.record.slot : tls.recordSlotOffset;
    if (!plausibleSlot(slot)) return { status: 'rejected', reason: 'bad-record-slot', trace };
    trace.recordSlot = slot;
    slotAddr = wrapper + BigInt(slot);
  }
  const record = u64(slotAddr);
  if (record === undefined) return { status: 'fault', at: 'wrapper', trace };
  if (record === 0n) return { status: 'none', reason: 'no-record', trace };
  trace.record = record;

  return readRecord(mem, record, trace, () => u64(slotAddr) === record);
}

/**
 * Copies an OTEP 4947 record: `valid` before and after, and (for Node) the
 * wrapper's record pointer unchanged after the copy (Append may swap records).
 */
export function readRecord(
  mem: MemoryReader,
  record: bigint,
  trace: WalkTrace,
  stillCurrent: () => boolean = () => true,
): NodeWalkResult {
  const header = mem.tryRead(record, RECORD_HEADER_SIZE);
  if (!header) return { status: 'fault', at: 'record', trace };
  const valid = header[24];
  if (valid !== 1) return { status: 'invalid', valid, trace };
  const attrsSize = header.readUInt16LE(26);
  const copyAttrs = Math.min(attrsSize, MAX_ATTRS_SIZE);
  const attrs = copyAttrs > 0 ? mem.tryRead(record + BigInt(RECORD_HEADER_SIZE), copyAttrs) : Buffer.alloc(0);
  if (!attrs) return { status: 'fault', at: 'record', trace };
  const after = mem.tryRead(record, RECORD_HEADER_SIZE);
  if (!after) return { status: 'fault', at: 'record', trace };
  if (after[24] !== 1 || !after.subarray(0, 24).equals(header.subarray(0, 24)) || !stillCurrent()) {
    return { status: 'torn', trace };
  }
  return {
    status: 'context',
    traceId: Buffer.from(header.subarray(0, 16)),
    spanId: Buffer.from(header.subarray(16, 24)),
    traceFlags: header[25],
    // A trailing partial entry left by clamping is dropped.
    attributes: attrs.subarray(0, wholeEntriesLength(attrs)),
    trace,
  };
}
