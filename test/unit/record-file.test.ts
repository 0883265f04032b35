import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { Packr } from 'msgpackr';
import { KspanError } from '../../src/core/errors.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { RecordFileCutError, RecordFileReader, RecordFileWriter, type RecordFileHeader } from '../../src/records/record-file.ts';
import { ctx, FakeSocket } from '../helpers/kernel-records.ts';

const header: RecordFileHeader = {
  kernelRelease: '6.18.0-kspan',
  clockOffsetNs: 1_767_225_600_123_456_789n,
  startedAt: '2026-01-01T00:00:00.000Z',
  pids: [4242],
  hostname: 'vm',
};

function sampleRecords(): KernelRecord[] {
  const s = new FakeSocket({ cookie: 0xffff_ffff_ffff_fff0n, role: 'server', family: 6 });
  const c = new FakeSocket({ cookie: 12n, role: 'client' });
  return [
    s.accept(123_456_789_012_345n, 123_456_789_112_345n),
    s.recv(null, 512, 1, 200_000_000_000n, 200_000_000_100n),
    s.send(ctx(0xa), 4096, 3, 200_000_001_000n, 200_000_002_000n, { fallback: true }),
    s.retransmit(ctx(0xa), 200_000_003_000n),
    s.close(200_000_009_000n, { bytesSent: 4097, bytesReceived: 513, retransmits: 1, srttUs: 55 }),
    c.connect(1n, 2n, ctx(0xb), 111),
  ];
}

async function writeToBuffer(records: KernelRecord[]): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const w = new RecordFileWriter(out, header);
  for (const r of records) w.write(r);
  assert.equal(w.count, records.length);
  await w.end();
  return Buffer.concat(chunks);
}

async function readAll(input: AsyncIterable<Uint8Array> | Iterable<Uint8Array>) {
  const reader = await RecordFileReader.open(input);
  const records: KernelRecord[] = [];
  for await (const r of reader) records.push(r);
  return { header: reader.header, records, count: reader.count };
}

describe('record file', () => {
  test('header and records round-trip exactly, bigints included', async () => {
    const records = sampleRecords();
    const bytes = await writeToBuffer(records);
    const got = await readAll([bytes]);
    assert.deepEqual(got.header, header);
    assert.deepEqual(got.records, records);
    assert.equal(got.count, records.length);
    assert.equal(typeof got.records[0].tsNs, 'bigint');
    assert.equal(got.records[0].cookie, 0xffff_ffff_ffff_fff0n);
  });

  test('reads a stream that arrives in tiny chunks', async () => {
    const records = sampleRecords();
    const bytes = await writeToBuffer(records);
    async function* trickle() {
      for (let i = 0; i < bytes.length; i += 7) yield bytes.subarray(i, i + 7);
    }
    const got = await readAll(trickle());
    assert.deepEqual(got.records, records);
  });

  test('a file that is not a recording is refused with a code', async () => {
    const notOurs = new Packr().pack({ hello: 'world' });
    await assert.rejects(readAll([notOurs]), (e: unknown) => e instanceof KspanError && e.code === 'KSPAN_ERR_RECORD_FILE' && /no kspan-records header/.test(e.message));
    const future = new Packr().pack({ format: 'kspan-records', version: 2 });
    await assert.rejects(readAll([future]), /version 2 is not supported/);
  });

  test('a recording cut short yields the records before the cut, then an error saying how many', async () => {
    const records = sampleRecords();
    const bytes = await writeToBuffer(records);
    const cut = bytes.subarray(0, bytes.length - 5);
    const reader = await RecordFileReader.open([cut]);
    const seen: KernelRecord[] = [];
    await assert.rejects(
      (async () => {
        for await (const r of reader) seen.push(r);
      })(),
      (e: unknown) => e instanceof RecordFileCutError && e.cut && e.records === 5 && e.code === 'KSPAN_ERR_RECORD_FILE' &&
        e.message === 'the recording is cut short: it ends inside record 6 (the 5 records before it are read; what follows is lost)',
    );
    assert.deepEqual(seen, records.slice(0, 5));
  });
});
