/**
 * Pipeline benchmark: synthetic kernel records → SocketCorrelator → SpanBuilder →
 * ExportPipeline (OTLP gRPC exporter, protobuf encoding) → a local OTLP receiver
 * in a child process. Reports kernel spans per second on this process's one core,
 * next to baselines measured in the same run: the OTel protobuf encoding alone,
 * and the correlator (+ builder) alone.
 *
 *   node --expose-gc bench/pipeline.ts [--requests N] [--sockets N] [--rounds N] [--json]
 *
 * --json: one JSON object instead of the text (what `make bench` reads).
 *
 * Target (issue 5): ≥ 100 k kernel spans/s on one core through the full pipeline.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { pino } from 'pino';
import type { KernelRecord } from '../src/records/kernel-record.ts';
import { createOtlpExporter, ExportPipeline } from '../src/export/export-pipeline.ts';
import type { KernelSpan } from '../src/spans/kernel-span.ts';
import { SocketCorrelator } from '../src/spans/socket-correlator.ts';
import { SpanBuilder } from '../src/spans/span-builder.ts';
import { ctx, FakeSocket } from '../test/helpers/kernel-records.ts';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '100000' },
    sockets: { type: 'string', default: '256' },
    rounds: { type: 'string', default: '3' },
    'full-only': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const REQUESTS = Number(args.requests);
const SOCKETS = Number(args.sockets);
const ROUNDS = Number(args.rounds);

/**
 * Keep-alive HTTP-like traffic: per request a recv (no context, or the previous
 * one) and a send in the request's context; an accept on each socket's first
 * request; a retransmit on 1 % of responses; a close at the end.
 */
function synthesize(requests: number, sockets: number, cookieBase: bigint): KernelRecord[] {
  const socks = Array.from({ length: sockets }, (_, i) => new FakeSocket({ cookie: cookieBase + BigInt(i), role: 'server', pid: 4242, tid: 4243 + (i % 8) }));
  const last: (ReturnType<typeof ctx> | null)[] = new Array(sockets).fill(null);
  const out: KernelRecord[] = [];
  let t = 1_000_000_000n;
  for (let i = 0; i < requests; i++) {
    const k = i % sockets;
    const s = socks[k];
    if (i < sockets) out.push(s.accept(t - 50_000n, t - 10_000n));
    const c = ctx(i + 1);
    out.push(s.recv(last[k], 300 + (i % 200), 1, t, t + 2_000n));
    if (i % 100 === 0) out.push(s.retransmit(c, t + 40_000n));
    out.push(s.send(c, 2_000 + (i % 5_000), 2, t + 20_000n, t + 30_000n));
    last[k] = c;
    t += 10_000n;
  }
  for (const s of socks) out.push(s.close(t, { srttUs: 50 }));
  return out;
}

const resource = resourceFromAttributes({ 'service.name': 'bench-server', 'process.pid': 4242 });
const OFFSET = 1_767_225_600_000_000_000n;

function correlateAll(records: KernelRecord[], sink: (k: KernelSpan) => void): SocketCorrelator {
  const c = new SocketCorrelator({ emit: sink, clock: 'records' });
  for (const r of records) c.push(r);
  c.flush();
  return c;
}

