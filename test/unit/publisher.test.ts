/**
 * kspan/publisher's parts in-process (no root): the span mirror over the real
 * @datadog/pprof writer and the SDK's AsyncLocalStorage context manager (scopes,
 * async continuations, no leak after with(), invalidation on end), the OTEP 4719
 * payload, the OTEL_CTX mapping read back through /proc/self, and the one
 * warning when traffic is served and no span ever became active.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, openSync, readSync, closeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT_CONTEXT, trace, type Context, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { TracerProvider } from '@opentelemetry/sdk-trace';
import { SpanMirror, hexBytes } from '../../src/publisher/span-mirror.ts';
import { loadThreadContextWriter, type ThreadContextWriter } from '../../src/publisher/pprof-writer.ts';
import fc from 'fast-check';
import { encodeProcessContext, type AttributeMap, type AttributeValue } from '../../src/publisher/process-context-payload.ts';
import { ProcessContextMapping, mappingSizeFor } from '../../src/publisher/process-context-mapping.ts';
import { NoSpanWatch, noSpanWarning, type Traffic } from '../../src/publisher/no-span-watch.ts';
import { ProcessContextType, TO_OBJECT, attributesToObject, type PlainAnyValue, type PlainKeyValue } from '../../src/proto/otlp.ts';

const loaded = loadThreadContextWriter(['http.route']);
assert.ok(loaded.ok, loaded.ok ? '' : loaded.reason);
const writer: ThreadContextWriter = loaded.writer;

const manager = new AsyncLocalStorageContextManager();
const mirror = new SpanMirror(writer, () => undefined);
mirror.wrapManager(manager);
const tracer = new TracerProvider().getTracer('unit');

/** The ids of the record the writer has active now, or undefined. */
function active(): { trace: string; span: string; valid: number } | undefined {
  const bytes = writer.getContext()?.debugBytes();
  if (!bytes) return undefined;
  const b = Buffer.from(bytes);
  return { trace: b.toString('hex', 0, 16), span: b.toString('hex', 16, 24), valid: b[24] };
}

function ids(span: Span) {
  const sc = span.spanContext();
  return { trace: sc.traceId, span: sc.spanId, valid: 1 };
}

const withSpan = (span: Span): Context => trace.setSpan(ROOT_CONTEXT, span);

test('with(): the writer holds the span exactly for the scope; nested spans and root restore; nothing leaks', () => {
  const a = tracer.startSpan('a');
  const b = tracer.startSpan('b');
  assert.equal(active(), undefined);
  manager.with(withSpan(a), () => {
    assert.deepEqual(active(), ids(a));
    manager.with(withSpan(b), () => assert.deepEqual(active(), ids(b)));
    assert.deepEqual(active(), ids(a), 'back to a after b');
    manager.with(ROOT_CONTEXT, () => assert.equal(active(), undefined, 'no span: cleared'));
    assert.deepEqual(active(), ids(a));
  });
  assert.equal(active(), undefined, 'restored after the outermost with()');
  a.end();
  b.end();
});

test('async continuations keep their span; a span ending invalidates every frame holding it', async () => {
  const s = tracer.startSpan('async');
  const seen: unknown[] = [];
  const done = manager.with(withSpan(s), async () => {
    await sleep(5);
    seen.push(active());
    await new Promise((r) => setImmediate(r));
    seen.push(active());
    s.end();
    seen.push(active());
  });
  assert.equal(active(), undefined, 'the caller is not in the span');
  await done;
  assert.deepEqual(seen, [ids(s), ids(s), { ...ids(s), valid: 0 }]);
  assert.equal(mirror.stats.invalidated >= 1, true);
});

test('one ThreadContext per span, reused on every entry; remote and invalid spans publish nothing', () => {
  const s = tracer.startSpan('reused');
  const before = mirror.stats.contexts;
  let first: unknown;
  manager.with(withSpan(s), () => (first = writer.getContext()));
  manager.with(withSpan(s), () => assert.equal(writer.getContext(), first));
  assert.equal(mirror.stats.contexts, before + 1);
  s.end();

  const remote = trace.wrapSpanContext({ traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: 1, isRemote: true });
  manager.with(withSpan(remote), () => assert.equal(active(), undefined));
  const invalid = trace.wrapSpanContext({ traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 });
  manager.with(withSpan(invalid), () => assert.equal(active(), undefined));
  const ended = tracer.startSpan('ended');
  ended.end();
  manager.with(withSpan(ended), () => assert.equal(active(), undefined, 'an ended span is not published'));
});

