/**
 * The export pipeline with its spool against the real gRPC receiver on loopback,
 * with the production retry and reconnect tuning: a Collector outage under steady
 * load loses nothing and sends each span once, oldest first, and export resumes
 * within 5 s of the Collector's return; the queue overflows to disk instead of
 * dropping; a shutdown during an outage leaves the spans for the next start; the
 * spool's size bound drops the oldest, counted.
 *
 * KSPAN_OUTAGE_S sets the outage's length (default 20 s: long enough that
 * grpc-js's own backoff, 1 s growing ×1.6 up to 120 s, would already wait over
 * 6 s between reconnects); run it with 130 to see a Collector that was away
 * past grpc-js's 120 s backoff bound.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { pino } from 'pino';
import { TUNING } from '../../src/core/config.ts';
import { createEncodedOtlpExporters, ExportPipeline, type ExportPipelineOptions } from '../../src/export/export-pipeline.ts';
import { encodeExportRequest, EncodedSpanSizer } from '../../src/export/export-request.ts';
import { grpcChannelOptions } from '../../src/export/grpc-transport.ts';
import { KernelSpanEncoder, type EncodedSpan } from '../../src/export/span-encoder.ts';
import { SpanSpool, type SpoolOptions } from '../../src/export/spool.ts';
import { ctx, kernelSpan } from '../helpers/kernel-records.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { until } from '../helpers/traced-server.ts';

const OUTAGE_S = Number(process.env.KSPAN_OUTAGE_S) > 0 ? Number(process.env.KSPAN_OUTAGE_S) : 20;
const OFFSET = 1_767_225_600_000_000_000n;
const resource = resourceFromAttributes({ 'service.name': 'fixture-server' });
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kspan-spool-outage-'));
const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
  fs.rmSync(root, { recursive: true, force: true });
});
let dirs = 0;

type Line = { msg: string; [k: string]: unknown };

function capturingLogger(onLine?: (l: Line) => void) {
  const lines: Line[] = [];
  const logger = pino({ level: 'debug' }, {
    write: (s: string) => {
      const l = JSON.parse(s) as Line;
      lines.push(l);
      onLine?.(l);
    },
  });
  return { logger, lines };
}

async function receiver(protocol: 'grpc' | 'http' = 'grpc'): Promise<OtlpReceiver> {
  const r = new OtlpReceiver({ protocol });
  await r.start();
  cleanups.push(() => r.stop());
  return r;
}

/** A pipeline of encoded spans to `endpoint` over gRPC with a spool in `dir`; retry tuning as in production unless given. */
function spooledPipeline(
  endpoint: string,
  dir: string,
  opts: Partial<ExportPipelineOptions<EncodedSpan>> = {},
  spoolOpts: Partial<SpoolOptions> = {},
  onLine?: (l: Line) => void,
  protocol: 'grpc' | 'http/protobuf' = 'grpc',
) {
  const { logger, lines } = capturingLogger(onLine);
  const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const exporters = createEncodedOtlpExporters({ kind: 'otlp', protocol, endpoint }, { timeoutMs: 2000 });
  const store = new SpanSpool({ dir, maxBytes: 64 << 20, logger, ...spoolOpts });
  const pipeline = new ExportPipeline<EncodedSpan>({
    exporter: exporters.encoded,
    sizer: new EncodedSpanSizer(),
    release: (s) => encoder.release(s),
    logger,
    spool: { store, encode: (b) => encodeExportRequest(b), exporter: exporters.spooled },
    ...opts,
  });
  cleanups.push(() => pipeline.shutdown());
  return { encoder, pipeline, store, lines };
}

/** Span i: its parent is ctx(i), so the receiver names it by parentSpanId. */
const spanId = (i: number) => ctx(0x10000 + i).spanId;
const make = (encoder: KernelSpanEncoder, i: number) => encoder.encode(kernelSpan({ parent: ctx(0x10000 + i), bytes: i }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the retry and reconnect bounds put the first attempt after a return within 5 s, whatever the outage', () => {
  const e = TUNING.export;
  const o = grpcChannelOptions({ compression: 'none' });
  assert.equal(o['grpc.max_reconnect_backoff_ms'], 1000);
  assert.equal(o['grpc.initial_reconnect_backoff_ms'], 250);
  // Once both have reached their caps, grpc-js's backoff (+20 %) is over before the
  // pipeline's next try (−20 %), so the first try after the return connects, and
  // it comes within retryMaxMs (+20 %).
  assert.ok(e.grpcMaxReconnectBackoffMs * 1.2 < e.retryMaxMs * 0.8);
  assert.ok(e.retryMaxMs * 1.2 < 5000 / 2);
});

