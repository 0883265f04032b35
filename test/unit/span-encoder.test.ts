/**
 * kspan's direct OTLP encoding (KernelSpanEncoder + encodeExportRequest) against
 * the official one: the same KernelSpans through SpanBuilder and
 * @opentelemetry/otlp-transformer's ProtobufTraceSerializer. Both ExportTraceServiceRequests
 * are decoded with our proto (src/proto/otlp.proto, protobufjs) and compared
 * deeply, and compared byte for byte: the encoder writes every field in the
 * transformer's order (field-number order, zero counts written, ResourceSpans in
 * first-seen order, attributes in the description's order), so the whole request
 * is canonical and must be identical.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Attributes, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import protobuf from 'protobufjs';
import { encodeExportRequest, EncodedSpanSizer, encodedSpanSerializer, RequestBuffers } from '../../src/export/export-request.ts';
import { ProtoWriter } from '../../src/export/proto-writer.ts';
import { KernelSpanEncoder, writeStatusField, type EncodedSpan } from '../../src/export/span-encoder.ts';
import { ExportTraceServiceRequestType } from '../../src/proto/otlp.ts';
import type { Endpoint } from '../../src/records/kernel-record.ts';
import { contextAttributes } from '../../src/spans/context-attributes.ts';
import type { KernelSpan, KernelSpanEvent } from '../../src/spans/kernel-span.ts';
import { SocketCorrelator } from '../../src/spans/socket-correlator.ts';
import {
  describeSharedSocketAttributes,
  describeSocketAttributes,
  KERNEL_ATTRIBUTE_KEYS,
  sharedSocketKey,
  SpanBuilder,
  type SpanBuilderOptions,
} from '../../src/spans/span-builder.ts';
import { IdSource } from '../../src/spans/span-ids.ts';
import { ctx, FakeSocket, kernelSpan } from '../helpers/kernel-records.ts';

const OFFSET = 1_767_225_600_000_000_000n;

/** A repeatable id stream: both sides draw the same ids in the same order. */
function seededIds(seed: number): IdSource {
  return new IdSource((buf) => {
    for (let i = 0; i < buf.length; i++) {
      seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
      buf[i] = seed >>> 24;
    }
  });
}

const DECODE = { longs: String, enums: Number, bytes: String, defaults: true, arrays: true } as const;
const decode = (b: Uint8Array) => ExportTraceServiceRequestType.toObject(ExportTraceServiceRequestType.decode(b), DECODE);

type Model = Omit<SpanBuilderOptions, 'ids' | 'clockOffsetNs'> & {
  /** A constant, or offsets taken in turn, one per span (each side gets its own sequence). */
  clockOffsetNs: bigint | bigint[];
  chunkBytes?: number;
};

function offsetSource(o: bigint | bigint[]): bigint | (() => bigint) {
  if (typeof o === 'bigint') return o;
  let n = 0;
  return () => o[n++ % o.length];
}

/** Both encodings of `spans` (in batches of `batch`), checked equal; returns the requests. */
function assertSameEncoding(spans: KernelSpan[], model: Model, batch = spans.length): Buffer[] {
  const { chunkBytes, clockOffsetNs, ...shared } = model;
  const builder = new SpanBuilder({ ...shared, clockOffsetNs: offsetSource(clockOffsetNs), ids: seededIds(7) });
  const encoder = new KernelSpanEncoder({ ...shared, clockOffsetNs: offsetSource(clockOffsetNs), chunkBytes, ids: seededIds(7) });
  const built = spans.map((k) => builder.build(k));
  const encoded = spans.map((k) => encoder.encode(k));
  const out: Buffer[] = [];
  for (let i = 0; i < spans.length; i += batch) {
    const official = Buffer.from(ProtobufTraceSerializer.serializeRequest(built.slice(i, i + batch))!);
    const ours = encodeExportRequest(encoded.slice(i, i + batch));
    assert.deepEqual(decode(ours), decode(official));
    if (!ours.equals(official)) {
      let at = 0;
      while (ours[at] === official[at]) at++;
      assert.fail(`same message, different bytes: first difference at byte ${at} of ${official.length} (ours ${ours.length})`);
    }
    out.push(ours);
  }
  return out;
}

