/**
 * The kernel side of kspan as one object: loads bpf/.output/kspan.bpf.o with the
 * programs this kernel supports, attaches them, keeps the traced-PID map, reads
 * the ring buffer into KernelRecords, and on stop flushes every open send/recv
 * aggregate left in the kernel so no byte is missing.
 */
import { fileURLToPath } from 'node:url';
import { KspanError } from '../core/errors.ts';
import {
  decodeKspanFlushArgs,
  encodeKspanTarget,
  KSPAN_TARGET_SIZE,
  KspanTlsKind,
  type KspanTlsLoc,
  decodeKspanSock,
  encodeKspanFlushArgs,
  KSPAN_FLUSH_ARGS_SIZE,
  KspanCounter,
  KspanEventFlag,
  KSPAN_EVENT_SIZE,
  type KspanAgg,
  type KspanEvent,
  type KspanSock,
} from '../records/abi.generated.ts';
import { BpfObject } from './bpf-object.ts';
import { chooseIoPath, type IoPath, sectionAvailable } from './kernel-features.ts';
import { libbpf } from './native.ts';
import { RingBufferReader } from './ring-buffer.ts';
import { pidKey } from './map-keys.ts';
import { decodeRecords, fromEvent } from '../records/decoder.ts';
import type { KernelRecord } from '../records/kernel-record.ts';

const NO_LOCATION: KspanTlsLoc = { offset: 0n, module: 0n, kind: KspanTlsKind.KSPAN_TLS_NONE, scheme: 0, dtv_layout: 0 };

function targetValue(loc: KspanTlsLoc): Buffer {
  const buf = Buffer.alloc(KSPAN_TARGET_SIZE);
  encodeKspanTarget({ loc }, new DataView(buf.buffer, buf.byteOffset, buf.length), 0);
  return buf;
}

export const DEFAULT_OBJECT = fileURLToPath(new URL('../../bpf/.output/kspan.bpf.o', import.meta.url));

/** Programs of the two I/O paths; everything else always loads. */
const SOCK_LENGTH_PROGRAMS = new Set(['on_send_length', 'on_recv_length']);
const isSyscallIoProgram = (name: string) => /^on_(write|writev|sendto|sendmsg|read|readv|recvfrom|recvmsg)_(enter|exit)$/.test(name);

export interface TcpTracerOptions {
  objectPath?: string;
  /** Force an I/O path (tests, old kernels); default: what the kernel has. */
  ioPath?: IoPath;
  /** Ring buffer size in bytes (power of two, ≥ page size). */
  ringBytes?: number;
  /** Sockets whose state the kernel keeps at once (default 65 536, about 30 MB); beyond, records are lost and counted. */
  maxSockets?: number;
  onRecord: (r: KernelRecord) => void;
  /** A record the decoder refused (counted, never silent). */
  onDecodeError?: (err: unknown) => void;
}

export type TracerCounters = Record<keyof typeof KspanCounter, number> & { decode_errors: number };

export class TcpTracer {
  readonly ioPath: IoPath;
  /** Programs switched off because the kernel lacks their hook. */
  readonly unavailable: string[];
  readonly #obj: BpfObject;
  readonly #ring: RingBufferReader;
  readonly #pids = new Set<number>();
  #decodeErrors = 0;
  #stopped = false;
  #finalCounters: TracerCounters | undefined;

