// The demo's Node 24 service: an HTTP server instrumented the usual way (NodeSDK
// + http instrumentation). The demo starts it with
//   node --import <kspan>/src/publisher/register.ts backend.cjs
// so kspan/publisher mirrors its active span where kspan's BPF can read it.
//
//   GET /data?bytes=N   answers N bytes (default 50 000, at most 4 MB)
//
// It runs in its own network namespace, so it cannot reach a Collector on the
// host: it writes each finished span on stdout as one JSON line, and the demo
// shows them, or exports them with the rest of the trace.
//   {"ready":true,"port":N,"pid":N}
//   {"span":{"service":"demo-backend","name":…,"kind":"server",…}}   (as frontend.c)
// CommonJS on purpose: the http instrumentation patches `http` when it is
// required after sdk.start().
'use strict';
const fs = require('node:fs');
const { trace } = require('@opentelemetry/api');
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { SimpleSpanProcessor } = require('@opentelemetry/sdk-trace');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');

const SERVICE = process.env.OTEL_SERVICE_NAME || 'demo-backend';
const KINDS = ['internal', 'server', 'client', 'producer', 'consumer'];
const emit = (obj) => fs.writeSync(1, JSON.stringify(obj) + '\n');
const ns = (t) => (BigInt(t[0]) * 1_000_000_000n + BigInt(t[1])).toString();

/** A SpanExporter that prints spans as JSON lines (the demo reads them). */
const jsonLinesExporter = {
  export(spans, done) {
    for (const s of spans) {
      const ctx = s.spanContext();
      emit({
        span: {
          service: SERVICE,
          name: s.name,
          kind: KINDS[s.kind] ?? 'internal',
          trace_id: ctx.traceId,
          span_id: ctx.spanId,
          parent_span_id: s.parentSpanContext?.spanId ?? null,
          start_ns: ns(s.startTime),
          end_ns: ns(s.endTime),
          status: s.status.code === 2 ? 'error' : 'ok',
          attrs: s.attributes,
        },
      });
    }
    done({ code: 0 });
  },
  shutdown: async () => {},
};

const sdk = new NodeSDK({
  serviceName: SERVICE,
  spanProcessors: [new SimpleSpanProcessor({ exporter: jsonLinesExporter })],
  instrumentations: [new HttpInstrumentation()],
});
sdk.start();
const http = require('node:http');

const MAX_BYTES = 4 << 20;
const payload = Buffer.alloc(MAX_BYTES, 'kspan demo payload\n');

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  if (url.pathname !== '/data') {
    res.writeHead(404).end();
    return;
  }
  trace.getActiveSpan()?.updateName('GET /data');
  const bytes = Math.min(MAX_BYTES, Math.max(0, Number(url.searchParams.get('bytes') ?? 50_000) | 0));
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes });
  res.end(payload.subarray(0, bytes));
});

server.listen(0, '0.0.0.0', () => emit({ ready: true, port: server.address().port, pid: process.pid }));

const stop = () => {
  server.close();
  sdk.shutdown().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
