/**
 * Trace context through the CLI, as a user sees it: `kspan events --pid P` on a
 * native OTEP 4947 publisher (test/fixtures/tls) doing request/ack rounds over
 * loopback against the C server fixture. One `{"type":"target"}` line names
 * the scheme and the access model; every send (and recv) record carries
 * exactly the ids the thread had set for that round. A process that starts
 * publishing after kspan started (dlopen on the test's signal) is picked up by
 * the periodic refresh.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ChildProcess } from 'node:child_process';
import { startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { TUNING } from '../../src/core/config.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startServer } from '../helpers/tcp-fixtures.ts';
import { TLS_VARIANTS, buildTlsFixtures, startPublisher, type RunningPublisher, type TlsVariantName } from '../helpers/tls-fixtures.ts';

/** TracingSession's default refresh interval. */
const REFRESH_MS = TUNING.targetRefreshMs;
const THREADS = 3;
const ROUNDS = 4;

const variant = (name: TlsVariantName) => TLS_VARIANTS.find((v) => v.name === name)!;

/** The span id the fixture publishes in round `round`: its last byte plus the round. */
function roundSpan(spanId: string, round: number): string {
  const last = (parseInt(spanId.slice(14), 16) + round) & 0xff;
  return spanId.slice(0, 14) + last.toString(16).padStart(2, '0');
}

/**
 * Every send and recv of the publisher carries its thread's trace id and the
 * span of the round it belongs to: the k-th send of a thread (in time order)
 * is round k, and its ack (the recv after it) too.
 */
function checkRecords(pub: RunningPublisher, evs: EventLine[]): void {
  for (const e of evs) assert.equal(e.pid, pub.pid, 'only the selected process is traced');
  const io = evs.filter((e) => e.type === 'send' || e.type === 'recv');
  for (const t of pub.threads) {
    const mine = io.filter((e) => e.tid === t.tid).sort((a, b) => (a.ts_ns < b.ts_ns ? -1 : a.ts_ns > b.ts_ns ? 1 : 0));
    const sends = mine.filter((e) => e.type === 'send');
    const recvs = mine.filter((e) => e.type === 'recv');
    assert.equal(sends.length, ROUNDS, `thread ${t.index}: one send per round`);
    assert.equal(recvs.length, ROUNDS, `thread ${t.index}: one ack per round`);
    sends.forEach((e, k) => {
      assert.deepEqual(
        { trace_id: e.trace_id, span_id: e.span_id, trace_flags: e.trace_flags, bytes: e.bytes },
        { trace_id: t.traceId, span_id: roundSpan(t.spanId, k), trace_flags: 1, bytes: `${t.index} ${k}\n`.length },
        `thread ${t.index}, round ${k}: send`,
      );
    });
    recvs.forEach((e, k) => {
      assert.deepEqual(
        { trace_id: e.trace_id, span_id: e.span_id, trace_flags: e.trace_flags, bytes: e.bytes },
        { trace_id: t.traceId, span_id: roundSpan(t.spanId, k), trace_flags: 1, bytes: 1 },
        `thread ${t.index}, round ${k}: ack`,
      );
    });
  }
  // Nothing else did I/O: no send/recv without context slipped through.
  assert.equal(io.length, 2 * ROUNDS * pub.threads.length);
}

/** Lets the workers run their rounds against the server; waits for both to finish. */
async function runRounds(pub: RunningPublisher, server: Awaited<ReturnType<typeof startServer>>): Promise<void> {
  server.proc.send('go');
  pub.go();
  for (const t of pub.threads) await pub.waitLine(new RegExp(`^done ${t.index}$`));
  await server.proc.waitLine(/^done$/);
  // close records come from tcp_destroy_sock, which may lag a little
  await new Promise((r) => setTimeout(r, 300));
}

const serverArgs = ['--conns', String(THREADS), '--requests', String(ROUNDS), '--req-bytes', '4', '--resp-bytes', '1'];