const resA = resourceFromAttributes(
  {
    'service.name': 'checkout',
    'service.version': '1.2.3',
    'process.pid': 4242,
    'process.command_args': ['node', '--enable-source-maps', 'server.js'],
    'host.arch': 'amd64',
    'deployment.environment.name': 'prodüction',
    'sample.ratio': 0.25,
    'process.big': 2 ** 40,
    'feature.on': true,
    'ports': [80, 443],
  },
  { schemaUrl: 'https://opentelemetry.io/schemas/1.26.0' },
);
const resB = resourceFromAttributes({ 'service.name': 'payments' });
const resC = resourceFromAttributes({});
const resourceFor = (pid: number): Resource => (pid === 4242 ? resA : pid === 7 ? resB : resC);

/** Realistic spans from the correlator: a server, a failing client, an IPv6 peer and orphans in exchanges. */
function correlated(): KernelSpan[] {
  const spans: KernelSpan[] = [];
  const corr = new SocketCorrelator({ emit: (k) => spans.push(k), clock: 'records', orphans: true });
  const A = ctx(0xa), B = ctx(0xb), C = ctx(0xc);
  const server = new FakeSocket({ cookie: 18_446_744_073_709_551_615n, role: 'server', pid: 4242, tid: 4243 });
  const client = new FakeSocket({ cookie: 2n, role: 'client', pid: 7, tid: 8 });
  const v6 = new FakeSocket({ cookie: 3n, role: 'server', pid: 9, tid: 0, family: 6 });
  const orphan = new FakeSocket({ cookie: 4n, role: 'server', pid: 4242, tid: 4250 });
  const records = [
    server.accept(1_000_000, 1_100_000),
    server.recv(null, 512, 1, 1_150_000, 1_170_000),
    server.retransmit(A, 2_950_000),
    server.send(A, 2048, 2, 2_800_000, 2_840_000),
    client.connect(3_000_000, 3_500_000, B, -111),
    v6.accept(4_000_000, 4_000_500, C),
    v6.recv(C, 77, 1, 4_100_000, 4_100_010),
    v6.send(C, 99, 1, 4_200_000, 4_200_050),
    server.recv(A, 300, 3, 5_000_000, 5_000_300),
    server.send(ctx(0xd), 4000, 4, 5_100_000, 5_200_000),
    server.reset(ctx(0xd), 5_300_000, true, 1),
    orphan.accept(6_000_000, 6_000_100),
    orphan.recv(null, 10, 1, 6_100_000, 6_100_100),
    orphan.send(null, 20, 1, 6_200_000, 6_200_100),
    orphan.close(6_300_000),
    server.close(7_000_000, { srttUs: 31 }),
    v6.close(7_100_000),
  ];
  for (const r of records) corr.push(r);
  corr.flush('shutdown');
  return spans;
}

const ev = (name: KernelSpanEvent['name'], tsNs: bigint, f: Partial<KernelSpanEvent> = {}): KernelSpanEvent => ({
  name,
  tsNs,
  tcpState: 1,
  resetSent: false,
  errno: 0,
  ...f,
});

