/**
 * SIGKILL while spooling, then a restart, end to end: `kspan run --spool-dir`
 * traces a server while the Collector is away, so every span goes to the spool;
 * once all of them are there, the agent is SIGKILLed and the last record of the
 * last segment is cut in the middle, as a write interrupted by a crash leaves it.
 * A new `kspan run` on the same directory detects the torn segment, counts it,
 * and sends the rest: what arrived plus what the torn record held is exactly what
 * was made, nothing twice.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { decodeExportRequest, OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { pacedTraffic } from '../helpers/paced-traffic.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { parseAppSpan, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { until } from '../helpers/traced-server.ts';

const REQUESTS = 150;
const REQ = 200;
const RESP = 3000;

/** The records of a spool directory as written (src/export/spool.ts): file, offset, length, span count, payload. */
function spoolRecords(dir: string) {
  const out: { file: string; offset: number; length: number; spans: number; payload: Buffer }[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.kspool')).sort()) {
    const b = readFileSync(join(dir, f));
    let off = 8;
    while (off + 12 <= b.length) {
      const len = b.readUInt32LE(off);
      if (off + 12 + len > b.length) break;
      out.push({ file: f, offset: off, length: 12 + len, spans: b.readUInt32LE(off + 4), payload: b.subarray(off + 12, off + 12 + len) });
      off += 12 + len;
    }
  }
  return out;
}

const key = (s: ReceivedSpan) => `${s.parentSpanId} ${s.name}`;

describe('SIGKILL while spooling, then a restart', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  const dir = mkdtempSync(join(tmpdir(), 'kspan-e2e-spool-'));
  after(async () => {
    await group.killAll();
    await receiver.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the restarted kspan sends the spool; what arrived plus the torn record is what was made, once', { timeout: 120_000 }, async () => {
    await receiver.start();
    const endpoint = receiver.endpoint;
    await receiver.stop(); // the Collector is away from the start
    const spool = join(dir, 'spool');
    const server = group.start(tracedServerPath(), ['--requests', String(REQUESTS), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)], {
      env: { ...process.env, OTEL_SERVICE_NAME: `spool-${process.pid}` },
    });
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const first = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(server.pid), '--otlp-endpoint', endpoint, '--spool-dir', spool]);
    await first.waitStderr(/"msg":"tracing"/, 30_000);
    server.send('go');
    await pacedTraffic(port, REQUESTS, REQ, RESP, 10).done;
    await server.waitLine(/^done$/, 30_000);
    const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => !!s);
    assert.equal(app.length, REQUESTS);
    const made = 2 * REQUESTS + 1; // tcp.recv and tcp.send per request, one tcp.accept
    await until(() => (spoolRecords(spool).reduce((n, r) => n + r.spans, 0) === made ? true : undefined), 30_000, 'every span in the spool');

    first.child.kill('SIGKILL');
    assert.equal((await first.exited).signal, 'SIGKILL');
    // The crash cut the last write short.
    const records = spoolRecords(spool);
    const last = records[records.length - 1];
    const torn = decodeExportRequest(last.payload);
    assert.equal(torn.length, last.spans);
    truncateSync(join(spool, last.file), last.offset + Math.floor(last.length / 2));

    await receiver.start();
    const idle = group.start('sleep', ['120']);
    const second = group.start(KSPAN_BIN, ['run', '--pid', String(idle.pid), '--otlp-endpoint', endpoint, '--spool-dir', spool]);
    const recovered = JSON.parse((await second.waitStderr(/"msg":"spool: spans left by an earlier run are sent first"/, 30_000)).input);
    assert.deepEqual(
      [recovered.spans, recovered.tornSegments, recovered.tornBytes],
      [made - torn.length, 1, Math.floor(last.length / 2)], // from the torn record to the end of the file
    );
    await receiver.waitForSpans(made - torn.length, 30_000);
    second.child.kill('SIGTERM');
    const { code } = await second.exited;
    assert.equal(code, 3, 'the torn record is data lost: exit 3');
    const stopped = JSON.parse(second.stderr.find((l) => l.includes('"msg":"stopped; data was lost"'))!);
    assert.equal(stopped.spool.tornSegments, 1);
    assert.equal(stopped.spool.replayedSpans, made - torn.length);
    assert.equal(stopped.spool.pendingSpans, 0);

    const arrived = receiver.spans;
    assert.equal(new Set(arrived.map((s) => s.spanId)).size, arrived.length, 'no span arrived twice');
    assert.equal(arrived.length, made - torn.length);
    // Union of what arrived and what was torn: exactly the spans made.
    const union = [...arrived, ...torn].map(key).sort();
    const expected = [...app.flatMap((a) => [`${a.spanId} tcp.recv`, `${a.spanId} tcp.send`]), ...[...arrived, ...torn].filter((s) => s.name === 'tcp.accept').map(key)].sort();
    assert.equal([...arrived, ...torn].filter((s) => s.name === 'tcp.accept').length, 1);
    assert.deepEqual(union, expected);
    assert.equal(new Set([...arrived, ...torn].map((s) => s.spanId)).size, made);
  });
});