describe('kspan events: trace context of a native publisher', e2eOptions(), () => {
  let dir: string;
  const group = new ProcessGroup();
  const pubs: RunningPublisher[] = [];
  before(() => {
    dir = buildTlsFixtures();
  });
  after(async () => {
    await Promise.all(pubs.map((p) => p.stop()));
    await group.killAll();
  });

  for (const name of ['local-exec', 'dlopen-tlsdesc-dynamic'] as const) {
    const v = variant(name);
    test(`${name}: one target line with scheme and model, every send carries its thread's ids`, async () => {
      const server = await startServer(group, serverArgs);
      const service = `tls-pub-${name}`;
      const pub = await startPublisher(dir, v, { threads: THREADS, connect: server.port, rounds: ROUNDS, env: { OTEL_SERVICE_NAME: service } });
      pubs.push(pub);
      const events = await startEvents(group, [pub.pid]);
      await runRounds(pub, server);
      const all = await stopEvents(events);

      const targets = all.filter((e) => e.type === 'target');
      assert.equal(targets.length, 1, `one target line: ${JSON.stringify(targets)}`);
      const t = targets[0];
      assert.deepEqual(
        { pid: t.pid, scheme: t.scheme, model: t.model, dynamic_tls: t.dynamic_tls, reason: t.reason },
        { pid: pub.pid, scheme: 'otel_thread_ctx_v1', model: v.model, dynamic_tls: v.dynamic, reason: undefined },
      );
      assert.equal(t.resource_source, 'environment');
      const resource = t.resource as Record<string, unknown>;
      assert.equal(resource['service.name'], service);
      assert.equal(resource['process.pid'], pub.pid);
      checkRecords(pub, all.filter((e) => e.type !== 'target'));
      await pub.stop();
    });
  }

  test('a process that starts publishing after kspan started is picked up within the refresh interval', async () => {
    const v = variant('dlopen-general-dynamic');
    const server = await startServer(group, serverArgs);
    let child: ChildProcess | undefined;
    const starting = startPublisher(dir, v, {
      threads: THREADS,
      connect: server.port,
      rounds: ROUNDS,
      loadOnStdin: true,
      onSpawn: (c) => (child = c),
    });
    starting.catch(() => {}); // awaited below; a failure must not be unhandled meanwhile
    try {
      assert.ok(child?.pid);
      // kspan looks at the process before it has the library: nothing to read yet.
      const events = await startEvents(group, [child.pid]);
      const first = JSON.parse((await events.waitLine(/^\{"type":"target"/)).input);
      assert.deepEqual({ pid: first.pid, scheme: first.scheme, reason: first.reason }, { pid: child.pid, scheme: 'none', reason: 'not-publishing' });

      child.stdin!.write('l'); // dlopen now
      const pub = await starting;
      pubs.push(pub);
      const loadedAt = performance.now();
      const line = await events.waitLine(/^\{"type":"target".*"scheme":"otel_thread_ctx_v1"/, REFRESH_MS + 3000);
      const pickedUpMs = performance.now() - loadedAt;
      assert.ok(pickedUpMs <= REFRESH_MS + 1000, `picked up ${pickedUpMs.toFixed(0)} ms after the dlopen (refresh every ${REFRESH_MS} ms)`);
      const second = JSON.parse(line.input);
      assert.deepEqual(
        { pid: second.pid, model: second.model, dynamic_tls: second.dynamic_tls, reason: second.reason },
        { pid: pub.pid, model: v.model, dynamic_tls: v.dynamic, reason: undefined },
      );

      await runRounds(pub, server);
      const all = await stopEvents(events);
      const targets = all.filter((e) => e.type === 'target');
      assert.equal(targets[0].scheme, 'none');
      assert.equal(targets.at(-1)!.scheme, 'otel_thread_ctx_v1');
      // A refresh in the middle of the dlopen may see the library not relocated yet.
      for (const mid of targets.slice(1, -1)) assert.match(String(mid.reason), /^not-ready/);
      assert.ok(targets.length <= 3, `target lines: ${JSON.stringify(targets)}`);
      checkRecords(pub, all.filter((e) => e.type !== 'target'));
      console.log(`late publisher picked up ${pickedUpMs.toFixed(0)} ms after its dlopen`);
    } finally {
      child?.kill('SIGKILL');
    }
  });
});
