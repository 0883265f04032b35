/**
 * Hostile targets, traced together by one `kspan events`: an OTEL_CTX header
 * claiming a huge payload, pointing into the kernel or at unmapped memory, a
 * payload truncated away (the memfd shrunk under its mapping) or remapped to
 * zeros, and a TLS pointer switched to a kernel address mid-run. Each read
 * stays bounded and yields a stated problem; every target's I/O is recorded;
 * every context that was whole is reported, the spoiled ones are counted
 * (KSPAN_C_CTX_FAULT), and a well-behaved target next to them is traced
 * exactly. And a process that exits while its TLS is being resolved is a typed
 * "gone", never another error.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from '../helpers/build-fixture.ts';
import { cleanExit, KSPAN_BIN, parseEventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { TlsResolver, TlsResolveError } from '../../src/context/tls-resolver.ts';
import { KspanCtxScheme } from '../../src/records/abi.generated.ts';

const TCP = join(import.meta.dirname, '../fixtures/tcp');

function fixtures(): string {
  return buildFixture({
    name: 'hostile',
    sources: ['test/fixtures/hostile/hostile_target.c', 'test/fixtures/process-context/otel_ctx_header.h', 'test/fixtures/churn/churn_server.c', 'test/fixtures/tcp/io.h', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      { out: 'hostile_target', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', '-rdynamic', INCLUDE_FLAG, `-I${TCP}`, '{hostile_target.c}', '{otel_ctx_writer.c}', '-o', 'hostile_target'] },
      { out: 'churn_server', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', `-I${TCP}`, '{churn_server.c}', '-o', 'churn_server'] },
    ],
  });
}

const MODES = ['none', 'huge-payload', 'kernel-payload', 'unmapped-payload', 'truncated', 'remapped', 'kernel-switch'] as const;
type Mode = (typeof MODES)[number];
const ROUNDS = 4;

/** What the target line says about each one's process context (exact, or a pattern where an address is in it). */
const PROBLEM: Record<Mode, string | RegExp | undefined> = {
  none: undefined,
  'huge-payload': 'payload of 4294967280 bytes exceeds 1048576',
  'kernel-payload': 'payload pointer 0xffff888000000000 is not a user address',
  'unmapped-payload': /^process \d+: cannot read 31 bytes at 0x[0-9a-f]+ after 5 attempts$/,
  truncated: /^process \d+: cannot read 31 bytes at 0x[0-9a-f]+ after 5 attempts$/,
  remapped: 'undecodable payload: undecodable OTEL_CTX payload: illegal tag: field number 0',
  'kernel-switch': undefined,
};

const hex = (b: Buffer) => b.toString('hex');
/** The ids the fixture publishes for target `id` in round `r`. */
function ids(id: number, r: number): { trace_id: string; span_id: string } {
  const t = Buffer.alloc(16);
  t[0] = id;
  t.writeUInt32LE(r, 8);
  const s = Buffer.alloc(8);
  s[0] = id;
  s[7] = r;
  return { trace_id: hex(t), span_id: hex(s) };
}

