/**
 * The on-disk spool of export requests: where spans wait while the Collector is
 * unreachable or the export queue is full, and where a restarted kspan finds the
 * spans a killed one had not sent.
 *
 * A directory (`--spool-dir`) of append-only segments, `<16-digit seq>.kspool`:
 *
 *   segment = "KSPOOL" u16 version(1) u16 0, then records
 *   record  = u32 payload length, u32 span count, u32 CRC-32 of (span count bytes + payload), payload
 *
 * (little-endian). A payload is one OTLP ExportTraceServiceRequest, sent as it is
 * when the spool drains. A kspan appends only to the segment it created itself,
 * and starts a new one at the size bound; `cursor` says how far the Collector has
 * acknowledged (rewritten by rename after each acknowledgement, so a restart
 * resends nothing acknowledged); a segment read to its end is deleted; `lock`
 * holds the pid of the kspan using the directory.
 *
 * Bounded: the segments together stay under `maxBytes`; to make room the oldest
 * segment goes first, its spans counted (droppedSpans) and logged. A record is
 * checked twice, when the directory is opened and when it is read back: one that
 * ends early or fails its checksum (a kspan killed mid-write, a damaged disk) is
 * skipped with the rest of its segment, counted (tornSegments, tornBytes) and
 * logged. Nothing is ever read into memory whole: a record is at most
 * MAX_RECORD_BYTES, and only the one being sent is held.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import type { Logger } from 'pino';
import { KspanError } from '../core/errors.ts';
import type { SpanSpool as PipelineSpool, SpooledBatch } from './export-pipeline.ts';

export type { SpooledBatch };

const MAGIC = Buffer.from('KSPOOL\x01\x00', 'latin1');
const RECORD_HEADER = 12;
/** Larger than any batch (TUNING.export.maxBatchBytes), so a length beyond it is damage, not data. */
export const MAX_RECORD_BYTES = 16 * 1024 * 1024;
const SEGMENT_RE = /^(\d{16})\.kspool$/;

export interface SpoolOptions {
  dir: string;
  /** The segments together stay under this many bytes. */
  maxBytes: number;
  /** A segment is closed once it reaches this size; default maxBytes / 8, at most 8 MiB, at least 64 KiB. */
  segmentBytes?: number;
  logger?: Logger;
}

export interface SpoolCounters {
  /** Records and spans written. */
  spooledRecords: number;
  spooledSpans: number;
  /** Spooled spans acknowledged by the Collector. */
  replayedSpans: number;
  /** Found at start, left by an earlier kspan. */
  recoveredRecords: number;
  recoveredSpans: number;
  /** Dropped to stay under maxBytes, oldest first. */
  droppedRecords: number;
  droppedSpans: number;
  /** Spans that could not be written (disk full, I/O error). */
  writeFailedSpans: number;
  /** Segments that end in a torn or damaged record, and the bytes skipped. */
  tornSegments: number;
  tornBytes: number;
}


interface RecordEntry {
  offset: number;
  length: number;
  spans: number;
}

interface Segment {
  seq: number;
  file: string;
  size: number;
  records: RecordEntry[];
  /** Index of the first record not yet acknowledged (or handed out and evicted). */
  next: number;
}

export class SpanSpool implements PipelineSpool {
  readonly dir: string;
  readonly maxBytes: number;
  readonly segmentBytes: number;
  readonly counters: SpoolCounters = {
    spooledRecords: 0,
    spooledSpans: 0,
    replayedSpans: 0,
    recoveredRecords: 0,
    recoveredSpans: 0,
    droppedRecords: 0,
    droppedSpans: 0,
    writeFailedSpans: 0,
    tornSegments: 0,
    tornBytes: 0,
  };
  readonly #log: Logger | undefined;
  /** Oldest first; the last one is the one being written when #fd is open. */
  #segments: Segment[] = [];
  #fd: number | null = null;
  #totalBytes = 0;
  #pendingRecords = 0;
  #pendingSpans = 0;
  /** The batch handed out by next() and not yet done(). */
  #out: SpooledBatch | null = null;
  #closed = false;
  #lockFile: string;
  /** The highest segment number used in this directory. */
  #lastSeq = 0;

