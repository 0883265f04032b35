/**
 * Zero-copy reader of a BPF ring buffer map. The map is mmap'ed once (consumer
 * page read-write, producer page and data read-only) and read through koffi
 * views: no FFI call per record. The kernel would map the data pages twice in a
 * row, so that a record wrapping past the end reads as one; the reader maps them
 * once (each page would otherwise count twice in the agent's RSS: 4 MiB more for
 * the 4 MiB `events` ring) and copies the rare wrapping record into a scratch
 * buffer instead. Wake-ups come from one epoll_wait for every running reader of
 * the process (RingPoller), run on the thread pool (koffi async), so the event
 * loop never blocks and the agent's four rings hold one of libuv's four
 * thread-pool threads, not all of them (which left file, DNS and zlib work
 * waiting for a ring's idle interval); after each wake-up, and on a timer every
 * idle interval (longer while the rings stay empty), every running reader drains
 * everything available in one batch.
 *
 * Record header (kernel/bpf/ringbuf.c): u32 len with BUSY (bit 31) and DISCARD
 * (bit 30), u32 page offset; payload follows, records are 8-byte aligned.
 *
 * Nothing thrown escapes into koffi's callback (where it would be an uncaught
 * exception): a handler that throws costs its record, a failed wait is retried
 * after `idleMs`; both are counted in `stats` and reported through `onError`.
 */