test('bound callbacks (context.bind) go through with()', () => {
  const s = tracer.startSpan('bound');
  const fn = manager.bind(withSpan(s), () => active());
  assert.deepEqual(fn(), ids(s));
  assert.equal(active(), undefined);
  s.end();
});

test('hexBytes', () => {
  assert.deepEqual(Buffer.from(hexBytes('00ff7fA0')), Buffer.from([0, 255, 127, 160]));
});

test('process context payload: Resource in field 1, threadlocal keys in field 2', () => {
  const bytes = encodeProcessContext(
    { 'service.name': 'svc', 'service.instance.id': 'i-1', port: 8080, ratio: 0.5, on: true, tags: ['a', 'b'], skipped: undefined },
    loaded.threadlocal,
  );
  const obj = ProcessContextType.toObject(ProcessContextType.decode(bytes), TO_OBJECT) as {
    resource: { attributes: PlainKeyValue[] };
    attributes: PlainKeyValue[];
  };
  assert.deepEqual(attributesToObject(obj.resource.attributes), {
    'service.name': 'svc',
    'service.instance.id': 'i-1',
    port: 8080,
    ratio: 0.5,
    on: true,
    tags: ['a', 'b'],
  });
  assert.deepEqual(attributesToObject(obj.attributes), {
    'threadlocal.schema_version': 'nodejs_v1_dev',
    'threadlocal.attribute_key_map': ['http.route'],
  });
});

/** protobufjs's encoding of the same payload, from the values OpenTelemetry JS attributes can hold: the reference for the writer. */
function protobufjsPayload(resource: AttributeMap, threadlocal: AttributeMap): Uint8Array {
  const any = (v: AttributeValue): PlainAnyValue | undefined => {
    if (v === null || v === undefined) return undefined;
    if (typeof v === 'string') return { stringValue: v };
    if (typeof v === 'boolean') return { boolValue: v };
    if (typeof v === 'bigint') return { intValue: v.toString() };
    if (typeof v === 'number') return Number.isSafeInteger(v) ? { intValue: v } : { doubleValue: v };
    if (Array.isArray(v)) return { arrayValue: { values: v.map((item) => any(item as AttributeValue) ?? {}) } };
    return undefined;
  };
  const kvs = (attrs: AttributeMap): PlainKeyValue[] =>
    Object.entries(attrs).flatMap(([key, value]) => {
      const v = any(value);
      return v ? [{ key, value: v }] : [];
    });
  return ProcessContextType.encode(ProcessContextType.fromObject({ resource: { attributes: kvs(resource) }, attributes: kvs(threadlocal) })).finish();
}

test('process context payload: the same bytes as protobufjs over generated attributes (seeded)', () => {
  const scalar = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 40 }),
    fc.string({ maxLength: 200 }),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double(),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    fc.constantFrom(null, undefined, 0, -0, 2 ** 53, -(2 ** 63), 2 ** 64, 0.5, Number.NaN, Infinity),
  );
  const value = fc.oneof(scalar, fc.array(fc.oneof(fc.string({ maxLength: 20 }), fc.integer(), fc.double(), fc.boolean(), fc.constantFrom(null, undefined)), { maxLength: 6 }));
  const attrs = fc.dictionary(fc.string({ maxLength: 30 }), value, { maxKeys: 12 }) as fc.Arbitrary<AttributeMap>;
  fc.assert(
    fc.property(attrs, attrs, (resource, threadlocal) => {
      assert.deepEqual(Buffer.from(encodeProcessContext(resource, threadlocal)), Buffer.from(protobufjsPayload(resource, threadlocal)));
    }),
    { seed: 4719, numRuns: 2000 },
  );
  // A Resource past the one-byte lengths (nested lengths of two and three bytes).
  const big = { 'service.name': 'x'.repeat(300), tags: Array.from({ length: 2000 }, (_, i) => `t${i}`) };
  assert.deepEqual(Buffer.from(encodeProcessContext(big, loaded.threadlocal)), Buffer.from(protobufjsPayload(big, loaded.threadlocal)));
});

