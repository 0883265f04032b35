/**
 * The on-disk spool (src/export/spool.ts) by itself: records come back oldest
 * first, byte for byte, once; the cursor survives a reopen; the size bound drops
 * the oldest segment first, counted; a torn or damaged segment is detected,
 * skipped and counted; one kspan per directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { pino } from 'pino';
import { KspanError } from '../../src/core/errors.ts';
import { MAX_RECORD_BYTES, SpanSpool, type SpoolOptions } from '../../src/export/spool.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kspan-spool-unit-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => path.join(root, `d${n++}`);

function capturingLogger() {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

function open(dir: string, o: Partial<SpoolOptions> = {}) {
  const { logger, lines } = capturingLogger();
  const spool = new SpanSpool({ dir, maxBytes: 1 << 20, logger, ...o });
  return { spool, lines };
}

/** A payload whose bytes say which one it is. */
const payload = (i: number, size = 100) => Buffer.alloc(size, i & 0xff).fill(`#${i}#`, 0, String(i).length + 2);

/** Takes every record out, acknowledging each; returns their payloads' ids and span counts. */
function drain(spool: SpanSpool, limit = Infinity): { id: string; spans: number }[] {
  const out: { id: string; spans: number }[] = [];
  for (let b = spool.next(); b && out.length < limit; b = spool.next()) {
    out.push({ id: /^#(\d+)#/.exec(b.request.toString('latin1'))![1], spans: b.spans });
    spool.done(b, true);
  }
  return out;
}

const segments = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.kspool')).sort();

test('records come back oldest first, byte for byte, each once; the cursor survives a reopen', () => {
  const dir = freshDir();
  const { spool } = open(dir);
  for (let i = 0; i < 10; i++) assert.equal(spool.append(payload(i), i + 1), true);
  assert.equal(spool.pendingRecords, 10);
  assert.equal(spool.pendingSpans, 55);
  const first = spool.next()!;
  assert.deepEqual(first.request, payload(0));
  assert.equal(spool.next(), first, 'the same one until done()');
  spool.done(first, true);
  assert.deepEqual(drain(spool, 3), [1, 2, 3].map((i) => ({ id: String(i), spans: i + 1 })));
  assert.equal(spool.counters.replayedSpans, 1 + 2 + 3 + 4);
  spool.close();
  assert.equal(fs.existsSync(path.join(dir, 'lock')), false);

  const again = open(dir).spool;
  assert.equal(again.counters.recoveredRecords, 6);
  assert.equal(again.counters.recoveredSpans, 5 + 6 + 7 + 8 + 9 + 10);
  again.append(payload(10), 11);
  assert.deepEqual(drain(again).map((r) => r.id), ['4', '5', '6', '7', '8', '9', '10']);
  assert.equal(again.pendingRecords, 0);
  assert.equal(again.counters.tornSegments, 0);
  again.close();
  // The segment read to its end is gone; only the one last written remains.
  assert.deepEqual(segments(dir), ['0000000000000002.kspool']);
  const third = open(dir).spool;
  assert.equal(third.next(), null);
  third.close();
});

test('the size bound drops the oldest segment first, counted and logged, and never the newest spans', () => {
  const dir = freshDir();
  // 1000-byte payloads, 1012 B records; segments roll at 64 KiB, the bound is 3 of them.
  const { spool, lines } = open(dir, { maxBytes: 3 * 64 * 1024, segmentBytes: 64 * 1024 });
  const perSegment = Math.floor((64 * 1024 - 8) / 1012); // 64
  const total = 250;
  for (let i = 0; i < total; i++) assert.equal(spool.append(payload(i, 1000), 2), true);
  assert.ok(spool.bytes <= 3 * 64 * 1024, `${spool.bytes} B on disk`);
  const kept = drain(spool).map((r) => Number(r.id));
  const dropped = total - kept.length;
  // Whole segments went, oldest first: what is left is the newest, in order.
  assert.equal(dropped % perSegment, 0);
  assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => dropped + i));
  assert.equal(spool.counters.droppedRecords, dropped);
  assert.equal(spool.counters.droppedSpans, 2 * dropped);
  assert.ok(dropped >= 64, `dropped ${dropped}`);
  const warn = lines.filter((l) => l.msg === 'spool full: oldest spans dropped');
  assert.equal(warn.length, dropped / perSegment);
  assert.equal(warn.at(-1)!.droppedTotal, 2 * dropped);
  spool.close();
});

test('a request in flight when its segment is dropped is settled by done(), not counted as dropped', () => {
  const dir = freshDir();
  const { spool } = open(dir, { maxBytes: 2 * 64 * 1024, segmentBytes: 64 * 1024 });
  for (let i = 0; i < 64; i++) spool.append(payload(i, 1000), 1);
  const out = spool.next()!;
  for (let i = 64; i < 200; i++) spool.append(payload(i, 1000), 1);
  assert.equal(spool.counters.droppedSpans, spool.counters.droppedRecords);
  const droppedBefore = spool.counters.droppedSpans;
  spool.done(out, true);
  assert.equal(spool.counters.replayedSpans, 1);
  const rest = drain(spool);
  assert.equal(droppedBefore + 1 + rest.length, 200);
  spool.close();
});

