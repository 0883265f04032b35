/**
 * `kspan run` end to end on a Node 24 service: NodeSDK + http instrumentation +
 * `--import kspan/publisher/register` (test/fixtures/nodejs/traced-server.cjs),
 * the real kernel, and an OTLP gRPC receiver. Clients count the bytes on the wire
 * (test/helpers/raw-http-client.ts), keep-alive and Connection: close, and send a
 * W3C traceparent per request; the fixture reports the server spans its SDK made
 * (GET /spans). Every request's server span gets tcp.recv with exactly the request's
 * bytes and tcp.send children adding up to exactly the response's bytes (status
 * line + headers + body), with its trace id, parent, times inside the span and the
 * SDK's service.name as Resource; under concurrency with 100 kB-1 MB responses
 * flushed in pieces, no byte lands under another request's span.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, stopLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { RawHttpConnection, type RawExchange } from '../helpers/raw-http-client.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { TIMEOUT_SCALE } from '../helpers/timeouts.ts';
import { startTracedServer, type TracedServer } from '../helpers/traced-server.ts';

interface SdkSpan {
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  startNs: string;
  endNs: string;
}

/** One request as the client saw it, with the traceparent it sent. */
interface Sent extends RawExchange {
  traceId: string;
  parentId: string;
  keepAlive: boolean;
  /** 0 for the first request on its connection. */
  nth: number;
}


function traceparent(): { traceId: string; parentId: string; header: string } {
  const traceId = randomBytes(16).toString('hex');
  const parentId = randomBytes(8).toString('hex');
  return { traceId, parentId, header: `00-${traceId}-${parentId}-01` };
}

/** Requests on one connection, one after another; resolves with what the client counted. */
async function converse(port: number, keepAlive: boolean, sizes: number[], pauseMs = 0): Promise<Sent[]> {
  const conn = new RawHttpConnection(port, keepAlive);
  await conn.connect();
  try {
    const out: Sent[] = [];
    for (const [nth, bytes] of sizes.entries()) {
      const tp = traceparent();
      const ex = await conn.request(`/body?bytes=${bytes}`, { headers: { traceparent: tp.header }, pauseMs });
      assert.equal(ex.status, 200);
      assert.equal(ex.bodyBytes, bytes);
      assert.equal(ex.headers['x-trace-id'], tp.traceId, 'the server continued the client trace');
      out.push({ ...ex, traceId: tp.traceId, parentId: tp.parentId, keepAlive, nth });
    }
    return out;
  } finally {
    conn.close();
  }
}

const sum = (spans: ReceivedSpan[]) => spans.reduce((a, s) => a + Number(s.attributes['kspan.bytes']), 0);

