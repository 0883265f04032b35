/**
 * thread.off_cpu events, the pure half: the /proc/kallsyms parser and
 * symbolizer (binary search, the scheduler-text skip that makes a wait channel,
 * modules, kptr_restrict zeros), the interval record decoder, and the waiting
 * of interval records for their (thread, span) aggregate in SchedSpans (records
 * ahead of it, the cap's excess, an aggregate lost, shutdown).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  encodeKspanSchedEvent, encodeKspanSchedOff, KSPAN_SCHED_EVENT_SIZE, KSPAN_SCHED_OFF_SIZE, KspanSchedFlag, KspanSchedOffKind,
  type KspanSchedEvent,
} from '../../src/records/abi.generated.ts';
import { offCpuEventLine } from '../../src/records/event-json.ts';
import { decodeSchedRecord, type OffCpuRecord, type SchedRecord } from '../../src/records/sched-record.ts';
import { KernelSymbols } from '../../src/spans/kallsyms.ts';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { SchedSpans } from '../../src/spans/sched-spans.ts';
import { spanAttributes, SpanBuilder } from '../../src/spans/span-builder.ts';

const KALLSYMS = [
  'ffffffff81000000 T _stext',
  'ffffffff81001000 t vfs_read',
  'ffffffff81002000 T ksys_read',
  'ffffffff81000800 d some_data',
  'ffffffff81003000 t anon_pipe_read',
  'ffffffff81004000 T hrtimer_nanosleep',
  'ffffffff81005000 T __sched_text_start',
  'ffffffff81005010 T __schedule',
  'ffffffff81005800 T schedule',
  'ffffffff81005a00 t do_nanosleep',
  'ffffffff81006000 T __sched_text_end',
  'ffffffff81006100 T __lock_text_start',
  'ffffffff81006110 T _raw_spin_lock',
  'ffffffff81006200 T __lock_text_end',
  'ffffffffc0001000 t mod_wait\t[mymod]',
  '',
].join('\n');

const A = (x: number) => 0xffffffff00000000n + BigInt(x);

describe('kernel symbols from /proc/kallsyms', () => {
  const k = KernelSymbols.parse(KALLSYMS);

  test('text symbols only, sorted, found by binary search; below the first: none', () => {
    assert.equal(k.size, 14);
    assert.equal(k.restricted, false);
    assert.equal(k.symbolAt(A(0x81001000)), 'vfs_read');
    assert.equal(k.symbolAt(A(0x81001fff)), 'vfs_read');
    assert.equal(k.symbolAt(A(0x81002000)), 'ksys_read');
    assert.equal(k.symbolAt(A(0x81000900)), '_stext', 'data symbols are not in the table');
    assert.equal(k.symbolAt(A(0x80000000)), null);
    assert.equal(k.symbolAt(0xffffffffc0001234n), 'mod_wait [mymod]');
  });

  test('the scheduler text and the spinlocks text are skipped, as the kernel\'s wchan skips them', () => {
    assert.deepEqual([A(0x81005010), A(0x81005fff), A(0x81006110), A(0x81006000), A(0x81004fff)].map((a) => k.inSchedText(a)), [true, true, true, false, false]);
  });

  test('a nanosleep stack: wchan is the first frame out of the scheduler (return addresses looked up one byte back)', () => {
    const stack = [A(0x81005100), A(0x81005820), A(0x81005a40), A(0x81004030), A(0x81002010), 0n];
    assert.deepEqual(k.describe(stack), { wchan: 'hrtimer_nanosleep', frames: ['hrtimer_nanosleep', 'ksys_read', '0x0'] });
    assert.deepEqual(k.describe(stack, 1), { wchan: 'hrtimer_nanosleep', frames: ['hrtimer_nanosleep'] });
    // A return address right at the start of the next function is the last call of the one before.
    assert.deepEqual(k.describe([A(0x81005100), A(0x81004000)]).wchan, 'anon_pipe_read');
    assert.deepEqual(k.describe([A(0x81005100), A(0x81006120), A(0x81003100), A(0x81001100)]), { wchan: 'anon_pipe_read', frames: ['anon_pipe_read', 'vfs_read'] });
  });

  test('a stack all in the scheduler, or empty: no wait channel', () => {
    assert.deepEqual(k.describe([A(0x81005100), A(0x81005820)]), { wchan: null, frames: [] });
    assert.deepEqual(k.describe([]), { wchan: null, frames: [] });
  });

  test('kptr_restrict: every address zero, the table is restricted and names nothing', () => {
    const z = KernelSymbols.parse(KALLSYMS.replace(/^[0-9a-f]{16}/gm, '0000000000000000'));
    assert.equal(z.restricted, true);
    assert.deepEqual(z.describe([A(0x81004030)]), { wchan: null, frames: [] });
    assert.equal(KernelSymbols.parse('').restricted, false);
  });
});

const CTX = { trace_id: Uint8Array.from({ length: 16 }, (_, i) => i + 1), span_id: Uint8Array.from({ length: 8 }, (_, i) => 0xa0 + i), trace_flags: 1, valid: 1, attrs_size: 0, attrs: new Uint8Array(52) };
const TRACE = '0102030405060708090a0b0c0d0e0f10';
const SPAN = 'a0a1a2a3a4a5a6a7';

function agg(over: Partial<KspanSchedEvent> = {}): SchedRecord {
  const e = {
    start_ns: 1_000_000_000n, end_ns: 1_250_000_000n, on_cpu_ns: 1n, blocked_ns: 2n, runq_ns: 3n, max_off_ns: 0n, max_off_start_ns: 0n,
    pid: 40, tid: 41, voluntary: 1, involuntary: 0, migrations: 0, max_off_syscall: -1, flags: 0, _pad: new Uint8Array(3), off_events: 0, ctx: CTX, ...over,
  } as KspanSchedEvent;
  const v = new DataView(new ArrayBuffer(KSPAN_SCHED_EVENT_SIZE));
  encodeKspanSchedEvent(e, v, 0);
  return decodeSchedRecord(v, 0, KSPAN_SCHED_EVENT_SIZE) as SchedRecord;
}

function off(over: { tid?: number; span?: number; kind?: number; start?: bigint; stack?: bigint[] } = {}): OffCpuRecord {
  const stack = new Uint8Array(96);
  const sv = new DataView(stack.buffer);
  (over.stack ?? []).forEach((a, i) => sv.setBigUint64(i * 8, a, true));
  const v = new DataView(new ArrayBuffer(KSPAN_SCHED_OFF_SIZE));
  encodeKspanSchedOff({
    start_ns: over.start ?? 1_100_000_000n, duration_ns: 5_000_000n, stack, trace_id: CTX.trace_id,
    span_id: Uint8Array.from({ length: 8 }, (_, i) => (i === 7 && over.span ? over.span : 0xa0 + i)),
    pid: 40, tid: over.tid ?? 41, syscall: 0, kind: over.kind ?? KspanSchedOffKind.KSPAN_OFF_BLOCKED, frames: over.stack?.length ?? 0,
  }, v, 0);
  return decodeSchedRecord(v, 0, KSPAN_SCHED_OFF_SIZE) as OffCpuRecord;
}

describe('interval records', () => {
  test('decoded exactly, told from aggregates by their size; another size is refused', () => {
    assert.deepEqual(off({ stack: [A(0x81005100), A(0x81003100)] }), {
      type: 'off_cpu', pid: 40, tid: 41, traceId: TRACE, spanId: SPAN, kind: 'blocked', startNs: 1_100_000_000n, durationNs: 5_000_000n,
      syscall: 0, stack: [A(0x81005100), A(0x81003100)],
    });
    assert.equal(off({ kind: KspanSchedOffKind.KSPAN_OFF_RUNQUEUE }).kind, 'runqueue');
    assert.throws(() => decodeSchedRecord(new DataView(new ArrayBuffer(200)), 0, 100), /a 100-byte record is neither/);
  });

  test('the kspan events line', () => {
    const k = KernelSymbols.parse(KALLSYMS);
    const r = off({ stack: [A(0x81005100), A(0x81003100), A(0x81001100)] });
    assert.equal(offCpuEventLine(r, 10n, k.describe(r.stack)),
      `{"type":"off_cpu","ts_ns":1100000010,"pid":40,"tid":41,"trace_id":"${TRACE}","span_id":"${SPAN}","kind":"blocked","duration_ns":5000000,` +
      '"syscall":"read","stack":["0xffffffff81005100","0xffffffff81003100","0xffffffff81001100"],"wchan":"anon_pipe_read","kernel_stack":["anon_pipe_read","vfs_read"]}');
  });
});

describe('interval records wait for their aggregate', () => {
  const symbols = KernelSymbols.parse(KALLSYMS);
  const make = () => {
    const out: KernelSpan[] = [];
    return { out, s: new SchedSpans((k) => out.push(k), { symbols: () => symbols }) };
  };

  test('records ahead of their aggregate become its events, named; another thread\'s wait for theirs', () => {
    const { out, s } = make();
    s.push(off({ stack: [A(0x81005100), A(0x81004030), A(0x81002010)] }));
    s.push(off({ kind: KspanSchedOffKind.KSPAN_OFF_RUNQUEUE, start: 1_200_000_000n }));
    s.push(off({ tid: 99 }));
    assert.equal(s.pending, 3);
    s.push(agg({ off_events: 2 }));
    assert.equal(out.length, 1);
    assert.equal(s.pending, 1, 'thread 99\'s record still waits');
    const span = new SpanBuilder({ clockOffsetNs: 0n, resourceFor: () => undefined as never }).build(out[0]);
    assert.deepEqual(span.events.map((e) => [e.name, e.attributes]), [
      ['thread.off_cpu', {
        'kspan.sched.off_cpu.kind': 'blocked', 'kspan.sched.off_cpu.duration_ns': 5_000_000, 'kspan.sched.syscall': 'read',
        'kspan.sched.wchan': 'hrtimer_nanosleep', 'kspan.sched.kernel_stack': ['hrtimer_nanosleep', 'ksys_read'],
      }],
      ['thread.off_cpu', { 'kspan.sched.off_cpu.kind': 'runqueue', 'kspan.sched.off_cpu.duration_ns': 5_000_000, 'kspan.sched.syscall': 'read' }],
    ]);
    assert.equal(spanAttributes(out[0])['kspan.sched.off_cpu.events_dropped'], undefined);
    assert.deepEqual([s.counters.offCpuEvents, s.counters.offCpuEventsDropped, s.counters.offCpuOrphans], [2, 0, 0]);
  });

  test('over the cap: the aggregate counted more than came; the excess is an attribute and a counter', () => {
    const { out, s } = make();
    for (let i = 0; i < 32; i++) s.push(off({ start: 1_100_000_000n + BigInt(i) }));
    s.push(agg({ off_events: 45 }));
    assert.equal(out[0].events.length, 32);
    assert.equal(spanAttributes(out[0])['kspan.sched.off_cpu.events_dropped'], 13);
    assert.deepEqual([s.counters.offCpuEvents, s.counters.offCpuEventsDropped], [32, 13]);
  });

  test('a thread that exits: its aggregate (flagged exited) takes its records; records of a lost aggregate are counted as orphans', () => {
    const { out, s } = make();
    s.push(off({ span: 0x01 }));
    s.push(off({ span: 0x02 })); // the thread moved on: span 1's aggregate was lost
    assert.equal(s.counters.offCpuOrphans, 1);
    s.push(agg({ ctx: { ...CTX, span_id: Uint8Array.from([0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0x02]) }, flags: KspanSchedFlag.KSPAN_SF_EXITED, off_events: 1 }));
    assert.deepEqual([out[0].incomplete, out[0].events.length, s.pending], ['process_exit', 1, 0]);
    s.push(off());
    s.flush();
    assert.deepEqual([s.counters.offCpuOrphans, s.pending], [2, 0]);
  });

  test('no kernel symbols (kptr_restrict): events without wait channel or stack, counted', () => {
    const out: KernelSpan[] = [];
    const s = new SchedSpans((k) => out.push(k), { symbols: () => null });
    s.push(off({ stack: [A(0x81004030)] }));
    s.push(agg({ off_events: 1 }));
    assert.deepEqual(out[0].events[0].offCpu, { ns: 5_000_000, blocked: true, syscall: 'read', wchan: null });
    assert.equal(s.counters.offCpuUnsymbolized, 1);
  });
});