/** Hand-made spans for the corners: every name, root and parented, odd times and values. */
function corners(): KernelSpan[] {
  const E = ctx(0xe1);
  return [
    kernelSpan(),
    kernelSpan({ pid: 7, parent: null }), // a new root: random trace and span id
    kernelSpan({ pid: 9, parent: ctx(0x77, false) }), // an unsampled parent: flags 0
    kernelSpan({ parent: { traceId: '0123456789ABCDEFfedcba9876543210', spanId: 'A1b2C3d4E5f60789', traceFlags: 1 } }), // mixed-case hex
    kernelSpan({ name: 'tcp.exchange', parent: null, self: E, bytes: 0, calls: 0 }),
    kernelSpan({ name: 'tcp.exchange', role: 'client', parent: null, self: { ...E, traceFlags: 0x81 }, bytes: 0, calls: 0 }),
    kernelSpan({ name: 'tcp.recv', parent: E, localParent: true, waitNs: 2n ** 60n }),
    kernelSpan({ name: 'tcp.accept', acceptQueueNs: 5_000_000_000n, bytes: 0, calls: 0, tid: 0 }),
    kernelSpan({ name: 'tcp.connect', role: 'client', error: 'connect failed: refused', errorType: 'refused', retransmits: 2 }),
    kernelSpan({ name: 'tcp.retransmit', retransmits: 1, events: [ev('tcp.retransmit', 5_000_000_500n, { errno: -11 })] }),
    kernelSpan({
      name: 'tcp.reset',
      error: 'connexion réinitialisée par le pair ✗',
      errorType: 'reset',
      events: [ev('tcp.reset', 5_000_000_600n, { resetSent: true, tcpState: 99 }), ev('tcp.reset', 5_000_000_700n, { errno: 104 })],
    }),
    kernelSpan({ incomplete: 'process_exit', fallback: true, srttUs: 0 }),
    kernelSpan({ startNs: 9_007_199_254_740_991n, endNs: 9_007_199_254_740_993n }), // across 2^53
    kernelSpan({ startNs: 2n ** 62n, endNs: 2n ** 62n + 999_999_999n }),
    kernelSpan({ startNs: 5_000_000_000n, endNs: 4_000_000_000n }), // ends before it starts: clamped
    kernelSpan({ startNs: 0n, endNs: 999_999_999n, cookie: 0n, bytes: 0, calls: 0 }),
    kernelSpan({ family: 6, local: { address: 'fe80::1', port: 1 }, peer: { address: '2001:db8::42', port: 65535 } }),
    kernelSpan({ events: Array.from({ length: 40 }, (_, i) => ev(i % 2 ? 'tcp.reset' : 'tcp.retransmit', 5_000_000_000n + BigInt(i), { errno: i - 20 })) }),
  ];
}

