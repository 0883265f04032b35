/**
 * Zero-copy reader of a BPF ring buffer map. The map is mmap'ed once (consumer
 * page read-write, producer page and data read-only) and read through koffi
 * views: no FFI call per record. The kernel would map the data pages twice in a
 * row, so that a record wrapping past the end reads as one; the reader maps them
 * once (each page would otherwise count twice in the agent's RSS: 4 MiB more for
 * the 4 MiB `events` ring) and copies the rare wrapping record into a scratch
 * buffer instead. Wake-ups come from epoll_wait on the map fd, run on the
 * thread pool (koffi async), so the event loop never blocks; after each wake-up
 * everything available is drained in one batch.
 *
 * Record header (kernel/bpf/ringbuf.c): u32 len with BUSY (bit 31) and DISCARD
 * (bit 30), u32 page offset; payload follows, records are 8-byte aligned.
 *
 * Nothing thrown escapes into koffi's callback (where it would be an uncaught
 * exception): a handler that throws costs its record, a failed wait is retried
 * after `idleMs`; both are counted in `stats` and reported through `onError`.
 */
import { constants } from 'node:os';
import { KspanError, errnoError } from '../core/errors.ts';
import {
  c,
  EPOLL_CTL_ADD,
  EPOLLIN,
  errno,
  koffi,
  MAP_FAILED,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  SC_PAGESIZE,
} from './native.ts';

const BUSY = 0x80000000;
const DISCARD = 0x40000000;
const HDR = 8;

/** Called per record with a view over the ring and the payload offset. */
export type RecordHandler = (view: DataView, offset: number, length: number) => void;

export interface RingBufferStats {
  records: number;
  discarded: number;
  wakeups: number;
  batches: number;
  /** Records whose handler threw (the record is consumed; reading goes on). */
  handlerErrors: number;
  /** epoll_wait calls that failed (retried after the idle interval). */
  waitErrors: number;
  /** Records that wrapped past the ring's end, read through the scratch copy. */
  wrapped: number;
}

export interface RingBufferOptions {
  /** Called with every handler or wait failure (default: one process warning, then only the counts). */
  onError?: (err: unknown) => void;
}

const { EINTR } = constants.errno;

export class RingBufferReader {
  readonly #fd: number;
  readonly #size: number;
  readonly #mask: number;
  readonly #pageSize: number;
  readonly #consPtr: bigint;
  readonly #prodPtr: bigint;
  readonly #prodLen: number;
  readonly #consPos: BigUint64Array;
  readonly #prodPos: BigUint64Array;
  readonly #data: DataView;
  readonly #bytes: Uint8Array;
  /** A wrapping record's two parts, joined (grown as needed). */
  #scratch = new Uint8Array(512);
  #scratchView = new DataView(this.#scratch.buffer);
  readonly #epfd: number;
  readonly #events = Buffer.alloc(12 * 4);
  readonly #handler: RecordHandler;
  readonly #onError: (err: unknown) => void;
  #running = false;
  #waiting = false;
  #closed = false;
  #stopped: (() => void) | undefined;
  readonly stats: RingBufferStats = { records: 0, discarded: 0, wakeups: 0, batches: 0, handlerErrors: 0, waitErrors: 0, wrapped: 0 };

