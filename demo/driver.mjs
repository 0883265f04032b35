// The demo's load driver: a few keep-alive connections to the frontend, each
// sending GET /checkout?bytes=N with a fresh trace (a W3C `traceparent` naming
// the driver's own root span) until the duration or the request count is reached.
//
//   node driver.mjs --url http://127.0.0.1:PORT [--duration S] [--requests N]
//                   [--concurrency C] [--pause-ms MS]
//
// Prints each root span as a JSON line (as frontend.c does), then
//   {"done":true,"requests":N,"errors":N}
// SIGTERM or SIGINT: stops sending, waits for the requests in flight, reports.
import { randomBytes, randomInt } from 'node:crypto';
import { writeSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    duration: { type: 'string', default: '20' },
    requests: { type: 'string' },
    concurrency: { type: 'string', default: '4' },
    'pause-ms': { type: 'string', default: '20' },
  },
});
const target = new URL(values.url);
const deadline = Date.now() + Number(values.duration) * 1000;
const maxRequests = values.requests ? Number(values.requests) : Infinity;
const pauseMs = Number(values['pause-ms']);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(values.concurrency) });
const emit = (obj) => writeSync(1, JSON.stringify(obj) + '\n');
// Wall-clock ns: the realtime clock read once, advanced by the monotonic one.
const epochBase = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
const nowNs = () => (epochBase + process.hrtime.bigint()).toString();

let started = 0;
let errors = 0;
let stopping = false;
process.on('SIGTERM', () => (stopping = true));
process.on('SIGINT', () => (stopping = true));

function request() {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  const bytes = randomInt(20_000, 200_001);
  const start = nowNs();
  return new Promise((resolve) => {
    const done = (status, err) => {
      const ok = status === 200 && !err;
      if (!ok) errors++;
      emit({
        span: {
          service: 'demo-driver',
          name: 'checkout',
          kind: 'client',
          trace_id: traceId,
          span_id: spanId,
          parent_span_id: null,
          start_ns: start,
          end_ns: nowNs(),
          status: ok ? 'ok' : 'error',
          attrs: { 'http.response.status_code': status, 'kspan.demo.bytes': bytes, ...(err ? { 'error.type': err } : {}) },
        },
      });
      resolve();
    };
    const req = http.get(
      new URL(`/checkout?bytes=${bytes}`, target),
      { agent, headers: { traceparent: `00-${traceId}-${spanId}-01` }, timeout: 30_000 },
      (res) => {
        res.resume();
        res.on('end', () => done(res.statusCode ?? 0));
        res.on('error', (e) => done(res.statusCode ?? 0, e.code ?? 'error'));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => done(0, e.code ?? e.message));
  });
}

async function loop() {
  while (!stopping && Date.now() < deadline && started < maxRequests) {
    started++;
    await request();
    if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
  }
}

await Promise.all(Array.from({ length: Number(values.concurrency) }, loop));
agent.destroy();
emit({ done: true, requests: started, errors });