describe('KernelSpanEncoder: the same request as the OTel transformer', () => {
  test('correlated and corner spans, three Resources interleaved in one batch', () => {
    const spans = [...correlated(), ...corners()];
    assert.equal(new Set(spans.map((k) => k.name)).size, 7, 'every span name');
    const [req] = assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor });
    const d = decode(req) as { resourceSpans: { resource: { attributes: { key: string }[] } }[] };
    assert.deepEqual(
      d.resourceSpans.map((rs) => rs.resource.attributes.find((a) => a.key === 'service.name')?.key ?? 'none'),
      ['service.name', 'service.name', 'none'],
    );
  });

  test('thread.sched spans (no socket attributes) with a thread.off_cpu event, next to TCP spans', () => {
    const sched = (pid: number, over: Partial<KernelSpan> = {}): KernelSpan => ({
      ...kernelSpan({ name: 'thread.sched', pid, tid: pid + 1, cookie: 0n, bytes: 0, calls: 0, srttUs: null }),
      sched: { onCpuNs: 150_000_000, blockedNs: 2 ** 40, runqNs: 0, voluntary: 3, involuntary: 70_000, migrations: 1 },
      ...over,
    });
    const off = (blocked: boolean, syscall: string | null): KernelSpanEvent => ({
      name: 'thread.off_cpu', tsNs: 5_000_000_100n, tcpState: 0, resetSent: false, errno: 0, offCpu: { ns: 60_000_000, blocked, syscall },
    });
    assertSameEncoding(
      [
        sched(4242, { events: [off(true, 'clock_nanosleep'), { ...off(true, 'read'), offCpu: { ns: 7, blocked: true, syscall: 'read', wchan: 'pipe_read', stack: ['pipe_read', 'vfs_read', 'ksys_read'] } }] }),
        ...correlated().slice(0, 2),
        sched(7, { events: [off(false, null)], incomplete: 'flushed' }),
        sched(9),
      ],
      { clockOffsetNs: OFFSET, resourceFor, extraAttributes: (k) => (k.pid === 4242 ? { 'app.route': '/x' } : undefined) },
    );
  });

  test('every batch size, so that targets start and end anywhere in a batch', () => {
    const spans = [...correlated(), ...corners()];
    for (const batch of [1, 2, 3, 7]) assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor }, batch);
  });

  test('a tiny arena: spans move to a new chunk mid-encoding, runs cross chunks', () => {
    assertSameEncoding([...correlated(), ...corners()], { clockOffsetNs: OFFSET, resourceFor, chunkBytes: 300 });
  });

  test('clock offsets: re-measured between spans, zero, negative (times clamp at 0), past 2^63', () => {
    const spans = [...correlated(), ...corners()];
    // Each side asks for the offset once per span, so a re-measured offset applies to the same spans.
    const offsets = [OFFSET, OFFSET + 1n, OFFSET - 999_999_999n, 0n, -10_000_000_000n, 2n ** 63n + 5n];
    assertSameEncoding(spans, { clockOffsetNs: offsets, resourceFor });
    for (const off of [0n, -1n, -(2n ** 40n), 2n ** 63n + 5n]) assertSameEncoding(spans, { clockOffsetNs: off, resourceFor });
  });

  test('extra attributes of every type, appended after the kernel ones', () => {
    const extra: Attributes = {
      'app.route': '/checkout/{id}',
      'app.utf8': 'żółw 🐢',
      'app.lone_surrogate': 'a\ud800b',
      'app.empty': '',
      'app.long': 'x'.repeat(200),
      'app.zero': 0,
      'app.int7': 127,
      'app.int8': 128,
      'app.int31': 2 ** 31,
      'app.int32': 2 ** 32,
      'app.int53': Number.MAX_SAFE_INTEGER,
      'app.neg': -1,
      'app.neg31': -(2 ** 31),
      'app.neg53': Number.MIN_SAFE_INTEGER,
      'app.min63': -(2 ** 63),
      'app.two63': 2 ** 63, // not an int64: a double
      'app.double': 1.5,
      'app.negdouble': -0.25,
      'app.nan': NaN,
      'app.inf': Infinity,
      'app.negzero': -0,
      'app.true': true,
      'app.false': false,
      'app.strings': ['a', 'ü', ''],
      'app.ints': [1, -2, 2 ** 40],
      'app.doubles': [0.5, 1e300],
      'app.bools': [true, false],
      'app.none': [],
      'app.holes': ['a', null, undefined, 'b'],
      'app.undefined': undefined,
    };
    const spans = corners();
    assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor, extraAttributes: () => extra });
    // What `kspan run` passes: the target's thread-context attributes.
    const keyMap = ['http.route', 'user.id'];
    const attrs = Uint8Array.from([0, 3, 0x2f, 0x61, 0x62, 1, 2, 0x34, 0x32, 5, 1, 0x78, 1, 9, 0x79]);
    const withContext = spans.map((k) => ({ ...k, parent: k.parent && { ...k.parent, attributes: attrs, attributesTruncated: true } }));
    assertSameEncoding(withContext, { clockOffsetNs: OFFSET, resourceFor, extraAttributes: (k) => contextAttributes(k.parent, keyMap) });
  });

  test('extra attributes that replace a kernel one or sort first (integer-like keys) keep the builder\'s order', () => {
    const spans = corners();
    const cases: Attributes[] = [
      { 'thread.id': 'main', 'app.x': 1 },
      { '7': 'seven', 'app.x': 1 },
      { 'network.transport': 'quic' },
      { '0': 0, '10': 10, '2': 2 },
      { '1e3': 'not an index', 'app.y': 2 },
    ];
    for (const extra of cases) assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor, extraAttributes: () => extra });
    // Every kernel key, replaced.
    const all = Object.fromEntries(KERNEL_ATTRIBUTE_KEYS.map((k) => [k, `x-${k}`]));
    assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor, extraAttributes: () => all });
  });

  test('long values: 2- and 3-byte lengths for attributes, statuses, spans and ResourceSpans', () => {
    const big = 'é'.repeat(10_000); // 20 000 bytes: a 3-byte length
    const spans = [
      kernelSpan({ error: 'e'.repeat(130) }),
      kernelSpan({ error: big }),
      ...Array.from({ length: 300 }, (_, i) => kernelSpan({ bytes: i, pid: i % 2 ? 4242 : 7 })),
    ];
    const [req] = assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor, extraAttributes: (k) => (k.bytes === 7 ? { 'app.big': big } : undefined) });
    assert.ok(req.length > 100_000);
    // A request over 2 MiB: the ResourceSpans length takes 4 bytes.
    const many = Array.from({ length: 5_000 }, (_, i) => kernelSpan({ bytes: i }));
    const [large] = assertSameEncoding(many, { clockOffsetNs: OFFSET, resourceFor: () => resA, extraAttributes: () => ({ 'app.pad': 'p'.repeat(100) }) });
    assert.ok(large.length > 2 ** 21, `request of ${large.length} bytes`);
  });

  test('socket attributes reused per socket only while every field they read is the same', () => {
    // One pair of Endpoint objects while nothing changes: the encoder's cache is keyed by the peer object.
    let local: Endpoint = { address: '10.0.0.1', port: 8080 };
    let peer: Endpoint = { address: '10.0.0.2', port: 51234 };
    const base = () => kernelSpan({ local, peer });
    const variants: Partial<KernelSpan>[] = [{ cookie: 1n }, { pid: 7 }, { role: 'client' }, { family: 6 }, { tid: 1 }, { name: 'tcp.recv' }];
    // Endpoints are never changed in place (Endpoint is readonly): a socket gets new ones,
    // the local one under the same peer object too, and the cache must see it.
    const moves: (() => void)[] = [
      () => (peer = { ...peer, address: '10.0.0.3' }),
      () => (peer = { ...peer, port: 1 }),
      () => (local = { ...local, address: '10.9.9.9' }),
      () => (local = { ...local, port: 2 }),
      () => (local = { ...local }), // equal values in a new object: reused
    ];
    const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor, ids: seededIds(1) });
    const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor, ids: seededIds(1) });
    const built: ReadableSpan[] = [];
    const encoded: EncodedSpan[] = [];
    const both = (k: KernelSpan) => {
      built.push(builder.build(k));
      encoded.push(encoder.encode(k));
    };
    // Each variant right after a plain span of the same socket: they differ in that one field.
    for (const v of variants) {
      both(base());
      both({ ...base(), ...v });
    }
    for (const move of moves) {
      both(base());
      move();
      both(base());
    }
    const ours = encodeExportRequest(encoded);
    assert.ok(ours.equals(Buffer.from(ProtobufTraceSerializer.serializeRequest(built)!)));
  });

  test('the shared part of the socket attributes reads nothing its key (sharedSocketKey) does not', () => {
    const spied = (read: Set<string>) => {
      const spy = <T extends object>(o: T, path: string): T =>
        new Proxy(o, {
          get(target, key, receiver) {
            const name = `${path}${String(key)}`;
            read.add(name);
            const v = Reflect.get(target, key, receiver);
            return v && typeof v === 'object' ? spy(v, `${name}.`) : v;
          },
        });
      return spy;
    };
    const sink = { string() {}, number() {}, bool() {}, strings() {} };
    for (const k of [kernelSpan(), kernelSpan({ role: 'client', family: 6 })]) {
      const described = new Set<string>();
      const keyed = new Set<string>();
      describeSharedSocketAttributes(spied(described)(k, ''), sink);
      sharedSocketKey(spied(keyed)(k, ''));
      assert.deepEqual([...described].filter((f) => !keyed.has(f)), [], `role ${k.role}`);
    }
  });

  test('sockets of one server, and connections to one server, share a part and keep their own, as the builder makes them', () => {
    const listen: Endpoint = { address: '10.0.0.1', port: 8080 };
    const spans: KernelSpan[] = [];
    for (let i = 0; i < 40; i++) {
      // Accepted sockets of one listener, two processes; connected ones to one server, from ephemeral ports.
      spans.push(kernelSpan({ cookie: BigInt(100 + i), pid: i % 2 ? 4242 : 7, local: listen, peer: { address: `10.0.1.${i % 3}`, port: 40_000 + i } }));
      spans.push(kernelSpan({ cookie: BigInt(200 + i), role: 'client', local: { address: '10.0.0.1', port: 50_000 + i }, peer: { address: '10.0.0.9', port: 5432 } }));
      spans.push(kernelSpan({ cookie: BigInt(300 + i), role: 'client', family: 6, local: { address: 'fd00::1', port: 50_000 + i }, peer: { address: 'fd00::9', port: 5432 } }));
    }
    // Each socket twice, the second time from the encoder's cache.
    assertSameEncoding([...spans, ...spans], { clockOffsetNs: OFFSET, resourceFor });
  });

  test('describeSocketAttributes reads nothing sameSocketAttributes does not compare', () => {
    const read = new Set<string>();
    const spy = <T extends object>(o: T, path: string): T =>
      new Proxy(o, {
        get(target, key, receiver) {
          const name = `${path}${String(key)}`;
          read.add(name);
          const v = Reflect.get(target, key, receiver);
          return v && typeof v === 'object' ? spy(v, `${name}.`) : v;
        },
      });
    const sink = { string() {}, number() {}, bool() {}, strings() {} };
    for (const k of [kernelSpan(), kernelSpan({ role: 'client', family: 6 })]) describeSocketAttributes(spy(k, ''), sink);
    const compared = ['cookie', 'pid', 'role', 'family', 'peer', 'local', 'peer.address', 'peer.port', 'local.address', 'local.port'];
    assert.deepEqual([...read].filter((f) => !compared.includes(f)), []);
  });

  test('scopes: with a version, without one, with a schema URL, with attributes', () => {
    const spans = [...correlated(), ...corners()];
    // Scope attributes are not in @opentelemetry/core's type, but the transformer writes them when present.
    const withAttributes = { name: 'kspan', version: '1.0.0', attributes: { 'scope.kind': 'kernel', 'scope.n': 3, 'scope.on': true } };
    const scopes: InstrumentationScope[] = [
      { name: 'kspan' },
      { name: 'kspan', version: '9.9.9', schemaUrl: 'https://opentelemetry.io/schemas/1.30.0' },
      withAttributes as InstrumentationScope,
    ];
    for (const scope of scopes) {
      const [req] = assertSameEncoding(spans, { clockOffsetNs: OFFSET, resourceFor, scope });
      const d = decode(req) as { resourceSpans: { scopeSpans: { scope: { attributes: unknown[] } }[] }[] };
      assert.equal(d.resourceSpans[0].scopeSpans[0].scope.attributes.length, scope === scopes[2] ? 3 : 0);
    }
  });

  test('an empty batch is an empty request, as the transformer makes it', () => {
    assert.equal(encodeExportRequest([]).length, 0);
    assert.equal(ProtobufTraceSerializer.serializeRequest([])!.length, 0);
  });

  test('Span.status: unset, ok, ok with a message, error with and without one (the status writer; kspan itself sets only unset and error)', () => {
    const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor });
    const base = builder.build(kernelSpan());
    const statuses: SpanStatus[] = [{ code: 0 }, { code: 1 }, { code: 1, message: 'fine' }, { code: 2, message: 'broken ✗' }, { code: 2 }];
    for (const status of statuses) {
      const span: ReadableSpan = { ...base, status, spanContext: () => base.spanContext() };
      const official = ProtobufTraceSerializer.serializeRequest([span])!;
      const w = new ProtoWriter(64);
      writeStatusField(w, status);
      assert.deepEqual(fieldOfSpan(official, 15), Buffer.from(w.view()), JSON.stringify(status));
    }
  });
});

