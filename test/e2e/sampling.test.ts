/**
 * Sampling decided in the kernel: a traced native server answers requests whose
 * traceparents are sampled one time in ten. No record of an unsampled request
 * leaves the kernel (the per-CPU counter equals the unsampled requests'
 * aggregates exactly), `kspan events --unsampled` still shows them, and `kspan
 * run` exports exactly the sampled requests' kernel spans with exact bytes.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, parseEventLine, startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { parseAppSpan, startClient, startServer, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { drive } from '../helpers/traceparent-client.ts';

const REQUESTS = 30;
const REQ = 200;
const RESP = 3_000;
const sampled = (i: number) => i % 10 === 3;
const SAMPLED = Array.from({ length: REQUESTS }, (_, i) => i).filter(sampled).length;

interface StopLog {
  msg: string;
  counters?: Record<string, number>;
  kernel?: Record<string, number>;
}

describe('sampling in the kernel', e2eOptions(), () => {
  let group: ProcessGroup;
  beforeEach(() => {
    group = new ProcessGroup();
  });
  afterEach(async () => {
    await group.killAll();
  });

  /** Runs the server under `agentArgs` (kspan with --pid added), drives it, stops the agent. */
  async function workload(agentArgs: string[]) {
    const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const agent = group.start(KSPAN_BIN, [...agentArgs, '--pid', String(server.pid)]);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    server.send('go');
    const sent = await drive(port, REQUESTS, REQ, RESP, sampled);
    await server.waitLine(/^done$/);
    await server.exited;
    await new Promise((r) => setTimeout(r, 300)); // the close comes from tcp_destroy_sock
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => !!s);
    assert.equal(app.length, REQUESTS);
    const stop = agent.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as StopLog).find((l) => l.counters ?? l.kernel);
    return { app, sent, agent, stop: stop!, server };
  }

  const traceIds = (sent: string[], pick: (i: number) => boolean) => new Set(sent.filter((_, i) => pick(i)).map((tp) => tp.slice(3, 35)));

  test('kspan events: unsampled exchanges stay in the kernel, counted exactly; --unsampled shows them', async () => {
    const { sent, agent, stop, server } = await workload(['events']);
    const records = agent.lines.filter((l) => l.startsWith('{')).map(parseEventLine).filter((e): e is EventLine => e.type !== 'target');
    const io = records.filter((e) => e.type === 'send' || e.type === 'recv');
    // Each sampled exchange: the request (read before the span, no context) and the response under it.
    const sends = io.filter((e) => e.type === 'send');
    assert.deepEqual(new Set(sends.map((e) => e.trace_id)), traceIds(sent, sampled));
    assert.equal(sends.length, SAMPLED);
    for (const e of sends) assert.equal(e.bytes, RESP);
    const recvs = io.filter((e) => e.type === 'recv');
    assert.equal(recvs.length, SAMPLED);
    for (const e of recvs) assert.equal(e.bytes, REQ);
    // No record carries an unsampled trace id.
    const unsampledIds = traceIds(sent, (i) => !sampled(i));
    assert.deepEqual(records.filter((e) => unsampledIds.has(e.trace_id as string)), []);
    // Two aggregates per unsampled exchange (request and response) made no record,
    // and neither did a retransmit under an unsampled span (a slow machine, e.g. a
    // guest under emulation, retransmits on loopback now and then).
    const close = records.filter((e) => e.type === 'close' && e.pid === server.pid);
    assert.equal(close.length, 1);
    const retransmitRecords = records.filter((e) => e.type === 'retransmit').length;
    const unsampledRetransmits = (close[0].retransmits as number) - retransmitRecords;
    assert.equal(stop.counters?.KSPAN_C_UNSAMPLED, 2 * (REQUESTS - SAMPLED) + unsampledRetransmits, `counters ${JSON.stringify(stop.counters)}; records:\n${agent.lines.join('\n')}`);
    // The connection's totals stay whole.
    assert.equal(close[0].bytes_sent, REQUESTS * RESP);
    assert.equal(close[0].bytes_received, REQUESTS * REQ);

    const all = await workload(['events', '--unsampled']);
    const allSends = all.agent.lines.filter((l) => l.startsWith('{')).map(parseEventLine).filter((e) => e.type === 'send');
    assert.equal(allSends.length, REQUESTS);
    assert.deepEqual(new Set(allSends.map((e) => e.trace_id)), traceIds(all.sent, () => true));
    assert.equal(all.stop.counters?.KSPAN_C_UNSAMPLED, 0);
  });

  test('kspan run: exactly the sampled requests\' kernel spans, with exact bytes', async () => {
    const receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
    try {
      const { app, sent, stop } = await workload(['run', '--no-sched', '--otlp-endpoint', receiver.endpoint]);
      const want = traceIds(sent, sampled);
      const spans = await receiver.waitForSpans(2 * SAMPLED);
      await new Promise((r) => setTimeout(r, 200));
      const kernel = receiver.spans.filter((s) => s.name.startsWith('tcp.'));
      assert.deepEqual(new Set(kernel.map((s) => s.traceId)), want);
      assert.equal(spans.length, receiver.spans.length);
      for (const a of app.filter((x) => want.has(x.traceId))) {
        const children = kernel.filter((s) => s.parentSpanId === a.spanId);
        assert.deepEqual(children.map((s) => [s.name, s.attributes['kspan.bytes']]).sort(), [['tcp.recv', REQ], ['tcp.send', RESP]]);
      }
      // Exact in the events test above, where the close record gives the retransmits
      // under unsampled spans (counted too); here only the lower bound is known.
      const unsampled = stop.kernel?.KSPAN_C_UNSAMPLED ?? 0;
      assert.ok(unsampled >= 2 * (REQUESTS - SAMPLED) && unsampled <= 2 * (REQUESTS - SAMPLED) + 3, `KSPAN_C_UNSAMPLED ${unsampled}`);
    } finally {
      await receiver.stop();
    }
  });
});

