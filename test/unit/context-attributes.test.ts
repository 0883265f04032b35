/**
 * Record attributes end to end without a kernel: a ring-buffer record whose
 * context carries OTEP 4947 attribute bytes → KernelRecord context → (record
 * file) → correlator → span attributes named by the target's key map.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import { pino } from 'pino';
import { eventObject } from '../../src/records/event-json.ts';
import {
  encodeKspanEvent,
  KSPAN_EVENT_SIZE,
  KspanEventFlag as F,
  KspanEventType as T,
  type KspanEvent,
  type KspanTraceCtx,
} from '../../src/records/abi.generated.ts';
import { decodeRecords } from '../../src/records/decoder.ts';
import type { KernelRecord, TraceContext } from '../../src/records/kernel-record.ts';
import { contextAttributes } from '../../src/spans/context-attributes.ts';
import { RecordFileReader, RecordFileWriter } from '../../src/records/record-file.ts';
import { SpanPipeline } from '../../src/spans/span-pipeline.ts';

const ATTRS_MAX = 52;
const KEY_MAP = ['http.route', 'user.id', 'tenant'];

/** {key u8, len u8, val[len]}… */
function attrBytes(entries: [number, string][]): Uint8Array {
  const parts: number[] = [];
  for (const [k, v] of entries) {
    const b = Buffer.from(v, 'utf8');
    parts.push(k, b.length, ...b);
  }
  return Uint8Array.from(parts);
}

function kctx(n: number, attrs: Uint8Array | null, attrsSize = attrs?.length ?? 0): KspanTraceCtx {
  const buf = new Uint8Array(ATTRS_MAX);
  if (attrs) buf.set(attrs.subarray(0, ATTRS_MAX));
  return { trace_id: new Uint8Array(16).fill(n), span_id: new Uint8Array(8).fill(n + 1), trace_flags: 1, valid: 1, attrs_size: attrsSize, attrs: buf };
}

const NO_CTX: KspanTraceCtx = { trace_id: new Uint8Array(16), span_id: new Uint8Array(8), trace_flags: 0, valid: 0, attrs_size: 0, attrs: new Uint8Array(ATTRS_MAX) };

/** A server's send record carrying the request read before it (prev), as BPF emits it. */
function ringRecord(sendCtx: KspanTraceCtx): DataView {
  const ev: KspanEvent = {
    ts_ns: 2_000n, start_ns: 1_500n, cookie: 77n, bytes: 1000n, bytes_sent: 0n, bytes_received: 0n,
    pid: 4242, tid: 4242, calls: 1, retransmits: 0, srtt_us: 0, error: 0,
    type: T.KSPAN_EV_SEND, family: 2, flags: F.KSPAN_F_SERVER, tcp_state: 0, lport: 8080, rport: 40000,
    laddr: Uint8Array.from([127, 0, 0, 1, ...new Array(12).fill(0)]), raddr: Uint8Array.from([127, 0, 0, 1, ...new Array(12).fill(0)]),
    ctx: sendCtx,
    prev: { first_ns: 1_000n, last_ns: 1_100n, bytes: 300n, tid: 4242, calls: 1, dir: T.KSPAN_EV_RECV, flags: 0, ctx: NO_CTX },
  };
  const view = new DataView(new ArrayBuffer(KSPAN_EVENT_SIZE + 16));
  encodeKspanEvent(ev, view, 16);
  return view;
}

function decode(view: DataView): KernelRecord[] {
  const out: KernelRecord[] = [];
  decodeRecords(view, 16, (r) => out.push(r));
  return out;
}

test('the decoder copies the attribute bytes the kernel copied, and only when there are any', () => {
  const attrs = attrBytes([[0, '/orders'], [1, 'u-42']]);
  const view = ringRecord(kctx(0xa, attrs));
  const [recv, send] = decode(view);
  assert.equal(recv.type, 'recv');
  assert.equal(recv.context, null);
  assert.equal(send.type, 'send');
  assert.deepEqual(send.context!.attributes, attrs);
  assert.equal(send.context!.attributesTruncated, undefined);
  // a copy, not a view of the ring memory
  new Uint8Array(view.buffer).fill(0);
  assert.deepEqual(send.context!.attributes, attrs);

  const [, plain] = decode(ringRecord(kctx(0xa, null)));
  assert.deepEqual(Object.keys(plain.context!).sort(), ['spanId', 'traceFlags', 'traceId']);
});

