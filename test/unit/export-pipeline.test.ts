/**
 * The export pipeline against a real OTLP receiver on loopback (gRPC and
 * HTTP/protobuf): exact spans arrive; a collector outage loses nothing within the
 * queue bound and counts what exceeded it; UNAVAILABLE is retried.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { pino } from 'pino';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { createOtlpExporter } from '../../src/export/otlp-exporter.ts';
import {
  ExportPipeline,
  isRetryableExportError,
  resolveExportTarget,
  type ExportPipelineOptions,
} from '../../src/export/export-pipeline.ts';
import { SocketCorrelator } from '../../src/spans/socket-correlator.ts';
import { SpanBuilder } from '../../src/spans/span-builder.ts';
import { ctx, FakeSocket, kernelSpan } from '../helpers/kernel-records.ts';
import { queueOutage } from '../helpers/collector-outage.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';

const OFFSET = 1_767_225_600_000_000_000n;
const resource = resourceFromAttributes({ 'service.name': 'fixture-server' });
const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resource });

function capturingLogger() {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

const receivers: OtlpReceiver[] = [];
const pipelines: ExportPipeline[] = [];
after(async () => {
  for (const p of pipelines) await p.shutdown();
  for (const r of receivers) await r.stop();
});

async function setup(protocol: 'grpc' | 'http', opts: Partial<ExportPipelineOptions> = {}) {
  const receiver = new OtlpReceiver({ protocol });
  receivers.push(receiver);
  await receiver.start();
  const { logger, lines } = capturingLogger();
  const exporter = createOtlpExporter(
    { kind: 'otlp', protocol: protocol === 'grpc' ? 'grpc' : 'http/protobuf', endpoint: receiver.endpoint },
    { timeoutMs: 2000 },
  );
  const pipeline = new ExportPipeline({
    exporter,
    logger,
    scheduledDelayMs: 20,
    retryInitialMs: 50,
    retryMaxMs: 400,
    shutdownTimeoutMs: 5000,
    ...opts,
  });
  pipelines.push(pipeline);
  return { receiver, pipeline, lines };
}

/** Request/response records for n keep-alive requests on one server socket. */
function serverTraffic(n: number): { records: ReturnType<FakeSocket['recv']>[]; expect: { trace: string; parent: string; req: number; resp: number }[] } {
  const s = new FakeSocket({ cookie: 99n, role: 'server', pid: 4242, tid: 4243 });
  const records = [s.accept(1_000, 2_000)];
  const expect = [];
  let t = 10_000;
  for (let i = 0; i < n; i++) {
    const c = ctx(0x100 + i);
    const req = 100 + i, resp = 1000 + i;
    records.push(s.recv(i ? ctx(0xff + i) : null, req, 1, t, t + 50));
    records.push(s.send(c, resp, 2, t + 500, t + 700));
    expect.push({ trace: c.traceId, parent: c.spanId, req, resp });
    t += 10_000;
  }
  records.push(s.close(t, { srttUs: 31 }));
  return { records, expect };
}

