/**
 * Directly encoded kernel spans through the OpenTelemetry exporters' own
 * transports, to real receivers on loopback: `kspan run`'s SpanPipeline to gRPC
 * and OTLP/HTTP; retries, drops and the queue bound of ExportPipeline; requests
 * under the byte bound; and the OTEL_EXPORTER_OTLP_* headers and compression,
 * which come from the exporters' configuration, not ours.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { after, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { pino } from 'pino';
import { createEncodedOtlpExporter, ExportPipeline, type ExportPipelineOptions } from '../../src/export/export-pipeline.ts';
import { encodeExportRequest, EncodedSpanSizer } from '../../src/export/export-request.ts';
import { KernelSpanEncoder, type EncodedSpan } from '../../src/export/span-encoder.ts';
import { ExportTraceServiceResponseType } from '../../src/proto/otlp.ts';
import { SpanPipeline } from '../../src/spans/span-pipeline.ts';
import { ctx, FakeSocket, kernelSpan } from '../helpers/kernel-records.ts';
import { queueOutage } from '../helpers/collector-outage.ts';
import { decodeExportRequest, OtlpReceiver, TRACE_EXPORT_PATH } from '../helpers/otlp-receiver.ts';

const OFFSET = 1_767_225_600_000_000_000n;
const resource = resourceFromAttributes({ 'service.name': 'fixture-server', 'process.pid': 4242 });
const other = resourceFromAttributes({ 'service.name': 'fixture-client' });

function capturingLogger() {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function receiver(protocol: 'grpc' | 'http'): Promise<OtlpReceiver> {
  const r = new OtlpReceiver({ protocol });
  await r.start();
  cleanups.push(() => r.stop());
  return r;
}

/** An ExportPipeline of encoded spans to `endpoint`, and the encoder that feeds it. */
function encodedPipeline(protocol: 'grpc' | 'http/protobuf', endpoint: string, opts: Partial<ExportPipelineOptions<EncodedSpan>> = {}) {
  const { logger, lines } = capturingLogger();
  const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: (pid) => (pid === 4242 ? resource : other), chunkBytes: 4096 });
  const pipeline = new ExportPipeline<EncodedSpan>({
    exporter: createEncodedOtlpExporter({ kind: 'otlp', protocol, endpoint }, { timeoutMs: 2000 }),
    sizer: new EncodedSpanSizer(),
    release: (s) => encoder.release(s),
    logger,
    scheduledDelayMs: 20,
    retryInitialMs: 50,
    retryMaxMs: 400,
    shutdownTimeoutMs: 5000,
    ...opts,
  });
  cleanups.push(() => pipeline.shutdown());
  return { encoder, pipeline, lines };
}