test('a torn last record (kspan killed mid-write) is detected at start, skipped and counted; the records before it are kept', () => {
  const dir = freshDir();
  const { spool } = open(dir);
  for (let i = 0; i < 5; i++) spool.append(payload(i, 300), 3);
  spool.close();
  const [seg] = segments(dir);
  const file = path.join(dir, seg);
  const size = fs.statSync(file).size;
  assert.equal(size, 8 + 5 * 312);
  fs.truncateSync(file, size - 100); // the last record ends early
  const { spool: again, lines } = open(dir);
  assert.equal(again.counters.tornSegments, 1);
  assert.equal(again.counters.tornBytes, 212);
  assert.equal(again.counters.recoveredRecords, 4);
  assert.deepEqual(drain(again).map((r) => r.id), ['0', '1', '2', '3']);
  const warn = lines.find((l) => l.msg === 'spool: torn or damaged segment; the rest of it was skipped')!;
  assert.deepEqual([warn.segment, warn.offset, warn.bytes], [seg, 8 + 4 * 312, 212]);
  again.close();
});

test('a record whose checksum fails (damaged disk) ends its segment; the next segment is still read', () => {
  const dir = freshDir();
  const { spool } = open(dir, { segmentBytes: 64 * 1024 });
  for (let i = 0; i < 100; i++) spool.append(payload(i, 1000), 1); // two segments: 64 + 36
  spool.close();
  const [first, second] = segments(dir);
  assert.ok(second);
  const fd = fs.openSync(path.join(dir, first), 'r+');
  fs.writeSync(fd, Buffer.from([0xee]), 0, 1, 8 + 10 * 1012 + 12 + 500); // inside record 10's payload
  fs.closeSync(fd);
  const { spool: again } = open(dir);
  assert.equal(again.counters.tornSegments, 1);
  assert.equal(again.counters.tornBytes, 54 * 1012); // records 10..63 of the first segment
  const ids = drain(again).map((r) => Number(r.id));
  assert.deepEqual(ids, [...Array.from({ length: 10 }, (_, i) => i), ...Array.from({ length: 36 }, (_, i) => 64 + i)]);
  again.close();
});

test('a segment damaged after start is caught when read back, and skipped', () => {
  const dir = freshDir();
  const { spool } = open(dir);
  for (let i = 0; i < 3; i++) spool.append(payload(i), 1);
  spool.close();
  const { spool: again } = open(dir);
  const file = path.join(dir, segments(dir)[0]);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from([0x55]), 0, 1, 8 + 112 + 12 + 50); // record 1's payload
  fs.closeSync(fd);
  assert.deepEqual(drain(again).map((r) => r.id), ['0']);
  assert.equal(again.counters.tornSegments, 1);
  assert.equal(again.pendingRecords, 0);
  again.close();
});

test('what is not a segment, or claims a huge record, is refused without reading it', () => {
  const dir = freshDir();
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, '0000000000000001.kspool'), 'not a spool segment');
  const huge = Buffer.alloc(8 + 12);
  Buffer.from('KSPOOL\x01\x00', 'latin1').copy(huge);
  huge.writeUInt32LE(MAX_RECORD_BYTES + 1, 8);
  fs.writeFileSync(path.join(dir, '0000000000000002.kspool'), huge);
  const { spool } = open(dir);
  assert.equal(spool.counters.tornSegments, 2);
  assert.equal(spool.counters.tornBytes, 19 + 12);
  assert.equal(spool.next(), null);
  spool.append(payload(1), 1);
  assert.deepEqual(drain(spool).map((r) => r.id), ['1']);
  spool.close();
  assert.deepEqual(segments(dir), ['0000000000000003.kspool']);
});

test('one kspan per directory: a live holder is refused with KSPAN_ERR_SPOOL; a dead one\'s lock is taken over', () => {
  const dir = freshDir();
  const { spool } = open(dir);
  fs.writeFileSync(path.join(dir, 'lock'), `${process.ppid}\n`); // a live process that is not us
  assert.throws(() => open(dir), (err: unknown) => {
    assert.ok(err instanceof KspanError);
    assert.equal(err.code, 'KSPAN_ERR_SPOOL');
    assert.equal(
      err.message,
      `the spool directory ${dir} is in use by kspan pid ${process.ppid} (give each kspan its own --spool-dir; if pid ${process.ppid} is not a kspan, remove ${path.join(dir, 'lock')})`,
    );
    return true;
  });
  fs.writeFileSync(path.join(dir, 'lock'), '4194304\n'); // no such pid
  const taken = open(dir).spool;
  assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8'), `${process.pid}\n`);
  taken.close();
  spool.close();
});

test('an unwritable directory is a KSPAN_ERR_SPOOL at open; a request beyond the bounds is refused, counted', () => {
  const file = path.join(root, 'a-file');
  fs.writeFileSync(file, '');
  assert.throws(() => open(path.join(file, 'spool')), { code: 'KSPAN_ERR_SPOOL', message: `cannot create the spool directory ${path.join(file, 'spool')} (give a writable --spool-dir)` });
  const { spool, lines } = open(freshDir(), { maxBytes: 1000 });
  assert.equal(spool.append(Buffer.alloc(2000), 7), false);
  assert.equal(spool.counters.writeFailedSpans, 7);
  assert.ok(lines.some((l) => l.msg === 'spool: write failed, spans dropped' && l.dropped === 7));
  spool.close();
});

test('an unreadable cursor sends every segment again (never loses), and says so', () => {
  const dir = freshDir();
  const { spool } = open(dir);
  for (let i = 0; i < 3; i++) spool.append(payload(i), 1);
  drain(spool, 2);
  spool.close();
  fs.writeFileSync(path.join(dir, 'cursor'), '{garbage');
  const { spool: again, lines } = open(dir);
  assert.deepEqual(drain(again).map((r) => r.id), ['0', '1', '2']);
  assert.ok(lines.some((l) => l.msg === 'spool: unreadable cursor; every segment is sent again'));
  again.close();
});
