/**
 * Our opentelemetry-proto subset (src/proto/otlp.proto) against the bytes the
 * OpenTelemetry exporters really send: ProtobufTraceSerializer is what
 * @opentelemetry/exporter-trace-otlp-proto and -grpc use to encode.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { SpanBuilder } from '../../src/spans/span-builder.ts';
import { countSpans, decodeExportRequest } from '../helpers/otlp-receiver.ts';
import { ctx, KERNEL_SPAN_ATTRIBUTES, kernelSpan } from '../helpers/kernel-records.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

/** The version `kspan --version` prints: the scope's version too. */
const PACKAGE_VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

test('spans encoded by the OTel serializer decode with our proto subset to the exact fields', () => {
  const resA = resourceFromAttributes({ 'service.name': 'checkout', 'process.pid': 4242 });
  const resB = resourceFromAttributes({ 'service.name': 'payments' });
  const offset = 1_767_225_600_000_000_000n;
  const b = new SpanBuilder({ clockOffsetNs: offset, resourceFor: (pid) => (pid === 4242 ? resA : resB) });
  const send = b.build(
    kernelSpan({
      retransmits: 1,
      srttUs: 99,
      error: 'connection reset by peer',
      errorType: 'reset',
      events: [{ name: 'tcp.retransmit', tsNs: 5_000_000_777n, tcpState: 1, resetSent: false, errno: 0 }],
    }),
  );
  const recv = b.build(kernelSpan({ name: 'tcp.recv', pid: 7, parent: ctx(0xb), bytes: 77, calls: 1 }));
  const bytes = ProtobufTraceSerializer.serializeRequest([send, recv]);
  assert.ok(bytes && bytes.length > 100);

  const spans = decodeExportRequest(bytes!);
  assert.equal(spans.length, 2);
  assert.equal(countSpans(bytes!), 2); // the benchmark receiver's wire-format walk agrees
  const [s, r] = spans;
  assert.equal(s.traceId, ctx(0xa).traceId);
  assert.equal(s.spanId, send.spanContext().spanId);
  assert.equal(s.parentSpanId, ctx(0xa).spanId);
  assert.equal(s.name, 'tcp.send');
  assert.equal(s.kind, 1); // SPAN_KIND_INTERNAL
  assert.equal(s.flags, 0x301); // sampled, parent known to be remote
  assert.equal(s.startTimeUnixNano, 5_000_000_123n + offset);
  assert.equal(s.endTimeUnixNano, 5_000_900_456n + offset);
  assert.deepEqual(s.status, { code: 2, message: 'connection reset by peer' });
  assert.deepEqual(s.resource, { 'service.name': 'checkout', 'process.pid': 4242 });
  assert.deepEqual(s.scope, { name: 'kspan', version: PACKAGE_VERSION });
  assert.deepEqual(s.attributes, { ...KERNEL_SPAN_ATTRIBUTES, 'kspan.retransmits': 1, 'kspan.srtt_us': 99, 'error.type': 'reset' });
  assert.deepEqual(s.events, [
    { name: 'tcp.retransmit', timeUnixNano: 5_000_000_777n + offset, attributes: { 'kspan.tcp.state': 'ESTABLISHED' } },
  ]);
  assert.equal(r.traceId, ctx(0xb).traceId);
  assert.equal(r.parentSpanId, ctx(0xb).spanId);
  assert.deepEqual(r.resource, { 'service.name': 'payments' });
  assert.equal(r.attributes['kspan.bytes'], 77);
  assert.deepEqual(r.status, { code: 0, message: '' });
});
