/**
 * `kspan run --metrics-listen`: the Prometheus endpoint says exactly what the
 * test caused. A traced native server answers requests of which one in ten is
 * sampled: the unsampled exchanges' records stay in the kernel (counted two per
 * exchange), the sampled ones' spans are exported (counted once each, equal to
 * what the OTLP receiver got); targets found and forgotten follow the processes;
 * each BPF program's run count and run time bracket what `bpftool prog show`
 * reads in between two scrapes. A publisher writing invalid windows makes
 * exactly one invalid context read per round and thread.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { allowPerfEvents } from '../helpers/perf-paranoid.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { tracedServerPath } from '../helpers/tcp-fixtures.ts';
import { drive } from '../helpers/traceparent-client.ts';
import { buildTlsFixtures, startPublisher, TLS_VARIANTS } from '../helpers/tls-fixtures.ts';
import { scaled } from '../helpers/timeouts.ts';

const REQUESTS = 30;
const REQ = 200;
const RESP = 3_000;
const sampled = (i: number) => i % 10 === 3;
const SAMPLED = Array.from({ length: REQUESTS }, (_, i) => i).filter(sampled).length;

/** One sample of the exposition: name, labels (without the scope's), value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    delete labels.otel_scope_name;
    delete labels.otel_scope_version;
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The one sample of `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.equal(hits.length, 1, `one sample of ${name} ${JSON.stringify(labels)} (${hits.length})`);
  return hits[0].value;
}

async function scrape(url: string): Promise<Sample[]> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

/** Scrapes until `done` holds (the exporter and the target refresh run on timers). */
async function scrapeUntil(url: string, done: (s: Sample[]) => boolean, what: string, timeoutMs = 15_000): Promise<Sample[]> {
  const deadline = Date.now() + scaled(timeoutMs);
  for (;;) {
    const s = await scrape(url);
    if (done(s)) return s;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function startAgent(group: ProcessGroup, args: string[]): Promise<{ agent: Proc; url: string }> {
  const agent = group.start(KSPAN_BIN, ['run', ...args, '--metrics-listen', '127.0.0.1:0']);
  const url = (await agent.waitStderr(/"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/, 20_000))[1];
  await agent.waitStderr(/"msg":"tracing"/, 20_000);
  return { agent, url };
}

/** A client that, on "go", opens and closes connections to 127.0.0.1:PORT one after another, sending nothing. */
const CLIENT = `
const net = require('node:net');
const [port, n] = process.argv.slice(1).map(Number);
console.log('ready');
process.stdin.once('data', async () => {
  for (let i = 0; i < n; i++) {
    await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.end());
      s.on('close', resolve);
      s.on('error', resolve);
    });
  }
  console.log('done');
});
`;

interface BpftoolProg {
  id: number;
  name: string;
  run_cnt?: number;
  run_time_ns?: number;
}

describe('kspan run --metrics-listen', e2eOptions(), () => {
  let group: ProcessGroup;
  beforeEach(() => {
    group = new ProcessGroup();
  });
  afterEach(async () => {
    await group.killAll();
  });

  test('counters equal what the workload caused; BPF run counts bracket bpftool prog show', async () => {
    const receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
    try {
      const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
      const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
      // A second target that outlives the server, so the agent keeps running after the server exits.
      const idle = group.start('sleep', ['600']);
      const { agent, url } = await startAgent(group, ['--no-sched', '--pid', String(server.pid), '--pid', String(idle.pid), '--otlp-endpoint', receiver.endpoint]);

      const before = await scrape(url);
      assert.equal(value(before, 'kspan_targets'), 2);
      assert.equal(value(before, 'kspan_targets_found_total'), 2);
      assert.equal(value(before, 'kspan_targets_forgotten_total'), 0);
      assert.equal(value(before, 'kspan_bpf_stats_enabled'), 1);

      server.send('go');
      await drive(port, REQUESTS, REQ, RESP, sampled);
      await server.waitLine(/^done$/);
      await server.exited;
      await receiver.waitForSpans(2 * SAMPLED);

      const after = await scrapeUntil(
        url,
        (s) => value(s, 'kspan_spans_exported_total') === 2 * SAMPLED && value(s, 'kspan_targets_forgotten_total') === 1,
        'the sampled spans exported and the server forgotten',
      );
      assert.equal(receiver.spans.length, 2 * SAMPLED);
      assert.equal(value(after, 'kspan_spans_exported_total'), receiver.spans.length);
      assert.equal(value(after, 'kspan_spans_created_total'), 2 * SAMPLED);
      for (const reason of ['unsampled', 'no_context', 'queue_full', 'export_failed', 'shutdown']) {
        assert.equal(value(after, 'kspan_spans_dropped_total', { kspan_drop_reason: reason }), 0, `spans dropped: ${reason}`);
      }
      assert.equal(value(after, 'kspan_records_dropped_total', { kspan_drop_reason: 'unsampled' }), 2 * (REQUESTS - SAMPLED));
      for (const reason of ['ring_full', 'socket_table_full', 'no_cookie', 'undecodable', 'handler_error', 'orphans_ratio']) {
        assert.equal(value(after, 'kspan_records_dropped_total', { kspan_drop_reason: reason }), 0, `records lost: ${reason}`);
      }
      assert.equal(value(after, 'kspan_records_total', { kspan_record_type: 'recv' }), SAMPLED);
      assert.equal(value(after, 'kspan_records_total', { kspan_record_type: 'send' }), SAMPLED);
      assert.equal(value(after, 'kspan_export_failures_total'), 0);
      assert.equal(value(after, 'kspan_export_queue_size'), 0);
      assert.equal(value(after, 'kspan_export_queue_capacity'), 16384);
      assert.equal(value(after, 'kspan_targets'), 1);
      assert.equal(value(after, 'kspan_targets_found_total'), 2);
      for (const outcome of ['torn', 'invalid', 'fault', 'node_rejected', 'suspect']) {
        assert.equal(value(after, 'kspan_context_reads_refused_total', { kspan_context_outcome: outcome }), 0, `context reads: ${outcome}`);
      }

      // The agent's own CPU and RSS, against /proc read right after.
      const stat = readFileSync(`/proc/${agent.pid}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = 100; // USER_HZ
      const procCpu = (Number(fields[11]) + Number(fields[12])) / ticks;
      const cpu = value(after, 'process_cpu_time_seconds_total', { cpu_mode: 'user' }) + value(after, 'process_cpu_time_seconds_total', { cpu_mode: 'system' });
      assert.ok(cpu > 0 && cpu <= procCpu + 0.05, `CPU ${cpu} s, /proc says ${procCpu} s after`);
      const rss = value(after, 'process_memory_usage_bytes');
      const procRss = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${agent.pid}/status`, 'latin1'))![1]) * 1024;
      assert.ok(Math.abs(rss - procRss) < procRss * 0.25, `RSS ${rss} B, /proc says ${procRss} B`);

      // Per-program run counts and times: bpftool's reading lies between two scrapes.
      const first = await scrape(url);
      const progs = JSON.parse(execFileSync('bpftool', ['prog', 'show', '--json'], { encoding: 'utf8' })) as BpftoolProg[];
      const second = await scrape(url);
      const runs = first.filter((s) => s.name === 'kspan_bpf_program_runs_total');
      const names = runs.map((s) => s.labels.kspan_bpf_program_name).sort();
      assert.ok(names.includes('on_set_state') && names.includes('on_destroy_sock'), `programs: ${names.join(', ')}`);
      for (const r of runs) {
        const labels = { kspan_bpf_program_name: r.labels.kspan_bpf_program_name };
        const id = Number(r.labels.kspan_bpf_program_id);
        const p = progs.find((x) => x.id === id);
        assert.ok(p, `program ${labels.kspan_bpf_program_name} (id ${id}) in bpftool prog show`);
        // bpftool names it in full from the program's BTF, or by the kernel's first 15 bytes.
        assert.ok([labels.kspan_bpf_program_name, labels.kspan_bpf_program_name.slice(0, 15)].includes(p.name), `bpftool's name ${p.name}`);
        const [cnt1, cnt2] = [value(first, 'kspan_bpf_program_runs_total', labels), value(second, 'kspan_bpf_program_runs_total', labels)];
        const bpftoolCnt = p.run_cnt ?? 0;
        assert.ok(cnt1 <= bpftoolCnt && bpftoolCnt <= cnt2, `${p.name}: run_cnt ${bpftoolCnt} between ${cnt1} and ${cnt2}`);
        const ns = (s: Sample[]) => Math.round(value(s, 'kspan_bpf_program_run_time_seconds_total', labels) * 1e9);
        const bpftoolNs = p.run_time_ns ?? 0;
        assert.ok(ns(first) <= bpftoolNs && bpftoolNs <= ns(second), `${p.name}: run_time_ns ${bpftoolNs} between ${ns(first)} and ${ns(second)}`);
      }
      // The workload ran through the send/recv hooks: at least one run per request and direction.
      const sendHook = runs.find((s) => /^on_send_length$|^(on|paired)_(write|sendto)_exit$/.test(s.labels.kspan_bpf_program_name));
      assert.ok(sendHook && sendHook.value >= REQUESTS, `send hook ran for every response (${sendHook?.value})`);

      agent.child.kill('SIGTERM');
      const { code } = await agent.exited;
      assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    } finally {
      await receiver.stop();
    }
  });

  test('a publisher with invalid windows: one invalid context read per round and thread, none torn', async () => {
    const sockets: Socket[] = [];
    const sink: Server = createServer((s) => {
      sockets.push(s);
      s.on('data', (d) => s.write(d));
      s.on('error', () => {});
    });
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
    const port = (sink.address() as { port: number }).port;
    const dir = buildTlsFixtures();
    const rounds = 200;
    const threads = 2;
    const pub = await startPublisher(dir, TLS_VARIANTS.find((v) => v.name === 'initial-exec')!, { flip: true, rounds, threads, connect: port });
    try {
      const { agent, url } = await startAgent(group, ['--pid', String(pub.pid)]);
      await agent.waitStderr(/"scheme":"otel_thread_ctx_v1"/, 20_000);
      pub.go();
      for (const t of pub.threads) await pub.waitLine(new RegExp(`^done ${t.index}$`));
      const s = await scrapeUntil(
        url,
        (x) => value(x, 'kspan_context_reads_refused_total', { kspan_context_outcome: 'invalid' }) >= rounds * threads,
        'every invalid window counted',
      );
      assert.equal(value(s, 'kspan_context_reads_refused_total', { kspan_context_outcome: 'invalid' }), rounds * threads);
      assert.equal(value(s, 'kspan_context_reads_refused_total', { kspan_context_outcome: 'torn' }), 0);
      assert.equal(value(s, 'kspan_context_reads_refused_total', { kspan_context_outcome: 'fault' }), 0);
      assert.equal(value(s, 'kspan_context_resolutions_total', { kspan_context_outcome: 'resolved' }) >= 1, true);
      agent.child.kill('SIGTERM');
      await agent.exited;
    } finally {
      await pub.stop();
      for (const s of sockets) s.destroy();
      await new Promise((r) => sink.close(r));
    }
  });

  test('a forced ring overflow: records lost equal what was made less what was delivered', async () => {
    // A one-page ring holds 12 records (312 B + an 8-byte header each). The
    // agent is stopped (SIGSTOP) while a traced client makes CONNECTIONS
    // connections with no context: each makes exactly two ring records (connect,
    // close), so what the agent did not get was lost, and counted.
    const CONNECTIONS = 40;
    const sink: Server = createServer((s) => s.on('error', () => {}).resume());
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
    const port = (sink.address() as { port: number }).port;
    const client = group.start(process.execPath, ['-e', CLIENT, String(port), String(CONNECTIONS)]);
    try {
      await client.waitLine(/^ready$/);
      const agent = group.start(KSPAN_BIN, ['run', '--pid', String(client.pid), '--metrics-listen', '127.0.0.1:0'], {
        env: { ...process.env, KSPAN_TEST_RING_BYTES: '4096' },
      });
      const url = (await agent.waitStderr(/"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/, 20_000))[1];
      await agent.waitStderr(/"msg":"tracing"/, 20_000);
      agent.child.kill('SIGSTOP');
      try {
        client.send('go');
        await client.waitLine(/^done$/, 30_000);
        await new Promise((r) => setTimeout(r, 500)); // the last close records
      } finally {
        agent.child.kill('SIGCONT');
      }
      const delivered = (s: Sample[]) => value(s, 'kspan_records_total', { kspan_record_type: 'connect' }) + value(s, 'kspan_records_total', { kspan_record_type: 'close' });
      const lost = (s: Sample[]) => value(s, 'kspan_records_dropped_total', { kspan_drop_reason: 'ring_full' });
      const s = await scrapeUntil(url, (x) => delivered(x) + lost(x) === 2 * CONNECTIONS, 'every record delivered or counted lost');
      assert.equal(delivered(s), 12, 'a full one-page ring');
      assert.equal(lost(s), 2 * CONNECTIONS - 12);
      for (const t of ['accept', 'send', 'recv', 'retransmit', 'reset']) assert.equal(value(s, 'kspan_records_total', { kspan_record_type: t }), 0, t);
      agent.child.kill('SIGTERM');
      const { code } = await agent.exited;
      assert.equal(code, 3, 'records were lost');
      const last = JSON.parse(agent.stderr.filter((l) => l.startsWith('{')).at(-1)!) as { kernel: Record<string, number> };
      assert.equal(last.kernel.KSPAN_C_RINGBUF_FULL, 2 * CONNECTIONS - 12, 'the stop line says the same');
    } finally {
      await new Promise((r) => sink.close(r));
    }
  });

  test('without CAP_SYS_ADMIN: BPF statistics cannot be turned on, said once; kspan runs on without run counts', async (t) => {
    const sysctlOn = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'latin1').trim() === '1';
    // Debian's perf_event_paranoid 3 refuses perf events (classic tracepoints: send/recv before 6.3) without CAP_SYS_ADMIN.
    t.after(allowPerfEvents());
    const idle = group.start('sleep', ['600']);
    const agent = group.start('setpriv', ['--bounding-set', '-sys_admin', '--', KSPAN_BIN, 'run', '--pid', String(idle.pid), '--metrics-listen', '127.0.0.1:0']);
    const url = (await agent.waitStderr(/"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/, 20_000))[1];
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    const warned = agent.stderr.filter((l) => l.includes('BPF run-time statistics are off'));
    const s = await scrape(url);
    if (sysctlOn) {
      // The host turned the statistics on itself: kspan uses them.
      assert.equal(value(s, 'kspan_bpf_stats_enabled'), 1);
    } else {
      assert.equal(warned.length, 1);
      assert.match(warned[0], /"message":"bpf\(BPF_ENABLE_STATS\) failed: EPERM \(1\)"/);
      assert.match(warned[0], /grant CAP_SYS_ADMIN or set sysctl kernel\.bpf_stats_enabled=1/);
      assert.equal(value(s, 'kspan_bpf_stats_enabled'), 0);
      assert.equal(s.filter((x) => x.name === 'kspan_bpf_program_runs_total' || x.name === 'kspan_bpf_program_run_time_seconds_total').length, 0);
    }
    assert.ok(s.filter((x) => x.name === 'kspan_bpf_program_recursion_misses_total').length >= 5, 'skipped runs are counted regardless');
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
  });

  test('a port in use fails the start with KSPAN_ERR_METRICS, before the kernel is touched', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as { port: number }).port;
    try {
      const idle = group.start('sleep', ['600']);
      const agent = group.start(KSPAN_BIN, ['run', '--pid', String(idle.pid), '--metrics-listen', String(port)]);
      const { code } = await agent.exited;
      assert.equal(code, 1);
      const err = agent.stderr.join('\n');
      assert.match(err, new RegExp(`kspan: KSPAN_ERR_METRICS: cannot serve metrics on 127\\.0\\.0\\.1:${port}: EADDRINUSE \\(another process listens there`));
      assert.doesNotMatch(err, /"msg":"tracing"/);
    } finally {
      await new Promise((r) => taken.close(r));
    }
  });
});
