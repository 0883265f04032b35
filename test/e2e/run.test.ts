/**
 * `kspan run` end to end: a traced native server (publishing otel_thread_ctx_v1
 * per request), a client sending W3C traceparents, the real kernel, and an OTLP
 * gRPC receiver decoding what arrives. Every request's server span gets tcp.recv
 * and tcp.send children with the exact byte counts, its trace id and parent, and
 * the server's Resource.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, stopLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { createNetnsPair, waitSocketsGone, type NetnsPair } from '../helpers/netns.ts';
import { startRetransmitOracle } from '../helpers/retransmit-oracle.ts';
import { scaled } from '../helpers/timeouts.ts';
import { parseAppSpan, startClient, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { drive } from '../helpers/traceparent-client.ts';

const REQ = 300;
const RESP = 20_000;

function children(spans: ReceivedSpan[], parent: AppSpan, name: string): ReceivedSpan[] {
  return spans.filter((s) => s.parentSpanId === parent.spanId && s.name === name);
}

describe('kspan run', e2eOptions(), () => {
  let group: ProcessGroup;
  let receiver: OtlpReceiver;
  beforeEach(async () => {
    group = new ProcessGroup();
    receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
  });
  afterEach(async () => {
    await group.killAll();
    await receiver.stop();
  });

  async function traced(requests: number, serverArgs: string[] = [], agentArgs?: string[]) {
    const service = `fixture-${process.pid}`;
    const server = group.start(tracedServerPath(), ['--requests', String(requests), '--req-bytes', String(REQ), '--resp-bytes', String(RESP), ...serverArgs], {
      env: { ...process.env, OTEL_SERVICE_NAME: service },
    });
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const agent = group.start(KSPAN_BIN, agentArgs
      ? [...agentArgs, '--pid', String(server.pid)]
      : ['run', '--no-sched', '--pid', String(server.pid), '--otlp-endpoint', receiver.endpoint]);
    await agent.waitStderr(/"msg":"(tracing|recording)"/, 20_000);
    server.send('go');
    const sent = await drive(port, requests, REQ, RESP);
    await server.waitLine(/^done$/);
    const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => !!s);
    assert.equal(app.length, requests);
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    return { app, sent, service, agent };
  }

  test('server spans get tcp.recv / tcp.send children with exact bytes, ids, parentage, Resource', async () => {
    const requests = 4;
    const { app, sent, service } = await traced(requests);
    // 4 × (recv + send) + accept + the connection's close is not a span
    const spans = await receiver.waitForSpans(2 * requests + 1);
    for (const [i, a] of app.entries()) {
      assert.equal(a.traceId, sent[i].slice(3, 35), 'the fixture continued the client trace');
      const recv = children(spans, a, 'tcp.recv');
      const send = children(spans, a, 'tcp.send');
      assert.equal(recv.length, 1, `one tcp.recv under request ${i}`);
      assert.equal(send.length, 1, `one tcp.send under request ${i}`);
      assert.equal(recv[0].attributes['kspan.bytes'], REQ);
      assert.equal(send[0].attributes['kspan.bytes'], RESP);
      for (const s of [...recv, ...send]) {
        assert.equal(s.traceId, a.traceId);
        assert.equal(s.kind, 1, 'INTERNAL');
        assert.equal(s.resource['service.name'], service);
        assert.equal(s.attributes['network.transport'], 'tcp');
        assert.equal(s.attributes['network.local.address'], '127.0.0.1');
        assert.equal(s.attributes['http.route'], undefined, 'the record carries no attributes');
        assert.ok(s.startTimeUnixNano <= s.endTimeUnixNano);
      }
      // the response is written while the span is active: inside its window
      assert.ok(send[0].startTimeUnixNano >= a.startNs && send[0].endTimeUnixNano <= a.endNs,
        `send [${send[0].startTimeUnixNano}, ${send[0].endTimeUnixNano}] within span [${a.startNs}, ${a.endNs}]`);
      // the request is read before the span starts, and ends before it does
      assert.ok(recv[0].endTimeUnixNano <= a.endNs);
    }
    const accepts = spans.filter((s) => s.name === 'tcp.accept');
    assert.equal(accepts.length, 1, 'tcp.accept once, on the first request of the connection');
    assert.equal(accepts[0].parentSpanId, app[0].spanId);
    assert.equal(spans.filter((s) => s.name === 'tcp.recv' || s.name === 'tcp.send').length, 2 * requests);
  });

  test('the thread-context record\'s attributes, named by the process context\'s key map, are on the kernel spans', async () => {
    const requests = 3;
    const { app, service } = await traced(requests, ['--route', '/orders']);
    const spans = await receiver.waitForSpans(2 * requests + 1);
    const appIds = new Set(app.map((a) => a.spanId));
    const kernel = spans.filter((s) => appIds.has(s.parentSpanId));
    assert.deepEqual(kernel.map((s) => s.name).sort(),
      ['tcp.accept', ...new Array(requests).fill('tcp.recv'), ...new Array(requests).fill('tcp.send')].sort());
    for (const s of kernel) {
      assert.equal(s.attributes['http.route'], '/orders', `${s.name} carries http.route`);
      assert.equal(s.attributes['kspan.context.unknown_attribute_keys'], undefined);
      assert.equal(s.attributes['kspan.context.attributes_truncated'], undefined);
      assert.equal(s.resource['service.name'], service, 'the Resource from the published process context');
    }
  });

  test('an unsampled parent gets no kernel spans', async () => {
    await traced(2, ['--unsampled']);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(receiver.spans.filter((s) => s.name.startsWith('tcp.')).map((s) => s.name), []);
  });

  test('record then replay: the same spans from the file, under the recorded Resource and key map', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kspan-rec-'));
    try {
      const file = join(dir, 'run.records');
      const { app, service } = await traced(3, ['--route', '/orders'], ['record', '-o', file]);
      assert.equal(receiver.spanCount, 0, 'recording exports nothing');
      const replay = group.start(KSPAN_BIN, ['replay', file, '--otlp-endpoint', receiver.endpoint]);
      const { code } = await replay.exited;
      assert.equal(code, 0, replay.stderr.join('\n'));
      const spans = await receiver.waitForSpans(7);
      for (const a of app) {
        const recv = children(spans, a, 'tcp.recv');
        const send = children(spans, a, 'tcp.send');
        assert.deepEqual([recv.length, send.length], [1, 1]);
        assert.equal(recv[0].attributes['kspan.bytes'], REQ);
        assert.equal(send[0].attributes['kspan.bytes'], RESP);
        assert.equal(send[0].traceId, a.traceId);
        assert.equal(send[0].resource['service.name'], service);
        assert.ok(send[0].startTimeUnixNano >= a.startNs && send[0].endTimeUnixNano <= a.endNs);
        assert.equal(send[0].attributes['http.route'], '/orders', 'named with the recorded key map');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('retransmits on a lossy path: tcp.retransmit on spans add up to the kernel\'s count', async () => {
    let ns: NetnsPair | undefined;
    try {
      ns = createNetnsPair();
      // drop both ways: data and ACKs, so both ends retransmit
      for (const inNs of [ns.inServer, ns.inClient]) {
        inNs(['iptables', '-A', 'INPUT', '-m', 'statistic', '--mode', 'random', '--probability', '0.1', '-j', 'DROP']);
      }
      // 4 MB through 10 % loss each way: hundreds of retransmits. More bytes meet
      // more of TCP's rare long stalls (a segment lost again and again, its
      // retransmit timeout doubling each time): 8 MB once took over 60 s.
      const requests = 20;
      const resp = 200_000;
      const server = group.start('ip', ['netns', 'exec', ns.server, tracedServerPath(), '--addr', ns.serverAddr,
        '--requests', String(requests), '--req-bytes', String(REQ), '--resp-bytes', String(resp)]);
      const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
      const client = startClient(group, ['--addr', ns.serverAddr, '--port', String(port), '--traceparent',
        '--requests', String(requests), '--req-bytes', String(REQ), '--resp-bytes', String(resp)], ns.client);
      const oracle = await startRetransmitOracle(group, port);
      const agent = group.start(KSPAN_BIN, ['run', '--pid', String(server.pid), '--pid', String(client.pid), '--orphans',
        '--otlp-endpoint', receiver.endpoint]);
      await agent.waitStderr(/"msg":"tracing"/, 20_000);
      server.send('go');
      client.send('go');
      await client.waitLine(/^done$/, 120_000);
      await server.waitLine(/^done$/, 120_000);
      await waitSocketsGone(ns, port); // FIN retransmits, socket teardown
      // Both targets have exited: the agent stops on its own (a SIGTERM could land
      // in its last moments, as it exits); SIGTERM only if it does not.
      const stopped = await Promise.race([agent.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), scaled(30_000)))]);
      if (!stopped) agent.child.kill('SIGTERM');
      const { code } = await agent.exited;
      const kernelCount = await oracle.stop();
      assert.ok(kernelCount > 0, 'the lossy path produced retransmits');
      // Now and then the hook fires while on_retransmit already runs on that CPU
      // (a softirq interrupting it): the kernel skips that run and counts it; kspan
      // reports it as lost and exits 3.
      const skipped = (stopLine(agent.stderr)?.kernel?.skipped_runs?.on_retransmit ?? 0) as number;
      assert.equal(code, skipped ? 3 : 0, agent.stderr.join('\n'));

      const spans = receiver.spans;
      assert.equal(new Set(spans.map((x) => x.spanId)).size, spans.length, 'no span arrived twice');
      // every retransmit is one tcp.retransmit event: on the span that owned the
      // data, or (arriving after that span was exported) on a tcp.retransmit span
      const events = spans.reduce((a, s) => a + s.events.filter((e) => e.name === 'tcp.retransmit').length, 0);
      const where = spans.filter((s) => s.events.some((e) => e.name === 'tcp.retransmit'))
        .map((s) => `${s.name} ${s.spanId} under ${s.parentSpanId}: ${s.events.filter((e) => e.name === 'tcp.retransmit').length}`);
      assert.equal(events + skipped, kernelCount, `kspan: ${events} (+${skipped} skipped), witness: ${kernelCount}; agent stop: ${agent.stderr.filter((l) => l.includes('counters') || l.includes('"kernel"')).join('\n')}\n${where.join('\n')}`);
      for (const s of spans.filter((x) => x.name === 'tcp.retransmit')) assert.ok(s.events.length >= 1);
      // the server's response retransmits hang under its request spans
      const app = server.lines.map(parseAppSpan).filter((x): x is AppSpan => !!x);
      const appIds = new Set(app.map((a) => a.spanId));
      const serverSends = spans.filter((s) => s.name === 'tcp.send' && appIds.has(s.parentSpanId));
      assert.equal(serverSends.reduce((a, s) => a + (s.attributes['kspan.bytes'] as number), 0), requests * resp);
    } finally {
      ns?.remove();
    }
  });
});
