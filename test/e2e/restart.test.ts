/**
 * Restart pickup: a connection established before kspan started (as after a
 * restart of kspan while its targets are busy) is picked up at its first
 * send or recv: every later exchange is recorded with the context the thread
 * had, byte for byte, and its close too. No accept or connect record (they
 * happened before); the role is inferred in the kernel (an accepted socket
 * keeps its listener's listen() backlog, a connected one has none), so `run`
 * hangs each request's read and response under the server's span.
 * On the sock_length path (Linux ≥ 6.3); the syscall fallback cannot: the
 * cookie of such a socket was never generated (README, "Where it doesn't work").
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, parseEventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { parseAppSpan, startClient, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { chooseIoPath } from '../../src/kernel/kernel-features.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';

const REQUESTS = 3;
const REQ = 100;
const RESP = 700;

describe('restart: connections older than kspan', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('a connection established before kspan started: every later exchange recorded under its span, the close with its bytes, role inferred', { skip: chooseIoPath() === 'sock_length' ? undefined : 'the syscall fallback does not pick up older connections' }, async () => {
    const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    server.send('go'); // accept(), then block in read()
    const client = startClient(group, ['--port', String(port), '--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP), '--traceparent', '--wait']);
    client.send('connect');
    const lport = Number((await client.waitLine(/^connected (\d+)$/))[1]);

    // kspan starts now, on both ends of the established connection.
    const kspan = group.start(KSPAN_BIN, ['events', '--no-sched', '--pid', String(server.pid), '--pid', String(client.pid)]);
    await kspan.waitStderr(/"msg":"tracing"/, 20_000);
    client.send('go');
    await client.waitLine(/^done$/, 20_000);
    const { code } = await kspan.exited; // both targets exit: kspan stops after their sockets closed
    assert.equal(code, cleanExit(kspan.stderr), kspan.stderr.slice(-2).join('\n'));

    const spans = server.lines.map(parseAppSpan).filter((s): s is AppSpan => s !== undefined);
    assert.equal(spans.length, REQUESTS);
    // (A busy machine retransmits on loopback now and then: those records are not the workload's.)
    const evs = kspan.lines.filter((l) => l.startsWith('{') && !l.startsWith('{"type":"target"')).map(parseEventLine).filter((e) => e.type !== 'retransmit');
    const srv = evs.filter((e) => e.pid === server.pid);
    const cli = evs.filter((e) => e.pid === client.pid);

    const shape = (e: (typeof evs)[number]) => ({ type: e.type, role: e.role, bytes: e.bytes, span: e.span_id === null ? null : spans.findIndex((s) => s.spanId === e.span_id && s.traceId === e.trace_id) });
    assert.deepEqual(srv.filter((e) => e.type !== 'close').map(shape), [
      ...Array.from({ length: REQUESTS }, (_, k) => [
        { type: 'recv', role: 'server', bytes: REQ, span: null },
        { type: 'send', role: 'server', bytes: RESP, span: k },
      ]).flat(),
    ], 'the server: each request read, each response under its span');
    const srvClose = srv.filter((e) => e.type === 'close');
    assert.equal(srvClose.length, 1);
    assert.deepEqual({ role: srvClose[0].role, sent: srvClose[0].bytes_sent, received: srvClose[0].bytes_received, local: srvClose[0].local, peer: srvClose[0].peer },
      { role: 'server', sent: REQUESTS * RESP, received: REQUESTS * REQ, local: `127.0.0.1:${port}`, peer: `127.0.0.1:${lport}` });

    assert.deepEqual(cli.filter((e) => e.type !== 'close').map((e) => ({ type: e.type, role: e.role, bytes: e.bytes, ctx: e.trace_id })), [
      ...Array.from({ length: REQUESTS }, () => [
        { type: 'send', role: 'client', bytes: REQ, ctx: null },
        { type: 'recv', role: 'client', bytes: RESP, ctx: null },
      ]).flat(),
    ], 'the client: each request and response');
    const cliClose = cli.filter((e) => e.type === 'close');
    assert.equal(cliClose.length, 1);
    assert.deepEqual({ role: cliClose[0].role, sent: cliClose[0].bytes_sent, received: cliClose[0].bytes_received, cookie: cliClose[0].cookie === srvClose[0].cookie },
      { role: 'client', sent: REQUESTS * REQ, received: REQUESTS * RESP, cookie: false });
    assert.deepEqual(evs.filter((e) => e.type === 'accept' || e.type === 'connect'), [], 'no accept or connect: they happened before kspan');
  });

  test('kspan run: the later exchanges of an older connection are spanned under the server\'s spans', { skip: chooseIoPath() === 'sock_length' ? undefined : 'the syscall fallback does not pick up older connections' }, async () => {
    const receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
    try {
      const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
      const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
      server.send('go');
      const client = startClient(group, ['--port', String(port), '--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP), '--traceparent', '--wait']);
      client.send('connect');
      await client.waitLine(/^connected \d+$/);
      const kspan = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(server.pid), '--otlp-endpoint', receiver.endpoint]);
      await kspan.waitStderr(/"msg":"tracing"/, 20_000);
      client.send('go');
      await client.waitLine(/^done$/, 20_000);
      const { code } = await kspan.exited;
      assert.equal(code, cleanExit(kspan.stderr), kspan.stderr.slice(-2).join('\n'));
      const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => s !== undefined);
      assert.equal(app.length, REQUESTS);
      const spans = await receiver.waitForSpans(2 * REQUESTS);
      const kernel = spans.filter((s) => s.name.startsWith('tcp.'));
      for (const [i, a] of app.entries()) {
        const under = kernel.filter((s) => s.traceId === a.traceId && s.parentSpanId === a.spanId).map((s) => [s.name, s.attributes['kspan.bytes']]).sort();
        assert.deepEqual(under, [['tcp.recv', REQ], ['tcp.send', RESP]], `request ${i}: its request read and its response written`);
      }
      assert.equal(kernel.length, 2 * REQUESTS, 'nothing else (no accept: it happened before kspan)');
    } finally {
      await receiver.stop();
    }
  });
});
