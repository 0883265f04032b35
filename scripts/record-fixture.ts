/**
 * Records a real run for the correlator's tests: the traced native server
 * (test/fixtures/tcp/traced_server.c) answering keep-alive requests that carry
 * traceparents, under `kspan record`. Writes
 *   test/fixtures/records/traced-keepalive.records   (the recording)
 *   test/fixtures/records/traced-keepalive.json      (the application's spans)
 * Usage (root): node scripts/record-fixture.ts [requests=5]
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../test/helpers/build-fixture.ts';
import { KSPAN_BIN } from '../test/helpers/kspan-cli.ts';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { parseAppSpan, tracedServerPath } from '../test/helpers/tcp-fixtures.ts';
import { drive } from '../test/helpers/traceparent-client.ts';

const requests = Number(process.argv[2] ?? 5);
const REQ = 300;
const RESP = 20_000;
const out = join(REPO_ROOT, 'test/fixtures/records/traced-keepalive');
const group = new ProcessGroup();
try {
  const server = group.start(tracedServerPath(), ['--requests', String(requests), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)], {
    env: { ...process.env, OTEL_SERVICE_NAME: 'traced-fixture' },
  });
  const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
  const rec = group.start(KSPAN_BIN, ['record', '--pid', String(server.pid), '-o', `${out}.records`]);
  await rec.waitStderr(/"msg":"recording"/, 20_000);
  server.send('go');
  await drive(port, requests, REQ, RESP);
  await server.waitLine(/^done$/);
  await new Promise((r) => setTimeout(r, 300));
  rec.child.kill('SIGINT');
  await rec.exited;
  const app = server.lines.map(parseAppSpan).filter(Boolean);
  writeFileSync(`${out}.json`, `${JSON.stringify({ reqBytes: REQ, respBytes: RESP, spans: app }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
  console.log(`wrote ${out}.records and ${out}.json (${app.length} application spans)`);
} finally {
  await group.killAll();
}
