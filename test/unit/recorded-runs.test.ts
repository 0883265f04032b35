/**
 * The correlator on recordings of real runs (test/fixtures/records/, made by
 * scripts/record-fixture.ts with `kspan record` on the real kernel): a traced
 * native server answering keep-alive requests, its own spans alongside.
 */
import assert from 'node:assert/strict';
import { createReadStream, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { RecordFileReader } from '../../src/records/record-file.ts';
import { SocketCorrelator } from '../../src/spans/socket-correlator.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const base = join(REPO_ROOT, 'test/fixtures/records/traced-keepalive');

test('recorded keep-alive run: each request span gets its request and response bytes, accept once', async () => {
  const expected = JSON.parse(readFileSync(`${base}.json`, 'utf8')) as {
    reqBytes: number;
    respBytes: number;
    spans: { traceId: string; spanId: string; startNs: string; endNs: string }[];
  };
  const reader = await RecordFileReader.open(createReadStream(`${base}.records`));
  assert.equal(reader.header.resources?.[String(reader.header.pids?.[0])]?.['service.name'], 'traced-fixture');
  const spans: KernelSpan[] = [];
  const correlator = new SocketCorrelator({ emit: (k) => spans.push(k), clock: 'records' });
  for await (const r of reader) correlator.push(r);
  correlator.flush('shutdown');

  const off = reader.header.clockOffsetNs;
  for (const [i, app] of expected.spans.entries()) {
    const mine = spans.filter((k) => k.parent?.spanId === app.spanId);
    const recv = mine.filter((k) => k.name === 'tcp.recv');
    const send = mine.filter((k) => k.name === 'tcp.send');
    assert.equal(recv.length, 1, `request ${i}: one tcp.recv`);
    assert.equal(send.length, 1, `request ${i}: one tcp.send`);
    assert.equal(recv[0].bytes, expected.reqBytes);
    assert.equal(send[0].bytes, expected.respBytes);
    assert.equal(send[0].parent!.traceId, app.traceId);
    assert.ok(send[0].startNs + off >= BigInt(app.startNs) && send[0].endNs + off <= BigInt(app.endNs));
    assert.equal(mine.filter((k) => k.name === 'tcp.accept').length, i === 0 ? 1 : 0);
  }
  assert.equal(spans.filter((k) => k.parent === null).length, 0, 'no orphans in a fully traced run');
});