test('OTEL_CTX mapping: memfd, header, payload, update protocol, drop', () => {
  assert.equal(mappingSizeFor(10), 8192);
  assert.equal(mappingSizeFor(8192), 12288);
  const first = encodeProcessContext({ 'service.name': 'one' }, {});
  const m = ProcessContextMapping.publish(first);
  try {
    const line = readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(m.address.toString(16) + '-'));
    assert.match(line ?? '', / r--p .*\/memfd:OTEL_CTX \(deleted\)$/);
    let h = readSelf(m.address, 32);
    assert.equal(h.toString('latin1', 0, 8), 'OTEL_CTX');
    assert.equal(h.readUInt32LE(8), 2);
    assert.equal(h.readUInt32LE(12), first.length);
    const t1 = h.readBigUInt64LE(16);
    assert.ok(t1 > 0n && t1 <= BigInt(Date.now() + 1) * 1_000_000n);
    assert.equal(h.readBigUInt64LE(24), m.address + 32n);
    assert.deepEqual(readSelf(m.address + 32n, first.length), Buffer.from(first));

    const second = encodeProcessContext({ 'service.name': 'two', 'service.version': '2' }, {});
    assert.ok(m.fits(second));
    m.update(second);
    h = readSelf(m.address, 32);
    assert.equal(h.readUInt32LE(12), second.length);
    assert.ok(h.readBigUInt64LE(16) >= t1);
    assert.deepEqual(readSelf(m.address + 32n, second.length), Buffer.from(second));
    assert.equal(m.updates, 2);
    assert.equal(m.fits(new Uint8Array(9000)), false);
  } finally {
    m.drop();
  }
  assert.ok(!readFileSync('/proc/self/maps', 'utf8').includes('OTEL_CTX'), 'dropped');
});

function readSelf(addr: bigint, n: number): Buffer {
  const fd = openSync('/proc/self/mem', 'r');
  try {
    const b = Buffer.alloc(n);
    readSync(fd, b, 0, n, addr);
    return b;
  } finally {
    closeSync(fd);
  }
}

test('no span became active: the warning names the likely cause', () => {
  const base = { managers: 1, contexts: 0, managerRegistered: true, requests: 3, connections: 1 };
  const head = 'kspan/publisher: this process served 3 HTTP requests but no OpenTelemetry span became active, so there is no trace context to publish';
  assert.equal(noSpanWarning({ ...base, managers: 0, managerRegistered: false }),
    `${head}: no OpenTelemetry SDK is running (no context manager was registered). Start one before the service serves requests ` +
    '(NodeSDK.start(), or a TracerProvider registered with the AsyncLocalStorage context manager).');
  assert.equal(noSpanWarning({ ...base, managerRegistered: false }),
    `${head}: the OpenTelemetry context manager was disabled (context.disable()). Register one again and pass it to startPublisher({ contextManager }).`);
  assert.equal(noSpanWarning(base),
    `${head}: the SDK runs, but its instrumentation made no span. An ES module app needs OpenTelemetry's loader hook: ` +
    "register('@opentelemetry/instrumentation/hook.mjs', import.meta.url) (from node:module) in a file loaded with --import " +
    'before the app, which starts the SDK there; see the kspan README. Spans started without context.with() or startActiveSpan() never become active either.');
  assert.match(noSpanWarning({ ...base, requests: 0, connections: 1 }) ?? '', /^kspan\/publisher: this process accepted 1 connection that carried data but/);
  assert.equal(noSpanWarning({ ...base, contexts: 1 }), null, 'a span was active');
  assert.equal(noSpanWarning({ ...base, requests: 0, connections: 0 }), null, 'no traffic yet: nothing to say');
});

/** A NoSpanWatch whose timer and traffic the test drives: `tick()` is one look, `traffic()` one report. */
function drivenWatch(state: { managers: number; contexts: number; managerRegistered: boolean }) {
  const w = {
    tick: () => {},
    traffic: (_t: Traffic) => {},
    everyMs: 0,
    warnings: [] as string[],
    stopped: { timer: false, traffic: false },
  };
  new NoSpanWatch({
    state: () => state,
    warn: (m) => w.warnings.push(m),
    every: (fn, ms) => {
      w.everyMs = ms;
      w.tick = fn;
      return () => (w.stopped.timer = true);
    },
    watchTraffic: (on) => {
      w.traffic = on;
      return () => (w.stopped.traffic = true);
    },
  });
  return w;
}