describe('request assembly and the arena', () => {
  test('the sizer counts each span exactly and each target\'s framing at most once, never below the request', () => {
    const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor });
    const spans = [...correlated(), ...corners()].map((k) => encoder.encode(k));
    const sizer = new EncodedSpanSizer();
    for (const n of [1, 5, spans.length]) {
      for (let i = 0; i < spans.length; i += n) {
        const batch = spans.slice(i, i + n);
        sizer.reset();
        const counted = batch.reduce((sum, s) => sum + sizer.add(s), 0);
        const actual = encodeExportRequest(batch).length;
        const targets = new Set(batch.map((s) => s.target)).size;
        assert.ok(counted >= actual && counted - actual <= 8 * targets, `batch of ${n} at ${i}: counted ${counted}, request ${actual}`);
      }
    }
  });

  test('released chunks are reused; unreleased spans keep their bytes', () => {
    const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: () => resA, chunkBytes: 4096, ids: seededIds(3) });
    const first: EncodedSpan[] = [];
    for (let i = 0; i < 40; i++) first.push(encoder.encode(kernelSpan({ bytes: i })));
    const chunks = new Set(first.map((s) => s.chunk));
    assert.ok(chunks.size >= 4, `${chunks.size} chunks`);
    const kept = first.slice(-3).map((s) => Buffer.from(s.bytes()));
    for (const s of first.slice(0, -3)) encoder.release(s);
    assert.ok(encoder.arena.free >= chunks.size - 2, `free ${encoder.arena.free}`);
    const second: EncodedSpan[] = [];
    for (let i = 0; i < 40; i++) second.push(encoder.encode(kernelSpan({ bytes: 100 + i })));
    assert.ok(second.some((s) => chunks.has(s.chunk)), 'a released chunk came back');
    // The three spans never released were not overwritten.
    assert.deepEqual(first.slice(-3).map((s) => Buffer.from(s.bytes())), kept);
    // And every span still decodes to what the builder makes.
    const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resA, ids: seededIds(3) });
    const built = [...Array.from({ length: 40 }, (_, i) => kernelSpan({ bytes: i })), ...Array.from({ length: 40 }, (_, i) => kernelSpan({ bytes: 100 + i }))].map((k) =>
      builder.build(k),
    );
    const ours = encodeExportRequest([...first.slice(-3), ...second]);
    assert.ok(ours.equals(Buffer.from(ProtobufTraceSerializer.serializeRequest([...built.slice(37, 40), ...built.slice(40)])!)));
  });

  test('the gRPC serializer writes into lent buffers and reuses one once it is given back; the HTTP one makes a new request each time', () => {
    const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor });
    const spans = corners().map((k) => encoder.encode(k));
    const buffers = new RequestBuffers();
    const pooled = encodedSpanSerializer(buffers);
    const a = pooled.serializeRequest(spans.slice(0, 5))!;
    const aBytes = Buffer.from(a);
    assert.ok(buffers.owns(a) && buffers.lent === 1);
    // While `a` is lent (its call not over), the next request gets another buffer and `a` stays intact.
    const b = pooled.serializeRequest(spans.slice(5))!;
    assert.notEqual(a.buffer, b.buffer);
    assert.ok(Buffer.from(a).equals(aBytes), 'a lent request is not overwritten');
    assert.ok(Buffer.from(b).equals(encodeExportRequest(spans.slice(5))));
    assert.equal(buffers.lent, 2);
    assert.equal(buffers.give(a), true);
    assert.equal(buffers.give(a), false, 'given back once');
    assert.equal(buffers.give(Buffer.from(aBytes)), false, 'bytes the pool did not lend');
    // Given back, its buffer is the next request's.
    const c = pooled.serializeRequest(spans.slice(0, 5))!;
    assert.equal(c.buffer, a.buffer);
    assert.ok(Buffer.from(c).equals(aBytes));
    assert.equal(buffers.lent, 2);
    const fresh = encodedSpanSerializer();
    const d = fresh.serializeRequest(spans.slice(0, 5))!;
    const expected = Buffer.from(d);
    fresh.serializeRequest(spans.slice(5));
    assert.ok(Buffer.from(d).equals(expected), 'a request kept for a retry is not overwritten');
    assert.ok(Buffer.from(d).equals(encodeExportRequest(spans.slice(0, 5))));
  });

  test('request buffers: a request larger than every free buffer gets a new one, and a too-small free buffer is let go', () => {
    const buffers = new RequestBuffers(2);
    const small = buffers.take(100);
    assert.equal(small.length, 64 * 1024);
    buffers.give(small);
    const big = buffers.take(200_000);
    assert.ok(big.length >= 200_000 && big.buffer !== small.buffer);
    buffers.give(big);
    // The small one went when the big one was made: two takes of the big size reuse the big buffer once.
    assert.equal(buffers.take(150_000).buffer, big.buffer);
    assert.notEqual(buffers.take(150_000).buffer, small.buffer);
    assert.equal(buffers.lent, 2);
  });
});

/** The raw bytes (tag included) of field `field` of the first Span in an ExportTraceServiceRequest. */
function fieldOfSpan(req: Uint8Array, field: number): Buffer {
  /** [start, end) of the first length-delimited field `want` in buf[start, end): its body, or with `whole` the field with its tag. */
  const find = (start: number, end: number, want: number, whole = false): [number, number] => {
    const r = protobuf.Reader.create(req.subarray(start, end));
    while (r.pos < r.len) {
      const at = r.pos;
      const key = r.uint32();
      if (key >>> 3 === want && (key & 7) === 2) {
        const len = r.uint32();
        return [start + (whole ? at : r.pos), start + r.pos + len];
      }
      r.skipType(key & 7);
    }
    throw new Error(`field ${want} not found`);
  };
  const [rs0, rs1] = find(0, req.length, 1); // resource_spans
  const [ss0, ss1] = find(rs0, rs1, 2); // scope_spans
  const [sp0, sp1] = find(ss0, ss1, 2); // spans
  const [f0, f1] = find(sp0, sp1, field, true);
  return Buffer.from(req.subarray(f0, f1));
}
