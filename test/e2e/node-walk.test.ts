/**
 * The `nodejs_v1_dev` walk against a real Node 24 process (NodeSDK + http
 * instrumentation + kspan/publisher, i.e. @datadog/pprof 5.20's writer), read
 * through /proc/PID/mem while the main thread is blocked in a syscall inside a
 * request's server span. Nothing is stopped. This is where the disputed facts are
 * measured (docs/NODEJS.md): which contract generation pprof writes and where the
 * wrapper keeps the record pointer on Node 24.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessGroup } from '../helpers/processes.ts';
import { readProcessContext } from '../helpers/process-context.ts';
import { resolveMainThreadTls, startTracedServer, until, walkServer, type TracedServer } from '../helpers/traced-server.ts';
import { RECORD_HEADER_SIZE, nodeLayoutFromProcessContext, parseNodeTlsStruct } from '../../src/context/nodejs/v8-walk.ts';
import { withProcessMemory } from '../../src/context/proc-mem.ts';
import { KspanCtxScheme, KspanTlsKind } from '../../src/records/abi.generated.ts';

const group = new ProcessGroup();
let server: TracedServer;
let tls: ReturnType<typeof resolveMainThreadTls>;

before(async () => {
  server = await startTracedServer(group, { publisher: 'path', serviceName: `node-walk-${process.pid}`, tlsDebug: true });
  // The writer fills the TLS struct on its first enter(); the publisher primes it at start.
  tls = resolveMainThreadTls(server);
});
after(async () => {
  await group.killAll();
  server?.cleanup();
});

test('the TLS resolver finds otel_thread_ctx_nodejs_v1 in the dlopened dd_pprof addon, at the address the thread itself sees', () => {
  const r = tls.resolution;
  assert.match(r.modulePath, /\/dd_pprof\.node\.abi\d+\.node$/);
  assert.equal(r.modulePath, server.ready.addon);
  assert.equal(r.model, 'tlsdesc');
  assert.equal(r.loc.scheme, KspanCtxScheme.KSPAN_SCHEME_NODEJS_V1);
  // glibc gives a small dlopened TLS block static TLS (surplus): TP-relative offset.
  assert.equal(r.loc.kind, r.dynamic ? KspanTlsKind.KSPAN_TLS_DTV : KspanTlsKind.KSPAN_TLS_STATIC);
  assert.equal(tls.address, BigInt(server.ready.tls!), 'resolved address == dlsym address in the thread');
});

test('pprof 5.20 writes contract G3: only schema_version and attribute_key_map, the record slot in TLS byte 20', () => {
  const pc = readProcessContext(server.pid)!;
  assert.deepEqual(Object.keys(pc.attributes).sort(), ['threadlocal.attribute_key_map', 'threadlocal.schema_version']);
  const layout = nodeLayoutFromProcessContext(pc.attributes);
  assert.ok(layout.ok);
  assert.equal(layout.layout.generation, 'G3');
  assert.deepEqual(
    { taggedSize: layout.layout.taggedSize, mapTableOffset: layout.layout.mapTableOffset, header: layout.layout.hashMapHeaderSize },
    { taggedSize: 8, mapTableOffset: 24, header: 16 },
  );
  const struct = parseNodeTlsStruct(withProcessMemory(server.pid, (m) => m.read(Number(tls.address), 32)));
  assert.equal(struct.recordSlotOffset, 32, 'Node 24: the record pointer is at wrapper + 32');
  assert.notEqual(struct.cpedSlot, 0n);
  assert.notEqual(struct.alsHandle, 0n);
  assert.notEqual(struct.undefinedAddr, 0n);
  assert.equal(struct.undefinedAddr & 1n, 1n, 'undefined is a tagged heap object');
});

test('idle main thread (in epoll): no context', () => {
  const w = walkServer(server, tls.address);
  assert.equal(w.status, 'none');
  if (w.status === 'none') assert.equal(w.reason, 'no-frame');
});

test('held request: the walk reaches exactly the server span the SDK reports; the pointer is at +32, not +24; end invalidates it', async () => {
  const { ids, response } = await server.hold();
  let w;
  let slot24: bigint | undefined;
  let slot32: bigint | undefined;
  try {
    w = walkServer(server, tls.address);
    assert.equal(w.status, 'context', JSON.stringify(w, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v)));
    const wrapper = w.trace.wrapper!;
    [slot24, slot32] = withProcessMemory(server.pid, (mem) => [mem.readU64(wrapper + 24n), mem.readU64(wrapper + 32n)]);
  } finally {
    server.release();
  }
  await response;
  if (w.status !== 'context') return;
  assert.equal(w.traceId.toString('hex'), ids.traceId);
  assert.equal(w.spanId.toString('hex'), ids.spanId);
  assert.equal(w.traceFlags, ids.traceFlags);
  assert.equal(w.attributes.length, 0);
  assert.equal(w.trace.recordSlot, 32);
  assert.equal(slot32, w.trace.record, 'record pointer at wrapper + 32');
  assert.notEqual(slot24, w.trace.record, 'nothing of the record at wrapper + 24');
  assert.ok(w.trace.buckets! >= 1 && w.trace.hops! >= 1 && w.trace.hops! <= 8);

  // The SDK ended the server span: the same record now reads valid = 0.
  const spans = await until(async () => {
    const list = JSON.parse(await server.get('/spans')) as { spanId: string }[];
    return list.some((s) => s.spanId === ids.spanId) ? list : undefined;
  }, 5_000, 'the finished span');
  assert.ok(spans.length >= 1);
  const header = withProcessMemory(server.pid, (m) => m.read(Number(w.trace.record!), RECORD_HEADER_SIZE));
  assert.equal(header.toString('hex', 0, 16), ids.traceId, 'the record still holds the ids');
  assert.equal(header[24], 0, 'valid = 0 after span.end()');
});

test('two requests in a row: each walk returns its own span, never the previous one', async () => {
  const seen = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const { ids, response } = await server.hold();
    let w;
    try {
      w = walkServer(server, tls.address);
    } finally {
      server.release();
    }
    await response;
    assert.equal(w.status, 'context');
    if (w.status !== 'context') return;
    assert.equal(w.spanId.toString('hex'), ids.spanId);
    assert.ok(!seen.has(ids.spanId));
    seen.add(ids.spanId);
  }
});