test('no span became active: said once, only after traffic, then the watch stops', () => {
  const w = drivenWatch({ managers: 0, contexts: 0, managerRegistered: false });
  assert.equal(w.everyMs, 10_000, 'first look 10 s after the start');
  w.tick();
  assert.deepEqual(w.warnings, [], 'no traffic yet');
  w.traffic({ kind: 'connection', socket: { bytesRead: 0, destroyed: false } });
  w.traffic({ kind: 'request' });
  w.tick();
  w.tick();
  w.traffic({ kind: 'request' });
  w.tick();
  assert.equal(w.warnings.length, 1);
  assert.match(w.warnings[0], /served 1 HTTP request but no OpenTelemetry span became active.*no OpenTelemetry SDK is running/);
  assert.deepEqual(w.stopped, { timer: true, traffic: true });

  // A span was seen: the watch ends quietly.
  const seen = drivenWatch({ managers: 1, contexts: 2, managerRegistered: true });
  assert.equal(seen.everyMs, 10_000, 'first look 10 s after the start');
  seen.traffic({ kind: 'request' });
  seen.tick();
  assert.deepEqual(seen.warnings, []);
  assert.deepEqual(seen.stopped, { timer: true, traffic: true });
});

test('no span became active: a connection counts once it carries data, so health checks that connect and close say nothing', () => {
  const w = drivenWatch({ managers: 1, contexts: 0, managerRegistered: true });
  const probe = { bytesRead: 0, destroyed: false };
  const later = { bytesRead: 0, destroyed: false };
  w.traffic({ kind: 'connection', socket: probe });
  w.traffic({ kind: 'connection', socket: later });
  w.tick();
  probe.destroyed = true; // a TCP health check: connected, closed, no byte
  w.tick();
  assert.deepEqual(w.warnings, [], 'connections that carried nothing are no evidence');
  later.bytesRead = 42; // open still, and a request arrived on it
  w.tick();
  assert.equal(w.warnings.length, 1);
  assert.match(w.warnings[0], /^kspan\/publisher: this process accepted 1 connection that carried data but no OpenTelemetry span became active/);
});

/** A NoSpanWatch on Node's own diagnostics channels, looking every 50 ms; no SDK. */
function channelWatch() {
  const warnings: string[] = [];
  const watch = new NoSpanWatch({
    state: () => ({ managers: 0, contexts: 0, managerRegistered: false }),
    warn: (m) => warnings.push(m),
    afterMs: 50,
  });
  return { watch, warnings };
}

/** Waits for the first warning (the watch looks every afterMs; a busy machine may run its timer late). */
async function firstWarning(warnings: string[]): Promise<void> {
  for (let i = 0; i < 200 && warnings.length === 0; i++) await sleep(50);
}

test('no span became active: through the diagnostics channels, a connect-and-close is not counted and a connection that sent a byte is', async () => {
  const net = await import('node:net');
  const { watch, warnings } = channelWatch();
  const server = net.createServer((c) => {
    c.on('data', () => {});
    c.on('end', () => c.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const connect = (data?: string) =>
    new Promise<void>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => (data === undefined ? c.end() : c.end(data)));
      c.on('data', () => {});
      c.on('close', () => resolve());
    });
  try {
    await connect();
    await sleep(300); // several looks
    assert.deepEqual(warnings, [], 'a health check alone');
    await connect('x');
    await firstWarning(warnings);
  } finally {
    server.close();
    watch.stop();
  }
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /^kspan\/publisher: this process accepted 1 connection that carried data but/);
});

test('no span became active: Node\'s diagnostics channels count a real request', async () => {
  const http = await import('node:http');
  const { watch, warnings } = channelWatch();
  const server = http.createServer((_req, res) => res.end('ok'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const port = (server.address() as { port: number }).port;
    await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text());
    await firstWarning(warnings);
    await sleep(200); // and nothing more comes
  } finally {
    server.close();
    watch.stop();
  }
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /^kspan\/publisher: this process served 1 HTTP request but/);
});