for (const protocol of ['grpc', 'http'] as const) {
  const otlpProtocol = protocol === 'grpc' ? 'grpc' : 'http/protobuf';

  describe(`kspan run's span pipeline over ${protocol}`, () => {
    test('encodes directly; exact ids, parentage, times, bytes and both Resources arrive', async () => {
      const r = await receiver(protocol);
      const pipeline = new SpanPipeline({
        mode: 'replay',
        resourceFor: (pid) => (pid === 4242 ? resource : other),
        clockOffsetNs: OFFSET,
        target: { kind: 'otlp', protocol: otlpProtocol, endpoint: r.endpoint },
        logger: pino({ level: 'silent' }),
        export: { maxQueueSize: 16, maxBatchSize: 8, scheduledDelayMs: 5 },
      });
      assert.ok(pipeline.encoder, 'the OTLP target takes the direct encoding');
      const server = new FakeSocket({ cookie: 99n, role: 'server', pid: 4242, tid: 4243 });
      const client = new FakeSocket({ cookie: 100n, role: 'client', pid: 7, tid: 8 });
      const records = [server.accept(1_000, 2_000)];
      const expect: { trace: string; parent: string; req: number; resp: number; t: number }[] = [];
      for (let i = 0; i < 40; i++) {
        const t = 10_000 + i * 10_000;
        const c = ctx(0x100 + i);
        records.push(server.recv(i ? ctx(0xff + i) : null, 100 + i, 1, t, t + 50), server.send(c, 1000 + i, 2, t + 500, t + 700));
        records.push(client.send(c, 7 + i, 1, t + 600, t + 650));
        expect.push({ trace: c.traceId, parent: c.spanId, req: 100 + i, resp: 1000 + i, t });
      }
      records.push(server.close(500_000, { srttUs: 31 }), client.close(500_001));
      await pipeline.replay(records);
      await pipeline.shutdown();
      const st = pipeline.stats();
      assert.equal(st.export.droppedQueueFull, 0);
      assert.equal(st.export.exported, 1 + 40 * 3);
      assert.equal(r.spans.length, 1 + 40 * 3);
      for (const [i, e] of expect.entries()) {
        const mine = r.spans.filter((s) => s.traceId === e.trace);
        assert.deepEqual(mine.map((s) => s.name).sort(), i === 0 ? ['tcp.accept', 'tcp.recv', 'tcp.send', 'tcp.send'] : ['tcp.recv', 'tcp.send', 'tcp.send']);
        for (const s of mine) {
          assert.equal(s.parentSpanId, e.parent);
          assert.equal(s.flags, 0x301);
          assert.match(s.spanId, /^[0-9a-f]{16}$/);
          assert.deepEqual(s.scope, { name: 'kspan', version: '0.1.0' });
        }
        const recv = mine.find((s) => s.name === 'tcp.recv')!;
        const [send, csend] = [mine.find((s) => s.name === 'tcp.send' && s.attributes['kspan.role'] === 'server')!, mine.find((s) => s.attributes['kspan.role'] === 'client')!];
        assert.equal(recv.attributes['kspan.bytes'], e.req);
        assert.equal(recv.startTimeUnixNano, OFFSET + BigInt(e.t));
        assert.equal(send.attributes['kspan.bytes'], e.resp);
        assert.equal(send.endTimeUnixNano - send.startTimeUnixNano, 200n);
        assert.deepEqual(send.resource, { 'service.name': 'fixture-server', 'process.pid': 4242 });
        assert.equal(send.attributes['kspan.socket.cookie'], '99');
        assert.deepEqual(csend.resource, { 'service.name': 'fixture-client' });
        assert.equal(csend.attributes['kspan.bytes'], 7 + i);
      }
      assert.equal(new Set(r.spans.map((s) => s.spanId)).size, r.spans.length);
    });

    test('a partial success: the spans the Collector rejected are counted and logged with its reason', async () => {
      const r = await receiver(protocol);
      r.rejectNext(Infinity, 'over quota');
      const { logger, lines } = capturingLogger();
      const pipeline = new SpanPipeline({
        mode: 'replay',
        resourceFor: () => resource,
        clockOffsetNs: OFFSET,
        target: { kind: 'otlp', protocol: otlpProtocol, endpoint: r.endpoint },
        logger,
        export: { maxQueueSize: 16, maxBatchSize: 4, scheduledDelayMs: 5 },
      });
      const server = new FakeSocket({ cookie: 7n, role: 'server', pid: 4242, tid: 4243 });
      const records = [server.accept(1_000, 2_000)];
      for (let i = 0; i < 5; i++) {
        const t = 10_000 + i * 10_000;
        records.push(server.recv(null, 10, 1, t, t + 50), server.send(ctx(0x300 + i), 20, 1, t + 500, t + 700));
      }
      records.push(server.close(200_000));
      await pipeline.replay(records);
      await pipeline.shutdown();
      const st = pipeline.stats();
      // accept + 5 × (recv, send), in batches of at most 4: every one answered with all its spans rejected.
      assert.equal(r.spanCount, 11);
      assert.ok(r.requests >= 3, `${r.requests} requests`);
      assert.equal(r.rejectedReported, 11);
      assert.equal(st.export.exported, 11);
      assert.equal(st.export.rejected, 11);
      const warned = lines.filter((l) => l.msg === 'export: the Collector rejected spans (partial success)');
      // Logged at most every 10 s: the first response's spans, with the Collector's reason.
      assert.equal(warned.length, 1);
      assert.equal(warned[0].reason, 'over quota');
      assert.equal(warned[0].rejectedTotal, warned[0].rejected);
    });

    test('collector outage: nothing within the queue bound is lost, the excess is counted, every arena chunk comes back', async () => {
      const r = await receiver(protocol);
      const { encoder, pipeline, lines } = encodedPipeline(otlpProtocol, r.endpoint, { maxQueueSize: 40, maxBatchSize: 8 });
      const accepted = await queueOutage({
        receiver: r,
        pipeline,
        lines,
        offered: 55,
        make: (i) => ({ span: encoder.encode(kernelSpan({ parent: ctx(0x500 + i), bytes: i })), id: ctx(0x500 + i).spanId }),
        receivedId: (s) => s.parentSpanId,
      });
      // The first 40 were accepted, the rest refused: exactly their bytes arrived.
      assert.deepEqual(accepted, Array.from({ length: 40 }, (_, i) => ctx(0x500 + i).spanId));
      assert.deepEqual(r.spans.map((s) => s.attributes['kspan.bytes']).sort((a, b) => Number(a) - Number(b)), Array.from({ length: 40 }, (_, i) => i));
      // 55 spans of ~480 B in 4 KiB chunks: all but the one being written are free again.
      assert.ok(encoder.arena.free >= 4, `free chunks ${encoder.arena.free}`);
    });

    test('UNAVAILABLE is retried until the batch goes through', async () => {
      const r = await receiver(protocol);
      const { encoder, pipeline } = encodedPipeline(otlpProtocol, r.endpoint);
      r.failWith(14, 3);
      for (let i = 0; i < 3; i++) pipeline.enqueue(encoder.encode(kernelSpan({ parent: ctx(0x700 + i) })));
      assert.equal(await pipeline.forceFlush(30_000), true);
      assert.equal(r.refused, 3);
      assert.deepEqual(r.spans.map((s) => s.parentSpanId).sort(), [0, 1, 2].map((i) => ctx(0x700 + i).spanId));
      if (protocol === 'grpc') assert.equal(pipeline.counters.retries, 3);
      assert.equal(pipeline.counters.exported, 3);
    });
  });
}

