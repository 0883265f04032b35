/**
 * kspan/publisher in a real Node 24 service instrumented with NodeSDK + the http
 * instrumentation, loaded without code change (--import, by path and by package
 * name) and programmatically: the OTEL_CTX mapping carries the SDK's service.name
 * and the threadlocal keys, and the record read through /proc/PID/mem while a
 * request is held inside its span carries that server span's ids, which the SDK
 * itself reports. With AsyncContextFrame off, or on a Node older than 24, it
 * declines once and the app runs. An ES module app whose SDK made no span (no
 * loader hook) gets one warning that names the hook, once it has served traffic.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { scratchNodeApp } from '../helpers/node-app.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { readProcessContext, otelCtxMappings } from '../helpers/process-context.ts';
import { resolveMainThreadTls, startTracedServer, until, walkServer, type TracedServer } from '../helpers/traced-server.ts';

const group = new ProcessGroup();
const servers: TracedServer[] = [];
after(async () => {
  await group.killAll();
  for (const s of servers) s.cleanup();
});

const SPAN_KIND_SERVER = 1;

async function start(opts: Parameters<typeof startTracedServer>[1]): Promise<TracedServer> {
  const s = await startTracedServer(group, opts);
  servers.push(s);
  return s;
}

function uniqueName(tag: string): string {
  return `kspan-pub-${tag}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
}

/** Holds a request with a known traceparent, walks the main thread, releases it. */
async function heldRecordMatchesServerSpan(server: TracedServer): Promise<void> {
  const tls = resolveMainThreadTls(server);
  const clientTrace = randomHex(16);
  const clientSpan = randomHex(8);
  const { ids, response } = await server.hold({ traceparent: `00-${clientTrace}-${clientSpan}-01` });
  let walked;
  try {
    walked = walkServer(server, tls.address);
  } finally {
    server.release();
  }
  await response;
  assert.equal(ids.traceId, clientTrace, 'the server span continues the client trace');
  assert.equal(walked.status, 'context', `walk: ${JSON.stringify(walked, bigintJson)}`);
  if (walked.status !== 'context') return;
  assert.equal(walked.traceId.toString('hex'), ids.traceId);
  assert.equal(walked.spanId.toString('hex'), ids.spanId);
  assert.equal(walked.traceFlags, 1);

  // The SDK's own report of that request: a finished SERVER span with these ids.
  const span = await until(async () => {
    const list = JSON.parse(await server.get('/spans')) as { kind: number; traceId: string; spanId: string; parentSpanId?: string }[];
    return list.find((s) => s.spanId === ids.spanId);
  }, 5_000, 'the finished server span');
  assert.equal(span.kind, SPAN_KIND_SERVER);
  assert.equal(span.traceId, clientTrace);
  assert.equal(span.parentSpanId, clientSpan);
}

test('--import by path: OTEL_CTX carries the SDK service.name and threadlocal keys; a held request walks to its server span', async () => {
  const serviceName = uniqueName('path');
  const before = BigInt(Date.now()) * 1_000_000n;
  const server = await start({ publisher: 'path', serviceName, tlsDebug: true });
  // The SDK's Resource is published when NodeSDK registers its tracer provider.
  const pc = await until(() => {
    const r = readProcessContext(server.pid);
    return r?.resource['service.name'] === serviceName ? r : undefined;
  }, 5_000, 'the SDK resource in OTEL_CTX');
  const maps = otelCtxMappings(server.pid);
  assert.equal(maps.length, 1, 'one process context');
  assert.match(pc.mapping.name, /^\/memfd:OTEL_CTX/);
  assert.equal(pc.mapping.perms, 'r--p');
  assert.equal(pc.version, 2);
  assert.equal(pc.payloadAddress, pc.mapping.start + 32, 'payload right after the header');
  assert.ok(pc.publishedAtNs >= before && pc.publishedAtNs <= BigInt(Date.now()) * 1_000_000n, 'published_at_ns is now');
  assert.equal(pc.resource['telemetry.sdk.language'], 'nodejs');
  assert.equal(pc.attributes['threadlocal.schema_version'], 'nodejs_v1_dev');
  assert.deepEqual(pc.attributes['threadlocal.attribute_key_map'], []);
  await heldRecordMatchesServerSpan(server);
});

