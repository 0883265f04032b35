/**
 * Scheduler time per span (bpf/sched.bpf.h) through `kspan events` and `kspan
 * run`, on a C fixture whose worker thread runs jobs of known work, each under
 * its own span, and reports its own /proc/thread-self/schedstat and switch
 * counts at the span's start and end (test/helpers/sched-fixture.ts):
 *  - spin X ms of CPU (then 2 ms asleep): on-CPU ≈ X;
 *  - sleep Y ms: blocked ≈ Y;
 *  - spin pinned to one CPU that a busy sibling thread (no span) shares:
 *    run-queue wait > 0, involuntary switches > 0, no migration;
 *  - an unsampled span, and the same work with no span: nothing, no state in
 *    the table (each switch-out under the unsampled one counted in
 *    KSPAN_C_SCHED_UNSAMPLED);
 *  - a switch-out whose context read faults (the record's page not resident):
 *    counted, and the thread keeps its span (one record, every sleep in it).
 * Each figure is compared with the thread's schedstat deltas over the span.
 *
 * Tolerances. kspan counts from the span's first run to its last: a few
 * microseconds of the thread's own code before the first schedstat read and
 * after the last, and any preemption there, which the fixture's reads leave
 * out; and schedstat's on-CPU figure of a running thread is only as fresh as
 * its last tick (HZ 250: 4 ms), at both reads. So: on-CPU and run-queue within
 * 10 ms + 10 % of schedstat's, switch counts within 2, blocked within 10 ms +
 * 10 % of (wall − on-CPU − run-queue); the 10 ms times KSPAN_TEST_TIMEOUT_SCALE
 * on slow (emulated) machines. The fixture runs every code path once before its
 * first span (under emulation a first run costs translation time).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { agentMapId, mapPids } from '../helpers/discovery-fixtures.ts';
import { cleanExit, KSPAN_BIN, startEvents, stopEvents, stopLine, type EventLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startSchedFixture, type JobReport } from '../helpers/sched-fixture.ts';
import { TIMEOUT_SCALE } from '../helpers/timeouts.ts';

const MS = 1_000_000;
const X = 150;
const Y = 150;
const TRACE = `5c${process.pid.toString(16).padStart(8, '0')}${'0'.repeat(22)}`;
const span = (n: number) => `${n.toString(16).padStart(2, '0')}${'ab'.repeat(7)}`;

function near(actual: number, expected: number, what: string, absMs = 10, rel = 0.1): void {
  // Slow machines (emulated kernels: KSPAN_TEST_TIMEOUT_SCALE) run the thread's own code around the reads slower.
  const tol = absMs * TIMEOUT_SCALE * MS + rel * expected;
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: kspan ${(actual / MS).toFixed(3)} ms, schedstat ${(expected / MS).toFixed(3)} ms (±${(tol / MS).toFixed(1)} ms)`);
}

function nearCount(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 2, `${what}: kspan ${actual}, /proc ${expected}`);
}

/**
 * The threads with state in the agent's `sched_threads` and the count `sched_live`
 * keeps of them (the switch-ins and wakeups skip the table while it is 0: it
 * must never be lower than the entries).
 */
function schedTable(maps: { threads: number; live: number }): { tids: number[]; live: bigint } {
  const tids = mapPids(maps.threads);
  const dump = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'id', String(maps.live), '--json'], { encoding: 'utf8' })) as { value: string[] }[];
  return { tids, live: Buffer.from(dump[0].value.map((b) => parseInt(b, 16))).readBigInt64LE(0) };
}

const delta = (j: JobReport) => ({
  onCpu: j.end.onCpuNs - j.start.onCpuNs,
  runq: j.end.runqNs - j.start.runqNs,
  voluntary: j.end.voluntary - j.start.voluntary,
  involuntary: j.end.involuntary - j.start.involuntary,
  wall: j.end.t - j.start.t,
});

/** KSPAN_C_SCHED_UNSAMPLED counts every switch-out of a job under an unsampled span (its sleep at least), and nothing else. */
function unsampledSwitchOuts(counted: number, job: JobReport): void {
  const d = delta(job);
  assert.ok(d.voluntary >= 1, 'the unsampled job slept');
  nearCount(counted, d.voluntary + d.involuntary, 'switch-outs under the unsampled span');
}

