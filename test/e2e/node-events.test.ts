/**
 * `kspan events` on a Node 24 HTTP service (NodeSDK + http instrumentation +
 * kspan/publisher): the BPF Node walk (bpf/nodejs_ctx.bpf.h) gives every response's
 * send records the ids of that request's server span, as the SDK reports them;
 * large responses under concurrency (some flushed later by libuv from the event
 * loop) keep every byte under their own span; with AsyncContextFrame off the
 * target is reported with no scheme and no context.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { ProcessGroup } from '../helpers/processes.ts';
import { startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { startTracedServer, until, type TracedServer } from '../helpers/traced-server.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';

const opts = e2eOptions();
const group = new ProcessGroup();
const servers: TracedServer[] = [];
after(async () => {
  await group.killAll();
  for (const s of servers) s.cleanup();
});

async function start(o: Parameters<typeof startTracedServer>[1]): Promise<TracedServer> {
  const s = await startTracedServer(group, o);
  servers.push(s);
  return s;
}

interface Fetched {
  localPort: number;
  traceId: string;
  spanId: string;
  bodyBytes: number;
}

/** GET on a fresh connection; the client pauses reading first so big responses back up in the server's socket. */
function fetchBody(server: TracedServer, path: string, headers: Record<string, string>, pauseMs: number): Promise<Fetched> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: server.port, path, headers, agent: false }, (res) => {
      let bodyBytes = 0;
      const localPort = res.socket.localPort!;
      res.pause();
      setTimeout(() => res.resume(), pauseMs);
      res.on('data', (c: Buffer) => (bodyBytes += c.length));
      res.on('end', () =>
        resolve({ localPort, traceId: String(res.headers['x-trace-id']), spanId: String(res.headers['x-span-id']), bodyBytes }),
      );
    });
    req.on('error', reject);
  });
}

const hex = (n: number) => Array.from({ length: n }, () => Math.floor(Math.random() * 256).toString(16).padStart(2, '0')).join('');

function serverSide(all: EventLine[], server: TracedServer): EventLine[] {
  return all.filter((e) => e.type !== 'target' && e.pid === server.pid);
}

test('send records of each response carry its server span ids (traceparent from the client, ids from the SDK)', opts, async () => {
  const server = await start({ publisher: 'path', serviceName: `node-events-${process.pid}` });
  const events = await startEvents(group, [server.pid]);
  const fetched: (Fetched & { parent: string })[] = [];
  for (let i = 0; i < 4; i++) {
    const traceId = hex(16);
    const parent = hex(8);
    const f = await fetchBody(server, '/body?bytes=1000', { traceparent: `00-${traceId}-${parent}-01` }, 0);
    assert.equal(f.traceId, traceId);
    fetched.push({ ...f, parent });
  }
  const spans = await until(async () => {
    const list = JSON.parse(await server.get('/spans')) as { kind: number; traceId: string; spanId: string; parentSpanId?: string }[];
    return fetched.every((f) => list.some((s) => s.spanId === f.spanId)) ? list : undefined;
  }, 5_000, 'the SDK spans');
  await new Promise((r) => setTimeout(r, 300));
  const all = await stopEvents(events);

  const target = all.find((e) => e.type === 'target' && e.pid === server.pid)!;
  assert.equal(target.scheme, 'nodejs_v1_dev');
  assert.equal(target.node_contract, 'G3');
  assert.equal((target.resource as Record<string, unknown>)['service.name'], `node-events-${process.pid}`);

  const evs = serverSide(all, server);
  for (const f of fetched) {
    const sdk = spans.find((s) => s.spanId === f.spanId)!;
    assert.equal(sdk.kind, 1, 'a SERVER span');
    assert.equal(sdk.parentSpanId, f.parent);
    const conn = evs.filter((e) => e.peer === `127.0.0.1:${f.localPort}`);
    const sends = conn.filter((e) => e.type === 'send');
    assert.ok(sends.length >= 1, `sends for port ${f.localPort}`);
    for (const s of sends) {
      assert.equal(s.trace_id, f.traceId);
      assert.equal(s.span_id, f.spanId);
      assert.equal(s.trace_flags, 1);
    }
    const close = conn.find((e) => e.type === 'close')!;
    assert.equal(sends.reduce((a, e) => a + (e.bytes as number), 0), close.bytes_sent, 'every byte sent is in a send record');
  }
  const counters = JSON.parse(events.stderr.find((l) => l.includes('"counters"'))!).counters;
  assert.equal(counters.KSPAN_C_CTX_NODE_REJECTED, 0);
  assert.equal(counters.KSPAN_C_CTX_FAULT, 0);
});

