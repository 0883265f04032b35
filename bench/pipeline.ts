/**
 * Pipeline benchmark: synthetic kernel records → SocketCorrelator → kspan's OTLP
 * encoder (src/export/span-encoder.ts) → ExportPipeline → the OTel exporter's
 * transport (gRPC, and OTLP/HTTP) → a local OTLP receiver in a child process.
 * Reports kernel spans per second on one core (per CPU-second of the process that
 * ran them), next to baselines measured in the same run: the previous path
 * (SpanBuilder ReadableSpans → the OTel exporter with its
 * ProtobufTraceSerializer), each encoding alone, the transport alone and the
 * correlator alone.
 *
 *   node --expose-gc bench/pipeline.ts [--requests N] [--sockets N] [--rounds N] [--json]
 *   node --expose-gc bench/pipeline.ts --full-only [--readable] [--http]   (one full run, for profiling)
 *
 * Each full pipeline of a round runs in a process of its own (this script with
 * --one PATH:PROTOCOL --endpoint URL, under this process's flags and
 * environment), as the agent is one process running one path. The pipeline is
 * made once; a warm-up workload as long as the measured one goes through it
 * first, then the measured one through the same pipeline and connection, as an
 * agent's spans go for its whole life (a new gRPC channel, its connection and the
 * compilation of a new pipeline's code are paid once per agent, not per span).
 * In one shared process the encoded gRPC
 * run lost 15 % from the first round to the third (407 k, 362 k, 347 k spans per
 * CPU-second with the other full runs left out), after the stages measured alone
 * had run the same correlator and export code with other callbacks and span
 * types (BENCHMARKS.md, "The pipeline's full runs, each in a process of its own").
 *
 * --json: one JSON object instead of the text (what `make bench` reads).
 *
 * Target: ≥ 400 k kernel spans/s on one core through the full pipeline, where the
 * ReadableSpan path made 137 k (so ≥ 2.9 × that path measured in the same run).
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
import { createEncodedOtlpExporter, ExportPipeline, type ExportCounters } from '../src/export/export-pipeline.ts';
import { createOtlpExporter } from '../src/export/otlp-exporter.ts';
import { EncodedSpanSizer, encodedSpanSerializer, RequestBuffers } from '../src/export/export-request.ts';
import { KernelSpanEncoder, type EncodedSpan } from '../src/export/span-encoder.ts';
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
    readable: { type: 'boolean', default: false },
    http: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    one: { type: 'string' },
    endpoint: { type: 'string' },
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
function* synthesizeSlices(requests: number, sockets: number, cookieBase: bigint, slice = 2048): Generator<KernelRecord[]> {
  const socks = Array.from({ length: sockets }, (_, i) => new FakeSocket({ cookie: cookieBase + BigInt(i), role: 'server', pid: 4242, tid: 4243 + (i % 8) }));
  const last: (ReturnType<typeof ctx> | null)[] = new Array(sockets).fill(null);
  let out: KernelRecord[] = [];
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
    if (out.length >= slice) {
      yield out;
      out = [];
    }
  }
  for (const s of socks) out.push(s.close(t, { srttUs: 50 }));
  yield out;
}

function synthesize(requests: number, sockets: number, cookieBase: bigint): KernelRecord[] {
  return [...synthesizeSlices(requests, sockets, cookieBase)].flat();
}

/**
 * The workload, made again for each run: the full pipelines take it slice by slice
 * (the heap holds one slice, as the agent holds one ring-buffer batch, not every
 * record of the run); the stages measured alone take it as one array.
 */
interface Workload {
  requests: number;
  sockets: number;
  cookieBase: bigint;
}
const slices = (w: Workload) => synthesizeSlices(w.requests, w.sockets, w.cookieBase);
const allRecords = (w: Workload) => synthesize(w.requests, w.sockets, w.cookieBase);

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

type Protocol = 'grpc' | 'http/protobuf';
type SpanPath = 'encoded' | 'readable';

interface Receiver {
  child: ReturnType<typeof spawn>;
  endpoint: string;
  count: () => Promise<{ spans: number; requests: number; bytes: number }>;
}

