/**
 * User-defined function spans (`kspan run --uprobe`) on the real kernel: a
 * fixture whose 4 threads each publish their own span call a probed function N
 * times each; a recursion; a call that never returns before its process exits.
 * And the probes' life: attached once per binary, detached when no traced
 * process maps the binary any more (`bpftool link show`, tracefs uprobe_events).
 */
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { until } from '../helpers/traced-server.ts';
import { agentStopLog, callsFixturePath, heldUprobeLinks, type HeldLink, publishedContexts, systemLinkIds, tracefsUprobes, useTestBed } from '../helpers/uprobe-fixtures.ts';

const PER_THREAD = 25;
const THREADS = 4;
const SPAN_KIND_INTERNAL = 1; // OTLP numbering
const STATUS_ERROR = 2;

describe('function spans from --uprobe', e2eOptions(), () => {
  const bed = useTestBed();

  test('N calls from 4 threads give exactly N spans, each under its thread\'s span; recursion nests; a call open at exit is closed, marked', async () => {
    const exe = callsFixturePath();
    const fixture = bed.group.start(exe, ['threads', String(PER_THREAD)]);
    const pid = Number((await fixture.waitLine(/^ready pid (\d+)$/))[1]);
    const agent = bed.group.start(KSPAN_BIN, [
      'run', '--no-sched', '--pid', String(pid), '--otlp-endpoint', bed.receiver.endpoint, '--uprobe-presets', 'none',
      '--uprobe', 'calls:kspan_fixture_work:fixture.work',
      '--uprobe', `${exe}:kspan_fixture_recurse`,
      '--uprobe', 'calls:kspan_fixture_block',
    ]);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    // One entry and one return probe per function, in the one binary.
    const links = heldUprobeLinks(agent.pid);
    assert.deepEqual(links.map((l) => `${l.eventType} ${l.path}`).sort(), [...Array(3).fill(`uprobe /proc/${pid}/root${exe}`), ...Array(3).fill(`uretprobe /proc/${pid}/root${exe}`)]);
    // The cookie is in the link's fdinfo on newer kernels only (not on 6.1 or 6.12): asserted where the kernel tells it.
    if (links.every((l) => l.cookie !== undefined)) assert.deepEqual(new Set(links.map((l) => l.cookie)).size, 3, 'one probe id per function, shared by its entry and return');

    fixture.send('go');
    await fixture.waitLine(/^blocked$/);
    fixture.send('exit');
    await fixture.exited;
    const { code } = await agent.exited; // every target gone: it stops on its own
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));

    const ctx = publishedContexts(fixture.lines);
    const spans = bed.receiver.spans;
    const byName = (n: string) => spans.filter((s) => s.name === n);
    assert.equal(spans.length, THREADS * PER_THREAD + 3 + 1, spans.map((s) => s.name).join(' '));

    // Exactly PER_THREAD spans under each worker's span, with its thread id.
    const work = byName('fixture.work');
    assert.equal(work.length, THREADS * PER_THREAD);
    for (let t = 0; t < THREADS; t++) {
      const c = ctx.find((x) => x.who === `worker${t}`)!;
      const mine = work.filter((s) => s.parentSpanId === c.spanId);
      assert.equal(mine.length, PER_THREAD, `worker${t}`);
      for (const s of mine) {
        assert.equal(s.traceId, c.traceId);
        assert.equal(s.attributes['thread.id'], c.tid);
        assert.equal(s.attributes['process.pid'], pid);
        assert.equal(s.attributes['code.function.name'], 'kspan_fixture_work');
        assert.equal(s.attributes['kspan.uprobe.binary'], exe);
        assert.equal(s.kind, SPAN_KIND_INTERNAL);
        assert.equal(s.status.code, 0);
        assert.ok(s.endTimeUnixNano >= s.startTimeUnixNano);
      }
    }

    // kspan_fixture_recurse(3): three nested calls under main's span, each inside the one before.
    const main = ctx.find((x) => x.who === 'main')!;
    const rec = byName('kspan_fixture_recurse').sort((a, b) => Number(a.startTimeUnixNano - b.startTimeUnixNano));
    assert.equal(rec.length, 3);
    for (const s of rec) {
      assert.equal(s.parentSpanId, main.spanId);
      assert.equal(s.attributes['thread.id'], main.tid);
      assert.equal(s.attributes['kspan.incomplete'], undefined);
    }
    for (let i = 1; i < 3; i++) {
      assert.ok(rec[i].startTimeUnixNano >= rec[i - 1].startTimeUnixNano);
      assert.ok(rec[i].endTimeUnixNano <= rec[i - 1].endTimeUnixNano, 'an inner call ends before its caller');
    }

    // The blocker was inside kspan_fixture_block when the process exited.
    const blocker = ctx.find((x) => x.who === 'blocker')!;
    const [blocked] = byName('kspan_fixture_block');
    assert.equal(blocked.parentSpanId, blocker.spanId);
    assert.equal(blocked.attributes['thread.id'], blocker.tid);
    assert.equal(blocked.attributes['kspan.incomplete'], true);
    assert.equal(blocked.attributes['kspan.incomplete.reason'], 'thread_exit');
    assert.equal(blocked.status.code, STATUS_ERROR);

    const stop = agentStopLog(agent);
    assert.equal(stop.kernel?.KSPAN_C_CALL_UNMATCHED, 0);
    assert.equal(stop.kernel?.KSPAN_C_CALL_TOO_DEEP, 0);
    assert.equal(stop.kernel?.KSPAN_C_CALL_TABLE_FULL, 0);
    assert.deepEqual(stop.uprobes?.calls, { spans: THREADS * PER_THREAD + 4, orphans: 0, nested: 0, unknownProbe: 0 });

    // Nothing left attached.
    const left = systemLinkIds();
    assert.deepEqual(links.filter((l) => left.has(l.linkId)), []);
    assert.deepEqual(tracefsUprobes(exe), []);
  });

  test('a binary\'s probes are detached when no traced process maps it any more; a shared libc stays probed until its last target exits', async () => {
    const exe = callsFixturePath();
    const fixture = bed.group.start(exe, ['threads', '1']);
    const pid = Number((await fixture.waitLine(/^ready pid (\d+)$/))[1]);
    const other = bed.group.start('sleep', ['600']); // maps libc, not the fixture
    const agent = bed.group.start(KSPAN_BIN, [
      'run', '--no-sched', '--pid', String(pid), '--pid', String(other.pid), '--otlp-endpoint', bed.receiver.endpoint,
      '--uprobe-presets', 'dns', '--uprobe', 'calls:kspan_fixture_work',
    ]);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    const before = heldUprobeLinks(agent.pid);
    // getaddrinfo in libc (entry, dns return) once for both targets; kspan_fixture_work in the fixture.
    const what = (l: HeldLink) => `${l.eventType} ${basename(l.path)} ${l.progName.slice(0, 10)}`;
    assert.deepEqual(before.map(what).sort(), ['uprobe calls uprobe_cal', 'uprobe libc.so.6 uprobe_cal', 'uretprobe calls uprobe_cal', 'uretprobe libc.so.6 uprobe_dns']);

    fixture.send('go');
    await fixture.waitLine(/^blocked$/);
    fixture.send('exit');
    await fixture.exited;
    // The agent notices the exit on its next check (every 2 s) and lets the fixture's binary go.
    await until(() => (heldUprobeLinks(agent.pid, { names: false }).length === 2 ? true : undefined), 15_000, 'the fixture\'s probes to be detached');
    const after = heldUprobeLinks(agent.pid);
    assert.deepEqual(after.map(what).sort(), ['uprobe libc.so.6 uprobe_cal', 'uretprobe libc.so.6 uprobe_dns']);
    const gone = before.filter((l) => !after.some((a) => a.linkId === l.linkId));
    assert.deepEqual(gone.map(what).sort(), ['uprobe calls uprobe_cal', 'uretprobe calls uprobe_cal']);
    const system = systemLinkIds();
    assert.deepEqual(gone.filter((l) => system.has(l.linkId)), [], 'no longer anywhere on the system');
    assert.ok(after.every((l) => system.has(l.linkId)));
    assert.deepEqual(tracefsUprobes(exe), []);

    other.child.kill('SIGKILL');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const left = systemLinkIds();
    assert.deepEqual(before.filter((l) => left.has(l.linkId)), []);
    assert.deepEqual(tracefsUprobes('libc.so'), []);
    // One call per worker thread, each under its span.
    const spans = bed.receiver.spans.filter((s) => s.name === 'kspan_fixture_work');
    const workers = publishedContexts(fixture.lines).filter((c) => c.who.startsWith('worker'));
    assert.deepEqual(spans.map((s) => s.parentSpanId).sort(), workers.map((c) => c.spanId).sort());
  });
});
