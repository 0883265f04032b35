/**
 * The README's Node.js example, as written: its `telemetry.mjs`, `app.mjs` and
 * command line are read from README.md (the blocks after the
 * `<!-- kspan-node-example: NAME -->` markers), written to a scratch app
 * directory whose node_modules links the OpenTelemetry packages and kspan (what
 * the README's `npm install` makes), and run with Node 24 first on PATH, as the
 * README says. Under `kspan run` → an OTLP receiver, with clients that count the
 * bytes on the wire and send a traceparent: the app's own server spans (its SDK
 * exports them to a second receiver) get tcp.recv with exactly the request's
 * bytes and tcp.send with exactly the response's, tcp.accept under a
 * connection's first request, and the Resource the SDK names ('hello').
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { cleanExit, KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { scratchNodeApp, type NodeApp } from '../helpers/node-app.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { RawHttpConnection, type RawExchange } from '../helpers/raw-http-client.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';

/** The fenced block right after `<!-- kspan-node-example: NAME -->` in README.md. */
function readmeBlock(readme: string, name: string): string {
  const m = new RegExp(`<!-- kspan-node-example: ${name.replace('.', '\\.')} -->\\n\`\`\`\\w*\\n([\\s\\S]*?)\`\`\`\\n`).exec(readme);
  if (!m) throw new Error(`README.md has no kspan-node-example block ${name}`);
  return m[1];
}

/**
 * Resolves once something listens on the port, from /proc/net/tcp{,6} (state 0A):
 * no connection is made, which the publisher would count as traffic and warn of
 * (KSPAN_PUBLISHER_NO_SPANS) when no span follows it within 10 s, as happens
 * while the agent starts under emulation.
 */
async function listening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const listens = () =>
    ['/proc/net/tcp', '/proc/net/tcp6'].some((f) =>
      readFileSync(f, 'latin1').split('\n').some((l) => {
        const c = l.trim().split(/\s+/);
        return c[1]?.endsWith(`:${hex}`) && c[3] === '0A';
      }),
    );
  for (;;) {
    if (listens()) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

interface Sent extends RawExchange {
  traceId: string;
  parentId: string;
  first: boolean;
}

async function converse(port: number, keepAlive: boolean, n: number): Promise<Sent[]> {
  const conn = new RawHttpConnection(port, keepAlive);
  await conn.connect();
  try {
    const out: Sent[] = [];
    for (let i = 0; i < n; i++) {
      const traceId = randomBytes(16).toString('hex');
      const parentId = randomBytes(8).toString('hex');
      const ex = await conn.request(`/r${i}`, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
      assert.equal(ex.status, 200);
      assert.equal(ex.bodyBytes, 'hello\n'.length);
      out.push({ ...ex, traceId, parentId, first: i === 0 });
    }
    return out;
  } finally {
    conn.close();
  }
}

describe('the README\'s Node.js example, run as written', e2eOptions(), () => {
  const group = new ProcessGroup();
  const kernelReceiver = new OtlpReceiver({ protocol: 'grpc' });
  const appReceiver = new OtlpReceiver({ protocol: 'http' });
  let app: NodeApp | undefined;
  before(async () => {
    await kernelReceiver.start();
    await appReceiver.start();
  });
  after(async () => {
    await group.killAll();
    await kernelReceiver.stop();
    await appReceiver.stop();
    app?.cleanup();
  });

  test('kernel spans under the app\'s own server spans, bytes exact', { timeout: 90_000 }, async () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    app = scratchNodeApp({ 'telemetry.mjs': readmeBlock(readme, 'telemetry.mjs'), 'app.mjs': readmeBlock(readme, 'app.mjs') });
    const command = readmeBlock(readme, 'command').trim().split(/\s+/);

    const port = await freePort();
    assert.equal(command[0], 'node');
    const proc = group.start(command[0], command.slice(1), {
      cwd: app.dir,
      env: {
        ...process.env,
        // Node 24 first on PATH, as the README says.
        PATH: `${dirname(process.execPath)}:${process.env.PATH}`,
        NODE_OPTIONS: '',
        PORT: String(port),
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: appReceiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY: '100',
      },
    });
    await listening(port, 20_000);
    const agent = group.start(KSPAN_BIN, ['run', '--pid', String(proc.pid), '--otlp-endpoint', kernelReceiver.endpoint, '--log-level', 'info']);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);

    const sent = [...(await converse(port, true, 3)), ...(await converse(port, false, 1))];
    // The app's SDK exports its server spans; wait for all of them.
    const deadline = Date.now() + 15_000;
    const serverSpans = () => appReceiver.spans.filter((s) => s.kind === 2);
    while (serverSpans().length < sent.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const logs = agent.stderr.map((l) => JSON.parse(l) as Record<string, unknown>);
    const target = logs.find((l) => l.msg === 'target');
    assert.equal(target?.scheme, 'nodejs_v1_dev', 'the publisher is running');
    assert.deepEqual(logs.filter((l) => (l.level as number) >= 40).map((l) => l.msg), [], 'no warning');
    assert.deepEqual(proc.stderr, [], 'the app printed no warning');

    const appSpans = serverSpans();
    assert.equal(appSpans.length, sent.length, 'one SERVER span per request from the SDK');
    const kernel = kernelReceiver.spans;
    for (const [i, x] of sent.entries()) {
      const what = `request ${i} (port ${x.localPort})`;
      const server = appSpans.find((s) => s.traceId === x.traceId);
      assert.ok(server, `${what}: the SDK's server span continues the client's trace`);
      assert.equal(server.parentSpanId, x.parentId);
      assert.equal(server.resource['service.name'], 'hello');
      // The TCP spans; a thread.sched comes too when the event loop left its CPU during the request.
      const under = kernel.filter((k) => k.parentSpanId === server.spanId && k.name !== 'thread.sched');
      const names = under.map((k) => k.name).sort();
      assert.deepEqual(names, x.first ? ['tcp.accept', 'tcp.recv', 'tcp.send'] : ['tcp.recv', 'tcp.send'], what);
      const bytes = (name: string) => under.filter((k) => k.name === name).reduce((n, k) => n + Number(k.attributes['kspan.bytes']), 0);
      assert.equal(bytes('tcp.recv'), x.requestBytes, `${what}: the request's bytes`);
      assert.equal(bytes('tcp.send'), x.responseBytes, `${what}: the response's bytes`);
      for (const k of under) {
        assert.equal(k.traceId, x.traceId);
        assert.equal(k.resource['service.name'], 'hello', 'the Resource the SDK named, via the process context');
        assert.equal(k.resource['process.pid'], proc.pid);
        assert.equal(k.attributes['network.peer.port'], x.localPort);
        assert.equal(k.attributes['network.local.port'], port);
      }
    }
    assert.deepEqual(kernel.filter((k) => !appSpans.some((s) => s.spanId === k.parentSpanId)).map((k) => k.name), [], 'every kernel span under a request');
  });
});