test('a non-retryable error drops the batch, counted, logged and released', async () => {
  const r = await receiver('grpc');
  const { encoder, pipeline, lines } = encodedPipeline('grpc', r.endpoint);
  r.failWith(3, 1); // INVALID_ARGUMENT
  pipeline.enqueue(encoder.encode(kernelSpan()));
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.equal(pipeline.counters.droppedFailed, 1);
  assert.ok(lines.some((l) => l.msg === 'export: non-retryable error, batch dropped'));
  pipeline.enqueue(encoder.encode(kernelSpan({ bytes: 5 })));
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.deepEqual(r.spans.map((s) => s.attributes['kspan.bytes']), [5]);
});

/** A plain OTLP/HTTP endpoint that keeps every request's headers and body (gunzipped when sent so). */
async function recordingHttpServer() {
  const requests: { headers: http.IncomingHttpHeaders; wire: number; body: Buffer }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw;
      requests.push({ headers: req.headers, wire: raw.length, body });
      res.writeHead(200, { 'content-type': 'application/x-protobuf' });
      res.end(Buffer.from(ExportTraceServiceResponseType.encode({}).finish()));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { requests, endpoint: `http://127.0.0.1:${port}/v1/traces` };
}

test('every request stays within maxBatchBytes, and is exactly the encoding of its spans', async () => {
  const srv = await recordingHttpServer();
  const limit = 4000;
  const { encoder, pipeline } = encodedPipeline('http/protobuf', srv.endpoint, { maxBatchBytes: limit, maxBatchSize: 1000 });
  const spans: EncodedSpan[] = [];
  for (let i = 0; i < 60; i++) {
    const s = encoder.encode(kernelSpan({ pid: i % 3 ? 4242 : 7, bytes: i, parent: ctx(0x900 + i) }));
    spans.push(s);
    assert.equal(pipeline.enqueue(s), true);
  }
  // What each request must be, computed before the spans are released.
  const expectedFrom = (from: number, to: number) => encodeExportRequest(spans.slice(from, to));
  const bounds: number[] = [];
  assert.equal(await pipeline.forceFlush(10_000), true);
  assert.ok(srv.requests.length >= 6, `${srv.requests.length} requests`);
  let n = 0;
  for (const req of srv.requests) {
    assert.ok(req.body.length <= limit, `request of ${req.body.length} bytes`);
    const got = decodeExportRequest(req.body);
    // The batch is the next spans in queue order (grouped by Resource inside the request).
    assert.deepEqual(
      got.map((s) => s.attributes['kspan.bytes']).sort((a, b) => Number(a) - Number(b)),
      Array.from({ length: got.length }, (_, i) => n + i),
    );
    bounds.push(n);
    n += got.length;
  }
  assert.equal(n, 60);
  bounds.push(60);
  // No span was encoded since: the arena still holds every span's bytes.
  for (let i = 0; i < srv.requests.length; i++) assert.ok(srv.requests[i].body.equals(expectedFrom(bounds[i], bounds[i + 1])), `request ${i} bytes`);
  // Batches were filled close to the bound, not cut early.
  assert.ok(srv.requests.slice(0, -1).every((q) => q.body.length > limit - 700), srv.requests.map((q) => q.body.length).join(','));
});