describe('orphans left in the kernel, whole connections at a time', e2eOptions(), () => {
  /** One keep-alive connection between the untraced-context fixtures, under `kspan events EXTRA`. */
  async function connection(extra: string[]) {
    const group = new ProcessGroup();
    try {
      const requests = 4;
      const args = ['--requests', String(requests), '--req-bytes', '50', '--resp-bytes', '700'];
      const server = await startServer(group, args);
      const client = startClient(group, ['--port', String(server.port), ...args]);
      const events = await startEvents(group, [server.proc.pid, client.pid], extra);
      server.proc.send('go');
      client.send('go');
      await client.waitLine(/^done$/);
      await Promise.all([client.exited, server.proc.exited]);
      await new Promise((r) => setTimeout(r, 300));
      const records = (await stopEvents(events)).filter((e) => e.type !== 'target');
      const stop = events.stderr.map((l) => JSON.parse(l) as StopLog).find((l) => l.counters);
      return { records, counters: stop?.counters ?? {}, server: server.proc.pid, requests };
    } finally {
      await group.killAll();
    }
  }

  test('--orphans-ratio 0: no exchange or connect of a connection with no context leaves the kernel; the close says so', async () => {
    // Everything, then nothing: what the first run shows is exactly what the second counts.
    const all = await connection([]);
    const none = await connection(['--orphans-ratio', '0']);
    const aggregates = all.records.filter((e) => e.type === 'send' || e.type === 'recv').length;
    const connects = all.records.filter((e) => e.type === 'connect').length;
    assert.equal(connects, 1);
    assert.ok(aggregates >= 2 * 2 * all.requests, `${aggregates} aggregates: a request and a response per exchange on each side`);
    assert.equal(all.counters.KSPAN_C_ORPHAN_SKIPPED, 0);
    assert.deepEqual(none.records.map((e) => e.type).sort(), ['accept', 'close', 'close']);
    for (const c of none.records.filter((e) => e.type === 'close')) {
      assert.equal(c.after_dropped, true);
      assert.equal(c.bytes_sent, c.pid === none.server ? none.requests * 700 : none.requests * 50);
    }
    // A retransmit with no context is left out too (a slow machine retransmits on loopback now and then).
    const retransmits = none.records.filter((e) => e.type === 'close').reduce((n, c) => n + (c.retransmits as number), 0);
    assert.equal(none.counters.KSPAN_C_ORPHAN_SKIPPED, aggregates + connects + retransmits, `all: ${JSON.stringify(all.records, (_, v) => (typeof v === 'bigint' ? String(v) : v))}\nnone: ${JSON.stringify(none.counters)}`);
  });
});
