/**
 * A Collector outage under steady load, end to end: `kspan run --spool-dir` on a
 * traced server answering a request every 50 ms, the real gRPC receiver stopped
 * for KSPAN_E2E_OUTAGE_S seconds (default 60) and started again on the same port. Every request's
 * tcp.recv and tcp.send arrive exactly once (by span id), the spool took what
 * was made during the outage, and export resumes within 5 s of the return.
 * (Outages past grpc-js's 120 s backoff: test/unit/spool-outage.test.ts.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, stopLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { pacedTraffic } from '../helpers/paced-traffic.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { parseAppSpan, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { scaled } from '../helpers/timeouts.ts';
import { until } from '../helpers/traced-server.ts';

const OUTAGE_S = Number(process.env.KSPAN_E2E_OUTAGE_S) > 0 ? Number(process.env.KSPAN_E2E_OUTAGE_S) : 60;
const INTERVAL_MS = 50;
const BEFORE_S = 4;
const AFTER_S = 6;
const REQUESTS = Math.round(((BEFORE_S + OUTAGE_S + AFTER_S) * 1000) / INTERVAL_MS);
const REQ = 200;
const RESP = 3000;

describe('Collector outage under steady load', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  const dir = mkdtempSync(join(tmpdir(), 'kspan-e2e-outage-'));
  after(async () => {
    await group.killAll();
    await receiver.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test(`a ${OUTAGE_S} s outage: every span arrives once, export resumes within 5 s of the return`, { timeout: (OUTAGE_S + scaled(120)) * 1000 }, async () => {
    await receiver.start();
    const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)], {
      env: { ...process.env, OTEL_SERVICE_NAME: `outage-${process.pid}` },
    });
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const spool = join(dir, 'spool');
    const agent = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(server.pid), '--otlp-endpoint', receiver.endpoint, '--spool-dir', spool]);
    await agent.waitStderr(/"msg":"tracing"/, 30_000);
    server.send('go');
    const load = pacedTraffic(port, REQUESTS, REQ, RESP, INTERVAL_MS);

    await until(() => (receiver.spanCount >= 20 ? true : undefined), 20_000, 'spans before the outage');
    await receiver.stop();
    const answeredAtStop = load.answered;
    await new Promise((r) => setTimeout(r, OUTAGE_S * 1000));
    const arrivedInOutage = receiver.spanCount;
    const answeredAtReturn = load.answered;
    assert.ok(answeredAtReturn - answeredAtStop >= (OUTAGE_S * 1000) / INTERVAL_MS / 2, 'the load went on during the outage');
    assert.ok(readdirSync(spool).some((f) => f.endsWith('.kspool')), 'the spool has segments');
    await agent.waitStderr(/"msg":"export failed; spans go to the spool until the Collector answers"/, 1000);
    await receiver.start();
    const returnedAt = Date.now();
    const resumedAt = await until(() => (receiver.spanCount > arrivedInOutage ? Date.now() : undefined), 30_000, 'a span after the return');
    const resumeMs = resumedAt - returnedAt;

    await load.done;
    await server.waitLine(/^done$/, 30_000);
    const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => !!s);
    assert.equal(app.length, REQUESTS);
    // Each request: tcp.recv and tcp.send; the connection: tcp.accept.
    const expected = 2 * REQUESTS + 1;
    await receiver.waitForSpans(expected, 60_000);
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.slice(-20).join('\n'));

    const spans = receiver.spans;
    assert.equal(new Set(spans.map((s) => s.spanId)).size, spans.length, 'no span arrived twice');
    assert.equal(spans.length, expected);
    const byParent = new Map<string, string[]>();
    for (const s of spans) byParent.set(s.parentSpanId, [...(byParent.get(s.parentSpanId) ?? []), s.name]);
    for (const a of app) {
      const names = (byParent.get(a.spanId) ?? []).filter((n) => n !== 'tcp.accept').sort();
      assert.deepEqual(names, ['tcp.recv', 'tcp.send'], `request ${a.spanId}`);
    }
    assert.equal(spans.filter((s) => s.name === 'tcp.accept').length, 1);
    const recvBytes = spans.filter((s) => s.name === 'tcp.recv').map((s) => s.attributes['kspan.bytes']);
    assert.deepEqual(new Set(recvBytes), new Set([REQ]));

    const stopped = stopLine(agent.stderr)!;
    const exp = stopped.spans.export;
    assert.ok(exp.spooled > 0, 'spans went through the spool');
    assert.equal(exp.replayed, exp.spooled);
    assert.equal(exp.exported + exp.replayed, expected);
    assert.equal(exp.droppedQueueFull + exp.droppedFailed + exp.droppedShutdown + exp.droppedSpool, 0);
    assert.equal(stopped.spool.pendingSpans, 0);
    const recovered = JSON.parse(agent.stderr.find((l) => l.includes('"msg":"export: recovered"') && l.includes('outageMs'))!);
    assert.ok(recovered.outageMs >= OUTAGE_S * 1000 - 2000, `outage as kspan saw it: ${recovered.outageMs} ms`);
    process.stderr.write(`# outage ${OUTAGE_S} s: export resumed ${resumeMs} ms after the receiver's return; ${exp.spooled} of ${expected} spans spooled\n`);
    assert.ok(resumeMs < 5000, `export resumed ${resumeMs} ms after the return`);
  });
});
