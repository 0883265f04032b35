/**
 * The record/replay file (`kspan record -o FILE`, `kspan replay FILE`): a msgpack
 * stream (msgpackr, record structures inline) of one header then KernelRecords as
 * they came out of the ring buffer. bigint fields (times, cookies) stay bigint.
 *
 *   header: { format: 'kspan-records', version: 1, kernel_release, clock_offset_ns,
 *             started_at (ISO 8601), pids?, hostname?, resources?, key_maps? }
 *   resources: the targets' Resource attributes by pid, so a replay exports
 *   under the same service names; key_maps: their threadlocal.attribute_key_map,
 *   so a replay names the thread-context attributes as the live agent does.
 *
 * A file that ends inside a record (the agent was killed, the disk filled) or
 * holds garbage yields the records before that point, then RecordFileCutError.
 * Pure over streams: the caller opens files.
 */
import { Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { Packr, UnpackrStream } from 'msgpackr';
import { KspanError } from '../core/errors.ts';
import type { KernelRecord, RecordType } from './kernel-record.ts';

export const RECORD_FILE_FORMAT = 'kspan-records';
export const RECORD_FILE_VERSION = 1;

export interface RecordFileHeader {
  /** uname -r of the machine that recorded. */
  kernelRelease: string;
  /** REALTIME − MONOTONIC (ns) at the start of the recording. */
  clockOffsetNs: bigint;
  /** ISO 8601 wall-clock time the recording started. */
  startedAt: string;
  pids?: number[];
  hostname?: string;
  /** Resource attributes per target pid (decimal string keys). */
  resources?: Record<string, Record<string, unknown>>;
  /** threadlocal.attribute_key_map per target pid (decimal string keys). */
  keyMaps?: Record<string, string[]>;
}

interface HeaderOnDisk {
  format: string;
  version: number;
  kernel_release: string;
  clock_offset_ns: bigint;
  started_at: string;
  pids?: number[];
  hostname?: string;
  resources?: Record<string, Record<string, unknown>>;
  key_maps?: Record<string, string[]>;
}

const RECORD_TYPES = new Set<RecordType>(['accept', 'connect', 'send', 'recv', 'retransmit', 'reset', 'close']);

export class RecordFileWriter {
  readonly #out: Writable;
  readonly #packr = new Packr({ useRecords: true, sequential: true });
  #count = 0;
  #error: Error | undefined;

  /** `onError`: the stream's first error (full disk, …); nothing is written after it. */
  constructor(out: Writable, header: RecordFileHeader, onError?: (err: Error) => void) {
    this.#out = out;
    out.on('error', (err) => {
      if (this.#error) return;
      this.#error = err;
      onError?.(err);
    });
    const h: HeaderOnDisk = {
      format: RECORD_FILE_FORMAT,
      version: RECORD_FILE_VERSION,
      kernel_release: header.kernelRelease,
      clock_offset_ns: header.clockOffsetNs,
      started_at: header.startedAt,
    };
    if (header.pids) h.pids = header.pids;
    if (header.hostname) h.hostname = header.hostname;
    if (header.resources) h.resources = header.resources;
    if (header.keyMaps) h.key_maps = header.keyMaps;
    out.write(this.#packr.pack(h));
  }

  /** Records handed to the stream so far (before its error, if it failed). */
  get count(): number {
    return this.#count;
  }

  /** The stream's first error, if it failed. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Writes one record; false means the stream wants a 'drain' before more, or failed (then the record is not counted). */
  write(record: KernelRecord): boolean {
    if (this.#error) return false;
    this.#count++;
    return this.#out.write(this.#packr.pack(record));
  }

  /** Ends the stream and waits until it is flushed; rejects with the stream's error. */
  async end(): Promise<void> {
    if (!this.#error) {
      this.#out.end();
      await finished(this.#out).catch(() => {});
    }
    if (this.#error) throw this.#error;
  }
}

export class RecordFileReader implements AsyncIterable<KernelRecord> {
  readonly header: RecordFileHeader;
  readonly #it: AsyncIterator<unknown>;
  #count = 0;

  private constructor(header: RecordFileHeader, it: AsyncIterator<unknown>) {
    this.header = header;
    this.#it = it;
  }

  /** Reads the header; the records follow through async iteration. */
  static async open(input: Readable | AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<RecordFileReader> {
    const src = input instanceof Readable ? input : Readable.from(input, { objectMode: false });
    const it = decodedValues(src);
    let first: IteratorResult<unknown>;
    try {
      first = await it.next();
    } catch (cause) {
      throw new KspanError('KSPAN_ERR_RECORD_FILE', 'not a kspan record file (cannot decode its header)', { cause });
    }
    return new RecordFileReader(parseHeader(first.done ? undefined : first.value), it);
  }

  /** Records read so far. */
  get count(): number {
    return this.#count;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<KernelRecord> {
    for (;;) {
      let r: IteratorResult<unknown>;
      try {
        r = await this.#it.next();
      } catch (cause) {
        throw new RecordFileCutError(this.#count, (cause as { incomplete?: boolean }).incomplete === true, cause);
      }
      if (r.done) return;
      let record: KernelRecord;
      try {
        record = toRecord(r.value, this.#count + 1);
      } catch (cause) {
        throw new RecordFileCutError(this.#count, false, cause);
      }
      this.#count++;
      yield record;
    }
  }
}

/**
 * The file ends inside a record (`cut`: a recording cut short by a killed agent
 * or a full disk), or holds bytes that are not msgpack after `records` good
 * records. A reader gets those records first; `records` says how many.
 */
export class RecordFileCutError extends KspanError {
  readonly records: number;
  readonly cut: boolean;

  constructor(records: number, cut: boolean, cause: unknown) {
    super(
      'KSPAN_ERR_RECORD_FILE',
      cut
        ? `the recording is cut short: it ends inside record ${records + 1}`
        : `the recording is damaged after record ${records}`,
      { cause, hint: `the ${records} records before it are read; what follows is lost`, details: { records, cut } },
    );
    this.records = records;
    this.cut = cut;
  }
}

/**
 * The values of a msgpack byte stream. Unlike iterating UnpackrStream directly, the
 * values decoded before a truncation or a decode error are all delivered first.
 */
async function* decodedValues(src: Readable): AsyncGenerator<unknown> {
  const unpackr = new UnpackrStream({ useRecords: true });
  const queue: unknown[] = [];
  let error: unknown = null;
  let ended = false;
  let wake: (() => void) | null = null;
  const notify = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  unpackr.on('data', (v: unknown) => {
    queue.push(v);
    if (queue.length >= 4096) unpackr.pause();
    notify();
  });
  unpackr.on('error', (e) => {
    error ??= e;
    notify();
  });
  unpackr.on('end', () => {
    ended = true;
    notify();
  });
  src.on('error', (e) => unpackr.destroy(e));
  src.pipe(unpackr);
  try {
    let i = 0;
    for (;;) {
      if (i < queue.length) {
        const v = queue[i++];
        if (i === queue.length || i >= 1024) {
          queue.splice(0, i);
          i = 0;
          if (unpackr.isPaused() && queue.length < 1024) unpackr.resume();
        }
        yield v;
        continue;
      }
      if (error) throw error;
      if (ended) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    src.unpipe(unpackr);
    unpackr.destroy();
    if (!src.readableEnded) src.destroy();
  }
}

function parseHeader(v: unknown): RecordFileHeader {
  const h = v as Partial<HeaderOnDisk> | undefined;
  if (!h || typeof h !== 'object' || h.format !== RECORD_FILE_FORMAT) {
    throw new KspanError('KSPAN_ERR_RECORD_FILE', 'not a kspan record file (no kspan-records header)', {
      hint: 'give a file written by `kspan record -o FILE`',
    });
  }
  if (h.version !== RECORD_FILE_VERSION) {
    throw new KspanError('KSPAN_ERR_RECORD_FILE', `record file version ${String(h.version)} is not supported`, {
      hint: `this kspan reads version ${RECORD_FILE_VERSION}; replay it with the kspan that recorded it`,
    });
  }
  const header: RecordFileHeader = {
    kernelRelease: String(h.kernel_release ?? ''),
    clockOffsetNs: bigintField(h.clock_offset_ns ?? 0, 'the header', 'clock_offset_ns'),
    startedAt: String(h.started_at ?? ''),
  };
  if (Array.isArray(h.pids)) header.pids = h.pids.map(Number);
  if (typeof h.hostname === 'string') header.hostname = h.hostname;
  if (h.resources && typeof h.resources === 'object') header.resources = h.resources;
  if (h.key_maps && typeof h.key_maps === 'object') header.keyMaps = h.key_maps;
  return header;
}

/** Checks the shape that matters and restores bigints a foreign writer may have narrowed. */
function toRecord(v: unknown, n: number): KernelRecord {
  const r = v as KernelRecord;
  if (!r || typeof r !== 'object' || !RECORD_TYPES.has(r.type)) {
    throw new KspanError('KSPAN_ERR_RECORD_FILE', `record ${n} is not a kernel record`);
  }
  if (typeof r.tsNs !== 'bigint') r.tsNs = bigintField(r.tsNs, `record ${n}`, 'tsNs');
  if (typeof r.startNs !== 'bigint') r.startNs = bigintField(r.startNs ?? 0, `record ${n}`, 'startNs');
  if (typeof r.cookie !== 'bigint') r.cookie = bigintField(r.cookie, `record ${n}`, 'cookie');
  return r;
}

/** A 64-bit field a foreign writer may have narrowed to a number or a string; anything else is refused. */
function bigintField(v: unknown, where: string, name: string): bigint {
  if (typeof v === 'bigint') return v;
  if ((typeof v === 'number' && Number.isSafeInteger(v)) || (typeof v === 'string' && /^-?\d{1,20}$/.test(v))) return BigInt(v);
  throw new KspanError('KSPAN_ERR_RECORD_FILE', `${where}: ${name} is not an integer`);
}