import { readSync, writeSync } from 'node:fs';
import { constants } from 'node:os';
import { KspanError, errnoError } from '../core/errors.ts';
import { DrainBackoff } from './drain-backoff.ts';
import {
  c,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
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
  readonly #handler: RecordHandler;
  readonly #onError: (err: unknown) => void;
  #running = false;
  #closed = false;
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
    try {
      cons = this.#map(ps, PROT_READ | PROT_WRITE, 0, 'consumer page');
      prod = this.#map(this.#prodLen, PROT_READ, ps, 'producer page and data');
      poller.register(mapFd);
    } catch (err) {
      if (prod) c.munmap(prod, this.#prodLen);
      if (cons) c.munmap(cons, ps);
      throw err;
    }
    this.#consPtr = cons;
    this.#prodPtr = prod;
    this.#consPos = new BigUint64Array(koffi.view(cons, 8));
    this.#prodPos = new BigUint64Array(koffi.view(prod, 8));
    const mapped = koffi.view(prod, this.#prodLen);
    this.#data = new DataView(mapped, ps, size);
    this.#bytes = new Uint8Array(mapped, ps, size);
  }

  #map(len: number, prot: number, off: number, what: string): bigint {
    const p = c.mmap(null, len, prot, MAP_SHARED, this.#fd, off);
    if (!p || p === MAP_FAILED) throw ringError(`mmap of the ring buffer's ${what}`, errno());
    return p;
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
   * Starts draining on every wake-up and at least every `idleMs` (the poller's
   * timer runs at the shortest interval of its running readers). The BPF side only
   * wakes the reader when the ring fills up (an eighth of it), so `idleMs` bounds
   * the latency at low rates.
   */
  start(idleMs = 20): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    this.drain();
    poller.run(this.#fd, {
      idleMs,
      woken: () => this.stats.wakeups++,
      drain: () => this.drain(),
      failed: (err) => {
        this.stats.waitErrors++;
        this.#report(err);
      },
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

  /** Stops draining on wake-ups, then drains once more. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    poller.halt(this.#fd);
    this.drain();
  }

  close(): void {
    if (this.#closed) return;
    this.#running = false;
    this.#closed = true;
    poller.halt(this.#fd);
    poller.unregister(this.#fd);
    c.munmap(this.#prodPtr, this.#prodLen);
    c.munmap(this.#consPtr, this.#pageSize);
  }

  get size(): number {
    return this.#size;
  }
}

function ringError(call: string, err: number): KspanError {
  return new KspanError('KSPAN_ERR_RINGBUF', `ring buffer: ${call} failed`, { cause: errnoError(call, err) });
}

/** The epoll data of the poller's eventfd (ring fds are the others' data). */
const KICK = 0xffff_ffffn;

/**
 * The shared wait's timeout: it only brings the kernel's wake-ups (a ring an
 * eighth full); the idle interval's drains come from a timer, so an idle agent
 * makes no thread-pool hand-off per interval. A wait that returns empty is
 * re-armed.
 */
const WAKE_WAIT_MS = 1000;

/** What the shared wait does for one running reader. */
interface Running {
  idleMs: number;
  /** Its ring's fd was among the ready ones. */
  woken: () => void;
  /** Drains the reader's ring; returns the records delivered. */
  drain: () => number;
  failed: (err: unknown) => void;
}

/**
 * One epoll instance for every ring of the process, at most one epoll_wait in
 * flight on the thread pool, and one timer. A reader's map fd is registered while
 * the reader exists (so a ring that epoll cannot watch fails its reader's
 * constructor) and drained while it runs: after each wait that a ring ended, and
 * on the timer, every shortest idle interval of the running readers, backed off
 * up to 8 times that while its drains find nothing (src/kernel/drain-backoff.ts);
 * a drain of an empty ring is two loads. The timer is what bounds the latency at
 * low rates: a wait on the thread pool costs a hand-off to a pool thread and back (tens of
 * microseconds of CPU, and the event loop's JavaScript around it), which an idle
 * agent paid every interval when the wait's own timeout drained the rings
 * (BENCHMARKS.md, "malloc's free pages, and the rings' wait on a timer"). The
 * last reader to stop ends the wait in flight through an eventfd in the same
 * epoll set. The epoll fd and the eventfd are closed when the last reader is,
 * and made again by the next.
 */
class RingPoller {
  #epfd = -1;
  #kickFd = -1;
  #registered = 0;
  readonly #running = new Map<number, Running>();
  #waiting = false;
  #timer: NodeJS.Timeout | undefined;
  /** The running readers' shortest idle interval: the timer's base (DrainBackoff). */
  #timerMs = 0;
  #backoff: DrainBackoff | undefined;
  /** The interval the timer in flight was armed with. */
  #armedMs = 0;
  readonly #events = Buffer.alloc(12 * 8);
  readonly #one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  readonly #drained = Buffer.alloc(8);

  register(fd: number): void {
    if (this.#epfd < 0) {
      const epfd = c.epollCreate1(0);
      if (epfd < 0) throw ringError('epoll_create1', errno());
      const kick = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (kick < 0 || c.epollCtl(epfd, EPOLL_CTL_ADD, kick, { events: EPOLLIN, data: KICK }) < 0) {
        const err = ringError(kick < 0 ? 'eventfd' : 'epoll_ctl', errno());
        if (kick >= 0) c.close(kick);
        c.close(epfd);
        throw err;
      }
      this.#epfd = epfd;
      this.#kickFd = kick;
    }
    if (c.epollCtl(this.#epfd, EPOLL_CTL_ADD, fd, { events: EPOLLIN, data: BigInt(fd) }) < 0) {
      const err = ringError('epoll_ctl', errno());
      this.#closeIfUnused();
      throw err;
    }
    this.#registered++;
  }

  unregister(fd: number): void {
    // A failure (the fd gone already) leaves nothing to undo: the count is what matters.
    c.epollCtl(this.#epfd, EPOLL_CTL_DEL, fd, { events: 0, data: 0n });
    this.#registered--;
    this.#closeIfUnused();
  }

  /** No reader left and no wait in flight (a thread-pool thread may be inside epoll_wait on it). */
  #closeIfUnused(): void {
    if (this.#registered > 0 || this.#waiting || this.#epfd < 0) return;
    c.close(this.#epfd);
    c.close(this.#kickFd);
    this.#epfd = -1;
    this.#kickFd = -1;
  }

  run(fd: number, r: Running): void {
    this.#running.set(fd, r);
    this.#retime();
    if (!this.#waiting) this.#wait();
  }

  /** Resets the eventfd (non-blocking: nothing to read is fine). */
  #unkick(): void {
    try {
      readSync(this.#kickFd, this.#drained);
    } catch {
      // EAGAIN: already reset
    }
  }

  halt(fd: number): void {
    if (!this.#running.delete(fd)) return;
    this.#retime();
    // The last reader stopped: end the wait in flight now, not after its timeout.
    if (!this.#running.size && this.#waiting) writeSync(this.#kickFd, this.#one);
  }

  /** Drains every running reader; returns the records delivered. */
  #drainAll(): number {
    let n = 0;
    for (const r of this.#running.values()) n += r.drain();
    return n;
  }

  /** The drain timer's interval now (ms); 0 while no reader runs. */
  get intervalMs(): number {
    return this.#timer === undefined ? 0 : this.#armedMs;
  }

  /** Drains every running reader now, as a wake-up does (drainRings()). */
  drainNow(): number {
    const n = this.#drainAll();
    this.#delivered(n);
    return n;
  }

  /** A drain off the timer delivered `n`: records bring a backed-off timer back to its base interval. */
  #delivered(n: number): void {
    const b = this.#backoff;
    if (!n || !b) return;
    b.delivered(n);
    if (this.#timer !== undefined && this.#armedMs > b.baseMs) this.#arm(b.baseMs);
  }

  /** The drain timer at the shortest idle interval of the running readers; none while none runs. */
  #retime(): void {
    let ms = Infinity;
    for (const r of this.#running.values()) ms = Math.min(ms, r.idleMs);
    if (ms === this.#timerMs) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerMs = ms;
    this.#backoff = undefined;
    if (ms === Infinity) return;
    this.#backoff = new DrainBackoff({ baseMs: ms });
    this.#arm(ms);
  }

  #arm(ms: number): void {
    clearTimeout(this.#timer);
    this.#armedMs = ms;
    // The wait in flight holds the event loop open while a reader runs: the timer need not.
    this.#timer = setTimeout(() => this.#onTimer(), ms).unref();
  }

  /** The timer's drain; then the timer again, at the interval the backoff gives for what it found. */
  #onTimer(): void {
    this.#timer = undefined;
    const n = this.#drainAll();
    // A reader stopped or started meanwhile (a handler's doing): #retime() armed the timer already, or none.
    const b = this.#backoff;
    if (b && this.#timer === undefined) this.#arm(b.timerDrained(n));
  }

  #wait(): void {
    if (!this.#running.size) {
      this.#closeIfUnused();
      return;
    }
    this.#waiting = true;
    c.epollWait.async(this.#epfd, this.#events, 8, WAKE_WAIT_MS, (err, rc) => {
      const waitErrno = errno();
      this.#waiting = false;
      let failure: unknown = null;
      try {
        if (err) throw err;
        if (rc < 0 && waitErrno !== EINTR) throw ringError('epoll_wait', waitErrno);
      } catch (error) {
        failure = error;
      }
      for (let i = 0; i < rc; i++) {
        const data = this.#events.readBigUInt64LE(i * 12 + 4);
        if (data === KICK) this.#unkick();
        else this.#running.get(Number(data))?.woken();
      }
      if (failure) for (const r of this.#running.values()) r.failed(failure);
      // A ring woke the wait: every running reader drains now. A wait that keeps
      // failing is retried after an idle interval, not in a loop (the timer
      // drains meanwhile).
      const next = () => {
        if (rc > 0) this.#delivered(this.#drainAll());
        if (!this.#waiting) this.#wait();
      };
      if (failure) setTimeout(next, Math.min(this.#timerMs, WAKE_WAIT_MS));
      else next();
    });
  }
}

const poller = new RingPoller();

/**
 * Drains every running reader of the process now. The live correlator's tick
 * calls it before it ends held spans, so that what it decides sees every record
 * the kernel committed until then, however long the rings' timer has backed off.
 */
export function drainRings(): number {
  return poller.drainNow();
}

/** The rings' drain timer's interval now, in ms (0 while no reader runs): tests, metrics. */
export function ringDrainIntervalMs(): number {
  return poller.intervalMs;
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