describe('thread.sched through kspan events', e2eOptions(), () => {
  const group = new ProcessGroup();
  let sched: EventLine[] = [];
  let stopLog: { counters: Record<string, number> };
  const jobs: Record<string, JobReport> = {};
  let pid = 0;
  let workerTid = 0;

  before(async () => {
    const fx = await startSchedFixture(group);
    pid = fx.pid;
    workerTid = fx.workerTid;
    const events = await startEvents(group, [fx.pid]);
    await events.waitLine(/"type":"target"/, 20_000);
    jobs.spin = await fx.run('spin', X, { traceId: TRACE, spanId: span(1), sampled: true });
    jobs.sleep = await fx.run('sleep', Y, { traceId: TRACE, spanId: span(2), sampled: true });
    jobs.contend = await fx.run('contend', X, { traceId: TRACE, spanId: span(3), sampled: true });
    jobs.unsampled = await fx.run('spin', 50, { traceId: TRACE, spanId: span(4), sampled: false });
    jobs.nospan = await fx.run('spin', 50, null);
    jobs.nospanSleep = await fx.run('sleep', 50, null);
    jobs.fault = await fx.run('fault', 20, { traceId: TRACE, spanId: span(5), sampled: true });
    const lines = await stopEvents(events);
    sched = lines.filter((l) => l.type === 'sched');
    const stopped = stopLine<typeof stopLog>(events.stderr);
    assert.ok(stopped, events.stderr.join('\n'));
    stopLog = stopped;
  });
  after(() => group.killAll());

  const rec = (n: number) => {
    const r = sched.filter((l) => l.span_id === span(n));
    assert.equal(r.length, 1, `one record for span ${n}: ${JSON.stringify(sched, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
    return r[0] as EventLine & Record<string, number>;
  };

  test('one record per sampled span, on the worker thread, none for the unsampled span or the thread with no span', () => {
    assert.deepEqual(
      sched.map((l) => [l.pid, l.tid, l.trace_id, l.span_id, l.trace_flags]),
      [1, 2, 3, 5].map((n) => [pid, workerTid, TRACE, span(n), 1]),
    );
    // The thread keeps no state under the unsampled span; its switch-outs are counted.
    unsampledSwitchOuts(stopLog.counters.KSPAN_C_SCHED_UNSAMPLED, jobs.unsampled);
    assert.equal(stopLog.counters.KSPAN_C_SCHED_TABLE_FULL, 0);
    assert.equal(stopLog.counters.KSPAN_C_RINGBUF_FULL, 0);
    assert.ok(!sched.some((l) => l.tid === jobs.contend.siblingTid), 'the busy sibling (no span) made no record');
  });

  test('spin: on-CPU ≈ the CPU time spun and ≈ schedstat', () => {
    const r = rec(1);
    const d = delta(jobs.spin);
    assert.ok(r.on_cpu_ns >= X * MS, `on-CPU ${r.on_cpu_ns} ≥ ${X} ms spun`);
    near(r.on_cpu_ns, d.onCpu, 'on-CPU');
    near(r.runq_ns, d.runq, 'run-queue');
    assert.ok(r.voluntary >= 1, 'the 2 ms sleep');
    nearCount(r.voluntary, d.voluntary, 'voluntary switches');
    nearCount(r.involuntary, d.involuntary, 'involuntary switches');
  });

  test('sleep: blocked ≈ the time asleep and ≈ wall − on-CPU − run-queue', () => {
    const r = rec(2);
    const d = delta(jobs.sleep);
    // At least the sleep; how much longer (a late timer) is what schedstat says below.
    assert.ok(r.blocked_ns >= Y * MS, `blocked ${r.blocked_ns} ns for a ${Y} ms sleep`);
    near(r.blocked_ns, d.wall - d.onCpu - d.runq, 'blocked');
    near(r.on_cpu_ns, d.onCpu, 'on-CPU');
    near(r.runq_ns, d.runq, 'run-queue');
    assert.equal(r.voluntary, 1, 'one sleep, one voluntary switch');
    assert.equal(r.max_off_cpu_reason, 'blocked');
    assert.equal(r.max_off_cpu_syscall, 'clock_nanosleep');
    assert.ok(r.max_off_cpu_ns >= Y * MS);
  });

  test('a context read that faults at a switch-out is counted, and the thread keeps its span', () => {
    const r = rec(5);
    assert.ok(stopLog.counters.KSPAN_C_SCHED_CTX_FAILED >= 1, `failed reads: ${stopLog.counters.KSPAN_C_SCHED_CTX_FAILED}`);
    assert.equal(stopLog.counters.KSPAN_C_CTX_FAULT, 0, 'the TCP hooks\' count of faulting reads is theirs alone');
    assert.equal(r.voluntary, 3, 'all three sleeps in the one record');
    // The three 20 ms sleeps, as schedstat saw the job off the CPU and off the run
    // queue: the emulated guests measured 59.78 and 56.37 ms blocked for them.
    const d = delta(jobs.fault);
    near(r.blocked_ns, d.wall - d.onCpu - d.runq, 'blocked');
  });

  test('contend on a pinned CPU with a busy sibling: run-queue wait and preemptions ≈ schedstat, no migration', () => {
    const r = rec(3);
    const d = delta(jobs.contend);
    assert.ok(r.runq_ns > 0 && r.involuntary > 0, `run-queue ${r.runq_ns} ns, ${r.involuntary} preemptions`);
    near(r.runq_ns, d.runq, 'run-queue');
    near(r.on_cpu_ns, d.onCpu, 'on-CPU');
    assert.ok(r.on_cpu_ns >= X * MS);
    nearCount(r.involuntary, d.involuntary, 'involuntary switches');
    assert.equal(r.blocked_ns, 0, 'never blocked');
    assert.equal(r.migrations, 0, 'pinned');
  });
});

describe('thread.sched: the threads with state, and their count', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('sched_live equals the entries of sched_threads: 1 while the worker sleeps under its span, 0 once it has none', async () => {
    const fx = await startSchedFixture(group);
    const events = await startEvents(group, [fx.pid]);
    await events.waitLine(/"type":"target"/, 20_000);
    // Found before the job: the search runs bpftool once per map the agent holds.
    const maps = { threads: agentMapId(events.pid, 'sched_threads'), live: agentMapId(events.pid, 'sched_live') };
    assert.deepEqual(schedTable(maps), { tids: [], live: 0n });
    const sleepMs = 1000 * TIMEOUT_SCALE;
    const t0 = Date.now();
    const sleeping = fx.run('sleep', sleepMs, { traceId: TRACE, spanId: span(9), sampled: true });
    // Until the worker has switched out under the span (and while the job lasts).
    let during = schedTable(maps);
    while (!during.tids.length && Date.now() - t0 < sleepMs / 2) {
      await new Promise((r) => setTimeout(r, 20));
      during = schedTable(maps);
    }
    await sleeping;
    assert.deepEqual(during, { tids: [fx.workerTid], live: 1n }, 'the worker, asleep under its span, and the count');
    // Its next switch-out, with no span, ends its state (the job's report comes after it).
    let end = schedTable(maps);
    for (let i = 0; i < 50 && end.tids.length; i++) {
      await new Promise((r) => setTimeout(r, 20));
      end = schedTable(maps);
    }
    assert.deepEqual(end, { tids: [], live: 0n });
    const lines = await stopEvents(events);
    assert.deepEqual(lines.filter((l) => l.type === 'sched').map((l) => l.span_id), [span(9)]);
  });

  test('a thread asleep under an unsampled span keeps no state; its switch-outs are counted', async () => {
    const fx = await startSchedFixture(group);
    const events = await startEvents(group, [fx.pid]);
    await events.waitLine(/"type":"target"/, 20_000);
    const maps = { threads: agentMapId(events.pid, 'sched_threads'), live: agentMapId(events.pid, 'sched_live') };
    const sleepMs = 600 * TIMEOUT_SCALE;
    const sleeping = fx.run('sleep', sleepMs, { traceId: TRACE, spanId: span(11), sampled: false });
    await new Promise((r) => setTimeout(r, sleepMs / 2));
    const during = schedTable(maps);
    const job = await sleeping;
    assert.ok(job.end.t - job.start.t >= sleepMs * MS, 'the table was read while the worker slept');
    assert.deepEqual(during, { tids: [], live: 0n }, 'no state for the worker asleep under its unsampled span');
    const lines = await stopEvents(events);
    assert.deepEqual(lines.filter((l) => l.type === 'sched'), []);
    const stopped = stopLine(events.stderr)!;
    unsampledSwitchOuts(stopped.counters.KSPAN_C_SCHED_UNSAMPLED, job);
  });
});

describe('thread.sched through kspan run', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  before(() => receiver.start());
  after(async () => {
    await group.killAll();
    await receiver.stop();
  });

  test('a thread.sched child of the span, with kspan.sched.* attributes and a thread.off_cpu event; --no-sched: none', async () => {
    const fx = await startSchedFixture(group);
    const agent = group.start(KSPAN_BIN, ['run', '--pid', String(fx.pid), '--otlp-endpoint', receiver.endpoint]);
    await agent.waitStderr(/"msg":"target"/, 60_000);
    const job = await fx.run('sleep', 80, { traceId: TRACE, spanId: span(9), sampled: true });
    const spans = await receiver.waitForSpans(1, 20_000);
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const s = spans.filter((x) => x.name === 'thread.sched');
    const show = (xs: typeof spans) => JSON.stringify(xs.map((x) => ({ name: x.name, parent: x.parentSpanId, start: String(x.startTimeUnixNano), end: String(x.endTimeUnixNano), attributes: x.attributes })));
    assert.equal(s.length, 1, `${show(spans)}\n${agent.stderr.join('\n')}`);
    const k = s[0];
    assert.equal(k.traceId, TRACE);
    assert.equal(k.parentSpanId, span(9));
    assert.equal(k.attributes['process.pid'], fx.pid);
    assert.equal(k.attributes['thread.id'], job.tid);
    const blocked = Number(k.attributes['kspan.sched.blocked_ns']);
    assert.ok(blocked >= 80 * MS && blocked <= job.end.t - job.start.t, `blocked ${blocked} ns: at least the sleep, at most the span's wall time`);
    assert.equal(k.attributes['kspan.sched.voluntary_switches'], 1);
    for (const a of ['on_cpu_ns', 'runqueue_ns', 'involuntary_switches', 'migrations']) assert.equal(typeof k.attributes[`kspan.sched.${a}`], 'number', a);
    const blockedEvents = k.events.filter((e) => e.attributes['kspan.sched.off_cpu.kind'] === 'blocked');
    assert.equal(blockedEvents.length, 1, JSON.stringify(k.events, (_, v) => (typeof v === 'bigint' ? String(v) : v)));
    // (A busy machine may add run-queue waits of 1 ms or more as events of their own.)
    const ev = blockedEvents[0];
    assert.equal(ev.name, 'thread.off_cpu');
    assert.equal(ev.attributes['kspan.sched.syscall'], 'clock_nanosleep');
    assert.ok(Number(ev.attributes['kspan.sched.off_cpu.duration_ns']) >= 79 * MS, 'the sleep, less what ran between its start and the switch-out');
    assert.ok(k.startTimeUnixNano <= ev.timeUnixNano && ev.timeUnixNano <= k.endTimeUnixNano);

    // The same work with --no-sched: the scheduler programs are not even loaded.
    const before = receiver.spans.length;
    const quiet = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(fx.pid), '--otlp-endpoint', receiver.endpoint]);
    await quiet.waitStderr(/"msg":"target"/, 60_000);
    await fx.run('sleep', 30, { traceId: TRACE, spanId: span(10), sampled: true });
    quiet.child.kill('SIGTERM');
    assert.equal((await quiet.exited).code, cleanExit(quiet.stderr), quiet.stderr.join('\n'));
    assert.equal(receiver.spans.length, before);
    const stopped = stopLine(quiet.stderr)!;
    assert.equal(stopped.spans.sched.records, 0);
  });
});