test(`a ${OUTAGE_S} s Collector outage under steady load: every span arrives once, oldest first; export resumes within 5 s of the return`, { timeout: (OUTAGE_S + 90) * 1000 }, async () => {
  const r = await receiver();
  // A short scheduling delay only makes live batches leave sooner; retries and backoff are production's.
  let made = 0;
  let returnedAt = 0;
  /** Spans made while the Collector was away, as the pipeline saw it: until its first acknowledged request. */
  let madeInOutage = 0;
  const { encoder, pipeline, store, lines } = spooledPipeline(r.endpoint, path.join(root, `d${dirs++}`), { scheduledDelayMs: 50 }, {}, (l) => {
    if (l.msg === 'export: recovered' && typeof l.outageMs === 'number') madeInOutage = made;
  });
  let stop = false;
  const load = (async () => {
    while (!stop) {
      for (let k = 0; k < 20; k++) assert.equal(pipeline.enqueue(make(encoder, made++)), true);
      await sleep(100);
    }
  })();
  await until(() => (r.spanCount >= 100 ? true : undefined), 10_000, 'export before the outage');
  await r.stop();
  const stoppedAt = made;
  await sleep(OUTAGE_S * 1000);
  const arrivedBeforeReturn = r.spanCount;
  assert.ok(arrivedBeforeReturn <= stoppedAt + 20);
  assert.ok(pipeline.counters.spooled > 0);
  assert.ok(pipeline.held <= 1024, `held in memory during the outage: ${pipeline.held}`);
  await r.start();
  returnedAt = Date.now();
  const first = await until(() => (r.spanCount > arrivedBeforeReturn ? Date.now() : undefined), 30_000, 'the first span after the return');
  const resumeMs = first - returnedAt;
  await sleep(3000); // new spans keep coming while the spool drains
  stop = true;
  await load;
  assert.equal(await pipeline.forceFlush(30_000), true);

  const ids = r.spans.map((s) => s.parentSpanId);
  assert.equal(new Set(ids).size, ids.length, 'no span arrived twice');
  assert.equal(ids.length, made);
  const index = new Map(Array.from({ length: made }, (_, i) => [spanId(i), i]));
  const order = ids.map((id) => index.get(id)!);
  // Oldest first: the spans made until the recovery arrive in the order made, and so do those made after it;
  // and new spans flowed while the spool drained.
  assert.ok(madeInOutage > stoppedAt);
  const old = order.filter((i) => i < madeInOutage);
  const fresh = order.filter((i) => i >= madeInOutage);
  assert.deepEqual(old, Array.from({ length: madeInOutage }, (_, i) => i));
  assert.deepEqual(fresh, [...fresh].sort((a, b) => a - b));
  assert.ok(order.indexOf(fresh[0]) < order.indexOf(madeInOutage - 1), 'a new span arrived before the last spooled one');
  const c = pipeline.counters;
  assert.equal(c.droppedQueueFull + c.droppedFailed + c.droppedShutdown + c.droppedSpool, 0);
  assert.equal(c.exported + c.replayed, made);
  assert.equal(c.replayed, c.spooled);
  assert.equal(store.pendingRecords, 0);
  assert.ok(lines.some((l) => l.msg === 'export failed; spans go to the spool until the Collector answers'));
  const recovered = lines.find((l) => l.msg === 'export: recovered' && typeof l.outageMs === 'number')!;
  assert.ok((recovered.outageMs as number) >= OUTAGE_S * 1000);
  process.stderr.write(`# outage ${OUTAGE_S} s: first span ${resumeMs} ms after the return; ${c.spooled} spans spooled, ${made} made\n`);
  assert.ok(resumeMs < 5000, `export resumed ${resumeMs} ms after the Collector's return`);
});