test('concurrent 100 kB-1 MB responses: every byte of each response under its own server span', opts, async () => {
  // A 16 kB send buffer: the responses are written in pieces, most from the event loop.
  const server = await start({ publisher: 'path', env: { FIXTURE_SNDBUF: '16384' } });
  const events = await startEvents(group, [server.pid]);
  const sizes = [100_000, 250_000, 400_000, 550_000, 700_000, 850_000, 1_000_000, 1_000_000];
  // Paused readers: the responses outgrow the socket buffers and libuv flushes the rest later.
  const fetched = await Promise.all(sizes.map((n, i) => fetchBody(server, `/body?bytes=${n}`, {}, 50 + 10 * i)));
  await new Promise((r) => setTimeout(r, 300));
  const all = await stopEvents(events);
  const evs = serverSide(all, server);
  const spanIds = new Set(fetched.map((f) => f.spanId));
  assert.equal(spanIds.size, sizes.length, 'one span per request');
  let calls = 0;
  for (const [i, f] of fetched.entries()) {
    assert.equal(f.bodyBytes, sizes[i]);
    const conn = evs.filter((e) => e.peer === `127.0.0.1:${f.localPort}`);
    const sends = conn.filter((e) => e.type === 'send');
    const close = conn.find((e) => e.type === 'close')!;
    assert.ok(close, `close for port ${f.localPort}`);
    const mine = sends.filter((e) => e.span_id === f.spanId);
    const others = sends.filter((e) => e.span_id !== f.spanId);
    assert.deepEqual(
      others.map((e) => ({ span: e.span_id, bytes: e.bytes })),
      [],
      `response ${i} (${sizes[i]} B): no bytes under another span or none`,
    );
    assert.equal(mine.reduce((a, e) => a + (e.bytes as number), 0), close.bytes_sent, `response ${i}: all its bytes`);
    assert.ok((close.bytes_sent as number) > sizes[i]);
    calls += mine.reduce((a, e) => a + (e.calls as number), 0);
  }
  assert.ok(calls > 4 * sizes.length, `responses took many sends each (${calls} calls)`);
});

for (const how of ['flag', 'NODE_OPTIONS'] as const) {
  test(`AsyncContextFrame off (${how}): the target has no scheme and its records no context`, opts, async () => {
    const server = await start({
      publisher: 'path',
      nodeArgs: how === 'flag' ? ['--no-async-context-frame'] : [],
      env: how === 'NODE_OPTIONS' ? { NODE_OPTIONS: '--no-async-context-frame' } : {},
    });
    const events = await startEvents(group, [server.pid]);
    const f = await fetchBody(server, '/body?bytes=1000', {}, 0);
    assert.match(f.spanId, /^[0-9a-f]{16}$/, 'the app still traces');
    await new Promise((r) => setTimeout(r, 300));
    const all = await stopEvents(events);
    const target = all.find((e) => e.type === 'target' && e.pid === server.pid)!;
    assert.equal(target.scheme, 'none');
    const sends = serverSide(all, server).filter((e) => e.type === 'send');
    assert.ok(sends.length >= 1);
    for (const s of sends) assert.equal(s.trace_id, null);
    assert.equal(server.proc.stderr.filter((l) => l.includes('kspan/publisher')).length, 1);
  });
}
