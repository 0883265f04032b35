/**
 * The scheduler programs' side of the kernel object (bpf/sched.bpf.h): their
 * own ring buffer (`sched_events`), read like the TCP ring into SchedRecords,
 * and at shutdown the (thread, span) aggregates still open in `sched_threads`,
 * delivered flagged `flushed`.
 */
import { decodeKspanSchedThread, KSPAN_SCHED_CONF_SIZE, encodeKspanSchedConf, KspanSchedFlag, KspanSchedLimit } from '../records/abi.generated.ts';
import { decodeSchedRecord, fromSchedEvent, type SchedRecord, type SchedRingRecord } from '../records/sched-record.ts';
import { TUNING } from '../core/config.ts';
import type { BpfObject } from './bpf-object.ts';
import { RingBufferReader } from './ring-buffer.ts';

export interface SchedRingOptions {
  onRecord: (r: SchedRingRecord) => void;
  /** A record the decoder refused (counted by the caller). */
  onDecodeError: (err: unknown) => void;
  onRingError?: (err: unknown) => void;
}

export class SchedRing {
  readonly #obj: BpfObject;
  readonly #ring: RingBufferReader;

  constructor(obj: BpfObject, opts: SchedRingOptions) {
    this.#obj = obj;
    this.#ring = new RingBufferReader(
      obj.map('sched_events').fd,
      KspanSchedLimit.KSPAN_SCHED_RING_BYTES,
      (view, off, len) => {
        try {
          const r = decodeSchedRecord(view, off, len);
          if (r) opts.onRecord(r);
        } catch (err) {
          opts.onDecodeError(err);
        }
      },
      { onError: opts.onRingError },
    );
  }

  start(): void {
    this.#ring.start(TUNING.ringIdleMs);
  }

  /** Sets the shortest off-CPU interval that makes an OffCpuRecord (0: none); before the programs attach. */
  static configure(obj: BpfObject, offEventNs: bigint): void {
    const b = Buffer.alloc(KSPAN_SCHED_CONF_SIZE);
    encodeKspanSchedConf({ off_event_ns: offEventNs }, new DataView(b.buffer, b.byteOffset, b.length), 0);
    const key = Buffer.alloc(4);
    obj.map('sched_conf').update(key, b);
  }

  /** Stops waiting; call drain() after the programs are detached. */
  async stop(): Promise<void> {
    await this.#ring.stop();
  }

  drain(): void {
    this.#ring.drain();
  }

  close(): void {
    this.#ring.close();
  }

  get stats() {
    return this.#ring.stats;
  }

  /** The aggregates still open in the kernel (threads under a sampled span), as `flushed` records. */
  openAggregates(): SchedRecord[] {
    const threads = this.#obj.map('sched_threads');
    const out: SchedRecord[] = [];
    for (const key of threads.keys()) {
      const v = threads.lookup(key);
      if (!v) continue;
      const st = decodeKspanSchedThread(new DataView(v.buffer, v.byteOffset, v.length), 0);
      // Still off its CPU: the aggregate ends where the thread left it.
      if (!st.agg.end_ns) st.agg.end_ns = st.out_ns || st.in_ns || st.agg.start_ns;
      const r = fromSchedEvent(st.agg, KspanSchedFlag.KSPAN_SF_FLUSHED);
      if (r) out.push(r);
    }
    return out;
  }
}