test('OTEL_EXPORTER_OTLP_HEADERS reach both transports, OTEL_EXPORTER_OTLP_COMPRESSION the HTTP one', async () => {
  const saved = { ...process.env };
  process.env.OTEL_EXPORTER_OTLP_HEADERS = 'x-kspan-test=yes,authorization=Bearer%20t0ken';
  process.env.OTEL_EXPORTER_OTLP_COMPRESSION = 'gzip';
  try {
    const srv = await recordingHttpServer();
    const { encoder, pipeline } = encodedPipeline('http/protobuf', srv.endpoint);
    const spans = [kernelSpan({ bytes: 1 }), kernelSpan({ bytes: 2, pid: 7 })].map((k) => encoder.encode(k));
    const expected = encodeExportRequest(spans);
    for (const s of spans) pipeline.enqueue(s);
    assert.equal(await pipeline.forceFlush(10_000), true);
    assert.equal(srv.requests.length, 1);
    const [req] = srv.requests;
    assert.equal(req.headers['x-kspan-test'], 'yes');
    assert.equal(req.headers.authorization, 'Bearer t0ken');
    assert.equal(req.headers['content-encoding'], 'gzip');
    assert.equal(req.headers['content-type'], 'application/x-protobuf');
    assert.ok(req.wire < req.body.length, 'compressed on the wire');
    assert.ok(req.body.equals(expected));

    // gRPC: the metadata (the server decompresses before the handler sees the message).
    const seen: { metadata: grpc.Metadata; body: Buffer }[] = [];
    const server = new grpc.Server();
    const identity = (b: Buffer): Buffer => b;
    server.addService(
      { Export: { path: TRACE_EXPORT_PATH, requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } },
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          seen.push({ metadata: call.metadata, body: call.request });
          cb(null, Buffer.from(ExportTraceServiceResponseType.encode({}).finish()));
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    cleanups.push(async () => void server.forceShutdown());
    const g = encodedPipeline('grpc', `http://127.0.0.1:${port}`);
    const gspans = [kernelSpan({ bytes: 3 })].map((k) => g.encoder.encode(k));
    const gexpected = encodeExportRequest(gspans);
    g.pipeline.enqueue(gspans[0]);
    assert.equal(await g.pipeline.forceFlush(10_000), true);
    assert.equal(seen.length, 1);
    assert.deepEqual(seen[0].metadata.get('x-kspan-test'), ['yes']);
    assert.ok(seen[0].body.equals(gexpected));
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
});

/** One gRPC request of a `bytes`-long message (a single unknown field, which an OTLP decoder skips) over a raw HTTP/2 session. */
function rawExport(session: http2.ClientHttp2Session, bytes: number): Promise<number> {
  const body = Buffer.alloc(bytes);
  // field 15, length-delimited: tag, a 3-byte varint length, the rest zeros
  const len = bytes - 4;
  body[0] = (15 << 3) | 2;
  body[1] = (len & 0x7f) | 0x80;
  body[2] = ((len >> 7) & 0x7f) | 0x80;
  body[3] = len >> 14;
  const frame = Buffer.alloc(5);
  frame.writeUInt32BE(bytes, 1);
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': TRACE_EXPORT_PATH, 'content-type': 'application/grpc', te: 'trailers' });
    let status = -1;
    req.on('trailers', (t) => (status = Number(t['grpc-status'])));
    req.on('error', reject);
    req.on('data', () => {});
    req.on('end', () => resolve(status));
    req.end(Buffer.concat([frame, body]));
  });
}

/** The initial stream window the server's SETTINGS announce, once it is `want` (or what it was after 2 s). */
async function remoteWindow(session: http2.ClientHttp2Session, want: number): Promise<number | undefined> {
  const until = Date.now() + 2000;
  while (session.remoteSettings.initialWindowSize !== want && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  return session.remoteSettings.initialWindowSize;
}

test("the test receiver's HTTP/2 windows grow with its requests, as grpc-go's (the Collector's) do", async () => {
  const grows = await receiver('grpc');
  const fixed = new OtlpReceiver({ growWindows: false });
  await fixed.start();
  cleanups.push(() => fixed.stop());
  for (const [r, expected] of [
    [grows, [600_000, 600_000, 1_000_000]],
    [fixed, [65_535, 65_535, 65_535]],
  ] as const) {
    const session = http2.connect(`http://127.0.0.1:${r.port}`);
    try {
      // 300 000 B: twice that; 200 000 B: no smaller; 500 000 B: twice that again.
      for (const [i, bytes] of [300_000, 200_000, 500_000].entries()) {
        assert.equal(await rawExport(session, bytes), 0);
        assert.equal(r.window, expected[i]);
        assert.equal(await remoteWindow(session, expected[i]), expected[i]);
      }
      assert.equal(r.requests, 3);
      assert.equal(r.bytes, 1_000_000);
      assert.equal(r.spanCount, 0);
    } finally {
      session.destroy();
    }
  }
});