test('--import kspan/publisher/register by package name (node_modules/kspan symlink)', async () => {
  const serviceName = uniqueName('pkg');
  const server = await start({ publisher: 'package', serviceName, tlsDebug: true });
  await until(() => (readProcessContext(server.pid)?.resource['service.name'] === serviceName ? true : undefined), 5_000, 'OTEL_CTX');
  await heldRecordMatchesServerSpan(server);
});

test('programmatic startPublisher() after sdk.start() wraps the registered context manager', async () => {
  const serviceName = uniqueName('prog');
  const server = await start({ publisher: 'programmatic', serviceName, tlsDebug: true });
  await until(() => (readProcessContext(server.pid)?.resource['service.name'] === serviceName ? true : undefined), 5_000, 'OTEL_CTX');
  await heldRecordMatchesServerSpan(server);
});

test('without an SDK Resource, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are published', async () => {
  const serviceName = uniqueName('env');
  const server = await start({
    publisher: 'path',
    env: { FIXTURE_NO_SDK: '1', OTEL_SERVICE_NAME: serviceName, OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=test,team=a%20b' },
  });
  const pc = await until(() => readProcessContext(server.pid), 5_000, 'OTEL_CTX');
  assert.deepEqual(pc.resource, {
    'service.name': serviceName,
    'deployment.environment.name': 'test',
    team: 'a b',
    'telemetry.sdk.language': 'nodejs',
  });
  assert.equal(pc.attributes['threadlocal.schema_version'], 'nodejs_v1_dev');
  assert.deepEqual(JSON.parse(await server.get('/ids')), {}, 'no SDK, no span: the app is as it was');
});

for (const how of ['flag', 'NODE_OPTIONS'] as const) {
  test(`AsyncContextFrame off (--no-async-context-frame via ${how}): declines once, app unchanged, no OTEL_CTX`, async () => {
    const server = await start({
      publisher: 'path',
      nodeArgs: how === 'flag' ? ['--no-async-context-frame'] : [],
      env: how === 'NODE_OPTIONS' ? { NODE_OPTIONS: '--no-async-context-frame' } : {},
    });
    const bodies = [];
    for (let i = 0; i < 3; i++) bodies.push(JSON.parse(await server.get('/ids')) as { traceId?: string; spanId?: string });
    for (const b of bodies) {
      assert.match(b.traceId ?? '', /^[0-9a-f]{32}$/, 'the SDK still traces');
      assert.match(b.spanId ?? '', /^[0-9a-f]{16}$/);
    }
    const declines = server.proc.stderr.filter((l) => l.includes('kspan/publisher'));
    assert.equal(declines.length, 1, `one message, got:\n${server.proc.stderr.join('\n')}`);
    assert.match(declines[0], /KSPAN_PUBLISHER_DECLINED.*async_context_frame support is unavailable.*The application runs unchanged/);
    assert.deepEqual(otelCtxMappings(server.pid), []);
  });
}

function randomHex(bytes: number): string {
  let s = '';
  for (let i = 0; i < bytes; i++) s += Math.floor(Math.random() * 256).toString(16).padStart(2, '0');
  return s.replace(/^0+$/, '1');
}

function bigintJson(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `0x${v.toString(16)}` : v;
}

const ESM_APP_WITHOUT_HOOK = `
import http from 'node:http';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
const discard = { export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} };
new NodeSDK({ serviceName: 'esm-no-hook', traceExporter: discard, instrumentations: [new HttpInstrumentation()] }).start();
const server = http.createServer((req, res) => res.end('ok'));
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: server.address().port })));
`;

test('an ES module app without OpenTelemetry\'s loader hook: after serving requests with no span, one warning naming the hook', async () => {
  const app = scratchNodeApp({ 'app.mjs': ESM_APP_WITHOUT_HOOK });
  try {
    const started = Date.now();
    const proc = group.start(process.execPath, ['--import', 'kspan/publisher/register', 'app.mjs'], { cwd: app.dir, env: { ...process.env, NODE_OPTIONS: '' } });
    const port = Number(JSON.parse((await proc.waitLine(/^\{"port":\d+\}$/, 20_000))[0]).port);
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/`);
      assert.equal(await res.text(), 'ok');
    }
    await proc.waitStderr(/KSPAN_PUBLISHER_NO_SPANS/, 20_000);
    const waited = Date.now() - started;
    assert.ok(waited >= 10_000, `said after the first 10 s, not before (${waited} ms)`);
    for (let i = 0; i < 3; i++) await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text());
    await new Promise((r) => setTimeout(r, 500));
    const warnings = proc.stderr.filter((l) => l.includes('KSPAN_PUBLISHER'));
    assert.equal(warnings.length, 1, `once:\n${proc.stderr.join('\n')}`);
    assert.equal(warnings[0], `(node:${proc.pid}) [KSPAN_PUBLISHER_NO_SPANS] Warning: kspan/publisher: this process served 3 HTTP requests ` +
      'but no OpenTelemetry span became active, so there is no trace context to publish: the SDK runs, but its instrumentation ' +
      "made no span. An ES module app needs OpenTelemetry's loader hook: register('@opentelemetry/instrumentation/hook.mjs', " +
      'import.meta.url) (from node:module) in a file loaded with --import before the app, which starts the SDK there; see the ' +
      'kspan README. Spans started without context.with() or startActiveSpan() never become active either.');
  } finally {
    app.cleanup();
  }
});

/** A node older than 24 on this machine, if there is one (the system's, when setup installed Node 24 beside it). */
function olderNode(): string | undefined {
  for (const bin of ['/usr/bin/node', '/usr/local/bin/node']) {
    try {
      const v = execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim();
      if (Number(/^v(\d+)/.exec(v)?.[1]) < 24) return bin;
    } catch {
      /* not there */
    }
  }
  return undefined;
}

/** Runs `args` in a scratch app on the older Node: exit 0, `stdout` as given, and one decline warning. */
function assertDeclinedOnOlderNode(files: Record<string, string>, args: string[], stdout: (version: string) => string): void {
  const node = olderNode()!;
  const app = scratchNodeApp(files);
  try {
    const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
    const r = spawnSync(node, args, { cwd: app.dir, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, stdout(version));
    assert.match(r.stderr, new RegExp(`^\\(node:\\d+\\) \\[KSPAN_PUBLISHER_DECLINED\\] Warning: kspan/publisher needs Node\\.js 24 or newer; this is ${version.replace(/\./g, '\\.')}, so it is not publishing trace context\\. The application runs unchanged\\.`));
    assert.equal(r.stderr.split('\n').filter((l) => l.includes('KSPAN_PUBLISHER')).length, 1);
  } finally {
    app.cleanup();
  }
}

const noOlderNode = { skip: olderNode() ? undefined : 'no Node < 24 here' };

test('on a Node older than 24: one KSPAN_PUBLISHER_DECLINED warning, and the app runs', noOlderNode, () => {
  assertDeclinedOnOlderNode({ 'app.mjs': "console.log('app ran');\n" }, ['--import', 'kspan/publisher/register', 'app.mjs'], () => 'app ran\n');
});

const PROGRAMMATIC_APP = (load: string) => `${load}
const publisher = startPublisher();
const processor = new KspanSpanProcessor(publisher);
processor.onStart({}, {});
processor.onEnd({});
await processor.forceFlush();
console.log(JSON.stringify({ active: publisher.active, reason: publisher.reason, contexts: publisher.stats.contexts, again: startPublisher() === publisher }));
`;

for (const [kind, file, load] of [
  ['import', 'app.mjs', "import { startPublisher, KspanSpanProcessor } from 'kspan/publisher';"],
  ['require', 'app.cjs', "const { startPublisher, KspanSpanProcessor } = require('kspan/publisher');\n(async () => {"],
] as const) {
  test(`on a Node older than 24, ${kind} 'kspan/publisher': one warning, an inactive publisher, the app runs`, noOlderNode, () => {
    const text = PROGRAMMATIC_APP(load) + (kind === 'require' ? '})();\n' : '');
    assertDeclinedOnOlderNode({ [file]: text }, [file], (version) => `${JSON.stringify({
      active: false,
      reason: `kspan/publisher needs Node.js 24 or newer; this is ${version}, so it is not publishing trace context.`,
      contexts: 0,
      again: true,
    })}\n`);
  });
}
