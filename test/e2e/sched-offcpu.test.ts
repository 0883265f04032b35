/**
 * thread.off_cpu events (bpf/sched.bpf.h kspan_sched_off records, hung on the
 * thread.sched span by src/spans/sched-spans.ts), through `kspan run
 * --off-cpu-event-ms 5` on the sched fixture (test/helpers/sched-fixture.ts):
 *  - one 100 ms nanosleep: one blocked event whose wait channel is exactly what
 *    the kernel's own /proc/PID/task/TID/wchan said while the thread slept (the
 *    fixture reads it halfway), duration between the sleep and the span's wall
 *    time, inside the span;
 *  - a read of an empty pipe written after 100 ms: the same, in `read`;
 *  - 6 sleeps of 10 ms: exactly 6 blocked events in clock_nanosleep; 40: exactly
 *    the cap (32) as events, and the rest (8, and any run-queue wait of 5 ms) counted on the span;
 *  - 10 sleeps of 1 ms (below the threshold): no event in clock_nanosleep.
 * The sleeps run SCHED_FIFO; still, on a busy machine (a guest's stolen time)
 * a run-queue wait can reach the threshold and be an event of its own, so the
 * counts are of the sleeps' events (kind, syscall and wait channel).
 * And through `kspan events` with the stack-taking wakeup program refused: the
 * variant without stacks loads, blocked records come with no stack.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, startEvents, stopEvents, stopLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startSchedFixture, type JobReport } from '../helpers/sched-fixture.ts';
import { CPU_STALL_MS, TIMEOUT_SCALE } from '../helpers/timeouts.ts';

const MS = 1_000_000;
// What the thread may run between arming its timer and leaving its CPU: 1 ms (scaled on slow
// machines), plus, under emulation, how long its vCPU may stand still there while the other runs
// (the guest's clock goes on meanwhile: the 6.1 guest measured 96.58 ms blocked for a 100 ms sleep).
const LATE = MS * TIMEOUT_SCALE + MS * CPU_STALL_MS;
const TRACE = `5d${process.pid.toString(16).padStart(8, '0')}${'0'.repeat(22)}`;
const span = (n: number) => `${n.toString(16).padStart(2, '0')}${'cd'.repeat(7)}`;
const show = (x: unknown) => JSON.stringify(x, (_, v) => (typeof v === 'bigint' ? String(v) : v));

describe('thread.off_cpu events through kspan run', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  const jobs: Record<string, JobReport> = {};
  let spans: ReceivedSpan[] = [];
  let stopped: { spans: { sched: Record<string, number> } };
  let stoppedKernel: Record<string, unknown> = {};
  let fxPid = 0;

  before(async () => {
    await receiver.start();
    const fx = await startSchedFixture(group);
    fxPid = fx.pid;
    const agent = group.start(KSPAN_BIN, ['run', '--pid', String(fx.pid), '--off-cpu-event-ms', '5', '--otlp-endpoint', receiver.endpoint]);
    await agent.waitStderr(/"msg":"target"/, 60_000);
    jobs.sleep = await fx.run('sleeps', 100, { traceId: TRACE, spanId: span(1), sampled: true }, 1);
    jobs.pipe = await fx.run('pipe', 100, { traceId: TRACE, spanId: span(2), sampled: true });
    jobs.six = await fx.run('sleeps', 10, { traceId: TRACE, spanId: span(3), sampled: true }, 6);
    jobs.forty = await fx.run('sleeps', 10, { traceId: TRACE, spanId: span(4), sampled: true }, 40);
    jobs.short = await fx.run('sleeps', 1, { traceId: TRACE, spanId: span(5), sampled: true }, 10);
    await receiver.waitForSpans(5, 30_000);
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    spans = receiver.spans.filter((s) => s.name === 'thread.sched');
    stopped = stopLine(agent.stderr)!;
    stoppedKernel = (stopped as unknown as { kernel: Record<string, unknown> }).kernel;
  });
  after(async () => {
    await group.killAll();
    await receiver.stop();
  });

  const sched = (n: number) => {
    const s = spans.filter((x) => x.parentSpanId === span(n));
    assert.equal(s.length, 1, `one thread.sched span under span ${n}: ${show(spans.map((x) => [x.parentSpanId, x.events.length]))}`);
    return s[0];
  };
  const blocked = (s: ReceivedSpan) => s.events.filter((e) => e.attributes['kspan.sched.off_cpu.kind'] === 'blocked');

  for (const [name, n, ms, syscall] of [['sleep', 1, 100, 'clock_nanosleep'], ['pipe', 2, 100, 'read']] as const) {
    test(`${name}: one blocked event, its wait channel the kernel's own wchan, ≈ ${ms} ms, inside the span`, () => {
      const s = sched(n);
      const job = jobs[name];
      assert.match(job.wchan ?? '', /^\w+$/, `the kernel's /proc wchan: ${job.wchan}`);
      const b = blocked(s);
      assert.equal(b.length, 1, show(s.events));
      const e = b[0];
      assert.equal(e.name, 'thread.off_cpu');
      assert.equal(e.attributes['kspan.sched.syscall'], syscall);
      if (e.attributes['kspan.sched.wchan'] === undefined) {
        // An interval whose wakeup and switch-in the kernel ran no program for (rare, under load):
        // closed at the next switch-out with no stack, and counted; never silently.
        assert.equal(e.attributes['kspan.sched.kernel_stack'], undefined, show(e));
        assert.ok(Number(stoppedKernel.KSPAN_C_SCHED_IN_UNSEEN) >= 1, `a stackless event with no unseen switch-in counted: ${show(stoppedKernel)}`);
      } else {
        assert.equal(e.attributes['kspan.sched.wchan'], job.wchan);
        const stack = e.attributes['kspan.sched.kernel_stack'] as string[];
        assert.ok(Array.isArray(stack) && stack.length >= 2 && stack.length <= 8, show(stack));
        assert.equal(stack[0], job.wchan, 'the stack starts at the wait channel');
      }
      const d = Number(e.attributes['kspan.sched.off_cpu.duration_ns']);
      // The wait the fixture asked for, less what the thread ran between starting it (the timer's
      // expiry is set then) and leaving its CPU (LATE: 1 ms, scaled on emulated kernels); at most the span.
      assert.ok(d >= ms * MS - LATE && d <= job.end.t - job.start.t, `duration ${d} ns for ${ms} ms, span wall ${job.end.t - job.start.t} ns`);
      assert.ok(s.startTimeUnixNano <= e.timeUnixNano && e.timeUnixNano <= s.endTimeUnixNano, 'inside the span');
      assert.equal(s.attributes['kspan.sched.off_cpu.events_dropped'], undefined);
    });
  }

  // The sleeps: blocked in clock_nanosleep at the sleep job's wait channel (anything else that
  // blocked the thread 5 ms, as a page fault on a slow emulated disk can, is an event of its own);
  // or with no wait channel: an interval whose wakeup and switch-in the kernel ran no program for,
  // closed at the next switch-out with no stack (bpf/sched.bpf.h sched_in_unseen).
  const sleeps = (s: ReceivedSpan) =>
    blocked(s).filter(
      (e) =>
        e.attributes['kspan.sched.syscall'] === 'clock_nanosleep' &&
        (e.attributes['kspan.sched.wchan'] === jobs.sleep.wchan || e.attributes['kspan.sched.wchan'] === undefined),
    );

  test('6 sleeps of 10 ms: exactly 6 blocked events, in order, nothing dropped', () => {
    const s = sched(3);
    const b = sleeps(s);
    assert.equal(b.length, 6, show(s.events));
    for (const e of b) assert.ok(Number(e.attributes['kspan.sched.off_cpu.duration_ns']) >= 10 * MS - LATE);
    assert.deepEqual(b.map((e) => e.timeUnixNano), b.map((e) => e.timeUnixNano).sort((x, y) => (x < y ? -1 : 1)));
    assert.equal(s.attributes['kspan.sched.off_cpu.events_dropped'], undefined);
  });

  test('40 sleeps: the cap (32) as events, the other 8 counted on the span and in the counters', () => {
    const s = sched(4);
    const voluntary = Number(s.attributes['kspan.sched.voluntary_switches']);
    assert.ok(voluntary >= 40, `${voluntary} voluntary switches`);
    assert.equal(s.events.length, 32, show(s.events));
    // The sleeps, and whatever run-queue wait of 5 ms a busy machine added: nothing else.
    assert.equal(sleeps(s).length + s.events.filter((e) => e.attributes['kspan.sched.off_cpu.kind'] === 'runqueue').length, 32, show(s.events));
    // Each sleep is one blocked interval of at least 5 ms: 40 of them, 32 with an event, 8 counted
    // (one missing would leave 7: test/e2e/sched-offcpu-gap.test.ts). A busy machine may add
    // run-queue waits of 5 ms and more (each switch: at most one), counted with them.
    const dropped = Number(s.attributes['kspan.sched.off_cpu.events_dropped']);
    const runq = s.events.length - sleeps(s).length;
    const switches = voluntary + Number(s.attributes['kspan.sched.involuntary_switches']);
    assert.ok(dropped >= 8 && dropped - 8 + runq <= switches, `${dropped} dropped, ${runq} run-queue events, ${switches} switches`);
    assert.equal(stopped.spans.sched.offCpuEventsDropped, dropped);
    assert.equal(stopped.spans.sched.offCpuEvents, spans.reduce((n, x) => n + x.events.length, 0));
    assert.equal(stopped.spans.sched.offCpuOrphans, 0);
  });

  test('10 sleeps of 1 ms, below the 5 ms threshold: no event', () => {
    const s = sched(5);
    assert.ok(Number(s.attributes['kspan.sched.voluntary_switches']) >= 10);
    // Under emulation a 1 ms sleep can stay blocked past the threshold while the CPU that wakes it
    // stands still (the 6.12 guest saw one of 5.01 ms): none longer than that, none at all elsewhere.
    const late = (e: ReceivedSpan['events'][number]) => Number(e.attributes['kspan.sched.off_cpu.duration_ns']) > MS + CPU_STALL_MS * MS;
    assert.deepEqual(sleeps(s).filter(late), []);
    assert.deepEqual(s.events.filter((e) => e.attributes['kspan.sched.syscall'] === 'clock_nanosleep' && (!CPU_STALL_MS || late(e))), []);
    assert.equal(s.attributes['kspan.sched.off_cpu.events_dropped'], undefined);
    assert.equal(s.attributes['process.pid'], fxPid);
  });
});

describe('thread.off_cpu records when the kernel refuses the stack-taking wakeup program', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('the variant without stacks loads: a blocked record with no stack, nothing switched off', async () => {
    const fx = await startSchedFixture(group);
    const events = await startEvents(group, [fx.pid], [], { KSPAN_FAULT_REJECT_PROGRAMS: 'on_sched_wakeup' });
    await events.waitLine(/"type":"target"/, 20_000);
    await fx.run('sleeps', 30, { traceId: TRACE, spanId: span(9), sampled: true }, 1);
    const lines = await stopEvents(events);
    const all = lines.filter((l) => l.type === 'off_cpu' && l.span_id === span(9));
    const off = all.filter((l) => l.kind === 'blocked' && l.syscall === 'clock_nanosleep');
    assert.equal(off.length, 1, show(lines));
    for (const l of all) assert.deepEqual([l.stack, 'wchan' in l, l.tid], [[], false, fx.workerTid]);
    assert.ok(Number(off[0].duration_ns) >= 30 * MS - LATE);
    const agg = lines.filter((l) => l.type === 'sched' && l.span_id === span(9));
    assert.equal(agg.length, 1);
    // Every interval the aggregate counted came as a record (1 ms threshold: run-queue waits of a busy machine too).
    assert.equal(agg[0].off_cpu_events, all.length);
    const tracing = events.stderr.map((l) => JSON.parse(l)).find((l) => l.msg === 'tracing');
    assert.deepEqual([tracing.sched, tracing.featuresOff], [true, []]);
  });
});
