/**
 * Self-metrics without the kernel: --metrics-listen's checks, the Prometheus
 * names, the exposition of a known snapshot (exact values, names, labels), the
 * same metrics pushed over OTLP gRPC, docs/METRICS.md documenting exactly the
 * metric table, and the bpf_prog_info offsets against the running kernel's BTF.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { loadConfig } from '../../src/core/config.ts';
import { KspanError } from '../../src/core/errors.ts';
import { METRICS, type AgentSnapshot } from '../../src/metrics/agent-metrics.ts';
import { BPF_PROG_INFO } from '../../src/kernel/bpf-object.ts';
import { AgentMetrics } from '../../src/metrics/metrics-server.ts';
import { prometheusName } from '../../src/metrics/prometheus-names.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { rawExportService } from '../helpers/otlp-receiver.ts';

const silent = pino({ level: 'silent' });

describe('--metrics-listen', () => {
  const listen = (raw: string) => loadConfig('run', { argv: ['--pid', '1', '--metrics-listen', raw], env: {} }).metricsListen;

  test('PORT alone is loopback; HOST:PORT and [IPv6]:PORT as given; off by default', () => {
    assert.deepEqual(listen('9464'), { host: '127.0.0.1', port: 9464 });
    assert.deepEqual(listen('0.0.0.0:9464'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(listen('[::1]:9000'), { host: '::1', port: 9000 });
    assert.deepEqual(listen('localhost:0'), { host: 'localhost', port: 0 });
    assert.equal(loadConfig('run', { argv: ['--pid', '1'], env: {} }).metricsListen, undefined);
    const fromEnv = loadConfig('run', { argv: ['--pid', '1'], env: { KSPAN_METRICS_LISTEN: '9100' } });
    assert.deepEqual(fromEnv.metricsListen, { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(fromEnv.origins.metricsListen, { source: 'env', name: 'KSPAN_METRICS_LISTEN' });
  });

  test('a malformed address is a usage error naming it', () => {
    for (const [raw, problem] of [['abc', 'not a listen address'], [':9464', 'not a listen address'], ['70000', 'not a port'], ['http://x:1', 'not a listen address']]) {
      assert.throws(() => listen(raw), (err: unknown) => {
        assert.ok(err instanceof KspanError);
        assert.equal(err.code, 'KSPAN_ERR_USAGE');
        assert.equal(err.message, `--metrics-listen ${raw}: ${problem} (give PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT, e.g. 9464 or 0.0.0.0:9464)`);
        return true;
      });
    }
  });

  test('OTLP pushes: endpoint and interval from the standard variables', () => {
    const c = loadConfig('run', { argv: ['--pid', '1'], env: { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'collector:4317', OTEL_METRIC_EXPORT_INTERVAL: '5000' } });
    assert.equal(c.metricsOtlpEndpoint, 'http://collector:4317');
    assert.equal(c.metricsOtlpIntervalMs, 5000);
    assert.throws(() => loadConfig('run', { argv: ['--pid', '1'], env: { OTEL_METRIC_EXPORT_INTERVAL: '5' } }), /OTEL_METRIC_EXPORT_INTERVAL=5: not a time in milliseconds/);
  });
});

test('Prometheus names: dots to underscores, the unit as a suffix, _total on counters', () => {
  assert.equal(prometheusName('process.cpu.time', 's', true), 'process_cpu_time_seconds_total');
  assert.equal(prometheusName('process.memory.usage', 'By', false), 'process_memory_usage_bytes');
  assert.equal(prometheusName('kspan.records', '{record}', true), 'kspan_records_total');
  assert.equal(prometheusName('kspan.bpf.program.run.time', 's', true), 'kspan_bpf_program_run_time_seconds_total');
  assert.equal(prometheusName('kspan.targets', '{process}', false), 'kspan_targets');
});

const promNameOf = (m: (typeof METRICS)[number]) => prometheusName(m.name, m.unit, m.instrument === 'counter');

function snapshot(): AgentSnapshot {
  const kernel = {
    decode_errors: 2, ring_handler_errors: 1, ring_wait_errors: 0,
    KSPAN_C_RINGBUF_FULL: 7, KSPAN_C_SOCK_TABLE_FULL: 5, KSPAN_C_NO_COOKIE: 3, KSPAN_C_CTX_TORN: 11, KSPAN_C_CTX_INVALID: 13,
    KSPAN_C_CTX_FAULT: 17, KSPAN_C_CTX_SUSPECT: 19, KSPAN_C_CTX_NODE_REJECTED: 23, KSPAN_C_UNSAMPLED: 29, KSPAN_C_ORPHAN_SKIPPED: 31,
    KSPAN_C_IDLE_QUEUE_FULL: 0, KSPAN_C_MAX: 0,
  };
  return {
    kernel,
    context: { resolved: 4, notReady: 1, failed: 2, gone: 0, republished: 0 },
    spans: {
      correlator: {
        records: 100, recordsByType: { accept: 1, connect: 2, send: 40, recv: 41, retransmit: 3, reset: 4, close: 9 },
        spans: 80, orphanSpans: 6, exchanges: 0, unsampledSpans: 12, acceptsOfDroppedExchanges: 0, incompleteSpans: 5,
        evictedLru: 8, evictedIdle: 10, processExits: 0, lateEvents: 0, eventsDropped: 0, closeUnknown: 0,
      },
      sched: { records: 9, spans: 8, unsampledSpans: 1, offCpuEvents: 37, offCpuEventsDropped: 43, offCpuOrphans: 47, offCpuUnsymbolized: 0 },
      export: { enqueued: 80, exported: 70, droppedQueueFull: 3, droppedFailed: 4, droppedShutdown: 1, batches: 6, exportFailures: 9, retries: 8 },
      sockets: 33,
      held: 2,
    },
    exportQueueCapacity: 16384,
    orphansExported: false,
    targets: { traced: 3, found: 5, forgotten: 2 },
    programs: [{ name: 'on_send_length', id: 4242, runCount: 1000n, runTimeNs: 2_500_000n, recursionMisses: 1n }],
    bpfStatsEnabled: true,
    cpu: { user: 1_500_000, system: 250_000 },
    rssBytes: 123_456_789,
  } as AgentSnapshot;
}

function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^(\S+?)(\{.*\})? (\S+)$/.exec(line)!;
    const labels = (m[2] ?? '').replace(/,?otel_scope_(name|version)="[^"]*"/g, '').replace(/^\{,?/, '{').replace(/^\{\}$/, '');
    out.set(m[1] + labels, Number(m[3]));
  }
  return out;
}

describe('the Prometheus endpoint', () => {
  test('serves a snapshot with exact values, names and labels; other paths are 404', async () => {
    const metrics = await AgentMetrics.start({ listen: { host: '127.0.0.1', port: 0 }, log: silent });
    try {
      metrics.observe(snapshot);
      assert.match(metrics.url!, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const res = await fetch(metrics.url!);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
      const s = samples(await res.text());
      const expect: [string, number][] = [
        ['kspan_records_total{kspan_record_type="recv"}', 41],
        ['kspan_records_total{kspan_record_type="retransmit"}', 3],
        ['kspan_records_dropped_total{kspan_drop_reason="ring_full"}', 7],
        ['kspan_records_dropped_total{kspan_drop_reason="socket_table_full"}', 5],
        ['kspan_records_dropped_total{kspan_drop_reason="no_cookie"}', 3],
        ['kspan_records_dropped_total{kspan_drop_reason="undecodable"}', 2],
        ['kspan_records_dropped_total{kspan_drop_reason="handler_error"}', 1],
        ['kspan_records_dropped_total{kspan_drop_reason="unsampled"}', 29],
        ['kspan_records_dropped_total{kspan_drop_reason="orphans_ratio"}', 31],
        ['kspan_context_reads_refused_total{kspan_context_outcome="torn"}', 11],
        ['kspan_context_reads_refused_total{kspan_context_outcome="invalid"}', 13],
        ['kspan_context_reads_refused_total{kspan_context_outcome="fault"}', 17],
        ['kspan_context_reads_refused_total{kspan_context_outcome="node_rejected"}', 23],
        ['kspan_context_reads_refused_total{kspan_context_outcome="suspect"}', 19],
        ['kspan_context_resolutions_total{kspan_context_outcome="failed"}', 2],
        ['kspan_spans_created_total', 80 + 12 + 6],
        ['kspan_spans_exported_total', 70],
        ['kspan_spans_dropped_total{kspan_drop_reason="unsampled"}', 12],
        ['kspan_spans_dropped_total{kspan_drop_reason="no_context"}', 6],
        ['kspan_spans_dropped_total{kspan_drop_reason="queue_full"}', 3],
        ['kspan_spans_dropped_total{kspan_drop_reason="export_failed"}', 4],
        ['kspan_spans_dropped_total{kspan_drop_reason="shutdown"}', 1],
        ['kspan_spans_incomplete_total', 5],
        ['kspan_sched_off_cpu_events_total{kspan_sched_off_cpu_outcome="on_span"}', 37],
        ['kspan_sched_off_cpu_events_total{kspan_sched_off_cpu_outcome="dropped"}', 43],
        ['kspan_sched_off_cpu_events_total{kspan_sched_off_cpu_outcome="orphaned"}', 47],
        ['kspan_export_batches_total', 6],
        ['kspan_export_failures_total', 9],
        ['kspan_export_retries_total', 8],
        ['kspan_export_queue_size', 2],
        ['kspan_export_queue_capacity', 16384],
        ['kspan_targets', 3],
        ['kspan_targets_found_total', 5],
        ['kspan_targets_forgotten_total', 2],
        ['kspan_connections', 33],
        ['kspan_connections_evicted_total{kspan_eviction_reason="lru"}', 8],
        ['kspan_connections_evicted_total{kspan_eviction_reason="idle"}', 10],
        ['kspan_bpf_stats_enabled', 1],
        ['kspan_bpf_program_runs_total{kspan_bpf_program_name="on_send_length",kspan_bpf_program_id="4242"}', 1000],
        ['kspan_bpf_program_run_time_seconds_total{kspan_bpf_program_name="on_send_length",kspan_bpf_program_id="4242"}', 0.0025],
        ['kspan_bpf_program_recursion_misses_total{kspan_bpf_program_name="on_send_length",kspan_bpf_program_id="4242"}', 1],
        ['process_cpu_time_seconds_total{cpu_mode="user"}', 1.5],
        ['process_cpu_time_seconds_total{cpu_mode="system"}', 0.25],
        ['process_memory_usage_bytes', 123_456_789],
      ];
      for (const [k, v] of expect) assert.equal(s.get(k), v, k);
      // Every metric of the table is there, under its Prometheus name.
      const names = new Set([...s.keys()].map((k) => k.replace(/\{.*$/, '')));
      for (const m of METRICS) assert.ok(names.has(promNameOf(m)), `${m.name} as ${promNameOf(m)}`);
      assert.equal((await fetch(metrics.url!.replace('/metrics', '/other'))).status, 404);
    } finally {
      await metrics.shutdown();
    }
  });

  test('with --orphans, spans without context are exported, not dropped; with statistics off, no run counts or times (skipped runs still)', async () => {
    const metrics = await AgentMetrics.start({ listen: { host: '127.0.0.1', port: 0 }, log: silent });
    try {
      metrics.observe(() => ({ ...snapshot(), orphansExported: true, bpfStatsEnabled: false }));
      const s = samples(await metrics.scrape());
      assert.equal(s.get('kspan_spans_dropped_total{kspan_drop_reason="no_context"}'), 0);
      assert.equal(s.get('kspan_spans_created_total'), 80 + 12);
      assert.equal(s.get('kspan_bpf_stats_enabled'), 0);
      assert.deepEqual([...s.keys()].filter((k) => k.startsWith('kspan_bpf_program_')), [
        'kspan_bpf_program_recursion_misses_total{kspan_bpf_program_name="on_send_length",kspan_bpf_program_id="4242"}',
      ]);
    } finally {
      await metrics.shutdown();
    }
  });

  test('a port in use: KSPAN_ERR_METRICS with what to do', async () => {
    const first = await AgentMetrics.start({ listen: { host: '127.0.0.1', port: 0 }, log: silent });
    try {
      const port = Number(new URL(first.url!).port);
      await assert.rejects(AgentMetrics.start({ listen: { host: '127.0.0.1', port }, log: silent }), (err: unknown) => {
        assert.ok(err instanceof KspanError);
        assert.equal(err.code, 'KSPAN_ERR_METRICS');
        assert.equal(err.message, `cannot serve metrics on 127.0.0.1:${port}: EADDRINUSE (another process listens there: give another --metrics-listen port (0 picks a free one))`);
        return true;
      });
    } finally {
      await first.shutdown();
    }
  });
});

test('OTLP: the same metrics pushed to a gRPC receiver, once more at shutdown', async () => {
  const bodies: Buffer[] = [];
  const server = new grpc.Server();
  server.addService(
    rawExportService('/opentelemetry.proto.collector.metrics.v1.MetricsService/Export'),
    {
      Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        bodies.push(call.request);
        cb(null, Buffer.alloc(0));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  try {
    const metrics = await AgentMetrics.start({ otlpEndpoint: `http://127.0.0.1:${port}`, otlpIntervalMs: 60_000, log: silent });
    metrics.observe(snapshot);
    assert.equal(metrics.url, undefined, 'no endpoint without --metrics-listen');
    await metrics.shutdown();
    assert.ok(bodies.length >= 1, 'pushed at shutdown');
    const text = Buffer.concat(bodies).toString('latin1');
    for (const m of METRICS) assert.ok(text.includes(m.name), `${m.name} pushed`);
    assert.ok(text.includes('kspan.drop.reason') && text.includes('ring_full'), 'with its attributes');
  } finally {
    server.forceShutdown();
  }
});

test('docs/METRICS.md documents exactly the metric table: each OpenTelemetry and Prometheus name, unit and attribute', () => {
  const doc = readFileSync(new URL('docs/METRICS.md', `file://${REPO_ROOT}/`), 'utf8');
  const rows = doc.split('\n').filter((l) => /^\| `(kspan|process)\./.test(l));
  assert.equal(rows.length, METRICS.length, 'one table row per metric');
  for (const m of METRICS) {
    const row = rows.find((r) => r.startsWith(`| \`${m.name}\` |`));
    assert.ok(row, `${m.name} has a row`);
    assert.ok(row.includes(`\`${promNameOf(m)}\``), `${m.name}: its Prometheus name ${promNameOf(m)}`);
    assert.ok(row.includes(`\`${m.unit}\``), `${m.name}: its unit ${m.unit}`);
    for (const a of Object.keys(m.attributes ?? {})) assert.ok(row.includes(`\`${a}\``), `${m.name}: attribute ${a}`);
  }
});

test("bpf_prog_info: the offsets read are the running kernel's (BTF)", () => {
  const raw = execFileSync('bpftool', ['btf', 'dump', 'file', '/sys/kernel/btf/vmlinux', 'format', 'raw'], { encoding: 'utf8', maxBuffer: 256 << 20 });
  const start = raw.indexOf("STRUCT 'bpf_prog_info' ");
  assert.ok(start >= 0);
  const block = raw.slice(start, raw.indexOf('\n[', start));
  const bitsOf = (field: string) => Number(new RegExp(`'${field}' type_id=\\d+ bits_offset=(\\d+)`).exec(block)![1]);
  assert.equal(bitsOf('id') / 8, BPF_PROG_INFO.id);
  assert.equal(bitsOf('run_time_ns') / 8, BPF_PROG_INFO.runTimeNs);
  assert.equal(bitsOf('run_cnt') / 8, BPF_PROG_INFO.runCnt);
  assert.equal(bitsOf('recursion_misses') / 8, BPF_PROG_INFO.recursionMisses);
  assert.equal(BPF_PROG_INFO.verifiedInsns, BPF_PROG_INFO.recursionMisses + 8);
  assert.equal(BPF_PROG_INFO.size, BPF_PROG_INFO.verifiedInsns + 8);
});