  /** Opens (creates) the directory, takes its lock, and indexes what an earlier kspan left. Throws KSPAN_ERR_SPOOL. */
  constructor(options: SpoolOptions) {
    this.dir = path.resolve(options.dir);
    this.maxBytes = options.maxBytes;
    this.segmentBytes = options.segmentBytes ?? Math.max(64 * 1024, Math.min(8 * 1024 * 1024, Math.floor(options.maxBytes / 8)));
    this.#log = options.logger;
    this.#lockFile = path.join(this.dir, 'lock');
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw spoolError(`cannot create the spool directory ${this.dir}`, 'give a writable --spool-dir', err);
    }
    this.#lock();
    try {
      this.#index();
    } catch (err) {
      this.#unlock();
      throw err instanceof KspanError ? err : spoolError(`cannot read the spool directory ${this.dir}`, 'check its permissions, or give another --spool-dir', err);
    }
    this.counters.recoveredRecords = this.#pendingRecords;
    this.counters.recoveredSpans = this.#pendingSpans;
  }

  /** Records and spans waiting to be sent. */
  get pendingRecords(): number {
    return this.#pendingRecords;
  }

  get pendingSpans(): number {
    return this.#pendingSpans;
  }

  /** Bytes on disk, every segment included. */
  get bytes(): number {
    return this.#totalBytes;
  }

  /**
   * Appends one request of `spans` spans. False when it could not be written
   * (too large, I/O error): the spans are counted in writeFailedSpans and logged.
   */
  append(request: Uint8Array, spans: number): boolean {
    if (this.#closed) return this.#writeFailed(spans, new Error('spool closed'));
    const need = RECORD_HEADER + request.length;
    if (request.length > MAX_RECORD_BYTES || MAGIC.length + need > this.maxBytes) {
      return this.#writeFailed(spans, new Error(`request of ${request.length} B exceeds the spool's bounds`));
    }
    try {
      let active = this.#active();
      if (!active || (active.size + need > this.segmentBytes && active.records.length > 0)) active = this.#roll();
      // Room: drop the oldest segments (never the one being written, unless alone).
      while (this.#totalBytes + need > this.maxBytes) {
        if (this.#segments[0] === active) active = this.#roll();
        this.#evict(this.#segments[0]);
      }
      const header = Buffer.allocUnsafe(RECORD_HEADER);
      header.writeUInt32LE(request.length, 0);
      header.writeUInt32LE(spans, 4);
      header.writeUInt32LE(checksum(header.subarray(4, 8), request), 8);
      const written = fs.writevSync(this.#fd!, [header, request]);
      if (written !== need) {
        fs.ftruncateSync(this.#fd!, active.size);
        throw new Error(`short write: ${written} of ${need} B`);
      }
      active.records.push({ offset: active.size, length: request.length, spans });
      active.size += need;
      this.#totalBytes += need;
      this.#pendingRecords++;
      this.#pendingSpans += spans;
      this.counters.spooledRecords++;
      this.counters.spooledSpans += spans;
      return true;
    } catch (err) {
      // The segment may end in part of a record now: write the next ones elsewhere.
      this.#closeActive();
      return this.#writeFailed(spans, err);
    }
  }

  /**
   * The oldest request not yet acknowledged, read back and checked; null when the
   * spool is empty. Until done(), the same one is returned.
   */
  next(): SpooledBatch | null {
    if (this.#out) return this.#out;
    for (;;) {
      const seg = this.#segments[0];
      if (!seg) return null;
      if (seg.next >= seg.records.length) {
        if (seg === this.#active()) return null;
        this.#remove(seg);
        continue;
      }
      const rec = seg.records[seg.next];
      const request = this.#read(seg, rec);
      if (!request) continue; // damaged: the rest of the segment was skipped
      this.#out = { request, spans: rec.spans, segment: seg.seq, index: seg.next };
      return this.#out;
    }
  }

  /**
   * The batch next() returned is settled: acknowledged by the Collector
   * (`delivered`), or dropped by the caller (counted there). Persists the cursor.
   */
  done(batch: SpooledBatch, delivered: boolean): void {
    if (this.#out !== batch) return;
    this.#out = null;
    if (delivered) this.counters.replayedSpans += batch.spans;
    const seg = this.#segments[0];
    // Its segment may have been evicted meanwhile (and the spans not counted as dropped).
    if (!seg || seg.seq !== batch.segment || seg.next !== batch.index) return;
    seg.next++;
    this.#pendingRecords--;
    this.#pendingSpans -= batch.spans;
    this.#writeCursor(seg);
    if (seg.next >= seg.records.length && seg !== this.#active()) this.#remove(seg);
  }

  /** Closes the segment being written and releases the directory. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeActive();
    this.#unlock();
  }

  #active(): Segment | undefined {
    return this.#fd === null ? undefined : this.#segments[this.#segments.length - 1];
  }

  #roll(): Segment {
    this.#closeActive();
    const seq = ++this.#lastSeq;
    const file = path.join(this.dir, `${String(seq).padStart(16, '0')}.kspool`);
    const fd = fs.openSync(file, 'wx', 0o600);
    fs.writeSync(fd, MAGIC);
    const seg: Segment = { seq, file, size: MAGIC.length, records: [], next: 0 };
    this.#segments.push(seg);
    this.#fd = fd;
    this.#totalBytes += MAGIC.length;
    return seg;
  }

  #closeActive(): void {
    if (this.#fd === null) return;
    try {
      fs.closeSync(this.#fd);
    } catch {
      // closing a descriptor we own does not fail in a way we could act on
    }
    this.#fd = null;
  }

  /** Drops a whole segment to make room: its unsent spans are lost, counted and logged. */
  #evict(seg: Segment): void {
    let records = 0;
    let spans = 0;
    for (let i = seg.next; i < seg.records.length; i++) {
      // A request handed out is in flight: it is settled by done(), not dropped here.
      if (this.#out && this.#out.segment === seg.seq && this.#out.index === i) continue;
      records++;
      spans += seg.records[i].spans;
    }
    this.counters.droppedRecords += records;
    this.counters.droppedSpans += spans;
    this.#log?.warn(
      { dropped: spans, droppedTotal: this.counters.droppedSpans, maxBytes: this.maxBytes, segment: path.basename(seg.file) },
      'spool full: oldest spans dropped',
    );
    this.#remove(seg);
  }

  #remove(seg: Segment): void {
    const i = this.#segments.indexOf(seg);
    if (i < 0) return;
    // An in-flight request leaves the counts too; done() then finds its segment gone.
    for (let r = seg.next; r < seg.records.length; r++) {
      this.#pendingRecords--;
      this.#pendingSpans -= seg.records[r].spans;
    }
    if (seg === this.#active()) this.#closeActive();
    this.#segments.splice(i, 1);
    this.#totalBytes -= seg.size;
    try {
      fs.unlinkSync(seg.file);
    } catch (err) {
      this.#log?.warn({ err, file: seg.file }, 'spool: cannot remove a segment');
    }
  }

  /** A record's payload, checked; null (counted, logged, rest of the segment skipped) when damaged. */
  #read(seg: Segment, rec: RecordEntry): Buffer | null {
    const buf = Buffer.allocUnsafe(RECORD_HEADER + rec.length);
    let fd: number | null = null;
    let got = 0;
    try {
      fd = fs.openSync(seg.file, 'r');
      got = fs.readSync(fd, buf, 0, buf.length, rec.offset);
    } catch (err) {
      this.#log?.warn({ err, file: seg.file }, 'spool: cannot read a segment');
    } finally {
      if (fd !== null) fs.closeSync(fd);
    }
    if (got === buf.length && buf.readUInt32LE(0) === rec.length && buf.readUInt32LE(8) === checksum(buf.subarray(4, 8), buf.subarray(RECORD_HEADER))) {
      return buf.subarray(RECORD_HEADER);
    }
    this.#torn(seg, rec.offset, seg.size - rec.offset);
    for (let r = seg.next; r < seg.records.length; r++) {
      this.#pendingRecords--;
      this.#pendingSpans -= seg.records[r].spans;
    }
    seg.records.length = seg.next;
    if (seg !== this.#active()) this.#remove(seg);
    return null;
  }

  #torn(seg: Segment | string, offset: number, bytes: number): void {
    this.counters.tornSegments++;
    this.counters.tornBytes += bytes;
    const file = path.basename(typeof seg === 'string' ? seg : seg.file);
    this.#log?.warn({ segment: file, offset, bytes, tornSegments: this.counters.tornSegments }, 'spool: torn or damaged segment; the rest of it was skipped');
  }

  #writeFailed(spans: number, err: unknown): false {
    this.counters.writeFailedSpans += spans;
    this.#log?.error({ err, dropped: spans, droppedTotal: this.counters.writeFailedSpans, dir: this.dir }, 'spool: write failed, spans dropped');
    return false;
  }

  #writeCursor(seg: Segment): void {
    const at = seg.next < seg.records.length ? seg.records[seg.next].offset : seg.size;
    const tmp = path.join(this.dir, 'cursor.tmp');
    try {
      fs.writeFileSync(tmp, JSON.stringify({ segment: seg.seq, offset: at }) + '\n', { mode: 0o600 });
      fs.renameSync(tmp, path.join(this.dir, 'cursor'));
    } catch (err) {
      this.#log?.warn({ err, dir: this.dir }, 'spool: cannot save the cursor; a restart may resend spans already delivered');
    }
  }

  #readCursor(): { segment: number; offset: number } | null {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dir, 'cursor'), 'utf8');
    } catch {
      return null;
    }
    try {
      const c = JSON.parse(text) as { segment?: unknown; offset?: unknown };
      if (Number.isSafeInteger(c.segment) && Number.isSafeInteger(c.offset)) return { segment: c.segment as number, offset: c.offset as number };
    } catch {
      // fall through
    }
    this.#log?.warn({ dir: this.dir }, 'spool: unreadable cursor; every segment is sent again');
    return null;
  }

  /** Indexes the segments left in the directory, checking every record. */
  #index(): void {
    const names = fs.readdirSync(this.dir).filter((n) => SEGMENT_RE.test(n)).sort();
    const cursor = this.#readCursor();
    for (const name of names) {
      const seq = Number(SEGMENT_RE.exec(name)![1]);
      const file = path.join(this.dir, name);
      if (cursor && seq < cursor.segment) {
        fs.unlinkSync(file); // acknowledged before the last stop
        continue;
      }
      const seg = this.#scan(seq, file);
      if (cursor && seq === cursor.segment) {
        while (seg.next < seg.records.length && seg.records[seg.next].offset < cursor.offset) seg.next++;
      }
      if (seg.next >= seg.records.length) {
        fs.unlinkSync(file);
        continue;
      }
      this.#segments.push(seg);
      this.#totalBytes += seg.size;
      for (let r = seg.next; r < seg.records.length; r++) {
        this.#pendingRecords++;
        this.#pendingSpans += seg.records[r].spans;
      }
    }
    // The next segment's number follows every one ever seen, acknowledged ones included.
    const last = names.length ? Number(SEGMENT_RE.exec(names[names.length - 1])![1]) : 0;
    this.#lastSeq = Math.max(last, cursor?.segment ?? 0);
  }

  /** Reads a segment record by record (bounded reads), stopping at the first damaged one. */
  #scan(seq: number, file: string): Segment {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const seg: Segment = { seq, file, size, records: [], next: 0 };
      const head = Buffer.alloc(Math.max(MAGIC.length, RECORD_HEADER));
      if (size < MAGIC.length || fs.readSync(fd, head, 0, MAGIC.length, 0) !== MAGIC.length || !head.subarray(0, MAGIC.length).equals(MAGIC)) {
        this.#torn(file, 0, size);
        return seg;
      }
      let off = MAGIC.length;
      let body = Buffer.alloc(0);
      while (off < size) {
        const ok = off + RECORD_HEADER <= size && fs.readSync(fd, head, 0, RECORD_HEADER, off) === RECORD_HEADER;
        const len = ok ? head.readUInt32LE(0) : 0;
        if (!ok || len > MAX_RECORD_BYTES || off + RECORD_HEADER + len > size) {
          this.#torn(file, off, size - off);
          break;
        }
        if (body.length < len) body = Buffer.allocUnsafe(len);
        const payload = body.subarray(0, len);
        if (fs.readSync(fd, payload, 0, len, off + RECORD_HEADER) !== len || head.readUInt32LE(8) !== checksum(head.subarray(4, 8), payload)) {
          this.#torn(file, off, size - off);
          break;
        }
        seg.records.push({ offset: off, length: len, spans: head.readUInt32LE(4) });
        off += RECORD_HEADER + len;
      }
      return seg;
    } finally {
      fs.closeSync(fd);
    }
  }

  #lock(): void {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(this.#lockFile, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw spoolError(`cannot lock the spool directory ${this.dir}`, 'give a writable --spool-dir', err);
        }
      }
      const holder = Number.parseInt(readOr(this.#lockFile, ''), 10);
      if (holder > 0 && holder !== process.pid && alive(holder)) {
        throw spoolError(
          `the spool directory ${this.dir} is in use by kspan pid ${holder}`,
          `give each kspan its own --spool-dir; if pid ${holder} is not a kspan, remove ${this.#lockFile}`,
        );
      }
      // Left by a kspan that is gone: take it over.
      fs.rmSync(this.#lockFile, { force: true });
    }
    throw spoolError(`cannot lock the spool directory ${this.dir}`, 'another kspan is starting with the same --spool-dir; give each its own');
  }

  #unlock(): void {
    if (readOr(this.#lockFile, '').trim() === String(process.pid)) fs.rmSync(this.#lockFile, { force: true });
  }
}

function checksum(spans: Uint8Array, payload: Uint8Array): number {
  return crc32(payload, crc32(spans));
}

function readOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function spoolError(message: string, hint: string, cause?: unknown): KspanError {
  return new KspanError('KSPAN_ERR_SPOOL', message, { hint, cause });
}
