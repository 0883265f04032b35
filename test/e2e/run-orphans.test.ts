/**
 * `kspan run` on services that publish no trace context (the C fixtures of
 * test/fixtures/tcp: a keep-alive server and its clients, plain sockets, no SDK).
 * Without --orphans nothing reaches stdout, and stderr says why, in a sentence at
 * start and with the exact count at the end. With --orphans each request/response
 * exchange is one trace in the OTLP receiver: a tcp.exchange root (SERVER on the
 * accepted socket, CLIENT on the connected one) with exactly its accept/connect,
 * recv and send under it, bytes exact, every span carrying the connection's
 * addresses.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startClient, startServer, type Server } from '../helpers/tcp-fixtures.ts';

const REQ = 79;
const RESP = 1580;
const HOW = 'use --orphans to export them as root spans, or kspan events to see the records';

interface Log {
  level: number;
  msg: string;
}

describe('kspan run on services that publish no trace context', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  before(() => receiver.start());
  afterEach(() => group.killAll());
  after(() => receiver.stop());

  /** A server answering 2 keep-alive requests on each of 2 connections; the agent on it (and on the clients). */
  async function traffic(agentArgs: (server: Server, clients: Proc[]) => string[]) {
    const server = await startServer(group, ['--conns', '2', '--requests', '2', '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
    const clients = [0, 1].map(() =>
      startClient(group, ['--port', String(server.port), '--requests', '2', '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]),
    );
    const agent = group.start(KSPAN_BIN, ['run', ...agentArgs(server, clients), '--log-level', 'info']);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    server.proc.send('go');
    const ports: number[] = [];
    for (const c of clients) {
      c.send('go');
      ports.push(Number((await c.waitLine(/^connected (\d+)$/))[1]));
      await c.waitLine(/^done$/);
    }
    await server.proc.waitLine(/^done$/);
    await Promise.all([server.proc.exited, ...clients.map((c) => c.exited)]);
    await new Promise((r) => setTimeout(r, 300)); // close records come from tcp_destroy_sock
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const logs = agent.stderr.map((l) => JSON.parse(l) as Log);
    return { server, clients, ports, agent, logs };
  }

  test('without --orphans: empty stdout, and a warning at start and at the end with the count', async () => {
    const { server, agent, logs } = await traffic((s) => ['--pid', String(s.proc.pid), '--console']);
    assert.deepEqual(agent.lines, [], 'nothing on stdout');
    const who = `pid ${server.proc.pid} (server) publishes no trace context`;
    // (The targets' exits are warnings of their own, when the agent notices them before it stops.)
    const warnings = logs.filter((l) => l.level === 40 && l.msg !== 'target exited; no longer traced');
    assert.deepEqual(warnings.map((l) => l.msg), [
      `${who}: its kernel spans have no parent and are dropped; ${HOW}`,
      // 2 connections × (accept + 2 × (recv + send))
      `${who}: 10 kernel spans had no parent and were dropped; ${HOW}`,
    ]);
    const order = logs.map((l) => l.msg);
    assert.ok(order.indexOf('tracing') > order.findIndex((m) => m.startsWith(who)), 'said before tracing starts');
  });

  test('with --orphans: one trace per exchange, a tcp.exchange root over its accept/connect, recv and send', async () => {
    const { server, clients, ports, logs } = await traffic((s, cs) => [
      ...[s.proc, ...cs].flatMap((p) => ['--pid', String(p.pid)]),
      '--orphans',
      '--otlp-endpoint',
      receiver.endpoint,
    ]);
    assert.deepEqual(logs.filter((l) => l.level >= 40 && l.msg !== 'target exited; no longer traced').map((l) => l.msg), [],
      'no warning: the spans are exported');
    assert.ok(logs.some((l) => l.level === 30 && l.msg === `pid ${server.proc.pid} (server) publishes no trace context: 10 kernel spans exported, one trace per request/response exchange (--orphans)`));
    const spans = receiver.spans;
    const byTrace = new Map<string, ReceivedSpan[]>();
    for (const s of spans) byTrace.set(s.traceId, [...(byTrace.get(s.traceId) ?? []), s]);
    // Per connection and side: two exchanges, the first with the accept (connect).
    const expected: string[] = [];
    const seen: string[] = [];
    for (const [i, port] of ports.entries()) {
      for (const side of ['server', 'client'] as const) {
        const pid = side === 'server' ? server.proc.pid : clients[i].pid;
        const local = side === 'server' ? server.port : port;
        const peer = side === 'server' ? port : server.port;
        const roots = spans
          .filter((s) => s.name === 'tcp.exchange' && s.resource['process.pid'] === pid &&
            s.attributes['network.local.port'] === local && s.attributes['network.peer.port'] === peer)
          .sort((a, b) => (a.startTimeUnixNano < b.startTimeUnixNano ? -1 : 1));
        for (const [n, root] of roots.entries()) {
          const open = side === 'server' ? 'tcp.accept' : 'tcp.connect';
          const [inName, outName] = side === 'server' ? ['tcp.recv', 'tcp.send'] : ['tcp.send', 'tcp.recv'];
          const trace = byTrace.get(root.traceId)!;
          assert.equal(root.parentSpanId, '', 'the exchange is the root');
          assert.equal(root.kind, side === 'server' ? 2 : 3, 'SERVER / CLIENT (OTLP numbering)');
          for (const s of trace) {
            if (s === root) continue;
            assert.equal(s.parentSpanId, root.spanId, `${s.name} under its exchange`);
            assert.equal(s.kind, 1, 'INTERNAL');
            assert.ok(s.startTimeUnixNano >= root.startTimeUnixNano && s.endTimeUnixNano <= root.endTimeUnixNano, `${s.name} inside the exchange`);
          }
          for (const s of trace) {
            const a = s.attributes;
            assert.deepEqual(
              [a['network.local.address'], a['network.local.port'], a['network.peer.address'], a['network.peer.port']],
              ['127.0.0.1', local, '127.0.0.1', peer],
              `${s.name}: the connection's addresses`,
            );
            if (side === 'server') assert.deepEqual([a['client.port'], a['server.port']], [peer, local]);
            else assert.equal(a['server.port'], peer);
          }
          seen.push(`${side} ${i}.${n}: ${trace.filter((s) => s !== root).map((s) => `${s.name}${s.attributes['kspan.bytes'] === undefined ? '' : ` ${String(s.attributes['kspan.bytes'])}`}`).sort().join(', ')}`);
          expected.push(`${side} ${i}.${n}: ${[...(n === 0 ? [open] : []), `${inName} ${REQ}`, `${outName} ${RESP}`].sort().join(', ')}`);
        }
        assert.equal(roots.length, 2, `${side} of connection ${i}: two exchanges`);
      }
    }
    assert.deepEqual(seen, expected);
    assert.equal(spans.length, 4 * (4 + 3), 'nothing else: per connection and side, root + accept/connect + recv + send, then root + recv + send');
  });
});