for (const protocol of ['grpc', 'http'] as const) {
  describe(`export over ${protocol}`, () => {
    test('exact byte counts, ids, parentage, times and resource arrive', async () => {
      const { receiver, pipeline } = await setup(protocol);
      const spans: KernelSpan[] = [];
      const corr = new SocketCorrelator({ emit: (k) => spans.push(k), clock: 'records' });
      const { records, expect } = serverTraffic(5);
      for (const r of records) corr.push(r);
      const built = spans.map((k) => builder.build(k));
      for (const s of built) assert.equal(pipeline.enqueue(s), true);
      assert.equal(await pipeline.forceFlush(10_000), true);

      assert.equal(receiver.spans.length, 11); // accept + 5 × (recv, send)
      assert.equal(pipeline.counters.exported, 11);
      for (const [i, e] of expect.entries()) {
        const mine = receiver.spans.filter((s) => s.traceId === e.trace);
        const names = mine.map((s) => s.name).sort();
        assert.deepEqual(names, i === 0 ? ['tcp.accept', 'tcp.recv', 'tcp.send'] : ['tcp.recv', 'tcp.send']);
        for (const s of mine) {
          assert.equal(s.parentSpanId, e.parent);
          assert.equal(s.kind, 1);
          assert.deepEqual(s.resource, { 'service.name': 'fixture-server' });
          assert.equal(s.attributes['process.pid'], 4242);
          assert.equal(s.attributes['kspan.socket.cookie'], '99');
        }
        const recv = mine.find((s) => s.name === 'tcp.recv')!;
        const send = mine.find((s) => s.name === 'tcp.send')!;
        assert.equal(recv.attributes['kspan.bytes'], e.req);
        assert.equal(send.attributes['kspan.bytes'], e.resp);
        assert.equal(send.attributes['kspan.syscalls'], 2);
        assert.equal(send.endTimeUnixNano - send.startTimeUnixNano, 200n);
        assert.equal(recv.startTimeUnixNano, BigInt(10_000 + 10_000 * i) + OFFSET);
      }
      const built0 = new Set(built.map((s) => s.spanContext().spanId));
      assert.deepEqual(new Set(receiver.spans.map((s) => s.spanId)), built0);
    });

    test('collector outage: nothing within the queue bound is lost; the excess is counted and logged', async () => {
      const { receiver, pipeline, lines } = await setup(protocol, { maxQueueSize: 40, maxBatchSize: 8 });
      await queueOutage({
        receiver,
        pipeline,
        lines,
        offered: 55,
        make: (i) => {
          const span = builder.build(kernelSpan({ parent: ctx(0x500 + i), bytes: i }));
          return { span, id: span.spanContext().spanId };
        },
        receivedId: (s) => s.spanId,
      });
    });

    test('UNAVAILABLE answers are retried until the batch goes through', async () => {
      const { receiver, pipeline } = await setup(protocol);
      receiver.failWith(14, 3);
      for (let i = 0; i < 3; i++) pipeline.enqueue(builder.build(kernelSpan({ parent: ctx(0x700 + i) })));
      assert.equal(await pipeline.forceFlush(30_000), true);
      assert.equal(receiver.refused, 3);
      assert.equal(receiver.spans.length, 3);
      // HTTP: the exporter's own retries absorb some refusals before ours.
      if (protocol === 'grpc') assert.equal(pipeline.counters.retries, 3);
      assert.equal(pipeline.counters.exported, 3);
    });
  });
}

test('a non-retryable error drops the batch, counted and logged', async () => {
  const { receiver, pipeline, lines } = await setup('grpc');
  receiver.failWith(3, 1); // INVALID_ARGUMENT
  pipeline.enqueue(builder.build(kernelSpan()));
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.equal(pipeline.counters.droppedFailed, 1);
  assert.equal(pipeline.counters.exported, 0);
  assert.ok(lines.some((l) => l.msg === 'export: non-retryable error, batch dropped'));
  pipeline.enqueue(builder.build(kernelSpan()));
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.equal(receiver.spans.length, 1);
});

test('waitForRoom lets a producer that can wait (replay) fill past the queue bound without drops', async () => {
  const { receiver, pipeline } = await setup('grpc', { maxQueueSize: 20, maxBatchSize: 5 });
  for (let i = 0; i < 200; i++) {
    if (pipeline.held >= 20) await pipeline.waitForRoom(10);
    assert.equal(pipeline.enqueue(builder.build(kernelSpan({ bytes: i }))), true);
  }
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.equal(receiver.spans.length, 200);
  assert.equal(pipeline.counters.droppedQueueFull, 0);
});

test('batches stay within the byte bound', async () => {
  const { receiver, pipeline } = await setup('grpc', { maxBatchBytes: 4000, maxBatchSize: 1000 });
  for (let i = 0; i < 60; i++) pipeline.enqueue(builder.build(kernelSpan()));
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.equal(receiver.spans.length, 60);
  assert.ok(receiver.requests >= 6, `expected several requests, got ${receiver.requests}`);
  assert.ok(receiver.bytes / receiver.requests < 4000);
});