describe('thread.sched when the kernel refuses a scheduler program', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('the whole feature is switched off with a warning naming what is lost; kspan events runs on', async () => {
    const fx = await startSchedFixture(group);
    const events = await startEvents(group, [fx.pid], [], { KSPAN_FAULT_REJECT_PROGRAMS: 'on_sched_wakeup_new' });
    await events.waitLine(/"type":"target"/, 20_000);
    await fx.run('sleep', 20, { traceId: TRACE, spanId: span(11), sampled: true });
    const lines = await stopEvents(events);
    assert.deepEqual(lines.filter((l) => l.type === 'sched'), []);
    const warn = events.stderr.map((l) => JSON.parse(l)).find((l) => l.feature === 'sched');
    assert.ok(warn, events.stderr.join('\n'));
    assert.equal(warn.level, 40);
    assert.deepEqual(warn.programs.map((p: { name: string }) => p.name), ['on_sched_switch', 'on_sched_wakeup', 'on_sched_wakeup_new']);
    assert.equal(warn.lost, 'thread.sched spans: on-CPU, blocked and run-queue time per span');
    const tracing = events.stderr.map((l) => JSON.parse(l)).find((l) => l.msg === 'tracing');
    assert.deepEqual([tracing.sched, tracing.featuresOff], [false, ['sched']]);
  });
});