async function startReceiver(protocol: Protocol): Promise<Receiver> {
  const script = fileURLToPath(new URL('../test/helpers/otlp-receiver.ts', import.meta.url));
  const flags = protocol === 'grpc' ? ['--no-decode'] : ['--no-decode', '--http'];
  const child = spawn(process.execPath, [script, ...flags], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  const { port } = JSON.parse(line.toString()) as { port: number };
  const count = async (): Promise<{ spans: number; requests: number; bytes: number }> => {
    child.send('count');
    const [m] = (await once(child, 'message')) as [{ spans: number; requests: number; bytes: number }];
    return m;
  };
  const endpoint = protocol === 'grpc' ? `http://127.0.0.1:${port}` : `http://127.0.0.1:${port}/v1/traces`;
  return { child, endpoint, count };
}

async function stopReceiver(r: Receiver): Promise<void> {
  r.child.send('stop');
  await once(r.child, 'exit');
}

/** What one workload through a full pipeline took, and the export counters it moved. */
interface FullRun {
  wall: number;
  cpu: number;
  counters: ExportCounters;
}

/**
 * The full pipeline: correlator → encoder (or builder) → ExportPipeline → exporter
 * → receiver. It is made once and fed workload after workload, as the agent feeds
 * one export pipeline, over one connection, for its whole life; each workload gets
 * a correlator of its own (its sockets open and close within it).
 */
function fullPipeline(endpoint: string, path: SpanPath, protocol: Protocol) {
  const target = { kind: 'otlp', protocol, endpoint } as const;
  // The agent's batch size (TUNING.export); a partial batch goes out after 5 ms, not 500.
  const common = { logger: pino({ level: 'warn' }), scheduledDelayMs: 5 };
  let pipeline: ExportPipeline<EncodedSpan> | ExportPipeline<ReadableSpan>;
  let emit: (k: KernelSpan) => void;
  if (path === 'encoded') {
    const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
    const p = new ExportPipeline<EncodedSpan>({
      ...common,
      exporter: createEncodedOtlpExporter(target),
      sizer: new EncodedSpanSizer(),
      release: (s) => encoder.release(s),
    });
    emit = (k) => p.enqueue(encoder.encode(k));
    pipeline = p;
  } else {
    const p = new ExportPipeline<ReadableSpan>({ ...common, exporter: createOtlpExporter(target) });
    const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
    emit = (k) => p.enqueue(builder.build(k));
    pipeline = p;
  }
  const run = async (workload: Workload): Promise<FullRun> => {
    const before = { ...pipeline.counters };
    const corr = new SocketCorrelator({ emit, clock: 'records' });
    const source = slices(workload);
    // Making the records is not the pipeline's work: its CPU (and wall) time is taken out.
    let makeCpu = 0;
    let makeWall = 0;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (;;) {
      const m0 = process.cpuUsage();
      const w0 = performance.now();
      const next = source.next();
      makeCpu += cpuSeconds(m0);
      makeWall += (performance.now() - w0) / 1000;
      if (next.done) break;
      for (const r of next.value) corr.push(r);
      // Backpressure: let exports run when the queue fills (a live agent would lag the ring buffer).
      if (pipeline.held > 8192) await pipeline.waitForRoom(4096);
    }
    corr.flush();
    await pipeline.forceFlush();
    const wall = (performance.now() - t0) / 1000 - makeWall;
    const cpu = cpuSeconds(c0) - makeCpu;
    const counters = { ...pipeline.counters };
    for (const k of Object.keys(counters) as (keyof ExportCounters)[]) counters[k] -= before[k];
    return { wall, cpu, counters };
  };
  return { run, shutdown: () => pipeline.shutdown() };
}

/**
 * The transport alone: one request of 2048 encoded spans, sent as many times as
 * the full run sends batches, through the same exporter: what no encoding saves.
 */
async function transportAlone(workload: Workload, endpoint: string, protocol: Protocol, spans: number) {
  const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const batch: EncodedSpan[] = [];
  correlateAll(synthesize(4096, workload.sockets, workload.cookieBase), (k) => batch.length < 2048 && batch.push(encoder.encode(k)));
  const exporter = createEncodedOtlpExporter({ kind: 'otlp', protocol, endpoint });
  const send = () =>
    new Promise<void>((resolve, reject) => exporter.export(batch, (r) => (r.code === 0 ? resolve() : reject(r.error ?? new Error('export failed')))));
  await send(); // connect
  const times = Math.round(spans / batch.length);
  const c0 = process.cpuUsage();
  for (let i = 0; i < times; i++) await send();
  const cpu = cpuSeconds(c0);
  await exporter.shutdown();
  return { rate: (times * batch.length) / cpu, sent: (times + 1) * batch.length };
}

/**
 * The body of --one: a warm-up workload through the pipeline, then, once the parent
 * has read the receiver's count ('go' on the IPC channel), the measured one through
 * the same pipeline, sent back. No forced collection in between: the agent never
 * makes one, and after one the next 200 000 spans took 10–20 % more CPU here.
 */
async function warmThenFull(workload: Workload, endpoint: string, path: SpanPath, protocol: Protocol): Promise<void> {
  const full = fullPipeline(endpoint, path, protocol);
  await full.run(warmup(workload));
  const go = once(process, 'message');
  process.send!('warm');
  await go;
  const run = await full.run(workload);
  await full.shutdown();
  process.send!(run);
  process.disconnect();
}

/** The warm-up workload before a measured one: as long, on sockets of its own. */
const warmup = (w: Workload): Workload => ({ ...w, cookieBase: 1_000_000n });

/**
 * One full pipeline in a child process of this script (its own heap and its own
 * JIT feedback); `between` runs after the child's warm-up and before its measured
 * run (the receiver's count).
 */
async function fullPipelineAlone(workload: Workload, endpoint: string, path: SpanPath, protocol: Protocol, between: () => Promise<void>): Promise<FullRun> {
  const argv = [...process.execArgv, fileURLToPath(import.meta.url), '--one', `${path}:${protocol}`, '--endpoint', endpoint];
  argv.push('--requests', String(workload.requests), '--sockets', String(workload.sockets));
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = once(child, 'exit') as Promise<[number | null]>;
  try {
    const [warm] = (await once(child, 'message')) as [unknown];
    if (warm !== 'warm') throw new Error(`bench/pipeline.ts --one ${path}:${protocol}: ${JSON.stringify(warm)} before its warm-up ended`);
    await between();
    child.send('go');
    const [run] = (await once(child, 'message')) as [FullRun];
    const [code] = await exited;
    if (code !== 0) throw new Error(`bench/pipeline.ts --one ${path}:${protocol} exited ${code}`);
    return run;
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

interface FullRate {
  rate: number;
  wall: number;
}

interface Round {
  corr: number;
  build: number;
  encode: number;
  enc: number;
  transport: Record<Protocol, number>;
  /** Full runs by `${path} ${protocol}`. */
  full: Record<string, FullRate>;
  bytesPerSpan: number;
  oursBytesPerSpan: number;
  /** Spans that did not arrive (full and transport runs). */
  missing: number;
  counters: ExportCounters;
}

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
const PROTOCOLS: Protocol[] = ['grpc', 'http/protobuf'];

async function round(workload: Workload, receivers: Record<Protocol, Receiver>, flip: boolean): Promise<Round> {
  let missing = 0;
  let counters: ExportCounters | undefined;
  // The full pipelines first, each on a clean heap, in alternating order from round to round.
  const full: Record<string, FullRate> = {};
  for (const protocol of PROTOCOLS) {
    const r = receivers[protocol];
    for (const path of (flip ? ['readable', 'encoded'] : ['encoded', 'readable']) as SpanPath[]) {
      let before = 0;
      const run = await fullPipelineAlone(workload, r.endpoint, path, protocol, async () => {
        before = (await r.count()).spans;
      });
      const arrived = (await r.count()).spans - before;
      missing += run.counters.enqueued - arrived;
      full[`${path} ${protocol}`] = { rate: arrived / run.cpu, wall: arrived / run.wall };
      if (path === 'encoded' && protocol === 'grpc') counters = run.counters;
    }
  }
  const transport = {} as Record<Protocol, number>;
  for (const protocol of PROTOCOLS) {
    gc();
    const r = receivers[protocol];
    const before = (await r.count()).spans;
    const t = await transportAlone(workload, r.endpoint, protocol, counters!.enqueued);
    missing += t.sent - ((await r.count()).spans - before);
    transport[protocol] = t.rate;
  }

  // The stages alone, on the whole run's records in memory.
  const records = allRecords(workload);
  gc();
  const corr = measure(() => {
    let n = 0;
    correlateAll(records, () => n++);
    return n;
  });
  const spans = corr.result;

  // The new path without the transport: encode, assemble each 2048-span request, release.
  gc();
  const encoder = new KernelSpanEncoder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const buffers = new RequestBuffers();
  const serializer = encodedSpanSerializer(buffers);
  const encode = measure(() => {
    let bytes = 0;
    let batch: EncodedSpan[] = [];
    const flush = () => {
      const request = serializer.serializeRequest(batch)!;
      bytes += request.length;
      buffers.give(request);
      for (const s of batch) encoder.release(s);
      batch = [];
    };
    correlateAll(records, (k) => {
      batch.push(encoder.encode(k));
      if (batch.length === 2048) flush();
    });
    flush();
    return bytes;
  });

  gc();
  const builder = new SpanBuilder({ clockOffsetNs: OFFSET, resourceFor: () => resource });
  const built: ReadableSpan[] = [];
  const build = measure(() => correlateAll(records, (k) => built.push(builder.build(k))));

  // Baseline: the OTel protobuf serializer alone on the built spans, in the same batch size.
  gc();
  const enc = measure(() => {
    let bytes = 0;
    for (let i = 0; i < built.length; i += 2048) bytes += ProtobufTraceSerializer.serializeRequest(built.slice(i, i + 2048))!.length;
    return bytes;
  });
  return {
    corr: spans / corr.cpu,
    build: spans / build.cpu,
    encode: spans / encode.cpu,
    enc: spans / enc.cpu,
    transport,
    full,
    bytesPerSpan: enc.result / spans,
    oursBytesPerSpan: encode.result / spans,
    missing,
    counters: counters!,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  if (args.one) {
    const [path, protocol] = args.one.split(':') as [SpanPath, Protocol];
    if (!['encoded', 'readable'].includes(path) || !PROTOCOLS.includes(protocol) || !args.endpoint) {
      throw new Error(`--one takes encoded|readable:grpc|http/protobuf and --endpoint, not ${args.one}`);
    }
    await warmThenFull({ requests: REQUESTS, sockets: SOCKETS, cookieBase: 10_000_000n }, args.endpoint, path, protocol);
    return;
  }
  const receivers = { grpc: await startReceiver('grpc'), 'http/protobuf': await startReceiver('http/protobuf') };
  const stopAll = () => Promise.all(PROTOCOLS.map((p) => stopReceiver(receivers[p])));
  // Warm up every stage on a small run so the JIT is not measured.
  await round({ requests: 20_000, sockets: SOCKETS, cookieBase: 1_000_000n }, receivers, false);

  const workload: Workload = { requests: REQUESTS, sockets: SOCKETS, cookieBase: 10_000_000n };
  let recordCount = 0;
  let spanCount = 0;
  const counter = new SocketCorrelator({ emit: () => spanCount++, clock: 'records' });
  for (const slice of slices(workload)) {
    recordCount += slice.length;
    for (const r of slice) counter.push(r);
  }
  counter.flush();
  if (args['full-only']) {
    const protocol: Protocol = args.http ? 'http/protobuf' : 'grpc';
    const pipeline = fullPipeline(receivers[protocol].endpoint, args.readable ? 'readable' : 'encoded', protocol);
    await pipeline.run(warmup(workload));
    const full = await pipeline.run(workload);
    await pipeline.shutdown();
    await stopAll();
    console.log(`full: ${fmt(spanCount / full.cpu)} spans per CPU-second (${fmt(spanCount / full.wall)} spans/s wall)`);
    return;
  }
  const rounds: Round[] = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await round(workload, receivers, i % 2 === 1));
  await stopAll();

  const m = (f: (r: Round) => number) => median(rounds.map(f));
  const rate = (key: string) => m((r) => r.full[key].rate);
  const wall = (key: string) => m((r) => r.full[key].wall);
  const lost = rounds.reduce((n, r) => n + (r.missing !== 0 ? 1 : 0), 0);
  const c = rounds[rounds.length - 1].counters;
  const row = (label: string, v: number, note = '') => `  ${label.padEnd(56)}${fmt(v).padStart(10)} spans/s${note}`;
  const fullRow = (label: string, key: string) => row(label, rate(key), `  (${fmt(wall(key))} spans/s wall clock)`);
  const ratio = (a: string, b: string) => m((r) => r.full[a].rate / r.full[b].rate).toFixed(2);
  const full = rate('encoded grpc');
  const lines = [
    `pipeline benchmark: ${fmt(REQUESTS)} requests on ${SOCKETS} keep-alive sockets → ${fmt(recordCount)} records → ${fmt(spanCount)} kernel spans`,
    `node ${process.version}; medians of ${ROUNDS} rounds; rates are per CPU-second of the process that ran them (all its threads; each full pipeline in its own), receivers in child processes`,
    '',
    row('correlator alone', m((r) => r.corr)),
    row('correlator + span builder (ReadableSpans)', m((r) => r.build)),
    row('baseline: OTel protobuf serializer alone', m((r) => r.enc), `  (${m((r) => r.bytesPerSpan).toFixed(0)} B/span)`),
    row('correlator + kspan encoder + requests, no transport', m((r) => r.encode), `  (${m((r) => r.oursBytesPerSpan).toFixed(0)} B/span)`),
    row('gRPC transport alone (2048-span requests re-sent)', m((r) => r.transport.grpc)),
    row('OTLP/HTTP transport alone (the same)', m((r) => r.transport['http/protobuf'])),
    fullRow('before: → builder → OTel exporter → gRPC → receiver', 'readable grpc'),
    fullRow('full: → kspan encoder → gRPC → receiver', 'encoded grpc'),
    fullRow('before, OTLP/HTTP', 'readable http/protobuf'),
    fullRow('full, OTLP/HTTP', 'encoded http/protobuf'),
    '',
    `  full / before, gRPC (same run):           ${ratio('encoded grpc', 'readable grpc')}×   (target ≥ 2.92×: 400 k where before made 137 k)`,
    `  full / before, OTLP/HTTP (same run):      ${ratio('encoded http/protobuf', 'readable http/protobuf')}×`,
    `  full (gRPC) / OTel serializer alone:      ${(full / m((r) => r.enc)).toFixed(2)}×`,
    `  target ≥ 400,000 spans/s on one core:     ${full >= 400_000 ? 'met' : 'NOT met'} on this machine (gRPC); OTLP/HTTP ${rate('encoded http/protobuf') >= 400_000 ? 'met' : 'NOT met'}`,
    `  every span arrived in ${ROUNDS - lost} of ${ROUNDS} rounds; last round (full, gRPC): queue drops ${c.droppedQueueFull}, export failures ${c.exportFailures}, batches ${c.batches}`,
  ];
  if (args.json) {
    // The first five rates keep their meaning for `make bench` (full: the encoded path over gRPC).
    const rates = {
      encodingBaseline: m((r) => r.enc),
      correlator: m((r) => r.corr),
      correlatorAndBuilder: m((r) => r.build),
      full,
      fullWall: wall('encoded grpc'),
      before: rate('readable grpc'),
      fullHttp: rate('encoded http/protobuf'),
      beforeHttp: rate('readable http/protobuf'),
      encoderNoTransport: m((r) => r.encode),
      transportGrpc: m((r) => r.transport.grpc),
      transportHttp: m((r) => r.transport['http/protobuf']),
    };
    const ratios = {
      fullOverBefore: m((r) => r.full['encoded grpc'].rate / r.full['readable grpc'].rate),
      fullOverBeforeHttp: m((r) => r.full['encoded http/protobuf'].rate / r.full['readable http/protobuf'].rate),
    };
    console.log(
      JSON.stringify({
        requests: REQUESTS,
        sockets: SOCKETS,
        rounds: ROUNDS,
        records: recordCount,
        spans: spanCount,
        spansPerCpuSecond: rates,
        ratios,
        bytesPerSpan: m((r) => r.bytesPerSpan),
        roundsAllArrived: ROUNDS - lost,
        lastRound: c,
      }),
    );
  } else console.log(lines.join('\n'));
  if (lost) process.exitCode = 1;
}

await main();
