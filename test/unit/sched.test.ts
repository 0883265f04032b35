/**
 * Scheduler time per span, the pure half: the program table's `sched` feature
 * (loaded on the captured 6.1, 6.12 and 6.18 prototypes, all or none, off on
 * request), the record decoder, the `kspan events` line, and the thread.sched
 * span (attributes, the off-CPU event and its threshold, unsampled records).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadConfig } from '../../src/core/config.ts';
import { planPrograms, PROGRAMS, type KernelHooks } from '../../src/kernel/programs.ts';
import { encodeKspanSchedEvent, KSPAN_SCHED_EVENT_SIZE, KspanSchedFlag, type KspanSchedEvent } from '../../src/records/abi.generated.ts';
import { schedEventLine } from '../../src/records/event-json.ts';
import { decodeSchedRecord, syscallName, type SchedRecord } from '../../src/records/sched-record.ts';
import { kernelSpanDetails } from '../../src/export/console-tree.ts';
import { spanAttributes, SpanBuilder } from '../../src/spans/span-builder.ts';
import { schedSpan, SchedSpans } from '../../src/spans/sched-spans.ts';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const SCHED = PROGRAMS.filter((p) => p.feature === 'sched').map((p) => p.name);

function hooks(release: string): KernelHooks {
  const k = JSON.parse(readFileSync(join(REPO_ROOT, `test/fixtures/kernels/${release}.json`), 'utf8')) as { tracepoints: Record<string, string[]> };
  return { tracepointArgs: (n) => k.tracepoints[n]?.length, hasTracepoint: (c) => c === 'syscalls', can: () => true };
}

describe('the sched feature in the load plan', () => {
  test('loads whole on the captured 6.1, 6.12 and 6.18 kernels', () => {
    assert.deepEqual(SCHED, ['on_sched_switch', 'on_sched_wakeup', 'on_sched_wakeup_nostack', 'on_sched_wakeup_new']);
    for (const rel of ['6.1', '6.12', '6.18']) {
      const plan = planPrograms(hooks(rel), rel === '6.1' ? 'syscalls' : 'sock_length');
      assert.deepEqual(SCHED.map((n) => plan.load(n)), [true, true, false, true], rel);
      assert.deepEqual(plan.off, [], rel);
    }
  });

  test('one program refused switches the whole feature off, as optional, naming the refusal', () => {
    const plan = planPrograms(hooks('6.18'), 'sock_length', new Map([['on_sched_switch', { reason: 'rejected by the verifier: x' }]]));
    assert.deepEqual(SCHED.map((n) => plan.load(n)), [false, false, false, false]);
    assert.deepEqual(plan.off.map((f) => [f.feature, f.grade, f.programs]), [
      ['sched', 'optional', [
        { name: 'on_sched_switch', reason: 'rejected by the verifier: x' },
        { name: 'on_sched_wakeup', reason: 'goes with on_sched_switch, which cannot load' },
        { name: 'on_sched_wakeup_new', reason: 'goes with on_sched_switch, which cannot load' },
      ]],
    ]);
  });

  test('the stack-taking wakeup refused (no bpf_get_task_stack): the variant without a stack loads, nothing is off', () => {
    const plan = planPrograms(hooks('6.1'), 'syscalls', new Map([['on_sched_wakeup', { reason: 'unknown func bpf_get_task_stack' }]]));
    assert.deepEqual(SCHED.map((n) => plan.load(n)), [true, false, true, true]);
    assert.deepEqual(plan.off, []);
  });

  test('switched off by the user (--no-sched): not loaded, and no loss reported', () => {
    const plan = planPrograms(hooks('6.12'), 'sock_length', new Map(), PROGRAMS, new Set(['sched']));
    assert.deepEqual(SCHED.map((n) => plan.decisions.get(n)), SCHED.map(() => ({ load: false, why: 'disabled', reason: 'sched switched off' })));
    assert.deepEqual(plan.off, []);
    assert.equal(plan.load('on_send_length'), true);
  });
});

const CTX = { trace_id: Uint8Array.from({ length: 16 }, (_, i) => i + 1), span_id: Uint8Array.from({ length: 8 }, (_, i) => 0xa0 + i), trace_flags: 1, valid: 1, attrs_size: 0, attrs: new Uint8Array(52) };

function event(over: Partial<KspanSchedEvent> = {}): KspanSchedEvent {
  return {
    start_ns: 1_000_000_000n, end_ns: 1_250_000_000n, on_cpu_ns: 150_000_000n, blocked_ns: 80_000_000n, runq_ns: 20_000_000n,
    max_off_ns: 60_000_000n, max_off_start_ns: 1_100_000_000n, pid: 4242, tid: 4243, voluntary: 3, involuntary: 7, migrations: 2,
    max_off_syscall: 230, flags: KspanSchedFlag.KSPAN_SF_MAX_OFF_BLOCKED, _pad: new Uint8Array(3), off_events: 0, ctx: CTX, ...over,
  } as KspanSchedEvent;
}

function decoded(e: KspanSchedEvent): SchedRecord | null {
  const buf = new DataView(new ArrayBuffer(KSPAN_SCHED_EVENT_SIZE));
  encodeKspanSchedEvent(e, buf, 0);
  return decodeSchedRecord(buf, 0) as SchedRecord | null;
}

describe('switching the scheduler off', () => {
  test('--no-sched, or kernel.no_sched in the policy file; on by default, for run, events and record', () => {
    for (const cmd of ['run', 'events', 'record'] as const) {
      const argv = ['--pid', '1', ...(cmd === 'record' ? ['-o', '/tmp/x.rec'] : [])];
      assert.equal(loadConfig(cmd, { argv, env: {} }).noSched, false, cmd);
      assert.equal(loadConfig(cmd, { argv: [...argv, '--no-sched'], env: {} }).noSched, true, cmd);
    }
    const c = loadConfig('run', { argv: ['--pid', '1'], env: {}, file: { path: '/etc/kspan.yaml', values: { kernel: { no_sched: true } } } });
    assert.deepEqual([c.noSched, c.origins.noSched], [true, { source: 'file', name: '/etc/kspan.yaml: kernel.no_sched' }]);
  });
});

describe('scheduler records', () => {
  test('decoded exactly from the ring layout', () => {
    assert.deepEqual(decoded(event()), {
      type: 'sched', pid: 4242, tid: 4243,
      context: { traceId: '0102030405060708090a0b0c0d0e0f10', spanId: 'a0a1a2a3a4a5a6a7', traceFlags: 1 },
      startNs: 1_000_000_000n, endNs: 1_250_000_000n, onCpuNs: 150_000_000n, blockedNs: 80_000_000n, runqNs: 20_000_000n,
      voluntary: 3, involuntary: 7, migrations: 2, maxOffNs: 60_000_000n, maxOffStartNs: 1_100_000_000n, maxOffBlocked: true,
      maxOffSyscall: 230, flushed: false, exited: false, tail: false, offEvents: 0,
    });
    assert.equal(decoded(event({ ctx: { ...CTX, valid: 0 } })), null, 'no span: no record');
    const flags = decoded(event({ flags: KspanSchedFlag.KSPAN_SF_FLUSHED | KspanSchedFlag.KSPAN_SF_EXITED | KspanSchedFlag.KSPAN_SF_TAIL }))!;
    assert.deepEqual([flags.flushed, flags.exited, flags.tail, flags.maxOffBlocked], [true, true, true, false]);
  });

  test('syscall names: known ones by name, others by number, none as null', () => {
    assert.deepEqual([syscallName(230), syscallName(202), syscallName(232), syscallName(999), syscallName(-1)], ['clock_nanosleep', 'futex', 'epoll_wait', 'syscall_999', null]);
  });

  test('the kspan events line', () => {
    const line = schedEventLine(decoded(event())!, 10n);
    assert.equal(
      line,
      '{"type":"sched","ts_ns":1250000010,"start_ts_ns":1000000010,"pid":4242,"tid":4243,"trace_id":"0102030405060708090a0b0c0d0e0f10",' +
        '"span_id":"a0a1a2a3a4a5a6a7","trace_flags":1,"on_cpu_ns":150000000,"blocked_ns":80000000,"runq_ns":20000000,"voluntary":3,' +
        '"involuntary":7,"migrations":2,"max_off_cpu_ns":60000000,"max_off_cpu_ts_ns":1100000010,"max_off_cpu_reason":"blocked",' +
        '"max_off_cpu_syscall":"clock_nanosleep","off_cpu_events":0}',
    );
    const quiet = JSON.parse(schedEventLine(decoded(event({ max_off_ns: 0n, flags: KspanSchedFlag.KSPAN_SF_FLUSHED }))!, 0n));
    assert.equal(quiet.max_off_cpu_ns, 0);
    assert.equal('max_off_cpu_reason' in quiet, false);
    assert.equal(quiet.flushed, true);
  });
});

describe('thread.sched spans', () => {
  test('a child of the record\'s span with the kspan.sched.* figures, and no socket attributes', () => {
    const k = schedSpan(decoded(event())!);
    assert.equal(k.name, 'thread.sched');
    assert.deepEqual(k.parent, { traceId: '0102030405060708090a0b0c0d0e0f10', spanId: 'a0a1a2a3a4a5a6a7', traceFlags: 1 });
    assert.deepEqual([k.startNs, k.endNs], [1_000_000_000n, 1_250_000_000n]);
    assert.deepEqual(spanAttributes(k), {
      'process.pid': 4242,
      'thread.id': 4243,
      'kspan.sched.on_cpu_ns': 150_000_000,
      'kspan.sched.blocked_ns': 80_000_000,
      'kspan.sched.runqueue_ns': 20_000_000,
      'kspan.sched.voluntary_switches': 3,
      'kspan.sched.involuntary_switches': 7,
      'kspan.sched.migrations': 2,
    });
    const span = new SpanBuilder({ clockOffsetNs: 0n, resourceFor: () => undefined as never }).build(k);
    assert.deepEqual(span.events, [], 'events come from the interval records only');
    assert.equal(span.kind, 0);
  });

  test('flushed at shutdown or closed by an exit: incomplete, with the reason', () => {
    const a = spanAttributes(schedSpan(decoded(event({ flags: KspanSchedFlag.KSPAN_SF_FLUSHED }))!));
    assert.deepEqual([a['kspan.incomplete'], a['kspan.incomplete.reason']], [true, 'flushed']);
    const b = spanAttributes(schedSpan(decoded(event({ flags: KspanSchedFlag.KSPAN_SF_EXITED }))!));
    assert.deepEqual([b['kspan.incomplete'], b['kspan.incomplete.reason']], [true, 'process_exit']);
  });

  test('an unsampled record makes no span and is counted', () => {
    const out: KernelSpan[] = [];
    const s = new SchedSpans((k) => out.push(k));
    s.push(decoded(event({ ctx: { ...CTX, trace_flags: 0 } }))!);
    s.push(decoded(event())!);
    assert.deepEqual(s.counters, { records: 2, spans: 1, unsampledSpans: 1, offCpuEvents: 0, offCpuEventsDropped: 0, offCpuOrphans: 0, offCpuUnsymbolized: 0 });
    assert.deepEqual(out.map((k) => k.parent?.traceFlags), [1]);
  });

  test('the console tree line', () => {
    assert.deepEqual(kernelSpanDetails('thread.sched', spanAttributes(schedSpan(decoded(event())!))), [
      'on CPU 150.000 ms  blocked 80.000 ms  run queue 20.000 ms',
      'switches 3+7 preempted',
    ]);
  });
});