  /** `size` is the ring's max_entries (a power of two, multiple of the page size). */
  constructor(mapFd: number, size: number, handler: RecordHandler, opts: RingBufferOptions = {}) {
    this.#fd = mapFd;
    this.#size = size;
    this.#mask = size - 1;
    this.#handler = handler;
    this.#onError = opts.onError ?? warnOnce();
    this.#pageSize = c.sysconf(SC_PAGESIZE);
    const ps = this.#pageSize;
    this.#prodLen = ps + size;

    // A failure half-way must not leave the mappings (they pin the ring's pages) or the epoll fd behind.
    let cons = 0n;
    let prod = 0n;
    let epfd = -1;
    try {
      cons = this.#map(ps, PROT_READ | PROT_WRITE, 0, 'consumer page');
      prod = this.#map(this.#prodLen, PROT_READ, ps, 'producer page and data');
      epfd = c.epollCreate1(0);
      if (epfd < 0) throw this.#error('epoll_create1', errno());
      if (c.epollCtl(epfd, EPOLL_CTL_ADD, mapFd, { events: EPOLLIN, data: 0n }) < 0) {
        throw this.#error('epoll_ctl', errno());
      }
    } catch (err) {
      if (epfd >= 0) c.close(epfd);
      if (prod) c.munmap(prod, this.#prodLen);
      if (cons) c.munmap(cons, ps);
      throw err;
    }
    this.#consPtr = cons;
    this.#prodPtr = prod;
    this.#epfd = epfd;
    this.#consPos = new BigUint64Array(koffi.view(cons, 8));
    this.#prodPos = new BigUint64Array(koffi.view(prod, 8));
    const mapped = koffi.view(prod, this.#prodLen);
    this.#data = new DataView(mapped, ps, size);
    this.#bytes = new Uint8Array(mapped, ps, size);
  }

  #map(len: number, prot: number, off: number, what: string): bigint {
    const p = c.mmap(null, len, prot, MAP_SHARED, this.#fd, off);
    if (!p || p === MAP_FAILED) throw this.#error(`mmap of the ring buffer's ${what}`, errno());
    return p;
  }

  #error(call: string, err: number): KspanError {
    return new KspanError('KSPAN_ERR_RINGBUF', `ring buffer: ${call} failed`, { cause: errnoError(call, err) });
  }

  /** Reads every committed record now. Returns how many were delivered (none once closed: the ring is unmapped). */
  drain(): number {
    if (this.#closed) return 0;
    let cons = Number(this.#consPos[0]);
    const data = this.#data;
    const mask = this.#mask;
    const handler = this.#handler;
    let n = 0;
    let prod = Number(this.#prodPos[0]);
    while (cons < prod) {
      while (cons < prod) {
        const off = cons & mask;
        const len = data.getUint32(off, true);
        if (len & BUSY) break;
        const payload = len & ~(BUSY | DISCARD) >>> 0;
        if (len & DISCARD) this.stats.discarded++;
        else {
          try {
            // Records are 8-byte aligned, so a header never wraps; a payload may.
            const at = (off + HDR) & mask;
            if (at + payload <= mask + 1) handler(data, at, payload);
            else handler(this.#joined(at, payload), 0, payload);
            n++;
          } catch (err) {
            this.stats.handlerErrors++;
            this.#report(err);
          }
        }
        cons += (payload + HDR + 7) & ~7;
      }
      // Hand the space back before looking for more (one 8-byte store).
      this.#consPos[0] = BigInt(cons);
      const next = Number(this.#prodPos[0]);
      if (next === prod) break;
      prod = next;
      if (cons < prod && data.getUint32(cons & mask, true) & BUSY) break;
    }
    if (n) {
      this.stats.records += n;
      this.stats.batches++;
    }
    return n;
  }

  /** The payload of `length` bytes at `at` that wraps past the ring's end, copied whole into the scratch buffer. */
  #joined(at: number, length: number): DataView {
    if (this.#scratch.length < length) {
      this.#scratch = new Uint8Array(Math.max(length, 2 * this.#scratch.length));
      this.#scratchView = new DataView(this.#scratch.buffer);
    }
    const head = this.#size - at;
    this.#scratch.set(this.#bytes.subarray(at, this.#size), 0);
    this.#scratch.set(this.#bytes.subarray(0, length - head), head);
    this.stats.wrapped++;
    return this.#scratchView;
  }

  /**
   * Starts draining on every epoll wake-up and at least every `idleMs`. The BPF
   * side only wakes the reader when the ring fills up (an eighth of it), so
   * `idleMs` bounds the latency at low rates.
   */
  start(idleMs = 20): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    this.drain();
    this.#wait(idleMs);
  }

  #wait(idleMs: number): void {
    if (!this.#running) {
      this.#stopped?.();
      return;
    }
    this.#waiting = true;
    c.epollWait.async(this.#epfd, this.#events, 4, idleMs, (err, rc) => {
      const waitErrno = errno();
      this.#waiting = false;
      let failed = false;
      try {
        if (err) throw err;
        if (rc < 0 && waitErrno !== EINTR) throw this.#error('epoll_wait', waitErrno);
        if (rc > 0) this.stats.wakeups++;
      } catch (error) {
        failed = true;
        this.stats.waitErrors++;
        this.#report(error);
      }
      // Wake-ups or not, the ring is drained every idle interval; a wait that
      // keeps failing is retried after one, not in a loop.
      const next = () => {
        if (this.#running) this.drain();
        this.#wait(idleMs);
      };
      if (failed) setTimeout(next, idleMs);
      else next();
    });
  }

  /** Hands a failure to onError; an onError that throws is not allowed to undo the count. */
  #report(err: unknown): void {
    try {
      this.#onError(err);
    } catch {
      // counted in stats already
    }
  }

  /** Stops waiting (resolves once the pending epoll_wait returned), then drains once more. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    if (this.#waiting) await new Promise<void>((r) => (this.#stopped = r));
    this.drain();
  }

  close(): void {
    if (this.#closed) return;
    this.#running = false;
    this.#closed = true;
    c.munmap(this.#prodPtr, this.#prodLen);
    c.munmap(this.#consPtr, this.#pageSize);
    c.close(this.#epfd);
  }

  get size(): number {
    return this.#size;
  }
}

/** The default error report: one process warning per reader, then only the counts in `stats`. */
function warnOnce(): (err: unknown) => void {
  let warned = false;
  return (err) => {
    if (warned) return;
    warned = true;
    process.emitWarning(`ring buffer: ${err instanceof Error ? err.message : String(err)} (further failures are only counted)`, {
      code: 'KSPAN_RINGBUF',
    });
  };
}