function cpuSeconds(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

function measure<T>(fn: () => T): { result: T; wall: number; cpu: number } {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const result = fn();
  return { result, wall: (performance.now() - t0) / 1000, cpu: cpuSeconds(c0) };
}

async function startReceiver() {
  const script = fileURLToPath(new URL('../test/helpers/otlp-receiver.ts', import.meta.url));
  const child = spawn(process.execPath, [script, '--no-decode'], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  const { port } = JSON.parse(line.toString()) as { port: number };
  const count = async (): Promise<{ spans: number; requests: number; bytes: number }> => {
    child.send('count');
    const [m] = (await once(child, 'message')) as [{ spans: number; requests: number; bytes: number }];
    return m;
  };
  return { child, port, count };
}

async function fullPipeline(records: KernelRecord[], endpoint: string) {
  const pipeline = new ExportPipeline({
    exporter: createOtlpExporter({ kind: 'otlp', protocol: 'grpc', endpoint }),
    logger: pino({ level: 'warn' }),
    maxBatchSize: 2048,
    scheduledDelayMs: 5,
  });
  const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const corr = new SocketCorrelator({ emit: (k) => pipeline.enqueue(builder.build(k)), clock: 'records' });
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const SLICE = 2048;
  for (let i = 0; i < records.length; i += SLICE) {
    const end = Math.min(records.length, i + SLICE);
    for (let j = i; j < end; j++) corr.push(records[j]);
    // Backpressure: let exports run when the queue fills (a live agent would lag the ring buffer).
    if (pipeline.held > 8192) await pipeline.waitForRoom(4096);
  }
  corr.flush();
  await pipeline.forceFlush();
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(c0);
  await pipeline.shutdown();
  return { wall, cpu, corr, counters: pipeline.counters };
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

interface Round {
  corr: number;
  build: number;
  enc: number;
  full: number;
  fullWall: number;
  bytesPerSpan: number;
  arrived: number;
  counters: ExportPipeline['counters'];
}

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

async function round(records: KernelRecord[], endpoint: string, count: () => Promise<{ spans: number }>): Promise<Round> {
  // Full pipeline first, on a clean heap.
  gc();
  const before = await count();
  const full = await fullPipeline(records, endpoint);
  const arrived = (await count()).spans - before.spans;

  gc();
  const corr = measure(() => {
    let n = 0;
    correlateAll(records, () => n++);
    return n;
  });
  const spans = corr.result;

  gc();
  const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const built: ReadableSpan[] = [];
  const build = measure(() => correlateAll(records, (k) => built.push(builder.build(k))));

  // Baseline: OTLP protobuf encoding alone of the same spans, in the same batch size.
  gc();
  const enc = measure(() => {
    let bytes = 0;
    for (let i = 0; i < built.length; i += 2048) bytes += ProtobufTraceSerializer.serializeRequest(built.slice(i, i + 2048))!.length;
    return bytes;
  });
  return {
    corr: spans / corr.cpu,
    build: spans / build.cpu,
    enc: spans / enc.cpu,
    full: arrived / full.cpu,
    fullWall: arrived / full.wall,
    bytesPerSpan: enc.result / spans,
    arrived: arrived - spans,
    counters: full.counters,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const receiver = await startReceiver();
  const endpoint = `http://127.0.0.1:${receiver.port}`;
  // Warm up every stage on a small run so the JIT is not measured.
  await round(synthesize(20_000, SOCKETS, 1_000_000n), endpoint, receiver.count);

  const records = synthesize(REQUESTS, SOCKETS, 10_000_000n);
  let spanCount = 0;
  correlateAll(records, () => spanCount++);
  if (args['full-only']) {
    // For profiling the export path: only the full pipeline.
    const full = await fullPipeline(records, endpoint);
    receiver.child.send('stop');
    console.log(`full: ${fmt(spanCount / full.cpu)} spans per CPU-second (${fmt(spanCount / full.wall)} spans/s wall)`);
    return;
  }
  const rounds: Round[] = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await round(records, endpoint, receiver.count));
  receiver.child.send('stop');
  await once(receiver.child, 'exit');

  const m = (f: (r: Round) => number) => median(rounds.map(f));
  const baseline = m((r) => r.enc);
  const full = m((r) => r.full);
  const lost = rounds.reduce((n, r) => n + (r.arrived !== 0 ? 1 : 0), 0);
  const c = rounds[rounds.length - 1].counters;
  const lines = [
    `pipeline benchmark: ${fmt(REQUESTS)} requests on ${SOCKETS} keep-alive sockets → ${fmt(records.length)} records → ${fmt(spanCount)} kernel spans`,
    `node ${process.version}; medians of ${ROUNDS} rounds; rates are per CPU-second of this process (one JS thread), receiver in a child process`,
    '',
    `  baseline: OTLP protobuf encoding alone     ${fmt(baseline).padStart(10)} spans/s  (${m((r) => r.bytesPerSpan).toFixed(0)} B/span)`,
    `  correlator alone                         ${fmt(m((r) => r.corr)).padStart(10)} spans/s`,
    `  correlator + span builder                ${fmt(m((r) => r.build)).padStart(10)} spans/s`,
    `  full: → OTLP gRPC export → receiver      ${fmt(full).padStart(10)} spans/s  (${fmt(m((r) => r.fullWall))} spans/s wall clock)`,
    '',
    `  full pipeline / encoding-alone baseline: ${(full / baseline).toFixed(2)}×`,
    `  target ≥ 100,000 spans/s on one core:    ${full >= 100_000 ? 'met' : 'NOT met'}`,
    `  every span arrived in ${ROUNDS - lost} of ${ROUNDS} rounds; last round: queue drops ${c.droppedQueueFull}, export failures ${c.exportFailures}, batches ${c.batches}`,
  ];
  if (args.json) {
    const rates = { encodingBaseline: baseline, correlator: m((r) => r.corr), correlatorAndBuilder: m((r) => r.build), full, fullWall: m((r) => r.fullWall) };
    console.log(JSON.stringify({ requests: REQUESTS, sockets: SOCKETS, rounds: ROUNDS, records: records.length, spans: spanCount, spansPerCpuSecond: rates, bytesPerSpan: m((r) => r.bytesPerSpan), roundsAllArrived: ROUNDS - lost, lastRound: c }));
  } else console.log(lines.join('\n'));
  if (lost) process.exitCode = 1;
}

await main();