test('a record longer than the kernel copies: whole entries kept, the cut one dropped and flagged', () => {
  // 5 entries of 2 + 10 bytes = 60 bytes; the kernel keeps 52: four whole entries and 4 bytes of the fifth
  const long = attrBytes([[0, '/orders/01'], [1, 'user-00001'], [2, 'tenant-001'], [1, 'user-00002'], [0, '/cut/00005']]);
  assert.equal(long.length, 60);
  const [, send] = decode(ringRecord(kctx(0xa, long)));
  assert.equal(send.context!.attributes!.length, ATTRS_MAX);
  assert.equal(send.context!.attributesTruncated, true);
  assert.deepEqual(contextAttributes(send.context, KEY_MAP), {
    'http.route': '/orders/01',
    'user.id': 'user-00002', // a repeated key: the last one wins
    tenant: 'tenant-001',
    'kspan.context.attributes_truncated': true,
  });
});

test('keys the map does not name are counted, not invented', () => {
  const c: TraceContext = { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: 1, attributes: attrBytes([[0, '/x'], [9, 'nine']]) };
  assert.deepEqual(contextAttributes(c, KEY_MAP), { 'http.route': '/x', 'kspan.context.unknown_attribute_keys': 1 });
  assert.deepEqual(contextAttributes(c, undefined), { 'kspan.context.unknown_attribute_keys': 2 });
  assert.equal(contextAttributes({ traceId: c.traceId, spanId: c.spanId, traceFlags: 1 }, KEY_MAP), undefined);
  assert.equal(contextAttributes(null, KEY_MAP), undefined);
});

test('kspan events shows the named attributes only on records that have them', () => {
  const [recv, send] = decode(ringRecord(kctx(0xa, attrBytes([[0, '/orders'], [2, 't1']]))));
  assert.deepEqual(eventObject(send, 0n, KEY_MAP).attributes, { 'http.route': '/orders', tenant: 't1' });
  assert.equal('attributes' in eventObject(recv, 0n, KEY_MAP), false);
});

test('ring record → record file → correlator → spans carry the record attributes by name', async () => {
  const records = decode(ringRecord(kctx(0xa, attrBytes([[0, '/orders'], [1, 'u-42']]))));
  // through a record file: the bytes survive msgpack
  const file = new PassThrough();
  const chunks: Buffer[] = [];
  file.on('data', (c: Buffer) => chunks.push(c));
  const w = new RecordFileWriter(file, { kernelRelease: '6.18.0', clockOffsetNs: 0n, startedAt: '2026-01-01T00:00:00Z' });
  for (const r of records) w.write(r);
  await w.end();
  const reader = await RecordFileReader.open([Buffer.concat(chunks)]);

  const got: ReadableSpan[] = [];
  const exporter: SpanExporter = {
    export: (spans, done) => {
      got.push(...spans);
      done({ code: 0 });
    },
    shutdown: async () => {},
  };
  const resource = resourceFromAttributes({ 'service.name': 'orders' });
  const pipeline = new SpanPipeline({
    mode: 'replay',
    resourceFor: () => resource,
    clockOffsetNs: 0n,
    exporter,
    logger: pino({ level: 'silent' }),
    extraAttributes: (k) => contextAttributes(k.parent, k.pid === 4242 ? KEY_MAP : undefined),
    export: { scheduledDelayMs: 1 },
  });
  await pipeline.replay(reader);
  await pipeline.shutdown();
  const byName = Object.fromEntries(got.map((s) => [s.name, s]));
  assert.deepEqual(Object.keys(byName).sort(), ['tcp.recv', 'tcp.send']);
  for (const s of got) {
    assert.equal(s.parentSpanContext?.spanId, '0b'.repeat(8));
    assert.equal(s.attributes['http.route'], '/orders');
    assert.equal(s.attributes['user.id'], 'u-42');
    assert.equal(s.attributes['kspan.context.unknown_attribute_keys'], undefined);
  }
  assert.equal(byName['tcp.send'].attributes['kspan.bytes'], 1000);
  assert.equal(byName['tcp.recv'].attributes['kspan.bytes'], 300);
});