for (const protocol of ['grpc', 'http/protobuf'] as const) {
  test(`${protocol}: a full queue overflows to the spool instead of dropping, and everything arrives once`, async () => {
    const r = await receiver(protocol === 'grpc' ? 'grpc' : 'http');
    const { encoder, pipeline } = spooledPipeline(r.endpoint, path.join(root, `d${dirs++}`), { maxQueueSize: 40, maxBatchSize: 8, scheduledDelayMs: 20 }, {}, undefined, protocol);
    for (let i = 0; i < 200; i++) assert.equal(pipeline.enqueue(make(encoder, i)), true);
    assert.ok(pipeline.held <= 40);
    assert.equal(await pipeline.forceFlush(30_000), true);
    const ids = r.spans.map((s) => s.parentSpanId);
    assert.deepEqual([...ids].sort(), Array.from({ length: 200 }, (_, i) => spanId(i)).sort());
    assert.equal(pipeline.counters.droppedQueueFull, 0);
    assert.ok(pipeline.counters.spooled >= 150, `spooled ${pipeline.counters.spooled}`);
    assert.equal(pipeline.counters.exported + pipeline.counters.replayed, 200);
  });

  test(`${protocol}: a shutdown during an outage leaves the spans in the spool; the next pipeline on it sends them first, once`, async () => {
    const r = await receiver(protocol === 'grpc' ? 'grpc' : 'http');
    const dir = path.join(root, `d${dirs++}`);
    const a = spooledPipeline(r.endpoint, dir, { scheduledDelayMs: 20, shutdownTimeoutMs: 500 }, {}, undefined, protocol);
    await r.stop();
    for (let i = 0; i < 300; i++) a.pipeline.enqueue(make(a.encoder, i));
    await a.pipeline.shutdown();
    assert.equal(a.pipeline.counters.droppedShutdown, 0);
    assert.equal(a.pipeline.counters.spooled, 300);
    assert.equal(a.store.pendingSpans, 300);
    assert.ok(a.lines.some((l) => l.msg === "export: shutdown before the spool drained; its spans are sent at the next start"));
    assert.equal(fs.existsSync(path.join(dir, 'lock')), false);

    await r.start();
    const b = spooledPipeline(r.endpoint, dir, { scheduledDelayMs: 20 }, {}, undefined, protocol);
    assert.equal(b.store.counters.recoveredSpans, 300);
    // Nothing new is enqueued: the spool drains by itself.
    await r.waitForSpans(300, 15_000);
    for (let i = 300; i < 310; i++) b.pipeline.enqueue(make(b.encoder, i));
    assert.equal(await b.pipeline.forceFlush(15_000), true);
    assert.deepEqual(r.spans.map((s) => s.parentSpanId), Array.from({ length: 310 }, (_, i) => spanId(i)));
    assert.equal(b.pipeline.counters.replayed, 300);
    await b.pipeline.shutdown();
    const c = spooledPipeline(r.endpoint, dir, {}, {}, undefined, protocol);
    assert.equal(c.store.counters.recoveredSpans, 0, 'acknowledged spans are not sent again');
  });
}

test("the spool's size bound drops the oldest spans first, counted; the rest arrive in order", async () => {
  const r = await receiver();
  const { encoder, pipeline, store } = spooledPipeline(
    r.endpoint,
    path.join(root, `d${dirs++}`),
    { scheduledDelayMs: 20, maxBatchSize: 8 },
    { maxBytes: 4 * 64 * 1024, segmentBytes: 64 * 1024 },
  );
  await r.stop();
  pipeline.enqueue(make(encoder, 0));
  await until(() => (pipeline.counters.spooled === 1 ? true : undefined), 10_000, 'the first failed export');
  for (let i = 1; i < 2000; i++) pipeline.enqueue(make(encoder, i));
  await pipeline.forceFlush(200); // spills the queue
  assert.equal(pipeline.counters.spooled, 2000);
  const dropped = store.counters.droppedSpans;
  assert.ok(dropped > 0);
  assert.equal(pipeline.counters.droppedSpool, dropped);
  await r.start();
  assert.equal(await pipeline.forceFlush(30_000), true);
  const ids = r.spans.map((s) => s.parentSpanId);
  // The first probe may have been in flight when its segment went: it arrives too.
  const expected = Array.from({ length: 2000 - dropped }, (_, i) => spanId(dropped + i));
  assert.deepEqual(ids.filter((id) => id !== spanId(0)), expected.filter((id) => id !== spanId(0)));
  assert.equal(pipeline.counters.replayed + dropped, 2000);
});
