/**
 * No payload, ever: an echo server answers requests that carry a unique marker,
 * so both directions hold it, while `kspan events`, `kspan record` and `kspan
 * run --orphans --spool-dir` (its Collector away for a while, so the spool fills)
 * trace it at once. The marker must appear in no record, span, attribute, log
 * line, recording or spool file; and the traffic must really have been seen
 * (exact byte counts), or the test proves nothing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, startEvents, stopEvents } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { pacedTraffic } from '../helpers/paced-traffic.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { until } from '../helpers/traced-server.ts';

const REQUESTS = 40;
const SIZE = 1500;
const ECHO = "require('net').createServer((s) => s.on('data', (d) => s.write(d))).listen(0, '127.0.0.1', function () { console.log('port ' + this.address().port); });";

describe('payload canary', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  const dir = mkdtempSync(join(tmpdir(), 'kspan-e2e-canary-'));
  after(async () => {
    await group.killAll();
    await receiver.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a marker in requests and responses appears in no record, span, attribute, log line, recording or spool file', { timeout: 120_000 }, async () => {
    const marker = `kspan-canary-${randomBytes(8).toString('hex')}`;
    const hits = (what: string, text: string | Buffer) => assert.equal(text.includes(marker), false, `the marker leaked into ${what}`);
    await receiver.start();
    const endpoint = receiver.endpoint;
    await receiver.stop(); // spans go to the spool first
    const server = group.start(process.execPath, ['-e', ECHO]);
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const spool = join(dir, 'spool');
    const recording = join(dir, 'canary.records');
    const run = group.start(KSPAN_BIN, ['run', '--pid', String(server.pid), '--orphans', '--otlp-endpoint', endpoint, '--spool-dir', spool, '--log-level', 'debug']);
    const record = group.start(KSPAN_BIN, ['record', '--pid', String(server.pid), '-o', recording, '--log-level', 'debug']);
    const events = await startEvents(group, [server.pid], ['--log-level', 'debug']);
    await run.waitStderr(/"msg":"tracing"/, 30_000);
    await record.waitStderr(/"msg":"recording"/, 30_000);

    // Requests full of the marker; the echo sends each back.
    const body = Buffer.from(marker.repeat(Math.ceil(SIZE / marker.length)).slice(0, SIZE));
    await pacedTraffic(port, REQUESTS, SIZE, SIZE, 20, () => body).done;
    // The spool took the spans made while the Collector was away.
    await until(() => (readdirSync(spool).some((f) => f.endsWith('.kspool')) ? true : undefined), 20_000, 'a spool segment');
    await run.waitStderr(/"msg":"export failed; spans go to the spool until the Collector answers"/, 20_000);
    await new Promise((r) => setTimeout(r, 1500)); // the close and idle flush reach the spool
    const segments = readdirSync(spool).filter((f) => f.endsWith('.kspool'));
    for (const f of segments) hits(`spool file ${f}`, readFileSync(join(spool, f)));

    await receiver.start();
    const records = await stopEvents(events);
    record.child.kill('SIGINT');
    assert.equal((await record.exited).code, cleanExit(record.stderr), record.stderr.join('\n'));
    await until(() => (receiver.spans.some((s) => s.name === 'tcp.recv') ? true : undefined), 30_000, 'spans after the return');
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, cleanExit(run.stderr), run.stderr.slice(-10).join('\n'));

    // The traffic was seen, byte for byte.
    const close = records.find((r) => r.type === 'close' && (r.local as string).endsWith(`:${port}`));
    assert.ok(close, 'the connection was traced');
    assert.equal(close.bytes_received, REQUESTS * SIZE);
    assert.equal(close.bytes_sent, REQUESTS * SIZE);
    const spans = receiver.spans;
    const recvBytes = spans.filter((s) => s.name === 'tcp.recv').reduce((n, s) => n + Number(s.attributes['kspan.bytes']), 0);
    assert.equal(recvBytes, REQUESTS * SIZE);

    hits('kspan events output', events.lines.join('\n'));
    for (const [name, p] of [['run', run], ['record', record], ['events', events]] as const) hits(`kspan ${name}'s log`, p.stderr.join('\n'));
    hits('the recording', readFileSync(recording));
    hits('the exported spans and attributes', JSON.stringify(spans, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
    for (const f of readdirSync(spool)) hits(`spool file ${f}`, readFileSync(join(spool, f)));
    process.stderr.write(`# canary: ${records.length} records, ${spans.length} spans, ${segments.length} spool segments checked\n`);
  });
});