test('shutdown gives up after its timeout and counts what it dropped', async () => {
  const { receiver, pipeline, lines } = await setup('grpc', { shutdownTimeoutMs: 300 });
  await receiver.stop();
  for (let i = 0; i < 5; i++) pipeline.enqueue(builder.build(kernelSpan()));
  await pipeline.shutdown();
  assert.equal(pipeline.counters.droppedShutdown, 5);
  assert.ok(lines.some((l) => l.level === 50 && /shutdown timed out/.test(l.msg)));
  assert.equal(pipeline.enqueue(builder.build(kernelSpan())), false);
});

describe('configuration', () => {
  test('explicit endpoint, then the OTEL_EXPORTER_OTLP_* variables, else the console', () => {
    assert.deepEqual(resolveExportTarget({}, {}), { kind: 'console' });
    assert.deepEqual(resolveExportTarget({ console: true }, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317' }), { kind: 'console' });
    assert.deepEqual(resolveExportTarget({}, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317' }), {
      kind: 'otlp',
      protocol: 'grpc',
      endpoint: 'http://c:4317',
    });
    assert.deepEqual(
      resolveExportTarget({}, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }),
      { kind: 'otlp', protocol: 'http/protobuf', endpoint: 'http://c:4318/v1/traces' },
    );
    // the generic variable is a base URL: OTLP/HTTP appends the signal's path to it
    assert.deepEqual(
      resolveExportTarget({}, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }),
      { kind: 'otlp', protocol: 'http/protobuf', endpoint: 'http://c:4318/otlp/v1/traces' },
    );
    // a bare host:port is plaintext http
    assert.deepEqual(resolveExportTarget({ endpoint: 'c:4317' }, {}), { kind: 'otlp', protocol: 'grpc', endpoint: 'http://c:4317' });
    assert.deepEqual(
      resolveExportTarget({ endpoint: 'http://x:4317' }, { OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }),
      { kind: 'otlp', protocol: 'grpc', endpoint: 'http://x:4317' },
    );
    assert.throws(() => resolveExportTarget({ endpoint: 'x:1', protocol: 'http/json' }, {}), {
      code: 'KSPAN_ERR_USAGE',
      message: '--otlp-protocol http/json: not a supported OTLP protocol (use grpc or http/protobuf)',
    });
  });

  test('OTEL_EXPORTER_OTLP_ENDPOINT reaches the gRPC exporter', async () => {
    const receiver = new OtlpReceiver();
    receivers.push(receiver);
    await receiver.start();
    const saved = process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint;
    try {
      const target = resolveExportTarget({});
      assert.equal(target.kind, 'otlp');
      const pipeline = new ExportPipeline({ exporter: createOtlpExporter(target as never), logger: pino({ level: 'silent' }) });
      pipelines.push(pipeline);
      pipeline.enqueue(builder.build(kernelSpan()));
      assert.equal(await pipeline.forceFlush(10_000), true);
      assert.equal(receiver.spans.length, 1);
    } finally {
      if (saved === undefined) delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
      else process.env.OTEL_EXPORTER_OTLP_ENDPOINT = saved;
    }
  });

  test('which export errors are retried', () => {
    assert.equal(isRetryableExportError({ code: 14, message: 'UNAVAILABLE' }), true);
    assert.equal(isRetryableExportError({ code: 4, message: 'DEADLINE_EXCEEDED' }), true);
    assert.equal(isRetryableExportError({ code: 3, message: 'INVALID_ARGUMENT' }), false);
    assert.equal(isRetryableExportError({ code: 503 }), true);
    assert.equal(isRetryableExportError({ code: 400 }), false);
    assert.equal(isRetryableExportError({ code: 'ECONNREFUSED' }), true);
    assert.equal(isRetryableExportError(new Error('Request timed out')), true);
    assert.equal(isRetryableExportError(new Error('Nothing to send')), false);
    assert.equal(isRetryableExportError(new Error('Export failed with retryable status')), true); // HTTP exporter, its own retries spent
  });
});