describe('kspan run on a Node 24 service with kspan/publisher', e2eOptions(), () => {
  let group: ProcessGroup;
  let receiver: OtlpReceiver;
  let servers: TracedServer[];
  beforeEach(async () => {
    group = new ProcessGroup();
    servers = [];
    receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
  });
  afterEach(async () => {
    await group.killAll();
    for (const s of servers) s.cleanup();
    await receiver.stop();
  });

  async function start(env: Record<string, string> = {}): Promise<{ server: TracedServer; agent: Proc; service: string }> {
    const service = `node-run-${process.pid}-${servers.length}`;
    const server = await startTracedServer(group, { publisher: 'path', serviceName: service, env });
    servers.push(server);
    const agent = group.start(KSPAN_BIN, ['run', '--pid', String(server.pid), '--otlp-endpoint', receiver.endpoint, '--log-level', 'info']);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    return { server, agent, service };
  }

  /** Stops the agent (flushing everything), then asks the fixture for its SDK spans. */
  async function finish(server: TracedServer, agent: Proc): Promise<{ sdk: SdkSpan[]; kernel: ReceivedSpan[] }> {
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const stopped = stopLine<{ msg: string }>(agent.stderr);
    assert.equal(stopped?.msg, code ? 'stopped; data was lost' : 'stopped', `nothing lost but skipped runs: ${JSON.stringify(stopped)}`);
    const target = agent.stderr.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'target' && l.target_pid === server.pid);
    assert.equal(target?.scheme, 'nodejs_v1_dev', 'the agent read the context through the Node walk');
    const sdk = JSON.parse(await server.get('/spans')) as SdkSpan[];
    return { sdk, kernel: receiver.spans };
  }

  /**
   * Every assertion per request, plus: each connection's kernel spans (by the
   * client's port) hang only under that connection's own requests, and its
   * tcp.accept under its first request.
   */
  function check(sent: Sent[], sdk: SdkSpan[], kernel: ReceivedSpan[], server: TracedServer, service: string): void {
    const byId = new Map(sdk.map((s) => [s.spanId, s]));
    const fromServer = kernel.filter((s) => s.attributes['network.local.port'] === server.port);
    const spanIdsByPort = new Map<number, Set<string>>();
    for (const x of sent) {
      const ids = spanIdsByPort.get(x.localPort) ?? new Set<string>();
      ids.add(x.headers['x-span-id']);
      spanIdsByPort.set(x.localPort, ids);
    }
    assert.equal(new Set(sent.map((x) => x.headers['x-span-id'])).size, sent.length, 'one server span per request');

    for (const [i, x] of sent.entries()) {
      const what = `request ${i} (${x.keepAlive ? 'keep-alive' : 'close'} #${x.nth}, ${x.bodyBytes} B body, port ${x.localPort})`;
      const app = byId.get(x.headers['x-span-id']);
      assert.ok(app, `${what}: the SDK reported its server span`);
      assert.equal(app.kind, 1, 'SERVER');
      assert.equal(app.traceId, x.traceId);
      assert.equal(app.parentSpanId, x.parentId);
      const start = BigInt(app.startNs);
      const end = BigInt(app.endNs);

      const recv = fromServer.filter((s) => s.name === 'tcp.recv' && s.parentSpanId === app.spanId);
      const send = fromServer.filter((s) => s.name === 'tcp.send' && s.parentSpanId === app.spanId);
      assert.equal(recv.length, 1, `${what}: one tcp.recv`);
      assert.equal(recv[0].attributes['kspan.bytes'], x.requestBytes, `${what}: tcp.recv = the request's bytes`);
      assert.ok(send.length >= 1, `${what}: tcp.send`);
      assert.equal(sum(send), x.responseBytes, `${what}: tcp.send bytes = the response's bytes on the wire`);
      for (const s of [...recv, ...send]) {
        assert.equal(s.traceId, x.traceId, what);
        assert.equal(s.kind, 1, 'INTERNAL');
        assert.equal(s.flags & 0xff, 1, 'sampled, as the parent');
        assert.equal(s.resource['service.name'], service, 'the SDK service name, via the published process context');
        assert.equal(s.resource['process.pid'], server.pid);
        assert.equal(s.attributes['network.transport'], 'tcp');
        assert.equal(s.attributes['network.peer.port'], x.localPort, `${what}: its own connection`);
        assert.ok(s.startTimeUnixNano <= s.endTimeUnixNano);
      }
      // The SDK takes a span's start from Date.now() (whole milliseconds) and its end as
      // start + a monotonic duration measured from a performance.now() read just after:
      // both sit e before the true times, e ∈ [0, 1 ms) plus the time between the two
      // reads. That is microseconds on a host; under emulation, where the thread can be
      // off the CPU between them, it is allowed 1 ms per unit of KSPAN_TEST_TIMEOUT_SCALE
      // (as the scheduler tests allow their reads). The sends happened inside the true
      // window [start + e, end + e] for one such e.
      const maxE = BigInt(Math.round(TIMEOUT_SCALE * 1e6));
      for (const s of send) {
        const lo = s.endTimeUnixNano - end; // e ≥ this
        const hi = s.startTimeUnixNano - start; // e ≤ this
        assert.ok(hi >= 0n && lo < maxE && lo <= hi,
          `${what}: send [${s.startTimeUnixNano}, ${s.endTimeUnixNano}] within span [${start}, ${end}] (+ e < ${maxE} ns: the SDK's truncation and clock reads)`);
      }
      // The request is read before the span starts (its bytes are the span's all the same).
      assert.ok(recv[0].endTimeUnixNano - end < maxE, `${what}: request read before the span ended`);
    }

    // Nothing of these connections under anything else; the totals match what crossed the sockets.
    for (const [port, ids] of spanIdsByPort) {
      const mine = fromServer.filter((s) => s.attributes['network.peer.port'] === port);
      const io = mine.filter((s) => s.name === 'tcp.send' || s.name === 'tcp.recv');
      assert.deepEqual(io.filter((s) => !ids.has(s.parentSpanId)).map((s) => [s.name, s.parentSpanId, s.attributes['kspan.bytes']]), [],
        `port ${port}: no bytes under another span or none`);
      const exchanges = sent.filter((x) => x.localPort === port);
      assert.equal(sum(io.filter((s) => s.name === 'tcp.send')), exchanges.reduce((a, x) => a + x.responseBytes, 0));
      assert.equal(sum(io.filter((s) => s.name === 'tcp.recv')), exchanges.reduce((a, x) => a + x.requestBytes, 0));
      const accept = mine.filter((s) => s.name === 'tcp.accept');
      assert.equal(accept.length, 1, `port ${port}: one tcp.accept`);
      assert.equal(accept[0].parentSpanId, exchanges.find((x) => x.nth === 0)!.headers['x-span-id'], 'tcp.accept under the first request');
    }
  }

  test('keep-alive and Connection: close clients: exact request/response bytes, ids, parent, times, Resource', async () => {
    const { server, agent, service } = await start();
    const sizes = [1, 1_000, 20_000, 64_000];
    const sent = [
      ...(await converse(server.port, true, sizes)),
      ...(await Promise.all(sizes.map((n) => converse(server.port, false, [n])))).flat(),
    ];
    const { sdk, kernel } = await finish(server, agent);
    check(sent, sdk, kernel, server, service);
    assert.equal(new Set(sent.map((x) => x.localPort)).size, 1 + sizes.length, 'one keep-alive connection, one per close request');
  });

  test('concurrent 100 kB-1 MB responses flushed in pieces: every byte under its own span, none under another\'s', async () => {
    // A 16 kB send buffer and readers that pause: the responses are written in many
    // pieces, most by libuv from the event loop while other requests' spans are active.
    const { server, agent, service } = await start({ FIXTURE_SNDBUF: '16384' });
    const keepAlive = [[100_000, 1_000_000], [250_000, 850_000], [400_000, 700_000], [550_000, 550_000]];
    const close = [[1_000_000], [700_000], [300_000], [120_000]];
    const sent = (await Promise.all([
      ...keepAlive.map((sizes, i) => converse(server.port, true, sizes, 30 + 10 * i)),
      ...close.map((sizes, i) => converse(server.port, false, sizes, 35 + 10 * i)),
    ])).flat();
    const { sdk, kernel } = await finish(server, agent);
    check(sent, sdk, kernel, server, service);
    const sends = kernel.filter((s) => s.name === 'tcp.send' && s.attributes['network.local.port'] === server.port);
    const calls = sends.reduce((a, s) => a + Number(s.attributes['kspan.syscalls']), 0);
    assert.ok(calls > 4 * sent.length, `responses took many sends each (${calls} calls for ${sent.length} responses)`);
  });
});