describe('hostile targets', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('spoiled process contexts and a TLS pointer switched to a kernel address: bounded reads, stated problems, faults counted, every target traced', async () => {
    const dir = fixtures();
    const peer = group.start(join(dir, 'churn_server'), ['--conns', String(MODES.length * 2 * ROUNDS)]);
    const port = Number((await peer.waitLine(/^port (\d+)$/))[1]);
    const targets: { mode: Mode; id: number; proc: Proc }[] = [];
    for (const [i, mode] of MODES.entries()) {
      const proc = group.start(join(dir, 'hostile_target'), ['--port', String(port), '--rounds', String(ROUNDS), '--mode', mode, '--id', String(i + 1)]);
      await proc.waitLine(/^ready pid \d+$/);
      targets.push({ mode, id: i + 1, proc });
    }
    const kspan = group.start(KSPAN_BIN, ['events', '--no-sched', ...targets.flatMap((t) => ['--pid', String(t.proc.pid)])]);
    await kspan.waitStderr(/"msg":"tracing"/, 20_000);
    for (const t of targets) t.proc.send('go');
    for (const t of targets) await t.proc.waitLine(/^done$/, 30_000);
    await peer.waitLine(/^served/, 30_000);
    for (const t of targets) t.proc.child.stdin!.end();
    const { code } = await kspan.exited;
    assert.equal(code, cleanExit(kspan.stderr), kspan.stderr.slice(-2).join('\n'));
    const logs = kspan.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(logs.filter((l) => (l.level as number) >= 50), [], 'no error');
    const last = logs.at(-1)!;
    assert.equal(last.msg, code ? 'records were lost' : 'stopped');
    const counters = last.counters as Record<string, number>;

    const lines = kspan.lines.filter((l) => l.startsWith('{')).map(parseEventLine);
    for (const { mode, id, proc } of targets) {
      const target = lines.filter((e) => e.type === 'target' && e.pid === proc.pid);
      assert.equal(target.length, 1, `${mode}: one target line`);
      const t = target[0];
      assert.equal(t.scheme, 'otel_thread_ctx_v1', `${mode}: its TLS is resolved`);
      const problem = PROBLEM[mode];
      if (problem === undefined) {
        assert.equal(t.process_context_problem, undefined, `${mode}: ${String(t.process_context_problem)}`);
        assert.equal((t.resource as Record<string, unknown>)['service.name'], `hostile-${id}`);
      } else {
        if (typeof problem === 'string') assert.equal(t.process_context_problem, problem, mode);
        else assert.match(String(t.process_context_problem), problem, mode);
        assert.equal((t.resource as Record<string, unknown>)['service.name'], 'hostile_target', `${mode}: the executable's name stands in`);
      }

      const mine = lines.filter((e) => e.pid === proc.pid && e.type !== 'target');
      const count = (type: string) => mine.filter((e) => e.type === type).length;
      assert.deepEqual([count('connect'), count('send'), count('recv'), count('close')], [2 * ROUNDS, 2 * ROUNDS, 2 * ROUNDS, 2 * ROUNDS], `${mode}: every connection's records`);
      const sends = mine.filter((e) => e.type === 'send').sort((a, b) => (a.ts_ns < b.ts_ns ? -1 : 1));
      sends.forEach((e, r) => {
        const spoiled = mode === 'kernel-switch' && r >= ROUNDS;
        assert.deepEqual({ trace_id: e.trace_id, span_id: e.span_id, bytes: e.bytes }, { ...(spoiled ? { trace_id: null, span_id: null } : ids(id, r)), bytes: 8 }, `${mode}, round ${r}`);
      });
    }
    // Each of the switched rounds read the kernel pointer where the context is read: connect, send, recv.
    assert.equal(counters.KSPAN_C_CTX_FAULT, 3 * ROUNDS, 'every read of the kernel pointer counted');
    assert.equal(counters.KSPAN_C_CTX_INVALID, 0);
    assert.equal(counters.KSPAN_C_CTX_TORN, 0);
  });

  test('processes that exit while their TLS is being resolved: each resolution is whole or a typed "gone"', async () => {
    const dir = fixtures();
    const resolver = new TlsResolver();
    const outcomes = { resolved: 0, gone: 0 };
    const N = 60;
    for (let i = 0; i < N; i++) {
      // It exits on its own a few hundred microseconds to a few milliseconds after it is ready.
      const child = spawn(join(dir, 'hostile_target'), ['--port', '1', '--mode', 'none'], { stdio: ['pipe', 'pipe', 'ignore'] });
      await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
      const pid = child.pid!;
      setTimeout(() => child.kill('SIGKILL'), i % 5);
      let exited = false;
      child.once('exit', () => (exited = true));
      // Resolve again and again until the process is gone: some of these land mid-exit.
      for (;;) {
        try {
          const res = resolver.resolve(pid, { symbol: 'otel_thread_ctx_v1', scheme: KspanCtxScheme.KSPAN_SCHEME_OTEL_V1 });
          assert.ok(res, 'a live process resolves');
          assert.equal(res.model, 'local-exec');
          outcomes.resolved++;
        } catch (err) {
          if (!(err instanceof TlsResolveError)) throw err;
          assert.equal(err.reason, 'gone', `a typed "gone", not: ${err.message}`);
          outcomes.gone++;
          break;
        }
        await new Promise((r) => setImmediate(r));
        if (exited) {
          // Reaped: its /proc entry is gone for good.
          assert.throws(() => resolver.resolve(pid, { symbol: 'otel_thread_ctx_v1', scheme: KspanCtxScheme.KSPAN_SCHEME_OTEL_V1 }), (e: unknown) => e instanceof TlsResolveError && e.reason === 'gone');
          outcomes.gone++;
          break;
        }
      }
    }
    assert.equal(outcomes.gone, N, 'every process ended as a typed "gone"');
    assert.ok(outcomes.resolved >= 1);
  });
});
