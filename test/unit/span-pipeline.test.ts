import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { pino } from 'pino';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { ConsoleTreeExporter } from '../../src/export/console-tree.ts';
import { createOtlpExporter } from '../../src/export/otlp-exporter.ts';
import { RecordFileReader, RecordFileWriter } from '../../src/records/record-file.ts';
import { SpanPipeline } from '../../src/spans/span-pipeline.ts';
import { ctx, FakeSocket } from '../helpers/kernel-records.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';

const receiver = new OtlpReceiver();
after(() => receiver.stop());

function keepAlive(requests: number): KernelRecord[] {
  const s = new FakeSocket({ cookie: 5n, role: 'server', pid: 4242 });
  const out = [s.accept(500, 900)];
  for (let i = 0; i < requests; i++) {
    const t = 1_000 + i * 1_000;
    out.push(s.recv(null, 10 + i, 1, t, t + 10), s.send(ctx(0x100 + i), 100 + i, 1, t + 100, t + 200));
  }
  out.push(s.close(1_000 + requests * 1_000));
  return out;
}

test('replay: a recording goes through correlator, builder and OTLP with backpressure, none dropped', async () => {
  await receiver.start();
  const header = { kernelRelease: '6.18.0', clockOffsetNs: 1_767_225_600_000_000_000n, startedAt: '2026-01-01T00:00:00Z' };
  const file = new PassThrough();
  const chunks: Buffer[] = [];
  file.on('data', (c: Buffer) => chunks.push(c));
  const w = new RecordFileWriter(file, header);
  for (const r of keepAlive(150)) w.write(r);
  await w.end();

  const reader = await RecordFileReader.open([Buffer.concat(chunks)]);
  const resource = resourceFromAttributes({ 'service.name': 'recorded' });
  const pipeline = new SpanPipeline({
    mode: 'replay',
    resourceFor: () => resource,
    clockOffsetNs: reader.header.clockOffsetNs,
    exporter: createOtlpExporter({ kind: 'otlp', protocol: 'grpc', endpoint: receiver.endpoint }),
    logger: pino({ level: 'silent' }),
    export: { maxQueueSize: 16, maxBatchSize: 8, scheduledDelayMs: 5 },
  });
  await pipeline.replay(reader);
  await pipeline.shutdown();
  const st = pipeline.stats();
  assert.equal(st.export.droppedQueueFull, 0);
  assert.equal(st.export.exported, 301);
  assert.equal(receiver.spans.length, 301);
  const recv7 = receiver.spans.find((s) => s.name === 'tcp.recv' && s.parentSpanId === ctx(0x107).spanId)!;
  assert.equal(recv7.attributes['kspan.bytes'], 17);
  assert.equal(recv7.startTimeUnixNano, 1_767_225_600_000_000_000n + 8_000n);
  assert.deepEqual(recv7.resource, { 'service.name': 'recorded' });
  assert.equal(st.correlator.records, 302);
});

test('live: spans print as trees on the console exporter; shutdown ends open spans', async () => {
  let text = '';
  const pipeline = new SpanPipeline({
    resourceFor: () => resourceFromAttributes({ 'service.name': 'live' }),
    clockOffsetNs: 0n,
    exporter: new ConsoleTreeExporter({ write: (t) => (text += t) }),
    logger: pino({ level: 'silent' }),
    tickMs: 10,
  });
  const s = new FakeSocket({ cookie: 6n, role: 'server', pid: 77 });
  pipeline.push(s.recv(null, 10, 1, 1_000, 1_010));
  pipeline.push(s.send(ctx(0xa), 20, 1, 2_000, 2_010));
  pipeline.push(s.recv(ctx(0xb), 30, 1, 3_000, 3_010)); // never answered: open at shutdown
  await pipeline.shutdown();
  assert.match(text, new RegExp(`trace ${ctx(0xa).traceId}  service=live pid=77`));
  assert.match(text, /tcp\.recv .* 30 B in 1 call .*\(incomplete: shutdown\)/);
  assert.equal(pipeline.stats().correlator.incompleteSpans, 1);
  assert.equal(pipeline.stats().export.exported, 3); // recv + send under A, the open read under B
});