  private constructor(obj: BpfObject, ioPath: IoPath, unavailable: string[], opts: TcpTracerOptions) {
    this.#obj = obj;
    this.ioPath = ioPath;
    this.unavailable = unavailable;
    const ring = obj.map('events');
    const onRecord = opts.onRecord;
    this.#ring = new RingBufferReader(ring.fd, opts.ringBytes ?? 4 << 20, (view, off, len) => {
      if (len < KSPAN_EVENT_SIZE) {
        this.#decodeErrors++;
        opts.onDecodeError?.(new Error(`short record: ${len} bytes`));
        return;
      }
      try {
        decodeRecords(view, off, onRecord);
      } catch (err) {
        this.#decodeErrors++;
        opts.onDecodeError?.(err);
      }
    });
  }

  /** Loads and attaches; a load interrupted by a signal is retried (a new object each time). */
  static open(opts: TcpTracerOptions): TcpTracer {
    for (let attempt = 1; ; attempt++) {
      try {
        return TcpTracer.#openOnce(opts);
      } catch (err) {
        if (!(err instanceof KspanError && err.code === 'KSPAN_ERR_BPF_INTERRUPTED') || attempt >= 5) throw err;
      }
    }
  }

  static #openOnce(opts: TcpTracerOptions): TcpTracer {
    const obj = BpfObject.open(opts.objectPath ?? DEFAULT_OBJECT);
    try {
      const ioPath = chooseIoPath(opts.ioPath);
      const unavailable: string[] = [];
      for (const name of obj.programNames) {
        const wanted = SOCK_LENGTH_PROGRAMS.has(name) ? ioPath === 'sock_length' : isSyscallIoProgram(name) ? ioPath === 'syscalls' : true;
        const present = sectionAvailable(obj.sectionName(name));
        if (wanted && !present) unavailable.push(name);
        obj.setAutoload(name, wanted && present);
      }
      if (unavailable.some((n) => SOCK_LENGTH_PROGRAMS.has(n))) {
        throw new KspanError('KSPAN_ERR_ATTACH', 'sock_send_length/sock_recv_length are missing on this kernel', {
          hint: 'use the syscall path (--io-hooks syscalls); it is chosen automatically unless forced',
        });
      }
      obj.setMaxEntries('events', opts.ringBytes ?? 4 << 20);
      if (opts.maxSockets !== undefined) obj.setMaxEntries('socks', opts.maxSockets);
      obj.load();
      obj.attachAll();
      return new TcpTracer(obj, ioPath, unavailable, opts);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /** Starts delivering records (epoll wake-ups; never blocks the event loop). */
  start(): void {
    this.#ring.start();
  }

  /** Traces `pid` (no thread context until setContextLocation). Idempotent. */
  addPid(pid: number): void {
    this.#obj.map('targets').insert(pidKey(pid), targetValue(NO_LOCATION));
    this.#pids.add(pid);
  }

  removePid(pid: number): void {
    this.#obj.map('targets').delete(pidKey(pid));
    this.#pids.delete(pid);
  }

  /** Where `pid`'s threads keep their span; false when `pid` is not traced. */
  setContextLocation(pid: number, loc: KspanTlsLoc): boolean {
    return this.#obj.map('targets').replace(pidKey(pid), targetValue(loc));
  }

  clearContextLocation(pid: number): void {
    this.#obj.map('targets').replace(pidKey(pid), targetValue(NO_LOCATION));
  }

  get pids(): number[] {
    return [...this.#pids];
  }

  /** The BPF object, for readers that add their own maps (thread context). */
  get object(): BpfObject {
    return this.#obj;
  }

  /** Loss and fault counters summed over CPUs, plus records the decoder refused. */
  counters(): TracerCounters {
    if (this.#finalCounters) return { ...this.#finalCounters, decode_errors: this.#decodeErrors };
    const map = this.#obj.map('counters');
    const ncpu = libbpf().numPossibleCpus();
    const out = { decode_errors: this.#decodeErrors } as TracerCounters;
    for (const [name, idx] of Object.entries(KspanCounter)) {
      if (name === 'KSPAN_C_MAX') continue;
      const key = Buffer.alloc(4);
      key.writeUInt32LE(idx);
      const v = map.lookup(key, 8 * ncpu);
      let sum = 0n;
      for (let i = 0; v && i < ncpu; i++) sum += v.readBigUInt64LE(8 * i);
      out[name as keyof typeof KspanCounter] = Number(sum);
    }
    return out;
  }

  /**
   * Closes send/recv aggregates idle for `idleNs` (the kernel emits them, flagged
   * idle). Returns how many. Call it on a timer so a quiet keep-alive connection
   * does not hold its last response back.
   */
  flushIdle(idleNs: bigint): number {
    if (this.#stopped) return 0;
    const args = Buffer.alloc(KSPAN_FLUSH_ARGS_SIZE);
    encodeKspanFlushArgs({ idle_ns: idleNs, flushed: 0n }, new DataView(args.buffer, args.byteOffset, args.length), 0);
    this.#obj.run('flush_idle', args);
    return Number(decodeKspanFlushArgs(new DataView(args.buffer, args.byteOffset, args.length), 0).flushed);
  }

  get ringStats() {
    return this.#ring.stats;
  }

  /**
   * Detaches every program, delivers what is left in the ring, then emits the
   * send/recv aggregates still open in the kernel (flagged `flushed`).
   */
  async stop(onRecord?: (r: KernelRecord) => void): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#ring.stop();
    this.#obj.detachAll();
    this.#ring.drain();
    const emit = onRecord ?? (() => {});
    for (const rec of this.openAggregates()) emit(rec);
    this.#finalCounters = this.counters();
    this.#ring.close();
    this.#obj.close();
  }

  /** The open aggregates in the `socks` map, as records. */
  openAggregates(): KernelRecord[] {
    const socks = this.#obj.map('socks');
    const out: KernelRecord[] = [];
    for (const key of socks.keys()) {
      const v = socks.lookup(key);
      if (!v) continue;
      const st = decodeKspanSock(new DataView(v.buffer, v.byteOffset, v.length), 0);
      const cookie = key.readBigUInt64LE(0);
      if (st.pend.dir) out.push(aggregateRecord(cookie, st, st.pend));
      if (st.agg_dir) {
        out.push(aggregateRecord(cookie, st, {
          first_ns: st.agg_first_ns, last_ns: st.agg_last_ns, bytes: st.agg_bytes, tid: st.agg_tid,
          calls: st.agg_calls, dir: st.agg_dir, flags: st.agg_flags, ctx: st.agg_ctx,
        }));
      }
    }
    return out;
  }
}

/** An aggregate still in the kernel's socket state, as a `flushed` record. */
function aggregateRecord(cookie: bigint, st: KspanSock, agg: KspanAgg): KernelRecord {
  const none = { first_ns: 0n, last_ns: 0n, bytes: 0n, tid: 0, calls: 0, dir: 0, flags: 0, ctx: agg.ctx };
  const socket: KspanEvent = {
    ts_ns: 0n, start_ns: 0n, cookie, bytes: 0n, bytes_sent: 0n, bytes_received: 0n, pid: st.pid, tid: 0,
    calls: 0, retransmits: 0, srtt_us: 0, error: 0, type: 0, family: st.family,
    flags: st.role | KspanEventFlag.KSPAN_F_FLUSHED, tcp_state: 0, lport: st.lport, rport: st.rport,
    laddr: st.laddr, raddr: st.raddr, ctx: agg.ctx, prev: none,
  };
  return fromEvent(socket, agg);
}