test('live, the export queue full: a span the queue would refuse is counted as dropped without being encoded', async () => {
  const receiver = new OtlpReceiver();
  after(() => receiver.stop());
  await receiver.start();
  receiver.failWith(14); // UNAVAILABLE: the first batch stays in flight, retried, until the receiver answers again
  const pipeline = new SpanPipeline({
    resourceFor: () => resourceFromAttributes({ 'service.name': 'full' }),
    clockOffsetNs: 0n,
    target: { kind: 'otlp', protocol: 'grpc', endpoint: receiver.endpoint },
    logger: pino({ level: 'silent' }),
    tickMs: 10,
    export: { maxQueueSize: 4, maxBatchSize: 2, scheduledDelayMs: 5, retryInitialMs: 20, retryMaxMs: 20 },
  });
  const encoder = pipeline.encoder!;
  const encoded: string[] = [];
  const encode = encoder.encode.bind(encoder);
  encoder.encode = (k) => {
    encoded.push(k.parent!.spanId);
    return encode(k);
  };
  const s = new FakeSocket({ cookie: 7n, role: 'server', pid: 78 });
  // Five exchanges: ten spans (a recv and a send each) into a queue of four.
  for (let i = 0; i < 5; i++) {
    const t = 10_000 + i * 1_000;
    pipeline.push(s.recv(ctx(0x200 + i), 10 + i, 1, t, t + 10));
    pipeline.push(s.send(ctx(0x200 + i), 20 + i, 1, t + 100, t + 110));
  }
  pipeline.push(s.close(20_000));
  const mid = pipeline.stats().export;
  assert.equal(mid.enqueued, 4);
  assert.equal(mid.droppedQueueFull, 6);
  assert.deepEqual(encoded, [ctx(0x200).spanId, ctx(0x200).spanId, ctx(0x201).spanId, ctx(0x201).spanId], 'only the queued spans were encoded');
  receiver.failWith(null);
  await pipeline.shutdown();
  const st = pipeline.stats();
  assert.equal(st.correlator.spans, 10);
  assert.equal(st.export.exported, 4);
  assert.equal(st.export.droppedQueueFull, 6);
  assert.deepEqual(
    receiver.spans.map((x) => `${x.name} ${x.parentSpanId} ${x.attributes['kspan.bytes']}`).sort(),
    [`tcp.recv ${ctx(0x200).spanId} 10`, `tcp.recv ${ctx(0x201).spanId} 11`, `tcp.send ${ctx(0x200).spanId} 20`, `tcp.send ${ctx(0x201).spanId} 21`],
  );
});

test('live: each tick first takes the records beforeTick delivers, so a retransmit committed before a held send ends lands on it', async () => {
  const spans: ReadableSpan[] = [];
  const lingerNs = 30_000_000n;
  let deadline = 0n;
  let late: KernelRecord | undefined;
  const pipeline = new SpanPipeline({
    resourceFor: () => resourceFromAttributes({ 'service.name': 'held' }),
    clockOffsetNs: 0n,
    exporter: { export: (items: ReadableSpan[], done) => (spans.push(...items), done({ code: 0 })), shutdown: async () => {} },
    logger: pino({ level: 'silent' }),
    tickMs: 5,
    correlator: { lingerNs },
    // The rings' timer backed off: the retransmit, committed within the hold, is read only by the tick past its end.
    beforeTick: () => {
      if (late && process.hrtime.bigint() > deadline) {
        pipeline.push(late);
        late = undefined;
      }
    },
  });
  // Warm: the pushes below take microseconds, so `deadline` is the correlator's own within them.
  const warm = new FakeSocket({ cookie: 9n, role: 'server', pid: 79 });
  for (let i = 0; i < 200; i++) pipeline.push(warm.recv(null, 1, 1, i, i));
  const s = new FakeSocket({ cookie: 8n, role: 'server', pid: 79 });
  const t0 = process.hrtime.bigint();
  pipeline.push(s.recv(null, 40, 1, t0 - 2_000_000n, t0 - 2_000_000n));
  // The response's record: its span is held for late retransmits until lingerNs after the push.
  deadline = process.hrtime.bigint() + lingerNs;
  pipeline.push(s.send(ctx(0xc), 512, 1, t0 - 1_000_000n, t0 - 1_000_000n));
  late = s.retransmit(ctx(0xc), t0 + 1_000_000n);
  while (late || process.hrtime.bigint() < deadline + 20_000_000n) await new Promise((r) => setTimeout(r, 5));
  await pipeline.shutdown();
  const send = spans.find((x) => x.name === 'tcp.send')!;
  assert.equal(send.parentSpanContext?.spanId, ctx(0xc).spanId);
  assert.equal(send.attributes['kspan.retransmits'], 1, 'the retransmit is on the held send, not left standing alone');
  assert.equal(spans.filter((x) => x.name === 'tcp.retransmit').length, 0);
});
